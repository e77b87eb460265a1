//! A mosquitto child process.

use std::path::{Path, PathBuf};

use crate::configs;
use crate::probe;
use crate::process::{self, DataDir, ServerCommand, ServerProcess};
use crate::programs;

/// A mosquitto broker on a free loopback port with persistence, killed and deleted on drop.
///
/// The data folder holds `mosquitto.conf`, `mosquitto.log` and the persistence file `mosquitto.db`.
/// Mosquitto writes `mosquitto.db` on a clean stop (and every `autosave_interval`, 30 min by default),
/// so [`MosquittoServer::kill`] loses whatever was queued since.
pub struct MosquittoServer {
    process: ServerProcess,
    port: u16,
    /// Dropped after `process`, so the folder is removed only once the broker is gone.
    data_dir: DataDir,
}

impl MosquittoServer {
    /// Starts a broker for the test `name` and waits until its port accepts connections.
    ///
    /// Panics with the log's tail when the broker does not become ready within 30 s, and names the Debian package
    /// when `mosquitto` is not installed.
    pub fn start(name: &str) -> MosquittoServer {
        MosquittoServer::start_with_config(name, "")
    }

    /// Like [`MosquittoServer::start`], with `extra_config` appended to the generated config file.
    ///
    /// Use it for password files, TLS listeners or `autosave_interval`.
    pub fn start_with_config(name: &str, extra_config: &str) -> MosquittoServer {
        let executable = programs::MOSQUITTO.require();
        let data_dir = DataDir::create(name);
        let config_path = data_dir.path().join("mosquitto.conf");
        let (process, port) = process::start_on_free_ports(|| {
            let port = crate::free_port();
            let config = configs::mosquitto_config(data_dir.path(), port, extra_config);
            crate::write_file(&config_path, &config);
            let mut process = ServerProcess::new(ServerCommand {
                program: programs::MOSQUITTO,
                executable: executable.clone(),
                args: vec!["-c".into(), config_path.clone().into()],
                envs: Vec::new(),
                console_log: data_dir.path().join("console.log"),
                server_logs: vec![log_path(data_dir.path())],
            });
            let outcome = process.start(|| probe::tcp_accepts(port));
            (process, outcome, port)
        });
        MosquittoServer {
            process,
            port,
            data_dir,
        }
    }

    /// Broker URL, `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Listener port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Folder holding the config, the log and the persistence file.
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// Stops the broker with SIGTERM, which saves its persistence file, and waits, sending SIGKILL after 10 s.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Kills the broker with SIGKILL and waits, as a crash would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the broker again on the same port with the same data, stopping it first if it runs.
    pub fn restart(&mut self) {
        self.process.stop();
        let port = self.port;
        self.process.start_or_panic(|| probe::tcp_accepts(port));
    }
}

fn log_path(data_dir: &Path) -> PathBuf {
    data_dir.join(configs::MOSQUITTO_LOG_FILE)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    use super::*;

    /// Sends an MQTT 3.1.1 CONNECT and returns the CONNACK bytes.
    fn connect(port: u16) -> [u8; 4] {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set timeout");
        let packet = [
            0x10, 16, // CONNECT, remaining length
            0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0,
            60, // protocol, level, clean session, keep-alive
            0, 4, b't', b'e', b's', b't', // client id
        ];
        stream.write_all(&packet).expect("write CONNECT");
        let mut connack = [0; 4];
        stream.read_exact(&mut connack).expect("read CONNACK");
        connack
    }

    #[test]
    fn accepts_clients_across_restart() {
        let mut server = MosquittoServer::start("mosquitto-restart");
        assert_eq!(server.url(), format!("mqtt://127.0.0.1:{}", server.port()));
        assert_eq!(connect(server.port()), [0x20, 2, 0, 0]);

        server.restart();
        assert_eq!(connect(server.port()), [0x20, 2, 0, 0]);
        assert!(server.data_dir().join("mosquitto.db").is_file());

        server.kill();
        server.restart();
        assert_eq!(connect(server.port()), [0x20, 2, 0, 0]);
    }

    #[test]
    fn drop_kills_the_server_and_removes_its_folder() {
        let server = MosquittoServer::start("mosquitto-drop");
        let port = server.port();
        let data_dir = server.data_dir().to_owned();
        drop(server);
        assert!(!probe::tcp_accepts(port));
        if std::env::var_os(process::KEEP_TEST_DATA_VAR).is_none() {
            assert!(!data_dir.exists());
        }
    }
}
