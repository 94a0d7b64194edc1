//! Wire formats: metric points in, rollups and anomalies out. JSON by default, bincode
//! (2.x, standard config) selectable per topic.
//!
//! Rollup and anomaly records name their format in the [`FORMAT_HEADER`] header, so a
//! reader can tell an older layout from a newer one it does not know (bincode is not
//! self-describing: a field added at the end is unreadable to a build that expects fewer,
//! and vice versa). Record formats:
//! - 1: the first layout, written without the header. Bincode rollups end after `avg`.
//! - 2: rollups add `sum_parts` (written without the header by the builds that introduced
//!   it, with `tributary.format: 2` since).
//!
//! A build reads every format up to [`RECORD_FORMAT`] and refuses a newer one with
//! [`DecodeError::NewerFormat`], which readers dead-letter: nothing is lost, and the
//! records can be sent again once the reader is upgraded.

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
    #[error(
        "record format {found} is newer than this build reads ({reads}): upgrade the readers of this topic before its writers"
    )]
    NewerFormat { found: u32, reads: u32 },
    #[error("header tributary.format is {0:?}, not a format number")]
    BadFormatHeader(String),
}

/// Header that names the format of a rollup or anomaly record's value.
pub const FORMAT_HEADER: &str = "tributary.format";

/// The rollup and anomaly record format this build writes, and the newest it reads.
pub const RECORD_FORMAT: u32 = 2;

/// [`RECORD_FORMAT`] as the header's value.
pub const RECORD_FORMAT_TEXT: &str = "2";

/// The format a record's [`FORMAT_HEADER`] names: `None` for a record without one (format
/// 1 or 2, written before the header), an error for one newer than this build or no
/// number at all.
pub fn record_format(header: Option<&[u8]>) -> Result<Option<u32>, DecodeError> {
    let Some(bytes) = header else { return Ok(None) };
    let text = String::from_utf8_lossy(bytes);
    match text.parse::<u32>() {
        Ok(found) if found > RECORD_FORMAT => Err(DecodeError::NewerFormat {
            found,
            reads: RECORD_FORMAT,
        }),
        Ok(found) if found >= 1 => Ok(Some(found)),
        _ => Err(DecodeError::BadFormatHeader(text.chars().take(64).collect())),
    }
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// The fields of format 1, which format 2 extends with `sum_parts`.
#[derive(bincode::Decode)]
struct RollupV1 {
    series: String,
    resolution: String,
    window_start: i64,
    window_end: i64,
    count: u64,
    min: f64,
    max: f64,
    sum: f64,
    avg: f64,
}

/// Decodes a rollup record of any format this build reads; `header` is the record's
/// [`FORMAT_HEADER`], if it has one.
pub fn decode_rollup(
    format: Format,
    header: Option<&[u8]>,
    payload: &[u8],
) -> Result<RollupRecord, DecodeError> {
    let version = record_format(header)?;
    match format {
        Format::Json => serde_json::from_slice(payload).map_err(|e| DecodeError::Json(e.to_string())),
        Format::Bincode => {
            let bad = |e: bincode::error::DecodeError| DecodeError::Bincode(e.to_string());
            let (v1, used): (RollupV1, usize) = bincode::decode_from_slice(payload, BINCODE).map_err(bad)?;
            let rest = &payload[used..];
            // Format 1 ends here; format 2 (headed or not) goes on with `sum_parts`.
            let sum_parts = if rest.is_empty() && version != Some(2) {
                None
            } else {
                let (parts, used): (Option<(f64, f64)>, usize) =
                    bincode::decode_from_slice(rest, BINCODE).map_err(bad)?;
                if used != rest.len() {
                    return Err(DecodeError::Bincode(format!(
                        "{} trailing bytes",
                        rest.len() - used
                    )));
                }
                parts
            };
            Ok(RollupRecord {
                series: v1.series,
                resolution: v1.resolution,
                window_start: v1.window_start,
                window_end: v1.window_end,
                count: v1.count,
                min: v1.min,
                max: v1.max,
                sum: v1.sum,
                avg: v1.avg,
                sum_parts,
            })
        }
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

/// Decodes an anomaly record (its layout is the same in formats 1 and 2); `header` is
/// the record's [`FORMAT_HEADER`], if it has one.
pub fn decode_anomaly(
    format: Format,
    header: Option<&[u8]>,
    payload: &[u8],
) -> Result<AnomalyRecord, DecodeError> {
    record_format(header)?;
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
        let back = decode_rollup(Format::Json, None, &out).expect("decodes");
        assert_eq!(back.count, 3);
        assert!((back.avg - 0.5).abs() < 1e-12);
    }

    /// A bincode rollup as builds before the compensated sum wrote it (format 1, no
    /// header): "node-17/cpu.user", 5m, [1732379700000, 1732380000000), count 3, min 0.1,
    /// max 0.9, sum 1.5, avg 0.5.
    const ROLLUP_FORMAT_1: &str = "106e6f64652d31372f6370752e7573657202356dfd40d6c0b326030000fd00fec9b326030000039a9999999999b93fcdccccccccccec3f000000000000f83f000000000000e03f";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn row() -> RollupRow {
        let mut agg = Agg::EMPTY;
        for v in [0.1, 0.7, 0.2] {
            agg.add(v);
        }
        RollupRow {
            series: 0,
            level: 0,
            window_start: 1_732_379_700_000,
            window_end: 1_732_380_000_000,
            agg,
        }
    }

    #[test]
    fn every_earlier_bincode_rollup_format_is_read() {
        let v1 = decode_rollup(Format::Bincode, None, &unhex(ROLLUP_FORMAT_1)).expect("format 1");
        assert_eq!(
            (
                v1.series.as_str(),
                v1.resolution.as_str(),
                v1.count,
                v1.sum,
                v1.sum_parts
            ),
            ("node-17/cpu.user", "5m", 3, 1.5, None)
        );
        assert_eq!(v1.agg().sum(), 1.5);
        // Format 2 as the builds before the header wrote it, and as this build writes it.
        let mut out = Vec::new();
        encode_rollup(Format::Bincode, "s", "1h", &row(), &mut out);
        for header in [None, Some(&b"2"[..])] {
            let r = decode_rollup(Format::Bincode, header, &out).expect("format 2");
            assert_eq!(r.sum_parts, Some((row().agg.sum_hi, row().agg.sum_lo)));
            assert_eq!(r.agg(), row().agg, "the compensated sum survives");
        }
        let mut longer = out.clone();
        longer.push(0);
        assert!(
            decode_rollup(Format::Bincode, None, &longer).is_err(),
            "trailing bytes"
        );
        let short = unhex(ROLLUP_FORMAT_1);
        assert!(
            decode_rollup(Format::Bincode, Some(b"2"), &short).is_err(),
            "a format-2 record must have the compensated sum"
        );
    }

    #[test]
    fn a_newer_record_format_is_refused_by_name() {
        let mut out = Vec::new();
        encode_rollup(Format::Json, "s", "5m", &row(), &mut out);
        let newer = decode_rollup(Format::Json, Some(b"3"), &out);
        assert_eq!(newer, Err(DecodeError::NewerFormat { found: 3, reads: 2 }));
        assert!(
            newer
                .expect_err("refused")
                .to_string()
                .contains("record format 3 is newer than this build reads (2)"),
            "the reason says what to do"
        );
        assert!(matches!(
            decode_rollup(Format::Json, Some(b"two"), &out),
            Err(DecodeError::BadFormatHeader(h)) if h == "two"
        ));
        assert!(decode_rollup(Format::Json, Some(b"0"), &out).is_err());
        let a = Anomaly {
            series: 0,
            ts: 5,
            value: 1.0,
            direction: crate::record::Direction::Up,
            cusum: 2.0,
            threshold: 1.0,
            mean: 0.0,
            stddev: 1.0,
        };
        for format in [Format::Json, Format::Bincode] {
            encode_anomaly(format, "s", &a, &mut out);
            assert!(decode_anomaly(format, None, &out).is_ok());
            assert!(decode_anomaly(format, Some(RECORD_FORMAT_TEXT.as_bytes()), &out).is_ok());
            assert!(matches!(
                decode_anomaly(format, Some(b"3"), &out),
                Err(DecodeError::NewerFormat { found: 3, .. })
            ));
        }
    }
}
