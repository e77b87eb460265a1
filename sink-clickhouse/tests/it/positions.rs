//! `--positions table`: the sink reads through ephemeral consumers without acks, the table
//! decides what is written and a KV record in `nomadwave_sink_positions` says where to resume.
//! Each test checks what an operator would: rows raw and `FINAL`, one row per stream position,
//! the position record, the consumers on the stream, exit codes and the text of refusals.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::AckPolicy;
use futures::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::finish_publish;
use crate::operators::{
    assert_exact_positions, consumer_ack_floor, replay_wave, report_of, spawn_logged,
    stream_last_sequence, wait_until, with_jetstream, LoggedSink,
};
use crate::Pipeline;

const WAVE: &str = "wave_observations";
const BUCKET: &str = "nomadwave_sink_positions";
const KEY: &str = "sink-clickhouse.WAVE";
const READING: &str = "reading without acks from the recorded position";

/// Table mode with small batches, so kills and outages land between batches.
const TABLE: &[&str] = &[
    "--positions",
    "table",
    "--batch-rows",
    "5000",
    "--flush-interval",
    "250ms",
    "--insert-timeout",
    "3s",
];

/// The sink's record for WAVE as (incarnation, settled_through), if the bucket has one.
fn position_record(pipeline: &Pipeline) -> Option<(u64, u64)> {
    with_jetstream(pipeline, |jetstream| async move {
        let store = jetstream.get_key_value(BUCKET).await.ok()?;
        let bytes = store.get(KEY).await.unwrap()?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|error| panic!("{KEY}: {error}: {bytes:?}"));
        Some((
            value["incarnation"].as_u64().expect("incarnation"),
            value["settled_through"].as_u64().expect("settled_through"),
        ))
    })
}

/// Waits until the record says `settled_through`; returns its incarnation.
fn wait_for_record(pipeline: &Pipeline, settled_through: u64) -> u64 {
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        last = position_record(pipeline).or(last);
        if let Some((incarnation, settled)) = last {
            if settled == settled_through {
                return incarnation;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{KEY} never recorded {settled_through}; last record {last:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The consumers on WAVE as (name, durable, ack policy).
fn wave_consumers(pipeline: &Pipeline) -> Vec<(String, bool, AckPolicy)> {
    with_jetstream(pipeline, |jetstream| async move {
        let stream = jetstream.get_stream("WAVE").await.unwrap();
        let mut listed = stream.consumers();
        let mut found = Vec::new();
        while let Some(info) = listed.next().await {
            let info = info.unwrap();
            found.push((
                info.name.clone(),
                info.config.durable_name.is_some(),
                info.config.ack_policy,
            ));
        }
        found
    })
}

/// The stream incarnations the table holds, oldest first.
fn table_incarnations(pipeline: &Pipeline) -> Vec<u64> {
    pipeline
        .query(&format!(
            "SELECT DISTINCT stream_incarnation FROM {}.{WAVE} ORDER BY stream_incarnation",
            pipeline.database
        ))
        .lines()
        .map(|line| line.parse().unwrap())
        .collect()
}

/// `count() - uniqExact(stream_incarnation, stream_seq)`: rows written twice.
fn duplicates(pipeline: &Pipeline) -> u64 {
    pipeline
        .query(&format!(
            "SELECT count() - uniqExact(stream_incarnation, stream_seq) FROM {}.{WAVE}",
            pipeline.database
        ))
        .parse()
        .unwrap()
}

/// The `start=` of every "reading without acks" line the sink logged for WAVE.
fn reading_starts(sink: &LoggedSink) -> Vec<u64> {
    sink.log_text()
        .lines()
        .filter(|line| line.contains(READING) && line.contains("kind=wave "))
        .map(|line| {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix("start="))
                .unwrap_or_else(|| panic!("no start= in: {line}"))
                .trim_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .unwrap_or_else(|error| panic!("{error}: {line}"))
        })
        .collect()
}

/// Waits for the sink's "reading without acks" line for WAVE; returns its `start=`.
fn wait_for_start(sink: &LoggedSink) -> u64 {
    wait_until("the sink's start position", Duration::from_secs(60), || {
        !reading_starts(sink).is_empty()
    });
    reading_starts(sink)[0]
}

fn sigterm_and_wait(sink: &mut LoggedSink) {
    kill(sink.pid(), Signal::SIGTERM).unwrap();
    let status = sink.wait_exit(Duration::from_secs(60));
    let status = status.unwrap_or_else(|| panic!("still running after SIGTERM"));
    assert!(
        status.success(),
        "clean stop: {status}\n{}",
        sink.log_text()
    );
}

#[test]
fn table_mode_drains_exactly_without_a_durable_consumer() {
    let pipeline = Pipeline::start("positions-drain");
    let total: u64 = 20_000;
    let report = finish_publish(pipeline.spawn_publish_wave(total, 20));
    assert_eq!(report["distinct_valid"], total);
    let mut sink = spawn_logged(&pipeline, "table", TABLE);
    assert_eq!(wait_for_start(&sink), 1, "nothing recorded: from the start");

    assert_exact_positions(&pipeline, WAVE, total);
    assert_eq!(duplicates(&pipeline), 0);
    let stream_last = stream_last_sequence(&pipeline, "WAVE");
    assert_eq!(stream_last, total);
    let incarnation = wait_for_record(&pipeline, stream_last);
    assert_eq!(
        table_incarnations(&pipeline),
        vec![incarnation],
        "the record names the incarnation the rows carry"
    );

    // The sink reads through an ephemeral consumer without acks, never the durable one.
    let consumers = wave_consumers(&pipeline);
    assert!(
        !consumers
            .iter()
            .any(|(name, _, _)| name == "sink-clickhouse"),
        "{consumers:?}"
    );
    assert!(
        consumers.iter().all(|(_, durable, _)| !durable),
        "no durable consumer: {consumers:?}"
    );
    assert!(
        consumers.iter().any(
            |(name, _, policy)| name.starts_with("sink-clickhouse-table-")
                && *policy == AckPolicy::None
        ),
        "an ephemeral sink-clickhouse-table-… consumer without acks: {consumers:?}"
    );
    assert!(sink.is_running());

    // A clean stop deletes the ephemeral consumer and leaves the record.
    sigterm_and_wait(&mut sink);
    let consumers = wave_consumers(&pipeline);
    assert!(consumers.is_empty(), "left behind: {consumers:?}");
    assert_eq!(position_record(&pipeline), Some((incarnation, total)));
    assert_eq!(pipeline.count_final(WAVE), total);
}

#[test]
fn sigkilled_table_mode_sink_restarts_from_its_record_and_writes_each_event_once() {
    let pipeline = Pipeline::start("positions-sigkill");
    let total: u64 = 200_000;
    let publisher = pipeline.spawn_publish_wave(total, 40);
    let started = Instant::now();
    let mut sink = spawn_logged(&pipeline, "table-0", TABLE);
    let mut kills: Vec<u64> = Vec::new();
    let mut restarts = Vec::new();
    // Kill whenever another 40,000 rows are in, while some are still missing.
    while kills.len() < 3 {
        let threshold = 30_000 + 40_000 * kills.len() as u64;
        let rows = pipeline.wait_for_rows(WAVE, threshold, Duration::from_secs(60));
        assert!(
            rows >= threshold,
            "stuck at {rows} rows:\n{}",
            sink.log_text()
        );
        if rows >= total {
            break;
        }
        kill(sink.pid(), Signal::SIGKILL).unwrap();
        sink.wait_exit(Duration::from_secs(10))
            .expect("a SIGKILLed sink is gone");
        // Counted after the kill: every record was put after its INSERT returned, so the
        // table holds at least what the last record says.
        let rows = pipeline.count(WAVE);
        kills.push(rows);
        eprintln!(
            "kill {} at {rows} rows after {:?}",
            kills.len(),
            started.elapsed()
        );
        sink = spawn_logged(&pipeline, &format!("table-{}", kills.len()), TABLE);
        // Behind what the table held when the sink died, at most by what was written after
        // the last record; never back at the start.
        let start = wait_for_start(&sink);
        assert!(
            start > 1 && start <= rows + 1,
            "restart {} after {rows} rows started at {start}",
            kills.len()
        );
        restarts.push(start);
    }
    assert!(
        kills.len() >= 2,
        "killed only at {kills:?}: the drain outran the kills"
    );
    let report = finish_publish(publisher);
    assert_eq!(report["distinct_valid"], total);
    assert_exact_positions(&pipeline, WAVE, total);
    assert_eq!(duplicates(&pipeline), 0);
    wait_for_record(&pipeline, stream_last_sequence(&pipeline, "WAVE"));
    assert!(sink.is_running());
    eprintln!(
        "positions sigkill: killed at rows {kills:?}, restarts started at {restarts:?}, exact after {:?}",
        started.elapsed()
    );
}

#[test]
fn stream_recreated_under_a_table_mode_sink_starts_again_at_its_first_message() {
    let pipeline = Pipeline::start("positions-recreated");
    let mut sink = spawn_logged(&pipeline, "table", TABLE);
    let first = pipeline.publish(&["--kind", "wave", "--count", "1000", "--sites", "10"]);
    assert_eq!(first["distinct_valid"], 1000);
    assert_eq!(
        pipeline.wait_for_rows(WAVE, 1000, Duration::from_secs(60)),
        1000
    );
    let old_life = wait_for_record(&pipeline, 1000);

    crate::operators::delete_wave_and_publish_a_new_life(&pipeline);

    assert_exact_positions(&pipeline, WAVE, 2000);
    assert_eq!(duplicates(&pipeline), 0);
    let per_life = pipeline.query(&format!(
        "SELECT count(), min(stream_seq), max(stream_seq) FROM {}.{WAVE} \
         GROUP BY stream_incarnation ORDER BY stream_incarnation",
        pipeline.database
    ));
    assert_eq!(per_life, "1000\t1\t1000\n1000\t1\t1000", "rows per life");
    let lives = table_incarnations(&pipeline);
    assert_eq!(lives.len(), 2, "{lives:?}");
    assert_eq!(lives[0], old_life);
    let new_life = wait_for_record(&pipeline, 1000);
    assert_eq!(
        new_life, lives[1],
        "the record moved to the new incarnation"
    );
    assert!(sink.is_running(), "the sink recovered by itself");
}

#[test]
fn switching_from_acks_to_table_resumes_after_the_durable_ack_floor() {
    let pipeline = Pipeline::start("positions-switch");
    let (first_count, more_count): (u64, u64) = (10_000, 5_000);
    let flags = [&["--flush-interval", "250ms"][..], crate::ACKS].concat();
    let mut acks = spawn_logged(&pipeline, "acks", &flags);
    let report = finish_publish(pipeline.spawn_publish_wave(first_count, 20));
    assert_eq!(report["distinct_valid"], first_count);
    assert_eq!(
        pipeline.wait_for_rows(WAVE, first_count, Duration::from_secs(60)),
        first_count
    );
    sigterm_and_wait(&mut acks);
    let (floor, _) = consumer_ack_floor(&pipeline, "WAVE", "sink-clickhouse");
    assert_eq!(
        floor, first_count,
        "the acks sink acked everything it wrote"
    );
    assert_eq!(
        position_record(&pipeline),
        None,
        "acks mode records nothing"
    );

    let more = pipeline.publish(&[
        "--kind",
        "wave",
        "--count",
        &more_count.to_string(),
        "--sites",
        "20",
        "--offset",
        &first_count.to_string(),
    ]);
    assert_eq!(more["distinct_valid"], more_count);
    let mut table = spawn_logged(&pipeline, "table", TABLE);
    let start = wait_for_start(&table);
    assert_eq!(
        start,
        first_count + 1,
        "resumed after the durable floor, not from 1:\n{}",
        table.log_text()
    );
    let total = first_count + more_count;
    assert_exact_positions(&pipeline, WAVE, total);
    assert_eq!(duplicates(&pipeline), 0);
    wait_for_record(&pipeline, total);
    assert!(table.is_running());
    // The start line says where the position came from: no record, the durable floor.
    let line = table
        .log_text()
        .lines()
        .find(|line| line.contains(READING) && line.contains("kind=wave "))
        .unwrap()
        .to_owned();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert!(fields.contains(&"recorded=None"), "{line}");
    assert!(
        fields.contains(&format!("durable_ack_floor={first_count}").as_str()),
        "{line}"
    );
}

#[test]
fn clickhouse_frozen_past_the_inactive_threshold_reopens_the_reader_and_loses_nothing() {
    let pipeline = Pipeline::start("positions-frozen");
    let total: u64 = 60_000;
    let report = finish_publish(pipeline.spawn_publish_wave(total, 20));
    assert_eq!(report["distinct_valid"], total);
    let flags: &[&str] = &[
        "--positions",
        "table",
        "--batch-rows",
        "2000",
        "--flush-interval",
        "250ms",
        "--reread-inactive-threshold",
        "2s",
        "--insert-timeout",
        "2s",
    ];
    let mut sink = spawn_logged(&pipeline, "table", flags);
    pipeline.wait_for_rows(WAVE, 4_000, Duration::from_secs(60));
    let clickhouse = Pid::from_raw(pipeline.clickhouse.pid().unwrap() as i32);
    kill(clickhouse, Signal::SIGSTOP).unwrap();
    let frozen_at = Instant::now();
    // Four times the ephemeral consumer's inactivity threshold.
    std::thread::sleep(Duration::from_secs(8));
    let consumers_while_frozen = wave_consumers(&pipeline);
    let running = sink.is_running();
    kill(clickhouse, Signal::SIGCONT).unwrap();
    let frozen_for = frozen_at.elapsed();
    assert!(
        running,
        "the sink waits for ClickHouse:\n{}",
        sink.log_text()
    );
    // Nobody pulled while the writer waited: nats-server dropped the idle reader.
    assert!(
        consumers_while_frozen.is_empty(),
        "the reader outlived its inactivity threshold: {consumers_while_frozen:?}"
    );

    assert_exact_positions(&pipeline, WAVE, total);
    assert_eq!(duplicates(&pipeline), 0);
    wait_for_record(&pipeline, total);
    assert!(sink.is_running());
    // The reader sat idle past its threshold: nats-server dropped it and the sink made a new
    // one (a higher serial) from the next sequence.
    let serial = |name: &str| -> u64 { name.rsplit('-').next().unwrap().parse().unwrap_or(0) };
    let consumers = wave_consumers(&pipeline);
    let highest = consumers
        .iter()
        .map(|(name, _, _)| serial(name))
        .max()
        .unwrap_or(0);
    eprintln!(
        "frozen {frozen_for:?}; consumers while frozen {consumers_while_frozen:?}, after {consumers:?}"
    );
    assert!(
        highest >= 2,
        "the expired reader was made again: {consumers:?}\n{}",
        sink.log_text()
    );
}

#[test]
fn replay_into_live_tables_is_bounded_by_a_table_mode_sinks_record() {
    let pipeline = Pipeline::start("positions-replay");
    let mut sink = spawn_logged(&pipeline, "table", TABLE);
    let first = finish_publish(pipeline.spawn_publish_wave(5_000, 20));
    assert_eq!(first["distinct_valid"], 5_000);
    assert_eq!(
        pipeline.wait_for_rows(WAVE, 5_000, Duration::from_secs(60)),
        5_000
    );
    wait_for_record(&pipeline, 5_000);
    kill(sink.pid(), Signal::SIGSTOP).unwrap();
    let more = pipeline.publish(&[
        "--kind", "wave", "--count", "5000", "--sites", "20", "--offset", "5000",
    ]);
    assert_eq!(more["distinct_valid"], 5_000);
    assert_eq!(stream_last_sequence(&pipeline, "WAVE"), 10_000);

    let (code, stdout, stderr) = replay_wave(&pipeline, &["--to-seq", "10000"]);
    assert_eq!(code, 64, "refused: {stdout}\n{stderr}");
    let error = stderr
        .lines()
        .find(|line| line.starts_with("error"))
        .unwrap_or_default();
    assert!(error.contains("--to-seq/REPLAY_TO_SEQ"), "{stderr}");
    assert!(
        error.contains("consumer sink-clickhouse (--positions table) has settled only up to 5000"),
        "{stderr}"
    );
    assert_eq!(
        pipeline.count(WAVE),
        5_000,
        "a refused replay writes nothing"
    );

    let (code, stdout, stderr) = replay_wave(&pipeline, &[]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report = report_of(&stdout);
    assert_eq!(report["last_seq"], "5000", "{report:?}");
    assert_eq!(report["written"], "0", "{report:?}");
    assert_eq!(report["already_present"], "5000", "{report:?}");
    assert_eq!(report["verified"], "true", "{report:?}");
    assert_eq!(pipeline.count(WAVE), 5_000, "the replay wrote nothing");

    kill(sink.pid(), Signal::SIGCONT).unwrap();
    assert_exact_positions(&pipeline, WAVE, 10_000);
    assert_eq!(duplicates(&pipeline), 0);
    wait_for_record(&pipeline, 10_000);
    assert!(sink.is_running(), "the thawed sink ran on");
}

#[test]
fn table_positions_with_partitions_are_refused_at_startup() {
    let pipeline = Pipeline::start("positions-partitions");
    let (code, _stdout, stderr) = pipeline.run_binary(
        "sink-clickhouse",
        &[
            "run",
            "--positions",
            "table",
            "--partitions",
            "2",
            "--partition",
            "0",
        ],
    );
    assert_ne!(code, 0, "{stderr}");
    assert_eq!(code, 64, "a configuration error: {stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("error"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert!(errors[0].contains("--positions/SINK_POSITIONS"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Refused before touching NATS: no bucket of positions.
    let bucket = with_jetstream(&pipeline, |jetstream| async move {
        jetstream.get_key_value(BUCKET).await.is_ok()
    });
    assert!(!bucket, "a refused sink created {BUCKET}");
}

/// A table-mode sink that has not settled a batch yet still bounds a replay into its tables (it
/// records its starting point before it reads); without that, its first batch (read with
/// watermark 0, so written without a check) landed a second time.
#[test]
fn replay_is_bounded_by_a_table_mode_sink_that_has_not_recorded_yet() {
    use crate::operators::{declare_dead_letter_stream_again, publish_raw, wave_event};

    let pipeline = Pipeline::start("positions-replay-unrecorded");
    let mut sink = spawn_logged(&pipeline, "table", TABLE);
    wait_for_start(&sink);
    wait_until("the wave reader", Duration::from_secs(30), || {
        sink.log_text().contains("consuming stream kind=wave")
    });
    // The first message is an event its table cannot store; then 1,000 good ones. Paused
    // meanwhile, the sink takes them all in one batch once thawed.
    kill(sink.pid(), Signal::SIGSTOP).unwrap();
    let (subject, event_id, payload) = wave_event(|observation| {
        observation.site = "sim-bad-height".to_owned();
        observation.wave_height_m = Some(99_999.0);
    });
    assert_eq!(publish_raw(&pipeline, subject, &event_id, payload), 1);
    let good = pipeline.publish(&["--kind", "wave", "--count", "1000", "--offset", "1"]);
    assert_eq!(good["distinct_valid"], 1000);
    // Without a dead-letter stream (deleted after the publisher declared it) that batch waits
    // before its INSERT: the sink has read everything and settled nothing.
    let deleted = with_jetstream(&pipeline, |jetstream| async move {
        jetstream.delete_stream("DEADLETTER").await.unwrap().success
    });
    assert!(deleted);
    kill(sink.pid(), Signal::SIGCONT).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        pipeline.count(WAVE),
        0,
        "the sink waits for the dead-letter stream"
    );
    assert_eq!(
        position_record(&pipeline).map(|(_, settled)| settled),
        Some(0),
        "the starting record says nothing is settled yet"
    );

    // An operator's replay into the live tables, no end given.
    let (code, stdout, stderr) = replay_wave(&pipeline, &[]);
    eprintln!("replay while the sink had no record: code {code}: {stdout}");
    let replayed_last = report_of(&stdout)
        .get("last_seq")
        .cloned()
        .unwrap_or_default();
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(
        replayed_last, "0",
        "the replay stops where the sink has settled: {stdout}"
    );

    declare_dead_letter_stream_again(&pipeline);
    wait_for_record(&pipeline, 1001);
    std::thread::sleep(Duration::from_secs(2));
    let (raw, final_rows, doubled) = (
        pipeline.count(WAVE),
        pipeline.count_final(WAVE),
        duplicates(&pipeline),
    );
    eprintln!("after the sink settled: raw {raw}, FINAL {final_rows}, written twice {doubled}; replay reached {replayed_last:?}");
    assert!(sink.is_running());
    assert_eq!(
        (raw, final_rows, doubled),
        (1000, 1000, 0),
        "the replay was not bounded by the table-mode sink (it reached {replayed_last:?}): {stdout}\n{stderr}"
    );
}
