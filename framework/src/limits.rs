//! `[input]`: what a source record may hold. A record outside these limits is
//! dead-lettered with the reason and moves nothing (no watermark, no window). Every check
//! depends only on the record itself (its bytes and its broker timestamp), so a rebuild
//! decides exactly as the first run did.

use serde::{Deserialize, Serialize};

use crate::codec::DecodeError;
use crate::duration::HumanDuration;

/// 2000-01-01T00:00:00Z: no metric point is older (a zero or seconds-for-milliseconds
/// timestamp is a producer bug, not history).
pub const EARLIEST_TS: i64 = 946_684_800_000;
/// 9999-12-31T23:59:59.999Z: the latest event time accepted even without a broker
/// timestamp, far enough from `i64::MAX` that window arithmetic cannot overflow.
pub const LATEST_TS: i64 = 253_402_300_799_999;
/// Larger magnitudes are refused: sums of them (and CUSUM's squares) stay finite for
/// any number of records a window can hold.
pub const MAX_ABS_VALUE: f64 = 1e100;

/// Input limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// How far an event time may be ahead of the record's broker timestamp. One record
    /// far in the future would otherwise move the watermark past every later record.
    pub max_future: HumanDuration,
    /// Largest key + value accepted, in bytes.
    pub max_record_bytes: usize,
}

impl Default for InputConfig {
    fn default() -> Self {
        Self {
            max_future: HumanDuration(std::time::Duration::from_secs(3600)),
            max_record_bytes: 64 * 1024,
        }
    }
}

impl InputConfig {
    /// Problems with these settings, each named by its key.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.max_record_bytes < 64 {
            p.push("input.max_record_bytes: must be at least 64".to_owned());
        }
        p
    }

    /// The limits a pipeline applies.
    pub fn limits(&self) -> InputLimits {
        InputLimits {
            earliest_ts: EARLIEST_TS,
            max_future_ms: self.max_future.as_millis(),
            max_record_bytes: self.max_record_bytes,
        }
    }
}

/// The checks, as a pipeline applies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    pub earliest_ts: i64,
    pub max_future_ms: i64,
    pub max_record_bytes: usize,
}

impl Default for InputLimits {
    fn default() -> Self {
        InputConfig::default().limits()
    }
}

impl InputLimits {
    /// Any event time short of year 10000, whatever the broker timestamp: for tests and
    /// benchmarks whose event times start at 0.
    pub fn any_time() -> Self {
        Self {
            earliest_ts: i64::MIN,
            max_future_ms: i64::MAX,
            ..Self::default()
        }
    }

    /// Before decoding: the record's size.
    pub fn check_size(&self, key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<(), DecodeError> {
        let bytes = key.map_or(0, <[u8]>::len) + payload.map_or(0, <[u8]>::len);
        if bytes > self.max_record_bytes {
            return Err(DecodeError::TooLarge {
                bytes,
                max: self.max_record_bytes,
            });
        }
        Ok(())
    }

    /// After decoding: the event time against the broker timestamp (if the record has
    /// one) and the fixed range, and the value's magnitude.
    pub fn check_point(&self, ts: i64, value: f64, broker_ts: Option<i64>) -> Result<(), DecodeError> {
        if ts < self.earliest_ts {
            return Err(DecodeError::TimeTooOld { ts });
        }
        let latest = broker_ts
            .map_or(LATEST_TS, |b| b.saturating_add(self.max_future_ms))
            .min(LATEST_TS);
        if ts > latest {
            return Err(DecodeError::TimeTooNew { ts, latest });
        }
        if value.abs() > MAX_ABS_VALUE {
            return Err(DecodeError::ValueTooLarge(value));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_700_000_000;

    #[test]
    fn event_times_are_judged_against_the_records_broker_timestamp() {
        let l = InputLimits::default();
        let hour = 3_600_000;
        assert_eq!(l.check_point(NOW + hour, 1.0, Some(NOW)), Ok(()), "at the limit");
        assert_eq!(
            l.check_point(NOW + hour + 1, 1.0, Some(NOW)),
            Err(DecodeError::TimeTooNew {
                ts: NOW + hour + 1,
                latest: NOW + hour
            })
        );
        assert_eq!(
            l.check_point(NOW - 400 * 86_400_000, 1.0, Some(NOW)),
            Ok(()),
            "old data is fine"
        );
        assert_eq!(
            l.check_point(EARLIEST_TS - 1, 1.0, Some(NOW)),
            Err(DecodeError::TimeTooOld { ts: EARLIEST_TS - 1 })
        );
        assert_eq!(l.check_point(EARLIEST_TS, 1.0, Some(NOW)), Ok(()));
    }

    #[test]
    fn without_a_broker_timestamp_only_the_fixed_range_applies_and_nothing_overflows() {
        let l = InputLimits::default();
        assert_eq!(l.check_point(LATEST_TS, 1.0, None), Ok(()));
        for ts in [LATEST_TS + 1, i64::MAX] {
            assert!(matches!(
                l.check_point(ts, 1.0, None),
                Err(DecodeError::TimeTooNew { .. })
            ));
            assert!(matches!(
                l.check_point(ts, 1.0, Some(i64::MAX)),
                Err(DecodeError::TimeTooNew { .. })
            ));
        }
        assert!(matches!(
            l.check_point(i64::MIN, 1.0, Some(i64::MIN)),
            Err(DecodeError::TimeTooOld { .. })
        ));
    }

    #[test]
    fn huge_values_and_records_are_refused() {
        let l = InputLimits::default();
        assert_eq!(l.check_point(NOW, -MAX_ABS_VALUE, Some(NOW)), Ok(()));
        assert_eq!(
            l.check_point(NOW, 1e101, Some(NOW)),
            Err(DecodeError::ValueTooLarge(1e101))
        );
        let big = vec![b'x'; l.max_record_bytes];
        assert_eq!(l.check_size(None, Some(&big)), Ok(()));
        assert_eq!(
            l.check_size(Some(b"k"), Some(&big)),
            Err(DecodeError::TooLarge {
                bytes: l.max_record_bytes + 1,
                max: l.max_record_bytes
            })
        );
    }
}
