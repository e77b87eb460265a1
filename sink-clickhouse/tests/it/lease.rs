//! One sink acks a consumer at a time: a second one waits as a standby, takes over when the
//! first stops renewing its lease, and the first, if it comes back, stops instead of acking.
//! Consumers created by an earlier version keep explicit acks.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{self, AckPolicy};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use test_support::probe::{http_get, metric_value};

use crate::faults::assert_exact;
use crate::{finish_publish, Pipeline, Sink, ACKS};

/// Each test here also checks the durable consumer, so every sink reads with acks
/// (`ACKS`, added by [`flags`]).
const FLAGS: &[&str] = &[
    "--batch-rows",
    "5000",
    "--flush-interval",
    "250ms",
    "--ack-wait",
    "20s",
    "--insert-timeout",
    "3s",
];

/// [`FLAGS`] with acks, then `extra`.
fn flags<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    [FLAGS, ACKS, extra].concat()
}

fn metric(sink: &Sink, name: &str, labels: &str) -> Option<f64> {
    let (_, page) = http_get(sink.http_port, "/metrics")?;
    page.lines()
        .any(|line| line.starts_with(name) && line.contains(labels))
        .then(|| metric_value(&page, name, labels))
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts publishing 200,000 wave events over 20 sites; returns the count and the publisher.
fn publish_backlog(pipeline: &Pipeline) -> (u64, std::process::Child) {
    let total: u64 = 200_000;
    let publisher = pipeline.spawn_publish_wave(total, 20);
    (total, publisher)
}

fn consumer_info(pipeline: &Pipeline, name: &str) -> consumer::Info {
    let url = pipeline.nats.url();
    let name = name.to_owned();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let client = async_nats::connect(url).await.unwrap();
            let jetstream = async_nats::jetstream::new(client);
            let stream = jetstream.get_stream("WAVE").await.unwrap();
            stream.consumer_info(name).await.unwrap()
        })
}

#[test]
fn standby_takes_over_a_frozen_sink_which_then_stops_without_acking() {
    let pipeline = Pipeline::start("lease");
    // A backlog, so the holder is frozen with deliveries in hand (up to 3 batches un-acked).
    let (total, publisher) = publish_backlog(&pipeline);
    let first_flags = flags(&["--instance-id", "first"]);
    let mut first = pipeline.spawn_sink(&first_flags);
    wait_for("the first sink's rows", Duration::from_secs(60), || {
        metric(&first, "nomadwave_sink_rows_written_total", "kind=\"wave\"").unwrap_or(0.0) > 0.0
    });
    let second_flags = flags(&["--instance-id", "second"]);
    let second = pipeline.spawn_sink(&second_flags);
    let lease_metric = "nomadwave_sink_lease_held";
    let labels = "consumer=\"sink-clickhouse\"";
    wait_for("the standby's lease gauge", Duration::from_secs(30), || {
        metric(&second, lease_metric, labels) == Some(0.0)
    });
    assert_eq!(metric(&first, lease_metric, labels), Some(1.0));

    // Freeze the holder with deliveries in hand: it can neither write, ack nor renew.
    let rows_at_freeze = pipeline.count("wave_observations");
    kill(Pid::from_raw(first.child.id() as i32), Signal::SIGSTOP).unwrap();
    let frozen = Instant::now();
    wait_for("the standby to take over", Duration::from_secs(30), || {
        metric(&second, lease_metric, labels) == Some(1.0)
    });
    let took_over = frozen.elapsed();
    // 1.5 lease times after the holder's last renewal, which came at most a quarter lease
    // (0.5 s) before the freeze.
    assert!(
        took_over >= Duration::from_millis(2500),
        "took over after {took_over:?}, before 1.5 lease times (3 s) without renewal"
    );
    wait_for("the standby to re-read", Duration::from_secs(30), || {
        metric(&second, "nomadwave_sink_recovered_total", "kind=\"wave\"").unwrap_or(0.0) > 0.0
    });
    let recovered = metric(&second, "nomadwave_sink_recovered_total", "kind=\"wave\"");

    // Thawed, the old holder finds its lease gone and exits instead of acking.
    kill(Pid::from_raw(first.child.id() as i32), Signal::SIGCONT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = first.child.try_wait().expect("poll the thawed sink") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the thawed sink kept running without its lease"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        !status.success(),
        "a sink that lost its lease exits non-zero"
    );

    let report = finish_publish(publisher);
    assert_eq!(report["distinct_valid"], total);
    assert_exact(&pipeline, "wave_observations", total);
    let info = consumer_info(&pipeline, "sink-clickhouse");
    assert_eq!(info.config.ack_policy, AckPolicy::All);
    assert_eq!(info.num_ack_pending, 0, "everything acked at the end");
    eprintln!(
        "lease test: froze at {rows_at_freeze} rows, standby took over after {took_over:?}, re-read {recovered:?} un-acked messages"
    );
}

#[test]
fn consumer_created_with_explicit_acks_keeps_them_and_every_event_lands_once() {
    let pipeline = Pipeline::start("explicit-consumer");
    let url = pipeline.nats.url();
    // As an earlier version of the sink created it (streams are declared by the publisher).
    let publisher = pipeline.spawn_publish_wave(20_000, 10);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let client = async_nats::connect(url).await.unwrap();
            let jetstream = async_nats::jetstream::new(client);
            let deadline = Instant::now() + Duration::from_secs(30);
            let stream = loop {
                if let Ok(stream) = jetstream.get_stream("WAVE").await {
                    break stream;
                }
                assert!(Instant::now() < deadline, "WAVE stream never appeared");
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            stream
                .create_consumer(consumer::pull::Config {
                    durable_name: Some("sink-clickhouse".into()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(60),
                    max_ack_pending: 150_000,
                    max_deliver: -1,
                    ..Default::default()
                })
                .await
                .unwrap();
        });
    let _sink = pipeline.spawn_sink(&flags(&[]));
    let report = finish_publish(publisher);
    assert_eq!(report["distinct_valid"], 20_000);
    assert_exact(&pipeline, "wave_observations", 20_000);
    let info = consumer_info(&pipeline, "sink-clickhouse");
    assert_eq!(info.config.ack_policy, AckPolicy::Explicit);
    assert_eq!(info.num_ack_pending, 0, "every message acked");
}

#[test]
fn deliveries_taken_by_another_puller_are_reread_not_acked_away() {
    let pipeline = Pipeline::start("delivery-gap");
    let (total, publisher) = publish_backlog(&pipeline);
    let sink = pipeline.spawn_sink(&flags(&[]));
    wait_for("the sink's rows", Duration::from_secs(60), || {
        metric(&sink, "nomadwave_sink_rows_written_total", "kind=\"wave\"").unwrap_or(0.0) > 0.0
    });
    // A stray puller on the sink's own consumer (a paused predecessor's pull request, a
    // misconfigured tool): it takes deliveries and never acks them. Under `AckPolicy::All` the
    // sink's next ack would ack them unwritten unless it notices the gap.
    let url = pipeline.nats.url();
    let taken = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let client = async_nats::connect(url).await.unwrap();
            let jetstream = async_nats::jetstream::new(client);
            let stream = jetstream.get_stream("WAVE").await.unwrap();
            let consumer: consumer::PullConsumer =
                stream.get_consumer("sink-clickhouse").await.unwrap();
            let mut taken = 0_u64;
            for _ in 0..5 {
                let mut batch = consumer
                    .batch()
                    .max_messages(500)
                    .expires(Duration::from_secs(2))
                    .messages()
                    .await
                    .unwrap();
                while let Some(message) = futures::StreamExt::next(&mut batch).await {
                    message.unwrap();
                    taken += 1;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            taken
        });
    assert!(taken > 0, "the stray puller got no deliveries");

    let report = finish_publish(publisher);
    assert_eq!(report["distinct_valid"], total);
    assert_exact(&pipeline, "wave_observations", total);
    let gaps = metric(&sink, "nomadwave_sink_delivery_gaps_total", "kind=\"wave\"").unwrap_or(0.0);
    assert!(
        gaps >= 1.0,
        "the sink never noticed the deliveries it did not get"
    );
    eprintln!(
        "delivery gap test: the stray puller took {taken} deliveries; the sink saw {gaps} gaps"
    );
}

#[test]
fn two_processes_with_one_instance_id_do_not_both_hold_the_lease() {
    let pipeline = Pipeline::start("lease-same-id");
    let (total, publisher) = publish_backlog(&pipeline);
    // One id for both, as when an allocation is restarted while its predecessor still runs, or
    // an operator starts a second copy with the same flags.
    let flags = flags(&["--instance-id", "copy-pasted"]);
    let mut first = pipeline.spawn_sink(&flags);
    wait_for("the first sink's rows", Duration::from_secs(60), || {
        metric(&first, "nomadwave_sink_rows_written_total", "kind=\"wave\"").unwrap_or(0.0) > 0.0
    });
    let second = pipeline.spawn_sink(&flags);
    let lease_metric = "nomadwave_sink_lease_held";
    let labels = "consumer=\"sink-clickhouse\"";
    wait_for(
        "the second sink's lease gauge",
        Duration::from_secs(30),
        || metric(&second, lease_metric, labels).is_some(),
    );
    // Longer than 1.5 lease times (3 s) twice over: the first renews all along, so the second
    // must stay a standby the whole time and the first must keep its lease.
    let watch_until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < watch_until {
        assert_eq!(
            metric(&second, lease_metric, labels),
            Some(0.0),
            "the second process with the same instance id took a lease the first still renews"
        );
        assert_eq!(metric(&first, lease_metric, labels), Some(1.0));
        assert!(
            first.child.try_wait().unwrap().is_none(),
            "the first sink exited while the second waited"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The first dies; the second takes over once the key stops changing, and finishes.
    kill(Pid::from_raw(first.child.id() as i32), Signal::SIGKILL).unwrap();
    wait_for(
        "the second sink to take over",
        Duration::from_secs(30),
        || metric(&second, lease_metric, labels) == Some(1.0),
    );
    let report = finish_publish(publisher);
    assert_eq!(report["distinct_valid"], total);
    assert_exact(&pipeline, "wave_observations", total);
    let info = consumer_info(&pipeline, "sink-clickhouse");
    assert_eq!(info.num_ack_pending, 0, "everything acked at the end");
}
