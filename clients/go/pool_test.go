package workpool

// Behaviour against real redis-servers: batches, dedup, durable submit, results and
// waiting, status, dead letters under concurrency, Cluster, Sentinel.

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func mustPool(t *testing.T, c redis.UniversalClient, o Options) *Pool {
	t.Helper()
	p, err := New(c, o)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func writeResult(t *testing.T, c redis.UniversalClient, p *Pool, tid, state string, partition int, fields ...any) {
	t.Helper()
	k := p.Layout.Keys[partition]
	args := append([]any{60000, state, "v", "1", "task_id", tid}, fields...)
	if err := RunScript(context.Background(), c, "result", []string{k.Result(tid), k.Notify(tid)}, args...).Err(); err != nil {
		t.Error(err)
	}
}

func calls(c *redis.Client, name string) int {
	info := c.Info(context.Background(), "commandstats").Val()
	m := regexp.MustCompile(`cmdstat_` + name + `:calls=(\d+)`).FindStringSubmatch(info)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func addDeadLetters(t *testing.T, c redis.UniversalClient, dead string, n int, prefix, errText string) []string {
	t.Helper()
	ctx := context.Background()
	pipe := c.Pipeline()
	cmds := make([]*redis.StringCmd, n)
	for i := 0; i < n; i++ {
		cmds[i] = pipe.XAdd(ctx, &redis.XAddArgs{Stream: dead, Values: []any{"payload", fmt.Sprintf("%s%d", prefix, i), "original_id", fmt.Sprintf("%d-0", i+1),
			"error", errText, "deliveries", "5", "stream", "q", "group", "q", "consumer", "w1"}})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	ids := make([]string, n)
	for i, c := range cmds {
		ids[i] = c.Val()
	}
	return ids
}

func payloads(t *testing.T, c redis.UniversalClient, stream string) []string {
	t.Helper()
	msgs, err := c.XRange(context.Background(), stream, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := []string{}
	for _, m := range msgs {
		out = append(out, fmt.Sprint(m.Values["payload"]))
	}
	return out
}

func TestBatchesSpreadOverPartitionsInOrder(t *testing.T) {
	r := flushed(t)
	ctx := context.Background()
	p := mustPool(t, r, Options{Stream: "q", Partitions: 3, RoundRobinStart: InPartition(0)})
	tasks := make([]Task, 2500)
	for i := range tasks {
		b, _ := JSON(map[string]int{"n": i})
		tasks[i] = Task{Payload: b}
	}
	subs, err := p.SubmitMany(ctx, tasks, DurableOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for part, stream := range []string{"q", "q:1", "q:2"} {
		var want []string
		var ids []string
		for i, s := range subs {
			if s.Partition != i%3 {
				t.Fatalf("task %d in partition %d", i, s.Partition)
			}
			if s.Partition == part {
				want = append(want, fmt.Sprintf(`{"n":%d}`, i))
				ids = append(ids, s.EntryID)
			}
		}
		msgs := r.XRange(ctx, stream, "-", "+").Val()
		for i, m := range msgs {
			if m.ID != ids[i] || m.Values["payload"] != want[i] {
				t.Fatalf("%s[%d] = %v, want %s %s", stream, i, m, ids[i], want[i])
			}
		}
	}
	if st, _ := p.Stats(ctx); st.Backlog != 2500 {
		t.Errorf("backlog %d", st.Backlog)
	}
}

func TestBadInputSubmitsNothing(t *testing.T) {
	r := flushed(t)
	p := mustPool(t, r, Options{Stream: "q"})
	tasks := []Task{{Payload: []byte("ok")}, {Payload: []byte("x"), TaskOptions: TaskOptions{ID: "17-0"}}}
	if _, err := p.SubmitMany(context.Background(), tasks, DurableOptions{}); !errors.Is(err, ErrConfig) {
		t.Fatal(err)
	}
	if n := r.DBSize(context.Background()).Val(); n != 0 {
		t.Fatalf("%d keys", n)
	}
}

func TestAFailingPartitionSaysWhatWasSubmitted(t *testing.T) {
	r := flushed(t)
	ctx := context.Background()
	p := mustPool(t, r, Options{Stream: "q", Partitions: 2, RoundRobinStart: InPartition(0)})
	r.Set(ctx, "q:1", "not a stream", 0)
	tasks := make([]Task, 6)
	for i := range tasks {
		tasks[i] = Task{Payload: []byte(fmt.Sprint(i))}
	}
	_, err := p.SubmitMany(ctx, tasks, DurableOptions{})
	var se *SubmitError
	if !errors.As(err, &se) {
		t.Fatalf("want a SubmitError, got %v", err)
	}
	for i, s := range se.Submitted {
		if (s != nil) != (i%2 == 0) {
			t.Errorf("task %d: %v", i, s)
		}
	}
	if r.XLen(ctx, "q").Val() != 3 {
		t.Error("partition 0 should hold 3")
	}
}

func TestDedup(t *testing.T) {
	r := flushed(t)
	ctx := context.Background()
	p := mustPool(t, r, Options{Stream: "q"})
	a, _ := p.Submit(ctx, []byte("first"), TaskOptions{ID: "order-1", Dedup: true})
	b, _ := p.Submit(ctx, []byte("again"), TaskOptions{ID: "order-1", Dedup: true})
	if a.Duplicate || !b.Duplicate || a.EntryID != b.EntryID || r.XLen(ctx, "q").Val() != 1 {
		t.Fatal(a, b)
	}
	short, _ := p.Submit(ctx, []byte("w"), TaskOptions{ID: "order-3", Dedup: true, DedupWindow: 50 * time.Millisecond})
	time.Sleep(150 * time.Millisecond)
	later, _ := p.Submit(ctx, []byte("w"), TaskOptions{ID: "order-3", Dedup: true, DedupWindow: 50 * time.Millisecond})
	if later.Duplicate || later.EntryID == short.EntryID {
		t.Fatal("the window did not expire")
	}
}

func TestDedupUnderConcurrentProducers(t *testing.T) {
	r := flushed(t)
	ctx := context.Background()
	results := make([][]Submitted, 8)
	var wg sync.WaitGroup
	for g := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, _ := New(standalone.client(), Options{Stream: "q", Partitions: 3})
			tasks := make([]Task, 200)
			for i := range tasks {
				tasks[i] = Task{Payload: []byte(fmt.Sprint(i)), TaskOptions: TaskOptions{ID: fmt.Sprintf("id-%d", i), Dedup: true}}
			}
			subs, err := p.SubmitMany(ctx, tasks, DurableOptions{})
			if err != nil {
				t.Error(err)
			}
			results[g] = subs
		}()
	}
	wg.Wait()
	if n := r.XLen(ctx, "q").Val() + r.XLen(ctx, "q:1").Val() + r.XLen(ctx, "q:2").Val(); n != 200 {
		t.Fatalf("%d entries, want 200", n)
	}
	for i := 0; i < 200; i++ {
		added := 0
		for _, res := range results {
			if res[i].EntryID != results[0][i].EntryID {
				t.Fatalf("id-%d: different entry ids", i)
			}
			if !res[i].Duplicate {
				added++
			}
		}
		if added != 1 {
			t.Fatalf("id-%d added %d times", i, added)
		}
	}
}

func TestDurableSubmit(t *testing.T) {
	ctx := context.Background()
	r := flushed(t)
	p := mustPool(t, r, Options{Stream: "q"})
	subs, err := p.SubmitMany(ctx, []Task{{Payload: []byte("a")}, {Payload: []byte("b")}}, DurableOptions{MinReplicas: 1, WaitTimeout: 50 * time.Millisecond})
	if err != nil || *subs[0].Confirmed || *subs[1].Confirmed || r.XLen(ctx, "q").Val() != 2 {
		t.Fatal("without a replica: unconfirmed and kept", subs, err)
	}
	if s, _ := p.Submit(ctx, []byte("c"), TaskOptions{}); s.Confirmed != nil {
		t.Fatal("not asked: nil")
	}
	rp := replicated(t)
	primary := rp[0].client()
	defer primary.Close()
	dp := mustPool(t, primary, Options{Stream: "durable"})
	tasks := make([]Task, 50)
	for i := range tasks {
		tasks[i] = Task{Payload: []byte(fmt.Sprint(i))}
	}
	subs, err = dp.SubmitMany(ctx, tasks, DurableOptions{MinReplicas: 1, WaitTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range subs {
		if !*s.Confirmed {
			t.Fatal("a replica is attached: confirmed")
		}
	}
	sp, err := FromURL(fmt.Sprintf("redis+sentinel://127.0.0.1:%d/wpmaster", rp[2].port), Options{Stream: "durable"})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	s, err := sp.Submit(ctx, []byte(`{"x":1}`), TaskOptions{}, DurableOptions{MinReplicas: 1, WaitTimeout: 2 * time.Second})
	if err != nil || !*s.Confirmed {
		t.Fatal(s, err)
	}
	replica := rp[1].client()
	defer replica.Close()
	deadline := time.Now().Add(5 * time.Second)
	for replica.XLen(ctx, "durable").Val() != 51 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := replica.XLen(ctx, "durable").Val(); n != 51 {
		t.Fatalf("replica has %d", n)
	}
}

func TestWaitForBlocksUntilTheResult(t *testing.T) {
	r := flushed(t)
	ctx := context.Background()
	p := mustPool(t, r, Options{Stream: "q"})
	s, _ := p.Submit(ctx, []byte("x"), TaskOptions{ID: "job-1"})
	h0, b0 := calls(r, "hgetall"), calls(r, "blmove")
	go func() {
		time.Sleep(500 * time.Millisecond)
		writeResult(t, r, p, "job-1", "done", 0, "output", "thumb.png", "entry_id", s.EntryID)
	}()
	res, err := p.WaitFor(ctx, s.Ref(), 10*time.Second)
	if err != nil || !res.OK() || string(res.Output) != "thumb.png" || *res.EntryID != s.EntryID {
		t.Fatal(res, err)
	}
	if h, b := calls(r, "hgetall")-h0, calls(r, "blmove")-b0; h != 2 || b != 1 {
		t.Fatalf("it polled: %d HGETALL, %d BLMOVE", h, b)
	}
}

func TestEveryWaiterWakes(t *testing.T) {
	r := flushed(t)
	ctx := context.Background()
	p := mustPool(t, r, Options{Stream: "q", Partitions: 2})
	s, _ := p.Submit(ctx, []byte("x"), TaskOptions{ID: "shared", Key: []byte("k")})
	var wg sync.WaitGroup
	got := make([]*Result, 5)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ref, _ := p.Ref("shared", Locate{Key: []byte("k")})
			got[i], _ = p.WaitFor(ctx, ref, 10*time.Second)
		}()
	}
	time.Sleep(300 * time.Millisecond)
	writeResult(t, r, p, "shared", "done", s.Partition)
	wg.Wait()
	for i, g := range got {
		if g == nil || g.State != "done" {
			t.Fatalf("waiter %d: %v", i, g)
		}
	}
}

func TestWaitForTimesOutAndNeedsThePartition(t *testing.T) {
	r := flushed(t)
	ctx := context.Background()
	p := mustPool(t, r, Options{Stream: "q", Partitions: 3})
	if _, err := p.Ref("some-id", Locate{}); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "partition") {
		t.Fatal(err)
	}
	ref, _ := p.Ref("some-id", Locate{Partition: InPartition(2)})
	start := time.Now()
	if _, err := p.WaitFor(ctx, ref, 300*time.Millisecond); !errors.Is(err, ErrWaitTimeout) {
		t.Fatal(err)
	}
	if time.Since(start) < 300*time.Millisecond {
		t.Fatal("returned before the timeout")
	}
	if _, err := p.Status(ctx, TaskRef{TaskID: "x", Partition: 3}); !errors.Is(err, ErrConfig) {
		t.Fatal(err)
	}
}

func TestStatusThroughATasksLife(t *testing.T) {
	r := flushed(t)
	ctx := context.Background()
	p := mustPool(t, r, Options{Stream: "q", Group: "g"})
	s, _ := p.Submit(ctx, []byte("x"), TaskOptions{ID: "life"})
	state := func() TaskStatus {
		st, err := p.Status(ctx, s.Ref())
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	if st := state(); st.State != "queued" {
		t.Fatal(st)
	}
	r.XGroupCreate(ctx, "q", "g", "0")
	r.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "w1", Streams: []string{"q", ">"}, Count: 1})
	if st := state(); st.State != "running" || st.Consumer != "w1" || st.Deliveries != 1 {
		t.Fatal(st)
	}
	r.XAck(ctx, "q", "g", s.EntryID)
	r.XDel(ctx, "q", s.EntryID)
	if st := state(); st.State != "unknown" {
		t.Fatal(st)
	}
	writeResult(t, r, p, "life", "dead", 0, "error", "boom")
	if st := state(); st.State != "dead" || *st.Result.Error != "boom" {
		t.Fatal(st)
	}
}

func TestRetryAllLeavesDeadLettersWrittenMeanwhile(t *testing.T) {
	r := flushed(t)
	ctx := context.Background()
	p := mustPool(t, r, Options{Stream: "q"})
	addDeadLetters(t, r, "q:dead", 250, "d", "failed")
	stop := make(chan struct{})
	var late []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		w := standalone.client()
		defer w.Close()
		for len(late) < 300 {
			select {
			case <-stop:
				return
			default:
			}
			// Not addDeadLetters: t.Fatal must not be called from this goroutine.
			if err := w.XAdd(ctx, &redis.XAddArgs{Stream: "q:dead", Values: []any{"payload", fmt.Sprintf("late%d-0", len(late)), "error", "failed"}}).Err(); err != nil {
				t.Error(err)
				return
			}
			late = append(late, fmt.Sprintf("late%d-0", len(late)))
		}
	}()
	time.Sleep(5 * time.Millisecond)
	outcomes, err := p.RetryAllDeadLetters(ctx, DeadLetterFilter{})
	close(stop)
	<-done
	if err != nil {
		t.Fatal(err)
	}
	queued, remaining := payloads(t, r, "q"), payloads(t, r, "q:dead")
	var originals, want []string
	for _, q := range queued {
		if strings.HasPrefix(q, "d") {
			originals = append(originals, q)
		}
	}
	for i := 0; i < 250; i++ {
		want = append(want, fmt.Sprintf("d%d", i))
	}
	sort.Strings(originals)
	sort.Strings(want)
	if fmt.Sprint(originals) != fmt.Sprint(want) {
		t.Fatal("not every original dead letter was retried exactly once")
	}
	all := append(append([]string{}, queued...), remaining...)
	wantAll := append(append([]string{}, want...), late...)
	sort.Strings(all)
	sort.Strings(wantAll)
	if fmt.Sprint(all) != fmt.Sprint(wantAll) {
		t.Fatal("a dead letter was lost or duplicated")
	}
	for _, rem := range remaining {
		if !strings.HasPrefix(rem, "late") {
			t.Fatal("an original stayed behind")
		}
	}
	if len(outcomes) != len(queued) {
		t.Fatalf("%d outcomes, %d queued", len(outcomes), len(queued))
	}
}

func TestConcurrentRetriesMoveEachDeadLetterOnce(t *testing.T) {
	r := flushed(t)
	ctx := context.Background()
	ids := addDeadLetters(t, r, "q:dead", 300, "d", "failed")
	refs := make([]DeadLetterRef, len(ids))
	for i, id := range ids {
		refs[i] = DeadLetterRef{ID: id}
	}
	outs := make([][]RetryOutcome, 4)
	var wg sync.WaitGroup
	for g := range outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := standalone.client()
			defer c.Close()
			p, _ := New(c, Options{Stream: "q"})
			var err error
			if outs[g], err = p.RetryDeadLetters(ctx, refs); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if r.XLen(ctx, "q").Val() != 300 || r.XLen(ctx, "q:dead").Val() != 0 {
		t.Fatal("not moved exactly once")
	}
	for i := range refs {
		n := 0
		for _, o := range outs {
			if o[i].EntryID != "" {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("dead letter %d retried %d times", i, n)
		}
	}
}

func TestPurge(t *testing.T) {
	r := flushed(t)
	ctx := context.Background()
	p := mustPool(t, r, Options{Stream: "q", Partitions: 2})
	addDeadLetters(t, r, "q:dead", 3, "d", "permanent failure: 404")
	addDeadLetters(t, r, "q:1:dead", 4, "d", "failed")
	if n, err := p.PurgeAllDeadLetters(ctx, DeadLetterFilter{ErrorContains: "404"}); n != 3 || err != nil {
		t.Fatal(n, err)
	}
	list, _ := p.ListDeadLetters(ctx, DeadLetterFilter{}, false, 1)
	if n, err := p.PurgeDeadLetters(ctx, []DeadLetterRef{list[0].Ref, {Partition: 1, ID: "1-0"}}); n != 1 || err != nil {
		t.Fatal(n, err)
	}
	if n, _ := p.PurgeAllDeadLetters(ctx, DeadLetterFilter{}); n != 3 {
		t.Fatal(n)
	}
	if st, _ := p.Stats(ctx); st.DeadLetters != 0 {
		t.Fatal(st.DeadLetters)
	}
}

func TestDeadLetterListingPages(t *testing.T) {
	r := flushed(t)
	ctx := context.Background()
	p := mustPool(t, r, Options{Stream: "q", Partitions: 2})
	addDeadLetters(t, r, "q:dead", 1200, "d", "failed")
	addDeadLetters(t, r, "q:1:dead", 700, "e", "failed")
	all, err := p.ListDeadLetters(ctx, DeadLetterFilter{}, false, 0)
	if err != nil || len(all) != 1900 {
		t.Fatal(len(all), err)
	}
	for i := 1; i < len(all); i++ {
		if compareDeadLetters(all[i-1], all[i]) >= 0 {
			t.Fatalf("out of order at %d", i)
		}
	}
	newest, _ := p.ListDeadLetters(ctx, DeadLetterFilter{}, true, 0)
	for i := range newest {
		if newest[i].Ref != all[len(all)-1-i].Ref {
			t.Fatalf("newest first differs at %d", i)
		}
	}
	n := 0
	for _, err := range p.DeadLetters(ctx, DeadLetterFilter{}, false) {
		if err != nil {
			t.Fatal(err)
		}
		if n++; n == 10 {
			break
		}
	}
}

func TestCluster(t *testing.T) {
	rc := clusterClient(t)
	ctx := context.Background()
	p := mustPool(t, rc, Options{Stream: "jobs", Partitions: 6, RoundRobinStart: InPartition(0)})
	nodes := map[string]bool{}
	for _, k := range p.Layout.Keys {
		n, err := rc.MasterForKey(ctx, k.Stream)
		if err != nil {
			t.Fatal(err)
		}
		nodes[n.Options().Addr] = true
	}
	if len(nodes) < 2 {
		t.Fatal("the partitions should live on several nodes")
	}
	tasks := make([]Task, 660)
	for i := range tasks {
		tasks[i] = Task{Payload: []byte(fmt.Sprint(i))}
		if i >= 600 {
			tasks[i].ID, tasks[i].Dedup = fmt.Sprintf("d%d", i), true
		}
	}
	subs, err := p.SubmitMany(ctx, tasks, DurableOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := p.Stats(ctx)
	if err != nil || st.Stream != "jobs" || st.Backlog != 660 || st.Partitions[3].Stream != "{jobs:3}" {
		t.Fatal(st, err)
	}
	durable, err := p.SubmitMany(ctx, []Task{{Payload: []byte("x")}, {Payload: []byte("y")}, {Payload: []byte("z")}}, DurableOptions{MinReplicas: 1, WaitTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range durable {
		if *s.Confirmed {
			t.Fatal("no replicas: unconfirmed")
		}
	}
	for _, k := range p.Layout.Keys {
		addDeadLetters(t, rc, k.Dead, 2, fmt.Sprintf("p%d-", k.Index), "failed")
	}
	if all, _ := p.ListDeadLetters(ctx, DeadLetterFilter{}, false, 0); len(all) != 12 {
		t.Fatal(len(all))
	}
	if out, err := p.RetryAllDeadLetters(ctx, DeadLetterFilter{}); len(out) != 12 || err != nil {
		t.Fatal(out, err)
	}
	s := subs[len(subs)-1]
	go func() {
		time.Sleep(100 * time.Millisecond)
		writeResult(t, rc, p, s.TaskID, "done", s.Partition, "output", "ok")
	}()
	res, err := p.WaitFor(ctx, s.Ref(), 5*time.Second)
	if err != nil || string(res.Output) != "ok" {
		t.Fatal(res, err)
	}
	up, err := FromURL(clusterURL(), Options{Stream: "jobs", Partitions: 6})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	if st, err := up.Stats(ctx); err != nil || st.Backlog != 675 {
		t.Fatal(st.Backlog, err)
	}
}
