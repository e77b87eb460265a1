//! A nats-server child process with JetStream.

use std::path::{Path, PathBuf};

use crate::configs;
use crate::probe;
use crate::process::{self, DataDir, ServerCommand, ServerProcess};
use crate::programs;

/// A nats-server with JetStream on a free loopback port, killed and deleted on drop.
///
/// The config lives in the data folder as `nats.conf`, JetStream stores in `jetstream/` and the log is `nats.log`.
pub struct NatsServer {
    process: ServerProcess,
    port: u16,
    /// Dropped after `process`, so the folder is removed only once the server is gone.
    data_dir: DataDir,
}

impl NatsServer {
    /// Starts a server for the test `name` and waits until JetStream and the client port are ready.
    ///
    /// Panics with the log's tail when the server does not become ready within 30 s, and names the Debian package
    /// when `nats-server` is not installed.
    pub fn start(name: &str) -> NatsServer {
        NatsServer::start_with_config(name, "")
    }

    /// Like [`NatsServer::start`], with `extra_config` appended to the generated config file.
    ///
    /// Use it for authorization, TLS or subject mappings.
    /// Readiness is read from the log, so it works whatever the extra config demands from clients,
    /// as long as `log_file` is not overridden.
    pub fn start_with_config(name: &str, extra_config: &str) -> NatsServer {
        let executable = executable();
        // Every test's output names the server version it ran on.
        eprintln!(
            "test-support: {name}: {} ({})",
            version_of(&executable),
            executable.display()
        );
        let data_dir = DataDir::create(name);
        let config_path = data_dir.path().join("nats.conf");
        let (process, port) = process::start_on_free_ports(|| {
            let port = crate::free_port();
            let config = configs::nats_config(data_dir.path(), port, extra_config);
            crate::write_file(&config_path, &config);
            let mut process = ServerProcess::new(ServerCommand {
                program: programs::NATS_SERVER,
                executable: executable.clone(),
                args: vec!["-c".into(), config_path.clone().into()],
                envs: Vec::new(),
                console_log: data_dir.path().join("console.log"),
                server_logs: vec![log_path(data_dir.path())],
            });
            let outcome = process.start(readiness_check(data_dir.path(), port));
            (process, outcome, port)
        });
        NatsServer {
            process,
            port,
            data_dir,
        }
    }

    /// Client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Client port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Folder holding the config, the log and the JetStream store.
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

    /// Starts the server again on the same port with the same data, stopping it first if it runs.
    pub fn restart(&mut self) {
        self.process.stop();
        let is_ready = readiness_check(self.data_dir.path(), self.port);
        self.process.start_or_panic(is_ready);
    }
}

/// Names an alternative nats-server executable (the suite runs once on Debian's 2.9 and once
/// on a current release installed by `cargo xtask test`).
pub const NATS_SERVER_OVERRIDE: &str = "NOMADWAVE_NATS_SERVER";

/// The nats-server the tests use: [`NATS_SERVER_OVERRIDE`] when set, else the one on `PATH`.
///
/// Panics when the override names no file, or no nats-server is installed.
pub fn executable() -> PathBuf {
    match std::env::var_os(NATS_SERVER_OVERRIDE) {
        Some(path) if !path.is_empty() => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "{NATS_SERVER_OVERRIDE}={} names no file: run `cargo xtask install`, which installs the current nats-server under .data/",
                path.display()
            );
            path
        }
        _ => programs::NATS_SERVER.require(),
    }
}

/// What `executable --version` prints (`nats-server: v2.15.1`), trimmed; the error when it fails.
pub fn version_of(executable: &Path) -> String {
    match std::process::Command::new(executable)
        .arg("--version")
        .output()
    {
        Ok(output) => String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        Err(error) => format!("nats-server --version failed: {error}"),
    }
}

fn log_path(data_dir: &Path) -> PathBuf {
    data_dir.join(configs::NATS_LOG_FILE)
}

/// Ready once this run has logged "Server is ready" (JetStream starts before the listener) and the port accepts.
///
/// The log offset is taken now, before the spawn, so lines from an earlier run of the same folder do not count.
fn readiness_check(data_dir: &Path, port: u16) -> impl FnMut() -> bool {
    let log = log_path(data_dir);
    let offset = probe::file_len(&log);
    move || {
        probe::log_contains_after(&log, offset, configs::NATS_READY_LOG_LINE)
            && probe::tcp_accepts(port)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    use super::*;

    /// Sends one request over the raw NATS protocol and returns the reply payload.
    fn request(port: u16, subject: &str, payload: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("read INFO");
        assert!(line.starts_with("INFO "), "unexpected greeting: {line}");
        let commands = format!(
            "CONNECT {{\"verbose\":false}}\r\nSUB _INBOX.reply 1\r\nPUB {subject} _INBOX.reply {}\r\n{payload}\r\n",
            payload.len()
        );
        stream.write_all(commands.as_bytes()).expect("write");
        loop {
            line.clear();
            reader.read_line(&mut line).expect("read reply");
            let Some(header) = line.strip_prefix("MSG _INBOX.reply 1 ") else {
                continue;
            };
            let n_bytes: usize = header.trim().parse().expect("payload size");
            let mut body = vec![0; n_bytes + 2];
            reader.read_exact(&mut body).expect("read payload");
            body.truncate(n_bytes);
            return String::from_utf8(body).expect("utf-8 payload");
        }
    }

    fn ping(port: u16) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("read INFO");
        stream
            .write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
            .expect("write PING");
        line.clear();
        reader.read_line(&mut line).expect("read PONG");
        line.trim().to_owned()
    }

    #[test]
    fn answers_ping_and_keeps_streams_across_restart() {
        let mut server = NatsServer::start("nats-restart");
        assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));
        assert_eq!(ping(server.port()), "PONG");

        let created = request(
            server.port(),
            "$JS.API.STREAM.CREATE.KEEP",
            r#"{"name":"KEEP","subjects":["keep.>"],"storage":"file"}"#,
        );
        assert!(created.contains("\"name\":\"KEEP\""), "{created}");

        server.restart();
        let info = request(server.port(), "$JS.API.STREAM.INFO.KEEP", "");
        assert!(info.contains("\"name\":\"KEEP\""), "{info}");

        server.kill();
        server.restart();
        assert_eq!(ping(server.port()), "PONG");
    }

    #[test]
    fn drop_kills_the_server_and_removes_its_folder() {
        let server = NatsServer::start("nats-drop");
        let port = server.port();
        let data_dir = server.data_dir().to_owned();
        drop(server);
        assert!(!probe::tcp_accepts(port));
        if std::env::var_os(process::KEEP_TEST_DATA_VAR).is_none() {
            assert!(!data_dir.exists());
        }
    }

    #[test]
    fn extra_config_is_applied() {
        let server = NatsServer::start_with_config(
            "nats-extra",
            "authorization { user: alice, password: s3cret }",
        );
        let mut stream = TcpStream::connect(("127.0.0.1", server.port())).expect("connect");
        let mut greeting = String::new();
        BufReader::new(&mut stream)
            .read_line(&mut greeting)
            .expect("read INFO");
        assert!(greeting.contains("\"auth_required\":true"), "{greeting}");
    }

    #[test]
    fn startup_failure_reports_the_log() {
        let res =
            std::panic::catch_unwind(|| NatsServer::start_with_config("nats-bad", "listen: {"));
        let message = match res {
            Ok(server) => panic!("a broken config started a server on {}", server.url()),
            Err(payload) => payload
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_default(),
        };
        assert!(message.contains("exited with"), "{message}");
        assert!(message.contains("console.log ---"), "{message}");
    }
}
