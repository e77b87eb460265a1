//! `cargo xtask test`: install, build every binary, run nextest on Debian's servers, then the
//! delivery, fault and bridge tests again on a current nats-server, then the sink's
//! integration tests again with its sinks reading without acks.

use std::process::ExitCode;

use anyhow::Context;

use crate::current_servers;
use crate::install;
use crate::shell;

/// Runs the whole workspace's tests and returns nextest's exit code.
///
/// Binaries are built first because integration tests start the binaries of other packages
/// (`test_support::target_bin`), which `cargo nextest run` alone does not build.
///
/// # Errors
///
/// Fails when installing or building fails, or nextest cannot be started.
pub fn run_tests(nextest_args: &[String]) -> anyhow::Result<ExitCode> {
    install::install()?;
    let workspace = current_servers::workspace_root()?;
    let current_nats = current_servers::install(&workspace)?;
    shell::run_checked(shell::cargo().args(["build", "--workspace", "--bins"]))
        .context("building the workspace binaries failed")?;
    // Pass 1: everything, on Debian's servers (nats-server 2.9).
    let everything = shell::run_status(
        shell::cargo()
            .args(["nextest", "run", "--workspace", "--no-fail-fast"])
            .env("NOMADWAVE_EXPECT_NATS_VERSION", "2.9")
            .args(nextest_args),
    )?;
    // Passes 2 and 3, skipped when the caller narrowed the run with its own arguments:
    // the delivery, fault and bridge tests (and the version check) on a current nats-server;
    // then the sink's integration tests with every sink reading without acks
    // (`--positions table`) unless a test asks for acks itself.
    let (current, table) = if nextest_args.is_empty() {
        let current = shell::run_status(
            shell::cargo()
                .args(["nextest", "run", "--no-fail-fast"])
                .args(
                    CURRENT_NATS_PACKAGES
                        .iter()
                        .flat_map(|package| ["-p", package]),
                )
                .env("NOMADWAVE_NATS_SERVER", &current_nats)
                .env(
                    "NOMADWAVE_EXPECT_NATS_VERSION",
                    current_servers::NATS_SERVER_RELEASE,
                ),
        )?;
        let table = shell::run_status(
            shell::cargo()
                .args(["nextest", "run", "--no-fail-fast", "-p", "sink-clickhouse"])
                .args(["-E", "binary(it)"])
                .env("NOMADWAVE_SINK_POSITIONS", "table"),
        )?;
        (Some(current), Some(table))
    } else {
        (None, None)
    };
    let failed = [Some(everything), current, table]
        .into_iter()
        .flatten()
        .find(|status| !status.success());
    let code = match failed {
        None => 0,
        Some(status) => status
            .code()
            .and_then(|code| u8::try_from(code).ok())
            .filter(|code| *code != 0)
            .unwrap_or(1),
    };
    if let (Some(current), Some(table)) = (current, table) {
        outln!(
            "test: pass on nats-server 2.9: {everything}; pass on nats-server {}: {current}; sink tests reading without acks (--positions table): {table}",
            current_servers::NATS_SERVER_RELEASE
        );
    }
    Ok(ExitCode::from(code))
}

/// The packages whose tests run a second time on the current nats-server: the sink's delivery
/// and fault tests, the bridge's, and the check that names the server version.
const CURRENT_NATS_PACKAGES: [&str; 3] = ["sink-clickhouse", "ingest-wave", "test-support"];
