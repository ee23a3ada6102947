package workpool

import (
	"crypto/tls"
	"net"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// HostPort is one host of a URL.
type HostPort struct {
	Host string
	Port int
}

// Target is what a workpool URL names (docs/protocol.md section 2). Optional strings are
// nil when the URL has none.
type Target struct {
	Mode             Mode
	TLS              bool
	Hosts            []HostPort
	Path             string // unix socket
	DB               int
	Username         *string
	Password         *string
	Master           string
	SentinelUsername *string
	SentinelPassword *string
}

var schemes = map[string]struct {
	mode Mode
	tls  bool
}{
	"redis": {Standalone, false}, "rediss": {Standalone, true}, "unix": {Standalone, false}, "redis+unix": {Standalone, false},
	"redis+sentinel": {Sentinel, false}, "rediss+sentinel": {Sentinel, true},
	"redis+cluster": {ClusterMode, false}, "rediss+cluster": {ClusterMode, true},
}

var credRe = regexp.MustCompile(`^([^:/]+://)([^@/]*)@`)

func redact(u string) string { return credRe.ReplaceAllString(u, "${1}***@") }

func unescape(s string) string {
	if v, err := url.PathUnescape(s); err == nil {
		return v
	}
	return s
}

func userinfo(s string) (*string, *string) {
	user, pass, hasPass := strings.Cut(s, ":")
	var u, p *string
	if user = unescape(user); user != "" {
		u = &user
	}
	if hasPass {
		pass = unescape(pass)
		p = &pass
	}
	return u, p
}

// ParseURL reads a workpool URL.
func ParseURL(rawURL string) (*Target, error) {
	bad := func(why string) error { return configErr("invalid Redis URL %q: %s", redact(rawURL), why) }
	scheme, rest, ok := strings.Cut(rawURL, "://")
	sc, known := schemes[strings.ToLower(scheme)]
	if !ok || !known {
		names := make([]string, 0, len(schemes))
		for k := range schemes {
			names = append(names, k)
		}
		sort.Strings(names)
		return nil, bad("the scheme must be one of " + strings.Join(names, ", "))
	}
	scheme = strings.ToLower(scheme)
	rest, query, _ := strings.Cut(rest, "?")
	q, err := url.ParseQuery(query)
	if err != nil {
		return nil, bad("invalid query: " + err.Error())
	}
	dbOf := func(s string) (int, error) {
		if s == "" {
			return 0, nil
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return 0, bad("the database must be a number, not " + strconv.Quote(s))
		}
		return n, nil
	}
	t := &Target{Mode: sc.mode, TLS: sc.tls}
	if scheme == "unix" || scheme == "redis+unix" {
		first, _, _ := strings.Cut(rest, "/")
		path := rest
		if strings.Contains(first, "@") {
			at := strings.LastIndex(rest, "@")
			t.Username, t.Password = userinfo(rest[:at])
			path = rest[at+1:]
		}
		if !strings.HasPrefix(path, "/") {
			return nil, bad("a unix socket URL needs an absolute path (unix:///path/to/redis.sock)")
		}
		t.Path = path
		if t.DB, err = dbOf(q.Get("db")); err != nil {
			return nil, err
		}
		return t, nil
	}
	netloc, path := rest, ""
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		netloc, path = rest[:i], rest[i:]
	}
	hostpart := netloc
	if at := strings.LastIndex(netloc, "@"); at >= 0 {
		t.Username, t.Password = userinfo(netloc[:at])
		hostpart = netloc[at+1:]
	}
	defaultPort := 6379
	if sc.mode == Sentinel {
		defaultPort = 26379
	}
	hosts, err := splitHosts(hostpart, bad)
	if err != nil {
		return nil, err
	}
	for _, h := range hosts {
		hp, err := hostPort(h, defaultPort, bad)
		if err != nil {
			return nil, err
		}
		t.Hosts = append(t.Hosts, hp)
	}
	if len(t.Hosts) == 0 {
		return nil, bad("no host")
	}
	var segs []string
	if path != "" {
		segs = strings.Split(path, "/")[1:]
	}
	switch sc.mode {
	case Standalone:
		if len(t.Hosts) != 1 {
			return nil, bad("a standalone URL names one host (use redis+sentinel:// or redis+cluster:// for several)")
		}
		if len(segs) > 1 {
			return nil, bad("unexpected path " + strconv.Quote(path))
		}
		db := q.Get("db")
		if len(segs) == 1 {
			db = segs[0]
		}
		if t.DB, err = dbOf(db); err != nil {
			return nil, err
		}
	case ClusterMode:
		if len(segs) > 1 {
			return nil, bad("unexpected path " + strconv.Quote(path))
		}
		if len(segs) == 1 {
			db, err := dbOf(segs[0])
			if err != nil {
				return nil, err
			}
			if db != 0 {
				return nil, bad("Redis Cluster has only database 0")
			}
		}
	case Sentinel:
		if len(segs) == 0 || segs[0] == "" {
			return nil, bad("a sentinel URL names the primary: redis+sentinel://host:26379/MASTER[/db]")
		}
		if len(segs) > 2 {
			return nil, bad("unexpected path " + strconv.Quote(path))
		}
		t.Master = unescape(segs[0])
		if len(segs) == 2 {
			if t.DB, err = dbOf(segs[1]); err != nil {
				return nil, err
			}
		}
		if q.Has("sentinel_username") {
			v := q.Get("sentinel_username")
			t.SentinelUsername = &v
		}
		if q.Has("sentinel_password") {
			v := q.Get("sentinel_password")
			t.SentinelPassword = &v
		}
	}
	return t, nil
}

func splitHosts(s string, bad func(string) error) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	var out []string
	cur, depth := "", 0
	for _, ch := range s {
		switch ch {
		case '[':
			depth++
		case ']':
			depth--
		}
		if ch == ',' && depth == 0 {
			out = append(out, cur)
			cur = ""
			continue
		}
		cur += string(ch)
	}
	out = append(out, cur)
	for _, h := range out {
		if h == "" {
			return nil, bad("an empty host")
		}
	}
	return out, nil
}

func hostPort(h string, defaultPort int, bad func(string) error) (HostPort, error) {
	var host, port string
	hasPort := false
	if strings.HasPrefix(h, "[") {
		end := strings.IndexByte(h, ']')
		if end < 0 {
			return HostPort{}, bad("unclosed '[' in " + strconv.Quote(h))
		}
		host = h[1:end]
		rest := h[end+1:]
		if rest != "" && !strings.HasPrefix(rest, ":") {
			return HostPort{}, bad("invalid host " + strconv.Quote(h))
		}
		if rest != "" {
			port, hasPort = rest[1:], true
		}
	} else {
		host, port, hasPort = strings.Cut(h, ":")
	}
	if host == "" {
		return HostPort{}, bad("an empty host in " + strconv.Quote(h))
	}
	if !hasPort {
		return HostPort{host, defaultPort}, nil
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 || strings.ContainsAny(port, "+-") {
		return HostPort{}, bad("invalid port " + strconv.Quote(port))
	}
	return HostPort{host, n}, nil
}

func (h HostPort) addr() string { return net.JoinHostPort(h.Host, strconv.Itoa(h.Port)) }

// Connect returns a go-redis client for a workpool URL: *redis.Client (standalone, or
// the primary through Sentinel) or *redis.ClusterClient. tlsConfig (CA, client
// certificate) is used for rediss URLs; nil means the system's roots.
func Connect(rawURL string, tlsConfig *tls.Config) (redis.UniversalClient, Mode, error) {
	t, err := ParseURL(rawURL)
	if err != nil {
		return nil, "", err
	}
	var tc *tls.Config
	if t.TLS {
		tc = tlsConfig
		if tc == nil {
			tc = &tls.Config{MinVersion: tls.VersionTLS12}
		}
	}
	str := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	addrs := make([]string, len(t.Hosts))
	for i, h := range t.Hosts {
		addrs[i] = h.addr()
	}
	switch t.Mode {
	case ClusterMode:
		return redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, Username: str(t.Username), Password: str(t.Password), TLSConfig: tc}), t.Mode, nil
	case Sentinel:
		return redis.NewFailoverClient(&redis.FailoverOptions{MasterName: t.Master, SentinelAddrs: addrs, SentinelUsername: str(t.SentinelUsername),
			SentinelPassword: str(t.SentinelPassword), Username: str(t.Username), Password: str(t.Password), DB: t.DB, TLSConfig: tc}), t.Mode, nil
	}
	if t.Path != "" {
		return redis.NewClient(&redis.Options{Network: "unix", Addr: t.Path, Username: str(t.Username), Password: str(t.Password), DB: t.DB}), t.Mode, nil
	}
	return redis.NewClient(&redis.Options{Addr: addrs[0], Username: str(t.Username), Password: str(t.Password), DB: t.DB, TLSConfig: tc}), t.Mode, nil
}
