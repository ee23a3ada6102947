//! A small seeded random number generator (SplitMix64) and the distributions the
//! simulator draws from. Own code rather than a crate so a seed gives the same traces
//! on every platform and with every dependency version.

/// SplitMix64: fast, seedable, good enough for simulation.
#[derive(Clone, Debug)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    /// A generator whose whole sequence is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [low, high).
    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }

    /// Exponentially distributed with the given mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let radius = (-2.0 * (1.0 - self.unit()).ln()).sqrt();
        radius * (std::f64::consts::TAU * self.unit()).cos()
    }

    /// Log-normal with the given median and shape (sigma of the underlying normal).
    pub fn log_normal(&mut self, median: f64, sigma: f64) -> f64 {
        median * (sigma * self.normal()).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut first = SimRng::new(7);
        let mut second = SimRng::new(7);
        let a: Vec<u64> = (0..10).map(|_| first.next_u64()).collect();
        let b: Vec<u64> = (0..10).map(|_| second.next_u64()).collect();
        assert_eq!(a, b);
        assert_ne!(SimRng::new(8).next_u64(), a[0]);
    }

    #[test]
    fn distributions_have_their_means() {
        let mut rng = SimRng::new(1);
        let samples = 200_000;
        let unit_mean = (0..samples).map(|_| rng.unit()).sum::<f64>() / f64::from(samples);
        assert!((unit_mean - 0.5).abs() < 0.01, "{unit_mean}");
        let exp_mean = (0..samples).map(|_| rng.exponential(3.0)).sum::<f64>() / f64::from(samples);
        assert!((exp_mean - 3.0).abs() < 0.05, "{exp_mean}");
        let mut medians: Vec<f64> = (0..samples).map(|_| rng.log_normal(2.0, 0.5)).collect();
        medians.sort_by(f64::total_cmp);
        let median = medians[medians.len() / 2];
        assert!((median - 2.0).abs() < 0.05, "{median}");
    }
}
