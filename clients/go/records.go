package workpool

import (
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// InPartition returns a pointer to i, for TaskOptions.Partition and Locate.Partition.
func InPartition(i int) *int { return &i }

// ------------------------------------------------------------------------ stats

// ConsumerStats is one consumer of the group.
type ConsumerStats struct {
	Name       string `json:"name"`
	Pending    int64  `json:"pending"`
	IdleMs     int64  `json:"idle_ms"`
	InactiveMs *int64 `json:"inactive_ms"`
}

// Stats are the figures of `workpool-worker stats --json` (docs/protocol.md section 7);
// json.Marshal gives that command's JSON. For the pool, Partitions holds each
// partition's own Stats.
type Stats struct {
	Stream             string          `json:"stream"`
	Group              string          `json:"group"`
	StreamExists       bool            `json:"stream_exists"`
	GroupExists        bool            `json:"group_exists"`
	StreamLength       int64           `json:"stream_length"`
	Lag                int64           `json:"lag"`
	LagComputed        bool            `json:"lag_computed"`
	LagEstimated       bool            `json:"lag_estimated"`
	Pending            int64           `json:"pending"`
	PendingDeleted     int64           `json:"pending_deleted"`
	Backlog            int64           `json:"backlog"`
	DeadLetters        int64           `json:"dead_letters"`
	LastDeliveredID    *string         `json:"last_delivered_id"`
	OldestPendingID    *string         `json:"oldest_pending_id"`
	OldestPendingAgeMs *int64          `json:"oldest_pending_age_ms"`
	Consumers          []ConsumerStats `json:"consumers"`
	Partitions         []Stats         `json:"partitions,omitempty"`
}

func asString(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case []byte:
		return string(x), true
	}
	return "", false
}

func asInt(v any) (int64, bool) {
	switch x := v.(type) {
	case int64:
		return x, true
	case int:
		return int64(x), true
	case string:
		n, err := strconv.ParseInt(x, 10, 64)
		return n, err == nil
	case []byte:
		n, err := strconv.ParseInt(string(x), 10, 64)
		return n, err == nil
	}
	return 0, false
}

func pairs(v any) map[string]any {
	m := map[string]any{}
	switch x := v.(type) {
	case []any:
		for i := 0; i+1 < len(x); i += 2 {
			if k, ok := asString(x[i]); ok {
				m[k] = x[i+1]
			}
		}
	case map[any]any:
		for k, val := range x {
			if ks, ok := asString(k); ok {
				m[ks] = val
			}
		}
	case map[string]any:
		return x
	}
	return m
}

// parseStats reads the stats script's 14 elements (as Queue::stats in queue.rs does).
func parseStats(reply any, stream, group string) (Stats, error) {
	a, ok := reply.([]any)
	if !ok || len(a) != 14 {
		return Stats{}, fmt.Errorf("unexpected reply from the stats script: %v", reply)
	}
	var bad error
	num := func(i int) int64 {
		n, ok := asInt(a[i])
		if !ok && bad == nil {
			bad = fmt.Errorf("unexpected element %d from the stats script: %v", i, a[i])
		}
		return n
	}
	text := func(i int) *string {
		if s, ok := asString(a[i]); ok && s != "" {
			return &s
		}
		return nil
	}
	nowMs := num(0)*1000 + num(1)/1000
	st := Stats{Stream: stream, Group: group, Consumers: []ConsumerStats{}}
	st.DeadLetters = max(num(2), 0)
	st.StreamExists = num(3) == 1
	st.StreamLength = max(num(4), 0)
	st.GroupExists = num(5) == 1
	st.Pending = max(num(6), 0)
	st.Lag = max(num(7), 0)
	st.LagComputed = num(8) == 1
	st.LastDeliveredID = text(9)
	st.OldestPendingID = text(10)
	st.LagEstimated = num(12) == 1
	present := min(max(num(13), 0), st.Pending)
	if bad != nil {
		return Stats{}, bad
	}
	st.PendingDeleted = st.Pending - present
	st.Backlog = st.Lag + present
	if st.OldestPendingID != nil {
		ms, _, err := parseEntryID(*st.OldestPendingID)
		if err != nil {
			return Stats{}, err
		}
		age := int64(0)
		if uint64(nowMs) > ms {
			age = int64(uint64(nowMs) - ms)
		}
		st.OldestPendingAgeMs = &age
	}
	if st.GroupExists {
		rows, _ := a[11].([]any)
		for _, row := range rows {
			f := pairs(row)
			name, _ := asString(f["name"])
			pending, _ := asInt(f["pending"])
			idle, _ := asInt(f["idle"])
			c := ConsumerStats{Name: name, Pending: max(pending, 0), IdleMs: max(idle, 0)}
			if in, ok := asInt(f["inactive"]); ok {
				c.InactiveMs = &in
			}
			st.Consumers = append(st.Consumers, c)
		}
	}
	return st, nil
}

// aggregateStats is the pool's stats from its partitions' (docs/protocol.md section 7).
func aggregateStats(stream, group string, parts []Stats) Stats {
	st := Stats{Stream: stream, Group: group, Partitions: parts, Consumers: []ConsumerStats{}, GroupExists: len(parts) > 0}
	index := map[string]int{}
	var oldest *Stats
	for i := range parts {
		p := &parts[i]
		st.StreamExists = st.StreamExists || p.StreamExists
		st.GroupExists = st.GroupExists && p.GroupExists
		st.LagComputed = st.LagComputed || p.LagComputed
		st.LagEstimated = st.LagEstimated || p.LagEstimated
		st.StreamLength += p.StreamLength
		st.Lag += p.Lag
		st.Pending += p.Pending
		st.PendingDeleted += p.PendingDeleted
		st.Backlog += p.Backlog
		st.DeadLetters += p.DeadLetters
		if p.OldestPendingAgeMs != nil && (oldest == nil || *p.OldestPendingAgeMs > *oldest.OldestPendingAgeMs) {
			oldest = p
		}
		for _, c := range p.Consumers {
			j, ok := index[c.Name]
			if !ok {
				index[c.Name] = len(st.Consumers)
				st.Consumers = append(st.Consumers, c)
				continue
			}
			m := &st.Consumers[j]
			m.Pending += c.Pending
			m.IdleMs = min(m.IdleMs, c.IdleMs)
			if c.InactiveMs != nil && (m.InactiveMs == nil || *c.InactiveMs < *m.InactiveMs) {
				v := *c.InactiveMs
				m.InactiveMs = &v
			}
		}
	}
	if oldest != nil {
		st.OldestPendingID = oldest.OldestPendingID
		st.OldestPendingAgeMs = oldest.OldestPendingAgeMs
	}
	if len(parts) == 1 { // as the worker: one partition's own names (P_0) and id
		st.LastDeliveredID = parts[0].LastDeliveredID
		st.Stream = parts[0].Stream
	}
	return st
}

// ------------------------------------------------------------------------ dead letters

var reservedDeadLetterFields = map[string]bool{"original_id": true, "error": true, "deliveries": true, "stream": true, "group": true, "consumer": true}

// DeadLetterRef is a dead letter: its partition and entry id. String() is the text form
// `[<partition>/]<ms>-<seq>`.
type DeadLetterRef struct {
	Partition int
	ID        string
}

func (r DeadLetterRef) String() string {
	if r.Partition == 0 {
		return r.ID
	}
	return strconv.Itoa(r.Partition) + "/" + r.ID
}

var partRe = regexp.MustCompile(`^\d{1,9}$`)

// ParseDeadLetterRef reads the text form `[<partition>/]<ms>-<seq>`.
func ParseDeadLetterRef(text string) (DeadLetterRef, error) {
	bad := configErr("invalid dead-letter reference %q (expected [<partition>/]<ms>-<seq>)", text)
	id, p := text, 0
	if i := strings.LastIndexByte(text, '/'); i >= 0 {
		if !partRe.MatchString(text[:i]) {
			return DeadLetterRef{}, bad
		}
		p, _ = strconv.Atoi(text[:i])
		id = text[i+1:]
	}
	if _, _, err := parseEntryID(id); err != nil {
		return DeadLetterRef{}, bad
	}
	return DeadLetterRef{Partition: p, ID: id}, nil
}

// Field is one field of an entry, in order.
type Field struct {
	Name  string
	Value []byte
}

// DeadLetter is one dead-letter entry (docs/protocol.md section 6). Optional values are
// nil when the entry lacks them.
type DeadLetter struct {
	Ref            DeadLetterRef
	Payload        []byte // nil when the task had none
	TaskID         *string
	OriginalID     *string
	Error          *string
	Deliveries     *int64
	Stream         *string
	Group          *string
	Consumer       *string
	Fields         []Field // the other fields, in order
	DeadLetteredMs uint64
}

func parseDeadLetter(partition int, id string, raw []any) (DeadLetter, error) {
	ms, _, err := parseEntryID(id)
	if err != nil {
		return DeadLetter{}, err
	}
	d := DeadLetter{Ref: DeadLetterRef{Partition: partition, ID: id}, DeadLetteredMs: ms}
	own := map[string]string{}
	for i := 0; i+1 < len(raw); i += 2 {
		k, _ := asString(raw[i])
		v, _ := asString(raw[i+1])
		switch {
		case k == "payload" && d.Payload == nil:
			d.Payload = []byte(v)
		case reservedDeadLetterFields[k]:
			if _, seen := own[k]; !seen {
				own[k] = v
				continue
			}
			d.Fields = append(d.Fields, Field{k, []byte(v)})
		default:
			d.Fields = append(d.Fields, Field{k, []byte(v)})
		}
	}
	opt := func(k string) *string {
		if v, ok := own[k]; ok {
			return &v
		}
		return nil
	}
	d.OriginalID, d.Error, d.Stream, d.Group, d.Consumer = opt("original_id"), opt("error"), opt("stream"), opt("group"), opt("consumer")
	if v, ok := own["deliveries"]; ok {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			d.Deliveries = &n
		}
	}
	d.TaskID = d.OriginalID
	for _, f := range d.Fields {
		if f.Name == "id" {
			s := string(f.Value)
			d.TaskID = &s
			break
		}
	}
	return d, nil
}

// DeadLetterFilter says which dead letters the listing, RetryAll and PurgeAll consider.
// Zero values mean "any".
type DeadLetterFilter struct {
	Partition     *int
	Since, Until  time.Time // inclusive, millisecond precision
	ErrorContains string
	TaskID        string
	Consumer      string
	MinDeliveries int64
}

func (f DeadLetterFilter) rangeBounds() (string, string) {
	lo, hi := "-", "+"
	if !f.Since.IsZero() {
		lo = strconv.FormatInt(f.Since.UnixMilli(), 10) + "-0"
	}
	if !f.Until.IsZero() {
		hi = strconv.FormatInt(f.Until.UnixMilli(), 10) + "-" + strconv.FormatUint(math.MaxUint64, 10)
	}
	return lo, hi
}

func (f DeadLetterFilter) matches(d DeadLetter) bool {
	if f.ErrorContains != "" && (d.Error == nil || !strings.Contains(*d.Error, f.ErrorContains)) {
		return false
	}
	if f.TaskID != "" && (d.TaskID == nil || *d.TaskID != f.TaskID) {
		return false
	}
	if f.Consumer != "" && (d.Consumer == nil || *d.Consumer != f.Consumer) {
		return false
	}
	if f.MinDeliveries > 0 && (d.Deliveries == nil || *d.Deliveries < f.MinDeliveries) {
		return false
	}
	return true
}

func (f DeadLetterFilter) isEmpty() bool {
	return f.Since.IsZero() && f.Until.IsZero() && f.ErrorContains == "" && f.TaskID == "" && f.Consumer == "" && f.MinDeliveries == 0
}

func compareDeadLetters(a, b DeadLetter) int {
	if c := compareEntryIDs(a.Ref.ID, b.Ref.ID); c != 0 {
		return c
	}
	return a.Ref.Partition - b.Ref.Partition
}

func upperBound(hi, lastID string) string {
	if hi == "+" || compareEntryIDs(lastID, hi) < 0 {
		return lastID
	}
	return hi
}

func trimThreshold(lastID string) string {
	ms, seq, _ := parseEntryID(lastID)
	if seq < math.MaxUint64 {
		return strconv.FormatUint(ms, 10) + "-" + strconv.FormatUint(seq+1, 10)
	}
	return strconv.FormatUint(ms+1, 10) + "-0"
}

// RetryOutcome is a retried dead letter: its new entry id, or "" when it was not there.
type RetryOutcome struct {
	Ref     DeadLetterRef
	EntryID string
}

// ------------------------------------------------------------------------ results

// Result is a task's outcome as the worker records it (docs/protocol.md section 8).
type Result struct {
	State           string // "done" or "dead"
	Version         *int64
	TaskID          *string
	EntryID         *string
	Deliveries      *int64
	Consumer        *string
	StartedMs       *int64
	FinishedMs      *int64
	Output          []byte // nil when none
	OutputTruncated bool
	Error           *string
	DeadLetterID    *string
	Extra           []Field // unknown fields, sorted by name
}

// OK says whether the handler succeeded.
func (r *Result) OK() bool { return r.State == "done" }

var resultFields = map[string]bool{"v": true, "state": true, "task_id": true, "entry_id": true, "deliveries": true, "consumer": true,
	"started_ms": true, "finished_ms": true, "output": true, "output_truncated": true, "error": true, "dead_letter_id": true}

func parseResult(h map[string]string) *Result {
	if len(h) == 0 {
		return nil
	}
	opt := func(k string) *string {
		if v, ok := h[k]; ok {
			return &v
		}
		return nil
	}
	num := func(k string) *int64 {
		if v, ok := h[k]; ok {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				return &n
			}
		}
		return nil
	}
	r := &Result{State: h["state"], Version: num("v"), TaskID: opt("task_id"), EntryID: opt("entry_id"), Deliveries: num("deliveries"),
		Consumer: opt("consumer"), StartedMs: num("started_ms"), FinishedMs: num("finished_ms"),
		OutputTruncated: h["output_truncated"] == "1", Error: opt("error"), DeadLetterID: opt("dead_letter_id")}
	if v, ok := h["output"]; ok {
		r.Output = []byte(v)
	}
	for k, v := range h {
		if !resultFields[k] {
			r.Extra = append(r.Extra, Field{k, []byte(v)})
		}
	}
	sort.Slice(r.Extra, func(i, j int) bool { return r.Extra[i].Name < r.Extra[j].Name })
	return r
}

// TaskStatus says where a task is: "queued", "running" (Consumer and Deliveries set),
// "done" / "dead" (Result set) or "unknown" (finished with results off, expired, or
// never submitted).
type TaskStatus struct {
	State      string
	Result     *Result
	Consumer   string
	Deliveries int64
}
