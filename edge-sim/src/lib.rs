//! `edge-sim`: the edge simulator and load generator.
//!
//! Layout:
//! - [`synthetic`]: deterministic, distinct, valid observations of each kind, and malformed ones;
//! - [`publish`]: the `publish` mode, which sends them to JetStream and reports what it sent;
//! - [`swarm`]: the `mqtt` mode, simulated Pi buoys publishing readings to the broker;
//! - [`upstream`]: the `http` mode, the IMOS, BOM and Electricity Maps APIs served locally.

pub mod publish;
pub mod swarm;
pub mod synthetic;
pub mod upstream;

use clap::{Parser, Subcommand};
use runtime::LogArgs;
use tokio_util::sync::CancellationToken;

/// Command line of `edge-sim`.
#[derive(Debug, Parser)]
#[command(
    name = "edge-sim",
    version,
    about = "Simulates NomadWave's edge: synthetic events for JetStream"
)]
pub struct Cli {
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
    /// Mode.
    #[command(subcommand)]
    pub command: Command,
}

/// Modes.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish N distinct valid events of a kind to JetStream, plus optional duplicates and
    /// malformed messages; prints what was sent.
    Publish(Box<publish::PublishArgs>),
    /// Simulate N Pi buoys publishing wave readings to MQTT (QoS 1); forever, or exactly
    /// --messages then exit; prints what was sent.
    Mqtt(Box<swarm::SwarmArgs>),
    /// Serve the IMOS, BOM and Electricity Maps APIs locally, in their real formats with
    /// plausible, changing values, until SIGINT/SIGTERM; prints `listening=ADDR`.
    Http(upstream::HttpArgs),
}

/// Runs the parsed command.
///
/// # Errors
///
/// Bad configuration or a runtime failure, with context.
pub async fn run(cli: Cli, shutdown: CancellationToken) -> anyhow::Result<()> {
    match cli.command {
        Command::Publish(args) => {
            let report = publish::publish(&args, shutdown).await?;
            println!("{report}");
            Ok(())
        }
        Command::Mqtt(args) => {
            let report = swarm::run_swarm(&args, shutdown).await?;
            println!("{report}");
            match report.messages {
                // A bounded run stopped by a signal says so in its exit status too, so that
                // its report is never taken for a finished run.
                Some(total) if !report.is_complete() => Err(anyhow::anyhow!(
                    "interrupted: the broker acknowledged {} of --messages {total}",
                    report.acked
                )),
                _ => Ok(()),
            }
        }
        Command::Http(args) => Ok(upstream::serve(&args, shutdown).await?),
    }
}
