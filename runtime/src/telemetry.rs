//! Tracing and the Prometheus recorder; the only place a subscriber or recorder is installed.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use thiserror::Error;
use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Logging flags, flattened into every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter in tracing's EnvFilter syntax, e.g. `info` or `sink_clickhouse=debug,info`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_filter: String,
}

/// Why telemetry could not be set up.
#[derive(Debug, Error)]
pub enum TelemetryError {
    /// The log filter does not parse.
    #[error("invalid --log-filter/RUST_LOG '{filter}'")]
    Filter {
        /// The configured filter.
        filter: String,
        /// The parser's message.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// The metrics recorder could not be installed.
    #[error("cannot install the metrics recorder")]
    Metrics(#[source] metrics_exporter_prometheus::BuildError),
}

/// Installs the global tracing subscriber, writing to stderr.
///
/// Logs go to stderr so that a command's real output (`parse`, `edge-sim`) stays alone on stdout.
///
/// # Errors
///
/// Returns [`TelemetryError::Filter`] for a filter that does not parse.
pub fn init_tracing(args: &LogArgs) -> Result<(), TelemetryError> {
    let filter = EnvFilter::try_new(&args.log_filter).map_err(|source| TelemetryError::Filter {
        filter: args.log_filter.clone(),
        source,
    })?;
    // Colours only on a terminal: a log file or a journal gets plain text to search.
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours)
        .with_writer(std::io::stderr);
    // A second initialisation (tests running several services in one process) is harmless.
    let _already_set = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}

/// Buckets of every `*_seconds` histogram: 1 ms to 60 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Installs the global Prometheus recorder with the `service` label on every metric.
///
/// # Errors
///
/// Returns [`TelemetryError::Metrics`] if a recorder is already installed.
pub fn install_metrics(service: &'static str) -> Result<PrometheusHandle, TelemetryError> {
    PrometheusBuilder::new()
        .add_global_label("service", service)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .map_err(TelemetryError::Metrics)?
        .install_recorder()
        .map_err(TelemetryError::Metrics)
}
