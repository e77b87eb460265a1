//! Partitioned scale-out: nats-server maps each site to one of two partitions, two sink
//! instances each consume one, and one of them is SIGKILLed and restarted mid-run.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use schema::Kind;

use crate::faults::{assert_exact, SMALL_BATCHES};
use crate::{finish_publish, Pipeline};

const PARTITIONS: u32 = 2;

/// The `mappings` block of the server config, as an operator writes it.
pub fn mappings(partitions: u32) -> String {
    let entries: Vec<String> = Kind::ALL
        .iter()
        .map(|kind| {
            let (source, destination) = kind.partition_mapping(partitions);
            format!("  \"{source}\": \"{destination}\"")
        })
        .collect();
    format!("mappings = {{\n{}\n}}\n", entries.join("\n"))
}

#[test]
fn two_partitions_one_sink_killed_and_restarted_write_each_event_once() {
    let pipeline = Pipeline::start_with_nats_config("partitions", &mappings(PARTITIONS));
    let sink_flags = |index: u32| -> Vec<String> {
        [
            crate::ACKS,
            &[
                "--partitions",
                &PARTITIONS.to_string(),
                "--partition",
                &index.to_string(),
            ],
            SMALL_BATCHES,
        ]
        .concat()
        .iter()
        .map(|flag| flag.to_string())
        .collect()
    };
    let args0 = sink_flags(0);
    let args1 = sink_flags(1);
    let _sink0 = pipeline.spawn_sink(&refs(&args0));
    let mut sink1 = pipeline.spawn_sink(&refs(&args1));

    let total: u64 = 60_000;
    let publisher = pipeline.spawn_publish_wave(total, 40);
    // Kill partition 1's sink while rows are arriving, then start it again.
    pipeline.wait_for_rows("wave_observations", 10_000, Duration::from_secs(120));
    kill(Pid::from_raw(sink1.child.id() as i32), Signal::SIGKILL).unwrap();
    let _ = sink1.child.wait();
    std::thread::sleep(Duration::from_secs(1));
    let _sink1 = pipeline.spawn_sink(&refs(&args1));

    let report = finish_publish(publisher);
    assert_eq!(report["distinct_valid"], total);
    assert_exact(&pipeline, "wave_observations", total);

    // Both partitions did work: each partition's consumer delivered a share of the events.
    let url = pipeline.nats.url();
    let delivered: Vec<u64> = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let client = async_nats::connect(url).await.unwrap();
            let jetstream = async_nats::jetstream::new(client);
            let stream = jetstream.get_stream("WAVE").await.unwrap();
            let mut delivered = Vec::new();
            for index in 0..PARTITIONS {
                let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
                    .get_consumer(&format!("sink-clickhouse-p{index}"))
                    .await
                    .unwrap();
                let info = consumer.info().await.unwrap();
                assert_eq!(
                    info.config.filter_subject,
                    format!("nomadwave.wave.{index}.*")
                );
                delivered.push(info.delivered.stream_sequence);
            }
            delivered
        });
    assert!(
        delivered.iter().all(|last| *last > 0),
        "both partitions consumed: {delivered:?}"
    );
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}
