//! Static group membership (`kafka.group_instance_id`) through real processes on tansu,
//! with librdkafka's default session timeout (45 s): an instance SIGKILLed and restarted
//! under the same id gets its partitions back at once, and its outputs still equal the
//! oracle; without an id the restarted instance waits for the dead member's session to
//! expire.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::{
    Outgoing, Process, Tansu, app_binary, create_topics, eventually, free_port, metric, py_committed,
    py_produce, unique,
};

use crate::dataset::{self, Duplicates};
use crate::writer::{points, setup_on, start_writer_env, wait_all_points};

const PARTITIONS: i32 = 4;
/// What the issue asks of a restart with a static id.
const STATIC_RESTART: Duration = Duration::from_secs(10);

/// How long after `since` the process logged `needle` for the `n`th time, waiting up to
/// `timeout`.
fn logged_times(
    app: &Process,
    needle: &str,
    n: usize,
    since: Instant,
    timeout: Duration,
) -> Option<Duration> {
    eventually(timeout, || {
        (app.log_text().matches(needle).count() >= n).then(|| since.elapsed())
    })
}

struct Rollup {
    kafka: Tansu,
    input: String,
    rollups: String,
    group: String,
    config: PathBuf,
    state_dir: PathBuf,
}

impl Rollup {
    fn new() -> Self {
        let kafka = Tansu::start();
        let dir = std::env::temp_dir().join(unique("static-member"));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let state_dir = dir.join("state");
        // librdkafka's session timeout is left at its default on purpose.
        let config = dir.join("rollup.toml");
        std::fs::write(
            &config,
            format!(
                "[kafka]\ncommit_interval = \"200ms\"\n[rollup]\nidle_timeout = \"1d\"\n[state]\ndir = \"{}\"\ncheckpoint_interval = \"500ms\"\n",
                state_dir.display()
            ),
        )
        .expect("config file");
        let r = Self {
            input: unique("metrics"),
            rollups: unique("rollups"),
            group: unique("rollup"),
            kafka,
            config,
            state_dir,
        };
        create_topics(&r.kafka.brokers, &[(&r.input, PARTITIONS)]);
        r
    }

    fn start(&self, instance_id: &str, admin: &str) -> Process {
        Process::spawn(
            "tributary-rollup",
            &app_binary("tributary-rollup"),
            &[
                "--config",
                &self.config.display().to_string(),
                "--brokers",
                &self.kafka.brokers,
                "--input-topic",
                &self.input,
                "--output-topic",
                &self.rollups,
                "--group",
                &self.group,
                "--admin-listen",
                admin,
            ],
            &[
                ("TRIBUTARY_KAFKA_GROUP_INSTANCE_ID", instance_id),
                ("RUST_LOG", "info"),
            ],
        )
    }

    /// Starts an instance and waits until it owns every partition.
    fn start_assigned(&self, instance_id: &str, admin: &str) -> Process {
        let app = self.start(instance_id, admin);
        let took = logged_times(
            &app,
            "partition assigned",
            PARTITIONS as usize,
            Instant::now(),
            Duration::from_secs(90),
        );
        assert!(took.is_some(), "never assigned:\n{}", app.log_text());
        app
    }

    fn state_dir(&self) -> &Path {
        &self.state_dir
    }
}

fn kill(app: &mut Process) {
    app.signal("KILL");
    assert_eq!(app.wait(Duration::from_secs(10)), None, "killed by a signal");
}

#[test]
fn a_rollup_instance_restarted_with_its_static_id_gets_its_partitions_back_at_once() {
    let bed = Rollup::new();
    let data = dataset::build(16, 26, PARTITIONS, 23);
    let (body, sentinels) = data.records.split_at(data.records.len() - 16);
    let chunks: Vec<&[Outgoing]> = body.chunks(body.len() / 3 + 1).collect();
    let admin = format!("127.0.0.1:{}", free_port());
    py_produce(&bed.kafka.brokers, &bed.input, chunks[0]);
    let mut app = bed.start_assigned("rollup-0", &admin);
    py_produce(&bed.kafka.brokers, &bed.input, chunks[1]);
    let progressed = eventually(Duration::from_secs(60), || {
        let (committed, _) = py_committed(&bed.kafka.brokers, &bed.group, &bed.input);
        (committed.values().sum::<i64>() > 0).then_some(())
    });
    assert!(progressed.is_some(), "nothing committed:\n{}", app.log_text());
    kill(&mut app);

    // Twice: once with the local checkpoints, once rebuilding from the plans.
    for keep_state in [true, false] {
        if !keep_state {
            std::fs::remove_dir_all(bed.state_dir()).expect("remove the state directory");
        }
        let restarted = Instant::now();
        app = bed.start("rollup-0", &admin);
        let took = logged_times(
            &app,
            "partition assigned",
            PARTITIONS as usize,
            restarted,
            Duration::from_secs(90),
        );
        assert!(
            took.is_some_and(|t| t < STATIC_RESTART),
            "partitions back after {took:?} (keep state {keep_state}), expected under {STATIC_RESTART:?}:\n{}",
            app.log_text()
        );
        if keep_state {
            kill(&mut app);
        }
    }

    for chunk in &chunks[2..] {
        py_produce(&bed.kafka.brokers, &bed.input, chunk);
    }
    py_produce(&bed.kafka.brokers, &bed.input, sentinels);
    dataset::expect_rollups_then_stop(
        &bed.kafka.brokers,
        &bed.rollups,
        &data,
        Duplicates::Identical,
        &mut app,
    );
}

#[test]
fn without_a_static_id_a_restarted_rollup_instance_waits_for_the_session_timeout() {
    // The control for the test above: the same kill and restart, dynamic membership.
    let bed = Rollup::new();
    let admin = format!("127.0.0.1:{}", free_port());
    let mut app = bed.start_assigned("", &admin);
    kill(&mut app);
    let restarted = Instant::now();
    let app = bed.start("", &admin);
    let took = logged_times(
        &app,
        "partition assigned",
        PARTITIONS as usize,
        restarted,
        Duration::from_secs(120),
    );
    // librdkafka's default session timeout is 45 s; the dead member holds its partitions
    // until then.
    assert!(
        took.is_some_and(|t| t > Duration::from_secs(30)),
        "partitions back after {took:?}: the dead member was not waited for:\n{}",
        app.log_text()
    );
}

#[test]
fn a_writer_restarted_with_its_static_id_gets_its_partitions_back_at_once() {
    let s = setup_on(3, false);
    let data = points(30, 60);
    py_produce(s.kafka.brokers(), &s.metrics, &data[..data.len() / 2]);
    let id = [("TRIBUTARY_KAFKA_GROUP_INSTANCE_ID", "writer-0")];
    let admin = format!("127.0.0.1:{}", free_port());
    // The writer reads three topics of three partitions each.
    let partitions = 9;
    let mut writer = start_writer_env(&s, &admin, &["--rows-per-sec", "400", "--burst", "50"], &id);
    let some = eventually(Duration::from_secs(60), || {
        (metric(&admin, "tributary_writer_rows_written_total").unwrap_or(0.0) > 100.0).then_some(())
    });
    assert!(some.is_some(), "{}", writer.log_text());
    kill(&mut writer);
    py_produce(s.kafka.brokers(), &s.metrics, &data[data.len() / 2..]);
    let restarted = Instant::now();
    let writer = start_writer_env(&s, &admin, &[], &id);
    let took = logged_times(
        &writer,
        "partition assigned",
        partitions,
        restarted,
        Duration::from_secs(90),
    );
    assert!(
        took.is_some_and(|t| t < STATIC_RESTART),
        "partitions back after {took:?}, expected under {STATIC_RESTART:?}:\n{}",
        writer.log_text()
    );
    wait_all_points(&s, data.len(), &writer);
}
