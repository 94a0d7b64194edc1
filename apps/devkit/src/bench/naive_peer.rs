//! The naive per-event detector peer, in the style of Instaclustr's Anomalia Machina:
//! every event is written to Cassandra, the series' last `window` events are read back,
//! and CUSUM runs over them. Tributary keeps that state in memory instead; this peer shows
//! what the read-back design costs on the same input. Benchmarks only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::prepared::PreparedStatement;
use tributary::codec::{self, Format};
use tributary::cusum::{CusumParams, CusumState};

use super::clock::{FirstCount, Timed};

/// The command line of `tributary-dev naive-peer`.
#[derive(Debug, Clone, clap::Args)]
pub struct NaiveOptions {
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    #[arg(long, default_value = "metrics")]
    pub topic: String,
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:9042")]
    pub contact_points: Vec<String>,
    /// Events to check, from the topic's start.
    #[arg(long)]
    pub records: u64,
    /// Events read back per check (Anomalia Machina: 50); at least 2.
    #[arg(long, default_value_t = 50)]
    pub window: usize,
    /// Checks in flight at once (its consumer fed a pool of Cassandra sessions).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

/// What a run measured, with the detector's alarms.
#[derive(Debug, Clone, Copy)]
pub struct NaiveReport {
    pub timed: Timed,
    pub checked: u64,
    pub anomalies: u64,
}

struct Statements {
    session: Session,
    insert: PreparedStatement,
    recent: PreparedStatement,
}

/// Consumes `records` events from the topic's start and checks each one.
pub fn run(opts: &NaiveOptions) -> anyhow::Result<NaiveReport> {
    anyhow::ensure!(opts.window >= 2, "--window: at least 2 events are read back");
    anyhow::ensure!(opts.concurrency >= 1, "--concurrency: at least 1");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(detect(opts))
}

async fn connect(opts: &NaiveOptions) -> anyhow::Result<Statements> {
    let session = SessionBuilder::new()
        .known_nodes(&opts.contact_points)
        .build()
        .await?;
    session
        .query_unpaged(
            "CREATE KEYSPACE IF NOT EXISTS naive WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
            (),
        )
        .await?;
    // Newest first, so "the last N events" is a LIMIT (as in Anomalia Machina).
    session
        .query_unpaged(
            "CREATE TABLE IF NOT EXISTS naive.events (series text, ts bigint, value double, \
             PRIMARY KEY (series, ts)) WITH CLUSTERING ORDER BY (ts DESC)",
            (),
        )
        .await?;
    session.await_schema_agreement().await?;
    let insert = session
        .prepare("INSERT INTO naive.events (series, ts, value) VALUES (?, ?, ?)")
        .await?;
    let recent = session
        .prepare(format!(
            "SELECT value FROM naive.events WHERE series = ? LIMIT {}",
            opts.window
        ))
        .await?;
    Ok(Statements {
        session,
        insert,
        recent,
    })
}

async fn detect(opts: &NaiveOptions) -> anyhow::Result<NaiveReport> {
    let statements = Arc::new(connect(opts).await?);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, i64, f64)>(4096);
    let consumer = {
        let (brokers, topic, records) = (opts.brokers.clone(), opts.topic.clone(), opts.records);
        std::thread::Builder::new()
            .name("naive-consume".into())
            .spawn(move || consume(&brokers, &topic, records, &tx))?
    };
    let done = Arc::new(AtomicU64::new(0));
    let checked = Arc::new(AtomicU64::new(0));
    let anomalies = Arc::new(AtomicU64::new(0));
    let permits = Arc::new(tokio::sync::Semaphore::new(opts.concurrency));
    let failures = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = {
        let (done, finished) = (done.clone(), finished.clone());
        tokio::spawn(async move {
            let mut clock = FirstCount::new();
            while !finished.load(Ordering::Acquire) {
                clock.see(done.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            clock.timed(done.load(Ordering::Relaxed))
        })
    };
    let window = opts.window;
    while let Some((series, ts, value)) = rx.recv().await {
        let permit = permits.clone().acquire_owned().await?;
        let (statements, done, checked, anomalies, failures) = (
            statements.clone(),
            done.clone(),
            checked.clone(),
            anomalies.clone(),
            failures.clone(),
        );
        tokio::spawn(async move {
            match check(&statements, &series, ts, value, window).await {
                Ok(None) => {}
                Ok(Some(alarm)) => {
                    checked.fetch_add(1, Ordering::Relaxed);
                    anomalies.fetch_add(u64::from(alarm), Ordering::Relaxed);
                }
                Err(e) => {
                    if failures.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::warn!(error = %e, "a write or read-back failed");
                    }
                }
            }
            done.fetch_add(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    // Every check has finished once all permits are back.
    let _all = permits
        .acquire_many(opts.concurrency.min(u32::MAX as usize) as u32)
        .await?;
    finished.store(true, Ordering::Release);
    let timed = ticker.await?;
    consumer
        .join()
        .map_err(|_| anyhow::anyhow!("the consumer thread panicked"))??;
    let total = done.load(Ordering::Relaxed);
    anyhow::ensure!(
        total == opts.records,
        "checked {total} of {} events",
        opts.records
    );
    let failed = failures.load(Ordering::Relaxed);
    anyhow::ensure!(failed == 0, "{failed} writes or read-backs failed");
    Ok(NaiveReport {
        timed,
        checked: checked.load(Ordering::Relaxed),
        anomalies: anomalies.load(Ordering::Relaxed),
    })
}

/// Writes the event, reads the series' last `window` events back and runs CUSUM over them
/// oldest first. `None` while fewer than `window` are stored.
async fn check(
    s: &Statements,
    series: &str,
    ts: i64,
    value: f64,
    window: usize,
) -> anyhow::Result<Option<bool>> {
    s.session.execute_unpaged(&s.insert, (series, ts, value)).await?;
    let rows = s
        .session
        .execute_unpaged(&s.recent, (series,))
        .await?
        .into_rows_result()?;
    let mut values = Vec::with_capacity(window);
    for row in rows.rows::<(f64,)>()? {
        values.push(row?.0);
    }
    if values.len() < window {
        return Ok(None);
    }
    // The older half is the baseline; an alarm in the newer half flags the event.
    let params = CusumParams {
        warmup: (window / 2) as u64,
        ..CusumParams::default()
    };
    let mut state = CusumState::default();
    let mut alarm = false;
    for v in values.iter().rev() {
        alarm |= state.update(*v, &params).is_some();
    }
    Ok(Some(alarm))
}

/// Reads `records` events from the topic's start and hands them on decoded.
fn consume(
    brokers: &str,
    topic: &str,
    records: u64,
    tx: &tokio::sync::mpsc::Sender<(String, i64, f64)>,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("naive-peer-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    let started = Instant::now();
    let mut n = 0;
    while n < records && started.elapsed() < Duration::from_secs(1800) {
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m?;
        n += 1;
        match codec::decode_point(Format::Json, m.key(), m.payload()) {
            Ok(p) => {
                if tx.blocking_send((p.series.into_owned(), p.ts, p.value)).is_err() {
                    break;
                }
            }
            Err(e) => anyhow::bail!("record {n} does not decode: {e}"),
        }
    }
    Ok(())
}
