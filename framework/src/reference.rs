//! The reference configuration files (`config/*.toml`) checked against the code, so they
//! cannot drift from it unseen.

use serde::Serialize;

/// Why a reference config file (`config/*.toml`) no longer documents the code: a key
/// the code has that the file lacks, or a key without a comment (directly above it, or
/// above its table for tables of entries). Empty when the file names every key. (That the
/// file's values are the defaults is checked by loading it: durations are written in
/// several ways.)
pub fn reference_drift(defaults: &impl Serialize, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let file: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => return vec![format!("not TOML: {e}")],
    };
    match toml::Value::try_from(defaults) {
        Ok(toml::Value::Table(code)) => compare_tables("", &code, &file, &mut problems),
        other => problems.push(format!("defaults are not a table: {other:?}")),
    }
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut section = String::new();
    let mut section_documented = false;
    for (i, line) in lines.iter().enumerate() {
        let above_is_comment = i > 0 && lines[i - 1].starts_with('#');
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            section_documented = above_is_comment;
        } else if let Some((key, _)) = line.split_once('=').filter(|_| !line.starts_with('#'))
            && !above_is_comment
            && !section_documented
        {
            problems.push(format!("{section}.{}: no comment says what it is", key.trim()));
        }
    }
    problems
}

fn compare_tables(prefix: &str, code: &toml::Table, file: &toml::Table, problems: &mut Vec<String>) {
    for (key, value) in code {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (value, file.get(key)) {
            (toml::Value::Table(c), Some(toml::Value::Table(f))) => compare_tables(&name, c, f, problems),
            (_, None) => problems.push(format!("{name}: missing (default {value})")),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AppKind, Config};

    #[test]
    fn reference_drift_names_missing_and_undocumented_keys() {
        let defaults = Config::defaults(AppKind::Rollup);
        let text = "[kafka]\n# Brokers.\nbrokers = \"127.0.0.1:9092\"\ngroup = \"h\"\n\n# Grace.\n[rollup]\ngrace = \"1m\"\n";
        let all = reference_drift(&defaults, text).join("\n");
        assert!(all.contains("kafka.group: no comment"), "{all}");
        assert!(all.contains("kafka.commit_interval: missing"), "{all}");
        assert!(all.contains("rollup.levels: missing"), "{all}");
        assert!(all.contains("cusum: missing"), "{all}");
        assert!(!all.contains("kafka.brokers"), "{all}");
        assert!(
            !all.contains("rollup.grace"),
            "documented by its table's comment: {all}"
        );
    }
}
