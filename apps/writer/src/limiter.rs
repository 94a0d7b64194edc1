//! Rows-per-second limiting with governor, changeable at runtime without losing rows, and
//! an optional adaptive mode that backs off on overload and creeps back up.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};

/// A limit as operators set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Rows per second; 0 = unlimited.
    pub rows_per_sec: u32,
    /// Rows that may go at once after an idle spell.
    pub burst: u32,
}

/// A burst too small for the largest batch: that batch could never be admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "burst ({burst}) must be at least the largest batch ({max_batch_rows} rows), or a batch could never be admitted"
)]
pub struct BurstTooSmall {
    pub burst: u32,
    pub max_batch_rows: usize,
}

impl RateLimit {
    pub fn validate(&self, max_batch_rows: usize) -> Result<(), BurstTooSmall> {
        if self.rows_per_sec > 0 && (self.burst as usize) < max_batch_rows {
            return Err(BurstTooSmall {
                burst: self.burst,
                max_batch_rows,
            });
        }
        Ok(())
    }
}

/// Adaptive behaviour: multiply the effective rate by `backoff` after overload signals,
/// and by `increase` after each quiet `interval`, never above the configured limit nor
/// below `floor_ratio` of it. Backoffs are at least `interval / 5` apart: one slow spell
/// fails many batches at once, and each failure must not cut the rate again.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Adaptive {
    pub enabled: bool,
    pub backoff: f64,
    pub increase: f64,
    pub floor_ratio: f64,
    pub interval_ms: u64,
}

impl Adaptive {
    fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    fn backoff_gap(&self) -> Duration {
        self.interval() / 5
    }
}

impl Default for Adaptive {
    fn default() -> Self {
        Self {
            enabled: false,
            backoff: 0.7,
            increase: 1.05,
            floor_ratio: 0.05,
            interval_ms: 5_000,
        }
    }
}

/// The next effective rate after an overload signal (`overloaded`) or a quiet interval.
pub fn adapt(effective: u32, configured: u32, a: &Adaptive, overloaded: bool) -> u32 {
    if configured == 0 {
        return 0;
    }
    let floor = ((configured as f64) * a.floor_ratio).max(1.0);
    let next = if overloaded {
        effective as f64 * a.backoff
    } else {
        (effective as f64 * a.increase).max(effective as f64 + 1.0)
    };
    next.clamp(floor, configured as f64) as u32
}

struct State {
    configured: RateLimit,
    adaptive: Adaptive,
    effective: u32,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    /// When the rate last changed by adaptation (or the limit was set).
    last_change: Instant,
}

/// Shared by every write task.
pub struct Limiter {
    state: RwLock<State>,
    waited_ns: AtomicU64,
    /// Wakes waiters when the limiter is replaced, so a new limit applies to them at once.
    changed: tokio::sync::Notify,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("limit", &self.current())
            .field("effective", &self.effective())
            .finish()
    }
}

/// A limiter for a changed rate: empty, so the change admits no burst of its own (it
/// refills at the new rate).
fn rebuild(rows_per_sec: u32, burst: u32) -> Option<Arc<DefaultDirectRateLimiter>> {
    let limiter = build(rows_per_sec, burst)?;
    if let Some(n) = NonZeroU32::new(burst.max(1)) {
        let _ = limiter.check_n(n);
    }
    Some(limiter)
}

fn build(rows_per_sec: u32, burst: u32) -> Option<Arc<DefaultDirectRateLimiter>> {
    let rate = NonZeroU32::new(rows_per_sec)?;
    let burst = NonZeroU32::new(burst.max(1))?;
    Some(Arc::new(RateLimiter::direct(
        Quota::per_second(rate).allow_burst(burst),
    )))
}

impl Limiter {
    pub fn new(limit: RateLimit, adaptive: Adaptive) -> Self {
        Self {
            state: RwLock::new(State {
                configured: limit,
                adaptive,
                effective: limit.rows_per_sec,
                limiter: build(limit.rows_per_sec, limit.burst),
                last_change: Instant::now(),
            }),
            waited_ns: AtomicU64::new(0),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn current(&self) -> RateLimit {
        self.read().configured
    }

    /// The rate in force now (below the configured one while adapting).
    pub fn effective(&self) -> u32 {
        self.read().effective
    }

    /// Total time write tasks spent waiting for the limiter.
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited_ns.load(Ordering::Relaxed))
    }

    /// Replaces the limit; waiting tasks start over under the new one. The new limiter
    /// starts empty, so a change never admits an extra burst.
    pub fn set(&self, limit: RateLimit) {
        let mut s = self.write();
        s.configured = limit;
        s.effective = limit.rows_per_sec;
        s.limiter = rebuild(limit.rows_per_sec, limit.burst);
        s.last_change = Instant::now();
        drop(s);
        self.changed.notify_waiters();
        tracing::info!(
            rows_per_sec = limit.rows_per_sec,
            burst = limit.burst,
            "rate limit changed"
        );
    }

    /// Waits until `rows` rows may be written.
    pub async fn acquire(&self, rows: u32) {
        self.acquire_unless(rows, || false).await;
    }

    /// Waits until `rows` rows may be written, unless `cancelled` is found true first
    /// (checked at the start and after every [`Limiter::interrupt`]): rows of a revoked
    /// partition then give up their place without spending the budget. True if admitted.
    pub async fn acquire_unless(&self, rows: u32, cancelled: impl Fn() -> bool) -> bool {
        let started = Instant::now();
        // If the limit changes while waiting, start over under the new one.
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if cancelled() {
                return false;
            }
            let (limiter, burst) = {
                let s = self.read();
                (s.limiter.clone(), s.configured.burst)
            };
            let Some(limiter) = limiter else { break };
            let Some(n) = NonZeroU32::new(rows.clamp(1, burst.max(1))) else {
                break;
            };
            tokio::select! {
                ready = limiter.until_n_ready(n) => {
                    if ready.is_err() {
                        // Cannot happen with n <= burst; never block forever if it does.
                        tracing::warn!(rows, burst, "batch larger than the burst; admitted without waiting");
                    }
                    break;
                }
                _ = &mut changed => continue,
            }
        }
        self.waited_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        true
    }

    /// Makes every waiting task check again whether its rows are still wanted (after a
    /// revocation).
    pub fn interrupt(&self) {
        self.changed.notify_waiters();
    }

    /// Replaces the adaptive settings (a config reload); the effective rate is kept.
    pub fn set_adaptive(&self, adaptive: Adaptive) {
        let mut s = self.write();
        if !adaptive.enabled && s.effective != s.configured.rows_per_sec {
            s.effective = s.configured.rows_per_sec;
            s.limiter = rebuild(s.configured.rows_per_sec, s.configured.burst);
            drop(s);
            self.changed.notify_waiters();
            s = self.write();
        }
        s.adaptive = adaptive;
    }

    pub fn adaptive(&self) -> Adaptive {
        self.read().adaptive
    }

    /// Reports an overload signal (Overloaded, timeouts) or, periodically, a quiet spell.
    pub fn signal(&self, overloaded: bool) {
        let adaptive = self.read().adaptive;
        if !adaptive.enabled {
            return;
        }
        let mut s = self.write();
        let gap = if overloaded {
            adaptive.backoff_gap()
        } else {
            adaptive.interval()
        };
        if s.last_change.elapsed() < gap {
            return;
        }
        let next = adapt(s.effective, s.configured.rows_per_sec, &adaptive, overloaded);
        if overloaded || next != s.effective {
            s.last_change = Instant::now();
        }
        if next != s.effective {
            s.effective = next;
            let burst = s.configured.burst;
            s.limiter = rebuild(next, burst);
            drop(s);
            self.changed.notify_waiters();
            tracing::info!(rows_per_sec = next, overloaded, "adaptive rate limit");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiter_whose_rows_are_revoked_leaves_without_waiting_for_the_budget() {
        use std::sync::atomic::AtomicBool;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let l = Arc::new(Limiter::new(
            RateLimit {
                rows_per_sec: 1,
                burst: 1,
            },
            Adaptive::default(),
        ));
        rt.block_on(async {
            assert!(l.acquire_unless(1, || false).await, "the burst admits one row");
            let revoked = Arc::new(AtomicBool::new(false));
            let waiter = {
                let (l, revoked) = (l.clone(), revoked.clone());
                tokio::spawn(async move { l.acquire_unless(1, || revoked.load(Ordering::Relaxed)).await })
            };
            tokio::time::sleep(Duration::from_millis(50)).await;
            revoked.store(true, Ordering::Relaxed);
            l.interrupt();
            let admitted = tokio::time::timeout(Duration::from_millis(300), waiter)
                .await
                .expect("left at once, not after the next token a second later")
                .expect("task");
            assert!(!admitted);
        });
    }

    #[test]
    fn adaptive_backs_off_and_creeps_back_within_bounds() {
        let a = Adaptive {
            enabled: true,
            ..Adaptive::default()
        };
        assert_eq!(adapt(1000, 1000, &a, true), 700);
        assert_eq!(adapt(700, 1000, &a, false), 735);
        assert_eq!(
            adapt(1000, 1000, &a, false),
            1000,
            "never above the configured limit"
        );
        assert_eq!(adapt(50, 1000, &a, true), 50, "never below the floor");
        assert_eq!(adapt(5, 0, &a, true), 0, "unlimited stays unlimited");
        assert_eq!(adapt(10, 1000, &a, false), 50, "climbs at least one row per step");
    }

    #[test]
    fn one_slow_spell_backs_off_once_then_climbs_after_a_quiet_interval() {
        let adaptive = Adaptive {
            enabled: true,
            interval_ms: 200,
            ..Adaptive::default()
        };
        let l = Limiter::new(
            RateLimit {
                rows_per_sec: 1000,
                burst: 100,
            },
            adaptive,
        );
        std::thread::sleep(Duration::from_millis(50));
        for _ in 0..20 {
            l.signal(true);
        }
        assert_eq!(l.effective(), 700, "twenty failures of one spell: one backoff");
        l.signal(false);
        assert_eq!(l.effective(), 700, "no climb before a quiet interval");
        std::thread::sleep(Duration::from_millis(220));
        l.signal(false);
        assert_eq!(l.effective(), 735);
        l.set_adaptive(Adaptive {
            enabled: false,
            ..adaptive
        });
        assert_eq!(l.effective(), 1000, "turning adaptation off restores the limit");
    }

    /// Whether `rows` rows would be admitted right now.
    fn admits_now(l: &Limiter, rows: u32) -> bool {
        let limiter = l.read().limiter.clone();
        limiter.is_none_or(|g| NonZeroU32::new(rows).is_some_and(|n| g.check_n(n).is_ok_and(|r| r.is_ok())))
    }

    #[test]
    fn a_rate_change_never_admits_an_extra_burst() {
        let limit = |rows_per_sec| RateLimit {
            rows_per_sec,
            burst: 500,
        };
        let l = Limiter::new(limit(10), Adaptive::default());
        assert!(admits_now(&l, 500), "a fresh limiter starts with its burst");
        assert!(!admits_now(&l, 100), "the burst is spent");
        l.set(limit(20));
        assert!(!admits_now(&l, 100), "a ctl change grants no new burst");
        let adaptive = Adaptive {
            enabled: true,
            interval_ms: 10,
            ..Adaptive::default()
        };
        let l = Limiter::new(limit(1000), adaptive);
        assert!(admits_now(&l, 500));
        std::thread::sleep(Duration::from_millis(20));
        l.signal(true);
        assert_eq!(l.effective(), 700);
        assert!(!admits_now(&l, 100), "an adaptive step grants no new burst");
    }

    #[test]
    fn burst_must_admit_a_whole_batch() {
        assert!(
            RateLimit {
                rows_per_sec: 100,
                burst: 10
            }
            .validate(20)
            .is_err()
        );
        assert!(
            RateLimit {
                rows_per_sec: 100,
                burst: 20
            }
            .validate(20)
            .is_ok()
        );
        assert!(
            RateLimit {
                rows_per_sec: 0,
                burst: 0
            }
            .validate(20)
            .is_ok()
        );
    }

    #[tokio::test]
    async fn set_changes_the_limit_in_force() {
        let l = Limiter::new(
            RateLimit {
                rows_per_sec: 0,
                burst: 0,
            },
            Adaptive::default(),
        );
        l.acquire(1_000_000).await; // unlimited: returns at once
        l.set(RateLimit {
            rows_per_sec: 1_000,
            burst: 100,
        });
        assert_eq!(
            l.current(),
            RateLimit {
                rows_per_sec: 1_000,
                burst: 100
            }
        );
        let t = Instant::now();
        for _ in 0..3 {
            l.acquire(100).await; // the burst, then two more refills of 100 rows at 1000/s
        }
        assert!(
            t.elapsed() >= Duration::from_millis(150),
            "the limit was not applied"
        );
        assert!(l.waited() > Duration::ZERO);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn raising_the_limit_releases_waiters_at_once() {
        let l = Arc::new(Limiter::new(
            RateLimit {
                rows_per_sec: 1,
                burst: 10,
            },
            Adaptive::default(),
        ));
        l.acquire(10).await; // the burst is spent; the next 10 rows would wait 10 s
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { l.acquire(10).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        l.set(RateLimit {
            rows_per_sec: 0,
            burst: 0,
        });
        let released = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert!(released.is_ok(), "the waiter kept the old 1 row/s limit");
    }
}
