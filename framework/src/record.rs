//! Typed records that flow between stages and out to Kafka.

/// Dense per-partition id of an interned series name.
pub type SeriesId = u32;

/// A decoded metric point whose series has been interned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub series: SeriesId,
    /// Event time, epoch milliseconds.
    pub ts: i64,
    pub value: f64,
}

/// A decoded metric point as it appears on the wire, before interning.
#[derive(Debug, Clone, PartialEq)]
pub struct RawPoint<'a> {
    pub series: std::borrow::Cow<'a, str>,
    pub ts: i64,
    pub value: f64,
}

/// Mergeable aggregates of one series over one window.
///
/// The sum is kept as an unevaluated pair (`sum_hi + sum_lo`, Neumaier/TwoSum) so that
/// a sum merged through the cascade equals the sum computed directly from raw records,
/// whatever order the records arrived in.
#[derive(Debug, Clone, Copy, PartialEq, bincode::Encode, bincode::Decode)]
pub struct Agg {
    pub count: u64,
    pub sum_hi: f64,
    pub sum_lo: f64,
    pub min: f64,
    pub max: f64,
}

impl Default for Agg {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl Agg {
    pub const EMPTY: Agg = Agg {
        count: 0,
        sum_hi: 0.0,
        sum_lo: 0.0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
    };

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    #[inline]
    pub fn add(&mut self, value: f64) {
        self.count += 1;
        let (s, e) = two_sum(self.sum_hi, value);
        self.sum_hi = s;
        self.sum_lo += e;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    #[inline]
    pub fn merge(&mut self, other: &Agg) {
        if other.count == 0 {
            return;
        }
        self.count += other.count;
        let (s, e) = two_sum(self.sum_hi, other.sum_hi);
        self.sum_hi = s;
        self.sum_lo += e + other.sum_lo;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// The sum, rounded once from the compensated pair.
    #[inline]
    pub fn sum(&self) -> f64 {
        self.sum_hi + self.sum_lo
    }

    #[inline]
    pub fn avg(&self) -> f64 {
        self.sum() / self.count as f64
    }
}

/// The correctly rounded sum of `values` (Shewchuk's exact partials, rounded once as
/// CPython's `math.fsum` does): the reference the compensated sums of [`Agg`] are held
/// to by the tests (window property tests, the end-to-end oracle).
pub fn exact_sum(values: &[f64]) -> f64 {
    let mut partials: Vec<f64> = Vec::new();
    for &x in values {
        let mut x = x;
        let mut i = 0;
        for j in 0..partials.len() {
            let mut y = partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                partials[i] = lo;
                i += 1;
            }
            x = hi;
        }
        partials.truncate(i);
        partials.push(x);
    }
    // Round the partials once, as CPython's math.fsum does.
    let Some(mut hi) = partials.pop() else { return 0.0 };
    let mut lo = 0.0;
    while let Some(y) = partials.pop() {
        let x = hi;
        hi = x + y;
        lo = y - (hi - x);
        if lo != 0.0 {
            break;
        }
    }
    if let Some(&next) = partials.last()
        && ((lo < 0.0 && next < 0.0) || (lo > 0.0 && next > 0.0))
    {
        let y = lo * 2.0;
        let x = hi + y;
        if y == x - hi {
            hi = x;
        }
    }
    hi
}

/// Knuth's TwoSum: `a + b == s + e` exactly.
#[inline]
fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    let e = (a - (s - bb)) + (b - bb);
    (s, e)
}

/// One closed window of one series at one resolution level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RollupRow {
    pub series: SeriesId,
    /// Index into the configured levels (0 = finest).
    pub level: u8,
    pub window_start: i64,
    pub window_end: i64,
    pub agg: Agg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

/// A change point flagged by CUSUM.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Anomaly {
    pub series: SeriesId,
    pub ts: i64,
    pub value: f64,
    pub direction: Direction,
    /// The cumulative sum that crossed the threshold, in standard deviations.
    pub cusum: f64,
    pub threshold: f64,
    /// Baseline mean and standard deviation before this value.
    pub mean: f64,
    pub stddev: f64,
}
