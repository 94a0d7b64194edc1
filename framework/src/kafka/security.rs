//! `[kafka.security]`: TLS and SASL for every Kafka client of every app, typed, so the
//! common setups need no librdkafka property names and the password can live in a file
//! (a mounted secret) instead of the config.

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

/// How the apps authenticate to Kafka and verify its brokers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Keys left out take their defaults: the config loader layers whole sections, and this
// one is nested in [kafka].
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// "plaintext", "ssl", "sasl_plaintext" or "sasl_ssl".
    pub protocol: String,
    /// SASL mechanism for the sasl_* protocols: "SCRAM-SHA-512", "SCRAM-SHA-256" or "PLAIN".
    pub mechanism: String,
    /// SASL user name.
    pub username: String,
    /// SASL password; prefer `password_file`. Never shown.
    pub password: String,
    /// A file whose first line is the SASL password (e.g. a mounted Kubernetes secret).
    pub password_file: String,
    /// PEM file of the CA certificates that sign the brokers' certificates; empty = the
    /// system's trust store.
    pub ca_file: String,
    /// PEM client certificate for mutual TLS (with `key_file`).
    pub cert_file: String,
    /// PEM private key of `cert_file`.
    pub key_file: String,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            protocol: "plaintext".into(),
            mechanism: String::new(),
            username: String::new(),
            password: String::new(),
            password_file: String::new(),
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
        }
    }
}

const PROTOCOLS: [&str; 4] = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];
const MECHANISMS: [&str; 3] = ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"];

impl SecurityConfig {
    /// The protocol; empty reads as plaintext.
    pub fn protocol(&self) -> &str {
        if self.protocol.is_empty() {
            "plaintext"
        } else {
            &self.protocol
        }
    }

    fn sasl(&self) -> bool {
        self.protocol().to_ascii_lowercase().starts_with("sasl")
    }

    /// Problems with these settings, each named by its key.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let protocol = self.protocol().to_ascii_lowercase();
        if !PROTOCOLS.contains(&protocol.as_str()) {
            p.push(format!(
                "kafka.security.protocol: {:?} is not one of {}",
                self.protocol,
                PROTOCOLS.join(", ")
            ));
        }
        if self.sasl() {
            if !MECHANISMS.iter().any(|m| m.eq_ignore_ascii_case(&self.mechanism)) {
                p.push(format!(
                    "kafka.security.mechanism: {:?} is not one of {} (others through kafka.properties)",
                    self.mechanism,
                    MECHANISMS.join(", ")
                ));
            }
            if self.username.is_empty() {
                p.push("kafka.security.username: needed for SASL".to_owned());
            }
            match (self.password.is_empty(), self.password_file.is_empty()) {
                (true, true) => {
                    p.push("kafka.security.password_file: needed for SASL (or password)".to_owned())
                }
                (false, false) => {
                    p.push("kafka.security.password: set it or password_file, not both".to_owned())
                }
                _ => {}
            }
        }
        p.extend(crate::config::tls_file_problems(
            "kafka.security",
            &self.cert_file,
            &self.key_file,
            &[
                ("password_file", &self.password_file),
                ("ca_file", &self.ca_file),
                ("cert_file", &self.cert_file),
                ("key_file", &self.key_file),
            ],
        ));
        p
    }

    /// A copy fit to show: the password replaced.
    pub fn redacted(&self) -> Self {
        let mut shown = self.clone();
        if !shown.password.is_empty() {
            shown.password = super::client::REDACTED.to_owned();
        }
        shown
    }

    /// Sets the librdkafka properties this section stands for on `c`.
    pub fn apply(&self, c: &mut ClientConfig) {
        // Plaintext (the default) sets nothing: librdkafka's defaults, and older configs
        // that set security through kafka.properties, stay as they were.
        if self.protocol().eq_ignore_ascii_case("plaintext") {
            return;
        }
        c.set("security.protocol", self.protocol());
        if self.sasl() {
            c.set("sasl.mechanisms", self.mechanism.to_ascii_uppercase())
                .set("sasl.username", &self.username);
            if let Some(password) = self.password() {
                c.set("sasl.password", password);
            }
        }
        for (property, path) in [
            ("ssl.ca.location", &self.ca_file),
            ("ssl.certificate.location", &self.cert_file),
            ("ssl.key.location", &self.key_file),
        ] {
            if !path.is_empty() {
                c.set(property, path);
            }
        }
    }

    /// The password, from the file when one is named (read at each client's creation, so
    /// a rotated secret is used from the next client on).
    fn password(&self) -> Option<String> {
        if self.password_file.is_empty() {
            return Some(self.password.clone());
        }
        match crate::secret::read(&self.password_file) {
            Ok(password) => Some(password),
            Err(e) => {
                tracing::error!(file = %self.password_file, error = %e, "cannot read kafka.security.password_file");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sasl_ssl() -> SecurityConfig {
        SecurityConfig {
            protocol: "sasl_ssl".into(),
            mechanism: "scram-sha-512".into(),
            username: "alice".into(),
            password: "unique-secret-7".into(),
            ..SecurityConfig::default()
        }
    }

    #[test]
    fn sasl_ssl_becomes_librdkafka_properties() {
        let mut c = ClientConfig::new();
        sasl_ssl().apply(&mut c);
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("sasl.username"), Some("alice"));
        assert_eq!(c.get("sasl.password"), Some("unique-secret-7"));
        assert!(sasl_ssl().problems().is_empty(), "{:?}", sasl_ssl().problems());
        let mut plain = ClientConfig::new();
        SecurityConfig::default().apply(&mut plain);
        assert_eq!(plain.get("security.protocol"), None, "the default sets nothing");
    }

    #[test]
    fn the_password_can_come_from_a_file_and_is_never_shown() {
        let dir = std::env::temp_dir().join(format!("tributary-security-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("password");
        std::fs::write(&file, "from-file-secret\n").expect("write");
        let s = SecurityConfig {
            password: String::new(),
            password_file: file.display().to_string(),
            ..sasl_ssl()
        };
        assert!(s.problems().is_empty(), "{:?}", s.problems());
        let mut c = ClientConfig::new();
        s.apply(&mut c);
        assert_eq!(c.get("sasl.password"), Some("from-file-secret"));
        let shown = format!("{:?}", sasl_ssl().redacted());
        assert!(!shown.contains("unique-secret-7"), "{shown}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn incomplete_settings_are_named() {
        let bad = SecurityConfig {
            protocol: "sasl_tls".into(),
            ..SecurityConfig::default()
        };
        assert!(bad.problems()[0].starts_with("kafka.security.protocol"));
        let no_password = SecurityConfig {
            password: String::new(),
            cert_file: "/nonexistent/cert.pem".into(),
            ..sasl_ssl()
        };
        let all = no_password.problems().join("\n");
        for key in [
            "password_file: needed",
            "cert_file, kafka.security.key_file",
            "cert_file: cannot read",
        ] {
            assert!(all.contains(key), "{key} not in {all}");
        }
    }
}
