//! What the bench parts time with: the process's CPU clock and its memory.

use std::time::Instant;

/// CPU seconds used by this process so far (user + system, every thread), at the
/// clock's nanosecond resolution: /proc/self/stat counts 10 ms ticks, which made rates
/// whole-tick quotients.
pub fn cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// Resident set size and its peak, in MiB.
pub fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

/// A clock that starts at the first counted item and counts only the items after it, so
/// start-up and the group join are left out and a rate is not biased upwards by items
/// counted before the clock ran.
#[derive(Debug, Clone, Copy)]
pub struct FirstCount {
    started: Instant,
    first: Option<(Instant, f64, u64)>,
}

/// What a [`FirstCount`] measured: wall and CPU seconds, and the items counted in them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timed {
    pub wall: f64,
    pub cpu: f64,
    pub items: u64,
}

impl Timed {
    pub fn per_second(&self) -> f64 {
        self.items as f64 / self.wall.max(1e-9)
    }

    pub fn per_cpu_second(&self) -> f64 {
        self.items as f64 / self.cpu.max(1e-9)
    }
}

impl Default for FirstCount {
    fn default() -> Self {
        Self::new()
    }
}

impl FirstCount {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            first: None,
        }
    }

    /// Notes the count seen now; the first non-zero one starts the clock.
    pub fn see(&mut self, count: u64) {
        if self.first.is_none() && count > 0 {
            self.first = Some((Instant::now(), cpu_seconds(), count));
        }
    }

    /// Whether the clock has started.
    pub fn started(&self) -> bool {
        self.first.is_some()
    }

    /// Time since the first count and the items counted after it, at `count` now. Never
    /// started: since this clock was made, over nothing.
    pub fn timed(&self, count: u64) -> Timed {
        let (t, cpu, before) = self.first.unwrap_or((self.started, cpu_seconds(), count));
        Timed {
            wall: t.elapsed().as_secs_f64(),
            cpu: cpu_seconds() - cpu,
            items: count.saturating_sub(before),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_items_after_the_first_count_are_timed() {
        let mut clock = FirstCount::new();
        clock.see(0);
        assert!(!clock.started());
        assert_eq!(clock.timed(0).items, 0);
        clock.see(40);
        clock.see(70);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let t = clock.timed(100);
        assert_eq!(t.items, 60);
        assert!(t.wall >= 0.02, "{t:?}");
        assert!(t.per_second() <= 60.0 / 0.02, "{t:?}");
    }
}
