//! What an operator does to a running pipeline, against the real servers: delete and recreate
//! a stream, feed it an event its table cannot hold, replay into the live tables while the
//! sink lags, switch to partitions, lose the dead-letter stream or ClickHouse for a while, and
//! upgrade a table made by an earlier version. Each test checks what the operator would:
//! row counts raw and `FINAL`, dead letters and their headers, `/readyz`, metrics, exit codes
//! and error text.

use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use chrono::{TimeZone, Utc};
use futures::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use schema::{Event, Kind, WaveObservation};

use crate::faults::{assert_exact, SMALL_BATCHES};
use crate::partitions::mappings;
use crate::{finish_publish, http_get, metric_value, Pipeline, Sink, ACKS};

const WAVE: &str = "wave_observations";

/// A sink whose stderr is copied to the test's and kept for searching.
pub struct LoggedSink {
    pub sink: Sink,
    log: Arc<Mutex<String>>,
}

impl LoggedSink {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.sink.child.id() as i32)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log.lock().unwrap().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn is_running(&mut self) -> bool {
        self.sink.child.try_wait().unwrap().is_none()
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.sink.child.try_wait().unwrap() {
                // Let the copying thread take the last lines.
                std::thread::sleep(Duration::from_millis(200));
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn metric(&self, name: &str, labels: &str) -> f64 {
        http_get(self.sink.http_port, "/metrics")
            .map(|(_, page)| metric_value(&page, name, labels))
            .unwrap_or(0.0)
    }

    fn readyz(&self) -> Option<(u16, String)> {
        http_get(self.sink.http_port, "/readyz")
    }

    /// Waits until `/readyz` answers 503 naming `check`; returns the body.
    fn wait_not_ready(&self, check: &str, timeout: Duration) -> String {
        let mut not_ready = String::new();
        wait_until(
            &format!("/readyz to report {check}"),
            timeout,
            || match self.readyz() {
                Some((503, body)) if body.contains(check) => {
                    not_ready = body;
                    true
                }
                _ => false,
            },
        );
        not_ready
    }
}

/// Starts `sink-clickhouse run` with `extra` flags, its stderr copied and kept.
pub fn spawn_logged(pipeline: &Pipeline, label: &str, extra: &[&str]) -> LoggedSink {
    let mut sink = pipeline.spawn_sink_with_stderr(extra, Stdio::piped());
    let stderr = sink.child.stderr.take().expect("stderr piped");
    let log = Arc::new(Mutex::new(String::new()));
    let copy = log.clone();
    let label = label.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("[{label}] {line}");
            let mut log = copy.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    LoggedSink { sink, log }
}

/// Runs `sink-clickhouse replay --stream WAVE --progress log` with `extra`; returns (exit code,
/// stdout, stderr).
pub fn replay_wave(pipeline: &Pipeline, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["replay", "--stream", "WAVE", "--progress", "log"];
    args.extend_from_slice(extra);
    pipeline.run_binary("sink-clickhouse", &args)
}

/// Declares the dead-letter stream again after a test deleted it, as every service does at
/// startup.
pub fn declare_dead_letter_stream_again(pipeline: &Pipeline) {
    with_jetstream(pipeline, |jetstream| async move {
        jetstream
            .create_stream(stream::Config {
                name: "DEADLETTER".to_owned(),
                subjects: vec!["nomadwave.deadletter.>".to_owned()],
                duplicate_window: Duration::from_secs(120),
                max_age: Duration::from_secs(30 * 24 * 3600),
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .unwrap();
    });
}

/// Deletes `WAVE` (`nats stream rm WAVE`) and publishes 1,000 new events, which declares it
/// again, empty, its sequences starting at 1.
pub fn delete_wave_and_publish_a_new_life(pipeline: &Pipeline) {
    let deleted = with_jetstream(pipeline, |jetstream| async move {
        jetstream.delete_stream("WAVE").await.unwrap().success
    });
    assert!(deleted, "WAVE deleted");
    let second = pipeline.publish(&[
        "--kind", "wave", "--count", "1000", "--sites", "10", "--offset", "1000",
    ]);
    assert_eq!(second["distinct_valid"], 1000);
    assert_eq!(
        second["stream_messages_added"], 1000,
        "a new stream remembers no ids"
    );
}

/// Runs `work` against the pipeline's JetStream on a runtime of its own.
pub fn with_jetstream<T, F, Fut>(pipeline: &Pipeline, work: F) -> T
where
    F: FnOnce(jetstream::Context) -> Fut,
    Fut: Future<Output = T>,
{
    let url = pipeline.nats.url();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let client = async_nats::connect(url).await.unwrap();
            let result = work(jetstream::new(client.clone())).await;
            client.flush().await.unwrap();
            result
        })
}

/// Publishes one raw message to JetStream with a message id; returns its stream sequence.
pub fn publish_raw(
    pipeline: &Pipeline,
    subject: String,
    message_id: &str,
    payload: Vec<u8>,
) -> u64 {
    let message_id = message_id.to_owned();
    with_jetstream(pipeline, |jetstream| async move {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id.as_str());
        let ack = jetstream
            .publish_with_headers(subject, headers, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(!ack.duplicate, "the raw message is new");
        ack.sequence
    })
}

/// A dead letter as an operator reads it with `nats stream view DEADLETTER`.
#[derive(Debug)]
struct DeadLetter {
    headers: HashMap<String, String>,
    payload: Vec<u8>,
}

/// Every message on the dead-letter stream.
fn dead_letters(pipeline: &Pipeline) -> Vec<DeadLetter> {
    with_jetstream(pipeline, |jetstream| async move {
        let stream = jetstream.get_stream("DEADLETTER").await.unwrap();
        let consumer: jetstream::consumer::PullConsumer = stream
            .create_consumer(jetstream::consumer::pull::Config::default())
            .await
            .unwrap();
        let mut messages = consumer
            .fetch()
            .max_messages(1000)
            .messages()
            .await
            .unwrap();
        let mut letters = Vec::new();
        while let Some(message) = messages.next().await {
            let message = message.unwrap();
            let mut headers = HashMap::new();
            for (name, values) in message.headers.iter().flat_map(|map| map.iter()) {
                let value = values.iter().map(|v| v.as_str()).collect::<Vec<_>>();
                headers.insert(name.to_string(), value.join(","));
            }
            letters.push(DeadLetter {
                headers,
                payload: message.payload.to_vec(),
            });
        }
        letters
    })
}

/// A wave event as edge-sim encodes it, with `change` applied and its id recomputed.
pub fn wave_event(change: impl FnOnce(&mut WaveObservation)) -> (String, String, Vec<u8>) {
    let template = crate::synthetic_wave(0);
    let mut observation = template.observation;
    change(&mut observation);
    let event = Event::new(template.source, observation, Utc::now());
    (event.subject(), event.event_id.to_string(), event.encode())
}

/// Raw count, `FINAL` count and distinct `(stream_incarnation, stream_seq)` all equal
/// `expected`, also a few seconds after the count first matched.
pub fn assert_exact_positions(pipeline: &Pipeline, table: &str, expected: u64) {
    let landed = pipeline.wait_for_rows(table, expected, Duration::from_secs(180));
    // Per stream life: rows, distinct sequences, rows in FINAL.
    let lives = || {
        pipeline.query(&format!(
            "SELECT stream_incarnation, count(), uniqExact(stream_seq) FROM {}.{table} \
             GROUP BY stream_incarnation ORDER BY stream_incarnation",
            pipeline.database
        ))
    };
    assert_eq!(
        landed,
        expected,
        "{table}: rows (FINAL {}); per life (incarnation, rows, distinct seqs):\n{}",
        pipeline.count_final(table),
        lives()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        pipeline.count(table),
        expected,
        "{table}: raw count(); per life:\n{}",
        lives()
    );
    assert_eq!(pipeline.count_final(table), expected, "{table}: FINAL");
    let positions: u64 = pipeline
        .query(&format!(
            "SELECT uniqExact(stream_incarnation, stream_seq) FROM {}.{table}",
            pipeline.database
        ))
        .parse()
        .unwrap();
    assert_eq!(positions, expected, "{table}: one row per stream position");
}

pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn consumer_ack_floor(pipeline: &Pipeline, stream: &str, name: &str) -> (u64, u64) {
    let (stream, name) = (stream.to_owned(), name.to_owned());
    with_jetstream(pipeline, |jetstream| async move {
        let stream = jetstream.get_stream(stream).await.unwrap();
        let info = stream.consumer_info(name).await.unwrap();
        (
            info.ack_floor.stream_sequence,
            info.delivered.stream_sequence,
        )
    })
}

pub fn stream_last_sequence(pipeline: &Pipeline, stream: &str) -> u64 {
    let stream = stream.to_owned();
    with_jetstream(pipeline, |jetstream| async move {
        let mut stream = jetstream.get_stream(stream).await.unwrap();
        stream.info().await.unwrap().state.last_sequence
    })
}

pub fn report_of(stdout: &str) -> HashMap<String, String> {
    stdout
        .split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

#[test]
fn stream_deleted_and_recreated_keeps_old_rows_and_writes_new_ones() {
    let pipeline = Pipeline::start("stream-recreated");
    let mut sink = spawn_logged(&pipeline, "sink", &["--flush-interval", "250ms"]);
    let first = pipeline.publish(&["--kind", "wave", "--count", "1000", "--sites", "10"]);
    assert_eq!(first["distinct_valid"], 1000);
    assert_eq!(
        pipeline.wait_for_rows(WAVE, 1000, Duration::from_secs(60)),
        1000
    );
    let incarnation_before = sink.metric("nomadwave_sink_stream_incarnation", "kind=\"wave\"");

    // The operator deletes the stream (`nats stream rm WAVE`); the next publisher declares
    // it again, empty, its sequences starting at 1.
    delete_wave_and_publish_a_new_life(&pipeline);

    assert_exact_positions(&pipeline, WAVE, 2000);
    let incarnations = pipeline.query(&format!(
        "SELECT uniqExact(stream_incarnation) FROM {}.{WAVE}",
        pipeline.database
    ));
    assert_eq!(incarnations, "2", "two lives of the stream");
    let per_life = pipeline.query(&format!(
        "SELECT count(), min(stream_seq), max(stream_seq) FROM {}.{WAVE} \
         GROUP BY stream_incarnation ORDER BY stream_incarnation",
        pipeline.database
    ));
    assert_eq!(per_life, "1000\t1\t1000\n1000\t1\t1000", "rows per life");
    assert!(sink.is_running(), "the sink recovered by itself");
    let incarnation_after = sink.metric("nomadwave_sink_stream_incarnation", "kind=\"wave\"");
    assert!(
        incarnation_after > 0.0,
        "the incarnation gauge names the stream being consumed"
    );
    eprintln!(
        "stream recreated: incarnation gauge {incarnation_before} -> {incarnation_after}; recreated log line seen: {}",
        sink.log_text().contains("the stream was recreated")
    );
}

#[test]
fn unstorable_time_is_dead_lettered_and_good_rows_land() {
    let pipeline = Pipeline::start("unstorable-time");
    let mut sink = spawn_logged(&pipeline, "sink", &["--flush-interval", "250ms"]);
    let report = pipeline.publish(&["--kind", "wave", "--count", "2000"]);
    assert_eq!(report["distinct_valid"], 2000);

    // One event from a producer whose clock says 1969: valid JSON, valid measurements, a time
    // a DateTime column cannot hold.
    let (subject, event_id, payload) = wave_event(|observation| {
        observation.site = "sim-before-epoch".to_owned();
        observation.observed_at = Utc.with_ymd_and_hms(1969, 12, 31, 23, 59, 59).unwrap();
    });
    assert!(
        String::from_utf8_lossy(&payload).contains("\"observed_at\":\"1969-12-31T23:59:59Z\""),
        "{}",
        String::from_utf8_lossy(&payload)
    );
    let sequence = publish_raw(&pipeline, subject.clone(), &event_id, payload.clone());
    let more = pipeline.publish(&["--kind", "wave", "--count", "100", "--offset", "2000"]);
    assert_eq!(more["distinct_valid"], 100);

    assert_exact(&pipeline, WAVE, 2100);
    let counted = crate::wait_for_metric(
        &sink.sink,
        "nomadwave_dead_letters_total",
        "kind=\"wave\"",
        1.0,
    );
    assert_eq!(counted, 1.0, "one dead letter counted");
    let letters = dead_letters(&pipeline);
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    let reason = letter
        .headers
        .get(schema::dead_letter::REASON)
        .cloned()
        .unwrap_or_default();
    eprintln!("dead-letter reason for a 1969 observed_at: {reason:?}");
    assert!(
        ["out_of_range", "time_out_of_range", "unstorable"].contains(&reason.as_str()),
        "reason names a time problem: {reason:?} ({letter:?})"
    );
    let detail = letter
        .headers
        .get(schema::dead_letter::DETAIL)
        .cloned()
        .unwrap_or_default();
    assert!(
        detail.contains("1969") && detail.contains("observed_at"),
        "detail: {detail}"
    );
    assert_eq!(
        letter.headers.get(schema::dead_letter::SOURCE_STREAM),
        Some(&"WAVE".to_owned())
    );
    assert_eq!(
        letter.headers.get(schema::dead_letter::SOURCE_SEQUENCE),
        Some(&sequence.to_string())
    );
    assert_eq!(
        letter.headers.get(schema::dead_letter::SOURCE_SUBJECT),
        Some(&subject)
    );
    assert_eq!(letter.payload, payload, "the original payload is kept");
    let labelled = sink.metric(
        "nomadwave_dead_letters_total",
        &format!("reason=\"{reason}\""),
    );
    assert_eq!(labelled, 1.0, "counted under its reason");
    let stored = pipeline.query(&format!(
        "SELECT count() FROM {}.{WAVE} WHERE site = 'sim-before-epoch'",
        pipeline.database
    ));
    assert_eq!(stored, "0", "no row for the unstorable event");
    assert!(sink.is_running());
}

#[test]
fn replay_into_live_tables_while_the_live_sink_lags_writes_nothing_twice() {
    let pipeline = Pipeline::start("replay-lagging");
    let total: u64 = 100_000;
    // The backlog is in the stream before the sink starts, so it lags for a while.
    let report = finish_publish(pipeline.spawn_publish_wave(total, 20));
    assert_eq!(report["distinct_valid"], total);
    let flags = [SMALL_BATCHES, ACKS].concat();
    let mut sink = spawn_logged(&pipeline, "sink", &flags);
    pipeline.wait_for_rows(WAVE, 10_000, Duration::from_secs(120));
    kill(sink.pid(), Signal::SIGSTOP).unwrap();
    // An INSERT whose body was sent completes on the server.
    std::thread::sleep(Duration::from_secs(1));
    let rows_frozen = pipeline.count(WAVE);
    let (ack_floor, delivered) = consumer_ack_floor(&pipeline, "WAVE", "sink-clickhouse");
    let stream_last = stream_last_sequence(&pipeline, "WAVE");
    eprintln!(
        "frozen at {rows_frozen} rows; ack floor {ack_floor}, delivered {delivered}, stream last {stream_last}"
    );
    assert!(
        ack_floor < stream_last,
        "the sink lags: floor {ack_floor} of {stream_last}"
    );

    // Asked for the whole stream, the replay refuses and says why and what to do.
    let last = stream_last.to_string();
    let (code, stdout, stderr) = replay_wave(&pipeline, &["--to-seq", &last]);
    assert_eq!(
        code, 64,
        "refused as a configuration error: {stdout}\n{stderr}"
    );
    let error = stderr
        .lines()
        .find(|line| line.starts_with("error"))
        .unwrap_or_default();
    assert!(error.contains("--to-seq/REPLAY_TO_SEQ"), "{stderr}");
    assert!(
        error.contains(&format!(
            "consumer sink-clickhouse has settled only up to {ack_floor}"
        )),
        "{stderr}"
    );
    assert!(error.contains("another --database"), "{stderr}");
    assert_eq!(
        pipeline.count(WAVE),
        rows_frozen,
        "a refused replay writes nothing"
    );

    // Without an end it stops where the live consumer has settled, finding all of it written.
    let (code, stdout, stderr) = replay_wave(&pipeline, &[]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report = report_of(&stdout);
    eprintln!("clamped replay: {stdout}");
    let replayed_last: u64 = report["last_seq"].parse().unwrap();
    assert!(
        replayed_last <= ack_floor,
        "replay stayed behind the consumer: {replayed_last} > {ack_floor}"
    );
    assert_eq!(report["written"], "0", "{report:?}");
    assert_eq!(report["already_present"], report["read"], "{report:?}");
    assert_eq!(report["verified"], "true", "{report:?}");
    assert!(
        stderr.contains("stops where the slowest live consumer has settled"),
        "{stderr}"
    );
    assert_eq!(
        pipeline.count(WAVE),
        rows_frozen,
        "the replay wrote nothing"
    );

    kill(sink.pid(), Signal::SIGCONT).unwrap();
    assert_exact(&pipeline, WAVE, total);
    assert!(
        sink.is_running(),
        "the thawed sink kept its lease and ran on"
    );
}

#[test]
fn partitioned_sink_beside_unpartitioned_consumer_is_refused() {
    let pipeline = Pipeline::start_with_nats_config("layout-conflict", &mappings(2));
    let flags = [SMALL_BATCHES, ACKS].concat();
    let mut unpartitioned = spawn_logged(&pipeline, "unpartitioned", &flags);
    let report = pipeline.publish(&["--kind", "wave", "--count", "20000", "--sites", "40"]);
    assert_eq!(report["distinct_valid"], 20_000);
    assert_eq!(
        pipeline.wait_for_rows(WAVE, 20_000, Duration::from_secs(120)),
        20_000
    );
    kill(unpartitioned.pid(), Signal::SIGTERM).unwrap();
    let status = unpartitioned
        .wait_exit(Duration::from_secs(60))
        .expect("the unpartitioned sink stops on SIGTERM");
    assert!(status.success(), "clean stop: {status}");

    let partition = |index: &'static str| -> Vec<&'static str> {
        [
            &["--partitions", "2", "--partition", index][..],
            SMALL_BATCHES,
            ACKS,
        ]
        .concat()
    };
    let mut refused = spawn_logged(&pipeline, "p0-refused", &partition("0"));
    let status = refused.wait_exit(Duration::from_secs(60));
    let log = refused.log_text();
    let status = status.unwrap_or_else(|| panic!("the partitioned sink kept running:\n{log}"));
    assert_eq!(status.code(), Some(1), "{log}");
    let error = log
        .lines()
        .find(|line| line.starts_with("error"))
        .unwrap_or_else(|| panic!("no error line:\n{log}"));
    eprintln!("refusal: {error}");
    for needle in [
        "sink-clickhouse-p0",
        "[\"sink-clickhouse\"]",
        "read the same subjects",
        "nats consumer rm",
    ] {
        assert!(error.contains(needle), "'{needle}' in: {error}");
    }
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(
        pipeline.count(WAVE),
        20_000,
        "the refused sink wrote nothing"
    );

    // The migration the refusal names: delete the unpartitioned consumer, start partitions.
    let removed = with_jetstream(&pipeline, |jetstream| async move {
        let mut removed = Vec::new();
        for kind in Kind::ALL {
            let stream = jetstream.get_stream(kind.stream_name()).await.unwrap();
            if stream.delete_consumer("sink-clickhouse").await.is_ok() {
                removed.push(kind.stream_name());
            }
        }
        removed
    });
    assert!(removed.contains(&"WAVE"), "{removed:?}");
    let mut p0 = spawn_logged(&pipeline, "p0", &partition("0"));
    let mut p1 = spawn_logged(&pipeline, "p1", &partition("1"));
    let more = pipeline.publish(&[
        "--kind", "wave", "--count", "20000", "--sites", "40", "--offset", "20000",
    ]);
    assert_eq!(more["distinct_valid"], 20_000);
    assert_exact(&pipeline, WAVE, 40_000);
    assert!(p0.is_running() && p1.is_running(), "both partitions run");
    for index in 0..2 {
        let (floor, _) =
            consumer_ack_floor(&pipeline, "WAVE", &format!("sink-clickhouse-p{index}"));
        assert!(floor > 0, "partition {index} acked its share");
    }
}

#[test]
fn dead_letter_stream_unavailable_shows_in_readyz() {
    let pipeline = Pipeline::start("dead-letter-readyz");
    let mut sink = spawn_logged(&pipeline, "sink", &["--flush-interval", "250ms"]);
    let report = pipeline.publish(&["--kind", "wave", "--count", "1000"]);
    assert_eq!(report["distinct_valid"], 1000);
    assert_eq!(
        pipeline.wait_for_rows(WAVE, 1000, Duration::from_secs(60)),
        1000
    );
    wait_until("the sink to be ready", Duration::from_secs(30), || {
        sink.readyz().is_some_and(|(status, _)| status == 200)
    });

    // The dead-letter stream is gone (deleted by hand): nothing captures its subjects.
    let deleted = with_jetstream(&pipeline, |jetstream| async move {
        jetstream.delete_stream("DEADLETTER").await.unwrap().success
    });
    assert!(deleted);
    let (subject, event_id, payload) = wave_event(|observation| {
        observation.site = "sim-bad-height".to_owned();
        observation.wave_height_m = Some(99_999.0);
    });
    publish_raw(&pipeline, subject, &event_id, payload.clone());

    let not_ready = sink.wait_not_ready("dead_letters", Duration::from_secs(30));
    eprintln!("/readyz while the dead-letter stream is missing:\n{not_ready}");
    assert!(sink.is_running(), "the sink waits, it does not exit yet");

    // The operator declares the stream again (as every service does at startup).
    declare_dead_letter_stream_again(&pipeline);
    let mut ready = String::new();
    wait_until(
        "/readyz to recover",
        Duration::from_secs(60),
        || match sink.readyz() {
            Some((200, body)) => {
                ready = body;
                true
            }
            _ => false,
        },
    );
    assert!(ready.contains("dead_letters: ok"), "{ready}");
    let letters = dead_letters(&pipeline);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        letters[0].headers.get(schema::dead_letter::REASON),
        Some(&"out_of_range".to_owned())
    );
    assert_eq!(letters[0].payload, payload);

    let more = pipeline.publish(&["--kind", "wave", "--count", "100", "--offset", "1000"]);
    assert_eq!(more["distinct_valid"], 100);
    assert_exact(&pipeline, WAVE, 1100);
    assert!(sink.is_running());
}

/// Takes up to `count` deliveries of the durable consumer `name` on WAVE and never acks them,
/// as a paused predecessor's pull request or a stray tool does.
fn pull_without_acking(pipeline: &Pipeline, name: &str, count: u64) -> u64 {
    let name = name.to_owned();
    with_jetstream(pipeline, |jetstream| async move {
        let stream = jetstream.get_stream("WAVE").await.unwrap();
        let consumer: jetstream::consumer::PullConsumer = stream.get_consumer(&name).await.unwrap();
        let mut taken = 0_u64;
        for _ in 0..20 {
            if taken >= count {
                break;
            }
            let mut batch = consumer
                .batch()
                .max_messages((count - taken).min(5000) as usize)
                .expires(Duration::from_secs(2))
                .messages()
                .await
                .unwrap();
            while let Some(message) = batch.next().await {
                message.unwrap();
                taken += 1;
            }
        }
        taken
    })
}

#[test]
fn clickhouse_outage_longer_than_reread_inactive_threshold_waits_and_recovers() {
    let mut pipeline = Pipeline::start("reread-outage");
    let flags = [
        ACKS,
        &[
            "--reread-inactive-threshold",
            "2s",
            "--batch-rows",
            "1000",
            "--max-ack-pending",
            "50000",
            "--flush-interval",
            "250ms",
            "--ack-wait",
            "5s",
            "--insert-timeout",
            "2s",
        ][..],
    ]
    .concat();
    let total: u64 = 100_000;
    let report = finish_publish(pipeline.spawn_publish_wave(total, 20));
    assert_eq!(report["distinct_valid"], total);
    let mut first = spawn_logged(&pipeline, "first", &flags);
    pipeline.wait_for_rows(WAVE, 5_000, Duration::from_secs(120));
    kill(first.pid(), Signal::SIGTERM).unwrap();
    let status = first
        .wait_exit(Duration::from_secs(60))
        .expect("first sink stops");
    assert!(status.success(), "{status}");

    // 30,000 deliveries nobody acks: the next sink re-reads them, 1,000 at a time, before its
    // first ack, and ClickHouse goes away while it does.
    let taken = pull_without_acking(&pipeline, "sink-clickhouse", 30_000);
    assert_eq!(taken, 30_000);
    let mut sink = spawn_logged(&pipeline, "second", &flags);
    let rereading = sink.wait_for_log(
        "messages delivered but not acked; re-reading them",
        Duration::from_secs(60),
    );
    assert!(rereading, "the successor re-reads the un-acked range");
    // A crash: gone at once, mid-INSERT perhaps.
    pipeline.clickhouse.kill();
    let reread_done = "re-read messages delivered but not acked; each was checked";
    assert!(
        !sink.log_text().contains(reread_done),
        "the outage must land while the re-read runs (it finished first: make the backlog larger)"
    );
    // Five times the re-read consumer's inactivity threshold.
    std::thread::sleep(Duration::from_secs(10));
    assert!(
        sink.is_running(),
        "the sink must wait for clickhouse, not exit:\n{}",
        sink.log_text()
    );
    pipeline.clickhouse.restart();

    assert_exact(&pipeline, WAVE, total);
    assert!(sink.is_running(), "sink never exited");
    let recreated = sink.metric(
        "nomadwave_sink_reread_readers_recreated_total",
        "kind=\"wave\"",
    );
    let recovered = sink.metric("nomadwave_sink_recovered_total", "kind=\"wave\"");
    eprintln!("reread outage: readers recreated {recreated}, messages recovered {recovered}");
    let page = http_get(sink.sink.http_port, "/metrics").unwrap().1;
    assert!(
        page.contains("nomadwave_sink_reread_readers_recreated_total"),
        "the metric is exposed"
    );
    // The reader sat unused for 10 s against a 2 s threshold: it expired and was made again.
    assert!(
        recreated >= 1.0,
        "an expired re-read consumer is counted when it is made again"
    );
}

#[test]
fn table_created_without_incarnation_is_upgraded_by_migrate() {
    let pipeline = Pipeline::start("legacy-table");
    let database = pipeline.database.clone();
    let report = pipeline.publish(&["--kind", "wave", "--count", "1000"]);
    assert_eq!(report["distinct_valid"], 1000);

    // What an earlier version wrote for these events: a staging copy made by a replay, moved
    // into a table with the earlier layout (no stream_incarnation).
    let staging = format!("{database}_staging");
    let (code, stdout, stderr) = replay_wave(&pipeline, &["--database", &staging]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    pipeline.query(&format!("CREATE DATABASE IF NOT EXISTS {database}"));
    pipeline.query(&format!(
        "CREATE TABLE {database}.{WAVE} (site String, observed_at DateTime, source String, \
         event_id String, schema_version UInt16, ingested_at DateTime, \
         wave_height_m Nullable(Float64), wave_height_max_m Nullable(Float64), \
         peak_period_s Nullable(Float64), mean_period_s Nullable(Float64), \
         wave_direction_deg Nullable(Float64), sea_temp_c Nullable(Float64), \
         lat Nullable(Float64), lon Nullable(Float64), stream_seq UInt64) \
         ENGINE = ReplacingMergeTree(stream_seq) PARTITION BY toYYYYMM(observed_at) \
         ORDER BY (site, observed_at, source)"
    ));
    let old_columns = "site, observed_at, source, event_id, schema_version, ingested_at, \
         wave_height_m, wave_height_max_m, peak_period_s, mean_period_s, wave_direction_deg, \
         sea_temp_c, lat, lon, stream_seq";
    pipeline.query(&format!(
        "INSERT INTO {database}.{WAVE} ({old_columns}) SELECT {old_columns} FROM {staging}.{WAVE}"
    ));
    assert_eq!(pipeline.count(WAVE), 1000);
    let describe =
        |pipeline: &Pipeline| pipeline.query(&format!("DESCRIBE TABLE {database}.{WAVE}"));
    assert!(!describe(&pipeline).contains("stream_incarnation"));

    let (code, _, stderr) = pipeline.run_binary("sink-clickhouse", &["migrate"]);
    assert_eq!(code, 0, "migrate: {stderr}");
    assert!(stderr.contains("table upgraded"), "{stderr}");
    let columns = describe(&pipeline);
    assert!(
        columns
            .lines()
            .any(|line| line.starts_with("stream_incarnation\tUInt64")),
        "{columns}"
    );
    assert_eq!(pipeline.count(WAVE), 1000, "old rows kept");
    let legacy = pipeline.query(&format!(
        "SELECT countIf(stream_incarnation = 0) FROM {database}.{WAVE}"
    ));
    assert_eq!(legacy, "1000", "old rows read as incarnation 0");
    let (code, _, stderr) = pipeline.run_binary("sink-clickhouse", &["migrate"]);
    assert_eq!(code, 0, "second migrate: {stderr}");
    assert!(
        !stderr.contains("table upgraded"),
        "nothing left to upgrade: {stderr}"
    );

    // A sink with a fresh consumer reads the stream from its start: the old rows are found,
    // the new ones written once.
    let mut sink = spawn_logged(&pipeline, "sink", SMALL_BATCHES);
    let more = pipeline.publish(&["--kind", "wave", "--count", "1000", "--offset", "1000"]);
    assert_eq!(more["distinct_valid"], 1000);
    assert_exact(&pipeline, WAVE, 2000);
    let split = pipeline.query(&format!(
        "SELECT countIf(stream_incarnation = 0), countIf(stream_incarnation != 0) FROM {database}.{WAVE}"
    ));
    assert_eq!(
        split, "1000\t1000",
        "old rows untouched, new rows carry the incarnation"
    );
    assert!(
        sink.log_text()
            .contains("rows from before incarnations were stored are taken as this stream's"),
        "the sink says it took the old rows for the current stream's"
    );
    assert!(sink.is_running());
}

#[test]
fn frozen_clickhouse_shows_in_readyz_and_nothing_is_lost() {
    let mut pipeline = Pipeline::start("frozen-clickhouse");
    let mut sink = spawn_logged(
        &pipeline,
        "sink",
        &[
            "--flush-interval",
            "250ms",
            "--insert-timeout",
            "3s",
            "--ack-wait",
            "10s",
        ],
    );
    let report = pipeline.publish(&["--kind", "wave", "--count", "2000"]);
    assert_eq!(report["distinct_valid"], 2000);
    assert_eq!(
        pipeline.wait_for_rows(WAVE, 2000, Duration::from_secs(60)),
        2000
    );
    // Frozen, not down: connections are accepted by the kernel and never answered, so only a
    // bound on every query (the check as well as the INSERT) makes the stall visible.
    let clickhouse = Pid::from_raw(pipeline.clickhouse.pid().unwrap() as i32);
    kill(clickhouse, Signal::SIGSTOP).unwrap();
    let more = pipeline.publish(&["--kind", "wave", "--count", "1000", "--offset", "2000"]);
    assert_eq!(more["distinct_valid"], 1000);
    let not_ready = sink.wait_not_ready("clickhouse", Duration::from_secs(60));
    eprintln!("/readyz while ClickHouse is frozen:\n{not_ready}");
    assert!(
        sink.is_running(),
        "the sink waits for ClickHouse, it does not exit"
    );
    kill(clickhouse, Signal::SIGCONT).unwrap();
    assert_exact(&pipeline, WAVE, 3000);
    wait_until("/readyz to recover", Duration::from_secs(60), || {
        sink.readyz().is_some_and(|(status, _)| status == 200)
    });
    assert!(sink.is_running());
    // The server is stopped normally at the end, not left frozen.
    pipeline.clickhouse.stop();
}
