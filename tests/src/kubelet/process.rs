//! Container processes: each in its own process group, output to a log file, killed
//! (with its whole group) when it exits, when its handle is dropped, or on demand.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// Live process groups, so that everything can be killed from synchronous code (drop).
/// Once closed (by [`ProcessRegistry::close_and_kill_all`]) it refuses new processes.
#[derive(Clone, Debug, Default)]
pub struct ProcessRegistry {
    inner: Arc<Mutex<Groups>>,
}

#[derive(Debug, Default)]
struct Groups {
    live: HashSet<i32>,
    closed: bool,
}

impl ProcessRegistry {
    /// Registers a group; false when the registry is closed (the caller kills it).
    fn insert(&self, pgid: i32) -> bool {
        match self.inner.lock() {
            Ok(mut g) if !g.closed => {
                g.live.insert(pgid);
                true
            }
            _ => false,
        }
    }
    fn remove(&self, pgid: i32) {
        if let Ok(mut g) = self.inner.lock() {
            g.live.remove(&pgid);
        }
    }
    /// SIGKILL every live process group.
    pub fn kill_all(&self) {
        let groups: Vec<i32> = match self.inner.lock() {
            Ok(g) => g.live.iter().copied().collect(),
            Err(_) => return,
        };
        for pgid in groups {
            signal_group(pgid as u32, Signal::SIGKILL);
        }
    }
    /// Refuse new processes from now on and SIGKILL every live group.
    pub fn close_and_kill_all(&self) {
        if let Ok(mut g) = self.inner.lock() {
            g.closed = true;
        }
        self.kill_all();
    }
    pub fn is_closed(&self) -> bool {
        self.inner.lock().map(|g| g.closed).unwrap_or(true)
    }
    pub fn live(&self) -> usize {
        self.inner.lock().map(|g| g.live.len()).unwrap_or(0)
    }
}

fn valid_pid(pid: u32) -> Option<Pid> {
    // Never 0 or 1 (or a negative value once cast): that would signal our own group or init.
    i32::try_from(pid)
        .ok()
        .filter(|p| *p > 1)
        .map(Pid::from_raw)
}

/// Signal one process. Returns false when it does not exist.
pub fn signal_process(pid: u32, sig: Signal) -> bool {
    valid_pid(pid).is_some_and(|p| kill(p, sig).is_ok())
}

/// Signal a whole process group. Returns false when it does not exist.
pub fn signal_group(pgid: u32, sig: Signal) -> bool {
    valid_pid(pgid).is_some_and(|p| killpg(p, sig).is_ok())
}

/// How a container process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit code, or 128 + signal number when killed by a signal.
    pub code: i32,
    pub signal: Option<i32>,
    pub finished_at: Timestamp,
}

pub struct SpawnSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// stdout and stderr are appended here.
    pub log: PathBuf,
}

/// A started process. Dropping it does not kill it; the exit watcher owns the child.
pub struct Running {
    pub pid: u32,
    pub started_at: Timestamp,
    pub exit: oneshot::Receiver<ExitInfo>,
}

/// Kills the group on drop unless disarmed (the watcher task may be dropped at shutdown).
struct GroupGuard {
    pgid: u32,
    registry: ProcessRegistry,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        signal_group(self.pgid, Signal::SIGKILL);
        self.registry.remove(self.pgid as i32);
    }
}

/// Start a process in its own process group. When the main process exits, the rest of
/// its group is SIGKILLed (a container's processes die with its main process).
pub fn spawn(spec: SpawnSpec, registry: &ProcessRegistry) -> std::io::Result<Running> {
    let Some((program, args)) = spec.argv.split_first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "empty command",
        ));
    };
    if let Some(dir) = spec.log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)?;
    let log_err = log.try_clone()?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| std::io::Error::other("process exited at once"))?;
    let started_at = Timestamp::now();
    if !registry.insert(pid as i32) {
        signal_group(pid, Signal::SIGKILL);
        return Err(std::io::Error::other("the kubelet is shutting down"));
    }
    let guard = GroupGuard {
        pgid: pid,
        registry: registry.clone(),
    };
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let status = child.wait().await;
        // The main process is gone: take the rest of the container with it.
        drop(guard);
        let info = match status {
            Ok(st) => {
                use std::os::unix::process::ExitStatusExt;
                match (st.code(), st.signal()) {
                    (Some(code), _) => ExitInfo {
                        code,
                        signal: None,
                        finished_at: Timestamp::now(),
                    },
                    (None, Some(sig)) => ExitInfo {
                        code: 128 + sig,
                        signal: Some(sig),
                        finished_at: Timestamp::now(),
                    },
                    (None, None) => ExitInfo {
                        code: 255,
                        signal: None,
                        finished_at: Timestamp::now(),
                    },
                }
            }
            Err(_) => ExitInfo {
                code: 255,
                signal: None,
                finished_at: Timestamp::now(),
            },
        };
        let _ = tx.send(info);
    });
    Ok(Running {
        pid,
        started_at,
        exit: rx,
    })
}

/// Run a short command (probe or hook) in a process group with a timeout. Returns the
/// exit code, or an error message (spawn failure or timeout; the group is killed then).
pub async fn run_short(
    argv: &[String],
    env: &[(String, String)],
    cwd: &std::path::Path,
    timeout: Duration,
) -> Result<i32, String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("failed to run {program:?}: {e}"))?;
    let pid = child.id();
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(st)) => {
            if let Some(pid) = pid {
                signal_group(pid, Signal::SIGKILL);
            }
            use std::os::unix::process::ExitStatusExt;
            Ok(st
                .code()
                .unwrap_or_else(|| 128 + st.signal().unwrap_or(127)))
        }
        Ok(Err(e)) => Err(format!("wait failed: {e}")),
        Err(_) => {
            if let Some(pid) = pid {
                signal_group(pid, Signal::SIGKILL);
            }
            Err(format!(
                "command timed out after {}s",
                timeout.as_secs_f64()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, dir: &std::path::Path) -> SpawnSpec {
        SpawnSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: dir.to_path_buf(),
            log: dir.join("c.log"),
        }
    }

    fn alive(pid: u32) -> bool {
        // Signal 0 would be ideal; SIGCONT is harmless for a running process.
        signal_process(pid, Signal::SIGCONT)
    }

    async fn wait_for_file(p: &std::path::Path) -> String {
        for _ in 0..200 {
            if let Ok(s) = std::fs::read_to_string(p)
                && !s.trim().is_empty()
            {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{} never appeared", p.display());
    }

    #[tokio::test]
    async fn exit_codes_and_logs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = ProcessRegistry::default();
        let r = spawn(sh("echo out; echo err >&2; exit 3", dir.path()), &reg).expect("spawn");
        let info = r.exit.await.expect("exit");
        assert_eq!(info.code, 3);
        assert_eq!(info.signal, None);
        let log = std::fs::read_to_string(dir.path().join("c.log")).expect("log");
        assert!(log.contains("out") && log.contains("err"), "{log}");
        assert_eq!(reg.live(), 0);
    }

    #[tokio::test]
    async fn sigterm_is_trapped_then_sigkill_gives_137() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = ProcessRegistry::default();
        let marker = dir.path().join("got-term");
        // Ignores SIGTERM after recording it, so only SIGKILL stops it.
        let script = format!(
            "trap 'echo term > {}' TERM; echo ready > {}/ready; while true; do sleep 0.05; done",
            marker.display(),
            dir.path().display()
        );
        let mut r = spawn(sh(&script, dir.path()), &reg).expect("spawn");
        wait_for_file(&dir.path().join("ready")).await;
        assert!(signal_process(r.pid, Signal::SIGTERM));
        assert_eq!(wait_for_file(&marker).await.trim(), "term");
        // Still running after SIGTERM.
        assert!(r.exit.try_recv().is_err());
        assert!(signal_group(r.pid, Signal::SIGKILL));
        let info = r.exit.await.expect("exit");
        assert_eq!(info.code, 137);
        assert_eq!(info.signal, Some(9));
    }

    #[tokio::test]
    async fn sigterm_default_action_gives_143() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = ProcessRegistry::default();
        let r = spawn(
            SpawnSpec {
                argv: vec!["sleep".into(), "30".into()],
                ..sh("", dir.path())
            },
            &reg,
        )
        .expect("spawn");
        assert!(signal_process(r.pid, Signal::SIGTERM));
        assert_eq!(r.exit.await.expect("exit").code, 143);
    }

    #[tokio::test]
    async fn group_kill_takes_children_and_main_exit_reaps_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = ProcessRegistry::default();
        let pidfile = dir.path().join("child.pid");
        // A background grandchild that would outlive sh if only sh were killed.
        let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
        let r = spawn(sh(&script, dir.path()), &reg).expect("spawn");
        let child: u32 = wait_for_file(&pidfile).await.trim().parse().expect("pid");
        assert!(alive(child));
        assert!(signal_group(r.pid, Signal::SIGKILL));
        assert_eq!(r.exit.await.expect("exit").code, 137);
        for _ in 0..100 {
            if !alive(child) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(child), "grandchild {child} survived the group kill");

        // Main process exits on its own: its leftover children are killed too.
        let pidfile2 = dir.path().join("child2.pid");
        let script = format!("sleep 60 & echo $! > {}; exit 0", pidfile2.display());
        let r = spawn(sh(&script, dir.path()), &reg).expect("spawn");
        assert_eq!(r.exit.await.expect("exit").code, 0);
        let child2: u32 = wait_for_file(&pidfile2).await.trim().parse().expect("pid");
        for _ in 0..100 {
            if !alive(child2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(child2), "orphan {child2} survived its container");
    }

    #[tokio::test]
    async fn registry_kill_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = ProcessRegistry::default();
        let a = spawn(sh("sleep 60", dir.path()), &reg).expect("spawn");
        let b = spawn(sh("sleep 60", dir.path()), &reg).expect("spawn");
        assert_eq!(reg.live(), 2);
        reg.kill_all();
        assert_eq!(a.exit.await.expect("exit").code, 137);
        assert_eq!(b.exit.await.expect("exit").code, 137);
        assert_eq!(reg.live(), 0);
    }

    #[tokio::test]
    async fn closed_registry_refuses_new_processes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = ProcessRegistry::default();
        let a = spawn(sh("sleep 60", dir.path()), &reg).expect("spawn");
        reg.close_and_kill_all();
        assert_eq!(a.exit.await.expect("exit").code, 137);
        assert!(spawn(sh("sleep 60", dir.path()), &reg).is_err());
        assert_eq!(reg.live(), 0);
    }

    #[tokio::test]
    async fn short_commands_time_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = vec![("PATH".to_string(), "/usr/bin:/bin".to_string())];
        let ok = run_short(
            &["sh".into(), "-c".into(), "exit 4".into()],
            &env,
            dir.path(),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(ok, Ok(4));
        let slow = run_short(
            &["sleep".into(), "10".into()],
            &env,
            dir.path(),
            Duration::from_millis(200),
        )
        .await;
        assert!(slow.is_err());
        assert!(
            run_short(
                &["/nonexistent/x".into()],
                &env,
                dir.path(),
                Duration::from_secs(1)
            )
            .await
            .is_err()
        );
    }
}
