//! `sink-clickhouse`: thin entry point; everything lives in the library.

use std::process::ExitCode;

use clap::Parser;
use sink_clickhouse::Cli;

#[global_allocator]
static ALLOCATOR: runtime::Allocator = runtime::Allocator;

fn main() -> ExitCode {
    // A Nomad dispatch passes optional meta it was not given as empty variables; they mean
    // "unset". Done before any thread exists.
    sink_clickhouse::replay::forget_empty_variables();
    let cli = Cli::parse();
    if let Err(error) = runtime::telemetry::init_tracing(&cli.log) {
        return runtime::exit_code(Err(error.into()));
    }
    // Batches are freed and refilled all the time: small pages make that cheap.
    if let Err(error) = runtime::disable_transparent_huge_pages() {
        tracing::warn!(%error, "cannot turn transparent huge pages off; the host's setting applies");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => return runtime::exit_code(Err(error.into())),
    };
    runtime.block_on(async {
        let shutdown = runtime::shutdown::shutdown_on_signals();
        runtime::exit_code(sink_clickhouse::run(cli, shutdown).await)
    })
}
