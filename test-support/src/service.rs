//! A workspace binary run by a test: stderr captured in a file, `/metrics` and `/readyz`
//! readable, SIGTERM or SIGKILL on demand, killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::probe::http_get;
use crate::{free_port, target_bin, NatsServer};

/// A running service binary, killed on drop; its stderr goes to a file the test can search.
pub struct Service {
    /// The process.
    pub child: Child,
    /// Its `--http-listen` port.
    pub http_port: u16,
    /// Its stderr.
    pub log: PathBuf,
}

impl Service {
    /// Starts `binary` with `args`, talking to `nats`, with extra environment `env`.
    pub fn spawn(binary: &str, nats: &NatsServer, args: &[&str], env: &[(&str, &str)]) -> Service {
        let http_port = free_port();
        let log = nats.data_dir().join(format!("{binary}-{http_port}.log"));
        let log_file = std::fs::File::create(&log).expect("create the service log file");
        let mut command = Command::new(target_bin(binary));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("NATS_URL", nats.url())
            .env("RUST_LOG", "info")
            .env("HTTP_LISTEN", format!("127.0.0.1:{http_port}"))
            .envs(env.iter().copied())
            .args(args)
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("spawn {binary}: {error}"));
        Service {
            child,
            http_port,
            log,
        }
    }

    /// The `/metrics` page (empty while nothing listens).
    pub fn metrics(&self) -> String {
        http_get(self.http_port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// `/readyz` status, or None while nothing listens.
    pub fn readiness(&self) -> Option<(u16, String)> {
        http_get(self.http_port, "/readyz")
    }

    /// Everything it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("send SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the service") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "did not stop within 20 s of SIGTERM; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `condition` every 100 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
