//! Running commands, echoing each one first.

use std::ffi::OsStr;
use std::process::{Command, ExitStatus};

use anyhow::Context;

/// Builds `program args…`, through `sudo` unless we already run as root; `envs` are passed through sudo too.
pub fn privileged(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Command {
    if nix::unistd::geteuid().is_root() {
        let mut command = Command::new(program);
        command.args(args).envs(envs.iter().copied());
        return command;
    }
    let mut command = Command::new("sudo");
    // sudo resets the environment, so variables go on its command line as VAR=value.
    command
        .args(envs.iter().map(|(key, value)| format!("{key}={value}")))
        .arg(program)
        .args(args);
    command
}

/// Prints `command`, runs it with inherited stdio and returns its exit status.
///
/// # Errors
///
/// Fails when the command cannot be spawned.
pub fn run_status(command: &mut Command) -> anyhow::Result<ExitStatus> {
    let rendered = render(command);
    outln!("$ {rendered}");
    command
        .status()
        .with_context(|| format!("cannot run `{rendered}`"))
}

/// Like [`run_status`], failing unless the command exits with status 0.
///
/// # Errors
///
/// Fails when the command cannot be spawned or exits unsuccessfully.
pub fn run_checked(command: &mut Command) -> anyhow::Result<()> {
    let status = run_status(command)?;
    if !status.success() {
        anyhow::bail!("`{}` failed with {status}", render(command));
    }
    Ok(())
}

/// The cargo that runs xtask, so that tasks use the same toolchain.
///
/// `cargo run` (which `cargo xtask` is) hands xtask's own package variables down. ring's build
/// script declares `rerun-if-env-changed` on some of them, so a build that inherited them would
/// rebuild ring and everything above it, and the next plain `cargo build` would rebuild it all
/// again; they are removed.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(is_cargo_run_var) {
            command.env_remove(key);
        }
    }
    command
}

/// Whether `cargo run` sets `key` for the program it runs (package metadata, not configuration).
pub fn is_cargo_run_var(key: &str) -> bool {
    key.starts_with("CARGO_PKG_")
        || matches!(
            key,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "OUT_DIR"
        )
}

fn render(command: &Command) -> String {
    let envs = command.get_envs().filter_map(|(key, value)| {
        value.map(|value| format!("{}={}", key.to_string_lossy(), value.to_string_lossy()))
    });
    let words = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(OsStr::to_string_lossy)
        .map(|word| word.into_owned());
    envs.chain(words).collect::<Vec<_>>().join(" ")
}
