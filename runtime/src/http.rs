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

/// Default address of the metrics and health endpoints.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9464";

/// Flags of the metrics and health endpoint, flattened into every long-running command.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// Address serving /metrics, /healthz and /readyz.
    #[arg(long, env = "HTTP_LISTEN", default_value = DEFAULT_HTTP_LISTEN)]
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
