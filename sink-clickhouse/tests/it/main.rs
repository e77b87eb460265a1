//! Real-server tests of the sink: real nats-server, real clickhouse-server, the real binaries.
//!
//! Each test starts its own servers (free ports, data under `.data/test/`), so tests can stop,
//! kill and restart them freely. The binaries are the workspace's own (`cargo build --bins`
//! first; `cargo xtask test` does).

// Test code: a failed unwrap is a failed test, with the value in the message.
#![allow(clippy::unwrap_used)]

mod config;
mod dead_letters;
mod delivery;
mod faults;
mod lease;
mod operators;
mod partitions;
mod positions;
mod replay;

use std::collections::HashMap;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use test_support::probe::{http_get, metric_value};
use test_support::{free_port, target_bin, ClickHouseServer, NatsServer};

/// The servers of one test plus the settings every binary gets.
pub struct Pipeline {
    pub nats: NatsServer,
    pub clickhouse: ClickHouseServer,
    pub database: String,
    pub duplicate_window: &'static str,
}

/// The flags of a test about acknowledging reads (the durable consumer, its ack floor and
/// recovery, partitions): it keeps this mode under `NOMADWAVE_SINK_POSITIONS=table` too.
pub const ACKS: &[&str] = &["--positions", "acks"];

/// A running `sink-clickhouse run`, killed on drop.
pub struct Sink {
    pub child: Child,
    pub http_port: u16,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Pipeline {
    pub fn start(name: &str) -> Pipeline {
        Pipeline::start_with_nats_config(name, "")
    }

    /// Servers whose nats-server has `extra` in its config (subject mappings, auth).
    pub fn start_with_nats_config(name: &str, extra: &str) -> Pipeline {
        Pipeline {
            nats: NatsServer::start_with_config(name, extra),
            clickhouse: ClickHouseServer::start(name),
            database: format!("nomadwave_{}", name.replace('-', "_")),
            duplicate_window: "2m",
        }
    }

    fn env(&self, command: &mut Command) {
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("NATS_URL", self.nats.url())
            .env("CLICKHOUSE_URL", self.clickhouse.http_url())
            .env("CLICKHOUSE_DATABASE", &self.database)
            .env("NOMADWAVE_DUPLICATE_WINDOW", self.duplicate_window)
            // A SIGKILLed sink's lease lapses after 1.5 × 2 s, so restarts in tests wait little.
            .env("SINK_LEASE_TTL", "2s")
            .env("RUST_LOG", "info");
        // The whole suite in the other reading mode: `NOMADWAVE_SINK_POSITIONS=table`.
        if let Ok(mode) = std::env::var("NOMADWAVE_SINK_POSITIONS") {
            command.env("SINK_POSITIONS", mode);
        }
    }

    /// Starts the sink with `extra` flags after `run`.
    pub fn spawn_sink(&self, extra: &[&str]) -> Sink {
        self.spawn_sink_with_stderr(extra, Stdio::inherit())
    }

    /// Like [`Pipeline::spawn_sink`], with the sink's stderr sent to `stderr`.
    pub fn spawn_sink_with_stderr(&self, extra: &[&str], stderr: Stdio) -> Sink {
        let http_port = free_port();
        let mut command = Command::new(target_bin("sink-clickhouse"));
        self.env(&mut command);
        command
            .arg("run")
            .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = command.spawn().expect("spawn sink-clickhouse");
        Sink { child, http_port }
    }

    /// Runs a command of a workspace binary to completion; returns (exit code, stdout, stderr).
    pub fn run_binary(&self, binary: &str, args: &[&str]) -> (i32, String, String) {
        let mut command = Command::new(target_bin(binary));
        self.env(&mut command);
        let output = command.args(args).output().expect("run binary");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Starts `edge-sim publish` in the background.
    pub fn spawn_publish(&self, args: &[&str]) -> Child {
        let mut command = Command::new(target_bin("edge-sim"));
        self.env(&mut command);
        command
            .arg("publish")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn edge-sim")
    }

    /// Starts `edge-sim publish` of `count` wave events spread over `sites` sites.
    pub fn spawn_publish_wave(&self, count: u64, sites: u32) -> Child {
        self.spawn_publish(&[
            "--kind",
            "wave",
            "--count",
            &count.to_string(),
            "--sites",
            &sites.to_string(),
        ])
    }

    /// Runs `edge-sim publish` and parses its `key=value` report.
    pub fn publish(&self, args: &[&str]) -> HashMap<String, u64> {
        let child = self.spawn_publish(args);
        finish_publish(child)
    }

    pub fn query(&self, sql: &str) -> String {
        self.clickhouse.query(sql)
    }

    pub fn count(&self, table: &str) -> u64 {
        self.query(&format!("SELECT count() FROM {}.{table}", self.database))
            .parse()
            .expect("count is a number")
    }

    pub fn count_final(&self, table: &str) -> u64 {
        self.query(&format!(
            "SELECT count() FROM {}.{table} FINAL",
            self.database
        ))
        .parse()
        .expect("count is a number")
    }

    /// Polls until `table` holds `expected` rows or `timeout` passes; returns the last count.
    pub fn wait_for_rows(&self, table: &str, expected: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let count = self
                .clickhouse
                .try_query(&format!("SELECT count() FROM {}.{table}", self.database))
                .and_then(|text| text.parse().ok())
                .unwrap_or(0);
            if count >= expected || Instant::now() > deadline {
                return count;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The wave event `edge-sim publish --kind wave` sends for `index` (its default sites and seed).
pub fn synthetic_wave(index: u64) -> schema::Event<schema::WaveObservation> {
    let synthesizer = edge_sim::synthetic::Synthesizer {
        kind: schema::Kind::Wave,
        sites: 16,
        seed: 1,
    };
    schema::Event::decode(&synthesizer.event(index, chrono::Utc::now()).payload).unwrap()
}

/// Waits for an `edge-sim publish` child and parses its report.
pub fn finish_publish(mut child: Child) -> HashMap<String, u64> {
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("stdout piped")
        .read_to_string(&mut stdout)
        .expect("read edge-sim output");
    let status = child.wait().expect("wait edge-sim");
    assert!(
        status.success(),
        "edge-sim publish failed: {status}; output: {stdout}"
    );
    parse_report(&stdout)
}

pub fn parse_report(text: &str) -> HashMap<String, u64> {
    text.split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| {
            (
                key.to_owned(),
                value.parse().expect("report value is a number"),
            )
        })
        .collect()
}

/// Polls the sink's `/metrics` until `name{…label_fragment…}` reaches `expected`.
pub fn wait_for_metric(sink: &Sink, name: &str, label_fragment: &str, expected: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let value = http_get(sink.http_port, "/metrics")
            .map(|(_, page)| metric_value(&page, name, label_fragment))
            .unwrap_or(0.0);
        if value >= expected || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
