//! Every long-running binary started by hand with no `--http-listen` serves `/metrics`,
//! `/healthz` and `/readyz` on its own default port, so the sink, the bridge and the three
//! pollers run side by side on one host (before, all five defaulted to 9464 and every one
//! after the first failed with "Address already in use").

#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use test_support::probe::http_get;
use test_support::{free_port, target_bin, ClickHouseServer, MosquittoServer, NatsServer};

struct Running {
    name: &'static str,
    child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sink_bridge_and_pollers_started_by_hand_each_get_their_own_port() {
    let expected: [(&str, &[&str], u16); 5] = [
        ("sink-clickhouse", &["run"], 9464),
        ("ingest-wave", &["bridge"], 9465),
        ("ingest-wave", &["run", "--sites", "Tathra"], 9466),
        ("ingest-wx", &["run", "--stations", "IDN60901.94768"], 9467),
        (
            "ingest-carbon",
            &["run", "--zones", "AU-NSW", "--token", "t"],
            9468,
        ),
    ];
    for (binary, _, port) in expected {
        assert!(
            TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} ({binary}'s default) is taken on this machine; stop what uses it (a `cargo xtask pipeline`?) and run again"
        );
    }
    let nats = NatsServer::start("default-ports");
    let clickhouse = ClickHouseServer::start("default-ports");
    let mosquitto = MosquittoServer::start("default-ports");
    // Upstreams nobody listens on, on loopback: the pollers keep retrying and keep serving.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let mut running = Vec::new();
    for (binary, args, _) in expected {
        let mut command = Command::new(target_bin(binary));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("NATS_URL", nats.url())
            .env("CLICKHOUSE_URL", clickhouse.http_url())
            .env("CLICKHOUSE_DATABASE", "nomadwave_default_ports")
            .env("MQTT_URL", mosquitto.url())
            .env("IMOS_WFS_URL", &closed)
            .env("BOM_FWO_URL", &closed)
            .env("BOM_API_URL", &closed)
            .env("ELECTRICITYMAPS_URL", &closed)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        running.push(Running {
            name: binary,
            child: command.spawn().unwrap(),
        });
    }
    for ((binary, args, port), process) in expected.iter().zip(running.iter_mut()) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((200, _)) = http_get(*port, "/healthz") {
                break;
            }
            if let Some(status) = process.child.try_wait().unwrap() {
                panic!(
                    "{} {} exited ({status}) instead of serving on {port}",
                    process.name, args[0]
                );
            }
            assert!(
                Instant::now() < deadline,
                "{binary} {} serves nothing on its default port {port}",
                args[0]
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let (status, _) = http_get(*port, "/metrics").unwrap();
        assert_eq!(status, 200, "{binary} {} /metrics on {port}", args[0]);
    }
    for process in &mut running {
        assert!(
            process.child.try_wait().unwrap().is_none(),
            "{} stopped while the others ran",
            process.name
        );
    }
}
