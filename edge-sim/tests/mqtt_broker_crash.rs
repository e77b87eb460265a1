//! `edge-sim mqtt` against a real mosquitto that is SIGKILLed in the middle of the run: the
//! simulator must reconnect, re-send what the dead broker never acknowledged, finish with
//! `acked == --messages`, and every one of the readings must reach a subscriber.
//!
//! Needs the workspace binaries (`cargo build --workspace --bins` first).

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use edge_sim::swarm::{payload, topic};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use test_support::probe::log_tail;
use test_support::service::wait_until;
use test_support::{target_bin, MosquittoServer, ScratchDir};

const BUOYS: u64 = 20;
const MESSAGES: u64 = 20_000;
const START: &str = "2026-01-01T00:00:00Z";

#[test]
fn broker_sigkilled_mid_run_every_reading_arrives() {
    // `max_inflight_messages 0`: mosquitto writes each message to the subscriber as it arrives
    // (before it acknowledges the publisher) instead of holding all but 20 in memory, so the
    // SIGKILL cannot lose a message the simulator already saw acknowledged.
    let mut broker =
        MosquittoServer::start_with_config("edge-sim-broker-kill", "max_inflight_messages 0\n");
    let subscriber = Subscriber::start(broker.port());
    // A clean stop writes the subscriber's persistent session (its subscription) to
    // mosquitto.db, so the broker that comes back after the SIGKILL still routes to it.
    broker.restart();
    subscriber.wait_for_connections(2);

    let scratch = ScratchDir::create("edge-sim-broker-kill-logs");
    let log = scratch.path().join("edge-sim.log");
    let mut simulator = spawn_simulator(&broker.url(), &log);

    assert!(
        wait_until(Duration::from_secs(30), || subscriber.distinct() >= 4_000),
        "the subscriber saw only {} readings before the kill; edge-sim log:\n{}",
        subscriber.distinct(),
        log_tail(&log, 30)
    );
    // Freeze the broker first: the simulator keeps writing until its in-flight window is
    // full, so the kill catches messages that were sent but never acknowledged.
    let broker_pid = broker_pid(broker.data_dir());
    kill(broker_pid, Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    broker.kill();
    std::thread::sleep(Duration::from_millis(500));
    broker.restart();

    let (status, stdout) = finish(&mut simulator, Duration::from_secs(45), &log);
    assert!(
        status.success(),
        "edge-sim mqtt failed with {status}: {stdout}\n{}",
        log_tail(&log, 30)
    );
    let report = stdout.trim();
    eprintln!("edge-sim report: {report}");
    assert!(
        report.contains(&format!("sent={MESSAGES} acked={MESSAGES} ")),
        "report: {report}"
    );
    assert_eq!(field(report, "outcome"), "complete", "report: {report}");
    // The frozen broker held a full in-flight window when it died: those were re-sent.
    let resent: u64 = field(report, "resent").parse().unwrap();
    assert!(resent > 0, "nothing was re-sent: {report}");

    let expected = expected_payloads();
    wait_until(Duration::from_secs(20), || {
        subscriber.received_all(&expected)
    });
    let received = subscriber.stop();
    let missing: Vec<u64> = (0..MESSAGES)
        .filter(|index| !received.payloads.contains(&expected[*index as usize]))
        .collect();
    eprintln!(
        "subscriber: {} publishes, {} distinct readings, {} missing",
        received.publishes,
        received.payloads.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{} of {MESSAGES} readings never arrived (first: {:?}); report: {report}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let unexpected = received
        .payloads
        .iter()
        .filter(|payload| !expected.contains(payload))
        .count();
    assert_eq!(unexpected, 0, "readings that the run never produced");
}

#[test]
fn bounded_run_stopped_by_a_signal_reports_it_was_interrupted() {
    let broker = MosquittoServer::start("edge-sim-interrupted");
    let subscriber = Subscriber::start(broker.port());
    let scratch = ScratchDir::create("edge-sim-interrupted-logs");
    let log = scratch.path().join("edge-sim.log");
    let mut simulator = Command::new(target_bin("edge-sim"))
        .env_clear()
        .env("RUST_LOG", "info")
        .args([
            "mqtt",
            "--buoys",
            "5",
            "--messages",
            "100000",
            "--rate",
            "200",
        ])
        .args(["--mqtt-url", &broker.url()])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || subscriber.distinct() >= 50),
        "no readings arrived; log:\n{}",
        log_tail(&log, 30)
    );
    kill(Pid::from_raw(simulator.id() as i32), Signal::SIGTERM).unwrap();
    let (status, stdout) = finish(&mut simulator, Duration::from_secs(30), &log);
    let report = stdout.trim();
    assert_eq!(field(report, "outcome"), "interrupted", "report: {report}");
    assert!(
        !status.success(),
        "a run stopped before --messages exited with {status}: {report}"
    );
    let acked: u64 = field(report, "acked").parse().unwrap();
    assert!(acked < 100_000, "report: {report}");
    subscriber.stop();
}

/// The value of `name=VALUE` in a report line, or "" when absent.
fn field<'a>(report: &'a str, name: &str) -> &'a str {
    report
        .split_whitespace()
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or("")
}

/// The payload of every message of the run, by message index.
fn expected_payloads() -> Vec<Vec<u8>> {
    let start: DateTime<Utc> = START.parse().unwrap();
    (0..MESSAGES)
        .map(|index| payload((index % BUOYS) as u32, index / BUOYS, start))
        .collect()
}

fn spawn_simulator(url: &str, log: &Path) -> Child {
    Command::new(target_bin("edge-sim"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .args(["mqtt", "--buoys", &BUOYS.to_string()])
        .args(["--messages", &MESSAGES.to_string(), "--rate", "2000"])
        .args(["--start", START, "--mqtt-url", url])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap_or_else(|error| panic!("spawn edge-sim: {error}"))
}

/// Waits for the simulator to exit; kills it and fails when it has not finished by `limit`.
fn finish(simulator: &mut Child, limit: Duration, log: &Path) -> (ExitStatus, String) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = simulator.try_wait().unwrap() {
            let mut stdout = String::new();
            std::io::Read::read_to_string(&mut simulator.stdout.take().unwrap(), &mut stdout)
                .unwrap();
            return (status, stdout);
        }
        if Instant::now() >= deadline {
            let _ = simulator.kill();
            let _ = simulator.wait();
            panic!(
                "edge-sim mqtt did not finish within {limit:?} after the broker came back; log:\n{}",
                log_tail(log, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pid of the mosquitto running from `data_dir`'s config file (the test's own broker).
fn broker_pid(data_dir: &Path) -> Pid {
    let config = data_dir.join("mosquitto.conf");
    let config = config.to_string_lossy();
    for entry in std::fs::read_dir("/proc").unwrap() {
        let entry = entry.unwrap();
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let arguments: Vec<String> = cmdline
            .split(|byte| *byte == 0)
            .map(|argument| String::from_utf8_lossy(argument).into_owned())
            .collect();
        if arguments.iter().any(|argument| argument == config.as_ref()) {
            return Pid::from_raw(pid);
        }
    }
    panic!("no mosquitto process runs with {config}");
}

/// What the subscriber collected.
struct Received {
    publishes: u64,
    payloads: HashSet<Vec<u8>>,
}

/// A QoS 1 subscriber with a persistent session (clean_session=false) on every buoy topic,
/// reconnecting by itself, on a thread of its own.
struct Subscriber {
    payloads: Arc<Mutex<HashSet<Vec<u8>>>>,
    publishes: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Subscriber {
    /// Connects and subscribes; returns once the broker has acknowledged the subscription.
    fn start(port: u16) -> Subscriber {
        let mut options = MqttOptions::new(
            format!("edge-sim-test-subscriber-{}", std::process::id()),
            "127.0.0.1",
            port,
        );
        options.set_clean_session(false);
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut connection) = Client::new(options, 100);
        let filter = topic(0).replace("pi-000", "+");
        let payloads = Arc::new(Mutex::new(HashSet::new()));
        let publishes = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let subscribed = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (payloads, publishes, connections, subscribed, stop) = (
                Arc::clone(&payloads),
                Arc::clone(&publishes),
                Arc::clone(&connections),
                Arc::clone(&subscribed),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match connection.recv_timeout(Duration::from_millis(200)) {
                        Ok(Ok(Event::Incoming(Packet::ConnAck(connack)))) => {
                            connections.fetch_add(1, Ordering::SeqCst);
                            if !connack.session_present {
                                client
                                    .try_subscribe(filter.clone(), QoS::AtLeastOnce)
                                    .unwrap();
                            }
                        }
                        Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                            subscribed.store(true, Ordering::SeqCst);
                        }
                        Ok(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                            publishes.fetch_add(1, Ordering::SeqCst);
                            payloads.lock().unwrap().insert(publish.payload.to_vec());
                        }
                        Ok(Ok(_)) | Err(_) => {}
                        Ok(Err(_)) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
                let _ = client.try_disconnect();
            })
        };
        let subscriber = Subscriber {
            payloads,
            publishes,
            connections,
            stop,
            thread,
        };
        assert!(
            wait_until(Duration::from_secs(10), || subscribed
                .load(Ordering::SeqCst)),
            "the subscription was not acknowledged"
        );
        subscriber
    }

    fn wait_for_connections(&self, connections: u64) {
        assert!(
            wait_until(Duration::from_secs(10), || {
                self.connections.load(Ordering::SeqCst) >= connections
            }),
            "the subscriber did not reconnect"
        );
    }

    fn distinct(&self) -> usize {
        self.payloads.lock().unwrap().len()
    }

    fn received_all(&self, expected: &[Vec<u8>]) -> bool {
        let payloads = self.payloads.lock().unwrap();
        expected.iter().all(|payload| payloads.contains(payload))
    }

    fn stop(self) -> Received {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
        let payloads = std::mem::take(&mut *self.payloads.lock().unwrap());
        Received {
            publishes: self.publishes.load(Ordering::SeqCst),
            payloads,
        }
    }
}
