package workpool

// Real redis-servers for the tests on free loopback ports: one standalone server (flushed
// by each test that uses it), and, started on first use, a 3-node Cluster and a primary
// with a replica and a Sentinel. Without redis-server the tests skip, except under
// CI=true, where they fail.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

var (
	vectorsDir = filepath.Join("..", "vectors")
	repoDir    = filepath.Join("..", "..")
)

func loadVectors(t *testing.T, name string, into any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(vectorsDir, name))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, into); err != nil {
		t.Fatal(err)
	}
}

func needRedis(t *testing.T) {
	t.Helper()
	for _, b := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(b); err != nil {
			msg := b + " is not installed (make deps installs it)"
			if os.Getenv("CI") == "true" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
}

type server struct {
	port int
	dir  string
	cmd  *exec.Cmd
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func startServer(conf string, extra ...string) (*server, error) {
	var last string
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		dir, err := os.MkdirTemp("", "wp-go-redis-")
		if err != nil {
			return nil, err
		}
		var args []string
		if conf != "" {
			args = append(args, conf)
		}
		args = append(args, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--logfile", filepath.Join(dir, "redis.log"))
		if conf == "" {
			args = append(args, "--save", "", "--appendonly", "no", "--dir", dir)
		}
		args = append(args, extra...)
		cmd := exec.Command("redis-server", args...)
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		s := &server{port: port, dir: dir, cmd: cmd}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		if s.ready(exited) {
			return s, nil
		}
		s.stop()
		b, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
		last = string(b)
	}
	return nil, fmt.Errorf("redis-server did not start: %s", last)
}

func (s *server) ready(exited chan struct{}) bool {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		default:
		}
		c := s.client()
		err := c.Ping(context.Background()).Err()
		c.Close()
		if err == nil {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

func (s *server) addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

func (s *server) client() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: s.addr(), MaxRetries: -1})
}

func (s *server) stop() {
	if s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
	}
	_ = os.RemoveAll(s.dir)
}

var (
	standaloneOnce sync.Once
	standalone     *server
	standaloneErr  error
	clusterOnce    sync.Once
	clusterNodes   []*server
	clusterErr     error
	replOnce       sync.Once
	repl           [3]*server // primary, replica, sentinel
	replErr        error
	started        []*server
	startedMu      sync.Mutex
)

func keep(s ...*server) {
	startedMu.Lock()
	started = append(started, s...)
	startedMu.Unlock()
}

func TestMain(m *testing.M) {
	code := m.Run()
	for _, s := range started {
		s.stop()
	}
	os.Exit(code)
}

// flushed returns a client of the shared standalone server, flushed.
func flushed(t *testing.T) *redis.Client {
	t.Helper()
	needRedis(t)
	standaloneOnce.Do(func() {
		standalone, standaloneErr = startServer("")
		if standalone != nil {
			keep(standalone)
		}
	})
	if standaloneErr != nil {
		t.Fatal(standaloneErr)
	}
	c := standalone.client()
	t.Cleanup(func() { c.Close() })
	if err := c.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	return c
}

// clusterClient returns a client of the shared 3-node cluster, flushed.
func clusterClient(t *testing.T) *redis.ClusterClient {
	t.Helper()
	needRedis(t)
	clusterOnce.Do(func() {
		var addrs []string
		for i := 0; i < 3; i++ {
			s, err := startServer("", "--cluster-enabled", "yes", "--cluster-node-timeout", "5000")
			if err != nil {
				clusterErr = err
				return
			}
			keep(s)
			clusterNodes = append(clusterNodes, s)
			addrs = append(addrs, s.addr())
		}
		out, err := exec.Command("redis-cli", append(append([]string{"--cluster", "create"}, addrs...), "--cluster-yes")...).CombinedOutput()
		if err != nil {
			clusterErr = fmt.Errorf("redis-cli --cluster create: %v: %s", err, out)
			return
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			ok := true
			for _, s := range clusterNodes {
				c := s.client()
				info, _ := c.ClusterInfo(context.Background()).Result()
				c.Close()
				ok = ok && strings.Contains(info, "cluster_state:ok")
			}
			if ok {
				return
			}
			if time.Now().After(deadline) {
				clusterErr = fmt.Errorf("the cluster did not reach cluster_state:ok")
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	if clusterErr != nil {
		t.Fatal(clusterErr)
	}
	var addrs []string
	for _, s := range clusterNodes {
		c := s.client()
		_ = c.FlushAll(context.Background()).Err()
		c.Close()
		addrs = append(addrs, s.addr())
	}
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	t.Cleanup(func() { cc.Close() })
	return cc
}

func clusterURL() string {
	var addrs []string
	for _, s := range clusterNodes {
		addrs = append(addrs, s.addr())
	}
	return "redis+cluster://" + strings.Join(addrs, ",")
}

// replicated returns the primary, its replica and a Sentinel watching it (master "wpmaster").
func replicated(t *testing.T) [3]*server {
	t.Helper()
	needRedis(t)
	replOnce.Do(func() {
		p, err := startServer("")
		if err != nil {
			replErr = err
			return
		}
		keep(p)
		r, err := startServer("", "--replicaof", "127.0.0.1", strconv.Itoa(p.port))
		if err != nil {
			replErr = err
			return
		}
		keep(r)
		c := p.client()
		defer c.Close()
		deadline := time.Now().Add(20 * time.Second)
		for {
			info, _ := c.Info(context.Background(), "replication").Result()
			if strings.Contains(info, "state=online") {
				break
			}
			if time.Now().After(deadline) {
				replErr = fmt.Errorf("the replica did not come online")
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		dir, _ := os.MkdirTemp("", "wp-go-sentinel-")
		conf := filepath.Join(dir, "sentinel.conf")
		_ = os.WriteFile(conf, []byte(fmt.Sprintf("sentinel monitor wpmaster 127.0.0.1 %d 1\n", p.port)), 0o644)
		s, err := startServer(conf, "--sentinel")
		if err != nil {
			replErr = err
			return
		}
		keep(s)
		repl = [3]*server{p, r, s}
	})
	if replErr != nil {
		t.Fatal(replErr)
	}
	return repl
}

// rawXRange reads an entry's fields in order.
func entryFields(t *testing.T, ctx context.Context, c redis.UniversalClient, stream, id string) [][2]string {
	t.Helper()
	v, err := c.Do(ctx, "XRANGE", stream, id, id).Result()
	if err != nil {
		t.Fatal(err)
	}
	rows := v.([]any)
	if len(rows) != 1 {
		t.Fatalf("entry %s not in %s", id, stream)
	}
	f := rows[0].([]any)[1].([]any)
	var out [][2]string
	for i := 0; i+1 < len(f); i += 2 {
		k, _ := asString(f[i])
		val, _ := asString(f[i+1])
		out = append(out, [2]string{k, val})
	}
	return out
}
