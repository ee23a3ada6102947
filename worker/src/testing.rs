//! Test support (cargo feature `test-support`): a real `redis-server` on a free loopback
//! port, stoppable and restartable on the same port, killed on drop.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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
    /// The TLS port, when started with [`RedisServer::start_tls`].
    tls_port: Option<u16>,
    /// A second address to listen on besides loopback ([`RedisServer::start_also_on`]).
    also_on: Option<std::net::IpAddr>,
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
        Self::start_configured(persistence, false, None)
    }

    /// Starts a server without persistence that listens on `address` too, besides
    /// loopback: e.g. the host address a real node's pods reach the host at.
    pub fn start_also_on(address: std::net::IpAddr) -> io::Result<RedisServer> {
        Self::start_configured(Persistence::None, false, Some(address))
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
        Self::start_configured(Persistence::None, true, None)
    }

    fn start_configured(
        persistence: Persistence,
        tls: bool,
        also_on: Option<std::net::IpAddr>,
    ) -> io::Result<RedisServer> {
        let mut last_err = None;
        // Another process can take a free port before the server binds it: try a few.
        for _ in 0..5 {
            let mut s = RedisServer {
                port: free_port()?,
                persistence,
                dir: tempfile::Builder::new()
                    .prefix("workpool-redis")
                    .tempdir()?,
                child: None,
                tls_port: if tls { Some(free_port()?) } else { None },
                also_on,
            };
            if tls {
                make_certificates(s.dir.path())?;
            }
            match s.spawn() {
                Ok(()) => return Ok(s),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("could not start redis-server")))
    }

    /// `rediss://localhost:<tls port>/` (servers from [`RedisServer::start_tls`]).
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("rediss://localhost:{p}/"))
    }

    /// The PEM file of the CA that signed the server's TLS certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
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
        if let Some(tls) = self.tls_port {
            let d = self.dir.path();
            cmd.arg("--tls-port")
                .arg(tls.to_string())
                .arg("--tls-cert-file")
                .arg(d.join("server.crt"))
                .arg("--tls-key-file")
                .arg(d.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(d.join("ca.crt"))
                .arg("--tls-auth-clients")
                .arg("no");
        }
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
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A CA and a server certificate for localhost/127.0.0.1 in `dir` (ca.crt, server.crt,
/// server.key: PEM, the key PKCS#8), made in-process with `rcgen`.
fn make_certificates(dir: &std::path::Path) -> io::Result<()> {
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
    let key = KeyPair::generate().map_err(|e| failed("server key", e))?;
    let mut server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .map_err(|e| failed("server names", e))?;
    server.distinguished_name = rcgen::DistinguishedName::new();
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server.is_ca = IsCa::ExplicitNoCa;
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.use_authority_key_identifier_extension = true;
    let cert = server
        .signed_by(&key, &Issuer::from_params(&ca, &ca_key))
        .map_err(|e| failed("server certificate", e))?;
    std::fs::write(dir.join("ca.crt"), ca_cert.pem())?;
    std::fs::write(dir.join("server.crt"), cert.pem())?;
    std::fs::write(dir.join("server.key"), key.serialize_pem())?;
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
