// Package workpool is the producer client of workpool queues (Redis Streams): submit
// tasks, read a pool's stats, inspect and retry dead letters, wait for results. It
// follows the protocol in docs/protocol.md and is tested against its shared vectors.
//
//	pool, err := workpool.FromURL("redis://localhost:6379/0", workpool.Options{Stream: "thumbnails"})
//	task, err := pool.Submit(ctx, map[string]any{"image": "a.png"}, workpool.TaskOptions{ID: "order-42"})
//	res, err := pool.WaitFor(ctx, task.Ref(), time.Minute) // the pool needs results on
package workpool

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"sync"
)

// ProtocolVersion is the version of docs/protocol.md this package implements.
const ProtocolVersion = 1

// ProtocolRevision is the revision of that version (docs/protocol.md section 9).
const ProtocolRevision = 4

const (
	maxTaskIDBytes        = 512
	defaultDedupWindowMs  = 86_400_000
	pipelineChunk         = 1000
	retryChunk            = 100
	listPage              = 500
	statsCountLimitChunks = 50
	// MaxPartitions is the largest partition count a pool may have.
	MaxPartitions = 1024
)

// Mode says how the pool's Redis runs; it decides the key names.
type Mode string

// The modes of docs/protocol.md section 1.
const (
	Standalone  Mode = "standalone"
	Sentinel    Mode = "sentinel"
	ClusterMode Mode = "cluster"
)

// ErrConfig wraps every error about a configuration, URL, task or reference that cannot be used.
var ErrConfig = errors.New("workpool")

// ErrWaitTimeout is returned (wrapped) by WaitFor when no result came in time.
var ErrWaitTimeout = errors.New("no result within the timeout")

func configErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, a...))
}

// PartitionKeys are the keys of one partition (docs/protocol.md section 1).
type PartitionKeys struct {
	Index  int
	Stream string
	Dead   string
}

// Result is the key of a task's result record.
func (k PartitionKeys) Result(taskID string) string { return k.Stream + ":result:" + taskID }

// Notify is the key of a task's notification list.
func (k PartitionKeys) Notify(taskID string) string { return k.Stream + ":notify:" + taskID }

// Dedup is the key of a task's deduplication marker.
func (k PartitionKeys) Dedup(taskID string) string { return k.Stream + ":dedup:" + taskID }

// Layout is a pool's names: stream S, group G, N partitions, mode, custom dead-letter stream.
type Layout struct {
	Stream           string
	Group            string
	Partitions       int
	Mode             Mode
	DeadLetterStream string // "" for the default
	Keys             []PartitionKeys
}

// NewLayout validates the names and derives every partition's keys. group "" means the
// stream's name, partitions 0 means 1, deadLetterStream nil means the default.
func NewLayout(stream, group string, partitions int, mode Mode, deadLetterStream *string) (*Layout, error) {
	if mode == "" {
		mode = Standalone
	}
	if mode != Standalone && mode != Sentinel && mode != ClusterMode {
		return nil, configErr("unknown mode %q", mode)
	}
	if stream == "" {
		return nil, configErr("the stream name must not be empty")
	}
	if group == "" {
		group = stream
	}
	if partitions < 1 || partitions > MaxPartitions {
		return nil, configErr("partitions must be from 1 to %d, not %d", MaxPartitions, partitions)
	}
	cluster := mode == ClusterMode
	if cluster && strings.ContainsAny(stream, "{}") {
		return nil, configErr("on Redis Cluster the stream name must not contain '{' or '}' (workpool adds the hash tag itself): %q", stream)
	}
	l := &Layout{Stream: stream, Group: group, Partitions: partitions, Mode: mode}
	if deadLetterStream != nil {
		if *deadLetterStream == "" {
			return nil, configErr("the dead-letter stream name must not be empty")
		}
		l.DeadLetterStream = *deadLetterStream
	}
	for i := 0; i < partitions; i++ {
		base := stream
		if i > 0 {
			base = stream + ":" + strconv.Itoa(i)
		}
		p := base
		if cluster {
			p = "{" + base + "}"
		}
		dead := p + ":dead"
		if deadLetterStream != nil {
			if !cluster && partitions == 1 {
				dead = *deadLetterStream
			} else {
				dead = p + ":" + *deadLetterStream
			}
		}
		if dead == p {
			return nil, configErr("the dead-letter stream must differ from the task stream")
		}
		l.Keys = append(l.Keys, PartitionKeys{Index: i, Stream: p, Dead: dead})
	}
	return l, nil
}

// Draining is the pool's drain hash (docs/protocol.md 5.1), beside partition 0: written
// by the operator and the workers, read by stats.
func (l *Layout) Draining() string { return l.Keys[0].Stream + ":draining" }

// statsDrainKey is the stats script's third key for partition i: the drain hash for
// partition 0, the partition's own stream (not a hash: nothing read) for the others, so
// that every key of one call stays in the partition's hash slot.
func (l *Layout) statsDrainKey(i int) string {
	if i == 0 {
		return l.Draining()
	}
	return l.Keys[i].Stream
}

// Partition returns partition i's keys, or an error when it does not exist.
func (l *Layout) Partition(i int) (PartitionKeys, error) {
	if i < 0 || i >= l.Partitions {
		return PartitionKeys{}, configErr("partition %d does not exist (the pool has %d)", i, l.Partitions)
	}
	return l.Keys[i], nil
}

// CRC16 is CRC16-XMODEM, the one Redis Cluster uses for slots.
func CRC16(data []byte) uint16 {
	var crc uint16
	for _, b := range data {
		crc ^= uint16(b) << 8
		for i := 0; i < 8; i++ {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// PartitionForKey is the partition of a key: CRC16(key) mod partitions.
func PartitionForKey(key []byte, partitions int) int {
	return int(CRC16(key)) % partitions
}

// roundRobin is a producer's counter, starting at a random partition unless told.
type roundRobin struct {
	mu         sync.Mutex
	next, size int
}

func newRoundRobin(size int, start *int) (*roundRobin, error) {
	s := rand.IntN(size)
	if start != nil {
		if *start < 0 || *start >= size {
			return nil, configErr("RoundRobinStart %d is not a partition (0..%d)", *start, size-1)
		}
		s = *start
	}
	return &roundRobin{next: s, size: size}, nil
}

func (r *roundRobin) take() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.next
	r.next = (p + 1) % r.size
	return p
}

var entryIDRe = regexp.MustCompile(`^(\d{1,20})-(\d{1,20})$`)

// parseEntryID parses "<ms>-<seq>".
func parseEntryID(s string) (ms, seq uint64, err error) {
	m := entryIDRe.FindStringSubmatch(s)
	if m == nil {
		return 0, 0, configErr("invalid stream entry id %q (expected <ms>-<seq>)", s)
	}
	ms, err1 := strconv.ParseUint(m[1], 10, 64)
	seq, err2 := strconv.ParseUint(m[2], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, configErr("invalid stream entry id %q (out of range)", s)
	}
	return ms, seq, nil
}

func compareEntryIDs(a, b string) int {
	am, as, _ := parseEntryID(a)
	bm, bs, _ := parseEntryID(b)
	switch {
	case am != bm:
		if am < bm {
			return -1
		}
		return 1
	case as != bs:
		if as < bs {
			return -1
		}
		return 1
	}
	return 0
}
