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

impl ReplayRequest {
    /// Parses the admin endpoint's query: `from_offset=N` or `from_time=RFC3339|ms`, and
    /// optionally `partitions=0,3`.
    pub fn from_query(query: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let from = match (query("from_offset"), query("from_time")) {
            (Some(o), None) => ReplayFrom::Offset(
                o.parse()
                    .map_err(|_| format!("from_offset: {o:?} is not an offset"))?,
            ),
            (None, Some(t)) => ReplayFrom::Time(parse_time(&t)?),
            _ => return Err("give exactly one of from_offset=N or from_time=RFC3339".into()),
        };
        let partitions = query("partitions").map(|p| parse_partitions(&p)).transpose()?;
        Ok(Self { from, partitions })
    }
}

/// `0,3,5` → [0, 3, 5].
pub fn parse_partitions(text: &str) -> Result<Vec<i32>, String> {
    text.split(',')
        .map(|p| {
            p.trim()
                .parse::<i32>()
                .ok()
                .filter(|p| *p >= 0)
                .ok_or_else(|| format!("partitions: {p:?} is not a partition number"))
        })
        .collect()
}

/// RFC 3339 (`2026-11-24T10:00:00Z`, `2026-11-24T10:00:00.250+01:00`) or epoch ms.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let t = text.trim();
    if let Ok(ms) = t.parse::<i64>() {
        return Ok(ms);
    }
    let bad = || format!("{t:?} is not an RFC 3339 time like 2026-11-24T10:00:00Z (or epoch ms)");
    let b = t.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| t.get(r).and_then(|s| s.parse::<i64>().ok()).ok_or_else(bad);
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return Err(bad());
    }
    let mut rest = &t[19..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.find(|c: char| !c.is_ascii_digit()).unwrap_or(frac.len());
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        millis = padded.parse::<i64>().map_err(|_| bad())?;
        rest = &frac[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            let h = rest[1..3].parse::<i64>().map_err(|_| bad())?;
            let m = rest[4..6].parse::<i64>().map_err(|_| bad())?;
            sign * (h * 60 + m)
        }
        _ => return Err(bad()),
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    Ok(secs * 1_000 + millis)
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
        assert!(ReplayRequest::from_query(q(&[])).is_err());
        assert!(ReplayRequest::from_query(q(&[("from_offset", "5"), ("from_time", "0")])).is_err());
        assert!(ReplayRequest::from_query(q(&[("from_offset", "x")])).is_err());
        assert!(ReplayRequest::from_query(q(&[("from_offset", "1"), ("partitions", "0,-1")])).is_err());
    }
}
