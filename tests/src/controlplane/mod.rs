//! A real Kubernetes control plane for tests: `etcd`, `kube-apiserver`,
//! `kube-controller-manager` and `kube-scheduler`, built from Kubernetes' own source at
//! the release pinned in `tests/k8s/go.mod` (`scripts/k8s-bin.sh`), run as local
//! processes on free loopback ports with a temporary data directory.
//!
//! - The API server serves TLS with a certificate from a CA made at start, authenticates
//!   client certificates and ServiceAccount tokens, authorizes with `Node,RBAC`, and runs
//!   the default admission plugins plus `NodeRestriction` and `PodNodeSelector` (the
//!   latter lets suites with more than one node keep each test namespace's pods on its
//!   own node, as `operator_drain`'s `audit_support` does with a namespace annotation).
//! - The controller manager runs every default controller (garbage collector, namespace,
//!   deployment, replicaset, statefulset, serviceaccount and token, endpoints, node
//!   lifecycle and IPAM, ...); the scheduler binds pods to nodes.
//! - [`ControlPlane::admin_kubeconfig`] is a cluster-admin client certificate
//!   (`system:masters`); [`ControlPlane::kubeconfig_for_user`] makes one for any user and
//!   groups, e.g. a node's `system:node:NAME` in `system:nodes`.
//!
//! Every process is stopped when the `ControlPlane` is dropped, and a watchdog process
//! stops them (and removes the data directory) when the test process exits without
//! dropping it, even after a panic or a SIGKILL: the watchdog waits for end-of-file on a
//! pipe only this process holds open.

pub mod certs;

use anyhow::{Context, Result, anyhow, bail};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use certs::{Ca, KeyPair, Usage};

/// The ServiceAccount token issuer (and audience) of the test cluster.
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// How long the whole control plane may take to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(240);

/// How to start a [`ControlPlane`].
#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    /// Where the Kubernetes binaries are; `None`: `scripts/k8s-bin.sh --dir`.
    pub bin_dir: Option<PathBuf>,
    /// The address the API server advertises (the `kubernetes` Service's endpoint, so
    /// pods reach it there); `None`: the host's first global IPv4 address, else loopback.
    pub advertise_address: Option<Ipv4Addr>,
    /// ClusterIP range of Services.
    pub service_cidr: String,
    /// Pod range, split into one /24 per node by the controller manager.
    pub cluster_cidr: String,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        ControlPlaneOptions {
            bin_dir: None,
            advertise_address: None,
            service_cidr: "10.96.0.0/16".into(),
            cluster_cidr: "10.244.0.0/16".into(),
        }
    }
}

/// The repository root (the workspace directory above `tests/`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The pinned Kubernetes release (`vX.Y.Z`), as `tests/k8s/go.mod` requires it.
pub fn kubernetes_version() -> Result<String> {
    let gomod = repo_root().join("tests/k8s/go.mod");
    let text =
        std::fs::read_to_string(&gomod).with_context(|| format!("reading {}", gomod.display()))?;
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let first = words.next()?;
            let first = if first == "require" {
                words.next()?
            } else {
                first
            };
            (first == "k8s.io/kubernetes").then(|| words.next().map(str::to_string))?
        })
        .find(|v| v.starts_with('v'))
        .ok_or_else(|| anyhow!("no k8s.io/kubernetes requirement in {}", gomod.display()))
}

/// The directory `scripts/k8s-bin.sh` builds the binaries into (they may be absent).
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WORKPOOL_K8S_BIN").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let out = Command::new(repo_root().join("scripts/k8s-bin.sh"))
        .arg("--dir")
        .output()
        .context("running scripts/k8s-bin.sh --dir")?;
    if !out.status.success() {
        bail!(
            "scripts/k8s-bin.sh --dir failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The binaries the control plane needs.
const COMPONENTS: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
];

/// Why the real control plane cannot run here (`None`: it can): the binaries (built by
/// `make deps` / `scripts/k8s-bin.sh`).
pub fn unavailable_reason() -> Option<String> {
    let dir = match bin_dir() {
        Ok(d) => d,
        Err(e) => return Some(format!("{e:#}")),
    };
    let missing: Vec<&str> = COMPONENTS
        .iter()
        .copied()
        .filter(|c| !dir.join(c).is_file())
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "{} not built in {} (run scripts/k8s-bin.sh; it needs Go)",
            missing.join(", "),
            dir.display()
        ));
    }
    None
}

/// A free TCP port for a component to listen on (see [`workpool_worker::testing::free_port`]).
pub fn free_port() -> Result<u16> {
    Ok(workpool_worker::testing::free_port()?)
}

/// The host's first global IPv4 address (`ip -4 -o addr show scope global`).
fn host_address() -> Option<Ipv4Addr> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let mut words = l.split_whitespace();
        words.find(|w| *w == "inet")?;
        words.next()?.split('/').next()?.parse().ok()
    })
}

/// One running component.
struct Component {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// A running control plane. See the module documentation.
pub struct ControlPlane {
    dir: tempfile::TempDir,
    bin_dir: PathBuf,
    ca: Ca,
    server_url: String,
    advertise_address: Ipv4Addr,
    admin_kubeconfig: PathBuf,
    options: ControlPlaneOptions,
    components: Mutex<Vec<Component>>,
    /// Holding this pipe open keeps the watchdog waiting; see the module documentation.
    watchdog_stdin: Mutex<Option<ChildStdin>>,
    watchdog: Mutex<Option<Child>>,
    users: Mutex<u32>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server_url", &self.server_url)
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// The outcome of starting the shared control plane: kept, so that a failed start is
/// reported to every test instead of retried by each.
type SharedStart = Option<std::result::Result<Arc<ControlPlane>, String>>;

static SHARED: OnceLock<Mutex<SharedStart>> = OnceLock::new();

impl ControlPlane {
    /// The control plane shared by every test of this process, started by the first
    /// caller (blocking: call it from `spawn_blocking` in async code). A failed start is
    /// remembered and returned to every later caller.
    pub fn shared() -> Result<Arc<ControlPlane>> {
        let cell = SHARED.get_or_init(|| Mutex::new(None));
        let mut slot = cell.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let mut started = Self::start(ControlPlaneOptions::default());
            // Another process may take a chosen port before a component binds it: a
            // fresh start picks new ones.
            for _ in 0..2 {
                match &started {
                    Err(e) if format!("{e:#}").contains("address already in use") => {
                        tracing::warn!("control plane start lost a port race; starting again");
                        started = Self::start(ControlPlaneOptions::default());
                    }
                    _ => break,
                }
            }
            *slot = Some(started.map(Arc::new).map_err(|e| format!("{e:#}")));
        }
        match slot.as_ref() {
            Some(Ok(cp)) => Ok(cp.clone()),
            Some(Err(e)) => Err(anyhow!("{e}")),
            None => Err(anyhow!("control plane not started")),
        }
    }

    /// Starts etcd, the API server, the controller manager and the scheduler, and waits
    /// until the API server is ready and the default ServiceAccount exists. Blocking.
    pub fn start(options: ControlPlaneOptions) -> Result<ControlPlane> {
        let started = Instant::now();
        let bin_dir = match &options.bin_dir {
            Some(d) => d.clone(),
            None => bin_dir()?,
        };
        for c in COMPONENTS {
            if !bin_dir.join(c).is_file() {
                bail!(
                    "{c} is not built in {} (run scripts/k8s-bin.sh)",
                    bin_dir.display()
                );
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("workpool-controlplane-")
            .tempdir()
            .context("creating the control plane's directory")?;
        let (watchdog, watchdog_stdin) = start_watchdog(dir.path())?;
        let advertise_address = options
            .advertise_address
            .or_else(host_address)
            .unwrap_or(Ipv4Addr::LOCALHOST);

        let pki = dir.path().join("pki");
        let ca = Ca::create(&pki)?;
        let service_ip = first_service_ip(&options.service_cidr)?;
        let serving = ca.issue(
            "apiserver",
            Usage::Server {
                dns: &[
                    "localhost",
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                ],
                ips: &[
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V4(advertise_address),
                    IpAddr::V4(service_ip),
                ],
            },
        )?;
        let admin = ca.issue(
            "admin",
            Usage::Client {
                user: "workpool-test-admin",
                groups: &["system:masters"],
            },
        )?;
        let sa = certs::service_account_keys(&pki)?;

        let api_port = free_port()?;
        let server_url = format!("https://127.0.0.1:{api_port}");
        let admin_kubeconfig = dir.path().join("admin.kubeconfig");
        write_cert_kubeconfig(&admin_kubeconfig, &server_url, &ca.pair.cert, &admin)?;

        let cp = ControlPlane {
            bin_dir,
            ca,
            server_url,
            advertise_address,
            admin_kubeconfig,
            options,
            components: Mutex::new(Vec::new()),
            watchdog_stdin: Mutex::new(Some(watchdog_stdin)),
            watchdog: Mutex::new(Some(watchdog)),
            users: Mutex::new(0),
            dir,
        };
        cp.start_components(api_port, &serving, &sa)
            .map_err(|e| anyhow!("{e:#}\n{}", cp.log_tails()))?;
        tracing::info!(
            "real control plane ready at {} in {:.1}s",
            cp.server_url,
            started.elapsed().as_secs_f64()
        );
        Ok(cp)
    }

    fn start_components(&self, api_port: u16, serving: &KeyPair, sa: &KeyPair) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let data = self.dir.path().join("etcd");
        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        self.spawn(
            "etcd",
            &[
                "--name=test",
                &format!("--data-dir={}", data.display()),
                &format!("--listen-client-urls={etcd_url}"),
                &format!("--advertise-client-urls={etcd_url}"),
                &format!("--listen-peer-urls={peer_url}"),
                &format!("--initial-advertise-peer-urls={peer_url}"),
                &format!("--initial-cluster=test={peer_url}"),
                // A test cluster's data is thrown away: no fsync, small quota.
                "--unsafe-no-fsync=true",
                "--quota-backend-bytes=2147483648",
                "--log-level=warn",
            ],
        )?;
        self.wait("etcd", deadline, || {
            plain_http_get(etcd_port, "/health").is_ok_and(|b| b.contains("\"health\":\"true\""))
        })?;

        let pki = |p: &Path| p.display().to_string();
        let admin = self.dir.path().join("pki/admin");
        let (admin_crt, admin_key) = (admin.with_extension("crt"), admin.with_extension("key"));
        self.spawn(
            "kube-apiserver",
            &[
                &format!("--etcd-servers={etcd_url}"),
                "--bind-address=0.0.0.0",
                &format!("--secure-port={api_port}"),
                &format!("--advertise-address={}", self.advertise_address),
                &format!("--tls-cert-file={}", pki(&serving.cert)),
                &format!("--tls-private-key-file={}", pki(&serving.key)),
                &format!("--client-ca-file={}", pki(&self.ca.pair.cert)),
                &format!("--service-account-key-file={}", pki(&sa.cert)),
                &format!("--service-account-signing-key-file={}", pki(&sa.key)),
                &format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction,PodNodeSelector",
                &format!("--service-cluster-ip-range={}", self.options.service_cidr),
                "--allow-privileged=true",
                // Reach kubelets (logs, exec) at their InternalIP: node names do not
                // resolve through the machine's DNS.
                "--kubelet-preferred-address-types=InternalIP",
                &format!("--kubelet-client-certificate={}", pki(&admin_crt)),
                &format!("--kubelet-client-key={}", pki(&admin_key)),
                "--profiling=false",
                "--v=1",
            ],
        )?;
        let kubectl = self.bin_dir.join("kubectl");
        let kubeconfig = self.admin_kubeconfig.clone();
        self.wait("kube-apiserver /readyz", deadline, || {
            Command::new(&kubectl)
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .args(["get", "--raw", "/readyz", "--request-timeout=5s"])
                .output()
                .is_ok_and(|o| o.status.success())
        })?;

        let mut kcm = client_component_flags(&kubeconfig, free_port()?);
        kcm.extend([
            "--use-service-account-credentials=true".to_string(),
            format!("--service-account-private-key-file={}", pki(&sa.key)),
            format!("--root-ca-file={}", pki(&self.ca.pair.cert)),
            format!("--cluster-signing-cert-file={}", pki(&self.ca.pair.cert)),
            format!("--cluster-signing-key-file={}", pki(&self.ca.pair.key)),
            "--allocate-node-cidrs=true".to_string(),
            format!("--cluster-cidr={}", self.options.cluster_cidr),
            format!("--service-cluster-ip-range={}", self.options.service_cidr),
            // Pods of a node that stops heartbeating are evicted sooner than the
            // default 5 minutes: tests stop nodes.
            "--node-monitor-grace-period=20s".to_string(),
        ]);
        self.spawn("kube-controller-manager", &as_strs(&kcm))?;
        let scheduler = client_component_flags(&kubeconfig, free_port()?);
        self.spawn("kube-scheduler", &as_strs(&scheduler))?;
        // The ServiceAccount controller creates `default` in every namespace and the
        // root-CA publisher `kube-root-ca.crt`: pods can be created from then on.
        self.wait(
            "the default ServiceAccount and kube-root-ca.crt",
            deadline,
            || {
                self.kubectl(&[
                    "get",
                    "serviceaccount/default",
                    "configmap/kube-root-ca.crt",
                ])
                .is_ok()
            },
        )?;
        Ok(())
    }

    /// Starts a component with its output in `<dir>/<name>.log`.
    fn spawn(&self, name: &'static str, args: &[&str]) -> Result<()> {
        let log = self.dir.path().join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let child = Command::new(self.bin_dir.join(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        // The watchdog reads this list when the test process is gone.
        let mut pids = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("pids"))?;
        writeln!(pids, "{}", child.id())?;
        self.components
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Component { name, child, log });
        Ok(())
    }

    /// Polls `ready` until it holds; fails early when a component has exited.
    fn wait(&self, what: &str, deadline: Instant, mut ready: impl FnMut() -> bool) -> Result<()> {
        loop {
            if ready() {
                return Ok(());
            }
            if let Some(dead) = self.exited_component() {
                bail!("{dead} exited while waiting for {what}");
            }
            if Instant::now() > deadline {
                bail!("timed out after {START_TIMEOUT:?} waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The name and exit status of a component that is no longer running.
    fn exited_component(&self) -> Option<String> {
        let mut components = self.components.lock().unwrap_or_else(|p| p.into_inner());
        components
            .iter_mut()
            .find_map(|c| match c.child.try_wait() {
                Ok(Some(status)) => Some(format!("{} ({status})", c.name)),
                _ => None,
            })
    }

    /// The last lines of each component's log, for error messages.
    pub fn log_tails(&self) -> String {
        let components = self.components.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for c in components.iter() {
            let text = std::fs::read_to_string(&c.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            out.push_str(&format!("--- {} ({}):\n", c.name, c.log.display()));
            for l in tail {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Runs the pinned `kubectl` as cluster admin; its stdout on success.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(self.bin_dir.join("kubectl"))
            .arg(format!("--kubeconfig={}", self.admin_kubeconfig.display()))
            .args(args)
            .output()
            .context("running kubectl")?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `https://127.0.0.1:PORT`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The API server's address as pods see it (the `kubernetes` Service's endpoint).
    pub fn advertise_address(&self) -> Ipv4Addr {
        self.advertise_address
    }

    /// The cluster CA certificate (PEM).
    pub fn ca_cert_path(&self) -> &Path {
        &self.ca.pair.cert
    }

    /// The cluster CA, to issue further certificates (e.g. a kubelet's serving one).
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// A kubeconfig with a cluster-admin (`system:masters`) client certificate.
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// The directory holding data, certificates, kubeconfigs and component logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where the Kubernetes binaries are (also `kubelet`, `kube-proxy`).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The Service and Pod ranges.
    pub fn options(&self) -> &ControlPlaneOptions {
        &self.options
    }

    /// A kubeconfig whose client certificate names `user` in `groups` (signed by the
    /// cluster CA), e.g. `system:node:node-1` in `system:nodes`.
    pub fn kubeconfig_for_user(&self, user: &str, groups: &[&str]) -> Result<PathBuf> {
        let n = {
            let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
            *users += 1;
            *users
        };
        let safe: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let name = format!("user-{n}-{safe}");
        let pair = self.ca.issue(&name, Usage::Client { user, groups })?;
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        write_cert_kubeconfig(&path, &self.server_url, &self.ca.pair.cert, &pair)?;
        Ok(path)
    }

    /// Stops every component (SIGTERM, then SIGKILL after a few seconds).
    pub fn stop(&self) {
        let mut components = self.components.lock().unwrap_or_else(|p| p.into_inner());
        // Reverse start order: clients of the API server first, etcd last.
        for c in components.iter().rev() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in components.iter_mut().rev() {
            while Instant::now() < deadline && matches!(c.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.child.kill();
            let _ = c.child.wait();
        }
        components.clear();
        let _ = std::fs::remove_file(self.dir.path().join("pids"));
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
        // End of file: the watchdog finds no pids and exits.
        drop(
            self.watchdog_stdin
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        if let Some(mut w) = self
            .watchdog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = w.wait();
        }
    }
}

/// Starts the watchdog: a shell that waits for end-of-file on its stdin (held only by
/// this process), then stops every pid listed in `<dir>/pids` and removes `dir`.
fn start_watchdog(dir: &Path) -> Result<(Child, ChildStdin)> {
    let script = r#"
        while read -r _; do :; done
        if [ -f "$1/pids" ]; then
          pids=$(cat "$1/pids")
          kill -TERM $pids 2>/dev/null
          sleep 3
          kill -KILL $pids 2>/dev/null
          rm -rf "$1"
        fi
    "#;
    let mut child = Command::new("sh")
        .args(["-c", script, "workpool-controlplane-watchdog"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Not in our process group: a Ctrl-C to the test run must not kill it before
        // it has done its job.
        .process_group(0)
        .spawn()
        .context("starting the control plane watchdog (sh)")?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("watchdog has no stdin"))?;
    Ok((child, stdin))
}

/// The flags the controller manager and the scheduler share: the admin kubeconfig for
/// the API and for authenticating and authorizing requests to their own secure port
/// (on loopback), no leader election (one instance), no profiling.
fn client_component_flags(kubeconfig: &Path, port: u16) -> Vec<String> {
    let kc = kubeconfig.display();
    vec![
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        "--bind-address=127.0.0.1".to_string(),
        format!("--secure-port={port}"),
        "--leader-elect=false".to_string(),
        "--profiling=false".to_string(),
        "--v=1".to_string(),
    ]
}

fn as_strs(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

/// The first address of a Service range: the `kubernetes` Service's ClusterIP.
fn first_service_ip(cidr: &str) -> Result<Ipv4Addr> {
    let base: Ipv4Addr = cidr
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("not an IPv4 CIDR: {cidr}"))?;
    Ok(Ipv4Addr::from(u32::from(base).saturating_add(1)))
}

/// A minimal HTTP/1.0 GET on loopback (etcd's `/health`); the body.
fn plain_http_get(port: u16, path: &str) -> Result<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// Writes a kubeconfig that authenticates with a client certificate.
pub fn write_cert_kubeconfig(path: &Path, server: &str, ca: &Path, client: &KeyPair) -> Result<()> {
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "workpool-test", "cluster": {
            "server": server,
            "certificate-authority": ca,
        }}],
        "users": [{"name": "user", "user": {
            "client-certificate": client.cert,
            "client-key": client.key,
        }}],
        "contexts": [{"name": "workpool-test", "context": {
            "cluster": "workpool-test", "user": "user", "namespace": "default",
        }}],
        "current-context": "workpool-test",
    });
    std::fs::write(path, serde_yaml::to_string(&doc)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes a kubeconfig that authenticates with a bearer token (a ServiceAccount's).
pub fn write_token_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    token: &str,
    namespace: &str,
) -> Result<()> {
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "workpool-test", "cluster": {
            "server": server,
            "certificate-authority": ca,
        }}],
        "users": [{"name": "user", "user": {"token": token}}],
        "contexts": [{"name": "workpool-test", "context": {
            "cluster": "workpool-test", "user": "user", "namespace": namespace,
        }}],
        "current-context": "workpool-test",
    });
    std::fs::write(path, serde_yaml::to_string(&doc)?)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_service_ip_is_the_range_base_plus_one() {
        assert_eq!(
            first_service_ip("10.96.0.0/16").unwrap(),
            Ipv4Addr::new(10, 96, 0, 1)
        );
        assert!(first_service_ip("nonsense").is_err());
    }

    #[test]
    fn the_pinned_version_is_read_from_go_mod() {
        let v = kubernetes_version().unwrap();
        assert!(v.starts_with("v1."), "{v}");
    }

    /// The DER encoding of one attribute of a name: `OID 2.5.4.<attr>`, UTF8String `value`.
    fn name_attribute(attr: u8, value: &str) -> Vec<u8> {
        let mut der = vec![0x06, 0x03, 0x55, 0x04, attr, 0x0c, value.len() as u8];
        der.extend_from_slice(value.as_bytes());
        der
    }

    fn der_of(pem: &Path) -> rustls_pki_types::CertificateDer<'static> {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_file(pem).unwrap()
    }

    #[test]
    fn ca_issues_certificates_that_verify() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create(dir.path()).unwrap();
        let client = ca
            .issue(
                "node",
                Usage::Client {
                    user: "system:node:n/1",
                    groups: &["system:nodes"],
                },
            )
            .unwrap();
        let server = ca
            .issue(
                "apiserver",
                Usage::Server {
                    dns: &["kubernetes.default"],
                    ips: &[IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1))],
                },
            )
            .unwrap();
        let ca_der = der_of(&ca.pair.cert);
        let anchor = webpki::anchor_from_trusted_cert(&ca_der).unwrap();
        let now = rustls_pki_types::UnixTime::now();
        let client_der = der_of(&client.cert);
        webpki::EndEntityCert::try_from(&client_der)
            .unwrap()
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                std::slice::from_ref(&anchor),
                &[],
                now,
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .expect("the client certificate chains to the CA, for client authentication");
        let server_der = der_of(&server.cert);
        let server_cert = webpki::EndEntityCert::try_from(&server_der).unwrap();
        server_cert
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &[anchor],
                &[],
                now,
                webpki::KeyUsage::server_auth(),
                None,
                None,
            )
            .expect("the serving certificate chains to the CA, for server authentication");
        for name in ["kubernetes.default", "10.96.0.1"] {
            let name = rustls_pki_types::ServerName::try_from(name).unwrap();
            server_cert
                .verify_is_valid_for_subject_name(&name)
                .expect("a subject alternative name");
        }
        // The Kubernetes user is the CN, the group the O.
        let subject = |der: &[u8], attr: &[u8]| der.windows(attr.len()).any(|w| w == attr);
        assert!(subject(&client_der, &name_attribute(10, "system:nodes")));
        assert!(subject(&client_der, &name_attribute(3, "system:node:n/1")));
        // More than one group cannot be expressed: refused, not silently dropped.
        let err = ca
            .issue(
                "two",
                Usage::Client {
                    user: "u",
                    groups: &["a", "b"],
                },
            )
            .expect_err("two groups");
        assert!(format!("{err:#}").contains("at most one group"), "{err:#}");
        // Private keys are PKCS#8 PEM, as the components read them.
        let key = std::fs::read_to_string(&client.key).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
    }
}
