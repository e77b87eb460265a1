//! `bench`: thin entry point; everything lives in the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = bench::Cli::parse();
    if let Err(error) = runtime::telemetry::init_tracing(&cli.log) {
        return runtime::exit_code(Err(error.into()));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return runtime::exit_code(Err(error.into())),
    };
    runtime::exit_code(runtime.block_on(bench::run(cli)))
}
