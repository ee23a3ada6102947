//! The container restart back-off (CrashLoopBackOff): base, 2×base, 4×base … capped,
//! reset once a container has run long enough without trouble.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct RestartBackoff {
    base: Duration,
    cap: Duration,
    reset_after: Duration,
    consecutive: u32,
}

impl RestartBackoff {
    pub fn new(base: Duration, cap: Duration, reset_after: Duration) -> Self {
        Self {
            base,
            cap,
            reset_after,
            consecutive: 0,
        }
    }

    /// The delay before restarting a container that exited after running for `ran_for`.
    pub fn next_delay(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.reset_after {
            self.consecutive = 0;
        }
        let d = delay_for(self.base, self.cap, self.consecutive);
        self.consecutive = self.consecutive.saturating_add(1);
        d
    }
}

/// `base * 2^n`, capped.
pub fn delay_for(base: Duration, cap: Duration, n: u32) -> Duration {
    let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(cap).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_doubles_and_caps_like_the_kubelet() {
        let mut b = RestartBackoff::new(
            Duration::from_secs(10),
            Duration::from_secs(300),
            Duration::from_secs(600),
        );
        let got: Vec<u64> = (0..8)
            .map(|_| b.next_delay(Duration::from_secs(1)).as_secs())
            .collect();
        assert_eq!(got, vec![10, 20, 40, 80, 160, 300, 300, 300]);
        // Running 10 minutes resets it.
        assert_eq!(b.next_delay(Duration::from_secs(600)).as_secs(), 10);
        assert_eq!(b.next_delay(Duration::from_secs(5)).as_secs(), 20);
    }

    #[test]
    fn huge_exponents_saturate() {
        assert_eq!(
            delay_for(Duration::from_secs(1), Duration::from_secs(7), 1000),
            Duration::from_secs(7)
        );
    }
}
