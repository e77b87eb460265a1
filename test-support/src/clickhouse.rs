//! A clickhouse-server child process with a config rewritten from Debian's.

use std::path::{Path, PathBuf};

use crate::configs::{self, ClickHousePorts};
use crate::http::{self, HttpRequest};
use crate::probe;
use crate::process::{self, DataDir, ServerCommand, ServerProcess};
use crate::programs;

/// Env var that stops newer ClickHouse releases from forking a watchdog parent, so killing our child kills the server.
const WATCHDOG_VAR: &str = "CLICKHOUSE_WATCHDOG_ENABLE";

/// A clickhouse-server on free loopback ports, killed and deleted on drop.
///
/// The data folder holds `config.xml`, `users.xml`, `data/` and `log/`.
pub struct ClickHouseServer {
    process: ServerProcess,
    ports: ClickHousePorts,
    /// Dropped after `process`, so the folder is removed only once the server is gone.
    data_dir: DataDir,
}

impl ClickHouseServer {
    /// Starts a server for the test `name` with Debian's users (`default` without password) and waits for `/ping`.
    ///
    /// Panics with the log's tail when the server does not become ready within 30 s, and names the Debian package
    /// when `clickhouse-server` is not installed.
    pub fn start(name: &str) -> ClickHouseServer {
        let users_xml = match std::fs::read_to_string(configs::CLICKHOUSE_BASE_USERS) {
            Ok(text) => text,
            Err(err) => panic!(
                "cannot read {}: {err}; {}",
                configs::CLICKHOUSE_BASE_USERS,
                programs::CLICKHOUSE_SERVER.missing_message()
            ),
        };
        ClickHouseServer::start_with_users_xml(name, &users_xml)
    }

    /// Like [`ClickHouseServer::start`], with `users_xml` as the server's `users.xml`, for tests of authentication.
    ///
    /// [`ClickHouseServer::query`] runs as `default`; use [`ClickHouseServer::query_as`] when `users_xml` gives it a password.
    pub fn start_with_users_xml(name: &str, users_xml: &str) -> ClickHouseServer {
        let executable = programs::CLICKHOUSE_SERVER.require();
        let base_xml = match std::fs::read_to_string(configs::CLICKHOUSE_BASE_CONFIG) {
            Ok(text) => text,
            Err(err) => panic!(
                "cannot read {}: {err}; {}",
                configs::CLICKHOUSE_BASE_CONFIG,
                programs::CLICKHOUSE_SERVER.missing_message()
            ),
        };
        let data_dir = DataDir::create(name);
        let config_path = data_dir.path().join("config.xml");
        crate::write_file(&data_dir.path().join("users.xml"), users_xml);
        let (process, ports) = process::start_on_free_ports(|| {
            let ports = ClickHousePorts {
                http: crate::free_port(),
                tcp: crate::free_port(),
                interserver: crate::free_port(),
            };
            let config = match configs::clickhouse_config(&base_xml, data_dir.path(), ports) {
                Ok(config) => config,
                Err(err) => panic!("cannot rewrite {}: {err}", configs::CLICKHOUSE_BASE_CONFIG),
            };
            crate::write_file(&config_path, &config);
            let mut process = ServerProcess::new(ServerCommand {
                program: programs::CLICKHOUSE_SERVER,
                executable: executable.clone(),
                args: vec![format!("--config-file={}", config_path.display()).into()],
                envs: vec![(WATCHDOG_VAR.into(), "0".into())],
                console_log: data_dir.path().join("console.log"),
                server_logs: vec![log_path(data_dir.path())],
            });
            let outcome = process.start(|| probe::clickhouse_ping(ports.http));
            (process, outcome, ports)
        });
        ClickHouseServer {
            process,
            ports,
            data_dir,
        }
    }

    /// HTTP interface URL, `http://127.0.0.1:HTTPPORT`.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.http)
    }

    /// The HTTP, native and interserver ports on 127.0.0.1.
    pub fn ports(&self) -> ClickHousePorts {
        self.ports
    }

    /// Folder holding the config, the users file, the data and the logs.
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// Stops the server with SIGTERM and waits, sending SIGKILL after 10 s.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Kills the server with SIGKILL and waits, as a crash would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// The server's pid while it runs (to freeze it with SIGSTOP and thaw it with SIGCONT).
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Starts the server again on the same ports with the same data, stopping it first if it runs.
    pub fn restart(&mut self) {
        self.process.stop();
        let http_port = self.ports.http;
        self.process
            .start_or_panic(|| probe::clickhouse_ping(http_port));
    }

    /// Runs `sql` as the `default` user and returns the response body, trimmed.
    ///
    /// Blocks the calling thread for the length of the query.
    /// Panics with the server's message when the status is not 200.
    pub fn query(&self, sql: &str) -> String {
        self.send_query(&[], sql)
    }

    /// Runs `sql` like [`ClickHouseServer::query`], but returns `None` instead of panicking
    /// when the server is down or answers an error (for polling across restarts).
    pub fn try_query(&self, sql: &str) -> Option<String> {
        let request = HttpRequest {
            port: self.ports.http,
            method: "POST",
            path: "/",
            headers: &[],
            body: sql,
        };
        match http::send(&request) {
            Ok(response) if response.status == 200 => Some(response.body.trim().to_owned()),
            _ => None,
        }
    }

    /// Runs `sql` as `user` with `password`, like [`ClickHouseServer::query`].
    pub fn query_as(&self, user: &str, password: &str, sql: &str) -> String {
        self.send_query(
            &[("X-ClickHouse-User", user), ("X-ClickHouse-Key", password)],
            sql,
        )
    }

    fn send_query(&self, headers: &[(&str, &str)], sql: &str) -> String {
        let request = HttpRequest {
            port: self.ports.http,
            method: "POST",
            path: "/",
            headers,
            body: sql,
        };
        let response = match http::send(&request) {
            Ok(response) => response,
            Err(err) => panic!(
                "clickhouse query failed at {}: {err}\nquery: {sql}",
                self.http_url()
            ),
        };
        if response.status != 200 {
            panic!(
                "clickhouse answered {} to query: {sql}\n{}",
                response.status,
                response.body.trim()
            );
        }
        response.body.trim().to_owned()
    }
}

fn log_path(data_dir: &Path) -> PathBuf {
    data_dir
        .join(configs::CLICKHOUSE_LOG_FOLDER)
        .join(configs::CLICKHOUSE_LOG_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_queries_and_keeps_tables_across_restart() {
        let mut server = ClickHouseServer::start("clickhouse-restart");
        assert_eq!(server.query("SELECT 1"), "1");
        server.query("CREATE TABLE default.t (x UInt8) ENGINE = MergeTree ORDER BY x");
        server.query("INSERT INTO default.t VALUES (1), (2), (3)");

        server.restart();
        assert_eq!(server.query("SELECT count() FROM default.t"), "3");

        server.kill();
        server.restart();
        assert_eq!(server.query("SELECT count() FROM default.t"), "3");
    }

    #[test]
    fn custom_users_xml_requires_the_password() {
        let base = std::fs::read_to_string(configs::CLICKHOUSE_BASE_USERS).expect("users.xml");
        let users_xml = base.replacen("<password></password>", "<password>s3cret</password>", 1);
        assert_ne!(
            users_xml, base,
            "Debian's users.xml has an empty default password"
        );
        let server = ClickHouseServer::start_with_users_xml("clickhouse-users", &users_xml);
        assert_eq!(server.query_as("default", "s3cret", "SELECT 1"), "1");
        let res = std::panic::catch_unwind(|| server.query("SELECT 1"));
        let message = match res {
            Ok(body) => panic!("query without password succeeded: {body}"),
            Err(payload) => payload
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_default(),
        };
        assert!(
            message.contains("answered 401") || message.contains("answered 516"),
            "{message}"
        );
    }

    #[test]
    fn drop_kills_the_server_and_removes_its_folder() {
        let server = ClickHouseServer::start("clickhouse-drop");
        let ports = server.ports();
        let data_dir = server.data_dir().to_owned();
        drop(server);
        assert!(!probe::tcp_accepts(ports.http));
        assert!(!probe::tcp_accepts(ports.tcp));
        if std::env::var_os(process::KEEP_TEST_DATA_VAR).is_none() {
            assert!(!data_dir.exists());
        }
    }
}
