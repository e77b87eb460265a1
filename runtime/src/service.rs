//! How every long-running command starts: the metrics and health endpoint, the NATS
//! connection (watched for readiness) and the event streams, in that order, so `/healthz`
//! answers while the rest connects.

use std::net::SocketAddr;

use async_nats::jetstream;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::http::HttpError;
use crate::nats::{NatsError, NatsSettings};
use crate::provision::{ensure_event_streams, ProvisionError, StreamPolicy};
use crate::telemetry::TelemetryError;
use crate::Health;

/// A started service's shared handles.
pub struct StartedService {
    /// Readiness checks served on `/readyz`; `nats` is kept up to date.
    pub health: Health,
    /// The endpoint's task; it ends after shutdown.
    pub http: tokio::task::JoinHandle<()>,
    /// The NATS connection.
    pub client: async_nats::Client,
    /// JetStream over it, with the event streams declared.
    pub jetstream: jetstream::Context,
}

/// Why a service could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// The metrics recorder could not be installed.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// The endpoint address could not be bound.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// NATS could not be reached or refused the connection (the error names the server).
    #[error(transparent)]
    Nats(#[from] NatsError),
    /// The event streams could not be declared.
    #[error(transparent)]
    Provision(#[from] ProvisionError),
}

/// Installs metrics for `service`, serves `/metrics`, `/healthz`, `/readyz` on `listen`,
/// connects to NATS as `service`, reports the connection's state as the `nats` check, and
/// declares the event streams with `streams`.
///
/// # Errors
///
/// The first step that failed, naming the address or server.
pub async fn start_service(
    service: &'static str,
    listen: SocketAddr,
    nats: &NatsSettings,
    streams: &StreamPolicy,
    shutdown: &CancellationToken,
) -> Result<StartedService, StartError> {
    let metrics = crate::telemetry::install_metrics(service)?;
    let health = Health::default();
    let http = crate::http::serve(listen, metrics, health.clone(), shutdown.clone()).await?;
    let client = nats.connect(service).await?;
    crate::nats::report_connection(client.clone(), health.clone(), shutdown.clone());
    let jetstream = jetstream::new(client.clone());
    ensure_event_streams(&jetstream, streams).await?;
    Ok(StartedService {
        health,
        http,
        client,
        jetstream,
    })
}

/// How long a process waits at exit for NATS to take its last messages.
const FINAL_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Flushes `client` before the process exits, waiting at most a few seconds: with the server
/// gone, async-nats would otherwise wait for a reconnect forever and a SIGTERM would not end
/// the process. What was not flushed is redelivered or republished later; `unsent` says what
/// that means for this caller, in the warning.
pub async fn flush_before_exit(client: &async_nats::Client, unsent: &str) {
    match tokio::time::timeout(FINAL_FLUSH_TIMEOUT, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, unsent, "flushing NATS at exit failed"),
        Err(_) => tracing::warn!(
            timeout_s = FINAL_FLUSH_TIMEOUT.as_secs(),
            unsent,
            "NATS did not take the last messages in time; exiting anyway"
        ),
    }
}
