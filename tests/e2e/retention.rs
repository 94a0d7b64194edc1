//! A restart that needs records the broker no longer holds: tansu on sqlite storage
//! deletes records older than a topic's `retention.ms` when it starts (its maintenance
//! runs at start-up, then every ten minutes), as a Kafka broker's retention would.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harness::{
    Outgoing, Tansu, create_topics_configured, eventually, free_port, metric, py_consume, py_produce,
};

use crate::dataset::{self, Duplicates};
use crate::rollup_bed::{PARTITIONS, bed_on, scratch, split, stop};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[test]
fn a_rebuild_whose_records_are_gone_says_so_and_emits_no_partial_window() {
    let mut tansu = Tansu::start_stored();
    let bed = bed_on(Box::new(()), tansu.brokers.clone());
    let hour = "3600000";
    create_topics_configured(
        &bed.brokers,
        &[(&bed.input, PARTITIONS)],
        &[("cleanup.policy", "delete"), ("retention.ms", hour)],
    );
    let series = 8;
    let data = dataset::build(series, 12, PARTITIONS, 21);
    let (body, sentinels) = split(&data, series);
    // Stamped two hours ago: past the topic's retention at the broker's next start.
    let stamped: Vec<(Outgoing, i64)> = body
        .iter()
        .map(|r| (r.clone(), now_ms() - 2 * 3_600_000))
        .collect();
    harness::py_produce_stamped(&bed.brokers, &bed.input, &stamped);
    let admin = format!("127.0.0.1:{}", free_port());
    let mut app = bed.start(&admin, &bed.state_dir);
    bed.wait_caught_up(body, &app);
    stop(&mut app);
    let first_run = bed.rollups_out(1);
    dataset::check_emitted(&data, Duplicates::Refused, &first_run);
    let first_run_windows = first_run.len();

    // The broker restarts and deletes every record of the input topic; the app comes back
    // without its local checkpoints, so it must rebuild from the plans.
    tansu.stop();
    tansu.start_again();
    let emptied = eventually(Duration::from_secs(60), || {
        py_consume(&bed.brokers, &bed.input, 0, 20, 2.0)
            .is_empty()
            .then_some(())
    });
    assert!(emptied.is_some(), "tansu did not apply the topic's retention");
    let admin = format!("127.0.0.1:{}", free_port());
    let mut app = bed.start(&admin, &scratch("retention-state"));
    py_produce(&bed.brokers, &bed.input, sentinels);
    bed.wait_caught_up(&data.records, &app);
    let gaps = eventually(Duration::from_secs(30), || {
        metric(&admin, "tributary_retention_gaps_total").filter(|g| *g >= PARTITIONS as f64)
    });
    assert_eq!(
        gaps,
        Some(PARTITIONS as f64),
        "every partition's rebuild found its records gone:\n{}",
        app.log_text()
    );
    let lost = metric(&admin, "tributary_records_not_retained_total").unwrap_or(0.0);
    assert!(lost > 0.0, "missing records counted");
    let log = app.log_text();
    assert_eq!(
        log.matches("records this partition needs are no longer on the broker")
            .count(),
        PARTITIONS as usize,
        "one error per partition:\n{log}"
    );
    stop(&mut app);

    // The sentinels closed every window open at the restart (the day, the last hour and
    // 5 minutes of each series): their records are gone, so none may be emitted partial.
    let all = bed.rollups_out(first_run_windows);
    let seen = dataset::check_emitted(&data, Duplicates::Identical, &all);
    let day_windows = seen.keys().filter(|k| k.1 == "1d").count();
    assert_eq!(day_windows, 0, "no day window: each lost its last hours");
    assert_eq!(seen.len(), first_run_windows, "nothing new was complete");
}
