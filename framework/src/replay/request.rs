//! Replays an operator asks for: from an offset or a timestamp, for chosen partitions (or
//! all), against a running app (through its admin endpoint) or offline (app stopped). Both
//! end the same way: a commit of a "requested" plan at the replay offset, which the owner
//! of the partition then resumes from, re-emitting outputs. Turning a request into offsets
//! is [`crate::runtime::operator`].

/// Where a requested replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    Offset(i64),
    /// Epoch milliseconds, resolved per partition to the first record at or after it.
    Time(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRequest {
    pub from: ReplayFrom,
    /// `None` means every partition (online: every partition this instance owns).
    pub partitions: Option<Vec<i32>>,
}

/// Why a replay request cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("from_offset: {0:?} is not an offset")]
    Offset(String),
    #[error("{text:?} is not an RFC 3339 time like 2026-11-24T10:00:00Z (or epoch ms): {reason}")]
    Time { text: String, reason: String },
    #[error("partitions: {0:?} is not a partition number")]
    Partition(String),
    #[error("give exactly one of from_offset=N or from_time=RFC3339")]
    From,
}

impl ReplayRequest {
    /// Parses the admin endpoint's query: `from_offset=N` or `from_time=RFC3339|ms`, and
    /// optionally `partitions=0,3`.
    pub fn from_query(query: impl Fn(&str) -> Option<String>) -> Result<Self, RequestError> {
        let from = match (query("from_offset"), query("from_time")) {
            (Some(o), None) => ReplayFrom::Offset(o.parse().map_err(|_| RequestError::Offset(o))?),
            (None, Some(t)) => ReplayFrom::Time(parse_time(&t)?),
            _ => return Err(RequestError::From),
        };
        let partitions = query("partitions").map(|p| parse_partitions(&p)).transpose()?;
        Ok(Self { from, partitions })
    }
}

/// `0,3,5` → [0, 3, 5].
pub fn parse_partitions(text: &str) -> Result<Vec<i32>, RequestError> {
    text.split(',')
        .map(|p| {
            p.trim()
                .parse::<i32>()
                .ok()
                .filter(|p| *p >= 0)
                .ok_or_else(|| RequestError::Partition(p.to_owned()))
        })
        .collect()
}

/// RFC 3339 (`2026-11-24T10:00:00Z`, `2026-11-24T10:00:00.250+01:00`) or epoch ms.
pub fn parse_time(text: &str) -> Result<i64, RequestError> {
    let t = text.trim();
    if let Ok(ms) = t.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|d| d.timestamp_millis())
        .map_err(|e| RequestError::Time {
            text: t.to_owned(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_and_epoch_millis_parse() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time("2024-11-23T16:40:00.123Z"), Ok(1_732_380_000_123));
        assert_eq!(parse_time("2024-11-23T17:40:00.123+01:00"), Ok(1_732_380_000_123));
        assert_eq!(parse_time("2000-03-01T00:00:00Z"), Ok(951_868_800_000));
        assert_eq!(parse_time("1732380000123"), Ok(1_732_380_000_123));
        for bad in [
            "yesterday",
            "2024-13-01T00:00:00Z",
            "2024-11-23T16:40:00",
            "2024-11-23",
            // Multi-byte characters where the offset's digits belong once panicked.
            "2024-11-23T16:40:00+0é00",
            "2024-11-23T16:40:00.éZ",
            "éééé-11-23T16:40:00Z",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn admin_queries_parse_with_clear_errors() {
        let q = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert_eq!(
            ReplayRequest::from_query(q(&[("from_offset", "5"), ("partitions", "0,3")])),
            Ok(ReplayRequest {
                from: ReplayFrom::Offset(5),
                partitions: Some(vec![0, 3])
            })
        );
        assert_eq!(ReplayRequest::from_query(q(&[])), Err(RequestError::From));
        assert_eq!(
            ReplayRequest::from_query(q(&[("from_offset", "5"), ("from_time", "0")])),
            Err(RequestError::From)
        );
        assert_eq!(
            ReplayRequest::from_query(q(&[("from_offset", "x")])),
            Err(RequestError::Offset("x".into()))
        );
        assert_eq!(
            ReplayRequest::from_query(q(&[("from_offset", "1"), ("partitions", "0,-1")])),
            Err(RequestError::Partition("-1".into()))
        );
    }
}
