//! The MQTT bridge against real servers: mosquitto, nats-server, clickhouse-server, with the
//! real `edge-sim mqtt`, `ingest-wave bridge` and `sink-clickhouse` binaries.

#![allow(clippy::unwrap_used)]

mod bridge;

use std::process::Command;
use std::time::Duration;

use test_support::service::{wait_until, Service};
use test_support::{target_bin, ClickHouseServer, MosquittoServer, NatsServer};

/// The servers and the two long-running binaries of one test.
pub struct Edge {
    pub mosquitto: MosquittoServer,
    pub nats: NatsServer,
    pub clickhouse: ClickHouseServer,
    pub database: String,
    pub sink: Option<Service>,
    pub bridge: Option<Service>,
}

impl Edge {
    pub fn start(name: &str) -> Edge {
        // Autosave every second, so even an unclean broker stop loses at most a second of queue;
        // the in-flight window the shipped config uses.
        let mosquitto = MosquittoServer::start_with_config(
            name,
            "autosave_interval 1\nmax_inflight_messages 256\n",
        );
        let nats = NatsServer::start(name);
        let clickhouse = ClickHouseServer::start(name);
        let database = format!("nomadwave_{}", name.replace('-', "_"));
        let mut edge = Edge {
            mosquitto,
            nats,
            clickhouse,
            database,
            sink: None,
            bridge: None,
        };
        edge.sink = Some(edge.spawn_sink());
        edge.bridge = Some(edge.spawn_bridge(&[]));
        let bridge = edge.bridge.as_ref().unwrap();
        assert!(
            wait_until(Duration::from_secs(30), || bridge
                .log_text()
                .contains("subscribed")),
            "bridge never subscribed:\n{}",
            bridge.log_text()
        );
        edge
    }

    pub fn spawn_sink(&self) -> Service {
        Service::spawn(
            "sink-clickhouse",
            &self.nats,
            &["run", "--flush-interval", "200ms"],
            &[
                ("CLICKHOUSE_URL", &self.clickhouse.http_url()),
                ("CLICKHOUSE_DATABASE", &self.database),
            ],
        )
    }

    pub fn spawn_bridge(&self, extra: &[&str]) -> Service {
        let mut args = vec!["bridge"];
        args.extend_from_slice(extra);
        Service::spawn(
            "ingest-wave",
            &self.nats,
            &args,
            &[
                ("MQTT_URL", &self.mosquitto.url()),
                ("MQTT_CLIENT_ID", "bridge-under-test"),
            ],
        )
    }

    pub fn bridge(&self) -> &Service {
        self.bridge.as_ref().unwrap()
    }

    /// Starts `edge-sim mqtt` with `args`.
    pub fn spawn_swarm(&self, args: &[&str]) -> std::process::Child {
        Command::new(target_bin("edge-sim"))
            .env_clear()
            .env("MQTT_URL", self.mosquitto.url())
            .env("RUST_LOG", "warn")
            .arg("mqtt")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn count(&self, table: &str, modifier: &str) -> u64 {
        self.clickhouse
            .try_query(&format!(
                "SELECT count() FROM {}.{table} {modifier}",
                self.database
            ))
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits until `table` has `rows` rows; then checks that nothing more arrives and that raw
    /// and FINAL counts agree.
    pub fn assert_exactly(&self, table: &str, rows: u64, what: &str) {
        let arrived = wait_until(Duration::from_secs(120), || self.count(table, "") >= rows);
        assert!(
            arrived,
            "{what}: {} of {rows} rows arrived\nbridge log tail:\n{}",
            self.count(table, ""),
            tail(&self.bridge().log_text())
        );
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(self.count(table, ""), rows, "{what}: raw rows");
        assert_eq!(self.count(table, "FINAL"), rows, "{what}: rows FINAL");
    }
}

/// Waits for a swarm and returns its report line.
pub fn finish_swarm(child: std::process::Child) -> String {
    let output = child.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "edge-sim mqtt failed: {report}");
    report
}

pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
