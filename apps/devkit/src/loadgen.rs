//! Load generator: N series of noisy values with event-time jitter and injected step
//! changes, deterministic for a seed, produced to Kafka keyed by series.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tributary::codec::{self, Format};
use tributary::record::RawPoint;

/// What to generate.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub series: usize,
    /// Points per series.
    pub points: u64,
    /// Target records per second; 0 = as fast as possible.
    pub rate: u64,
    /// Stop after this long even if points remain.
    pub duration: Option<Duration>,
    /// Event time of the first point, epoch ms.
    pub start_ms: i64,
    /// Event-time distance between two points of a series.
    pub interval_ms: i64,
    /// Each point's timestamp moves back by up to this much (out-of-order arrival).
    pub jitter_ms: i64,
    /// Fraction of series (0..=1) that get one step change.
    pub anomaly_fraction: f64,
    /// Step size in standard deviations of the series' noise.
    pub step_sigma: f64,
    pub seed: u64,
    pub format: Format,
}

impl Default for LoadSpec {
    fn default() -> Self {
        Self {
            series: 1000,
            points: 1000,
            rate: 0,
            duration: None,
            start_ms: 1_732_320_000_000,
            interval_ms: 10_000,
            jitter_ms: 5_000,
            anomaly_fraction: 0.01,
            step_sigma: 8.0,
            seed: 42,
            format: Format::Json,
        }
    }
}

/// A step injected into one series.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectedStep {
    pub series: String,
    /// Event time of the first point after the step (before jitter).
    pub at_ms: i64,
    pub size: f64,
}

/// What was produced.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub records: u64,
    pub elapsed: Duration,
    pub steps: Vec<InjectedStep>,
}

/// Small deterministic PRNG (xorshift64*), so the generator needs no RNG crate.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Approximately standard normal (Irwin–Hall with 12 terms).
    pub fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.unit()).sum::<f64>() - 6.0
    }
}

/// One series' shape.
#[derive(Debug, Clone)]
pub struct SeriesModel {
    pub name: String,
    pub level: f64,
    pub sigma: f64,
    pub step: Option<(u64, f64)>,
}

/// The series a spec describes.
pub fn series_models(spec: &LoadSpec) -> Vec<SeriesModel> {
    let mut rng = Rng::new(spec.seed);
    let metrics = ["cpu.user", "cpu.system", "mem.used", "disk.io", "net.rx"];
    (0..spec.series)
        .map(|i| {
            let name = format!("node-{}/{}", i / metrics.len(), metrics[i % metrics.len()]);
            let level = 10.0 + rng.unit() * 90.0;
            let sigma = 0.5 + rng.unit() * 2.0;
            let step = (rng.unit() < spec.anomaly_fraction && spec.points > 100).then(|| {
                let at = spec.points / 2 + rng.next_u64() % (spec.points / 4);
                let sign = if rng.unit() < 0.5 { -1.0 } else { 1.0 };
                (at, sign * spec.step_sigma * sigma)
            });
            SeriesModel {
                name,
                level,
                sigma,
                step,
            }
        })
        .collect()
}

/// Calls `emit(series, ts, value)` for every point in production order: time step by
/// time step, every series once per step.
pub fn generate(spec: &LoadSpec, mut emit: impl FnMut(&str, i64, f64) -> bool) -> Vec<InjectedStep> {
    let models = series_models(spec);
    let mut rng = Rng::new(spec.seed ^ 0xA5A5_A5A5);
    'outer: for i in 0..spec.points {
        let nominal = spec.start_ms + i as i64 * spec.interval_ms;
        for m in &models {
            let jitter = if spec.jitter_ms > 0 {
                (rng.next_u64() % spec.jitter_ms as u64) as i64
            } else {
                0
            };
            let shift = m.step.filter(|(at, _)| i >= *at).map_or(0.0, |(_, s)| s);
            let value = m.level + shift + m.sigma * rng.normal();
            if !emit(&m.name, nominal - jitter, value) {
                break 'outer;
            }
        }
    }
    models
        .iter()
        .filter_map(|m| {
            m.step.map(|(at, size)| InjectedStep {
                series: m.name.clone(),
                at_ms: spec.start_ms + at as i64 * spec.interval_ms,
                size,
            })
        })
        .collect()
}

/// Produces the spec's points to `topic`, paced to `spec.rate`.
pub fn produce(brokers: &str, topic: &str, spec: &LoadSpec) -> Result<LoadReport, KafkaError> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .set("enable.idempotence", "true")
        .create()?;
    let started = Instant::now();
    let mut records = 0u64;
    let mut buf = Vec::with_capacity(128);
    let mut failure = None;
    let steps = generate(spec, |series, ts, value| {
        if let Some(d) = spec.duration
            && records.is_multiple_of(1024)
            && started.elapsed() >= d
        {
            return false;
        }
        if spec.rate > 0 && records.is_multiple_of(256) {
            let due = Duration::from_secs_f64(records as f64 / spec.rate as f64);
            let elapsed = started.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
        let point = RawPoint {
            series: series.into(),
            ts,
            value,
        };
        codec::encode_point(spec.format, &point, &mut buf);
        let mut record = BaseRecord::<str, [u8]>::to(topic).key(series).payload(&buf);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    producer.poll(Duration::from_millis(5));
                    record = back;
                }
                Err((e, _)) => {
                    failure = Some(e);
                    return false;
                }
            }
        }
        records += 1;
        if records.is_multiple_of(1000) {
            producer.poll(Duration::ZERO);
        }
        true
    });
    if let Some(e) = failure {
        return Err(e);
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(LoadReport {
        records,
        elapsed: started.elapsed(),
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_complete() {
        let spec = LoadSpec {
            series: 20,
            points: 200,
            anomaly_fraction: 0.5,
            ..LoadSpec::default()
        };
        let mut a = Vec::new();
        let steps_a = generate(&spec, |s, t, v| {
            a.push((s.to_owned(), t, v));
            true
        });
        let mut b = Vec::new();
        let steps_b = generate(&spec, |s, t, v| {
            b.push((s.to_owned(), t, v));
            true
        });
        assert_eq!(a, b);
        assert_eq!(steps_a, steps_b);
        assert_eq!(a.len(), 20 * 200);
        assert!(!steps_a.is_empty(), "half the series should get a step");
        for (_, t, _) in &a {
            assert!(*t > spec.start_ms - spec.jitter_ms);
        }
    }
}
