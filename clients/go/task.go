package workpool

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strconv"
	"time"
)

// TaskOptions are the options of one task.
type TaskOptions struct {
	// ID is the task id (results and deduplication are keyed by it); "" means none: the
	// task id is then the stream entry id.
	ID string
	// Attempt is the producer's attempt counter (>= 1); 0 means none.
	Attempt int
	// Key picks the partition by hash (the same in every language); nil means none.
	Key []byte
	// Partition picks the partition directly (wins over Key); nil means none.
	Partition *int
	// Dedup: do not add a task whose ID was submitted within DedupWindow (default 24 h).
	Dedup       bool
	DedupWindow time.Duration
}

// Task is one task to submit. Payload is stored as is; use JSON for values.
type Task struct {
	Payload []byte
	TaskOptions
}

// JSON encodes v as compact JSON for a payload (UTF-8, '<', '>' and '&' not escaped), as
// every workpool client does.
func JSON(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, configErr("the payload is not JSON-serializable: %v", err)
	}
	return bytes.TrimRight(b.Bytes(), "\n"), nil
}

var entryLike = regexp.MustCompile(`^\d+-\d+$`)

func checkTaskID(id string) error {
	switch n := len(id); {
	case n == 0:
		return configErr("a task id must not be empty")
	case n > maxTaskIDBytes:
		return configErr("a task id must be at most %d bytes, not %d", maxTaskIDBytes, n)
	case entryLike.MatchString(id):
		return configErr("task id %q has the form of a stream entry id (<digits>-<digits>), which is reserved for tasks without an id", id)
	}
	return nil
}

type planned struct {
	partition int
	taskID    string // "" when the entry id is the task id
	dedup     bool
	keys      []string
	args      []any // []byte and string values
}

// logicalCommand is the command as the vectors write it (@submit_dedup.lua for the script).
func (p planned) logicalCommand() [][]byte {
	var out [][]byte
	if p.dedup {
		out = append(out, []byte("EVAL"), []byte("@submit_dedup.lua"), []byte(strconv.Itoa(len(p.keys))))
		for _, k := range p.keys {
			out = append(out, []byte(k))
		}
	} else {
		out = append(out, []byte("XADD"), []byte(p.keys[0]), []byte("*"))
	}
	for _, a := range p.args {
		switch v := a.(type) {
		case []byte:
			out = append(out, v)
		case string:
			out = append(out, []byte(v))
		}
	}
	return out
}

// plan validates a task and chooses its partition and command (nothing is sent).
func plan(l *Layout, t Task, rr *roundRobin) (planned, error) {
	if t.Payload == nil {
		t.Payload = []byte{}
	}
	if t.ID != "" {
		if err := checkTaskID(t.ID); err != nil {
			return planned{}, err
		}
	}
	if t.Attempt < 0 {
		return planned{}, configErr("attempt must be >= 1, not %d", t.Attempt)
	}
	var windowMs int64
	if t.Dedup {
		if t.ID == "" {
			return planned{}, configErr("deduplication needs a task id")
		}
		windowMs = defaultDedupWindowMs
		if t.DedupWindow != 0 {
			windowMs = t.DedupWindow.Milliseconds()
			if windowMs < 1 {
				return planned{}, configErr("DedupWindow must be at least 1 ms, not %s", t.DedupWindow)
			}
		}
	}
	var p int
	switch {
	case t.Partition != nil:
		k, err := l.Partition(*t.Partition)
		if err != nil {
			return planned{}, err
		}
		p = k.Index
	case t.Key != nil:
		p = PartitionForKey(t.Key, l.Partitions)
	case t.Dedup:
		p = PartitionForKey([]byte(t.ID), l.Partitions)
	default:
		p = rr.take()
	}
	fields := []any{"payload", t.Payload}
	if t.ID != "" {
		fields = append(fields, "id", t.ID)
	}
	if t.Attempt > 0 {
		fields = append(fields, "attempt", strconv.Itoa(t.Attempt))
	}
	k := l.Keys[p]
	if t.Dedup {
		args := append([]any{strconv.FormatInt(windowMs, 10)}, fields...)
		return planned{partition: p, taskID: t.ID, dedup: true, keys: []string{k.Stream, k.Dedup(t.ID)}, args: args}, nil
	}
	return planned{partition: p, taskID: t.ID, keys: []string{k.Stream}, args: fields}, nil
}

// TaskRef identifies a task for Status and WaitFor.
type TaskRef struct {
	TaskID    string
	Partition int
	EntryID   string // "" when unknown
}

// Submitted is a submitted task.
type Submitted struct {
	Partition int
	EntryID   string
	TaskID    string
	// Duplicate: deduplication found an earlier task with this id (EntryID is that task's).
	Duplicate bool
	// Confirmed: with MinReplicas, whether WAIT confirmed it (nil when not asked).
	Confirmed *bool
}

// Ref is what Status and WaitFor take.
func (s Submitted) Ref() TaskRef {
	return TaskRef{TaskID: s.TaskID, Partition: s.Partition, EntryID: s.EntryID}
}
