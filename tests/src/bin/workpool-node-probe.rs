//! A small program the real-node tests run in pods (image
//! `ghcr.io/workpool-dev/node-probe:test`, built by `workpool_tests::node::images`).
//!
//! Every command prints its result on stdout and also writes it to
//! `/dev/termination-log` when that exists, so a test reads it from the container's
//! `terminated.message` without needing `pods/log`.
//!
//! - `serve PORT [TEXT]`: HTTP server on 0.0.0.0:PORT answering every request with TEXT
//!   (default: the host name, i.e. the pod name); never exits.
//! - `cat PATH...`: prints `PATH=CONTENTS` for each file; exits 1 when one is missing.
//! - `write PATH`: tries to create PATH; prints `ok` or the error; exits 0.
//! - `resolve NAME`: prints the addresses NAME resolves to (exit 1 when none).
//! - `http-get HOST:PORT [PATH]`: plain HTTP GET with retries for 60 s, prints the body.
//! - `send HOST:PORT TEXT`: sends TEXT and CRLF over TCP (retrying for 60 s), prints the
//!   first line of the answer (e.g. `send redis:6379 PING` prints `+PONG`).
//! - `api KIND[:NAMESPACE]...`: with in-cluster credentials only (ServiceAccount token,
//!   CA, `KUBERNETES_SERVICE_HOST`), lists each kind (`pods`, `secrets`, `configmaps`,
//!   `services`, `nodes`, `namespaces`) and prints `KIND[:NS]=allowed` or
//!   `KIND[:NS]=<HTTP code>`.
//! - `sleep`: sleeps forever (a container that just runs).
//! - `say LINE...`: prints each LINE on stdout, then sleeps forever (a container log).
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

fn report(text: &str) {
    println!("{text}");
    let _ = std::io::stdout().flush();
    if std::path::Path::new("/dev/termination-log").exists() {
        let _ = std::fs::write("/dev/termination-log", text);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("cat") => cat(&args[1..]),
        Some("write") => write(&args[1..]),
        Some("resolve") => resolve(&args[1..]),
        Some("http-get") => http_get(&args[1..]),
        Some("api") => api(&args[1..]),
        Some("send") => send(&args[1..]),
        Some("say") => {
            for line in &args[1..] {
                println!("{line}");
            }
            let _ = std::io::stdout().flush();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        Some("sleep") => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        _ => {
            eprintln!(
                "usage: workpool-node-probe serve|cat|write|resolve|http-get|send|api|sleep|say ..."
            );
            2
        }
    };
    std::process::exit(code);
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn serve(args: &[String]) -> i32 {
    let port: u16 = match args.first().and_then(|p| p.parse().ok()) {
        Some(p) => p,
        None => {
            eprintln!("serve PORT [TEXT]");
            return 2;
        }
    };
    let text = args.get(1).cloned().unwrap_or_else(hostname);
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            report(&format!("bind 0.0.0.0:{port}: {e}"));
            return 1;
        }
    };
    println!("serving {text:?} on 0.0.0.0:{port}");
    for stream in listener.incoming().flatten() {
        let text = text.clone();
        std::thread::spawn(move || {
            let mut stream = stream;
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                text.len(),
                text
            );
        });
    }
    0
}

fn cat(paths: &[String]) -> i32 {
    let mut out = Vec::new();
    let mut code = 0;
    for p in paths {
        match std::fs::read_to_string(p) {
            Ok(s) => out.push(format!("{p}={s}")),
            Err(e) => {
                out.push(format!("{p}: {e}"));
                code = 1;
            }
        }
    }
    report(&out.join("\n"));
    code
}

fn write(args: &[String]) -> i32 {
    let Some(path) = args.first() else {
        eprintln!("write PATH");
        return 2;
    };
    match std::fs::write(path, b"x") {
        Ok(()) => report("ok"),
        Err(e) => report(&e.to_string()),
    }
    0
}

fn resolve(args: &[String]) -> i32 {
    let Some(name) = args.first() else {
        eprintln!("resolve NAME");
        return 2;
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match (name.as_str(), 0).to_socket_addrs() {
            Ok(addrs) => {
                let ips: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
                if !ips.is_empty() {
                    report(&ips.join(","));
                    return 0;
                }
            }
            Err(e) if Instant::now() > deadline => {
                report(&format!("resolve {name}: {e}"));
                return 1;
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn http_get(args: &[String]) -> i32 {
    let Some(target) = args.first() else {
        eprintln!("http-get HOST:PORT [PATH]");
        return 2;
    };
    let path = args.get(1).cloned().unwrap_or_else(|| "/".into());
    let host = target.split(':').next().unwrap_or(target);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        match get_once(target, host, &path) {
            Ok(body) => {
                report(&body);
                return 0;
            }
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    report(&format!("http-get {target}{path}: {last}"));
    1
}

fn get_once(target: &str, host: &str, path: &str) -> Result<String, String> {
    let addr = target
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or("no HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(head.lines().next().unwrap_or("").to_string());
    }
    Ok(body.to_string())
}

fn send(args: &[String]) -> i32 {
    let (Some(target), Some(text)) = (args.first(), args.get(1)) else {
        eprintln!("send HOST:PORT TEXT");
        return 2;
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        match send_once(target, text) {
            Ok(line) => {
                report(&line);
                return 0;
            }
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    report(&format!("send {target}: {last}"));
    1
}

fn send_once(target: &str, text: &str) -> Result<String, String> {
    let addr = target
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(stream, "{text}\r\n").map_err(|e| e.to_string())?;
    let mut buf = [0u8; 512];
    let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
    let answer = String::from_utf8_lossy(&buf[..n]);
    Ok(answer.lines().next().unwrap_or("").to_string())
}

fn api(kinds: &[String]) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report(&format!("runtime: {e}"));
            return 1;
        }
    };
    rt.block_on(async {
        let config = match kube::Config::incluster() {
            Ok(c) => c,
            Err(e) => {
                report(&format!("in-cluster config: {e}"));
                return 1;
            }
        };
        let client = match kube::Client::try_from(config) {
            Ok(c) => c,
            Err(e) => {
                report(&format!("client: {e}"));
                return 1;
            }
        };
        let mut out = Vec::new();
        for spec in kinds {
            let (kind, ns) = match spec.split_once(':') {
                Some((k, n)) => (k, Some(n)),
                None => (spec.as_str(), None),
            };
            let result = list(&client, kind, ns).await;
            out.push(format!("{spec}={result}"));
        }
        report(&out.join("\n"));
        0
    })
}

async fn list(client: &kube::Client, kind: &str, ns: Option<&str>) -> String {
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret, Service};
    use kube::api::{Api, ListParams};
    let lp = ListParams::default().limit(1);
    macro_rules! go {
        ($t:ty) => {{
            let api: Api<$t> = match ns {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            };
            api.list(&lp).await.map(|_| ())
        }};
    }
    let result = match kind {
        "pods" => go!(Pod),
        "secrets" => go!(Secret),
        "configmaps" => go!(ConfigMap),
        "services" => go!(Service),
        "nodes" => Api::<Node>::all(client.clone()).list(&lp).await.map(|_| ()),
        "namespaces" => Api::<Namespace>::all(client.clone())
            .list(&lp)
            .await
            .map(|_| ()),
        other => return format!("unknown kind {other}"),
    };
    match result {
        Ok(()) => "allowed".into(),
        Err(kube::Error::Api(status)) => status.code.to_string(),
        Err(e) => format!("error: {e}"),
    }
}
