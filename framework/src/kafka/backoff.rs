//! Exponential backoff with jitter, for every retry loop that talks to a broker or a
//! cluster: 100 ms doubling to 10 s, each delay scaled by a factor in [0.5, 1.5).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The retry loop was told to stop while it waited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stopped while waiting to retry")]
pub struct Stopped;

#[derive(Debug)]
pub struct Backoff {
    delay: Duration,
    max: Duration,
    seed: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    pub fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos() as u64 | 1);
        Self {
            delay: Duration::from_millis(100),
            max: Duration::from_secs(10),
            seed,
        }
    }

    /// The same schedule, capped at `max` instead of 10 s.
    pub fn with_max(mut self, max: Duration) -> Self {
        self.max = max.max(Duration::from_millis(1));
        self.delay = self.delay.min(self.max);
        self
    }

    pub fn next_delay(&mut self) -> Duration {
        // xorshift: jitter only needs to differ between processes, not to be random.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let jitter = 0.5 + (self.seed % 1000) as f64 / 1000.0;
        let d = self.delay.mul_f64(jitter).min(self.max);
        self.delay = (self.delay * 2).min(self.max);
        d
    }

    /// Sleeps the next delay on this thread, returning early with [`Stopped`] once `stop`
    /// is set.
    pub fn wait(&mut self, stop: &AtomicBool) -> Result<(), Stopped> {
        let until = Instant::now() + self.next_delay();
        while Instant::now() < until {
            if stop.load(Ordering::Relaxed) {
                return Err(Stopped);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!(
            first >= Duration::from_millis(50) && first < Duration::from_millis(150),
            "{first:?}"
        );
        let later: Vec<Duration> = (0..20).map(|_| b.next_delay()).collect();
        assert!(later.iter().all(|d| *d <= Duration::from_secs(10)));
        assert!(later.iter().any(|d| *d >= Duration::from_secs(5)), "{later:?}");
        let mut capped = Backoff::new().with_max(Duration::from_millis(300));
        assert!((0..20).all(|_| capped.next_delay() <= Duration::from_millis(300)));
    }

    #[test]
    fn waiting_stops_when_asked() {
        let stop = AtomicBool::new(true);
        assert_eq!(Backoff::new().wait(&stop), Err(Stopped));
    }
}
