//! Probes (httpGet, tcpSocket, exec) and lifecycle handlers (exec, httpGet, sleep).

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerPort, HTTPGetAction, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::env::POD_IP;
use super::process::run_short;

/// What a probe or hook runs against: the container's ports, env and directory.
#[derive(Clone, Debug)]
pub struct ProbeContext {
    pub ports: Vec<ContainerPort>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub http: reqwest::Client,
}

/// The HTTP client used for probes: no redirects followed (3xx counts as success), no proxy.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// Probe timing with the Kubernetes defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(p: &Probe) -> Self {
        let secs = |v: Option<i32>, default: i32, min: i32| -> Duration {
            Duration::from_secs(v.unwrap_or(default).max(min) as u64)
        };
        Timing {
            initial_delay: secs(p.initial_delay_seconds, 0, 0),
            period: secs(p.period_seconds, 10, 1),
            timeout: secs(p.timeout_seconds, 1, 1),
            success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        }
    }
}

fn resolve_port(port: &IntOrString, ports: &[ContainerPort]) -> Result<u16, String> {
    let n = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => match s.parse::<i32>() {
            Ok(n) => n,
            Err(_) => ports
                .iter()
                .find(|p| p.name.as_deref() == Some(s.as_str()))
                .map(|p| p.container_port)
                .ok_or_else(|| format!("port {s:?} not found in the container's ports"))?,
        },
    };
    u16::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("invalid port {n}"))
}

async fn http_get(a: &HTTPGetAction, ctx: &ProbeContext, timeout: Duration) -> Result<(), String> {
    let port = resolve_port(&a.port, &ctx.ports)?;
    let scheme = a.scheme.as_deref().unwrap_or("HTTP");
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(format!(
            "{scheme} probes are not modelled by the process kubelet"
        ));
    }
    let host = a
        .host
        .as_deref()
        .filter(|h| !h.is_empty())
        .unwrap_or(POD_IP);
    let path = a.path.as_deref().unwrap_or("/");
    let sep = if path.starts_with('/') { "" } else { "/" };
    let url = format!("http://{host}:{port}{sep}{path}");
    let mut req = ctx
        .http
        .get(&url)
        .timeout(timeout)
        .header("User-Agent", "kube-probe/1.32");
    for h in a.http_headers.iter().flatten() {
        req = req.header(h.name.as_str(), h.value.as_str());
    }
    match req.send().await {
        Ok(resp) => {
            let code = resp.status().as_u16();
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            }
        }
        Err(e) if e.is_timeout() => Err(format!(
            "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
        Err(e) => Err(format!("Get \"{url}\": {e}")),
    }
}

async fn tcp(a: &TCPSocketAction, ctx: &ProbeContext, timeout: Duration) -> Result<(), String> {
    let port = resolve_port(&a.port, &ctx.ports)?;
    let host = a
        .host
        .as_deref()
        .filter(|h| !h.is_empty())
        .unwrap_or(POD_IP);
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
        Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
    }
}

/// Run one probe attempt. `Err` carries the failure message (as in `Unhealthy` events).
pub async fn run_probe(p: &Probe, ctx: &ProbeContext) -> Result<(), String> {
    let timeout = Timing::of(p).timeout;
    if let Some(a) = &p.http_get {
        http_get(a, ctx, timeout).await
    } else if let Some(a) = &p.tcp_socket {
        tcp(a, ctx, timeout).await
    } else if let Some(a) = &p.exec {
        let argv = a.command.clone().unwrap_or_default();
        match run_short(&argv, &ctx.env, &ctx.cwd, timeout).await? {
            0 => Ok(()),
            code => Err(format!("command {argv:?} exited with {code}")),
        }
    } else if p.grpc.is_some() {
        Err("gRPC probes are not modelled by the process kubelet".into())
    } else {
        Err("probe has no handler".into())
    }
}

/// Run a `preStop`/`postStart` handler within `budget`.
pub async fn run_handler(
    h: &k8s_openapi::api::core::v1::LifecycleHandler,
    ctx: &ProbeContext,
    budget: Duration,
) -> Result<(), String> {
    if let Some(a) = &h.exec {
        let argv = a.command.clone().unwrap_or_default();
        match run_short(&argv, &ctx.env, &ctx.cwd, budget).await? {
            0 => Ok(()),
            code => Err(format!("command {argv:?} exited with {code}")),
        }
    } else if let Some(a) = &h.http_get {
        http_get(a, ctx, budget).await
    } else if let Some(s) = &h.sleep {
        tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64).min(budget)).await;
        Ok(())
    } else {
        Err("lifecycle handler has no action".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ExecAction;

    fn ctx() -> ProbeContext {
        ProbeContext {
            ports: vec![ContainerPort {
                name: Some("http".into()),
                container_port: 1,
                ..Default::default()
            }],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: std::env::temp_dir(),
            http: http_client(),
        }
    }

    #[test]
    fn defaults() {
        let t = Timing::of(&Probe::default());
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!((t.success_threshold, t.failure_threshold), (1, 3));
        assert_eq!(t.initial_delay, Duration::ZERO);
    }

    #[test]
    fn named_ports() {
        let c = ctx();
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &c.ports),
            Ok(1)
        );
        assert_eq!(
            resolve_port(&IntOrString::String("8080".into()), &c.ports),
            Ok(8080)
        );
        assert!(resolve_port(&IntOrString::String("nope".into()), &c.ports).is_err());
        assert!(resolve_port(&IntOrString::Int(70000), &c.ports).is_err());
    }

    #[tokio::test]
    async fn exec_and_tcp_probes() {
        let exec = |cmd: &str| Probe {
            exec: Some(ExecAction {
                command: Some(vec!["sh".into(), "-c".into(), cmd.into()]),
            }),
            ..Default::default()
        };
        assert_eq!(run_probe(&exec("exit 0"), &ctx()).await, Ok(()));
        assert!(run_probe(&exec("exit 1"), &ctx()).await.is_err());

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let probe = Probe {
            tcp_socket: Some(TCPSocketAction {
                host: None,
                port: IntOrString::Int(port as i32),
            }),
            ..Default::default()
        };
        assert_eq!(run_probe(&probe, &ctx()).await, Ok(()));
        drop(listener);
        assert!(run_probe(&probe, &ctx()).await.is_err());
    }
}
