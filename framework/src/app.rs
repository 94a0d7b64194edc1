//! The shared command line of `tributary-rollup` and `tributary-detector`: flags, config
//! layering, logging, signals, the admin endpoint, and the exit code. The binaries' `main`
//! only names which app they are.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::admin::{self, Request, Response};
use crate::config::{AppKind, Config, ConfigError};
use crate::metrics::Metrics;
use crate::replay::request::{self as replay_request, ReplayFrom, ReplayRequest, RequestError};
use crate::runtime::operator::ReplayError;
use crate::runtime::{ControlHandle, RunSummary, Runtime, RuntimeError};

/// Command-line flags. Every flag overrides the config file and `TRIBUTARY_*` variables.
#[derive(Debug, Clone, Parser)]
#[command(version)]
pub struct AppCli {
    /// TOML config file (see config/*.toml). Without one, built-in defaults apply.
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers, e.g. 127.0.0.1:9092 [kafka.brokers].
    #[arg(long, value_name = "HOST:PORT,...", global = true)]
    pub brokers: Option<String>,
    /// Topic of metric points [topics.input].
    #[arg(long, value_name = "TOPIC", global = true)]
    pub input_topic: Option<String>,
    /// Main output topic: rollups for tributary-rollup, anomalies for tributary-detector
    /// [topics.rollups / topics.anomalies].
    #[arg(long, value_name = "TOPIC")]
    pub output_topic: Option<String>,
    /// Topic for change points [topics.anomalies].
    #[arg(long, value_name = "TOPIC")]
    pub anomaly_topic: Option<String>,
    /// Dead-letter topic for undecodable or invalid records [topics.dead_letter].
    #[arg(long, value_name = "TOPIC")]
    pub dlq_topic: Option<String>,
    /// Topic for records that missed their window; unset means count only [topics.late].
    #[arg(long, value_name = "TOPIC")]
    pub late_topic: Option<String>,
    /// Consumer group id [kafka.group].
    #[arg(long, value_name = "GROUP", global = true)]
    pub group: Option<String>,
    /// Worker threads, 0 = one per CPU [runtime.workers].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Admin endpoint address, empty to disable [admin.listen].
    #[arg(long, value_name = "ADDR", global = true)]
    pub admin_listen: Option<String>,
    /// Also run CUSUM in this process (tributary-rollup) [cusum.enabled].
    #[arg(long)]
    pub with_cusum: bool,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Log filter (RUST_LOG syntax), e.g. info or tributary=debug.
    #[arg(long, default_value = "info", env = "RUST_LOG", value_name = "FILTER")]
    pub log: String,
    /// Log lines as text or as one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Option<AppCommand>,
}

/// Operator commands; without one the app runs.
#[derive(Debug, Clone, Subcommand)]
pub enum AppCommand {
    /// Replays partitions from an offset or a time and re-emits their outputs. Goes
    /// through the running app's admin endpoint when it answers, else works offline by
    /// committing the replay point for the (stopped) consumer group.
    Replay(ReplayArgs),
}

#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("from").required(true).args(["from_offset", "from_time"])))]
pub struct ReplayArgs {
    /// Offset to replay from (the same in every chosen partition).
    #[arg(long, value_name = "N")]
    pub from_offset: Option<i64>,
    /// Time to replay from: RFC 3339 (2026-11-24T10:00:00Z) or epoch milliseconds.
    #[arg(long, value_name = "TIME")]
    pub from_time: Option<String>,
    /// Partitions to replay, e.g. 0,3 (default: all).
    #[arg(long, value_name = "P,...")]
    pub partitions: Option<String>,
    /// Do not try the admin endpoint: the app is stopped.
    #[arg(long)]
    pub offline: bool,
    /// Return once the running app has started the replay instead of following its
    /// progress.
    #[arg(long)]
    pub no_wait: bool,
}

impl ReplayArgs {
    fn request(&self) -> Result<ReplayRequest, RequestError> {
        let from = match (self.from_offset, &self.from_time) {
            (Some(o), _) => ReplayFrom::Offset(o),
            (None, Some(t)) => ReplayFrom::Time(replay_request::parse_time(t)?),
            // clap requires one of the two flags; this is for callers that build args.
            (None, None) => return Err(RequestError::From),
        };
        let partitions = self
            .partitions
            .as_deref()
            .map(replay_request::parse_partitions)
            .transpose()?;
        Ok(ReplayRequest { from, partitions })
    }
}

/// Follows an online replay on the app's `/status` until every replayed partition reaches
/// the end offset it had when the replay started: a progress bar on a terminal, a line
/// every 5 s otherwise. Stops following if the app stops answering or makes no progress
/// for a minute.
fn follow_replay(addr: std::net::SocketAddr, config: &Config, started: &str) {
    use std::io::{IsTerminal, Write};
    use std::time::Instant;
    let topic = &config.topics.input;
    let started: serde_json::Value = serde_json::from_str(started).unwrap_or_default();
    let mut from = std::collections::BTreeMap::new();
    for p in started["replaying"].as_array().into_iter().flatten() {
        if let (Some(partition), Some(offset)) = (p["partition"].as_i64(), p["from_offset"].as_i64()) {
            from.insert(partition as i32, offset);
        }
    }
    let ends = crate::runtime::operator::end_offsets(config, from.keys().copied());
    let total: i64 = from
        .iter()
        .map(|(p, f)| ends.get(p).map_or(0, |e| (e - f).max(0)))
        .sum();
    let terminal = std::io::stdout().is_terminal();
    let started_at = Instant::now();
    let (mut last_line, mut last_progress, mut last_done) = (Instant::now(), Instant::now(), -1i64);
    loop {
        let Ok((200, body)) = admin::request(addr, "GET", "/status", b"") else {
            eprintln!("\nthe app stopped answering; stopped following the replay");
            return;
        };
        let status: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let mut done = 0;
        for g in status["partitions"].as_array().into_iter().flatten() {
            let partition = g["partition"].as_i64().unwrap_or(-1) as i32;
            if g["topic"].as_str() == Some(topic.as_str())
                && let (Some(f), Some(e)) = (from.get(&partition), ends.get(&partition))
            {
                // A broker may report an end before the replay point (tansu 0.6).
                done += g["processed_offset"]
                    .as_i64()
                    .unwrap_or(*f)
                    .clamp(*f, (*e).max(*f))
                    - f;
            }
        }
        let secs = started_at.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        let eta = match done {
            0 => "?".to_string(),
            _ => format!("{:.0}s", (total - done) as f64 / rate.max(1.0)),
        };
        let share = if total > 0 {
            done as f64 / total as f64
        } else {
            1.0
        };
        let line = format!(
            "replay {done}/{total} records ({:.0}%), {rate:.0}/s, ETA {eta}",
            share * 100.0
        );
        if terminal {
            let filled = (share * 30.0) as usize;
            print!(
                "\r[{}{}] {line}   ",
                "#".repeat(filled),
                " ".repeat(30 - filled.min(30))
            );
            let _ = std::io::stdout().flush();
        } else if last_line.elapsed() >= std::time::Duration::from_secs(5) || done >= total {
            println!("{line}");
            last_line = Instant::now();
        }
        if done >= total {
            if terminal {
                println!();
            }
            return;
        }
        if done != last_done {
            (last_done, last_progress) = (done, Instant::now());
        } else if last_progress.elapsed() > std::time::Duration::from_secs(60) {
            eprintln!("\nno progress for a minute; stopped following the replay");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Runs `replay`: online through the admin endpoint if the app answers there, else offline.
fn replay_command(app: AppKind, config: &Config, args: &ReplayArgs) -> ExitCode {
    let request = match args.request() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: {e}", app.name());
            return ExitCode::from(2);
        }
    };
    let addr = config.admin.listen.parse::<std::net::SocketAddr>().ok();
    if !args.offline
        && let Some(addr) = addr
    {
        let mut query = match request.from {
            ReplayFrom::Offset(o) => format!("from_offset={o}"),
            ReplayFrom::Time(t) => format!("from_time={t}"),
        };
        if let Some(p) = &request.partitions {
            let list: Vec<String> = p.iter().map(|p| p.to_string()).collect();
            query.push_str(&format!("&partitions={}", list.join(",")));
        }
        let token = match config.admin.bearer() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{}: cannot read admin.token_file: {e}", app.name());
                return ExitCode::from(2);
            }
        };
        match admin::request_with(addr, "POST", &format!("/replay?{query}"), b"", token.as_deref()) {
            Ok((200, body)) => {
                println!("{}", body.trim());
                if !args.no_wait {
                    follow_replay(addr, config, &body);
                }
                return ExitCode::SUCCESS;
            }
            Ok((_, body)) => {
                eprintln!(
                    "{}: replay refused by the running app at {addr}: {}",
                    app.name(),
                    body.trim()
                );
                return ExitCode::from(2);
            }
            Err(_) => eprintln!("{}: no app answers at {addr}; replaying offline", app.name()),
        }
    }
    match crate::runtime::operator::offline(config, &request) {
        Ok(offsets) => {
            for (p, o) in offsets {
                println!("partition {p}: replay from offset {o} when the app next starts");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", app.name());
            ExitCode::from(2)
        }
    }
}

impl AppCli {
    /// Parses the process arguments under the app's own name.
    pub fn parse_for(app: AppKind) -> Self {
        let about = match app {
            AppKind::Rollup => {
                "Rolls metric points up into 5m/1h/1d windows (and optionally runs CUSUM), from Kafka to Kafka."
            }
            AppKind::Detector => {
                "Flags change points in metric series with a two-sided CUSUM, from Kafka to Kafka."
            }
        };
        let matches = AppCli::command().name(app.name()).about(about).get_matches();
        AppCli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }

    /// Flags as `section.key` overrides.
    pub fn overrides(&self, app: AppKind) -> Vec<(&'static str, toml::Value)> {
        let s = |v: &Option<String>| v.clone().map(toml::Value::String);
        let output_key = match app {
            AppKind::Rollup => "topics.rollups",
            AppKind::Detector => "topics.anomalies",
        };
        let mut out: Vec<(&'static str, Option<toml::Value>)> = vec![
            ("kafka.brokers", s(&self.brokers)),
            ("kafka.group", s(&self.group)),
            ("topics.input", s(&self.input_topic)),
            ("topics.anomalies", s(&self.anomaly_topic)),
            (output_key, s(&self.output_topic)),
            ("topics.dead_letter", s(&self.dlq_topic)),
            ("topics.late", s(&self.late_topic)),
            ("admin.listen", s(&self.admin_listen)),
            (
                "runtime.workers",
                self.workers.map(|w| toml::Value::Integer(w as i64)),
            ),
        ];
        if self.with_cusum {
            out.push(("cusum.enabled", Some(toml::Value::Boolean(true))));
        }
        out.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect()
    }

    pub fn load_config(&self, app: AppKind) -> Result<Config, ConfigError> {
        Config::load(
            app,
            self.config.as_deref(),
            std::env::vars(),
            &self.overrides(app),
        )
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields), for log collectors.
    Json,
}

/// Starts logging to stderr.
pub fn init_tracing(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        // Colours only on a terminal: log files and collectors get plain text.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The whole life of an app process; returns its exit code.
pub fn main(app: AppKind) -> ExitCode {
    let cli = AppCli::parse_for(app);
    init_tracing(&cli.log, cli.log_format);
    let config = match cli.load_config(app) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", app.name());
            return ExitCode::from(2);
        }
    };
    if cli.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    if let Some(AppCommand::Replay(args)) = &cli.command {
        return replay_command(app, &config, args);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{}: cannot start async runtime: {e}", app.name());
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(config, shutdown_signal())) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "{} stopped", app.name());
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown requested; finishing work, flushing outputs and committing");
}

/// Runs the pipeline and its admin endpoint until `shutdown` completes or the runtime
/// stops by itself.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<RunSummary, RuntimeError> {
    let listen = config.admin.listen.clone();
    let admin_config = config.admin.clone();
    let runtime = Runtime::start(config)?;
    let metrics = runtime.metrics().clone();
    let control = runtime.control();
    let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
    if !listen.is_empty() {
        match admin::bind(&listen).await {
            Ok(listener) => {
                let addr = listener
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or(listen.clone());
                tracing::info!(
                    addr,
                    "admin endpoint listening (/metrics, /health/live, /health/ready, /status)"
                );
                tokio::spawn(admin::serve(
                    listener,
                    admin_config.protect(routes(metrics, control)),
                    async move {
                        let _ = admin_stop_rx.await;
                    },
                ));
            }
            Err(e) => {
                runtime.stop();
                let _ = tokio::task::spawn_blocking(move || runtime.join()).await;
                return Err(RuntimeError::start(format!("the admin endpoint on {listen}"))(e));
            }
        }
    }
    tokio::pin!(shutdown);
    let mut check = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = &mut shutdown => { runtime.stop(); break; }
            _ = check.tick() => if runtime.is_finished() { break; },
        }
    }
    let result = tokio::task::spawn_blocking(move || runtime.join())
        .await
        .map_err(|_| RuntimeError::Panicked)?;
    let _ = admin_stop_tx.send(());
    result
}

fn routes(metrics: Arc<Metrics>, control: ControlHandle) -> Arc<dyn admin::Handler> {
    Arc::new(move |r: &Request| match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/replay") => {
            let request = ReplayRequest::from_query(|k| r.query_param(k));
            match request
                .map_err(ReplayError::from)
                .and_then(|req| control.replay(req))
            {
                Ok(offsets) => {
                    let started: Vec<_> = offsets
                        .iter()
                        .map(|(p, o)| serde_json::json!({"partition": p, "from_offset": o}))
                        .collect();
                    Response::json(200, &serde_json::json!({ "replaying": started }))
                }
                Err(e) => Response::json(400, &serde_json::json!({ "error": e.to_string() })),
            }
        }
        ("GET", "/metrics") => Response {
            status: 200,
            content_type: crate::metrics::CONTENT_TYPE,
            body: metrics.render().into_bytes(),
        },
        // Liveness: the process answers. Readiness: see Metrics::readiness.
        ("GET", "/health" | "/health/live") => Response::text(200, "ok\n"),
        ("GET", "/health/ready") => Response::readiness(metrics.readiness()),
        ("GET", "/status") => {
            let partitions: Vec<_> = metrics
                .partitions()
                .into_iter()
                .map(|((topic, partition), g)| {
                    serde_json::json!({
                        "topic": topic, "partition": partition,
                        "watermark_ms": g.watermark_ms, "processed_offset": g.processed_offset,
                        "committed_offset": g.committed_offset, "series": g.series,
                        "replaying": g.replaying,
                    })
                })
                .collect();
            Response::json(
                200,
                &serde_json::json!({
                    "ready": metrics.readiness().is_ok(),
                    "assigned_partitions": metrics.assigned_partitions.get(),
                    "records_consumed": metrics.records_consumed.get(),
                    "partitions": partitions,
                }),
            )
        }
        _ => Response::not_found(),
    })
}
