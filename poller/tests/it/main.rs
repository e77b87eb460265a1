//! Real-server tests of the three pollers: a real nats-server (and clickhouse-server for the
//! end-to-end test), the real binaries, and a local upstream serving the genuine fixtures and
//! scripted faults.
//!
//! The binaries are the workspace's own (`cargo build --bins` first; `cargo xtask test` does).

#![allow(clippy::unwrap_used)]

mod cursor;
mod end_to_end;
mod faults;
mod upstream;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt as _;
use test_support::probe::http_get;
use test_support::{free_port, target_bin, workspace_root, NatsServer};

pub use upstream::{Reply, Upstream};

/// A fixture file's bytes.
pub fn fixture(path: &str) -> Vec<u8> {
    let full = workspace_root().join("fixtures").join(path);
    std::fs::read(&full).unwrap_or_else(|error| panic!("read {}: {error}", full.display()))
}

/// A running poller (or sink), killed on drop; its stderr goes to a file the test can search.
pub struct Service {
    pub child: Child,
    pub http_port: u16,
    pub log: PathBuf,
}

impl Service {
    /// Starts `binary` with `args`, talking to `nats`, with extra environment `env`.
    pub fn spawn(binary: &str, nats: &NatsServer, args: &[&str], env: &[(&str, &str)]) -> Service {
        let http_port = free_port();
        let log = nats.data_dir().join(format!("{binary}-{http_port}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
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

    pub fn metrics(&self) -> String {
        http_get(self.http_port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// `/readyz` status, or None while nothing listens.
    pub fn readiness(&self) -> Option<(u16, String)> {
        http_get(self.http_port, "/readyz")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
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

/// Every message of `stream`, decoded as JSON, in stream order.
pub fn stream_events(nats: &NatsServer, stream: &str) -> Vec<serde_json::Value> {
    let url = nats.url();
    let stream = stream.to_owned();
    runtime().block_on(async move {
        let client = async_nats::connect(url).await.unwrap();
        let jetstream = jetstream::new(client);
        let Ok(mut handle) = jetstream.get_stream(&stream).await else {
            return Vec::new();
        };
        let info = handle.info().await.unwrap().clone();
        if info.state.messages == 0 {
            return Vec::new();
        }
        let consumer = handle
            .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap();
        let mut events = Vec::new();
        while (events.len() as u64) < info.state.messages {
            let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .expect("stream read stalled")
                .unwrap()
                .unwrap();
            events.push(serde_json::from_slice(&message.payload).unwrap());
        }
        events
    })
}

/// Number of messages in `stream` (0 when it does not exist yet).
pub fn stream_len(nats: &NatsServer, stream: &str) -> u64 {
    let url = nats.url();
    let stream = stream.to_owned();
    runtime().block_on(async move {
        let client = async_nats::connect(url).await.unwrap();
        let jetstream = jetstream::new(client);
        match jetstream.get_stream(&stream).await {
            Ok(mut handle) => handle
                .info()
                .await
                .map(|info| info.state.messages)
                .unwrap_or(0),
            Err(_) => 0,
        }
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Distinct (site, observed_at) pairs among `events`.
pub fn distinct_keys(
    events: &[serde_json::Value],
    site_field: &str,
) -> std::collections::BTreeSet<(String, String)> {
    events
        .iter()
        .map(|event| {
            (
                event[site_field].as_str().unwrap().to_owned(),
                event["observed_at"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}
