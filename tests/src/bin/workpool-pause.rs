//! The pause program of the real test node's pod sandboxes: holds the pod's namespaces
//! and sleeps until SIGTERM or SIGINT, then exits 0 (as `registry.k8s.io/pause` does).
#![forbid(unsafe_code)]

use nix::sys::signal::{SigSet, Signal};

fn main() {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    if let Err(e) = set.thread_block() {
        eprintln!("workpool-pause: blocking signals: {e}");
        std::process::exit(1);
    }
    match set.wait() {
        Ok(_) => std::process::exit(0),
        Err(e) => {
            eprintln!("workpool-pause: waiting for a signal: {e}");
            std::process::exit(1);
        }
    }
}
