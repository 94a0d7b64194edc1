//! tributary-writer's rate limits and back-pressure: a limit that holds and changes at
//! runtime, readiness while the ring is down, a slow cluster, SIGHUP reloads, adaptive rate.

use std::time::{Duration, Instant};

use harness::{eventually, free_port, metric, py_produce};

use crate::writer::{
    config_path, ctl_rate_limit, points, setup, setup_on, start_writer, wait_all_points, wait_written,
};

#[test]
fn writer_rate_limit_holds_and_changes_at_runtime() {
    let s = setup(1);
    let data = points(30, 200);
    py_produce(s.kafka.brokers(), &s.metrics, &data);
    let (rate, burst) = (400.0, 64.0);
    let admin = format!("127.0.0.1:{}", free_port());
    let mut writer = start_writer(&s, &admin, &["--rows-per-sec", "400", "--burst", "64"]);
    // Sample the ring's own row counter for 13 s. A window of 10 s or more may see at
    // most rate·Δt + burst. (Rows admitted just before a window land inside it, but once
    // the bucket is empty that is rate·latency, under burst while the ring answers within
    // burst/rate = 160 ms.) A shorter window is held to rate·(Δt + 0.25 s) + burst.
    // 6,000 rows at 400/s keep the writer busy past the sampling.
    let mut samples: Vec<(Instant, u64)> = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(13) {
        samples.push((Instant::now(), s.ring.total("rows_written")));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        samples.last().map_or(0, |s| s.1) > 0,
        "nothing written: {}",
        writer.log_text()
    );
    assert!(
        samples.last().map_or(0, |s| s.1) < data.len() as u64,
        "the writer must still be busy at the end of the sampling, or the bound proves nothing"
    );
    let long_windows = samples
        .iter()
        .enumerate()
        .flat_map(|(i, a)| samples[i + 1..].iter().map(move |b| b.0.duration_since(a.0)))
        .filter(|dt| *dt >= Duration::from_secs(10))
        .count();
    assert!(long_windows >= 100, "only {long_windows} windows of 10 s or more");
    for (i, a) in samples.iter().enumerate() {
        for b in &samples[i + 1..] {
            let dt = b.0.duration_since(a.0).as_secs_f64();
            let slack = if dt >= 10.0 { 0.0 } else { 0.25 };
            let bound = rate * (dt + slack) + burst;
            assert!(
                ((b.1 - a.1) as f64) <= bound,
                "{} rows in {dt:.2}s exceeds {bound:.0}",
                b.1 - a.1
            );
        }
    }
    // Raise the limit through the CLI: the writer speeds up without a restart.
    let before = s.ring.total("rows_written");
    ctl_rate_limit(&admin, 5000, 500);
    assert_eq!(
        metric(&admin, "tributary_writer_rate_limit_rows_per_sec"),
        Some(5000.0)
    );
    let t1 = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let gained = s.ring.total("rows_written") - before;
    let old_bound = rate * (t1.elapsed().as_secs_f64() + 0.25) + burst;
    assert!(
        gained as f64 > old_bound,
        "only {gained} rows after raising the limit (old bound {old_bound:.0})"
    );
    wait_written(&admin, data.len() as u64, &mut writer);
    assert!(metric(&admin, "tributary_writer_rate_limit_wait_seconds_total").unwrap_or(0.0) > 0.0);
    assert_eq!(writer.terminate(Duration::from_secs(60)), Some(0));
    assert_eq!(s.ring.count(&s.keyspace, "points"), data.len() as u64);
}

#[test]
fn writer_is_unready_while_the_ring_is_down_and_ready_again_after() {
    let s = setup_on(1, true);
    let admin = format!("127.0.0.1:{}", free_port());
    let writer = start_writer(&s, &admin, &[]);
    let readiness = |reason, secs| {
        if let Err(last) = harness::wait_readiness(&admin, reason, Duration::from_secs(secs)) {
            panic!("waited for {reason:?}, last {last:?}\n{}", writer.log_text());
        }
    };
    readiness(None, 60);
    // Every node refuses connections: the driver's pools empty and the writer says so.
    s.ring.faults(None, r#"{"down": true}"#);
    readiness(Some("no open connection to any node"), 60);
    assert_eq!(harness::admin_get(&admin, "/health/live").map(|r| r.0), Some(200));
    // Points that arrive meanwhile wait; nothing is lost.
    let data = points(6, 20);
    py_produce(s.kafka.brokers(), &s.metrics, &data);
    std::thread::sleep(Duration::from_secs(2));
    let still = harness::admin_get(&admin, "/health/ready");
    assert!(
        still.as_ref().is_some_and(|(status, _)| *status == 503),
        "{still:?}"
    );
    s.ring.faults(None, r#"{"down": false}"#);
    readiness(None, 60);
    wait_all_points(&s, data.len(), &writer);
}

#[test]
fn writer_pauses_for_a_slow_cluster_and_reloads_limits_on_sighup() {
    // The mock broker process: tansu 0.6 returns nothing for a fetch that starts inside a
    // record batch, which is where a resumed partition continues.
    let s = setup_on(1, true);
    let data = points(30, 40);
    py_produce(s.kafka.brokers(), &s.metrics, &data);
    // A slow ring and a small per-partition allowance: partitions must be paused rather
    // than read ahead without bound.
    s.ring.faults(None, r#"{"latency_ms": 200}"#);
    let file = config_path();
    let write_limits = |rows: u32| {
        std::fs::write(&file, format!("[limits]\nrows_per_sec = {rows}\nburst = 200\n[flow]\nmax_pending_per_partition = 40\n[batch]\nmax_rows = 8\n"))
            .expect("config");
    };
    write_limits(100_000);
    let admin = format!("127.0.0.1:{}", free_port());
    let mut writer = start_writer(&s, &admin, &["--config", file.to_str().expect("utf-8 path")]);
    let paused = eventually(Duration::from_secs(60), || {
        (metric(&admin, "tributary_writer_paused_partitions").unwrap_or(0.0) > 0.0).then_some(())
    });
    assert!(paused.is_some(), "no partition was paused: {}", writer.log_text());
    assert!(
        metric(&admin, "tributary_writer_pending_rows").unwrap_or(f64::MAX) <= 3.0 * 40.0 + 3.0 * 8.0,
        "pending rows stay bounded"
    );
    write_limits(1234);
    writer.signal("HUP");
    let reloaded = eventually(Duration::from_secs(30), || {
        (metric(&admin, "tributary_writer_rate_limit_rows_per_sec") == Some(1234.0)).then_some(())
    });
    assert!(
        reloaded.is_some(),
        "SIGHUP did not reload the limits: {}",
        writer.log_text()
    );
    s.ring.faults(None, r#"{"latency_ms": 0}"#);
    wait_written(&admin, data.len() as u64, &mut writer);
    assert_eq!(s.ring.count(&s.keyspace, "points"), data.len() as u64);
    assert_eq!(writer.terminate(Duration::from_secs(60)), Some(0));
}

#[test]
fn writer_adaptive_rate_backs_off_under_overload_and_climbs_back() {
    let s = setup(1);
    let data = points(30, 100);
    py_produce(s.kafka.brokers(), &s.metrics, &data);
    // Each node takes at most 200 rows/s and answers Overloaded beyond that, as a busy
    // Cassandra node does; the writer may send 20,000 rows/s.
    s.ring.faults(None, r#"{"max_rows_per_sec": 200}"#);
    let file = config_path();
    std::fs::write(
        &file,
        "[limits]\nrows_per_sec = 20000\nburst = 500\nadaptive = true\nadaptive_backoff = 0.5\nadaptive_increase = 2.0\nadaptive_interval = \"1s\"\n",
    )
    .expect("config");
    let admin = format!("127.0.0.1:{}", free_port());
    let mut writer = start_writer(&s, &admin, &["--config", file.to_str().expect("utf-8 path")]);
    let effective = || metric(&admin, "tributary_writer_rate_limit_effective_rows_per_sec");
    let backed_off = eventually(Duration::from_secs(60), || {
        effective().is_some_and(|r| r <= 5_000.0).then_some(())
    });
    assert!(
        backed_off.is_some(),
        "effective rate {:?} never came down: {}",
        effective(),
        writer.log_text()
    );
    assert!(metric(&admin, "tributary_writer_overload_signals_total").unwrap_or(0.0) > 0.0);
    assert_eq!(
        metric(&admin, "tributary_writer_rate_limit_rows_per_sec"),
        Some(20_000.0),
        "adaptation lowers the rate in force, not the configured limit"
    );
    // The cluster recovers: the rate climbs back to the configured limit.
    s.ring.faults(None, r#"{"max_rows_per_sec": 0}"#);
    let climbed = eventually(Duration::from_secs(60), || {
        effective().is_some_and(|r| r >= 20_000.0).then_some(())
    });
    assert!(
        climbed.is_some(),
        "effective rate {:?} did not climb back",
        effective()
    );
    wait_written(&admin, data.len() as u64, &mut writer);
    assert!(s.ring.total("throttled") > 0, "the ring did push back");
    assert_eq!(
        s.ring.count(&s.keyspace, "points"),
        data.len() as u64,
        "nothing lost"
    );
    assert_eq!(writer.terminate(Duration::from_secs(60)), Some(0));
}
