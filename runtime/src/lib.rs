//! Shared plumbing for every NomadWave binary, written once.
//!
//! This crate knows nothing about feeds or tables. It gives each service:
//! - [`nats`]: connection options from flags/env (URL list, user/password, token, creds, TLS)
//!   and a connect that fails with a one-line error naming the setting;
//! - [`provision`]: idempotent creation of streams, pull consumers and KV buckets;
//! - [`publish`]: publishing with `Nats-Msg-Id` and waiting for the stream's ack, retried;
//! - [`http`]: one port per process serving `/metrics`, `/healthz` and `/readyz`;
//! - [`mqtt`]: MQTT broker settings (URL, credentials, keep-alive) for the bridge and simulator;
//! - [`telemetry`]: tracing in text or JSON, and the Prometheus recorder;
//! - [`service`]: the start every long-running command shares (endpoint, NATS, streams);
//! - [`shutdown`]: the process-wide cancellation token fired by SIGINT/SIGTERM;
//! - [`retry`]: named `backon` retry policies and the loop that logs and counts each retry;
//! - [`config`]: the configuration error type and the exit codes every `main` uses;
//! - [`Allocator`]: the allocator the binaries on a per-message path declare as global, and
//!   [`disable_transparent_huge_pages`], which the sink calls before its first batch.

pub mod config;
pub mod http;
pub mod mqtt;
pub mod nats;
pub mod provision;
pub mod publish;
pub mod retry;
pub mod service;
pub mod shutdown;
pub mod telemetry;

/// The global allocator of the binaries on a per-message path (the sink, the bridge):
/// mimalloc spends fewer instructions per allocation than glibc's malloc there and keeps no
/// per-thread arenas growing (measured in BENCHMARKS.md). Each such `main` declares
/// `#[global_allocator] static ALLOCATOR: runtime::Allocator = runtime::Allocator;`.
pub use mimalloc::MiMalloc as Allocator;

/// Turns transparent huge pages off for this process (`prctl(PR_SET_THP_DISABLE)`), whatever
/// the host's `/sys/kernel/mm/transparent_hugepage` setting and mimalloc's own
/// `MADV_HUGEPAGE` advice say. The sink frees and refills batches of tens of megabytes; with
/// huge pages on, the kernel zeroing 2 MiB pages on its faults took a quarter of its CPU time
/// (BENCHMARKS.md, 2026-12-07). The flag belongs to the process and is read at page faults,
/// so it also applies to memory mapped before the call; it changes nothing on the host.
///
/// # Errors
///
/// The `prctl` error (a kernel older than 3.15); the process then keeps the host's setting.
#[cfg(target_os = "linux")]
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    nix::sys::prctl::set_thp_disable(true).map_err(std::io::Error::from)
}

/// Not Linux: there is no per-process switch, and nothing to do.
///
/// # Errors
///
/// Never.
#[cfg(not(target_os = "linux"))]
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    Ok(())
}

pub use config::{
    exit_code, parse_duration, ConfigError, Secret, EXIT_BAD_CONFIG, EXIT_RUNTIME_FAILURE,
};
pub use http::{Health, HttpArgs};
pub use nats::{NatsArgs, NatsSettings};
pub use retry::{ErrorClass, RetryPolicy};
pub use telemetry::LogArgs;
