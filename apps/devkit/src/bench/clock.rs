//! What the bench parts time with: the process's CPU clock and its memory.

use std::time::{Duration, Instant};

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

/// Looks at `count` until it reaches `total`, timed from the first count it saw. An error
/// if it has not `within` that time, or if every item arrived between two looks, which
/// leaves nothing timed.
pub fn time_until(total: u64, within: Duration, count: impl Fn() -> u64) -> anyhow::Result<Timed> {
    let mut clock = FirstCount::new();
    let mut now = count();
    while now < total && clock.started.elapsed() < within {
        clock.see(now);
        std::thread::sleep(LOOK);
        now = count();
    }
    anyhow::ensure!(now >= total, "counted {now} of {total} within {within:?}");
    let timed = clock.timed(now);
    anyhow::ensure!(
        timed.items > 0,
        "all {now} items were counted within one {LOOK:?} look, so none was timed; \
         give the run more items"
    );
    Ok(timed)
}

/// How often [`time_until`] looks: rarely enough that looking costs nothing measurable.
const LOOK: Duration = Duration::from_millis(5);

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

    #[test]
    fn a_count_that_arrives_all_at_once_is_refused_not_reported_as_nothing() {
        let looks = std::cell::Cell::new(0u64);
        let at_once = || {
            looks.set(looks.get() + 1);
            if looks.get() > 2 { 1_000 } else { 0 }
        };
        let err = time_until(1_000, Duration::from_secs(5), at_once).expect_err("nothing was timed");
        assert!(err.to_string().contains("none was timed"), "{err}");

        let looks = std::cell::Cell::new(0u64);
        let gradual = || {
            looks.set(looks.get() + 1);
            (looks.get() * 100).min(1_000)
        };
        let t = time_until(1_000, Duration::from_secs(5), gradual).expect("a count that rises is timed");
        assert_eq!(t.items, 900, "{t:?}");
        assert!(t.wall > 0.0, "{t:?}");
    }

    #[test]
    fn a_count_that_stops_short_is_an_error() {
        let err =
            time_until(1_000, Duration::from_millis(30), || 10).expect_err("it never reached the total");
        assert!(err.to_string().contains("counted 10 of 1000"), "{err}");
    }
}
