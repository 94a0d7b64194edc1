//! The app binaries' command line: defaults, help, and configuration errors.

use std::process::Command;

use harness::app_binary;

#[test]
fn bad_config_names_every_bad_key_and_exits_non_zero() {
    let dir = std::env::temp_dir().join(harness::unique("config"));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("rollup.toml");
    std::fs::write(
        &path,
        "[kafka]\nbrokers = 1\nbrokres = \"x\"\n[rollup]\ngrace = \"soon\"\nlevels = [\"5m\", \"7m\"]\n[extra]\nx = 1\n",
    )
    .expect("write");
    let out = Command::new(app_binary("tributary-rollup"))
        .arg("--config")
        .arg(&path)
        .env("TRIBUTARY_CUSUM_KK", "1")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "kafka.brokers",
        "kafka.brokres",
        "rollup.grace",
        "extra",
        "cusum.kk",
    ] {
        assert!(err.contains(key), "{key} not named in:\n{err}");
    }
}

#[test]
fn runs_on_defaults_and_documents_every_flag() {
    for (bin, group) in [
        ("tributary-rollup", "tributary-rollup"),
        ("tributary-detector", "tributary-detector"),
    ] {
        let out = Command::new(app_binary(bin))
            .arg("--print-config")
            .env_remove("RUST_LOG")
            .output()
            .expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("group = \"{group}\"")), "{text}");
        assert!(text.contains("input = \"metrics\""));
        let help = Command::new(app_binary(bin)).arg("--help").output().expect("run");
        let help = String::from_utf8_lossy(&help.stdout);
        for flag in [
            "--config",
            "--brokers",
            "--input-topic",
            "--output-topic",
            "--anomaly-topic",
            "--dlq-topic",
            "--group",
        ] {
            assert!(help.contains(flag), "{bin} --help lacks {flag}");
        }
    }
}
