//! Kafka records → rows for the tables in [`crate::schema`].

use scylla::value::{CqlTimestamp, CqlValue};
use tributary::codec::{self, DecodeError, Format};

use crate::config::WriterConfig;
use crate::schema::{DAY_MS, TableKind, WINDOWS_PER_BUCKET};

/// Which kind of record a topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Metrics,
    Rollups,
    Anomalies,
}

/// One row to write, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub table: TableKind,
    /// Bound values in INSERT order, then the TTL and the write timestamp.
    pub values: Vec<CqlValue>,
    /// Approximate serialised size of the values (for the batch byte limit).
    pub bytes: usize,
}

/// Why a record cannot become a row.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RowError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("no table for rollup resolution {0:?} (add it under [ttl.rollups])")]
    UnknownResolution(String),
    #[error("value is not finite")]
    NonFinite,
    #[error("window [{start}, {end}) is empty or too wide to bucket")]
    BadWindow { start: i64, end: i64 },
}

fn ttl_seconds(d: tributary::config::HumanDuration) -> i32 {
    d.0.as_secs().min(i32::MAX as u64) as i32
}

fn size(values: &[CqlValue]) -> usize {
    values
        .iter()
        .map(|v| match v {
            CqlValue::Text(s) => s.len() + 4,
            CqlValue::Int(_) => 8,
            _ => 12,
        })
        .sum()
}

/// The write timestamp (microseconds, `USING TIMESTAMP`) of a record's row: the record's
/// Kafka timestamp, i.e. when the rollup app emitted it. A row computed later (a window
/// emitted again by a replay) then always wins over an older write of the same row still
/// being retried, whatever order the two reach the cluster in. A record without a
/// timestamp, or claiming one more than an hour ahead of `now_ms` (it would shadow every
/// later write of its row), is stamped with `now_ms`.
pub fn write_timestamp(record_ms: Option<i64>, now_ms: i64) -> i64 {
    const AHEAD_MS: i64 = 3_600_000;
    let ms = match record_ms {
        Some(ms) if ms >= 0 && ms <= now_ms.saturating_add(AHEAD_MS) => ms,
        _ => now_ms,
    };
    ms.saturating_mul(1_000)
}

/// Maps a record of `source` to its row, written at `written_us` (see
/// [`write_timestamp`]). `format_header` reads the record's `tributary.format` header; it
/// is called only for rollups and anomalies, the records that carry one, because reading
/// headers makes librdkafka parse the record's header block.
pub fn to_row<'h>(
    config: &WriterConfig,
    source: Source,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    format_header: impl FnOnce() -> Option<&'h [u8]>,
    written_us: i64,
) -> Result<Row, RowError> {
    let format: Format = config.topics.format;
    let (table, values) = match source {
        Source::Metrics => {
            let p = codec::decode_point(format, key, payload)?;
            let values = vec![
                CqlValue::Text(p.series.into_owned()),
                CqlValue::BigInt(p.ts.div_euclid(DAY_MS)),
                CqlValue::Timestamp(CqlTimestamp(p.ts)),
                CqlValue::Double(p.value),
                CqlValue::Int(ttl_seconds(config.ttl.points)),
            ];
            (TableKind::Points, values)
        }
        Source::Rollups => {
            let payload = payload
                .filter(|p| !p.is_empty())
                .ok_or(DecodeError::EmptyPayload)?;
            let r = codec::decode_rollup(format, format_header(), payload)?;
            let ttl = *config
                .ttl
                .rollups
                .get(&r.resolution)
                .ok_or_else(|| RowError::UnknownResolution(r.resolution.clone()))?;
            if ![r.min, r.max, r.sum, r.avg].iter().all(|v| v.is_finite()) {
                return Err(RowError::NonFinite);
            }
            let bad = || RowError::BadWindow {
                start: r.window_start,
                end: r.window_end,
            };
            // A window of any width maps to a bucket: the arithmetic is checked so a
            // hostile record is dead-lettered instead of overflowing or dividing by zero.
            let bucket_ms = r
                .window_end
                .checked_sub(r.window_start)
                .filter(|w| *w > 0)
                .and_then(|w| w.checked_mul(WINDOWS_PER_BUCKET))
                .ok_or_else(bad)?;
            let values = vec![
                CqlValue::Text(r.series),
                CqlValue::BigInt(r.window_start.div_euclid(bucket_ms)),
                CqlValue::Timestamp(CqlTimestamp(r.window_start)),
                CqlValue::Timestamp(CqlTimestamp(r.window_end)),
                CqlValue::BigInt(r.count as i64),
                CqlValue::Double(r.min),
                CqlValue::Double(r.max),
                CqlValue::Double(r.sum),
                CqlValue::Double(r.avg),
                CqlValue::Int(ttl_seconds(ttl)),
            ];
            (TableKind::Rollups(r.resolution), values)
        }
        Source::Anomalies => {
            let payload = payload
                .filter(|p| !p.is_empty())
                .ok_or(DecodeError::EmptyPayload)?;
            let a = codec::decode_anomaly(format, format_header(), payload)?;
            if ![a.value, a.cusum, a.threshold, a.mean, a.stddev]
                .iter()
                .all(|v| v.is_finite())
            {
                return Err(RowError::NonFinite);
            }
            let values = vec![
                CqlValue::Text(a.series),
                CqlValue::BigInt(a.ts.div_euclid(DAY_MS)),
                CqlValue::Timestamp(CqlTimestamp(a.ts)),
                CqlValue::Double(a.value),
                CqlValue::Text(a.direction),
                CqlValue::Double(a.cusum),
                CqlValue::Double(a.threshold),
                CqlValue::Double(a.mean),
                CqlValue::Double(a.stddev),
                CqlValue::Int(ttl_seconds(config.ttl.anomalies)),
            ];
            (TableKind::Anomalies, values)
        }
    };
    let mut values = values;
    values.push(CqlValue::BigInt(written_us));
    let bytes = size(&values);
    Ok(Row { table, values, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_each_topic_to_its_table() {
        let c = WriterConfig::default();
        let p = br#"{"series":"s","ts":172800000,"value":1.5}"#;
        let r = to_row(&c, Source::Metrics, Some(b"s"), Some(p), || None, 7).expect("point");
        assert_eq!(r.table, TableKind::Points);
        assert_eq!(r.values[1], CqlValue::BigInt(2), "day bucket");
        assert_eq!(r.values[4], CqlValue::Int(7 * 86_400));
        assert_eq!(r.values[5], CqlValue::BigInt(7), "write timestamp last");
        let roll = br#"{"series":"s","resolution":"1h","window_start":3600000,"window_end":7200000,"count":2,"min":1,"max":2,"sum":3,"avg":1.5}"#;
        let r = to_row(&c, Source::Rollups, Some(b"s"), Some(roll), || None, 7).expect("rollup");
        assert_eq!(r.table, TableKind::Rollups("1h".into()));
        assert_eq!(r.values[1], CqlValue::BigInt(0));
        let odd = br#"{"series":"s","resolution":"7m","window_start":0,"window_end":420000,"count":1,"min":1,"max":1,"sum":1,"avg":1}"#;
        assert!(matches!(
            to_row(&c, Source::Rollups, None, Some(odd), || None, 7),
            Err(RowError::UnknownResolution(_))
        ));
        assert!(matches!(
            to_row(&c, Source::Metrics, Some(b"s"), Some(b"{"), || None, 7),
            Err(RowError::Decode(_))
        ));
    }

    #[test]
    fn rows_are_stamped_with_their_record_time_within_reason() {
        let now = 1_800_000_000_000;
        assert_eq!(write_timestamp(Some(now - 5_000), now), (now - 5_000) * 1_000);
        assert_eq!(
            write_timestamp(Some(now + 3_600_000), now),
            (now + 3_600_000) * 1_000
        );
        for odd in [None, Some(-1), Some(now + 3_600_001), Some(i64::MAX)] {
            assert_eq!(write_timestamp(odd, now), now * 1_000, "{odd:?}");
        }
    }

    #[test]
    fn hostile_windows_are_refused_not_a_crash() {
        let c = WriterConfig::default();
        let roll = |start: i64, end: i64| {
            format!(
                r#"{{"series":"s","resolution":"5m","window_start":{start},"window_end":{end},"count":1,"min":1,"max":1,"sum":1,"avg":1}}"#
            )
        };
        // 2^61 ms wide: width · 1,000 overflows (it wrapped to a zero divisor before).
        for (start, end) in [
            (0, 1i64 << 61),
            (5, 5),
            (10, 0),
            (i64::MIN, i64::MAX),
            (-1, i64::MAX),
        ] {
            let r = to_row(
                &c,
                Source::Rollups,
                Some(b"s"),
                Some(roll(start, end).as_bytes()),
                || None,
                7,
            );
            assert_eq!(r, Err(RowError::BadWindow { start, end }), "[{start}, {end})");
        }
        let wide = to_row(
            &c,
            Source::Rollups,
            Some(b"s"),
            Some(roll(i64::MIN, i64::MIN + 1).as_bytes()),
            || None,
            7,
        );
        assert!(wide.is_ok(), "a narrow window at the i64 limit maps: {wide:?}");
    }
}
