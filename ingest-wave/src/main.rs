//! `ingest-wave`: thin entry point; everything lives in the library.

use std::process::ExitCode;

use clap::Parser;
use ingest_wave::Cli;

#[global_allocator]
static ALLOCATOR: runtime::Allocator = runtime::Allocator;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = runtime::telemetry::init_tracing(&cli.log) {
        return runtime::exit_code(Err(error.into()));
    }
    let shutdown = runtime::shutdown::shutdown_on_signals();
    runtime::exit_code(ingest_wave::run(cli, shutdown).await)
}
