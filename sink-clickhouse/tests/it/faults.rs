//! Crashes and outages during ingest: the result is still exactly the distinct events.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::Rng;

use crate::{finish_publish, Pipeline};

/// Small batches and a short ack wait, so a restarted sink gets its predecessor's un-acked
/// messages back within seconds and kills land while rows are being written.
pub const SMALL_BATCHES: &[&str] = &[
    "--batch-rows",
    "5000",
    "--flush-interval",
    "250ms",
    "--ack-wait",
    "5s",
    "--insert-timeout",
    "3s",
];

pub fn assert_exact(pipeline: &Pipeline, table: &str, expected: u64) {
    let landed = pipeline.wait_for_rows(table, expected, Duration::from_secs(180));
    assert_eq!(landed, expected, "{table}: rows after recovery");
    // A late duplicate would show up after the count first matched.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(pipeline.count(table), expected, "{table}: raw count()");
    assert_eq!(
        pipeline.count_final(table),
        expected,
        "{table}: count() FINAL"
    );
    let distinct: u64 = pipeline
        .query(&format!(
            "SELECT uniqExact(stream_seq) FROM {}.{table}",
            pipeline.database
        ))
        .parse()
        .unwrap();
    assert_eq!(distinct, expected, "{table}: one row per stream sequence");
}

#[test]
fn sink_sigkilled_repeatedly_during_200k_ingest_writes_each_event_once() {
    let pipeline = Pipeline::start("sigkill");
    let total: u64 = 200_000;
    let publisher = pipeline.spawn_publish_wave(total, 40);
    let mut rng = rand::rng();
    let mut kills = 0;
    let started = Instant::now();
    // The same instance id each time, as a task restarted in its Nomad allocation has: the
    // restart takes the lease back at once and first re-reads what its predecessor left un-acked.
    let flags = [SMALL_BATCHES, &["--instance-id", "sigkill-test"]].concat();
    let mut sink = pipeline.spawn_sink(&flags);
    // Kill while rows are still arriving, at random moments, at least five times.
    while kills < 8 {
        std::thread::sleep(Duration::from_millis(rng.random_range(400..2500)));
        let rows = pipeline.count("wave_observations");
        if rows >= total && kills >= 5 {
            break;
        }
        kill(Pid::from_raw(sink.child.id() as i32), Signal::SIGKILL).unwrap();
        let _ = sink.child.wait();
        kills += 1;
        eprintln!("kill {kills} at {rows} rows after {:?}", started.elapsed());
        sink = pipeline.spawn_sink(&flags);
    }
    assert!(kills >= 5, "the sink was killed {kills} times");
    let report = finish_publish(publisher);
    assert_eq!(report["distinct_valid"], total);
    assert_exact(&pipeline, "wave_observations", total);
    eprintln!(
        "sigkill test: {total} events, {kills} kills, {:?} until exact",
        started.elapsed()
    );
    drop(sink);
}

#[test]
fn clickhouse_down_longer_than_ack_wait_loses_and_doubles_nothing() {
    let mut pipeline = Pipeline::start("clickhouse-down");
    let mut sink = pipeline.spawn_sink(&[
        "--ack-wait",
        "4s",
        "--insert-timeout",
        "2s",
        "--batch-rows",
        "2000",
        "--flush-interval",
        "300ms",
    ]);
    let total: u64 = 30_000;
    let publisher = pipeline.spawn_publish(&["--kind", "carbon", "--count", &total.to_string()]);
    pipeline.wait_for_rows("carbon_intensity", 2000, Duration::from_secs(60));
    pipeline.clickhouse.stop();
    // Longer than the ack wait: the sink must keep its batch alive with progress acks.
    std::thread::sleep(Duration::from_secs(10));
    assert!(
        sink.child.try_wait().unwrap().is_none(),
        "sink must not exit while clickhouse is down"
    );
    pipeline.clickhouse.restart();
    let report = finish_publish(publisher);
    assert_eq!(report["distinct_valid"], total);
    assert_exact(&pipeline, "carbon_intensity", total);
    assert!(
        sink.child.try_wait().unwrap().is_none(),
        "sink never crashed"
    );
}

#[test]
fn nats_restart_during_ingest_finishes_exactly() {
    let mut pipeline = Pipeline::start("nats-restart");
    let mut sink = pipeline.spawn_sink(SMALL_BATCHES);
    let total: u64 = 40_000;
    let report = pipeline.publish(&["--kind", "weather", "--count", &total.to_string()]);
    assert_eq!(report["distinct_valid"], total);
    pipeline.wait_for_rows("weather_observations", 5_000, Duration::from_secs(60));
    pipeline.nats.stop();
    std::thread::sleep(Duration::from_secs(3));
    pipeline.nats.restart();
    // Events published after the restart arrive too.
    let more = pipeline.publish(&[
        "--kind",
        "weather",
        "--count",
        "5000",
        "--offset",
        &total.to_string(),
    ]);
    assert_eq!(more["distinct_valid"], 5000);
    assert_exact(&pipeline, "weather_observations", total + 5000);
    assert!(
        sink.child.try_wait().unwrap().is_none(),
        "sink reconnected instead of exiting"
    );
}
