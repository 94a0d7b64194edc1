//! tansu, the real Kafka-protocol broker: open, stored (to restart it), and secured
//! (TLS terminator in front, SASL SCRAM-SHA-512 required).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::kafka_client::client_settings;
use crate::process::{Process, free_port, unique, wait_listening};
use crate::tls::{cert_and_key, self_signed};

/// A tansu broker on a free port, with in-memory storage or (to be restarted with its
/// data) sqlite storage in a directory of its own.
pub struct Tansu {
    pub brokers: String,
    pub process: Process,
    dir: Option<PathBuf>,
}

pub fn tansu_binary() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return PathBuf::from(p);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("tansu");
        if p.exists() {
            return p;
        }
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let p = Path::new(&home).join(".cargo/bin/tansu");
    assert!(
        p.exists(),
        "tansu is not installed: run tests/run.sh, which installs it"
    );
    p
}

impl Tansu {
    pub fn start() -> Self {
        Self::spawn(free_port(), None)
    }

    /// On sqlite storage, so [`Tansu::stop`] and [`Tansu::start_again`] are a broker
    /// restart that keeps topics, records and the group's offsets.
    pub fn start_stored() -> Self {
        let dir = std::env::temp_dir().join(unique("tansu-stored"));
        std::fs::create_dir_all(&dir).expect("dir");
        Self::spawn(free_port(), Some(dir))
    }

    /// Kills the broker (SIGKILL).
    pub fn stop(&mut self) {
        self.process.signal("KILL");
        let _ = self.process.wait(Duration::from_secs(10));
    }

    /// Starts it again on the same port and storage.
    pub fn start_again(&mut self) {
        let port = self
            .brokers
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        *self = Self::spawn(port, self.dir.take());
    }

    fn spawn(port: u16, dir: Option<PathBuf>) -> Self {
        let url = format!("tcp://127.0.0.1:{port}");
        let storage = if dir.is_some() {
            "sqlite://tansu.db"
        } else {
            "memory://tansu/"
        };
        let process = Process::spawn_in(
            dir.as_deref(),
            "tansu",
            &tansu_binary(),
            &[
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                storage,
            ],
            &[("RUST_LOG", "warn")],
        );
        let brokers = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&brokers).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not start:\n{}",
                process.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            brokers,
            process,
            dir,
        }
    }
}

/// tansu behind a TLS terminator (socat) with SASL SCRAM-SHA-512 required: the setup of
/// a managed Kafka service. tansu's own TLS flags did not work here; its users are created
/// while it runs without `--authentication`, then it is restarted on the same storage
/// with it.
pub struct SecureTansu {
    /// The TLS port: `SASL_SSL` only.
    pub brokers: String,
    /// The CA (here the self-signed broker certificate) clients must trust.
    pub ca_file: PathBuf,
    pub username: String,
    pub password: String,
    pub dir: PathBuf,
    /// With mutual TLS: the client certificate and key the terminator accepts.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    _broker: Process,
    _tls: Process,
    /// One secured broker at a time: tansu 0.6 sometimes answers a SCRAM handshake with
    /// "unsupported mechanism" when several run under load (seen in the full suite).
    _turn: std::sync::MutexGuard<'static, ()>,
}

static SECURE_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl SecureTansu {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// With `mutual`, the terminator also requires a client certificate (mutual TLS).
    pub fn start_with(mutual: bool) -> Self {
        let turn = SECURE_TURN.lock().unwrap_or_else(|p| p.into_inner());
        let dir = std::env::temp_dir().join(unique("secure-tansu"));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert, key) = self_signed(&dir, "broker", &["IP:127.0.0.1"]);
        let client_cert = mutual.then(|| self_signed(&dir, "client", &[]));
        let both = cert_and_key(&dir, &cert, &key);
        let (plain, tls) = (free_port(), free_port());
        let plain_url = format!("tcp://127.0.0.1:{plain}");
        let plain_addr = format!("127.0.0.1:{plain}");
        let broker = |advertised: &str, auth: bool| {
            let mut args = vec![
                "broker",
                "--listener-url",
                &plain_url,
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                "sqlite://tansu.db",
            ];
            if auth {
                args.push("--authentication");
            }
            let p = Process::spawn_in(
                Some(&dir),
                "tansu",
                &tansu_binary(),
                &args,
                &[("RUST_LOG", "warn")],
            );
            wait_listening(&plain_addr, &p);
            p
        };
        let (username, password) = ("tributary-e2e".to_owned(), format!("pw-{}", unique("s")));
        let setup = broker(&plain_url, false);
        let created = Command::new(tansu_binary())
            .args(["user", "create", "--broker", &plain_url, &username, &password])
            .output()
            .expect("tansu user create");
        assert!(
            created.status.success(),
            "tansu user create: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        drop(setup);
        let tls_addr = format!("127.0.0.1:{tls}");
        let broker = broker(&format!("tcp://{tls_addr}"), true);
        let tls_process = Process::spawn(
            "socat",
            Path::new("socat"),
            &[
                &match &client_cert {
                    // Mutual TLS: only the client certificate made above is accepted.
                    Some((client, _)) => format!(
                        "OPENSSL-LISTEN:{tls},bind=127.0.0.1,reuseaddr,cert={},verify=1,cafile={},fork",
                        both.display(),
                        client.display()
                    ),
                    None => format!(
                        "OPENSSL-LISTEN:{tls},bind=127.0.0.1,reuseaddr,cert={},verify=0,fork",
                        both.display()
                    ),
                },
                &format!("TCP:{plain_addr}"),
            ],
            &[],
        );
        wait_listening(&tls_addr, &tls_process);
        let s = Self {
            brokers: tls_addr,
            ca_file: cert,
            username,
            password,
            dir,
            client_cert,
            _broker: broker,
            _tls: tls_process,
            _turn: turn,
        };
        let mut settings = vec![
            ("security.protocol".into(), "SASL_SSL".into()),
            ("sasl.mechanisms".into(), "SCRAM-SHA-512".into()),
            ("sasl.username".into(), s.username.clone()),
            ("sasl.password".into(), s.password.clone()),
            ("ssl.ca.location".into(), s.ca_file.display().to_string()),
        ];
        if let Some((cert, key)) = &s.client_cert {
            settings.push(("ssl.certificate.location".into(), cert.display().to_string()));
            settings.push(("ssl.key.location".into(), key.display().to_string()));
        }
        client_settings()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(s.brokers.clone(), settings);
        s
    }
}
