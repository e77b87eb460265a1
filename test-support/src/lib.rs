//! Real servers for NomadWave's integration tests.
//!
//! Each server runs as a child process on free loopback ports, with its own data folder under
//! `<workspace>/.data/test/<name>-<random>`.
//! Dropping a server kills it with SIGKILL and deletes the folder, unless `NOMADWAVE_KEEP_TEST_DATA` is set.
//! A missing server program fails the test with the Debian package to install; nothing is skipped.
//!
//! Constructors block until the server is ready (ClickHouse and NATS take well under a second), which is fine
//! inside a `#[tokio::test]`.
//!
//! Layout:
//! - `nats`, `clickhouse`, `mosquitto`: [`NatsServer`], [`ClickHouseServer`], [`MosquittoServer`];
//! - [`configs`]: the config file writers, also used by `cargo xtask services`;
//! - [`probe`]: readiness checks, also used by `cargo xtask services`;
//! - [`service`]: a workspace binary under test ([`service::Service`]);
//! - [`programs`]: where the server programs live and which Debian package brings each;
//! - `process`: the child-process and data-folder lifecycles behind all three servers;
//! - `http`: a minimal HTTP/1.0 client for ClickHouse.

#![warn(missing_docs)]

pub mod configs;
pub mod probe;
pub mod programs;
pub mod service;

mod clickhouse;
mod http;
mod mosquitto;
mod nats;
mod process;

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

pub use clickhouse::ClickHouseServer;
pub use configs::ClickHousePorts;
pub use mosquitto::MosquittoServer;
pub use nats::{
    executable as nats_server_executable, version_of as nats_server_version, NatsServer,
    NATS_SERVER_OVERRIDE,
};

/// A folder `<workspace>/.data/test/<name>-<random hex>` for files a test writes before it
/// starts a server (certificates, keys, credentials), removed on drop unless
/// `NOMADWAVE_KEEP_TEST_DATA` is set.
pub struct ScratchDir(process::DataDir);

impl ScratchDir {
    /// Creates the folder, panicking with its path when that fails.
    pub fn create(name: &str) -> ScratchDir {
        ScratchDir(process::DataDir::create(name))
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// Another process may take it before the caller binds it; the servers here retry on fresh ports when that happens.
pub fn free_port() -> u16 {
    let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)) {
        Ok(listener) => listener,
        Err(err) => panic!("cannot bind 127.0.0.1:0 to find a free port: {err}"),
    };
    match listener.local_addr() {
        Ok(address) => address.port(),
        Err(err) => panic!("cannot read the address of a bound listener: {err}"),
    }
}

/// The first of `n` consecutive TCP ports on 127.0.0.1 that were all free a moment ago (a
/// command that derives ports from one base, like `cargo xtask pipeline --metrics-port`).
pub fn free_port_run(n: u16) -> u16 {
    loop {
        let base = free_port();
        if base.checked_add(n).is_none() {
            continue;
        }
        if (1..n).all(|offset| TcpListener::bind((Ipv4Addr::LOCALHOST, base + offset)).is_ok()) {
            return base;
        }
    }
}

/// The workspace root: the folder holding the root `Cargo.toml`.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support sits one folder below the workspace root")
        .to_path_buf()
}

/// Path of the workspace binary `name`, built into the same target folder and profile as the running test.
///
/// Cargo's `CARGO_BIN_EXE_<name>` only covers binaries of the test's own package, so this looks next to the test
/// executable instead: test binaries live in `target/<profile>/deps/`, binaries in `target/<profile>/`.
/// Panics when the binary has not been built.
pub fn target_bin(name: &str) -> PathBuf {
    let test_exe = match std::env::current_exe() {
        Ok(path) => path,
        Err(err) => panic!("cannot locate the running test executable: {err}"),
    };
    let exe_folder = test_exe
        .parent()
        .expect("an executable path always has a parent folder");
    let profile_folder = match exe_folder.file_name() {
        Some(folder_name) if folder_name == "deps" => exe_folder
            .parent()
            .expect("a deps folder always sits inside a profile folder"),
        _ => exe_folder,
    };
    let bin = profile_folder.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        panic!(
            "binary `{name}` not found at {}: run `cargo build --workspace --bins` first (`cargo xtask test` does)",
            bin.display()
        );
    }
    bin
}

/// Writes `contents` to `path`, panicking with the path on failure.
pub(crate) fn write_file(path: &Path, contents: &str) {
    if let Err(err) = std::fs::write(path, contents) {
        panic!("cannot write {}: {err}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert!(TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok());
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("test-support").is_dir());
    }

    #[test]
    fn target_bin_names_the_build_command_when_missing() {
        let res = std::panic::catch_unwind(|| target_bin("no-such-binary"));
        let message = match res {
            Ok(path) => panic!("found a binary that should not exist: {}", path.display()),
            Err(payload) => payload
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_default(),
        };
        assert!(
            message.contains("cargo build --workspace --bins"),
            "{message}"
        );
    }
}
