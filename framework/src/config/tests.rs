use super::*;

fn load(toml_text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir().join(format!("tributary-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{}.toml", toml_text.len()));
    std::fs::write(&path, toml_text).expect("write");
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::load(AppKind::Rollup, Some(&path), env, &[])
}

#[test]
fn runs_on_defaults_alone() {
    for app in [AppKind::Rollup, AppKind::Detector] {
        let c = Config::load(app, None, Vec::new(), &[]).expect("defaults are valid");
        assert_eq!(c, Config::defaults(app));
    }
    let spec = Config::defaults(AppKind::Rollup).pipeline_spec().expect("spec");
    assert_eq!(spec.rollup.as_ref().map(Vec::len), Some(3));
    assert_eq!(spec.grace_ms, 60_000);
}

#[test]
fn names_every_bad_key_at_once() {
    let err = load(
        r#"
        [kafka]
        brokers = 9092
        grup = "x"
        [rollup]
        grace = "ten seconds"
        levels = ["5m", "7m"]
        [cusum]
        h = "high"
        [nonsense]
        a = 1
        "#,
        &[("TRIBUTARY_RUNTIME_WORKRS", "2")],
    )
    .expect_err("invalid");
    let all = err.problems.join("\n");
    for needle in [
        "kafka.brokers",
        "kafka.grup: unknown key",
        "rollup.grace",
        "cusum.h",
        "nonsense: unknown section",
        "runtime.workrs: unknown key",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert_eq!(err.problems.len(), 6, "{all}");
}

#[test]
fn semantic_problems_are_all_reported() {
    let err = load(
        r#"
        [rollup]
        levels = ["5m", "7m"]
        [cusum]
        enabled = true
        input = "2h"
        h = -1.0
        [admin]
        listen = "nowhere"
        "#,
        &[],
    )
    .expect_err("invalid");
    let all = err.problems.join("\n");
    for needle in ["rollup.levels[1]", "cusum.input", "cusum.h", "admin.listen"] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
}

#[test]
fn layers_apply_in_order() {
    let c = Config::load(
        AppKind::Rollup,
        None,
        vec![
            ("TRIBUTARY_KAFKA_BROKERS".into(), "env:9092".into()),
            ("TRIBUTARY_RUNTIME_WORKERS".into(), "3".into()),
            ("TRIBUTARY_ROLLUP_LEVELS".into(), r#"["1m", "10m"]"#.into()),
            ("PATH".into(), "/bin".into()),
        ],
        &[("kafka.brokers", toml::Value::String("flag:9092".into()))],
    )
    .expect("valid");
    assert_eq!(c.kafka.brokers, "flag:9092");
    assert_eq!(c.runtime.workers, 3);
    assert_eq!(c.rollup.levels, vec!["1m", "10m"]);
    assert_eq!(c.kafka.group, "tributary-rollup");
}

#[test]
fn shipped_config_files_are_valid_and_document_the_defaults() {
    let dir = Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo")).join("../config");
    for (file, app) in [
        ("rollup.toml", AppKind::Rollup),
        ("detector.toml", AppKind::Detector),
    ] {
        let c = Config::load(app, Some(&dir.join(file)), Vec::new(), &[]).expect(file);
        assert_eq!(
            c,
            Config::defaults(app),
            "{file} drifted from the built-in defaults"
        );
        let text = std::fs::read_to_string(dir.join(file)).expect(file);
        assert_eq!(
            reference_drift(&Config::defaults(app), &text),
            Vec::<String>::new(),
            "{file}"
        );
    }
}

#[test]
fn durations_parse_and_print() {
    assert_eq!(HumanDuration::parse("60s").map(|d| d.as_millis()), Ok(60_000));
    assert_eq!(HumanDuration::parse("5m").map(|d| d.as_millis()), Ok(300_000));
    assert_eq!(HumanDuration::parse("1d").map(|d| d.to_string()), Ok("1d".into()));
    assert_eq!(
        HumanDuration::parse("90s").map(|d| d.to_string()),
        Ok("90s".into())
    );
    assert_eq!(
        HumanDuration::parse("250ms").map(|d| d.to_string()),
        Ok("250ms".into())
    );
    assert_eq!(HumanDuration::parse("5"), Err(DurationError::NoUnit("5".into())));
    assert!(matches!(
        HumanDuration::parse("5 fortnights"),
        Err(DurationError::UnknownUnit { .. })
    ));
    assert_eq!(
        HumanDuration::parse("99999999999999999d"),
        Err(DurationError::TooLarge("99999999999999999d".into()))
    );
}
