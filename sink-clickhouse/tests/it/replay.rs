//! `sink-clickhouse replay`: a 100k-event range into a fresh database equals the live tables;
//! replaying into the live tables, twice, changes nothing.

use std::collections::HashMap;
use std::time::Duration;

use crate::{finish_publish, Pipeline};

const TABLE: &str = "wave_observations";

/// count() and a checksum over the natural keys, computed by ClickHouse.
fn fingerprint(pipeline: &Pipeline, database: &str) -> String {
    pipeline.query(&format!(
        "SELECT count(), sum(cityHash64(site, toUnixTimestamp(observed_at), source)), uniqExact(stream_seq) FROM {database}.{TABLE}"
    ))
}

fn replay(pipeline: &Pipeline, extra: &[&str]) -> (i32, HashMap<String, String>, String) {
    let mut args = vec!["replay", "--stream", "WAVE", "--progress", "log"];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = pipeline.run_binary("sink-clickhouse", &args);
    let report = stdout
        .split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
    (code, report, stderr)
}

#[test]
fn replay_matches_the_live_tables_and_repeats_change_nothing() {
    let pipeline = Pipeline::start("replay");
    let total: u64 = 100_000;
    let _sink = pipeline.spawn_sink(&[]);
    let report = finish_publish(pipeline.spawn_publish_wave(total, 50));
    assert_eq!(report["distinct_valid"], total);
    assert_eq!(
        pipeline.wait_for_rows(TABLE, total, Duration::from_secs(180)),
        total
    );
    let live = fingerprint(&pipeline, &pipeline.database);

    // Into a fresh database: identical counts and checksums.
    let fresh = format!("{}_replayed", pipeline.database);
    let (code, report, stderr) = replay(&pipeline, &["--database", &fresh]);
    assert_eq!(code, 0, "replay failed: {stderr}");
    assert_eq!(report["verified"], "true", "{report:?}");
    assert_eq!(report["source_count"], total.to_string());
    assert_eq!(report["written"], total.to_string());
    let inserts: u64 = report["inserts"].parse().unwrap();
    assert!(
        inserts <= 2,
        "100k rows in few large inserts, not {inserts}"
    );
    assert_eq!(
        fingerprint(&pipeline, &fresh),
        live,
        "replayed database equals the live one"
    );
    assert!(
        stderr.contains("replay read done"),
        "progress lines on a non-terminal:\n{stderr}"
    );

    // Into the live tables, twice, while the live sink runs: nothing changes.
    let final_before = pipeline.count_final(TABLE);
    for round in 0..2 {
        let (code, report, stderr) = replay(&pipeline, &[]);
        assert_eq!(code, 0, "round {round}: {stderr}");
        assert_eq!(report["written"], "0", "round {round}: {report:?}");
        assert_eq!(report["already_present"], total.to_string());
        assert_eq!(report["verified"], "true");
    }
    assert_eq!(
        fingerprint(&pipeline, &pipeline.database),
        live,
        "count() and checksum unchanged"
    );
    assert_eq!(
        pipeline.count_final(TABLE),
        final_before,
        "count() FINAL unchanged"
    );

    // A sub-range by sequence into another fresh database.
    let part = format!("{}_part", pipeline.database);
    let (code, report, stderr) = replay(
        &pipeline,
        &[
            "--database",
            &part,
            "--from-seq",
            "1001",
            "--to-seq",
            "3000",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["first_seq"], "1001");
    assert_eq!(report["last_seq"], "3000");
    assert_eq!(
        pipeline.query(&format!(
            "SELECT count(), min(stream_seq), max(stream_seq) FROM {part}.{TABLE}"
        )),
        "2000\t1001\t3000"
    );

    // A bad stream name is a configuration error.
    let (code, _, stderr) = pipeline.run_binary("sink-clickhouse", &["replay", "--stream", "NOPE"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("--stream/REPLAY_STREAM"), "{stderr}");
}
