//! Faults through real processes, each run on a new seed (printed; set
//! `E2E_SEED` to rerun one) and ending with an exact comparison against the
//! oracle.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harness::{Tansu, create_topics, free_port, py_produce};

use crate::dataset;
use crate::replay::{PARTITIONS, bed_on, split};

fn seed() -> u64 {
    let seed = std::env::var("E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("seed {seed} (E2E_SEED={seed} reruns this case)");
    seed
}

#[test]
#[ignore = "finds a bug not fixed yet (issue 12): in 2 of 4 runs, after a broker restart with outputs in flight, the group's session times out, the partitions' resumes seek back to offset 0 and some never commit past where they stopped (e.g. 8,725 of 26,212) within 120 s; run with --ignored"]
fn the_rollup_app_rides_out_three_broker_restarts_mid_stream() {
    let seed = seed();
    let mut rng = seed | 1;
    let mut next = move |below: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % below
    };
    let mut tansu = Tansu::start_stored();
    let bed = bed_on(Box::new(()), tansu.brokers.clone());
    create_topics(&bed.brokers, &[(&bed.input, PARTITIONS)]);
    let series = 48;
    let data = dataset::build(series, 12, PARTITIONS, seed);
    let (body, sentinels) = split(&data, series);
    let admin = format!("127.0.0.1:{}", free_port());
    let mut app = bed.start(&admin, &bed.state_dir);
    if let Err(last) = harness::wait_readiness(&admin, None, Duration::from_secs(120)) {
        panic!("never ready: {last:?}\n{}", app.log_text());
    }
    // Three times: records stream in, and once the app is working through them (outputs
    // in flight) the broker stops for 1-4 s; the producer rides out the outage itself.
    let consumed = || harness::metric(&admin, "tributary_records_consumed_total").unwrap_or(0.0) as u64;
    for (restart, chunk) in body.chunks(body.len() / 3 + 1).enumerate() {
        let before = consumed();
        let producing = {
            let (brokers, input, chunk) = (bed.brokers.clone(), bed.input.clone(), chunk.to_vec());
            std::thread::spawn(move || py_produce(&brokers, &input, &chunk))
        };
        let threshold = before + 500 + next(2_000);
        let midway = harness::eventually(Duration::from_secs(60), || {
            (consumed() >= threshold).then_some(())
        });
        assert!(midway.is_some(), "nothing consumed:\n{}", app.log_text());
        tansu.stop();
        std::thread::sleep(Duration::from_millis(1_000 + next(3_000)));
        tansu.start_again();
        producing.join().expect("producer");
        assert!(
            app.is_running(),
            "stopped by restart {}:\n{}",
            restart + 1,
            app.log_text()
        );
    }
    if let Err(last) = harness::wait_readiness(&admin, None, Duration::from_secs(120)) {
        panic!("not ready after the restarts: {last:?}\n{}", app.log_text());
    }
    py_produce(&bed.brokers, &bed.input, sentinels);
    bed.finish(&data, &mut app);
}
