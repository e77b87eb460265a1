//! One HTTP port per process: `/metrics` (Prometheus), `/healthz` (liveness), `/readyz`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// Each long-running binary's own default port for `/metrics`, `/healthz` and `/readyz`, so
/// several run side by side on one host without flags (the local pipeline uses the same).
pub mod default_port {
    /// `sink-clickhouse run`.
    pub const SINK: u16 = 9464;
    /// `ingest-wave bridge`.
    pub const BRIDGE: u16 = 9465;
    /// `ingest-wave run`.
    pub const INGEST_WAVE: u16 = 9466;
    /// `ingest-wx run`.
    pub const INGEST_WX: u16 = 9467;
    /// `ingest-carbon run`.
    pub const INGEST_CARBON: u16 = 9468;
}

/// The default listen address of each port in [`default_port`], as clap shows it.
const DEFAULT_LISTEN: [(u16, &str); 5] = [
    (default_port::SINK, "127.0.0.1:9464"),
    (default_port::BRIDGE, "127.0.0.1:9465"),
    (default_port::INGEST_WAVE, "127.0.0.1:9466"),
    (default_port::INGEST_WX, "127.0.0.1:9467"),
    (default_port::INGEST_CARBON, "127.0.0.1:9468"),
];

/// The loopback address of `port`; a port outside [`default_port`] gets port 0 (any free one).
const fn default_listen(port: u16) -> &'static str {
    let mut index = 0;
    while index < DEFAULT_LISTEN.len() {
        if DEFAULT_LISTEN[index].0 == port {
            return DEFAULT_LISTEN[index].1;
        }
        index += 1;
    }
    "127.0.0.1:0"
}

/// Flags of the metrics and health endpoint, flattened into every long-running command;
/// `PORT` is the binary's default (one of [`default_port`]), on loopback.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs<const PORT: u16> {
    /// Address serving /metrics, /healthz and /readyz.
    // `default_value`, not `default_value_t`: the latter caches its text in a static that all
    // instances of this generic struct would share.
    #[arg(long, env = "HTTP_LISTEN", default_value = default_listen(PORT))]
    pub http_listen: SocketAddr,
}

/// Readiness of a process, as a set of named checks that must all pass.
///
/// Components report their own state (`nats`, `clickhouse`, a feed) with [`Health::set_ready`]
/// and [`Health::set_not_ready`]; `/readyz` answers 200 only when every reported check passes
/// and the process is not shutting down.
#[derive(Debug, Clone, Default)]
pub struct Health {
    // A std mutex: it is never held across an await.
    checks: Arc<Mutex<BTreeMap<String, Result<(), String>>>>,
}

impl Health {
    /// Marks `check` as passing.
    pub fn set_ready(&self, check: &str) {
        self.set(check, Ok(()));
    }

    /// Marks `check` as failing with `reason`.
    pub fn set_not_ready(&self, check: &str, reason: impl Into<String>) {
        self.set(check, Err(reason.into()));
    }

    /// Whether every check passes (and at least one was reported).
    pub fn is_ready(&self) -> bool {
        self.report().0
    }

    /// `(ready, one line per check)`.
    pub fn report(&self) -> (bool, String) {
        let checks = match self.checks.lock() {
            Ok(checks) => checks,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut ready = !checks.is_empty();
        let mut lines = String::new();
        for (name, state) in checks.iter() {
            match state {
                Ok(()) => lines.push_str(&format!("{name}: ok\n")),
                Err(reason) => {
                    ready = false;
                    lines.push_str(&format!("{name}: {reason}\n"));
                }
            }
        }
        (ready, lines)
    }

    fn set(&self, check: &str, state: Result<(), String>) {
        let mut checks = match self.checks.lock() {
            Ok(checks) => checks,
            Err(poisoned) => poisoned.into_inner(),
        };
        checks.insert(check.to_owned(), state);
    }
}

/// Why the endpoint could not start.
#[derive(Debug, Error)]
#[error("cannot listen on {address} (--http-listen/HTTP_LISTEN); is another process using it?")]
pub struct HttpError {
    /// The configured address.
    pub address: SocketAddr,
    /// The bind error.
    #[source]
    pub source: std::io::Error,
}

/// Binds `address` and serves the endpoints until `shutdown` fires.
///
/// Binding happens before this returns, so a busy port is a startup error, not a log line.
///
/// # Errors
///
/// Returns [`HttpError`] when the address cannot be bound.
pub async fn serve(
    address: SocketAddr,
    metrics: PrometheusHandle,
    health: Health,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, HttpError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| HttpError { address, source })?;
    let bound = listener.local_addr().unwrap_or(address);
    tracing::info!(address = %bound, "serving /metrics, /healthz, /readyz");
    let state = Endpoints {
        metrics,
        health,
        shutdown: shutdown.clone(),
    };
    let router = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readiness_page))
        .with_state(state);
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "metrics endpoint stopped");
        }
    }))
}

#[derive(Clone)]
struct Endpoints {
    metrics: PrometheusHandle,
    health: Health,
    shutdown: CancellationToken,
}

async fn metrics_page(State(endpoints): State<Endpoints>) -> String {
    endpoints.metrics.run_upkeep();
    endpoints.metrics.render()
}

async fn readiness_page(State(endpoints): State<Endpoints>) -> (StatusCode, String) {
    if endpoints.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
    }
    match endpoints.health.report() {
        (true, lines) => (StatusCode::OK, lines),
        (false, lines) if lines.is_empty() => {
            (StatusCode::SERVICE_UNAVAILABLE, "starting\n".into())
        }
        (false, lines) => (StatusCode::SERVICE_UNAVAILABLE, lines),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_binary_has_its_own_loopback_default_port() {
        let ports: std::collections::BTreeSet<u16> =
            DEFAULT_LISTEN.iter().map(|(port, _)| *port).collect();
        assert_eq!(ports.len(), DEFAULT_LISTEN.len(), "ports repeat");
        for (port, text) in DEFAULT_LISTEN {
            let address: SocketAddr = text.parse().unwrap();
            assert_eq!(address, SocketAddr::from(([127, 0, 0, 1], port)));
        }
        assert_eq!(default_listen(1), "127.0.0.1:0");
    }

    use super::*;

    #[test]
    fn ready_only_when_every_check_passes() {
        let health = Health::default();
        assert!(!health.is_ready(), "no check reported yet");
        health.set_ready("nats");
        assert!(health.is_ready());
        health.set_not_ready("clickhouse", "connection refused");
        let (ready, lines) = health.report();
        assert!(!ready);
        assert_eq!(lines, "clickhouse: connection refused\nnats: ok\n");
        health.set_ready("clickhouse");
        assert!(health.is_ready());
    }
}
