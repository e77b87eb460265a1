//! Where the server programs live and which Debian package brings each.

use std::path::PathBuf;

/// A server program and the Debian package that installs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerProgram {
    /// File name of the executable.
    pub program: &'static str,
    /// Debian package that installs it; named in every "not found" message.
    pub debian_package: &'static str,
}

/// The NATS server with JetStream.
pub const NATS_SERVER: ServerProgram = ServerProgram {
    program: "nats-server",
    debian_package: "nats-server",
};

/// The Mosquitto MQTT broker.
pub const MOSQUITTO: ServerProgram = ServerProgram {
    program: "mosquitto",
    debian_package: "mosquitto",
};

/// The ClickHouse server.
pub const CLICKHOUSE_SERVER: ServerProgram = ServerProgram {
    program: "clickhouse-server",
    debian_package: "clickhouse-server",
};

/// Folders searched after `PATH`, because Debian puts daemons in `sbin` folders that a non-root `PATH` lacks.
const SBIN_FOLDERS: [&str; 3] = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

impl ServerProgram {
    /// Looks the program up on `PATH`, then in the `sbin` folders.
    pub fn find(&self) -> Option<PathBuf> {
        let path_folders = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .unwrap_or_default();
        path_folders
            .into_iter()
            .chain(SBIN_FOLDERS.iter().map(PathBuf::from))
            .map(|folder| folder.join(self.program))
            .find(|candidate| candidate.is_file())
    }

    /// Message telling the reader how to install the program.
    pub fn missing_message(&self) -> String {
        format!(
            "`{}` was not found on PATH or in {}: install the Debian package `{}` (run `cargo xtask test`, which installs it)",
            self.program,
            SBIN_FOLDERS.join(", "),
            self.debian_package
        )
    }

    /// Looks the program up like [`ServerProgram::find`], panicking with [`ServerProgram::missing_message`] when it is absent.
    ///
    /// Tests fail rather than skip when a server is missing, so a machine without the servers cannot pass silently.
    pub fn require(&self) -> PathBuf {
        match self.find() {
            Some(path) => path,
            None => panic!("{}", self.missing_message()),
        }
    }
}
