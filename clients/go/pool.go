package workpool

import (
	"context"
	"crypto/tls"
	"embed"
	"errors"
	"fmt"
	"iter"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

//go:embed scripts/*.lua
var scriptFiles embed.FS

// ScriptNames are the canonical Lua scripts (clients/vectors/scripts).
var ScriptNames = []string{"stats", "submit_dedup", "retry", "result"}

// ScriptSource returns a canonical script's text.
func ScriptSource(name string) string {
	b, err := scriptFiles.ReadFile("scripts/" + name + ".lua")
	if err != nil {
		panic("workpool: missing embedded script " + name)
	}
	return string(b)
}

var scripts = func() map[string]*redis.Script {
	m := map[string]*redis.Script{}
	for _, n := range ScriptNames {
		m[n] = redis.NewScript(ScriptSource(n))
	}
	return m
}()

// RunScript runs a canonical script (EVALSHA, loading it when the server lacks it).
func RunScript(ctx context.Context, c redis.Scripter, name string, keys []string, args ...any) *redis.Cmd {
	return scripts[name].Run(ctx, c, keys, args...)
}

// Options configure a Pool.
type Options struct {
	Stream string
	// Group defaults to Stream, as a WorkPool's does.
	Group      string
	Partitions int // 0 means 1
	// Mode decides the key names; "" means ClusterMode for a *redis.ClusterClient, else Standalone.
	Mode Mode
	// DeadLetterStream is a custom dead-letter stream name (nil: the default).
	DeadLetterStream *string
	// RoundRobinStart is the first partition of the round robin (nil: random).
	RoundRobinStart *int
}

// Pool is a workpool queue seen from a producer: submit tasks, read stats, inspect and
// retry dead letters, wait for results. It is safe for concurrent use.
type Pool struct {
	Layout *Layout
	rdb    redis.UniversalClient
	rr     *roundRobin
	owned  bool
}

// New returns a Pool on a go-redis client (*redis.Client, a failover client, or *redis.ClusterClient).
func New(rdb redis.UniversalClient, o Options) (*Pool, error) {
	mode := o.Mode
	if mode == "" {
		mode = Standalone
		if _, ok := rdb.(*redis.ClusterClient); ok {
			mode = ClusterMode
		}
	}
	n := o.Partitions
	if n == 0 {
		n = 1
	}
	l, err := NewLayout(o.Stream, o.Group, n, mode, o.DeadLetterStream)
	if err != nil {
		return nil, err
	}
	rr, err := newRoundRobin(n, o.RoundRobinStart)
	if err != nil {
		return nil, err
	}
	return &Pool{Layout: l, rdb: rdb, rr: rr}, nil
}

// FromURL returns a Pool on the Redis a workpool URL names (the same URL the WorkPool
// uses). tlsConfig is used for rediss URLs (nil: the system's roots). Close closes it.
func FromURL(rawURL string, o Options, tlsConfig ...*tls.Config) (*Pool, error) {
	var tc *tls.Config
	if len(tlsConfig) > 0 {
		tc = tlsConfig[0]
	}
	rdb, mode, err := Connect(rawURL, tc)
	if err != nil {
		return nil, err
	}
	o.Mode = mode
	p, err := New(rdb, o)
	if err != nil {
		_ = rdb.Close()
		return nil, err
	}
	p.owned = true
	return p, nil
}

// Redis is the client the pool uses.
func (p *Pool) Redis() redis.UniversalClient { return p.rdb }

// Close closes the client if FromURL created it.
func (p *Pool) Close() error {
	if p.owned {
		return p.rdb.Close()
	}
	return nil
}

// ------------------------------------------------------------------------ submit

// DurableOptions: with MinReplicas R > 0 each pipeline ends with WAIT R WaitTimeout;
// tasks are Confirmed when R replicas acknowledged them. WaitTimeout must stay below the
// client's ReadTimeout (3 s by default), which bounds a pipeline's reply.
type DurableOptions struct {
	MinReplicas int
	WaitTimeout time.Duration // default 1 s
}

// SubmitError is returned when a batch failed part way: Submitted holds, by input
// position, the tasks that got an entry id (nil for the others).
type SubmitError struct {
	Submitted []*Submitted
	Err       error
}

func (e *SubmitError) Error() string {
	n := 0
	for _, s := range e.Submitted {
		if s != nil {
			n++
		}
	}
	return fmt.Sprintf("workpool: submit failed after %d of %d tasks: %v", n, len(e.Submitted), e.Err)
}

func (e *SubmitError) Unwrap() error { return e.Err }

// Submit submits one task.
func (p *Pool) Submit(ctx context.Context, payload []byte, o TaskOptions, d ...DurableOptions) (Submitted, error) {
	var do DurableOptions
	if len(d) > 0 {
		do = d[0]
	}
	subs, err := p.SubmitMany(ctx, []Task{{Payload: payload, TaskOptions: o}}, do)
	if err != nil {
		return Submitted{}, err
	}
	return subs[0], nil
}

// SubmitMany submits tasks in pipelines (per partition, at most 1,000 commands each);
// it returns one Submitted per task, in input order. Every task is validated first: bad
// input submits nothing. A failure part way returns a *SubmitError.
func (p *Pool) SubmitMany(ctx context.Context, tasks []Task, d DurableOptions) ([]Submitted, error) {
	if d.MinReplicas < 0 {
		return nil, configErr("MinReplicas must be >= 0")
	}
	if d.WaitTimeout == 0 {
		d.WaitTimeout = time.Second
	}
	plans := make([]planned, len(tasks))
	for i, t := range tasks {
		pl, err := plan(p.Layout, t, p.rr)
		if err != nil {
			return nil, err
		}
		plans[i] = pl
	}
	out := make([]*Submitted, len(plans))
	order := []int{}
	byPart := map[int][]int{}
	for i, pl := range plans {
		if _, ok := byPart[pl.partition]; !ok {
			order = append(order, pl.partition)
		}
		byPart[pl.partition] = append(byPart[pl.partition], i)
	}
	for _, part := range order {
		idxs := byPart[part]
		for start := 0; start < len(idxs); start += pipelineChunk {
			chunk := idxs[start:min(start+pipelineChunk, len(idxs))]
			if err := p.submitChunk(ctx, part, plans, chunk, out, d); err != nil {
				return nil, &SubmitError{Submitted: out, Err: err}
			}
		}
	}
	res := make([]Submitted, len(out))
	for i, s := range out {
		res[i] = *s
	}
	return res, nil
}

func (p *Pool) submitChunk(ctx context.Context, part int, plans []planned, chunk []int, out []*Submitted, d DurableOptions) error {
	var pipe redis.Pipeliner
	if cc, ok := p.rdb.(*redis.ClusterClient); ok && d.MinReplicas > 0 {
		// WAIT counts the writes of its own connection: the XADDs and the WAIT go to the
		// partition's node in one pipeline (one connection).
		node, err := cc.MasterForKey(ctx, p.Layout.Keys[part].Stream)
		if err != nil {
			return err
		}
		pipe = node.Pipeline()
	} else {
		pipe = p.rdb.Pipeline()
	}
	cmds := make([]*redis.Cmd, len(chunk))
	for j, i := range chunk {
		pl := plans[i]
		if pl.dedup {
			args := append([]any{"EVAL", ScriptSource("submit_dedup"), len(pl.keys)}, anys(pl.keys)...)
			cmds[j] = pipe.Do(ctx, append(args, pl.args...)...)
		} else {
			cmds[j] = pipe.Do(ctx, append([]any{"XADD", pl.keys[0], "*"}, pl.args...)...)
		}
	}
	var wait *redis.Cmd
	if d.MinReplicas > 0 {
		wait = pipe.Do(ctx, "WAIT", d.MinReplicas, d.WaitTimeout.Milliseconds())
	}
	_, _ = pipe.Exec(ctx) // errors are per command below
	var confirmed *bool
	if wait != nil {
		n, err := wait.Int64()
		c := err == nil && n >= int64(d.MinReplicas)
		confirmed = &c
	}
	var first error
	for j, i := range chunk {
		pl := plans[i]
		v, err := cmds[j].Result()
		if err != nil {
			if first == nil {
				first = err
			}
			continue
		}
		s := &Submitted{Partition: pl.partition, TaskID: pl.taskID, Confirmed: confirmed}
		if pl.dedup {
			a, _ := v.([]any)
			if len(a) != 2 {
				return fmt.Errorf("unexpected reply from the dedup script: %v", v)
			}
			added, _ := asInt(a[0])
			s.EntryID, _ = asString(a[1])
			s.Duplicate = added == 0
		} else {
			s.EntryID, _ = asString(v)
		}
		if s.TaskID == "" {
			s.TaskID = s.EntryID
		}
		out[i] = s
	}
	return first
}

func anys[T any](a []T) []any {
	out := make([]any, len(a))
	for i, v := range a {
		out[i] = v
	}
	return out
}

// ------------------------------------------------------------------------ stats

// PartitionStats reads one partition's stats atomically.
func (p *Pool) PartitionStats(ctx context.Context, partition int) (Stats, error) {
	k, err := p.Layout.Partition(partition)
	if err != nil {
		return Stats{}, err
	}
	v, err := RunScript(ctx, p.rdb, "stats", []string{k.Stream, k.Dead}, p.Layout.Group, statsCountLimitChunks).Result()
	if err != nil {
		return Stats{}, err
	}
	return parseStats(v, k.Stream, p.Layout.Group)
}

// Stats reads the pool's stats; json.Marshal gives what `workpool-worker stats --json` prints.
func (p *Pool) Stats(ctx context.Context) (Stats, error) {
	parts := make([]Stats, 0, p.Layout.Partitions)
	for i := 0; i < p.Layout.Partitions; i++ {
		st, err := p.PartitionStats(ctx, i)
		if err != nil {
			return Stats{}, err
		}
		parts = append(parts, st)
	}
	return aggregateStats(p.Layout.Stream, p.Layout.Group, parts), nil
}

// ------------------------------------------------------------------------ dead letters

func (p *Pool) partitionsOf(f DeadLetterFilter) ([]PartitionKeys, error) {
	if f.Partition != nil {
		k, err := p.Layout.Partition(*f.Partition)
		return []PartitionKeys{k}, err
	}
	return p.Layout.Keys, nil
}

// xrange reads one page of a dead-letter stream, fields in order.
func (p *Pool) xrange(ctx context.Context, key, lo, hi string, newestFirst bool, count int) ([][2]any, error) {
	cmd := "XRANGE"
	a, b := lo, hi
	if newestFirst {
		cmd, a, b = "XREVRANGE", hi, lo
	}
	v, err := p.rdb.Do(ctx, cmd, key, a, b, "COUNT", count).Result()
	if err != nil {
		return nil, err
	}
	rows, _ := v.([]any)
	out := make([][2]any, 0, len(rows))
	for _, r := range rows {
		pair, ok := r.([]any)
		if !ok || len(pair) != 2 {
			return nil, fmt.Errorf("unexpected %s row: %v", cmd, r)
		}
		out = append(out, [2]any{pair[0], pair[1]})
	}
	return out, nil
}

// partitionPages yields one partition's matching dead letters, page by page.
func (p *Pool) partitionPages(ctx context.Context, k PartitionKeys, f DeadLetterFilter, newestFirst bool, lastID string) iter.Seq2[DeadLetter, error] {
	return func(yield func(DeadLetter, error) bool) {
		lo, hi := f.rangeBounds()
		if lastID != "" {
			hi = upperBound(hi, lastID)
		}
		for {
			rows, err := p.xrange(ctx, k.Dead, lo, hi, newestFirst, listPage)
			if err != nil {
				yield(DeadLetter{}, err)
				return
			}
			for _, row := range rows {
				id, _ := asString(row[0])
				fields, _ := row[1].([]any)
				d, err := parseDeadLetter(k.Index, id, fields)
				if err != nil {
					yield(DeadLetter{}, err)
					return
				}
				if f.matches(d) && !yield(d, nil) {
					return
				}
			}
			if len(rows) < listPage {
				return
			}
			last, _ := asString(rows[len(rows)-1][0])
			if newestFirst {
				hi = "(" + last
			} else {
				lo = "(" + last
			}
		}
	}
}

// DeadLetters yields the dead letters matching the filter, oldest first (or newest
// first), partitions merged; read page by page. Stop early by breaking the loop.
func (p *Pool) DeadLetters(ctx context.Context, f DeadLetterFilter, newestFirst bool) iter.Seq2[DeadLetter, error] {
	return func(yield func(DeadLetter, error) bool) {
		parts, err := p.partitionsOf(f)
		if err != nil {
			yield(DeadLetter{}, err)
			return
		}
		type head struct {
			d    DeadLetter
			next func() (DeadLetter, error, bool)
			stop func()
		}
		var heads []head
		defer func() {
			for _, h := range heads {
				h.stop()
			}
		}()
		for _, k := range parts {
			next, stop := iter.Pull2(p.partitionPages(ctx, k, f, newestFirst, ""))
			d, err, ok := next()
			if err != nil {
				stop()
				yield(DeadLetter{}, err)
				return
			}
			if ok {
				heads = append(heads, head{d, next, stop})
			} else {
				stop()
			}
		}
		for len(heads) > 0 {
			best := 0
			for j := 1; j < len(heads); j++ {
				c := compareDeadLetters(heads[j].d, heads[best].d)
				if (newestFirst && c > 0) || (!newestFirst && c < 0) {
					best = j
				}
			}
			h := heads[best]
			if !yield(h.d, nil) {
				return
			}
			d, err, ok := h.next()
			if err != nil {
				yield(DeadLetter{}, err)
				return
			}
			if ok {
				heads[best].d = d
			} else {
				h.stop()
				heads = append(heads[:best], heads[best+1:]...)
			}
		}
	}
}

// ListDeadLetters returns at most limit matching dead letters (limit <= 0: all).
func (p *Pool) ListDeadLetters(ctx context.Context, f DeadLetterFilter, newestFirst bool, limit int) ([]DeadLetter, error) {
	var out []DeadLetter
	for d, err := range p.DeadLetters(ctx, f, newestFirst) {
		if err != nil {
			return nil, err
		}
		out = append(out, d)
		if limit > 0 && len(out) >= limit {
			break
		}
	}
	return out, nil
}

// DeadLetter returns one dead letter by reference (nil when it is not there).
func (p *Pool) DeadLetter(ctx context.Context, ref DeadLetterRef) (*DeadLetter, error) {
	k, err := p.Layout.Partition(ref.Partition)
	if err != nil {
		return nil, err
	}
	rows, err := p.xrange(ctx, k.Dead, ref.ID, ref.ID, false, 1)
	if err != nil || len(rows) == 0 {
		return nil, err
	}
	fields, _ := rows[0][1].([]any)
	d, err := parseDeadLetter(ref.Partition, ref.ID, fields)
	return &d, err
}

func (p *Pool) groupRefs(refs []DeadLetterRef) (map[int][]int, []int, error) {
	groups := map[int][]int{}
	var order []int
	for i, r := range refs {
		if _, err := p.Layout.Partition(r.Partition); err != nil {
			return nil, nil, err
		}
		if _, err := ParseDeadLetterRef(r.ID); err != nil {
			return nil, nil, err
		}
		if _, ok := groups[r.Partition]; !ok {
			order = append(order, r.Partition)
		}
		groups[r.Partition] = append(groups[r.Partition], i)
	}
	return groups, order, nil
}

// RetryDeadLetters puts dead letters back into their partition's task stream, each
// atomically (docs/protocol.md section 6); it returns the new entry ids in input order
// ("" for one that was not there).
func (p *Pool) RetryDeadLetters(ctx context.Context, refs []DeadLetterRef) ([]RetryOutcome, error) {
	groups, order, err := p.groupRefs(refs)
	if err != nil {
		return nil, err
	}
	out := make([]RetryOutcome, len(refs))
	for _, part := range order {
		k := p.Layout.Keys[part]
		idxs := groups[part]
		for start := 0; start < len(idxs); start += retryChunk {
			chunk := idxs[start:min(start+retryChunk, len(idxs))]
			args := []any{k.Stream}
			for _, i := range chunk {
				args = append(args, refs[i].ID)
			}
			v, err := RunScript(ctx, p.rdb, "retry", []string{k.Stream, k.Dead}, args...).Result()
			if err != nil {
				return out, err
			}
			rows, _ := v.([]any)
			for j, i := range chunk {
				out[i] = RetryOutcome{Ref: refs[i]}
				if j < len(rows) {
					if row, ok := rows[j].([]any); ok && len(row) > 1 {
						out[i].EntryID, _ = asString(row[1])
					}
				}
			}
		}
	}
	return out, nil
}

func (p *Pool) newestID(ctx context.Context, k PartitionKeys) (string, error) {
	rows, err := p.xrange(ctx, k.Dead, "-", "+", true, 1)
	if err != nil || len(rows) == 0 {
		return "", err
	}
	id, _ := asString(rows[0][0])
	return id, nil
}

// RetryAllDeadLetters retries every dead letter matching the filter that exists when
// the call starts (in batches of 100; dead letters written meanwhile stay).
func (p *Pool) RetryAllDeadLetters(ctx context.Context, f DeadLetterFilter) ([]RetryOutcome, error) {
	parts, err := p.partitionsOf(f)
	if err != nil {
		return nil, err
	}
	var out []RetryOutcome
	for _, k := range parts {
		last, err := p.newestID(ctx, k)
		if err != nil {
			return out, err
		}
		if last == "" {
			continue
		}
		var batch []DeadLetterRef
		flush := func() error {
			o, err := p.RetryDeadLetters(ctx, batch)
			out = append(out, o...)
			batch = batch[:0]
			return err
		}
		for d, err := range p.partitionPages(ctx, k, f, false, last) {
			if err != nil {
				return out, err
			}
			batch = append(batch, d.Ref)
			if len(batch) == retryChunk {
				if err := flush(); err != nil {
					return out, err
				}
			}
		}
		if len(batch) > 0 {
			if err := flush(); err != nil {
				return out, err
			}
		}
	}
	return out, nil
}

// PurgeDeadLetters deletes dead letters by reference; it returns how many existed.
func (p *Pool) PurgeDeadLetters(ctx context.Context, refs []DeadLetterRef) (int64, error) {
	groups, order, err := p.groupRefs(refs)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, part := range order {
		k := p.Layout.Keys[part]
		idxs := groups[part]
		for start := 0; start < len(idxs); start += pipelineChunk {
			var ids []string
			for _, i := range idxs[start:min(start+pipelineChunk, len(idxs))] {
				ids = append(ids, refs[i].ID)
			}
			c, err := p.rdb.XDel(ctx, k.Dead, ids...).Result()
			if err != nil {
				return n, err
			}
			n += c
		}
	}
	return n, nil
}

// PurgeAllDeadLetters deletes every dead letter matching the filter that exists when the
// call starts; it returns how many.
func (p *Pool) PurgeAllDeadLetters(ctx context.Context, f DeadLetterFilter) (int64, error) {
	parts, err := p.partitionsOf(f)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, k := range parts {
		last, err := p.newestID(ctx, k)
		if err != nil {
			return n, err
		}
		if last == "" {
			continue
		}
		if f.isEmpty() {
			c, err := p.rdb.Do(ctx, "XTRIM", k.Dead, "MINID", trimThreshold(last)).Int64()
			if err != nil {
				return n, err
			}
			n += c
			continue
		}
		var ids []string
		for d, err := range p.partitionPages(ctx, k, f, false, last) {
			if err != nil {
				return n, err
			}
			ids = append(ids, d.Ref.ID)
		}
		for start := 0; start < len(ids); start += pipelineChunk {
			c, err := p.rdb.XDel(ctx, k.Dead, ids[start:min(start+pipelineChunk, len(ids))]...).Result()
			if err != nil {
				return n, err
			}
			n += c
		}
	}
	return n, nil
}

// ------------------------------------------------------------------------ results

// Locate finds the partition of a bare task id: Partition, or the Key it was submitted with.
type Locate struct {
	Partition *int
	Key       []byte
}

// Ref returns the TaskRef of a bare task id.
func (p *Pool) Ref(taskID string, where Locate) (TaskRef, error) {
	if taskID == "" {
		return TaskRef{}, configErr("a task id must not be empty")
	}
	switch {
	case where.Partition != nil:
		k, err := p.Layout.Partition(*where.Partition)
		return TaskRef{TaskID: taskID, Partition: k.Index}, err
	case where.Key != nil:
		return TaskRef{TaskID: taskID, Partition: PartitionForKey(where.Key, p.Layout.Partitions)}, nil
	case p.Layout.Partitions == 1:
		return TaskRef{TaskID: taskID}, nil
	}
	return TaskRef{}, configErr("the pool has %d partitions: say which one holds task %q (Locate.Partition or Locate.Key), or pass what Submit returned", p.Layout.Partitions, taskID)
}

func (p *Pool) keysOf(ref TaskRef) (PartitionKeys, error) {
	if ref.TaskID == "" {
		return PartitionKeys{}, configErr("a task id must not be empty")
	}
	return p.Layout.Partition(ref.Partition)
}

// Result returns the task's result record (nil: not finished, results off, or expired).
func (p *Pool) Result(ctx context.Context, ref TaskRef) (*Result, error) {
	k, err := p.keysOf(ref)
	if err != nil {
		return nil, err
	}
	h, err := p.rdb.HGetAll(ctx, k.Result(ref.TaskID)).Result()
	if err != nil {
		return nil, err
	}
	return parseResult(h), nil
}

// Status says where the task is: done/dead need results on; queued/running need the
// entry id (use what Submit returned).
func (p *Pool) Status(ctx context.Context, ref TaskRef) (TaskStatus, error) {
	k, err := p.keysOf(ref)
	if err != nil {
		return TaskStatus{}, err
	}
	if res, err := p.Result(ctx, ref); err != nil || res != nil {
		if res != nil {
			return TaskStatus{State: res.State, Result: res}, nil
		}
		return TaskStatus{}, err
	}
	if ref.EntryID != "" {
		rows, err := p.xrange(ctx, k.Stream, ref.EntryID, ref.EntryID, false, 1)
		if err != nil {
			return TaskStatus{}, err
		}
		if len(rows) > 0 {
			pend, err := p.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: k.Stream, Group: p.Layout.Group, Start: ref.EntryID, End: ref.EntryID, Count: 1}).Result()
			if err != nil && !strings.Contains(err.Error(), "NOGROUP") {
				return TaskStatus{}, err
			}
			if len(pend) > 0 {
				return TaskStatus{State: "running", Consumer: pend[0].Consumer, Deliveries: pend[0].RetryCount}, nil
			}
			return TaskStatus{State: "queued"}, nil
		}
		if res, err := p.Result(ctx, ref); err != nil || res != nil {
			if res != nil {
				return TaskStatus{State: res.State, Result: res}, nil
			}
			return TaskStatus{}, err
		}
	}
	return TaskStatus{State: "unknown"}, nil
}

// waitSlice is the longest single BLMOVE of WaitFor (a safety net, not a poll).
const waitSlice = 5 * time.Second

// WaitFor returns the task's result once it exists (the pool needs results on), or an
// error wrapping ErrWaitTimeout after timeout. It blocks on the task's notification list
// (BLMOVE), it does not poll; ctx is checked between blocking calls (at most 5 s apart).
func (p *Pool) WaitFor(ctx context.Context, ref TaskRef, timeout time.Duration) (*Result, error) {
	k, err := p.keysOf(ref)
	if err != nil {
		return nil, err
	}
	rkey, nkey := k.Result(ref.TaskID), k.Notify(ref.TaskID)
	deadline := time.Now().Add(timeout)
	for {
		h, err := p.rdb.HGetAll(ctx, rkey).Result()
		if err != nil {
			return nil, err
		}
		if res := parseResult(h); res != nil {
			return res, nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, fmt.Errorf("%w: task %q, %s", ErrWaitTimeout, ref.TaskID, timeout)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		slice := min(left, waitSlice)
		if slice >= time.Second {
			// go-redis counts blocking timeouts in whole seconds (and extends its read
			// deadline for them).
			err = p.rdb.BLMove(ctx, nkey, nkey, "RIGHT", "LEFT", slice.Truncate(time.Second)).Err()
		} else {
			// Below a second, in ms (never 0, which blocks forever), within the client's
			// read timeout.
			err = p.rdb.Do(ctx, "BLMOVE", nkey, nkey, "RIGHT", "LEFT", fmt.Sprintf("%.3f", max(slice, 10*time.Millisecond).Seconds())).Err()
		}
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, err
		}
	}
}
