//! Where a pool's queue lives: one Redis, a Sentinel-managed primary, or a Redis Cluster,
//! each optionally over TLS with a private CA and a client certificate. One URL names the
//! whole target (see `docs/partitions-and-keys.md`), so it fits one Secret value and one
//! `--redis-url` flag:
//!
//! - `redis://[user:pass@]host:6379[/db]`, `rediss://...`, `unix://...`, `redis+unix://...`:
//!   one Redis (standalone);
//! - `redis+sentinel://[user:pass@]h1:26379,h2:26379/MASTER[/db][?sentinel_password=...]`,
//!   `rediss+sentinel://...`: the primary the sentinels name `MASTER`; every (re)connect asks
//!   them again, so a failover is followed (connection loss, `READONLY` and `UNBLOCKED` are
//!   connection errors, see [`crate::queue::QueueError`]);
//! - `redis+cluster://[user:pass@]h1:7000,h2:7001`, `rediss+cluster://...`: a Redis Cluster
//!   from its seed nodes; the client follows `MOVED`/`ASK` and refreshes its slot map.
//!
//! Everything that talks to Redis (the worker, `submit`, `stats`, the operator's probe and
//! wake) connects through a [`Target`] and gets a [`Connection`], which the queue protocol
//! ([`crate::queue`]) takes like any other connection.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::queue::{QueueError, Result};

/// Default port of sentinels.
pub const SENTINEL_PORT: u16 = 26379;
/// Default port of Redis nodes.
pub const REDIS_PORT: u16 = 6379;

/// How a target is deployed (from the URL's scheme).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One Redis (`redis://`, `rediss://`, `unix://`, `redis+unix://`).
    Standalone,
    /// A primary found through sentinels (`redis+sentinel://`, `rediss+sentinel://`).
    Sentinel,
    /// A Redis Cluster (`redis+cluster://`, `rediss+cluster://`).
    Cluster,
}

impl Mode {
    /// `standalone`, `sentinel` or `cluster`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Standalone => "standalone",
            Mode::Sentinel => "sentinel",
            Mode::Cluster => "cluster",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// TLS material beside the URL: PEM bytes of the CA that signed the servers' certificates
/// (instead of the system's trusted roots) and of a client certificate and its key (mTLS).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// CA certificate(s), PEM.
    pub ca: Option<Vec<u8>>,
    /// Client certificate (chain), PEM.
    pub cert: Option<Vec<u8>>,
    /// The client certificate's private key, PEM.
    pub key: Option<Vec<u8>>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key's bytes.
        f.debug_struct("Tls")
            .field("ca", &self.ca.as_ref().map(|c| c.len()))
            .field("cert", &self.cert.as_ref().map(|c| c.len()))
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Tls {
    /// Nothing: the system's roots, no client certificate.
    pub fn none() -> Tls {
        Tls::default()
    }

    /// Only a CA.
    pub fn with_ca(ca: impl Into<Vec<u8>>) -> Tls {
        Tls {
            ca: Some(ca.into()),
            ..Tls::default()
        }
    }

    /// Whether anything is set.
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }

    /// Reads the files given (each optional); a client certificate needs its key and the
    /// other way round. Errors name the file, never its contents.
    pub fn from_files(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> Result<Tls> {
        let read = |what: &str, p: Option<&Path>| -> Result<Option<Vec<u8>>> {
            match p {
                None => Ok(None),
                Some(p) => std::fs::read(p).map(Some).map_err(|e| {
                    QueueError::InvalidArgument(format!("cannot read {what} {}: {e}", p.display()))
                }),
            }
        };
        let tls = Tls {
            ca: read("the CA file", ca)?,
            cert: read("the client certificate file", cert)?,
            key: read("the client key file", key)?,
        };
        tls.check()?;
        Ok(tls)
    }

    /// A client certificate needs its key and the other way round; each must hold PEM.
    pub fn check(&self) -> Result<()> {
        match (&self.cert, &self.key) {
            (Some(_), None) => {
                return Err(QueueError::InvalidArgument(
                    "a client certificate needs its private key (--redis-key-file)".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(QueueError::InvalidArgument(
                    "a client key needs its certificate (--redis-cert-file)".into(),
                ));
            }
            _ => {}
        }
        for (what, v) in [
            ("the CA", &self.ca),
            ("the client certificate", &self.cert),
            ("the client key", &self.key),
        ] {
            if let Some(b) = v
                && !b.windows(11).any(|w| w == b"-----BEGIN ")
            {
                return Err(QueueError::InvalidArgument(format!(
                    "{what} is not PEM (no -----BEGIN line)"
                )));
            }
        }
        Ok(())
    }

    fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: match (&self.cert, &self.key) {
                (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
                    client_cert: c.clone(),
                    client_key: k.clone(),
                }),
                _ => None,
            },
            root_cert: self.ca.clone(),
        }
    }
}

/// One host:port of a URL's host list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

/// A parsed URL (no connection made).
#[derive(Clone, PartialEq, Eq)]
pub struct ParsedUrl {
    /// The mode.
    pub mode: Mode,
    /// TLS (`rediss` schemes).
    pub tls: bool,
    /// Data-node user.
    pub username: Option<String>,
    /// Data-node password.
    pub password: Option<String>,
    /// Sentinels or cluster seeds (empty for standalone, which the redis crate parses).
    pub hosts: Vec<HostPort>,
    /// Sentinel: the primary's name.
    pub master: Option<String>,
    /// Database (standalone and Sentinel).
    pub db: i64,
    /// Sentinel: the sentinels' user.
    pub sentinel_username: Option<String>,
    /// Sentinel: the sentinels' password.
    pub sentinel_password: Option<String>,
}

impl fmt::Debug for ParsedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedUrl")
            .field("mode", &self.mode)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("hosts", &self.hosts)
            .field("master", &self.master)
            .field("db", &self.db)
            .field("sentinel_username", &self.sentinel_username)
            .field(
                "sentinel_password",
                &self.sentinel_password.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The mode a URL names, from its scheme alone (`None`: not a Redis URL).
pub fn mode_of(url: &str) -> Option<Mode> {
    let scheme = url.split_once("://")?.0.to_ascii_lowercase();
    match scheme.as_str() {
        "redis" | "rediss" | "unix" | "redis+unix" => Some(Mode::Standalone),
        "redis+sentinel" | "rediss+sentinel" => Some(Mode::Sentinel),
        "redis+cluster" | "rediss+cluster" => Some(Mode::Cluster),
        _ => None,
    }
}

/// The URL without passwords (userinfo and `sentinel_password`), for messages and logs.
pub fn redacted(url: &str) -> String {
    let mut out = match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    };
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.to_ascii_lowercase().contains("password") => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out = format!("{head}{}", query.join("&"));
    }
    out
}

fn invalid(url: &str, why: impl fmt::Display) -> QueueError {
    QueueError::InvalidArgument(format!("invalid redis URL {:?}: {why}", redacted(url)))
}

fn percent_decode(s: &str) -> std::result::Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "a % not followed by two hex digits".to_string())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-encoded bytes are not UTF-8".to_string())
}

fn parse_hosts(list: &str, default_port: u16) -> std::result::Result<Vec<HostPort>, String> {
    let mut out = Vec::new();
    for item in list.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err("an empty host in the host list".into());
        }
        let (host, port) = if let Some(rest) = item.strip_prefix('[') {
            let (h, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("{item:?}: an IPv6 address needs its closing ]"))?;
            match after.strip_prefix(':') {
                Some(p) => (h.to_string(), Some(p)),
                None if after.is_empty() => (h.to_string(), None),
                None => return Err(format!("{item:?}: unexpected text after the address")),
            }
        } else {
            match item.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (item.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(format!("{item:?}: no host"));
        }
        let port =
            match port {
                None => default_port,
                Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                    format!("{item:?}: the port must be a number from 1 to 65535")
                })?,
            };
        out.push(HostPort { host, port });
    }
    Ok(out)
}

/// Parses a URL of any mode (standalone URLs are checked by the redis crate when the
/// [`Target`] is built; here only their mode and TLS are read).
pub fn parse_url(url: &str) -> Result<ParsedUrl> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(invalid(
            url,
            "no scheme (redis://, rediss://, redis+sentinel://, redis+cluster://, ...)",
        ));
    };
    let scheme = scheme.to_ascii_lowercase();
    let mode = mode_of(url).ok_or_else(|| {
        invalid(
            url,
            format!("unknown scheme {scheme:?}: use redis, rediss, unix, redis+unix, redis+sentinel, rediss+sentinel, redis+cluster or rediss+cluster"),
        )
    })?;
    let tls = scheme.starts_with("rediss");
    let mut p = ParsedUrl {
        mode,
        tls,
        username: None,
        password: None,
        hosts: Vec::new(),
        master: None,
        db: 0,
        sentinel_username: None,
        sentinel_password: None,
    };
    if mode == Mode::Standalone {
        return Ok(p);
    }
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (userinfo, rest) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    if let Some(ui) = userinfo {
        let (u, pw) = match ui.split_once(':') {
            Some((u, pw)) => (u, Some(pw)),
            None => (ui, None),
        };
        let u = percent_decode(u).map_err(|e| invalid(url, e))?;
        p.username = (!u.is_empty()).then_some(u);
        p.password = match pw {
            Some(pw) => Some(percent_decode(pw).map_err(|e| invalid(url, e))?),
            None => None,
        };
    }
    let (hosts, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let default_port = if mode == Mode::Sentinel {
        SENTINEL_PORT
    } else {
        REDIS_PORT
    };
    p.hosts = parse_hosts(hosts, default_port).map_err(|e| invalid(url, e))?;
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let parse_db = |s: &str| -> Result<i64> {
        s.parse::<i64>()
            .ok()
            .filter(|d| *d >= 0)
            .ok_or_else(|| invalid(url, format!("{s:?} is not a database number")))
    };
    match mode {
        Mode::Sentinel => {
            let Some(master) = segments.first() else {
                return Err(invalid(
                    url,
                    "a Sentinel URL names the primary: redis+sentinel://host:26379,.../MASTER[/db]",
                ));
            };
            p.master = Some(percent_decode(master).map_err(|e| invalid(url, e))?);
            if let Some(db) = segments.get(1) {
                p.db = parse_db(db)?;
            }
            if segments.len() > 2 {
                return Err(invalid(url, "expected /MASTER[/db] after the sentinels"));
            }
        }
        Mode::Cluster => match segments.as_slice() {
            [] => {}
            [db] if parse_db(db)? == 0 => {}
            _ => {
                return Err(invalid(
                    url,
                    "Redis Cluster has only database 0: no path after the nodes",
                ));
            }
        },
        Mode::Standalone => unreachable!("returned above"),
    }
    for kv in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = percent_decode(v).map_err(|e| invalid(url, e))?;
        match (mode, k) {
            (Mode::Sentinel, "sentinel_password") => p.sentinel_password = Some(v),
            (Mode::Sentinel, "sentinel_username") => p.sentinel_username = Some(v),
            _ => {
                return Err(invalid(
                    url,
                    format!(
                        "unknown query parameter {k:?} (known: {})",
                        if mode == Mode::Sentinel {
                            "sentinel_username, sentinel_password"
                        } else {
                            "none"
                        }
                    ),
                ));
            }
        }
    }
    Ok(p)
}

#[derive(Clone)]
enum Kind {
    Standalone(Box<redis::Client>),
    Sentinel(Arc<SentinelTarget>),
    Cluster(Box<redis::cluster::ClusterClient>),
}

/// A Sentinel target: the sentinels' clients and how to reach the data nodes they name.
struct SentinelTarget {
    sentinels: Vec<redis::Client>,
    master: String,
    /// `redis` or `rediss`.
    scheme: &'static str,
    /// `user:pass@` (percent-encoded) or empty.
    userinfo: String,
    db: i64,
    tls: Tls,
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn userinfo(user: Option<&str>, pass: Option<&str>) -> String {
    match (user, pass) {
        (None, None) => String::new(),
        (u, p) => format!(
            "{}{}@",
            percent_encode(u.unwrap_or("")),
            p.map(|p| format!(":{}", percent_encode(p)))
                .unwrap_or_default()
        ),
    }
}

fn client_for(url: &str, tls: &Tls) -> redis::RedisResult<redis::Client> {
    if url.starts_with("rediss://") && !tls.is_empty() {
        redis::Client::build_with_tls(url, tls.certificates())
    } else {
        redis::Client::open(url)
    }
}

fn conn_error(what: &'static str, detail: String) -> QueueError {
    QueueError::Connection(redis::RedisError::from((
        redis::ErrorKind::Io,
        what,
        detail,
    )))
}

/// What one sentinel says of the primary.
struct SentinelAnswer {
    host: String,
    port: u16,
    epoch: u64,
}

impl SentinelTarget {
    /// Asks every sentinel at once (`SENTINEL MASTER`) and takes the primary of the
    /// highest configuration epoch, the one a failover published last: a sentinel that
    /// has not heard of the latest failover yet (its epoch is older) must not send the
    /// client to the former primary, which may be back, empty, still saying it is a
    /// primary. An answer that marks the primary down is no answer.
    async fn resolve(&self) -> Result<SentinelAnswer> {
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let asks = self.sentinels.iter().map(|c| {
            let cfg = cfg.clone();
            async move {
                let mut conn = c.get_multiplexed_async_connection_with_config(&cfg).await?;
                let m: std::collections::HashMap<String, String> = redis::cmd("SENTINEL")
                    .arg("MASTER")
                    .arg(&self.master)
                    .query_async(&mut conn)
                    .await?;
                Ok::<_, redis::RedisError>(m)
            }
        });
        let answers = futures::future::join_all(asks).await;
        let mut best: Option<(SentinelAnswer, usize)> = None;
        let mut votes: std::collections::HashMap<(String, u16, u64), usize> =
            std::collections::HashMap::new();
        let mut last_err = None;
        let mut refused = None;
        for a in answers {
            let m = match a {
                Ok(m) => m,
                Err(e) => {
                    if e.code().is_some() {
                        refused = Some(e);
                    } else {
                        last_err = Some(e);
                    }
                    continue;
                }
            };
            let flags = m.get("flags").map(String::as_str).unwrap_or("");
            if ["s_down", "o_down", "disconnected", "failover_in_progress"]
                .iter()
                .any(|f| flags.contains(f))
            {
                continue;
            }
            let (Some(host), Some(port)) = (
                m.get("ip").cloned(),
                m.get("port").and_then(|p| p.parse::<u16>().ok()),
            ) else {
                continue;
            };
            let epoch = m
                .get("config-epoch")
                .and_then(|e| e.parse::<u64>().ok())
                .unwrap_or(0);
            *votes.entry((host, port, epoch)).or_default() += 1;
        }
        for ((host, port, epoch), n) in votes {
            let better = match &best {
                None => true,
                Some((b, bn)) => (epoch, n) > (b.epoch, *bn),
            };
            if better {
                best = Some((SentinelAnswer { host, port, epoch }, n));
            }
        }
        match best {
            Some((a, _)) => Ok(a),
            None => Err(match (refused, last_err) {
                // A sentinel refused (a wrong master name, a wrong sentinel password):
                // no primary to connect to, with the sentinel's words.
                (Some(e), _) => QueueError::Connection(e),
                // No sentinel reachable: its error says why (refused, TLS, ...).
                (None, Some(e)) => QueueError::Connection(e),
                (None, None) => conn_error(
                    "no sentinel names a primary that is up",
                    format!("for {:?} (a failover under way?)", self.master),
                ),
            }),
        }
    }

    /// A connection to the primary the sentinels name, after it confirmed its role.
    async fn connect(&self, cfg: &redis::AsyncConnectionConfig) -> Result<MultiplexedConnection> {
        let a = self.resolve().await?;
        let url = format!(
            "{}://{}{}/{}",
            self.scheme,
            self.userinfo,
            host_port(&a.host, a.port),
            self.db
        );
        let client = client_for(&url, &self.tls).map_err(|e| {
            conn_error("cannot reach the primary the sentinels name", e.to_string())
        })?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(cfg)
            .await?;
        let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
        match role.first() {
            Some(Value::BulkString(r)) if r == b"master" => Ok(conn),
            Some(Value::SimpleString(r)) if r == "master" => Ok(conn),
            _ => Err(conn_error(
                "the node the sentinels name is not a primary (yet)",
                host_port(&a.host, a.port),
            )),
        }
    }
}

/// A connection target: where the queue lives and how to reach it. Cheap to clone; no
/// connection is made until [`Target::connect`].
#[derive(Clone)]
pub struct Target {
    url: String,
    key: String,
    parsed: ParsedUrl,
    kind: Kind,
}

impl PartialEq for Target {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Target {}

/// A key naming a target (URL + a hash of the TLS material), for caches of targets and
/// connections: a changed CA or certificate makes another key. It holds the URL (and so
/// a password): never log it.
pub fn target_key(url: &str, tls: &Tls) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tls.ca.hash(&mut h);
    tls.cert.hash(&mut h);
    tls.key.hash(&mut h);
    format!("{url}#{:016x}", h.finish())
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("url", &redacted(&self.url))
            .field("mode", &self.parsed.mode)
            .finish()
    }
}

/// Makes ring the process's TLS crypto provider (once; a provider installed earlier by
/// the embedding program is kept).
pub fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Target {
    /// A target for `url` with TLS material `tls` (which needs a `rediss` scheme).
    pub fn new(url: &str, tls: &Tls) -> Result<Target> {
        install_tls_provider();
        tls.check()?;
        let parsed = parse_url(url)?;
        let scheme_tls = if parsed.mode == Mode::Standalone {
            url.to_ascii_lowercase().starts_with("rediss://")
        } else {
            parsed.tls
        };
        if !tls.is_empty() && !scheme_tls {
            return Err(QueueError::InvalidArgument(format!(
                "a CA or client certificate is for TLS: the URL {:?} must use rediss://, rediss+sentinel:// or rediss+cluster://",
                redacted(url)
            )));
        }
        let redis_err = |e: redis::RedisError| invalid(url, e);
        let kind = match parsed.mode {
            Mode::Standalone => Kind::Standalone(Box::new(if tls.is_empty() {
                redis::Client::open(url).map_err(redis_err)?
            } else {
                redis::Client::build_with_tls(url, tls.certificates()).map_err(redis_err)?
            })),
            Mode::Sentinel => {
                let scheme = if parsed.tls { "rediss" } else { "redis" };
                let sentinel_auth = userinfo(
                    parsed.sentinel_username.as_deref(),
                    parsed.sentinel_password.as_deref(),
                );
                let sentinels = parsed
                    .hosts
                    .iter()
                    .map(|h| {
                        client_for(
                            &format!("{scheme}://{sentinel_auth}{}", host_port(&h.host, h.port)),
                            tls,
                        )
                    })
                    .collect::<redis::RedisResult<Vec<_>>>()
                    .map_err(redis_err)?;
                Kind::Sentinel(Arc::new(SentinelTarget {
                    sentinels,
                    master: parsed.master.clone().unwrap_or_default(),
                    scheme,
                    userinfo: userinfo(parsed.username.as_deref(), parsed.password.as_deref()),
                    db: parsed.db,
                    tls: tls.clone(),
                }))
            }
            Mode::Cluster => {
                let scheme = if parsed.tls { "rediss" } else { "redis" };
                let seeds: Vec<String> = parsed
                    .hosts
                    .iter()
                    .map(|h| {
                        if h.host.contains(':') {
                            format!("{scheme}://[{}]:{}", h.host, h.port)
                        } else {
                            format!("{scheme}://{}:{}", h.host, h.port)
                        }
                    })
                    .collect();
                let mut b = redis::cluster::ClusterClientBuilder::new(seeds)
                    // Retries of MOVED/ASK/TRYAGAIN and reconnects inside one command are
                    // the client's; past these the command fails as a connection error and
                    // the caller reconnects (a fresh slot map), with its own back-off.
                    .retries(6)
                    .min_retry_wait(50)
                    .max_retry_wait(1000);
                if let Some(u) = &parsed.username {
                    b = b.username(u);
                }
                if let Some(pw) = &parsed.password {
                    b = b.password(pw);
                }
                if parsed.tls {
                    b = b.tls(redis::TlsMode::Secure);
                    if !tls.is_empty() {
                        b = b.certs(tls.certificates());
                    }
                }
                Kind::Cluster(Box::new(b.build().map_err(redis_err)?))
            }
        };
        Ok(Target {
            url: url.to_string(),
            key: target_key(url, tls),
            parsed,
            kind,
        })
    }

    /// See [`target_key`]: never log it.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Standalone, Sentinel or Cluster.
    pub fn mode(&self) -> Mode {
        self.parsed.mode
    }

    /// Whether keys need hash tags (Cluster).
    pub fn is_cluster(&self) -> bool {
        self.parsed.mode == Mode::Cluster
    }

    /// The URL as given (may carry a password: never log it; see [`Target::redacted`]).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL without passwords.
    pub fn redacted(&self) -> String {
        redacted(&self.url)
    }

    /// Opens a connection whose commands time out after `response_timeout` (`None`:
    /// never; blocking reads need more than the block time). Sentinel: asks the sentinels
    /// for the primary (and checks its role) on every call, so calling it again after a
    /// connection error follows a failover.
    pub async fn connect(&self, response_timeout: Option<Duration>) -> Result<Connection> {
        let connect_timeout = Duration::from_secs(3);
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(response_timeout);
        match &self.kind {
            Kind::Standalone(c) => Ok(Connection::Node(
                c.get_multiplexed_async_connection_with_config(&cfg).await?,
            )),
            Kind::Sentinel(s) => {
                // Sentinels or a primary that do not answer must not hang the caller.
                match tokio::time::timeout(connect_timeout * 3, s.connect(&cfg)).await {
                    Ok(r) => Ok(Connection::Node(r?)),
                    Err(_) => Err(conn_error(
                        "no sentinel or primary answered in time",
                        String::new(),
                    )),
                }
            }
            Kind::Cluster(c) => {
                let mut cc =
                    redis::cluster::ClusterConfig::new().set_connection_timeout(connect_timeout);
                cc = cc
                    .set_response_timeout(response_timeout.unwrap_or(Duration::from_secs(86_400)));
                Ok(Connection::Cluster(
                    c.get_async_connection_with_config(cc).await?,
                ))
            }
        }
    }
}

/// A connection of any mode; implements the redis crate's `ConnectionLike`, so every
/// queue operation takes it. Cheap to clone (multiplexed).
#[derive(Clone)]
pub enum Connection {
    /// One Redis node (standalone, or the Sentinel-named primary).
    Node(MultiplexedConnection),
    /// A Redis Cluster (routes each command by its keys' slot).
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Node(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Node(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// Whether an error is a failed TLS handshake or certificate check (wrong CA, expired or
/// mismatched certificate, client certificate refused): not a network outage, and what
/// the operator reports as `TLSFailed`.
pub fn is_tls_error(e: &redis::RedisError) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if s.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        src = s.source();
    }
    let text = e.to_string().to_ascii_lowercase();
    [
        "invalid peer certificate",
        "certificate",
        "received fatal alert",
        "handshake",
        "tls",
    ]
    .iter()
    .any(|w| text.contains(w))
}

/// What went wrong in a TLS handshake, in words: the rustls error's own text (it names
/// the certificate problem, never the URL), at most 200 characters.
pub fn tls_message(e: &redis::RedisError) -> String {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut last = e.to_string();
    while let Some(s) = src {
        if s.downcast_ref::<rustls::Error>().is_some() {
            return s.to_string().chars().take(200).collect();
        }
        last = s.to_string();
        src = s.source();
    }
    last.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sentinel_urls() {
        let p = parse_url(
            "redis+sentinel://u:p%40ss@a:26379,b,[::1]:26380/mymaster/2?sentinel_password=s3cr%2Ft",
        )
        .expect("parses");
        assert_eq!(p.mode, Mode::Sentinel);
        assert!(!p.tls);
        assert_eq!(p.username.as_deref(), Some("u"));
        assert_eq!(p.password.as_deref(), Some("p@ss"));
        assert_eq!(
            p.hosts,
            vec![
                HostPort {
                    host: "a".into(),
                    port: 26379
                },
                HostPort {
                    host: "b".into(),
                    port: SENTINEL_PORT
                },
                HostPort {
                    host: "::1".into(),
                    port: 26380
                },
            ]
        );
        assert_eq!(p.master.as_deref(), Some("mymaster"));
        assert_eq!(p.db, 2);
        assert_eq!(p.sentinel_password.as_deref(), Some("s3cr/t"));
        let p = parse_url("rediss+sentinel://h/m").expect("parses");
        assert!(p.tls);
        assert_eq!(p.db, 0);
        assert!(format!("{p:?}").contains("mode: Sentinel"));
    }

    #[test]
    fn parses_cluster_urls() {
        let p = parse_url("redis+cluster://:pw@h1:7000,h2:7001").expect("parses");
        assert_eq!(p.mode, Mode::Cluster);
        assert_eq!(p.username, None);
        assert_eq!(p.password.as_deref(), Some("pw"));
        assert_eq!(p.hosts.len(), 2);
        assert!(
            parse_url("rediss+cluster://h1/0")
                .expect("db 0 is fine")
                .tls
        );
        assert_eq!(
            parse_url("redis+cluster://h1").expect("parses").hosts[0].port,
            6379
        );
    }

    #[test]
    fn refuses_bad_urls_with_clear_errors_and_no_password() {
        for (url, what) in [
            ("http://h", "unknown scheme"),
            ("h:6379", "no scheme"),
            ("redis+sentinel://:hunter2@h:26379", "names the primary"),
            (
                "redis+sentinel://:hunter2@h:26379/m/x",
                "not a database number",
            ),
            ("redis+sentinel://:hunter2@h:26379/m/1/2", "/MASTER[/db]"),
            ("redis+cluster://:hunter2@h:7000/3", "only database 0"),
            ("redis+cluster://:hunter2@h:99999", "port must be"),
            ("redis+cluster://:hunter2@h:7000,,h2", "empty host"),
            ("redis+cluster://:hunter2@[::1:7000", "closing ]"),
            (
                "redis+cluster://:hunter2@h?foo=1",
                "unknown query parameter",
            ),
            (
                "redis+sentinel://:hunter2@h/m?sentinel_password=%zz",
                "hex digits",
            ),
        ] {
            let e = parse_url(url).expect_err(url).to_string();
            assert!(e.contains(what), "{url}: {e}");
            assert!(!e.contains("hunter2"), "{url}: the password leaked: {e}");
        }
    }

    #[test]
    fn redacts_userinfo_and_sentinel_passwords() {
        assert_eq!(
            redacted("redis://:pw@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redacted("redis://host:6379"), "redis://host:6379");
        assert_eq!(
            redacted("redis+sentinel://a,b/m?sentinel_password=x&sentinel_username=u"),
            "redis+sentinel://a,b/m?sentinel_password=***&sentinel_username=u"
        );
    }

    #[test]
    fn tls_material_needs_a_tls_scheme_and_pairs() {
        let ca = b"-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n".to_vec();
        let e = Target::new("redis+cluster://h:7000", &Tls::with_ca(ca.clone()))
            .expect_err("plain cluster with a CA")
            .to_string();
        assert!(e.contains("rediss"), "{e}");
        let half = Tls {
            cert: Some(ca.clone()),
            ..Tls::default()
        };
        assert!(
            half.check()
                .expect_err("cert without key")
                .to_string()
                .contains("private key")
        );
        let not_pem = Tls::with_ca(b"hello".to_vec());
        assert!(
            not_pem
                .check()
                .expect_err("not pem")
                .to_string()
                .contains("not PEM")
        );
        assert!(
            !format!(
                "{:?}",
                Tls {
                    key: Some(b"SECRET".to_vec()),
                    ..Tls::default()
                }
            )
            .contains("SECRET")
        );
    }

    #[test]
    fn builds_targets_of_every_mode() {
        assert_eq!(
            Target::new("redis://127.0.0.1:1/", &Tls::none())
                .expect("standalone")
                .mode(),
            Mode::Standalone
        );
        let s = Target::new("redis+sentinel://127.0.0.1:1,127.0.0.1:2/m", &Tls::none())
            .expect("sentinel");
        assert_eq!(s.mode(), Mode::Sentinel);
        let c = Target::new("redis+cluster://:pw@127.0.0.1:1", &Tls::none()).expect("cluster");
        assert!(c.is_cluster());
        assert!(!format!("{c:?}").contains("pw"));
        assert_eq!(mode_of("rediss+cluster://x"), Some(Mode::Cluster));
        assert_eq!(mode_of("ftp://x"), None);
    }
}
