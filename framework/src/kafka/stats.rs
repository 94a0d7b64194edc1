//! librdkafka's statistics, emitted every `statistics.interval.ms` (5 s for the group
//! consumers): whether any broker is connected (readiness) and each partition's consumer
//! lag (a gauge). Read from the JSON directly: only three fields are needed, and a strict
//! decoding of the whole document would break on fields a newer librdkafka adds.

use serde_json::Value;

/// How often the group consumers report statistics.
pub const INTERVAL_MS: &str = "5000";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientStats {
    /// At least one broker connection is up (librdkafka's internal broker aside).
    pub broker_up: bool,
    /// (topic, partition, consumer lag in records) for partitions whose lag is known:
    /// the high watermark minus the consumer's position (wrong on brokers that report a
    /// wrong high watermark, e.g. tansu 0.6).
    pub lags: Vec<(String, i32, i64)>,
}

/// Reads the statistics JSON; `None` if it is not what librdkafka emits.
pub fn parse(raw: &[u8]) -> Option<ClientStats> {
    let v: Value = serde_json::from_slice(raw).ok()?;
    let broker_up = v["brokers"]
        .as_object()?
        .values()
        .any(|b| b["source"] != "internal" && b["state"] == "UP");
    let mut lags = Vec::new();
    for (topic, t) in v["topics"].as_object().into_iter().flatten() {
        for (partition, p) in t["partitions"].as_object().into_iter().flatten() {
            // Partition -1 is librdkafka's "unassigned" queue; -1 lag means unknown.
            let (Ok(partition), Some(lag)) = (partition.parse::<i32>(), p["consumer_lag"].as_i64()) else {
                continue;
            };
            if partition >= 0 && lag >= 0 {
                lags.push((topic.clone(), partition, lag));
            }
        }
    }
    Some(ClientStats { broker_up, lags })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(state: &str) -> String {
        format!(
            r#"{{"name": "c#consumer-1", "type": "consumer",
                "brokers": {{
                    ":0/internal": {{"name": ":0/internal", "nodeid": -1, "source": "internal", "state": "UP"}},
                    "127.0.0.1:9092/1": {{"name": "127.0.0.1:9092/1", "nodeid": 1, "source": "learned", "state": "{state}"}}
                }},
                "topics": {{"metrics": {{"partitions": {{
                    "0": {{"partition": 0, "consumer_lag": 42}},
                    "1": {{"partition": 1, "consumer_lag": -1}},
                    "-1": {{"partition": -1, "consumer_lag": 7}}
                }}}}}}}}"#
        )
    }

    #[test]
    fn a_broker_is_up_only_if_a_real_connection_is() {
        let up = parse(doc("UP").as_bytes()).expect("stats");
        assert!(up.broker_up);
        assert_eq!(
            up.lags,
            vec![("metrics".to_owned(), 0, 42)],
            "unknown lags and partition -1 left out"
        );
        for state in ["DOWN", "CONNECT", "TRY_CONNECT", "INIT"] {
            let down = parse(doc(state).as_bytes()).expect("stats");
            assert!(!down.broker_up, "{state}: the internal broker does not count");
        }
        assert_eq!(parse(b"not json"), None);
        assert_eq!(parse(b"{}"), None, "no brokers object");
    }
}
