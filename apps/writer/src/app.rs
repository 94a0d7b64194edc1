//! Command line of `tributary-writer`: run, `schema apply`, and `ctl` (through the admin
//! endpoint). Rate limits change at runtime through `ctl`, POST /rate-limit, or SIGHUP
//! (which reloads [limits] from the config file).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use tributary::admin::{self, Request, Response};
use tributary::app::LogFormat;

use crate::config::WriterConfig;
use crate::limiter::RateLimit;
use crate::runtime::Control;

#[derive(Debug, Parser)]
#[command(
    name = "tributary-writer",
    version,
    about = "Writes metrics, rollups and anomalies from Kafka into Cassandra/ScyllaDB: token-aware micro-batches, rate limits tunable at runtime, at-least-once."
)]
pub struct WriterCli {
    #[command(subcommand)]
    pub command: Option<WriterCommand>,
    #[command(flatten)]
    pub flags: Flags,
}

/// Flags that override the config file and `TRIBUTARY_*` variables.
#[derive(Debug, Clone, Args)]
pub struct Flags {
    /// TOML config file (see config/writer.toml); without one, built-in defaults apply.
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers [kafka.brokers].
    #[arg(long, global = true)]
    pub brokers: Option<String>,
    /// Consumer group [kafka.group].
    #[arg(long, global = true)]
    pub group: Option<String>,
    /// Cassandra/ScyllaDB contact points, comma-separated host:port [cassandra.contact_points].
    #[arg(long, global = true, value_delimiter = ',')]
    pub contact_points: Option<Vec<String>>,
    /// Keyspace [cassandra.keyspace].
    #[arg(long, global = true)]
    pub keyspace: Option<String>,
    /// Replication factor used by `schema apply` [cassandra.replication_factor].
    #[arg(long, global = true)]
    pub replication_factor: Option<u32>,
    /// Topic of raw points, empty to skip [topics.metrics].
    #[arg(long, global = true)]
    pub metrics_topic: Option<String>,
    /// Topic of rollups, empty to skip [topics.rollups].
    #[arg(long, global = true)]
    pub rollups_topic: Option<String>,
    /// Topic of anomalies, empty to skip [topics.anomalies].
    #[arg(long, global = true)]
    pub anomalies_topic: Option<String>,
    /// Dead-letter topic [topics.dead_letter].
    #[arg(long, global = true)]
    pub dlq_topic: Option<String>,
    /// Rows per second, 0 = unlimited [limits.rows_per_sec].
    #[arg(long, global = true)]
    pub rows_per_sec: Option<u32>,
    /// Burst in rows [limits.burst].
    #[arg(long, global = true)]
    pub burst: Option<u32>,
    /// Admin endpoint address, empty to disable [admin.listen].
    #[arg(long, global = true)]
    pub admin_listen: Option<String>,
    /// Print the effective configuration and exit.
    #[arg(long, global = true)]
    pub print_config: bool,
    /// Log filter (RUST_LOG syntax).
    #[arg(long, global = true, default_value = "info", env = "RUST_LOG")]
    pub log: String,
    /// Log lines as text or as one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum WriterCommand {
    /// Create the keyspace and tables (idempotent).
    Schema {
        #[command(subcommand)]
        action: SchemaAction,
    },
    /// Talk to a running writer through its admin endpoint.
    Ctl {
        /// The writer's admin address [default: admin.listen of the config].
        #[arg(long)]
        admin: Option<String>,
        #[command(subcommand)]
        action: CtlAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum SchemaAction {
    /// Run the CREATE statements of config/schema.cql for the configured keyspace.
    Apply,
    /// Print the statements without running them.
    Print,
}

#[derive(Debug, Subcommand)]
pub enum CtlAction {
    /// Set the rate limit of a running writer (takes effect at once, no restart).
    RateLimit {
        #[arg(long)]
        rows_per_sec: u32,
        #[arg(long)]
        burst: u32,
    },
    /// Show the running writer's limits and counters.
    Status,
}

impl Flags {
    fn overrides(&self) -> Vec<(&'static str, toml::Value)> {
        let s = |v: &Option<String>| v.clone().map(toml::Value::String);
        let n = |v: Option<u32>| v.map(|n| toml::Value::Integer(n as i64));
        let list = self
            .contact_points
            .clone()
            .map(|v| toml::Value::Array(v.into_iter().map(toml::Value::String).collect()));
        [
            ("kafka.brokers", s(&self.brokers)),
            ("kafka.group", s(&self.group)),
            ("cassandra.contact_points", list),
            ("cassandra.keyspace", s(&self.keyspace)),
            ("cassandra.replication_factor", n(self.replication_factor)),
            ("topics.metrics", s(&self.metrics_topic)),
            ("topics.rollups", s(&self.rollups_topic)),
            ("topics.anomalies", s(&self.anomalies_topic)),
            ("topics.dead_letter", s(&self.dlq_topic)),
            ("limits.rows_per_sec", n(self.rows_per_sec)),
            ("limits.burst", n(self.burst)),
            ("admin.listen", s(&self.admin_listen)),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }

    pub fn load(&self) -> Result<WriterConfig, tributary::config::ConfigError> {
        WriterConfig::load(self.config.as_deref(), std::env::vars(), &self.overrides())
    }
}

pub fn main() -> ExitCode {
    let cli = WriterCli::parse();
    tributary::app::init_tracing(&cli.flags.log, cli.flags.log_format);
    let config = match cli.flags.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tributary-writer: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.flags.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tributary-writer: cannot start async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(WriterCommand::Schema {
            action: SchemaAction::Print,
        }) => {
            for s in crate::schema::statements(&config) {
                println!("{s};");
            }
            ExitCode::SUCCESS
        }
        Some(WriterCommand::Schema {
            action: SchemaAction::Apply,
        }) => rt.block_on(async {
            let session = match crate::sink::connect(&config).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!(
                        "tributary-writer: cannot connect to {:?}: {e}",
                        config.cassandra.contact_points
                    );
                    return ExitCode::FAILURE;
                }
            };
            match crate::sink::apply_schema(&session, &config).await {
                Ok(n) => {
                    println!(
                        "schema applied: {n} statements in keyspace {}",
                        config.cassandra.keyspace
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tributary-writer: schema apply failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }),
        Some(WriterCommand::Ctl { admin, action }) => {
            // The address and token of the writer this config describes, unless given.
            let addr = admin.clone().unwrap_or_else(|| config.admin.listen.clone());
            let token = match config.admin.bearer() {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("tributary-writer ctl: cannot read admin.token_file: {e}");
                    return ExitCode::from(2);
                }
            };
            ctl(&addr, token.as_deref(), &action)
        }
        None => rt.block_on(serve(config, cli.flags.config.clone())),
    }
}

async fn serve(config: WriterConfig, file: Option<PathBuf>) -> ExitCode {
    let control = Arc::new(Control::new(&config));
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    if !config.admin.listen.is_empty() {
        match admin::bind(&config.admin.listen).await {
            Ok(listener) => {
                tracing::info!(addr = %config.admin.listen, "admin endpoint listening (/metrics, /health/live, /health/ready, /status, /rate-limit)");
                tokio::spawn(admin::serve(
                    listener,
                    config
                        .admin
                        .protect(routes(control.clone(), config.batch.max_rows)),
                    async move {
                        let _ = admin_stopped.await;
                    },
                ));
            }
            Err(e) => {
                eprintln!("tributary-writer: cannot listen on {}: {e}", config.admin.listen);
                return ExitCode::FAILURE;
            }
        }
    }
    spawn_sighup_reload(control.clone(), file);
    let result = crate::runtime::run(config, control, tributary::app::shutdown_signal()).await;
    let _ = admin_stop.send(());
    match result {
        Ok(()) | Err(crate::runtime::WriterError::Stopped) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "tributary-writer stopped");
            ExitCode::FAILURE
        }
    }
}

/// SIGHUP re-reads the config file (and environment) and applies new [limits].
fn spawn_sighup_reload(control: Arc<Control>, file: Option<PathBuf>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            match WriterConfig::load(file.as_deref(), std::env::vars(), &[]) {
                Ok(c) => {
                    if let Err(e) = control.set_limit(c.rate_limit()) {
                        tracing::warn!(error = %e, "SIGHUP: the group's limit not changed");
                    }
                    control.limiter.set_adaptive(c.adaptive());
                    tracing::info!("SIGHUP: limits reloaded (other settings need a restart)");
                }
                Err(e) => tracing::warn!(error = %e, "SIGHUP: config not reloaded"),
            }
        }
    });
}

fn routes(control: Arc<Control>, max_rows: usize) -> Arc<dyn admin::Handler> {
    Arc::new(move |r: &Request| match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/metrics") => Response {
            status: 200,
            content_type: tributary::metrics::CONTENT_TYPE,
            body: control.metrics.render().into_bytes(),
        },
        // Liveness: the process answers. Readiness: see Health::readiness.
        ("GET", "/health" | "/health/live") => Response::text(200, "ok\n"),
        ("GET", "/health/ready") => Response::readiness(control.health.readiness()),
        ("GET", "/rate-limit") | ("GET", "/status") => {
            let group = control.group.as_ref().map(|(budget, _)| {
                let (limit, owned, total) = budget.view();
                serde_json::json!({
                    "rows_per_sec": limit.rows_per_sec,
                    "burst": limit.burst,
                    "partitions_owned": owned,
                    "partitions_in_all": total,
                })
            });
            Response::json(
                200,
                &serde_json::json!({
                    "ready": control.health.readiness().is_ok(),
                    "scope": if group.is_some() { "group" } else { "process" },
                    "rows_per_sec": control.limiter.current().rows_per_sec,
                    "burst": control.limiter.current().burst,
                    "effective_rows_per_sec": control.limiter.effective(),
                    "adaptive": control.limiter.adaptive().enabled,
                    "waited_seconds": control.limiter.waited().as_secs_f64(),
                    "group": group,
                }),
            )
        }
        ("POST", "/rate-limit") => match serde_json::from_slice::<RateLimit>(&r.body) {
            Ok(limit) => match limit.validate(max_rows) {
                Ok(()) => match control.set_limit(limit) {
                    Ok(()) => Response::json(200, &limit),
                    Err(e) => Response::text(503, format!("{e}\n")),
                },
                Err(e) => Response::text(400, format!("{e}\n")),
            },
            Err(e) => Response::text(
                400,
                format!("expected {{\"rows_per_sec\": N, \"burst\": M}}: {e}\n"),
            ),
        },
        _ => Response::not_found(),
    })
}

fn ctl(admin_addr: &str, token: Option<&str>, action: &CtlAction) -> ExitCode {
    let addr = match admin_addr.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tributary-writer ctl: bad --admin {admin_addr}: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match action {
        CtlAction::RateLimit { rows_per_sec, burst } => {
            let body = serde_json::json!({"rows_per_sec": rows_per_sec, "burst": burst}).to_string();
            admin::request_with(addr, "POST", "/rate-limit", body.as_bytes(), token)
        }
        CtlAction::Status => admin::request_with(addr, "GET", "/status", b"", token),
    };
    match result {
        Ok((200, body)) => {
            println!("{}", body.trim());
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("tributary-writer ctl: {status}: {}", body.trim());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tributary-writer ctl: cannot reach the writer at {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}
