//! The writer's dead letters: records it cannot map and rows the cluster refuses for good,
//! with provenance and reason headers. Each is tracked like any output: the record's
//! place in its partition's ledger is acknowledged only once its dead letter is stored,
//! so nothing past it is committed before. Sends run in their own tasks, never in the
//! consume loop; a dead letter too large for the topic is cut until it fits, with its
//! original size in a header, so no record can stop its partition.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use scylla::value::CqlValue;
use tributary::kafka::polled::{Confirming, PolledProducer};
use tributary::kafka::{Backoff, headers};

use crate::metrics::WriterMetrics;
use crate::partitions::{Partitions, Slot};
use crate::rows::Row;

pub struct DeadLetters {
    producer: PolledProducer<Confirming>,
    topic: String,
    group: String,
    partitions: Arc<Partitions>,
    metrics: Arc<WriterMetrics>,
    in_flight: AtomicU64,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("topic", &self.topic)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl DeadLetters {
    pub fn new(
        producer: PolledProducer<Confirming>,
        topic: String,
        group: String,
        partitions: Arc<Partitions>,
        metrics: Arc<WriterMetrics>,
    ) -> Self {
        Self {
            producer,
            topic,
            group,
            partitions,
            metrics,
            in_flight: AtomicU64::new(0),
        }
    }

    /// Dead letters not yet stored.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A record that cannot become a row: sent unchanged.
    pub fn record(self: &Arc<Self>, slot: Slot, key: Option<&[u8]>, payload: Option<&[u8]>, reason: String) {
        let letter = Letter {
            key: key.map(<[u8]>::to_vec).unwrap_or_default(),
            payload: payload.map(<[u8]>::to_vec).unwrap_or_default(),
            reason,
        };
        self.spawn(slot, letter);
    }

    /// A row the cluster refused for good: sent as JSON (table and bound values).
    pub fn row(self: &Arc<Self>, slot: Slot, row: &Row, reason: String) {
        let key = match row.values.first() {
            Some(CqlValue::Text(s)) => s.clone().into_bytes(),
            _ => Vec::new(),
        };
        let letter = Letter {
            key,
            payload: row_json(row).into_bytes(),
            reason,
        };
        self.spawn(slot, letter);
    }

    fn spawn(self: &Arc<Self>, slot: Slot, letter: Letter) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(self.clone().deliver(slot, letter));
    }

    async fn deliver(self: Arc<Self>, slot: Slot, mut letter: Letter) {
        let (topic, partition) = (&slot.run.tp.0, slot.run.tp.1);
        let original = letter.key.len() + letter.payload.len();
        let mut backoff = Backoff::new();
        loop {
            if slot.run.is_cancelled() {
                // Revoked: the next owner reads the record again and dead-letters it.
                break;
            }
            let mut headers =
                headers::dead_letter(topic, &self.group, partition, slot.offset, &letter.reason);
            let size = letter.key.len() + letter.payload.len();
            if size < original {
                headers = headers.insert(Header {
                    key: headers::ORIGINAL_SIZE,
                    value: Some(original.to_string().as_bytes()),
                });
            }
            match self
                .producer
                .send(letter.record(&self.topic, headers), Duration::from_secs(30))
                .await
            {
                Ok(_) => {
                    self.metrics.dead_lettered.inc();
                    self.partitions.ack([&slot]);
                    break;
                }
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) if size > 0 => {
                    letter.halve();
                    tracing::warn!(topic = %topic, partition, offset = slot.offset, original, now = letter.key.len() + letter.payload.len(),
                        "dead letter too large for its topic; cut");
                }
                Err(e) => {
                    self.metrics.dead_letter_errors.inc();
                    let delay = backoff.next_delay();
                    tracing::warn!(topic = %topic, partition, offset = slot.offset, dead_letter_topic = %self.topic, error = %e, ?delay,
                        "cannot store a dead letter; its partition commits no further until it is stored; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Letter {
    key: Vec<u8>,
    payload: Vec<u8>,
    reason: String,
}

impl Letter {
    fn record<'a>(&'a self, topic: &'a str, headers: OwnedHeaders) -> BaseRecord<'a, [u8], [u8]> {
        let mut r = BaseRecord::to(topic).headers(headers);
        if !self.key.is_empty() {
            r = r.key(&self.key[..]);
        }
        if !self.payload.is_empty() {
            r = r.payload(&self.payload[..]);
        }
        r
    }

    /// Halves the larger of the key and the payload.
    fn halve(&mut self) {
        let part = if self.payload.len() >= self.key.len() {
            &mut self.payload
        } else {
            &mut self.key
        };
        part.truncate(part.len() / 2);
    }
}

/// `{"table": …, "values": […]}` with the values as JSON (non-finite doubles as strings).
pub fn row_json(row: &Row) -> String {
    let values: Vec<serde_json::Value> = row
        .values
        .iter()
        .map(|v| match v {
            CqlValue::Text(s) => serde_json::Value::from(s.as_str()),
            CqlValue::BigInt(n) => serde_json::Value::from(*n),
            CqlValue::Int(n) => serde_json::Value::from(*n),
            CqlValue::Timestamp(t) => serde_json::Value::from(t.0),
            CqlValue::Double(d) if d.is_finite() => serde_json::Value::from(*d),
            other => serde_json::Value::from(format!("{other:?}")),
        })
        .collect();
    serde_json::json!({ "table": row.table.table_name(), "values": values }).to_string()
}

#[cfg(test)]
mod tests {
    use scylla::value::CqlTimestamp;

    use super::*;
    use crate::schema::TableKind;

    #[test]
    fn a_rejected_row_is_valid_json_whatever_its_text_holds() {
        let row = Row {
            table: TableKind::Rollups("5m".into()),
            values: vec![
                CqlValue::Text("web-1/\"cpu\"\n\\x".into()),
                CqlValue::BigInt(-3),
                CqlValue::Timestamp(CqlTimestamp(1_700_000_000_000)),
                CqlValue::Double(f64::NAN),
                CqlValue::Double(0.1),
            ],
            bytes: 0,
        };
        let v: serde_json::Value = serde_json::from_str(&row_json(&row)).expect("valid JSON");
        assert_eq!(v["table"], "rollups_5m");
        assert_eq!(v["values"][0], "web-1/\"cpu\"\n\\x");
        assert_eq!(v["values"][2], 1_700_000_000_000i64);
        assert_eq!(v["values"][3], "Double(NaN)");
        assert_eq!(v["values"][4], 0.1);
    }

    #[test]
    fn halving_cuts_the_larger_part_until_nothing_is_left() {
        let mut l = Letter {
            key: vec![1; 10],
            payload: vec![2; 100],
            reason: String::new(),
        };
        l.halve();
        assert_eq!((l.key.len(), l.payload.len()), (10, 50));
        for _ in 0..20 {
            l.halve();
        }
        assert_eq!((l.key.len(), l.payload.len()), (0, 0));
    }
}
