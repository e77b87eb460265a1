//! `sink-clickhouse`: batches NomadWave events from JetStream into ClickHouse with
//! exactly-once effect.
//!
//! Layout:
//! - [`delivery`]: the delivery core, pure: sequences, incarnations, the check, gap and ack
//!   rules, batch identity, replay and layout refusals;
//! - [`config`]: flags and env, validated into [`config::SinkSettings`] before any I/O;
//! - [`version`]: the ClickHouse server version and its feature switches;
//! - [`tables`]: one column list per event table, which makes the DDL and upgrades;
//! - [`rows`]: row types, converted from schema events (refusing values a column cannot hold);
//! - [`database`]: the only code that talks to ClickHouse (migrations, the exact check,
//!   watermark, verification, inserts, error classification), every statement time-bounded;
//! - [`writer`]: the one write path (check, INSERT, retry), live and replayed;
//! - [`batch`]: a batch from collection to ack; [`dead_letter`]: its rejected messages;
//! - [`recovery`]: the re-read of a consumer's un-acked range;
//! - [`consume`]: the per-stream orchestration (collector and writer tasks);
//! - [`lease`]: one sink at a time per durable consumer;
//! - [`positions`]: reading without acks (`--positions table`): where to resume;
//! - [`shutdown`]: the two stop levels (stop intake, abandon);
//! - [`replay`]: re-reading a stream range into the live tables or another database,
//!   paced and verified;
//! - [`events`]: log lines and metrics, emitted together.

pub mod batch;
pub mod config;
pub mod consume;
pub mod database;
pub mod dead_letter;
pub mod delivery;
pub mod events;
pub mod lease;
pub mod positions;
pub mod recovery;
pub mod replay;
pub mod rows;
pub mod shutdown;
pub mod tables;
pub mod version;
pub mod writer;

use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use runtime::provision::StreamArgs;
use runtime::{HttpArgs, LogArgs, NatsArgs};
use schema::{CarbonIntensity, Kind, WaveObservation, WeatherObservation};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{BatchArgs, ClickHouseArgs, ClickHouseSettings, ConsumerArgs, SinkSettings};
use crate::consume::{consume_stream, ConsumeError, SinkContext};
use crate::database::Database;
use crate::lease::{ConsumerLease, LeaseError};
use crate::shutdown::SinkShutdown;

/// Command line of `sink-clickhouse`.
#[derive(Debug, Parser)]
#[command(
    name = "sink-clickhouse",
    version,
    about = "Writes NomadWave events from JetStream to ClickHouse, exactly once"
)]
pub struct Cli {
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database and event tables if missing (idempotent).
    Migrate(MigrateArgs),
    /// Consume the event streams into ClickHouse until SIGINT/SIGTERM.
    Run(Box<RunArgs>),
    /// Re-read a stream range into the live tables or another database, then verify counts
    /// and natural-key checksums; prints a report line; exits 1 when they differ.
    Replay(Box<replay::ReplayArgs>),
}

/// Flags of `migrate`.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// ClickHouse connection.
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
}

/// Flags of `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// ClickHouse connection.
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    /// Batching.
    #[command(flatten)]
    pub batch: BatchArgs,
    /// Consumer.
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    /// Stream retention and dedupe.
    #[command(flatten)]
    pub streams: StreamArgs,
    /// Metrics and health endpoint.
    #[command(flatten)]
    pub http: HttpArgs<{ runtime::http::default_port::SINK }>,
}

impl RunArgs {
    /// Validates the flags.
    ///
    /// # Errors
    ///
    /// A [`runtime::ConfigError`] naming the first unusable flag.
    pub fn settings(&self) -> Result<SinkSettings, runtime::ConfigError> {
        SinkSettings::from_args(
            &self.nats,
            &self.clickhouse,
            &self.batch,
            &self.consumer,
            &self.streams,
        )
    }
}

/// Runs the parsed command until done or until `shutdown` fires and the drain finished.
///
/// # Errors
///
/// Bad configuration (a [`runtime::ConfigError`] in the chain) or a runtime failure, with
/// context naming what failed.
pub async fn run(cli: Cli, shutdown: CancellationToken) -> anyhow::Result<()> {
    match cli.command {
        Command::Migrate(args) => migrate(&args).await,
        Command::Run(args) => run_sink(&args, shutdown).await,
        Command::Replay(args) => {
            let report = replay::replay(&args, shutdown).await?;
            println!("{report}");
            if !report.verified() {
                anyhow::bail!(
                    "verification failed: the stream has {} events (checksum {:016x}) in the range, the target {} (checksum {:016x})",
                    report.source.count, report.source.checksum, report.target.count, report.target.checksum
                );
            }
            Ok(())
        }
    }
}

async fn migrate(args: &MigrateArgs) -> anyhow::Result<()> {
    let settings = ClickHouseSettings::from_args(&args.clickhouse)?;
    let database = Database::connect(&settings)
        .await
        .with_context(|| format!("ClickHouse at {} (--clickhouse-url/CLICKHOUSE_URL, --clickhouse-user, CLICKHOUSE_PASSWORD)", settings.url))?;
    database.migrate().await?;
    tracing::info!(database = database.name(), version = %database.version(), "migrations applied");
    Ok(())
}

async fn run_sink(args: &RunArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let settings = args.settings()?;
    let started = runtime::service::start_service(
        "sink-clickhouse",
        args.http.http_listen,
        &settings.nats,
        &settings.streams,
        &shutdown,
    )
    .await?;
    let (health, http, client, jetstream) = (
        started.health,
        started.http,
        started.client,
        started.jetstream,
    );

    let database = Database::connect(&settings.clickhouse)
        .await
        .with_context(|| format!("ClickHouse at {} (--clickhouse-url/CLICKHOUSE_URL, --clickhouse-user, CLICKHOUSE_PASSWORD)", settings.clickhouse.url))?;
    database.migrate().await?;
    health.set_ready("clickhouse");

    // Only one sink acks a consumer at a time; a second one waits here as a standby.
    let lease = match ConsumerLease::acquire(
        &jetstream,
        &settings.consumer.durable_name,
        &settings.consumer.instance_id,
        settings.consumer.lease_ttl,
        &shutdown,
    )
    .await
    {
        Ok(lease) => Arc::new(lease),
        Err(LeaseError::Cancelled { .. }) => {
            tracing::info!("stopped while waiting as a standby; exiting");
            shutdown.cancel();
            let _ = http.await;
            return Ok(());
        }
        Err(error) => return Err(error.into()),
    };

    let sink_shutdown = SinkShutdown::new(&shutdown, settings.consumer.drain_timeout);
    // A lost lease stops consuming and any INSERT retry at once: another sink now owns this
    // consumer and re-reads whatever this one had not acked.
    sink_shutdown.follow_lease(lease.lost());
    let context = Arc::new(SinkContext {
        jetstream,
        database,
        settings: settings.clone(),
        health,
        shutdown: sink_shutdown.clone(),
        lease: lease.clone(),
    });
    let mut tasks = JoinSet::new();
    for kind in &settings.consumer.kinds {
        let context = context.clone();
        match kind {
            Kind::Wave => tasks.spawn(consume_stream::<WaveObservation>(context)),
            Kind::Weather => tasks.spawn(consume_stream::<WeatherObservation>(context)),
            Kind::Carbon => tasks.spawn(consume_stream::<CarbonIntensity>(context)),
        };
    }

    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.context("stream task panicked")?;
        if let Err(error) = result {
            tracing::error!(error = %runtime::config::error_line(&error), "stream consumer stopped");
            // A failing stream stops the others too, so the process exits and is restarted whole.
            sink_shutdown.stop_intake();
            first_error.get_or_insert(error);
        }
    }
    runtime::service::flush_before_exit(
        &client,
        "final acks: those messages will be redelivered and skipped",
    )
    .await;
    if lease.lost().is_cancelled() {
        // The cause of whatever the streams reported (an interrupted batch, for example).
        first_error = Some(ConsumeError::Lease(LeaseError::Lost {
            key: settings.consumer.durable_name.clone(),
            holder: "another sink".to_owned(),
        }));
    } else {
        lease.release().await;
    }
    shutdown.cancel();
    let _ = http.await;
    match first_error {
        Some(error) => Err(error.into()),
        None => {
            tracing::info!("drained; exiting");
            Ok(())
        }
    }
}
