//! YAML files (deploy manifests) read as JSON.

use std::process::Command;

use serde_json::Value;

/// Every document of a YAML file, as JSON (read with Python's PyYAML, which setup.sh
/// installs).
pub fn yaml_docs(path: &std::path::Path) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(path)
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("YAML as JSON")
}
