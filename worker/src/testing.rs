//! Test support (cargo feature `test-support`): a real `redis-server` on a free loopback
//! port, stoppable and restartable on the same port, killed on drop.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the test server persists data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Persistence {
    /// `--save "" --appendonly no`: nothing survives a restart.
    #[default]
    None,
    /// `--appendonly yes --appendfsync always` in a temporary directory: every write is
    /// on disk before Redis replies, so data survives even a SIGKILL of the server.
    AppendOnlyAlways,
}

/// A `redis-server` child process on `127.0.0.1:<port>`.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    persistence: Persistence,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// The TLS port, when started with TLS.
    tls_port: Option<u16>,
    /// A second address to listen on besides loopback ([`RedisServer::start_also_on`]).
    also_on: Option<std::net::IpAddr>,
    /// The CA of the TLS certificates (shared by the servers of one topology).
    ca: Option<Arc<TestCa>>,
    /// `tls-auth-clients yes`: clients must present a certificate of the CA.
    tls_auth_clients: bool,
    /// More `redis-server` arguments (replication, cluster mode, ...).
    extra: Vec<String>,
}

/// How to start a [`RedisServer`] ([`RedisServer::start_opts`]).
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Persistence.
    pub persistence: Persistence,
    /// Also listen for TLS (on another port), with certificates of this CA.
    pub tls: Option<Arc<TestCa>>,
    /// With `tls`: require client certificates (`tls-auth-clients yes`).
    pub tls_auth_clients: bool,
    /// Listen on this address too, besides loopback.
    pub also_on: Option<std::net::IpAddr>,
    /// More `redis-server` arguments, e.g. `["--replicaof", "127.0.0.1", "6379"]`.
    pub extra: Vec<String>,
}

/// The `redis-server` binary: `$WORKPOOL_REDIS_SERVER`, else `/usr/bin/redis-server`,
/// else `redis-server` from `PATH`.
pub fn redis_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("WORKPOOL_REDIS_SERVER") {
        return PathBuf::from(p);
    }
    let usr = PathBuf::from("/usr/bin/redis-server");
    if usr.exists() {
        return usr;
    }
    PathBuf::from("redis-server")
}

/// A TCP port free on every address, for a server a test is about to start.
///
/// Not from the kernel's ephemeral range (`net.ipv4.ip_local_port_range`): a port the
/// kernel hands out for `bind(0)` is also the kind it gives outgoing connections, so a
/// health probe or client connection could take it between this call and the server's
/// bind (CI saw `kube-apiserver: bind: address already in use` that way). A random port
/// below the range, never handed out twice by this process, and checked bindable on
/// 0.0.0.0, leaves only a collision with another test process picking the same one.
pub fn free_port() -> io::Result<u16> {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // At least 4,000 ports above the well-known and registered-by-habit ones.
    let (low, high) = if ephemeral_low >= 14_000 {
        (10_000, ephemeral_low)
    } else {
        (ephemeral_low.saturating_add(1), u16::MAX)
    };
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    for _ in 0..200 {
        let port = rand::random_range(low..high);
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind(("0.0.0.0", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            handed_out.insert(port);
            return Ok(port);
        }
    }
    // Fall back to the kernel's choice rather than fail the test outright.
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl RedisServer {
    /// Starts a server without persistence on a free port and waits until it answers.
    pub fn start() -> io::Result<RedisServer> {
        Self::start_with(Persistence::None)
    }

    /// Starts a server with the given persistence on a free port.
    pub fn start_with(persistence: Persistence) -> io::Result<RedisServer> {
        Self::start_opts(ServerOptions {
            persistence,
            ..ServerOptions::default()
        })
    }

    /// Starts a server without persistence that listens on `address` too, besides
    /// loopback: e.g. the host address a real node's pods reach the host at.
    pub fn start_also_on(address: std::net::IpAddr) -> io::Result<RedisServer> {
        Self::start_opts(ServerOptions {
            also_on: Some(address),
            ..ServerOptions::default()
        })
    }

    /// `redis://<address>:<port>/`: the URL through the address given to
    /// [`RedisServer::start_also_on`] (loopback otherwise).
    pub fn url_on_also(&self) -> String {
        match self.also_on {
            Some(a) => format!("redis://{a}:{}/", self.port),
            None => self.url(),
        }
    }

    /// Starts a server that also listens for TLS on another free port, with a fresh CA
    /// and a server certificate for `localhost` and `127.0.0.1`. See
    /// [`RedisServer::tls_url`] and [`RedisServer::ca_file`].
    pub fn start_tls() -> io::Result<RedisServer> {
        Self::start_opts(ServerOptions {
            tls: Some(Arc::new(TestCa::new()?)),
            ..ServerOptions::default()
        })
    }

    /// Like [`RedisServer::start_tls`], and TLS clients must present a certificate
    /// signed by the CA (`tls-auth-clients yes`, mTLS); see [`TestCa::client_cert_file`].
    pub fn start_mtls() -> io::Result<RedisServer> {
        Self::start_opts(ServerOptions {
            tls: Some(Arc::new(TestCa::new()?)),
            tls_auth_clients: true,
            ..ServerOptions::default()
        })
    }

    /// Starts a server as `opts` says, on free ports.
    pub fn start_opts(opts: ServerOptions) -> io::Result<RedisServer> {
        let mut last_err = None;
        // Another process can take a free port before the server binds it: try a few.
        for _ in 0..5 {
            let mut s = RedisServer {
                port: free_port()?,
                persistence: opts.persistence,
                dir: tempfile::Builder::new()
                    .prefix("workpool-redis")
                    .tempdir()?,
                child: None,
                tls_port: if opts.tls.is_some() {
                    Some(free_port()?)
                } else {
                    None
                },
                also_on: opts.also_on,
                ca: opts.tls.clone(),
                tls_auth_clients: opts.tls_auth_clients,
                extra: opts.extra.clone(),
            };
            match s.spawn() {
                Ok(()) => return Ok(s),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("could not start redis-server")))
    }

    /// `rediss://localhost:<tls port>/` (servers started with TLS).
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("rediss://localhost:{p}/"))
    }

    /// `rediss://<address>:<tls port>/` through the address given in
    /// [`ServerOptions::also_on`] (servers started with TLS and such an address; the CA's
    /// certificate must name it, see [`TestCa::with_ips`]).
    pub fn tls_url_on_also(&self) -> Option<String> {
        Some(format!("rediss://{}:{}/", self.also_on?, self.tls_port?))
    }

    /// The TLS port (servers started with TLS).
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// The PEM file of the CA that signed the server's TLS certificate.
    pub fn ca_file(&self) -> PathBuf {
        match &self.ca {
            Some(ca) => ca.ca_file(),
            None => self.dir.path().join("ca.crt"),
        }
    }

    /// The CA of a TLS server.
    pub fn ca(&self) -> Option<&Arc<TestCa>> {
        self.ca.as_ref()
    }

    /// The server's working directory (its AOF, its cluster config).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    fn spawn(&mut self) -> io::Result<()> {
        let bin = redis_server_binary();
        let mut cmd = Command::new(&bin);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1");
        if let Some(address) = self.also_on {
            cmd.arg(address.to_string());
        }
        cmd.arg("--save")
            .arg("")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--protected-mode")
            .arg("no");
        match self.persistence {
            Persistence::None => {
                cmd.arg("--appendonly").arg("no");
            }
            Persistence::AppendOnlyAlways => {
                cmd.arg("--appendonly")
                    .arg("yes")
                    .arg("--appendfsync")
                    .arg("always");
            }
        }
        if let (Some(tls), Some(ca)) = (self.tls_port, &self.ca) {
            cmd.arg("--tls-port")
                .arg(tls.to_string())
                .arg("--tls-cert-file")
                .arg(ca.server_cert_file())
                .arg("--tls-key-file")
                .arg(ca.server_key_file())
                .arg("--tls-ca-cert-file")
                .arg(ca.ca_file())
                .arg("--tls-auth-clients")
                .arg(if self.tls_auth_clients { "yes" } else { "no" });
        }
        cmd.args(&self.extra);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run {}: {e} (install redis-server)", bin.display()),
            )
        })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "redis-server on port {} exited at start: {status}",
                    self.port
                )));
            }
            if ping(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other(format!(
                    "redis-server on port {} did not answer within 10s",
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Freezes the server (`SIGSTOP`): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Resumes a server frozen by [`RedisServer::pause`] (`SIGCONT`).
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
    }

    /// Kills the server (SIGKILL) and waits for it. With [`Persistence::AppendOnlyAlways`]
    /// every acknowledged write survives.
    pub fn stop(&mut self) {
        // A paused server must be resumed to die promptly and release its port.
        self.resume();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the server (SIGKILL) as it is, without resuming a frozen one first: a server
    /// frozen by [`RedisServer::pause`] dies without processing another command.
    pub fn kill_frozen(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port (after [`RedisServer::stop`]); retries for
    /// a few seconds while the port is still in use.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A synchronous connection on the plain port (for test set-up and checks).
    pub fn sync_conn(&self) -> io::Result<redis::Connection> {
        sync_conn(self.port)
    }

    /// Runs one command on the plain port.
    pub fn cmd<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> io::Result<T> {
        let mut c = self.sync_conn()?;
        cmd.query(&mut c).map_err(io::Error::other)
    }
}

fn sync_conn(port: u16) -> io::Result<redis::Connection> {
    let client =
        redis::Client::open(format!("redis://127.0.0.1:{port}/")).map_err(io::Error::other)?;
    let c = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .map_err(io::Error::other)?;
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io::Error::other)?;
    Ok(c)
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private CA for tests, made in-process (`rcgen`): the CA, a server certificate
/// for `localhost` and `127.0.0.1`, and a client certificate (for mTLS), all in one
/// temporary directory. One CA serves every server of a topology.
#[derive(Debug)]
pub struct TestCa {
    dir: tempfile::TempDir,
}

impl TestCa {
    /// A fresh CA with its server and client certificates.
    pub fn new() -> io::Result<TestCa> {
        Self::with_ips(&[])
    }

    /// Like [`TestCa::new`], the server certificate valid for these addresses too (e.g.
    /// the host address pods reach the host at).
    pub fn with_ips(ips: &[std::net::IpAddr]) -> io::Result<TestCa> {
        let dir = tempfile::Builder::new().prefix("workpool-ca").tempdir()?;
        make_certificates(dir.path(), ips)?;
        Ok(TestCa { dir })
    }

    /// The CA certificate (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The servers' certificate (PEM).
    pub fn server_cert_file(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }

    /// The servers' key (PEM).
    pub fn server_key_file(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// A client certificate signed by the CA (PEM).
    pub fn client_cert_file(&self) -> PathBuf {
        self.dir.path().join("client.crt")
    }

    /// The client certificate's key (PEM).
    pub fn client_key_file(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }

    /// The CA and the client certificate as the worker crate takes them.
    pub fn client_tls(&self) -> io::Result<crate::target::Tls> {
        Ok(crate::target::Tls {
            ca: Some(std::fs::read(self.ca_file())?),
            cert: Some(std::fs::read(self.client_cert_file())?),
            key: Some(std::fs::read(self.client_key_file())?),
        })
    }

    /// More arguments of a TLS server of a topology: it replicates over TLS and
    /// presents the server certificate as its client certificate to its peers (which
    /// may require one).
    pub fn peer_tls_args(&self) -> Vec<String> {
        vec![
            "--tls-client-cert-file".into(),
            self.server_cert_file().to_string_lossy().into_owned(),
            "--tls-client-key-file".into(),
            self.server_key_file().to_string_lossy().into_owned(),
            "--tls-replication".into(),
            "yes".into(),
        ]
    }
}

/// The CA (ca.crt), a server certificate for localhost, 127.0.0.1 and `extra_ips`
/// (server.crt/key, also usable as a client certificate between servers) and a client
/// certificate (client.crt/key) in `dir`: PEM, keys PKCS#8, made in-process with `rcgen`.
fn make_certificates(dir: &std::path::Path, extra_ips: &[std::net::IpAddr]) -> io::Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let failed = |what: &str, e: rcgen::Error| io::Error::other(format!("{what}: {e}"));
    let ca_key = KeyPair::generate().map_err(|e| failed("CA key", e))?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "workpool test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| failed("CA", e))?;
    let issuer = Issuer::from_params(&ca, &ca_key);

    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    names.extend(extra_ips.iter().map(|ip| ip.to_string()));
    let leaf = |names: Vec<String>, cn: &str, usages: Vec<ExtendedKeyUsagePurpose>| {
        let key = KeyPair::generate().map_err(|e| failed("key", e))?;
        let mut params = CertificateParams::new(names).map_err(|e| failed("names", e))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = usages;
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| failed("certificate", e))?;
        Ok::<_, io::Error>((cert, key))
    };
    let (server, server_key) = leaf(
        names,
        "localhost",
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )?;
    let (client, client_key) = leaf(
        Vec::new(),
        "workpool test client",
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    std::fs::write(dir.join("ca.crt"), ca_cert.pem())?;
    std::fs::write(dir.join("server.crt"), server.pem())?;
    std::fs::write(dir.join("server.key"), server_key.serialize_pem())?;
    std::fs::write(dir.join("client.crt"), client.pem())?;
    std::fs::write(dir.join("client.key"), client_key.serialize_pem())?;
    Ok(())
}

fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(n) => buf[..n].starts_with(b"+PONG"),
        Err(_) => false,
    }
}

/// The `redis-sentinel` command: `$WORKPOOL_REDIS_SENTINEL`, else `redis-sentinel` next to
/// the `redis-server` in use (Debian's `redis-sentinel` package), else `None` (then a
/// sentinel runs as `redis-server <conf> --sentinel`, the same program).
pub fn redis_sentinel_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WORKPOOL_REDIS_SENTINEL") {
        return Some(PathBuf::from(p));
    }
    let server = redis_server_binary();
    let beside = server
        .parent()
        .map(|d| d.join("redis-sentinel"))
        .unwrap_or_else(|| PathBuf::from("/usr/bin/redis-sentinel"));
    beside.exists().then_some(beside)
}

/// One `redis-sentinel` process on `127.0.0.1`.
#[derive(Debug)]
pub struct SentinelProcess {
    port: u16,
    tls_port: Option<u16>,
    /// Its config file (rewritten by the sentinel) lives here while it runs.
    _dir: tempfile::TempDir,
    child: Option<Child>,
}

impl SentinelProcess {
    /// The plain port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TLS port (TLS topologies).
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// Whether it runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills it (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn start(config: &str, port: u16, tls_port: Option<u16>) -> io::Result<SentinelProcess> {
        let dir = tempfile::Builder::new()
            .prefix("workpool-sentinel")
            .tempdir()?;
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!("{config}dir {}\n", dir.path().to_string_lossy()),
        )?;
        let mut cmd = match redis_sentinel_binary() {
            Some(b) => {
                let mut c = Command::new(b);
                c.arg(&conf);
                c
            }
            None => {
                let mut c = Command::new(redis_server_binary());
                c.arg(&conf).arg("--sentinel");
                c
            }
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run redis-sentinel: {e}")))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "redis-sentinel on port {port} exited at start: {status}"
                )));
            }
            if ping(port) {
                return Ok(SentinelProcess {
                    port,
                    tls_port,
                    _dir: dir,
                    child: Some(child),
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other(format!(
                    "redis-sentinel on port {port} did not answer within 10s"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs one command on the plain port.
    pub fn cmd<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> io::Result<T> {
        let mut c = sync_conn(self.port)?;
        cmd.query(&mut c).map_err(io::Error::other)
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How to start a [`SentinelSet`].
#[derive(Debug, Clone)]
pub struct SentinelOptions {
    /// Replicas of the primary.
    pub replicas: usize,
    /// Sentinels (quorum: a majority of them).
    pub sentinels: usize,
    /// TLS for every server and sentinel (replication over TLS too), with this CA.
    pub tls: Option<Arc<TestCa>>,
    /// With `tls`: clients must present a certificate (mTLS).
    pub tls_auth_clients: bool,
    /// Persistence of the Redis servers.
    pub persistence: Persistence,
    /// `sentinel down-after-milliseconds`.
    pub down_after: Duration,
    /// Listen on this address too and announce it (replication, sentinels, the URL):
    /// e.g. the host address a real node's pods reach the host at.
    pub announce: Option<std::net::IpAddr>,
}

impl Default for SentinelOptions {
    fn default() -> Self {
        SentinelOptions {
            replicas: 2,
            sentinels: 3,
            tls: None,
            tls_auth_clients: false,
            persistence: Persistence::None,
            // Short for tests, yet long enough that a busy machine (a primary slow to
            // answer a PING) does not fail over a second time on its own.
            down_after: Duration::from_millis(3000),
            announce: None,
        }
    }
}

/// A Sentinel-managed Redis on loopback: one primary, its replicas and the sentinels
/// that watch them (as `mymaster`), all real processes.
#[derive(Debug)]
pub struct SentinelSet {
    /// The Redis servers; index 0 started as the primary.
    pub servers: Vec<RedisServer>,
    /// The sentinels.
    pub sentinels: Vec<SentinelProcess>,
    tls: bool,
    /// The address in the URL and in what the sentinels announce.
    addr: String,
}

/// The name the sentinels of a [`SentinelSet`] know the primary by.
pub const SENTINEL_MASTER: &str = "mymaster";

impl SentinelSet {
    /// Starts the servers, waits until the replicas are in sync, starts the sentinels and
    /// waits until each knows every replica and every other sentinel.
    pub fn start(opts: SentinelOptions) -> io::Result<SentinelSet> {
        let tls = opts.tls.clone();
        let peer = tls.as_ref().map(|c| c.peer_tls_args()).unwrap_or_default();
        let addr = opts
            .announce
            .map(|a| a.to_string())
            .unwrap_or_else(|| "127.0.0.1".into());
        let announce: Vec<String> = match opts.announce {
            Some(a) => vec!["--replica-announce-ip".into(), a.to_string()],
            None => Vec::new(),
        };
        let server_opts = |extra: Vec<String>| ServerOptions {
            persistence: opts.persistence,
            tls: tls.clone(),
            tls_auth_clients: opts.tls_auth_clients,
            also_on: opts.announce,
            extra: [peer.clone(), announce.clone(), extra].concat(),
        };
        let primary = RedisServer::start_opts(server_opts(Vec::new()))?;
        let primary_port = primary.tls_port.unwrap_or(primary.port);
        let mut servers = vec![primary];
        for _ in 0..opts.replicas {
            servers.push(RedisServer::start_opts(server_opts(vec![
                "--replicaof".into(),
                addr.clone(),
                primary_port.to_string(),
            ]))?);
        }
        wait_for(Duration::from_secs(20), "the replicas to sync", || {
            let info: String = servers[0].cmd(redis::cmd("INFO").arg("replication")).ok()?;
            let online = info.matches("state=online").count();
            (online >= opts.replicas).then_some(())
        })?;
        let quorum = opts.sentinels / 2 + 1;
        let mut sentinels = Vec::new();
        for _ in 0..opts.sentinels {
            let port = free_port()?;
            let tls_port = if tls.is_some() {
                Some(free_port()?)
            } else {
                None
            };
            let bind = match opts.announce {
                Some(a) => format!("bind 127.0.0.1 {a}\nsentinel announce-ip {a}"),
                None => "bind 127.0.0.1".to_string(),
            };
            let mut conf = format!(
                "port {port}\n{bind}\nprotected-mode no\n\
                 sentinel monitor {SENTINEL_MASTER} {addr} {primary_port} {quorum}\n\
                 sentinel down-after-milliseconds {SENTINEL_MASTER} {}\n\
                 sentinel failover-timeout {SENTINEL_MASTER} 10000\n\
                 sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                opts.down_after.as_millis()
            );
            if let (Some(ca), Some(tp)) = (&tls, tls_port) {
                conf += &format!(
                    "tls-port {tp}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
                     tls-client-cert-file {}\ntls-client-key-file {}\n\
                     tls-auth-clients {}\ntls-replication yes\n",
                    ca.server_cert_file().display(),
                    ca.server_key_file().display(),
                    ca.ca_file().display(),
                    ca.server_cert_file().display(),
                    ca.server_key_file().display(),
                    if opts.tls_auth_clients { "yes" } else { "no" },
                );
            }
            sentinels.push(SentinelProcess::start(&conf, port, tls_port)?);
        }
        let set = SentinelSet {
            servers,
            sentinels,
            tls: tls.is_some(),
            addr,
        };
        wait_for(
            Duration::from_secs(30),
            "the sentinels to know each other and the replicas",
            || {
                for s in &set.sentinels {
                    let replicas: Vec<redis::Value> = s
                        .cmd(redis::cmd("SENTINEL").arg("REPLICAS").arg(SENTINEL_MASTER))
                        .ok()?;
                    let peers: Vec<redis::Value> = s
                        .cmd(redis::cmd("SENTINEL").arg("SENTINELS").arg(SENTINEL_MASTER))
                        .ok()?;
                    if replicas.len() < opts.replicas || peers.len() + 1 < opts.sentinels {
                        return None;
                    }
                }
                Some(())
            },
        )?;
        Ok(set)
    }

    /// `redis+sentinel://127.0.0.1:<s1>,.../mymaster` (`rediss+sentinel://` with the TLS
    /// ports for a TLS set).
    pub fn url(&self) -> String {
        let (scheme, ports): (&str, Vec<u16>) = if self.tls {
            (
                "rediss+sentinel",
                self.sentinels.iter().filter_map(|s| s.tls_port).collect(),
            )
        } else {
            (
                "redis+sentinel",
                self.sentinels.iter().map(|s| s.port).collect(),
            )
        };
        let hosts: Vec<String> = ports.iter().map(|p| format!("{}:{p}", self.addr)).collect();
        format!("{scheme}://{}/{SENTINEL_MASTER}", hosts.join(","))
    }

    /// The index in `servers` of the primary the running sentinels name (the majority of
    /// those that answer), if they agree on a running server.
    pub fn primary(&self) -> Option<usize> {
        let mut votes: std::collections::HashMap<u16, usize> = std::collections::HashMap::new();
        for s in self.sentinels.iter().filter(|s| s.is_running()) {
            if let Ok((_, port)) = s.cmd::<(String, u16)>(
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(SENTINEL_MASTER),
            ) {
                *votes.entry(port).or_default() += 1;
            }
        }
        let (port, _) = votes.into_iter().max_by_key(|(_, n)| *n)?;
        self.servers
            .iter()
            .position(|s| s.is_running() && (s.port == port || s.tls_port == Some(port)))
    }

    /// The sentinels' configuration epoch of the primary (the highest any running
    /// sentinel reports): it grows by one with each failover.
    pub fn config_epoch(&self) -> Option<u64> {
        self.sentinels
            .iter()
            .filter(|s| s.is_running())
            .filter_map(|s| {
                s.cmd::<std::collections::HashMap<String, String>>(
                    redis::cmd("SENTINEL").arg("MASTER").arg(SENTINEL_MASTER),
                )
                .ok()?
                .get("config-epoch")?
                .parse()
                .ok()
            })
            .max()
    }

    /// Kills the current primary (SIGKILL); returns its index.
    pub fn kill_primary(&mut self) -> io::Result<usize> {
        let i = self
            .primary()
            .ok_or_else(|| io::Error::other("the sentinels name no running primary"))?;
        self.servers[i].stop();
        Ok(i)
    }

    /// Waits until the sentinels name a running primary other than `old` that says it is
    /// a primary (`ROLE`); returns its index.
    pub fn wait_for_failover(&self, old: usize, timeout: Duration) -> io::Result<usize> {
        wait_for(timeout, "the sentinels to promote a replica", || {
            let i = self.primary().filter(|i| *i != old)?;
            let role: Vec<redis::Value> = self.servers[i].cmd(&redis::cmd("ROLE")).ok()?;
            matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master").then_some(i)
        })
    }
}

/// How to start a [`RedisCluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Primaries (the slots are split evenly).
    pub primaries: usize,
    /// Replicas per primary.
    pub replicas_per_primary: usize,
    /// TLS for clients and the cluster bus, with this CA.
    pub tls: Option<Arc<TestCa>>,
    /// With `tls`: clients must present a certificate (mTLS).
    pub tls_auth_clients: bool,
    /// `cluster-node-timeout`.
    pub node_timeout: Duration,
    /// Listen on this address too and announce it (the slot map, the URL): e.g. the host
    /// address a real node's pods reach the host at.
    pub announce: Option<std::net::IpAddr>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            primaries: 3,
            replicas_per_primary: 0,
            tls: None,
            tls_auth_clients: false,
            node_timeout: Duration::from_millis(1000),
            announce: None,
        }
    }
}

/// A Redis Cluster on loopback, made by `redis-cli --cluster create`.
#[derive(Debug)]
pub struct RedisCluster {
    /// The nodes (primaries first, as created; roles change on failover).
    pub nodes: Vec<RedisServer>,
    tls: bool,
    /// The address in the URL and the slot map.
    addr: String,
}

/// The `redis-cli` binary: beside the `redis-server` in use, else from `PATH`.
pub fn redis_cli_binary() -> PathBuf {
    let beside = redis_server_binary().parent().map(|d| d.join("redis-cli"));
    match beside {
        Some(b) if b.exists() => b,
        _ => PathBuf::from("redis-cli"),
    }
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster and waits until every node says
    /// `cluster_state:ok`.
    pub fn start(opts: ClusterOptions) -> io::Result<RedisCluster> {
        let total = opts.primaries * (1 + opts.replicas_per_primary);
        let mut nodes = Vec::new();
        for _ in 0..total {
            let mut extra = vec![
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                "nodes.conf".into(),
                "--cluster-node-timeout".into(),
                opts.node_timeout.as_millis().to_string(),
                // Not port + 10000: that may be taken or past 65535.
                "--cluster-port".into(),
                free_port()?.to_string(),
            ];
            if let Some(ca) = &opts.tls {
                extra.extend(ca.peer_tls_args());
                extra.extend(["--tls-cluster".into(), "yes".into()]);
            }
            if let Some(a) = opts.announce {
                extra.extend(["--cluster-announce-ip".into(), a.to_string()]);
            }
            nodes.push(RedisServer::start_opts(ServerOptions {
                tls: opts.tls.clone(),
                tls_auth_clients: opts.tls_auth_clients,
                also_on: opts.announce,
                extra,
                ..ServerOptions::default()
            })?);
        }
        let mut cli = Command::new(redis_cli_binary());
        if let Some(ca) = &opts.tls {
            cli.arg("--tls")
                .arg("--cacert")
                .arg(ca.ca_file())
                .arg("--cert")
                .arg(ca.client_cert_file())
                .arg("--key")
                .arg(ca.client_key_file());
        }
        let addr = opts
            .announce
            .map(|a| a.to_string())
            .unwrap_or_else(|| "127.0.0.1".into());
        cli.arg("--cluster").arg("create");
        for n in &nodes {
            let port = if opts.tls.is_some() {
                n.tls_port.unwrap_or(n.port)
            } else {
                n.port
            };
            cli.arg(format!("{addr}:{port}"));
        }
        let out = cli
            .arg("--cluster-replicas")
            .arg(opts.replicas_per_primary.to_string())
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run redis-cli: {e}")))?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let cluster = RedisCluster {
            nodes,
            tls: opts.tls.is_some(),
            addr,
        };
        cluster.wait_ok(Duration::from_secs(30))?;
        // Replicas in sync: a WAIT right after the start must be answerable.
        if opts.replicas_per_primary > 0 {
            wait_for(Duration::from_secs(30), "the replicas to sync", || {
                for i in cluster.primaries() {
                    let info: String = cluster.nodes[i]
                        .cmd(redis::cmd("INFO").arg("replication"))
                        .ok()?;
                    if info.matches("state=online").count() < opts.replicas_per_primary {
                        return None;
                    }
                }
                (cluster.primaries().len() == opts.primaries).then_some(())
            })?;
        }
        Ok(cluster)
    }

    /// Waits until every running node says `cluster_state:ok` and agrees on the slots.
    pub fn wait_ok(&self, timeout: Duration) -> io::Result<()> {
        wait_for(timeout, "the cluster to be ok", || {
            let mut maps = Vec::new();
            for n in self.nodes.iter().filter(|n| n.is_running()) {
                let info: String = n.cmd(redis::cmd("CLUSTER").arg("INFO")).ok()?;
                if !info.contains("cluster_state:ok") {
                    return None;
                }
                maps.push(self.slot_owners_from(n)?);
            }
            maps.windows(2).all(|w| w[0] == w[1]).then_some(())
        })
    }

    /// `redis+cluster://127.0.0.1:<p1>,...` (`rediss+cluster://` with the TLS ports).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| {
                let p = if self.tls {
                    n.tls_port.unwrap_or(n.port)
                } else {
                    n.port
                };
                format!("{}:{p}", self.addr)
            })
            .collect();
        format!(
            "{}://{}",
            if self.tls {
                "rediss+cluster"
            } else {
                "redis+cluster"
            },
            hosts.join(",")
        )
    }

    /// A node's cluster id.
    pub fn node_id(&self, i: usize) -> io::Result<String> {
        self.nodes[i].cmd(redis::cmd("CLUSTER").arg("MYID"))
    }

    /// (slot range start, end, primary's plain port) as node `n` sees them.
    fn slot_owners_from(&self, n: &RedisServer) -> Option<Vec<(u16, u16, u16)>> {
        let slots: Vec<redis::Value> = n.cmd(redis::cmd("CLUSTER").arg("SLOTS")).ok()?;
        let mut out = Vec::new();
        for r in slots {
            let redis::Value::Array(r) = r else {
                return None;
            };
            let int = |v: &redis::Value| match v {
                redis::Value::Int(i) => Some(*i),
                _ => None,
            };
            let start = int(r.first()?)? as u16;
            let end = int(r.get(1)?)? as u16;
            let redis::Value::Array(primary) = r.get(2)? else {
                return None;
            };
            let port = int(primary.get(1)?)? as u16;
            out.push((start, end, port));
        }
        out.sort();
        Some(out)
    }

    /// The index of the node that serves `slot` (as the first running node sees it).
    pub fn node_of_slot(&self, slot: u16) -> Option<usize> {
        let n = self.nodes.iter().find(|n| n.is_running())?;
        let owners = self.slot_owners_from(n)?;
        let (_, _, port) = owners
            .into_iter()
            .find(|(s, e, _)| *s <= slot && slot <= *e)?;
        self.nodes
            .iter()
            .position(|n| n.port == port || n.tls_port == Some(port))
    }

    /// Indexes of the running primaries.
    pub fn primaries(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i].is_running()
                    && self.nodes[i]
                        .cmd::<Vec<redis::Value>>(&redis::cmd("ROLE"))
                        .ok()
                        .is_some_and(|r| matches!(r.first(), Some(redis::Value::BulkString(b)) if b == b"master"))
            })
            .collect()
    }

    /// Moves `slot` to node `to` the way `redis-cli --cluster reshard` does (IMPORTING /
    /// MIGRATING, `MIGRATE` of its keys, `SETSLOT NODE` everywhere), holding the slot in
    /// the migrating state for `hold` before and again after its keys move, so clients
    /// meet `ASK` redirects (keys gone from the old owner, the slot not yet the new
    /// one's). Returns the number of keys moved.
    pub fn migrate_slot(&self, slot: u16, to: usize, hold: Duration) -> io::Result<usize> {
        let from = self
            .node_of_slot(slot)
            .ok_or_else(|| io::Error::other(format!("no node serves slot {slot}")))?;
        if from == to {
            return Ok(0);
        }
        let from_id = self.node_id(from)?;
        let to_id = self.node_id(to)?;
        let setslot = |n: usize, state: &str, id: &str| -> io::Result<()> {
            self.nodes[n].cmd::<()>(
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg(state)
                    .arg(id),
            )
        };
        setslot(to, "IMPORTING", &from_id)?;
        setslot(from, "MIGRATING", &to_id)?;
        std::thread::sleep(hold);
        let mut moved = 0;
        loop {
            let keys: Vec<Vec<u8>> = self.nodes[from].cmd(
                redis::cmd("CLUSTER")
                    .arg("GETKEYSINSLOT")
                    .arg(slot)
                    .arg(100),
            )?;
            if keys.is_empty() {
                break;
            }
            // All the slot's keys in one MIGRATE: a pool's keys move together.
            let mut m = redis::cmd("MIGRATE");
            m.arg(self.addr.as_str())
                .arg(self.nodes[to].port)
                .arg("")
                .arg(0)
                .arg(10_000)
                .arg("KEYS");
            for k in &keys {
                m.arg(k.as_slice());
            }
            self.nodes[from].cmd::<redis::Value>(&m)?;
            moved += keys.len();
        }
        std::thread::sleep(hold);
        // The new owner first, then the old one, then everyone else (as redis-cli does).
        setslot(to, "NODE", &to_id)?;
        setslot(from, "NODE", &to_id)?;
        for (i, n) in self.nodes.iter().enumerate() {
            if i != from && i != to && n.is_running() {
                let _ = n.cmd::<()>(
                    redis::cmd("CLUSTER")
                        .arg("SETSLOT")
                        .arg(slot)
                        .arg("NODE")
                        .arg(&to_id),
                );
            }
        }
        Ok(moved)
    }

    /// Waits until a running node other than `dead` serves `slot` as a primary and the
    /// cluster is ok again; returns its index.
    pub fn wait_for_promotion(
        &self,
        slot: u16,
        dead: usize,
        timeout: Duration,
    ) -> io::Result<usize> {
        let i = wait_for(timeout, "a replica to take over the slot", || {
            let i = self.node_of_slot(slot).filter(|i| *i != dead)?;
            self.primaries().contains(&i).then_some(i)
        })?;
        self.wait_ok(timeout)?;
        Ok(i)
    }
}

/// Polls `f` every 50 ms until it gives a value or `timeout` passes.
fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> io::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "timed out after {timeout:?} waiting for {what}"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
