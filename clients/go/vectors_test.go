package workpool

// The shared protocol vectors (clients/vectors/), run against real redis-servers.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// bin is a vector value: {"text": ...}, {"base64": ...} or a plain string.
func bin(v any) []byte {
	switch x := v.(type) {
	case string:
		return []byte(x)
	case map[string]any:
		if b, ok := x["base64"].(string); ok {
			d, _ := base64.StdEncoding.DecodeString(b)
			return d
		}
		if s, ok := x["text"].(string); ok {
			return []byte(s)
		}
	case nil:
		return nil
	}
	b, _ := json.Marshal(v)
	return b
}

type vpool struct {
	Stream           string  `json:"stream"`
	Group            string  `json:"group"`
	Partitions       *int    `json:"partitions"`
	Mode             Mode    `json:"mode"`
	DeadLetterStream *string `json:"dead_letter_stream"`
}

func (v vpool) layout() (*Layout, error) {
	n := 1
	if v.Partitions != nil {
		n = *v.Partitions
	}
	if v.Group == "" && v.Stream != "" {
		v.Group = v.Stream
	}
	return NewLayout(v.Stream, v.Group, n, v.Mode, v.DeadLetterStream)
}

func (v vpool) pool(t *testing.T, c redis.UniversalClient, rrStart int) *Pool {
	t.Helper()
	n := 1
	if v.Partitions != nil {
		n = *v.Partitions
	}
	p, err := New(c, Options{Stream: v.Stream, Group: v.Group, Partitions: n, Mode: v.Mode, DeadLetterStream: v.DeadLetterStream, RoundRobinStart: &rrStart})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestScriptsAreTheCanonicalOnes(t *testing.T) {
	for _, n := range ScriptNames {
		b, err := os.ReadFile(filepath.Join(vectorsDir, "scripts", n+".lua"))
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != ScriptSource(n) {
			t.Errorf("scripts/%s.lua differs from clients/vectors/scripts/%s.lua", n, n)
		}
	}
	src, err := os.ReadFile(filepath.Join(repoDir, "worker", "src", "queue.rs"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?s)static STATS: LazyLock<Script> = LazyLock::new\(\|\| \{\s*Script::new\(\s*r#"\n(.*?)"#`).FindSubmatch(src)
	if m == nil || string(m[1]) != ScriptSource("stats") {
		t.Error("stats.lua is not the worker's STATS script in worker/src/queue.rs")
	}
}

func TestVectorsKeys(t *testing.T) {
	var v struct {
		Cases []struct {
			Name   string `json:"name"`
			Pool   vpool  `json:"pool"`
			TaskID string `json:"task_id"`
			Error  bool   `json:"error"`
			Expect struct {
				Draining   string              `json:"draining"`
				Partitions []map[string]string `json:"partitions"`
			} `json:"expect"`
		} `json:"cases"`
	}
	loadVectors(t, "keys.json", &v)
	for _, c := range v.Cases {
		t.Run(c.Name, func(t *testing.T) {
			// An empty group in the vectors means "given empty", which Go cannot tell from
			// "not given" (the zero value): the group defaults to the stream here.
			if c.Error && strings.Contains(c.Name, "empty group") {
				t.Skip("in Go an empty Group means the default (the stream's name)")
			}
			l, err := c.Pool.layout()
			if c.Error {
				if !errors.Is(err, ErrConfig) {
					t.Fatalf("want a config error, got %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if l.Draining() != c.Expect.Draining {
				t.Errorf("draining %q, want %q", l.Draining(), c.Expect.Draining)
			}
			var got []map[string]string
			for _, k := range l.Keys {
				got = append(got, map[string]string{"stream": k.Stream, "dead": k.Dead, "result": k.Result(c.TaskID), "notify": k.Notify(c.TaskID), "dedup": k.Dedup(c.TaskID)})
			}
			if !reflect.DeepEqual(got, c.Expect.Partitions) {
				t.Errorf("got %v\nwant %v", got, c.Expect.Partitions)
			}
		})
	}
}

type partitionVectors struct {
	CRC16 []struct {
		Key   string `json:"key"`
		CRC16 uint16 `json:"crc16"`
	} `json:"crc16"`
	ByKey []struct {
		Key        string `json:"key"`
		Partitions int    `json:"partitions"`
		Expect     int    `json:"expect"`
	} `json:"by_key"`
	RoundRobin []struct {
		Partitions int   `json:"partitions"`
		Start      int   `json:"start"`
		Tasks      int   `json:"tasks"`
		Expect     []int `json:"expect"`
	} `json:"round_robin"`
}

func TestVectorsPartitions(t *testing.T) {
	var v partitionVectors
	loadVectors(t, "partition.json", &v)
	for _, c := range v.CRC16 {
		if got := CRC16([]byte(c.Key)); got != c.CRC16 {
			t.Errorf("CRC16(%q) = %d, want %d", c.Key, got, c.CRC16)
		}
	}
	for _, c := range v.ByKey {
		if got := PartitionForKey([]byte(c.Key), c.Partitions); got != c.Expect {
			t.Errorf("PartitionForKey(%q, %d) = %d, want %d", c.Key, c.Partitions, got, c.Expect)
		}
	}
	r := flushed(t)
	ctx := context.Background()
	for _, c := range v.RoundRobin {
		start := c.Start
		p, err := New(r, Options{Stream: "rr", Partitions: c.Partitions, RoundRobinStart: &start})
		if err != nil {
			t.Fatal(err)
		}
		tasks := make([]Task, c.Tasks)
		for i := range tasks {
			tasks[i] = Task{Payload: []byte("x")}
		}
		subs, err := p.SubmitMany(ctx, tasks, DurableOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var got []int
		for _, s := range subs {
			got = append(got, s.Partition)
		}
		if !reflect.DeepEqual(got, c.Expect) {
			t.Errorf("round robin %d from %d: %v, want %v", c.Partitions, c.Start, got, c.Expect)
		}
	}
}

func TestVectorsURLs(t *testing.T) {
	var v struct {
		Cases []struct {
			URL    string         `json:"url"`
			Expect map[string]any `json:"expect"`
		} `json:"cases"`
		Bad []string `json:"bad"`
	}
	loadVectors(t, "urls.json", &v)
	opt := func(p *string) any {
		if p == nil {
			return nil
		}
		return *p
	}
	for _, c := range v.Cases {
		tg, err := ParseURL(c.URL)
		if err != nil {
			t.Errorf("%s: %v", c.URL, err)
			continue
		}
		got := map[string]any{"mode": string(tg.Mode), "tls": tg.TLS, "db": float64(tg.DB), "username": opt(tg.Username), "password": opt(tg.Password)}
		if _, ok := c.Expect["path"]; ok {
			got["path"] = tg.Path
		} else {
			var hosts []any
			for _, h := range tg.Hosts {
				hosts = append(hosts, []any{h.Host, float64(h.Port)})
			}
			got["hosts"] = hosts
		}
		if _, ok := c.Expect["master"]; ok {
			got["master"] = tg.Master
			got["sentinel_username"] = opt(tg.SentinelUsername)
			got["sentinel_password"] = opt(tg.SentinelPassword)
		}
		if !reflect.DeepEqual(got, c.Expect) {
			t.Errorf("%s:\n got %v\nwant %v", c.URL, got, c.Expect)
		}
	}
	for _, u := range v.Bad {
		if _, err := ParseURL(u); !errors.Is(err, ErrConfig) || strings.Contains(err.Error(), "pw@") {
			t.Errorf("%q: want a config error, got %v", u, err)
		}
	}
}

type vtask struct {
	Payload       map[string]any `json:"payload"`
	ID            *string        `json:"id"`
	Attempt       *int           `json:"attempt"`
	Key           *string        `json:"key"`
	Partition     *int           `json:"partition"`
	Dedup         bool           `json:"dedup"`
	DedupWindowMs *int64         `json:"dedup_window_ms"`
}

func (v vtask) task(t *testing.T) (Task, bool) {
	var task Task
	if j, ok := v.Payload["json"]; ok {
		b, err := JSON(j)
		if err != nil {
			t.Fatal(err)
		}
		task.Payload = b
	} else {
		task.Payload = bin(v.Payload)
	}
	if v.ID != nil {
		if *v.ID == "" {
			return task, false // "" means no id in Go
		}
		task.ID = *v.ID
	}
	if v.Attempt != nil {
		if *v.Attempt == 0 {
			return task, false // 0 means no attempt in Go
		}
		task.Attempt = *v.Attempt
	}
	if v.Key != nil {
		task.Key = []byte(*v.Key)
	}
	task.Partition = v.Partition
	task.Dedup = v.Dedup
	if v.DedupWindowMs != nil {
		task.DedupWindow = time.Duration(*v.DedupWindowMs) * time.Millisecond
		if *v.DedupWindowMs == 0 {
			return task, false // 0 means the default in Go
		}
	}
	return task, true
}

type submitVectors struct {
	Cases []struct {
		Name            string  `json:"name"`
		Pool            vpool   `json:"pool"`
		RoundRobinStart int     `json:"round_robin_start"`
		Tasks           []vtask `json:"tasks"`
		Expect          []struct {
			Partition   int     `json:"partition"`
			Command     []any   `json:"command"`
			Entry       [][]any `json:"entry"`
			TaskID      *string `json:"task_id"`
			Duplicate   *bool   `json:"duplicate"`
			SameEntryAs *int    `json:"same_entry_as"`
		} `json:"expect"`
		StreamLengths []int64 `json:"stream_lengths"`
	} `json:"cases"`
	Errors []struct {
		Name string `json:"name"`
		Pool vpool  `json:"pool"`
		Task vtask  `json:"task"`
	} `json:"errors"`
	AcceptedIDs []string `json:"accepted_ids"`
}

func TestVectorsSubmit(t *testing.T) {
	var v submitVectors
	loadVectors(t, "submit.json", &v)
	ctx := context.Background()
	for _, c := range v.Cases {
		t.Run(c.Name, func(t *testing.T) {
			l, err := c.Pool.layout()
			if err != nil {
				t.Fatal(err)
			}
			start := c.RoundRobinStart
			rr, _ := newRoundRobin(l.Partitions, &start)
			for i, vt := range c.Tasks {
				task, _ := vt.task(t)
				pl, err := plan(l, task, rr)
				if err != nil {
					t.Fatal(err)
				}
				if pl.partition != c.Expect[i].Partition {
					t.Errorf("task %d: partition %d, want %d", i, pl.partition, c.Expect[i].Partition)
				}
				var want [][]byte
				for _, a := range c.Expect[i].Command {
					want = append(want, bin(a))
				}
				if got := pl.logicalCommand(); !reflect.DeepEqual(got, want) {
					t.Errorf("task %d: command %q, want %q", i, got, want)
				}
			}
			var client redis.UniversalClient
			if c.Pool.Mode == ClusterMode {
				client = clusterClient(t)
			} else {
				client = flushed(t)
			}
			p := c.Pool.pool(t, client, c.RoundRobinStart)
			var subs []Submitted
			for _, vt := range c.Tasks {
				task, _ := vt.task(t)
				s, err := p.SubmitMany(ctx, []Task{task}, DurableOptions{})
				if err != nil {
					t.Fatal(err)
				}
				subs = append(subs, s[0])
			}
			for i, e := range c.Expect {
				s := subs[i]
				if s.Partition != e.Partition {
					t.Errorf("task %d: partition %d, want %d", i, s.Partition, e.Partition)
				}
				if e.Duplicate != nil && s.Duplicate != *e.Duplicate {
					t.Errorf("task %d: duplicate %v", i, s.Duplicate)
				}
				if e.SameEntryAs != nil {
					if s.EntryID != subs[*e.SameEntryAs].EntryID {
						t.Errorf("task %d: entry %s, want %s", i, s.EntryID, subs[*e.SameEntryAs].EntryID)
					}
				} else {
					var want [][2]string
					for _, kv := range e.Entry {
						want = append(want, [2]string{string(bin(kv[0])), string(bin(kv[1]))})
					}
					if got := entryFields(t, ctx, client, p.Layout.Keys[s.Partition].Stream, s.EntryID); !reflect.DeepEqual(got, want) {
						t.Errorf("task %d: entry %q, want %q", i, got, want)
					}
				}
				want := "@entry_id"
				if e.TaskID != nil {
					want = *e.TaskID
				}
				if want == "@entry_id" {
					want = s.EntryID
				}
				if s.TaskID != want {
					t.Errorf("task %d: task id %q, want %q", i, s.TaskID, want)
				}
			}
			for i, n := range c.StreamLengths {
				if got := client.XLen(ctx, p.Layout.Keys[i].Stream).Val(); got != n {
					t.Errorf("partition %d: length %d, want %d", i, got, n)
				}
			}
		})
	}
	for _, c := range v.Errors {
		t.Run("refused: "+c.Name, func(t *testing.T) {
			task, applies := c.Task.task(t)
			if !applies {
				t.Skip("the zero value means \"not given\" in Go (no id / no attempt / the default window)")
			}
			r := flushed(t)
			p := c.Pool.pool(t, r, 0)
			if _, err := p.SubmitMany(ctx, []Task{{Payload: []byte("fine")}, task}, DurableOptions{}); !errors.Is(err, ErrConfig) {
				t.Fatalf("want a config error, got %v", err)
			}
			if n := r.DBSize(ctx).Val(); n != 0 {
				t.Fatalf("%d keys written", n)
			}
		})
	}
	r := flushed(t)
	p, _ := New(r, Options{Stream: "q"})
	for _, id := range v.AcceptedIDs {
		s, err := p.Submit(ctx, []byte("x"), TaskOptions{ID: id})
		if err != nil || s.TaskID != id {
			t.Fatalf("id %q: %v", id, err)
		}
		if got := entryFields(t, ctx, r, "q", s.EntryID); !reflect.DeepEqual(got, [][2]string{{"payload", "x"}, {"id", id}}) {
			t.Errorf("id %q: entry %q", id, got)
		}
	}
}

var placeholder = regexp.MustCompile(`\$\{(P|D|G)(\d*)\}`)

func expand(a string, l *Layout) string {
	return placeholder.ReplaceAllStringFunc(a, func(m string) string {
		s := placeholder.FindStringSubmatch(m)
		if s[1] == "G" {
			return l.Group
		}
		i := 0
		for _, ch := range s[2] {
			i = i*10 + int(ch-'0')
		}
		if s[1] == "P" {
			return l.Keys[i].Stream
		}
		return l.Keys[i].Dead
	})
}

func checkStats(t *testing.T, got, want map[string]any) {
	t.Helper()
	for k, w := range want {
		switch k {
		case "partitions":
			gp, wp := got[k].([]any), w.([]any)
			if len(gp) != len(wp) {
				t.Fatalf("%d partitions, want %d", len(gp), len(wp))
			}
			for i := range wp {
				checkStats(t, gp[i].(map[string]any), wp[i].(map[string]any))
			}
		case "consumers":
			var gc []any
			for _, c := range got[k].([]any) {
				m := c.(map[string]any)
				gc = append(gc, map[string]any{"name": m["name"], "pending": m["pending"]})
			}
			if !reflect.DeepEqual(gc, w) && !(len(gc) == 0 && len(w.([]any)) == 0) {
				t.Errorf("consumers %v, want %v", gc, w)
			}
		default:
			if w == "present" {
				if n, ok := got[k].(float64); !ok || n < 0 {
					t.Errorf("%s = %v, want a number >= 0", k, got[k])
				}
			} else if !reflect.DeepEqual(got[k], w) {
				t.Errorf("%s = %v, want %v", k, got[k], w)
			}
		}
	}
}

func TestVectorsStats(t *testing.T) {
	var v struct {
		Cases []struct {
			Name   string         `json:"name"`
			Pool   vpool          `json:"pool"`
			Setup  [][]string     `json:"setup"`
			Expect map[string]any `json:"expect"`
		} `json:"cases"`
	}
	loadVectors(t, "stats.json", &v)
	ctx := context.Background()
	for _, c := range v.Cases {
		t.Run(c.Name, func(t *testing.T) {
			var r redis.UniversalClient
			if c.Pool.Mode == ClusterMode {
				r = clusterClient(t)
			} else {
				r = flushed(t)
			}
			p := c.Pool.pool(t, r, 0)
			for _, cmd := range c.Setup {
				args := make([]any, len(cmd))
				for i, a := range cmd {
					args[i] = expand(a, p.Layout)
				}
				if err := r.Do(ctx, args...).Err(); err != nil {
					t.Fatalf("%v: %v", cmd, err)
				}
			}
			st, err := p.Stats(ctx)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := json.Marshal(st)
			var got map[string]any
			_ = json.Unmarshal(b, &got)
			checkStats(t, got, c.Expect)
		})
	}
}

type dlVectors struct {
	Parse []struct {
		Name      string         `json:"name"`
		Partition int            `json:"partition"`
		ID        string         `json:"id"`
		Fields    [][]any        `json:"fields"`
		Expect    map[string]any `json:"expect"`
	} `json:"parse"`
	Retry []struct {
		Name         string  `json:"name"`
		Pool         vpool   `json:"pool"`
		Partition    int     `json:"partition"`
		Fields       [][]any `json:"fields"`
		WithResult   bool    `json:"with_result"`
		ExpectEntry  [][]any `json:"expect_entry"`
		ExpectTaskID string  `json:"expect_task_id"`
	} `json:"retry"`
	Filters struct {
		Pool    vpool `json:"pool"`
		Entries []struct {
			Partition int     `json:"partition"`
			ID        string  `json:"id"`
			Fields    [][]any `json:"fields"`
		} `json:"entries"`
		Cases []struct {
			Filter map[string]any `json:"filter"`
			Expect []string       `json:"expect"`
		} `json:"cases"`
	} `json:"filters"`
	Refs []struct {
		Text      string `json:"text"`
		Partition int    `json:"partition"`
		ID        string `json:"id"`
		Canonical string `json:"canonical"`
	} `json:"refs"`
	BadRefs []string `json:"bad_refs"`
}

func flat(kv [][]any) []any {
	var out []any
	for _, p := range kv {
		out = append(out, bin(p[0]), bin(p[1]))
	}
	return out
}

func dlView(d DeadLetter) map[string]any {
	opt := func(p *string) any {
		if p == nil {
			return nil
		}
		return *p
	}
	var payload any
	if d.Payload != nil {
		payload = map[string]any{"text": string(d.Payload)}
	}
	var deliveries any
	if d.Deliveries != nil {
		deliveries = float64(*d.Deliveries)
	}
	fields := []any{}
	for _, f := range d.Fields {
		fields = append(fields, []any{f.Name, string(f.Value)})
	}
	return map[string]any{"ref": d.Ref.String(), "task_id": opt(d.TaskID), "payload": payload, "original_id": opt(d.OriginalID),
		"error": opt(d.Error), "deliveries": deliveries, "stream": opt(d.Stream), "group": opt(d.Group), "consumer": opt(d.Consumer),
		"dead_lettered_ms": float64(d.DeadLetteredMs), "fields": fields}
}

func TestVectorsDeadLetters(t *testing.T) {
	var v dlVectors
	loadVectors(t, "dead_letters.json", &v)
	ctx := context.Background()
	for _, c := range v.Parse {
		t.Run("parse: "+c.Name, func(t *testing.T) {
			r := flushed(t)
			p, _ := New(r, Options{Stream: "q", Partitions: c.Partition + 1})
			if err := r.Do(ctx, append([]any{"XADD", p.Layout.Keys[c.Partition].Dead, c.ID}, flat(c.Fields)...)...).Err(); err != nil {
				t.Fatal(err)
			}
			d, err := p.DeadLetter(ctx, DeadLetterRef{Partition: c.Partition, ID: c.ID})
			if err != nil || d == nil {
				t.Fatal(d, err)
			}
			if got := dlView(*d); !reflect.DeepEqual(got, c.Expect) {
				t.Errorf("got %v\nwant %v", got, c.Expect)
			}
			list, err := p.ListDeadLetters(ctx, DeadLetterFilter{}, false, 0)
			if err != nil || len(list) != 1 || !reflect.DeepEqual(dlView(list[0]), c.Expect) {
				t.Errorf("listed %v, %v", list, err)
			}
		})
	}
	for _, c := range v.Retry {
		t.Run("retry: "+c.Name, func(t *testing.T) {
			var client redis.UniversalClient
			if c.Pool.Mode == ClusterMode {
				client = clusterClient(t)
			} else {
				client = flushed(t)
			}
			p := c.Pool.pool(t, client, 0)
			k := p.Layout.Keys[c.Partition]
			dlID, err := client.Do(ctx, append([]any{"XADD", k.Dead, "*"}, flat(c.Fields)...)...).Text()
			if err != nil {
				t.Fatal(err)
			}
			tid := c.ExpectTaskID
			if c.WithResult {
				if err := RunScript(ctx, client, "result", []string{k.Result(tid), k.Notify(tid)}, 60000, "dead", "task_id", tid).Err(); err != nil {
					t.Fatal(err)
				}
			}
			ref, _ := ParseDeadLetterRef(DeadLetterRef{Partition: c.Partition, ID: dlID}.String())
			out, err := p.RetryDeadLetters(ctx, []DeadLetterRef{ref})
			if err != nil || len(out) != 1 || out[0].EntryID == "" || out[0].Ref != ref {
				t.Fatal(out, err)
			}
			var want [][2]string
			for _, kv := range c.ExpectEntry {
				want = append(want, [2]string{string(bin(kv[0])), string(bin(kv[1]))})
			}
			if got := entryFields(t, ctx, client, k.Stream, out[0].EntryID); !reflect.DeepEqual(got, want) {
				t.Errorf("entry %q, want %q", got, want)
			}
			if client.XLen(ctx, k.Stream).Val() != 1 || client.XLen(ctx, k.Dead).Val() != 0 || client.Exists(ctx, k.Result(tid), k.Notify(tid)).Val() != 0 {
				t.Error("not moved exactly once, or the result keys remain")
			}
			again, err := p.RetryDeadLetters(ctx, []DeadLetterRef{ref})
			if err != nil || again[0].EntryID != "" || client.XLen(ctx, k.Stream).Val() != 1 {
				t.Errorf("a second retry did something: %v %v", again, err)
			}
		})
	}
	t.Run("filters", func(t *testing.T) {
		r := flushed(t)
		p := v.Filters.Pool.pool(t, r, 0)
		for _, e := range v.Filters.Entries {
			if err := r.Do(ctx, append([]any{"XADD", p.Layout.Keys[e.Partition].Dead, e.ID}, flat(e.Fields)...)...).Err(); err != nil {
				t.Fatal(err)
			}
		}
		for _, c := range v.Filters.Cases {
			var f DeadLetterFilter
			limit, newest := 0, false
			for k, val := range c.Filter {
				switch k {
				case "limit":
					limit = int(val.(float64))
				case "newest_first":
					newest = val.(bool)
				case "partition":
					f.Partition = InPartition(int(val.(float64)))
				case "since_ms":
					f.Since = time.UnixMilli(int64(val.(float64)))
				case "until_ms":
					f.Until = time.UnixMilli(int64(val.(float64)))
				case "error_contains":
					f.ErrorContains = val.(string)
				case "task_id":
					f.TaskID = val.(string)
				case "consumer":
					f.Consumer = val.(string)
				case "min_deliveries":
					f.MinDeliveries = int64(val.(float64))
				default:
					t.Fatalf("unknown filter %s", k)
				}
			}
			list, err := p.ListDeadLetters(ctx, f, newest, limit)
			if err != nil {
				t.Fatal(err)
			}
			got := []string{}
			for _, d := range list {
				got = append(got, d.Ref.String())
			}
			if !reflect.DeepEqual(got, c.Expect) {
				t.Errorf("filter %v: %v, want %v", c.Filter, got, c.Expect)
			}
		}
	})
	for _, c := range v.Refs {
		r, err := ParseDeadLetterRef(c.Text)
		want := c.Canonical
		if want == "" {
			want = c.Text
		}
		if err != nil || r.Partition != c.Partition || r.ID != c.ID || r.String() != want {
			t.Errorf("%q: %v %v", c.Text, r, err)
		}
	}
	for _, b := range v.BadRefs {
		if _, err := ParseDeadLetterRef(b); !errors.Is(err, ErrConfig) {
			t.Errorf("%q accepted", b)
		}
	}
}

func TestVectorsResults(t *testing.T) {
	var v struct {
		Cases []struct {
			Name   string         `json:"name"`
			State  string         `json:"state"`
			Fields [][]any        `json:"fields"`
			Expect map[string]any `json:"expect"`
		} `json:"cases"`
	}
	loadVectors(t, "results.json", &v)
	ctx := context.Background()
	view := func(r *Result) map[string]any {
		opt := func(p *string) any {
			if p == nil {
				return nil
			}
			return *p
		}
		num := func(p *int64) any {
			if p == nil {
				return nil
			}
			return float64(*p)
		}
		var out any
		if r.Output != nil {
			if s := string(r.Output); bytes.Equal([]byte(s), r.Output) && !bytes.ContainsAny(r.Output, "\x00\xff") {
				out = map[string]any{"text": s}
			} else {
				out = map[string]any{"base64": base64.StdEncoding.EncodeToString(r.Output)}
			}
		}
		extra := []any{}
		for _, f := range r.Extra {
			extra = append(extra, []any{f.Name, string(f.Value)})
		}
		return map[string]any{"state": r.State, "version": num(r.Version), "task_id": opt(r.TaskID), "entry_id": opt(r.EntryID),
			"deliveries": num(r.Deliveries), "consumer": opt(r.Consumer), "started_ms": num(r.StartedMs), "finished_ms": num(r.FinishedMs),
			"output": out, "output_truncated": r.OutputTruncated, "error": opt(r.Error), "dead_letter_id": opt(r.DeadLetterID), "extra": extra}
	}
	for _, c := range v.Cases {
		t.Run(c.Name, func(t *testing.T) {
			r := flushed(t)
			p, _ := New(r, Options{Stream: "q"})
			var tid string
			for _, kv := range c.Fields {
				if kv[0] == "task_id" {
					tid = kv[1].(string)
				}
			}
			k := p.Layout.Keys[0]
			args := append([]any{60000, c.State}, flat(c.Fields)...)
			if err := RunScript(ctx, r, "result", []string{k.Result(tid), k.Notify(tid)}, args...).Err(); err != nil {
				t.Fatal(err)
			}
			if ttl := r.PTTL(ctx, k.Result(tid)).Val(); ttl <= 0 || ttl > time.Minute {
				t.Errorf("ttl %v", ttl)
			}
			if l := r.LRange(ctx, k.Notify(tid), 0, -1).Val(); !reflect.DeepEqual(l, []string{c.State}) {
				t.Errorf("notification list %v", l)
			}
			ref, _ := p.Ref(tid, Locate{})
			res, err := p.Result(ctx, ref)
			if err != nil || res == nil || !reflect.DeepEqual(view(res), c.Expect) {
				t.Errorf("result %v, %v\nwant %v", view(res), err, c.Expect)
			}
			res, err = p.WaitFor(ctx, ref, time.Second)
			if err != nil || !reflect.DeepEqual(view(res), c.Expect) {
				t.Errorf("wait: %v", err)
			}
			st, err := p.Status(ctx, TaskRef{TaskID: tid, EntryID: "1-0"})
			if err != nil || st.State != c.State || !reflect.DeepEqual(view(st.Result), c.Expect) {
				t.Errorf("status %v %v", st, err)
			}
			_ = RunScript(ctx, r, "result", []string{k.Result(tid), k.Notify(tid)}, args...).Err()
			if l := r.LRange(ctx, k.Notify(tid), 0, -1).Val(); !reflect.DeepEqual(l, []string{c.State}) {
				t.Errorf("notification list after a second write %v", l)
			}
		})
	}
}
