//! One rate budget for a group of writers (`limits.scope = "group"`): two tributary-writer
//! processes on tansu and the emulated ring, partitions of uneven sizes, a `ctl` change
//! made at one member, then one member leaving. The ring's own row counter is the judge.

use std::time::{Duration, Instant};

use harness::{Outgoing, Process, eventually, free_port, metric, py_produce};
use serde_json::Value;

use crate::writer::{Setup, ctl_rate_limit, setup_on, start_writer_env};

/// Rows on metrics partitions 0, 1 and 2: uneven, and each enough to keep its owner busy
/// for the whole test.
const PARTITION_ROWS: [usize; 3] = [44_000, 60_000, 52_000];

fn uneven_points() -> Vec<Outgoing> {
    let mut out = Vec::new();
    for (partition, rows) in PARTITION_ROWS.iter().enumerate() {
        for i in 0..*rows {
            let name = format!("host-{partition}-{}/cpu", i % 50);
            out.push(Outgoing {
                key: Some(name.clone()),
                value: Some(harness::point_json(
                    &name,
                    1_732_320_000_000 + i as i64 * 1_000,
                    i as f64 / 3.0,
                )),
                partition: Some(partition as i32),
            });
        }
    }
    out
}

fn status(admin: &str) -> Option<Value> {
    let (code, body) = harness::admin_get(admin, "/status")?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

fn owned(admin: &str) -> u64 {
    status(admin).map_or(0, |s| s["group"]["partitions_owned"].as_u64().unwrap_or(0))
}

/// The ring's row counter every 100 ms for 13 s; then every window of 10 s or more must
/// hold at most `rate·Δt + burst` rows and at least 75 % of `rate·Δt` over the time rows
/// flowed. The lower bound tells the group's rate from a member left at its share of it
/// (half, with two). Stretches of 300 ms or more without a single row are left out of
/// it: at these rates the limiter lets a batch (at most 32 rows) through every 20-60 ms,
/// so such a stretch is not its doing. On a loaded 2-core machine they happen (CI: 13,516
/// rows in 10.03 s at 1500/s, flat for a second; here, with one core kept busy, 11,609 in
/// 10.35 s, flat for 2 s while tansu made the writer seek back after a hand-over). More
/// than 4 s of them in a window still fails.
fn holds_the_budget(s: &Setup, rate: f64, burst: f64, writers: &[&Process]) {
    let mut samples: Vec<(Instant, u64)> = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(13) {
        samples.push((Instant::now(), s.ring.total("rows_written")));
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs = || {
        writers
            .iter()
            .map(|w| w.log_text())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    let mut windows = 0;
    for i in 0..samples.len() {
        for j in i + 1..samples.len() {
            let (a, b) = (samples[i], samples[j]);
            let dt = b.0.duration_since(a.0).as_secs_f64();
            if dt < 10.0 {
                continue;
            }
            windows += 1;
            let rows = (b.1 - a.1) as f64;
            assert!(
                rows <= rate * dt + burst,
                "{rows} rows in {dt:.2} s exceeds {rate}/s + {burst}"
            );
            let stalled = stalled_seconds(&samples[i..=j]);
            assert!(
                stalled <= 4.0 && rows >= 0.75 * rate * (dt - stalled),
                "{rows} rows in {dt:.2} s ({stalled:.1} s of it without a row) is under 75 % of \
                 {rate}/s; per second: {:?}\n{}",
                samples.iter().step_by(10).map(|s| s.1).collect::<Vec<_>>(),
                logs()
            );
        }
    }
    assert!(windows >= 100, "only {windows} windows of 10 s or more");
}

/// Seconds of `samples` inside runs of 300 ms or more in which the counter did not move.
fn stalled_seconds(samples: &[(Instant, u64)]) -> f64 {
    let mut stalled = 0.0;
    let mut run_start = 0;
    for j in 1..=samples.len() {
        if j < samples.len() && samples[j].1 == samples[run_start].1 {
            continue;
        }
        let run = samples[j - 1]
            .0
            .duration_since(samples[run_start].0)
            .as_secs_f64();
        if run >= 0.3 {
            stalled += run;
        }
        run_start = j;
    }
    stalled
}

#[test]
fn writers_sharing_a_group_budget_send_it_together_before_and_after_one_leaves() {
    let s = setup_on(1, false);
    let data = uneven_points();
    py_produce(s.kafka.brokers(), &s.metrics, &data);
    let env = [("TRIBUTARY_LIMITS_SCOPE", "group")];
    let limits = ["--rows-per-sec", "1000", "--burst", "400"];
    let (a, b) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let first = start_writer_env(&s, &a, &limits, &env);
    assert!(
        eventually(Duration::from_secs(60), || (owned(&a) == 9).then_some(())).is_some(),
        "{}",
        first.log_text()
    );
    let mut second = start_writer_env(&s, &b, &limits, &env);
    let shared = eventually(Duration::from_secs(60), || {
        (owned(&a) > 0 && owned(&b) > 0 && owned(&a) + owned(&b) == 9).then_some(())
    });
    assert!(
        shared.is_some(),
        "{}\n---\n{}",
        first.log_text(),
        second.log_text()
    );
    let member_rates = || {
        metric(&a, "tributary_writer_rate_limit_rows_per_sec").unwrap_or(0.0)
            + metric(&b, "tributary_writer_rate_limit_rows_per_sec").unwrap_or(0.0)
    };
    assert!(
        member_rates() <= 1000.0,
        "members' shares add up to {}",
        member_rates()
    );
    holds_the_budget(&s, 1000.0, 400.0, &[&first, &second]);

    // A change at one member reaches the other through the group's limit topic.
    ctl_rate_limit(&a, 1500, 400);
    let followed = eventually(Duration::from_secs(5), || {
        status(&b)
            .filter(|st| st["group"]["rows_per_sec"] == 1500)
            .map(|_| ())
    });
    assert!(followed.is_some(), "{:?}\n{}", status(&b), second.log_text());
    holds_the_budget(&s, 1500.0, 400.0, &[&first, &second]);

    // One member leaves: the other takes every partition and the whole budget.
    assert_eq!(
        second.terminate(Duration::from_secs(60)),
        Some(0),
        "{}",
        second.log_text()
    );
    assert!(
        eventually(Duration::from_secs(60), || (owned(&a) == 9).then_some(())).is_some(),
        "{}",
        first.log_text()
    );
    assert_eq!(
        metric(&a, "tributary_writer_rate_limit_rows_per_sec"),
        Some(1500.0)
    );
    holds_the_budget(&s, 1500.0, 400.0, &[&first]);
    assert!(
        s.ring.total("rows_written") < data.len() as u64,
        "the writers must still be busy at the end, or the lower bound proves nothing"
    );
}
