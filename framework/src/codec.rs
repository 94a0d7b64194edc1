//! Wire formats: metric points in, rollups and anomalies out. JSON by default, bincode
//! (2.x, standard config) selectable per topic.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::record::{Agg, Anomaly, RawPoint, RollupRow};

/// Encoding of a topic's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    Bincode,
}

/// Why a record could not be used. The text goes to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("record has no value")]
    EmptyPayload,
    #[error("record has no key (the key must be the series id)")]
    EmptyKey,
    #[error("key is not UTF-8")]
    KeyNotUtf8,
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("invalid bincode: {0}")]
    Bincode(String),
    #[error("series is empty")]
    EmptySeries,
    #[error("key {key:?} does not match series {series:?}")]
    KeyMismatch { key: String, series: String },
    #[error("value is not finite: {0}")]
    NonFinite(f64),
    #[error("record is {bytes} bytes, more than input.max_record_bytes ({max})")]
    TooLarge { bytes: usize, max: usize },
    #[error("event time {ts} is before 2000-01-01")]
    TimeTooOld { ts: i64 },
    #[error(
        "event time {ts} is after {latest} (the record's broker timestamp + input.max_future, or year 9999)"
    )]
    TimeTooNew { ts: i64, latest: i64 },
    #[error("value {0} is beyond ±1e100")]
    ValueTooLarge(f64),
}

#[derive(Deserialize)]
struct PointJson<'a> {
    #[serde(borrow)]
    series: Cow<'a, str>,
    ts: i64,
    value: f64,
}

#[derive(bincode::Encode, bincode::BorrowDecode)]
struct PointBincode<'a> {
    series: &'a str,
    ts: i64,
    value: f64,
}

/// Records are small; a length prefix that claims more than this is refused before
/// anything is allocated for it.
const BINCODE: bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<{ 1 << 20 }>,
> = bincode::config::standard().with_limit::<{ 1 << 20 }>();

/// Decodes and validates one metric record. The key must be the series id.
pub fn decode_point<'a>(
    format: Format,
    key: Option<&[u8]>,
    payload: Option<&'a [u8]>,
) -> Result<RawPoint<'a>, DecodeError> {
    let payload = payload
        .filter(|p| !p.is_empty())
        .ok_or(DecodeError::EmptyPayload)?;
    let key = key.filter(|k| !k.is_empty()).ok_or(DecodeError::EmptyKey)?;
    let point = match format {
        Format::Json => {
            let p: PointJson<'a> =
                serde_json::from_slice(payload).map_err(|e| DecodeError::Json(e.to_string()))?;
            RawPoint {
                series: p.series,
                ts: p.ts,
                value: p.value,
            }
        }
        Format::Bincode => {
            let (p, used): (PointBincode<'a>, usize) = bincode::borrow_decode_from_slice(payload, BINCODE)
                .map_err(|e| DecodeError::Bincode(e.to_string()))?;
            if used != payload.len() {
                return Err(DecodeError::Bincode(format!(
                    "{} trailing bytes",
                    payload.len() - used
                )));
            }
            RawPoint {
                series: Cow::Borrowed(p.series),
                ts: p.ts,
                value: p.value,
            }
        }
    };
    if point.series.is_empty() {
        return Err(DecodeError::EmptySeries);
    }
    if !point.value.is_finite() {
        return Err(DecodeError::NonFinite(point.value));
    }
    if key != point.series.as_bytes() {
        let key = std::str::from_utf8(key).map_err(|_| DecodeError::KeyNotUtf8)?;
        return Err(DecodeError::KeyMismatch {
            key: key.to_owned(),
            series: point.series.into_owned(),
        });
    }
    Ok(point)
}

/// Encodes a metric point (used by the load generator and tests).
pub fn encode_point(format: Format, point: &RawPoint<'_>, out: &mut Vec<u8>) {
    out.clear();
    match format {
        Format::Json => {
            #[derive(Serialize)]
            struct P<'a> {
                series: &'a str,
                ts: i64,
                value: f64,
            }
            let p = P {
                series: &point.series,
                ts: point.ts,
                value: point.value,
            };
            serde_json::to_writer(&mut *out, &p).expect("serialising to a Vec cannot fail");
        }
        Format::Bincode => {
            let p = PointBincode {
                series: &point.series,
                ts: point.ts,
                value: point.value,
            };
            bincode::encode_into_std_write(&p, out, BINCODE).expect("serialising to a Vec cannot fail");
        }
    }
}

/// A rollup as it is written to the `rollups` topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct RollupRecord {
    pub series: String,
    pub resolution: String,
    pub window_start: i64,
    pub window_end: i64,
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub avg: f64,
    /// The sum as the compensated pair it was computed as (sum = hi + lo, rounded once),
    /// so a coarse window rebuilt from these rows equals one computed directly.
    #[serde(default)]
    pub sum_parts: Option<(f64, f64)>,
}

impl RollupRecord {
    /// The aggregate this row was written from.
    pub fn agg(&self) -> Agg {
        let (sum_hi, sum_lo) = self.sum_parts.unwrap_or((self.sum, 0.0));
        Agg {
            count: self.count,
            sum_hi,
            sum_lo,
            min: self.min,
            max: self.max,
        }
    }
}

#[derive(Serialize, bincode::Encode)]
struct RollupOut<'a> {
    series: &'a str,
    resolution: &'a str,
    window_start: i64,
    window_end: i64,
    count: u64,
    min: f64,
    max: f64,
    sum: f64,
    avg: f64,
    sum_parts: Option<(f64, f64)>,
}

/// Encodes a closed window into `out` (cleared first).
pub fn encode_rollup(format: Format, series: &str, resolution: &str, row: &RollupRow, out: &mut Vec<u8>) {
    out.clear();
    let Agg { count, min, max, .. } = row.agg;
    let r = RollupOut {
        series,
        resolution,
        window_start: row.window_start,
        window_end: row.window_end,
        count,
        min,
        max,
        sum: row.agg.sum(),
        avg: row.agg.avg(),
        sum_parts: Some((row.agg.sum_hi, row.agg.sum_lo)),
    };
    match format {
        Format::Json => serde_json::to_writer(&mut *out, &r).expect("serialising to a Vec cannot fail"),
        Format::Bincode => {
            bincode::encode_into_std_write(&r, out, BINCODE).expect("serialising to a Vec cannot fail");
        }
    }
}

pub fn decode_rollup(format: Format, payload: &[u8]) -> Result<RollupRecord, DecodeError> {
    match format {
        Format::Json => serde_json::from_slice(payload).map_err(|e| DecodeError::Json(e.to_string())),
        Format::Bincode => bincode::decode_from_slice(payload, BINCODE)
            .map(|(r, _)| r)
            .map_err(|e| DecodeError::Bincode(e.to_string())),
    }
}

/// An anomaly as it is written to the `anomalies` topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct AnomalyRecord {
    pub series: String,
    pub ts: i64,
    pub value: f64,
    pub direction: String,
    pub cusum: f64,
    pub threshold: f64,
    pub mean: f64,
    pub stddev: f64,
}

#[derive(Serialize, bincode::Encode)]
struct AnomalyOut<'a> {
    series: &'a str,
    ts: i64,
    value: f64,
    direction: &'a str,
    cusum: f64,
    threshold: f64,
    mean: f64,
    stddev: f64,
}

pub fn encode_anomaly(format: Format, series: &str, a: &Anomaly, out: &mut Vec<u8>) {
    out.clear();
    let r = AnomalyOut {
        series,
        ts: a.ts,
        value: a.value,
        direction: a.direction.as_str(),
        cusum: a.cusum,
        threshold: a.threshold,
        mean: a.mean,
        stddev: a.stddev,
    };
    match format {
        Format::Json => serde_json::to_writer(&mut *out, &r).expect("serialising to a Vec cannot fail"),
        Format::Bincode => {
            bincode::encode_into_std_write(&r, out, BINCODE).expect("serialising to a Vec cannot fail");
        }
    }
}

pub fn decode_anomaly(format: Format, payload: &[u8]) -> Result<AnomalyRecord, DecodeError> {
    match format {
        Format::Json => serde_json::from_slice(payload).map_err(|e| DecodeError::Json(e.to_string())),
        Format::Bincode => bincode::decode_from_slice(payload, BINCODE)
            .map(|(r, _)| r)
            .map_err(|e| DecodeError::Bincode(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(key: &str, payload: &str) -> Result<RawPoint<'static>, DecodeError> {
        let payload: &'static [u8] = Box::leak(payload.as_bytes().to_vec().into_boxed_slice());
        decode_point(Format::Json, Some(key.as_bytes()), Some(payload))
    }

    #[test]
    fn decodes_the_documented_json() {
        let p = json(
            "node-17/cpu.user",
            r#"{"series":"node-17/cpu.user","ts":1732380000123,"value":0.42}"#,
        )
        .expect("valid record");
        assert_eq!(p.series, "node-17/cpu.user");
        assert_eq!(p.ts, 1_732_380_000_123);
        assert_eq!(p.value, 0.42);
    }

    #[test]
    fn rejects_bad_records_with_a_reason() {
        assert!(matches!(json("a", "{"), Err(DecodeError::Json(_))));
        assert!(matches!(
            json("a", r#"{"series":"a","ts":1}"#),
            Err(DecodeError::Json(m)) if m.contains("value")
        ));
        assert!(matches!(
            json("a", r#"{"series":"a","ts":1,"value":NaN}"#),
            Err(DecodeError::Json(_))
        ));
        assert!(json("a", r#"{"series":"a","ts":1,"value":1e999}"#).is_err());
        assert_eq!(
            json("", r#"{"series":"a","ts":1,"value":1}"#),
            Err(DecodeError::EmptyKey)
        );
        assert_eq!(
            json("a", r#"{"series":"","ts":1,"value":1}"#),
            Err(DecodeError::EmptySeries)
        );
        assert!(matches!(
            json("b", r#"{"series":"a","ts":1,"value":1}"#),
            Err(DecodeError::KeyMismatch { .. })
        ));
        assert_eq!(
            decode_point(Format::Json, Some(b"a"), None),
            Err(DecodeError::EmptyPayload)
        );
    }

    #[test]
    fn bincode_round_trips_and_rejects_garbage() {
        let point = RawPoint {
            series: "s/1".into(),
            ts: 42,
            value: -1.5,
        };
        let mut buf = Vec::new();
        encode_point(Format::Bincode, &point, &mut buf);
        let decoded = decode_point(Format::Bincode, Some(b"s/1"), Some(&buf)).expect("decodes");
        assert_eq!(decoded, point);
        buf.push(0);
        assert!(decode_point(Format::Bincode, Some(b"s/1"), Some(&buf)).is_err());
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let p = RawPoint {
                value: bad,
                ..point.clone()
            };
            encode_point(Format::Bincode, &p, &mut buf);
            assert!(matches!(
                decode_point(Format::Bincode, Some(b"s/1"), Some(&buf)),
                Err(DecodeError::NonFinite(_))
            ));
        }
        assert!(decode_point(Format::Bincode, Some(b"s/1"), Some(&[0xff, 0xff])).is_err());
    }

    #[test]
    fn rollup_json_has_the_documented_fields() {
        let mut agg = Agg::EMPTY;
        for v in [0.1, 0.9, 0.5] {
            agg.add(v);
        }
        let row = RollupRow {
            series: 0,
            level: 0,
            window_start: 1_732_379_700_000,
            window_end: 1_732_380_000_000,
            agg,
        };
        let mut out = Vec::new();
        encode_rollup(Format::Json, "node-17/cpu.user", "5m", &row, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["series"], "node-17/cpu.user");
        assert_eq!(v["resolution"], "5m");
        assert_eq!(v["window_start"], 1_732_379_700_000i64);
        assert_eq!(v["window_end"], 1_732_380_000_000i64);
        assert_eq!(v["count"], 3);
        assert_eq!(v["min"], 0.1);
        assert_eq!(v["max"], 0.9);
        let back = decode_rollup(Format::Json, &out).expect("decodes");
        assert_eq!(back.count, 3);
        assert!((back.avg - 0.5).abs() < 1e-12);
    }
}
