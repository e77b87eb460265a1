//! `cargo xtask test`: install, build every binary, run nextest.

use std::process::ExitCode;

use anyhow::Context;

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
    shell::run_checked(shell::cargo().args(["build", "--workspace", "--bins"]))
        .context("building the workspace binaries failed")?;
    let status = shell::run_status(
        shell::cargo()
            .args(["nextest", "run", "--workspace", "--no-fail-fast"])
            .args(nextest_args),
    )?;
    let code = status
        .code()
        .and_then(|code| u8::try_from(code).ok())
        .unwrap_or(1);
    Ok(ExitCode::from(code))
}
