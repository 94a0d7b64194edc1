//! A partition's outputs produced to Kafka: rollups and anomalies to the source's
//! partition number, dead letters and late records with provenance headers, each numbered
//! for the partition's ledger; a full producer queue makes the worker wait, never buffer.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::BaseRecord;

use super::ledger::Ledger;
use super::producer::DeliveryTag;
use super::worker::WorkerShared;
use crate::codec::{self, DecodeError};
use crate::kafka::headers;
use crate::pipeline::OutputSink;
use crate::record::{Anomaly, RollupRow};

/// Produces a pipeline's outputs to Kafka, numbering them for the ledger.
pub(super) struct KafkaSink<'a> {
    pub(super) shared: &'a WorkerShared,
    pub(super) partition: i32,
    pub(super) ledger: &'a Arc<Ledger>,
    pub(super) produced: &'a mut u64,
    pub(super) buf: &'a mut Vec<u8>,
    /// The source offset being processed (or the next one, for flushes).
    pub(super) trigger: i64,
}

impl KafkaSink<'_> {
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
        rollup_trigger: Option<i64>,
    ) {
        let seq = *self.produced;
        *self.produced += 1;
        let tag = Box::new(DeliveryTag {
            ledger: self.ledger.clone(),
            seq,
            rollup_trigger,
        });
        let mut record: BaseRecord<'_, [u8], [u8], Box<DeliveryTag>> =
            BaseRecord::with_opaque_to(topic, tag).partition(partition);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        let mut waited = false;
        loop {
            match self.shared.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The producer queue is bounded: wait for deliveries instead of buffering.
                    if !waited {
                        self.shared.metrics.producer_queue_full_waits.inc_by(1);
                        waited = true;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                    record = back;
                }
                Err((e, _)) => {
                    tracing::error!(topic, partition, error = %e, "cannot produce output");
                    self.shared.metrics.output_errors.inc_by(1);
                    self.ledger.ack(seq, Err(e.to_string()));
                    return;
                }
            }
        }
    }
}

impl OutputSink for KafkaSink<'_> {
    fn rollup(&mut self, series: &str, resolution: &str, row: &RollupRow) {
        let mut buf = std::mem::take(self.buf);
        codec::encode_rollup(self.shared.outputs.format, series, resolution, row, &mut buf);
        let shared = self.shared;
        self.send(
            &shared.outputs.rollups,
            self.partition,
            Some(series.as_bytes()),
            Some(&buf),
            Some(headers::record_format()),
            Some(self.trigger),
        );
        *self.buf = buf;
    }

    fn anomaly(&mut self, series: &str, anomaly: &Anomaly) {
        let mut buf = std::mem::take(self.buf);
        codec::encode_anomaly(self.shared.outputs.format, series, anomaly, &mut buf);
        let shared = self.shared;
        self.send(
            &shared.outputs.anomalies,
            self.partition,
            Some(series.as_bytes()),
            Some(&buf),
            Some(headers::record_format()),
            None,
        );
        *self.buf = buf;
    }

    fn dead_letter(&mut self, error: &DecodeError, key: Option<&[u8]>, payload: Option<&[u8]>, offset: i64) {
        let outputs = &self.shared.outputs;
        let shared = self.shared;
        let reason = error.to_string();
        tracing::debug!(topic = %outputs.input, partition = self.partition, offset, reason, "dead-lettered record");
        let headers = headers::dead_letter(&outputs.input, &outputs.group, self.partition, offset, &reason);
        let (key, payload, headers) =
            headers::fit_dead_letter(key, payload, outputs.dead_letter_max_bytes, headers);
        let partition = self.partition % outputs.dead_letter_partitions.max(1);
        self.send(
            &shared.outputs.dead_letter,
            partition,
            key,
            payload,
            Some(headers),
            None,
        );
    }

    fn late(&mut self, key: Option<&[u8]>, payload: Option<&[u8]>, offset: i64) {
        let shared = self.shared;
        if let Some((topic, partitions)) = &shared.outputs.late {
            let headers = headers::provenance(
                &shared.outputs.input,
                &shared.outputs.group,
                self.partition,
                offset,
            );
            self.send(
                topic,
                self.partition % (*partitions).max(1),
                key,
                payload,
                Some(headers),
                None,
            );
        }
    }
}
