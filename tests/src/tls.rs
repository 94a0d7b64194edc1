//! Self-signed certificates for the TLS terminators (socat) the tests put in front of
//! tansu and the emulated ring.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::unique;

/// A self-signed certificate `dir/NAME.pem` and its key `dir/NAME-key.pem`, naming the
/// addresses in `sans` (e.g. `IP:127.0.0.1`; none for a certificate that names no host).
pub fn self_signed(dir: &Path, name: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={name}")]);
    if !sans.is_empty() {
        cmd.arg("-addext")
            .arg(format!("subjectAltName={}", sans.join(",")));
    }
    let made = cmd
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    (cert, key)
}

/// One PEM file holding `cert` then `key`, as socat wants it.
pub(crate) fn cert_and_key(dir: &Path, cert: &Path, key: &Path) -> PathBuf {
    let both = dir.join(format!("{}-both.pem", unique("tls")));
    let pem = [
        std::fs::read(cert).expect("cert"),
        std::fs::read(key).expect("key"),
    ]
    .concat();
    std::fs::write(&both, pem).expect("pem");
    both
}
