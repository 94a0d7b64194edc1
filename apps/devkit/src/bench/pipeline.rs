//! The pipeline alone, on one thread and without Kafka: the per-core ceiling.

use std::io::Write;
use std::time::Instant;

use tributary::codec::{self, Format};
use tributary::config::{AppKind, Config};
use tributary::pipeline::{Pipeline, VecSink};
use tributary::record::RawPoint;

use super::{BenchOptions, spec};
use crate::figures::Figures;
use crate::loadgen;

/// Decode + rollup + CUSUM on one thread, no Kafka: the per-core ceiling.
pub(super) fn pipeline_only(opts: &BenchOptions, out: &mut impl Write, figures: &mut Figures) {
    let spec = spec(opts);
    let mut records: Vec<(String, Vec<u8>)> = Vec::with_capacity(opts.records as usize);
    loadgen::generate(&spec, |s, ts, value| {
        let mut buf = Vec::new();
        codec::encode_point(
            Format::Json,
            &RawPoint {
                series: s.into(),
                ts,
                value,
            },
            &mut buf,
        );
        records.push((s.to_owned(), buf));
        true
    });
    let mut config = Config::defaults(AppKind::Rollup);
    config.cusum.enabled = true;
    let Ok(full) = config.pipeline_spec() else { return };
    let mut decode_only = 0usize;
    let t = Instant::now();
    for (k, v) in &records {
        decode_only +=
            codec::decode_point(Format::Json, Some(k.as_bytes()), Some(v)).map_or(0, |p| p.series.len());
    }
    let decode_rate = records.len() as f64 / t.elapsed().as_secs_f64();
    let mut pipeline = Pipeline::new(&full);
    let mut sink = VecSink::default();
    let t = Instant::now();
    for (i, (k, v)) in records.iter().enumerate() {
        pipeline.process(Some(k.as_bytes()), Some(v), i as i64, None, &mut sink);
        if sink.rollups.len() > 100_000 {
            sink.rollups.clear();
        }
    }
    let full_rate = records.len() as f64 / t.elapsed().as_secs_f64();
    say!(
        out,
        "pipeline only (1 thread, no Kafka, {} records, {} series):",
        records.len(),
        opts.series
    );
    say!(
        out,
        "  JSON decode                      {:>10.0} records/s  (checksum {decode_only})",
        decode_rate
    );
    say!(
        out,
        "  decode + 5m/1h/1d rollup + CUSUM {:>10.0} records/s",
        full_rate
    );
    figures.add("pipeline: JSON decode, 1 thread", "records/s", decode_rate);
    figures.add(
        "pipeline: decode + rollup + CUSUM, 1 thread",
        "records/s",
        full_rate,
    );
}
