//! N events in → exactly N rows out, values intact; duplicates add nothing.

use std::time::Duration;

use schema::Kind;

use crate::Pipeline;

#[test]
fn n_events_become_exactly_n_rows_with_values_intact() {
    let pipeline = Pipeline::start("exactly-n");
    let (code, _, stderr) = pipeline.run_binary("sink-clickhouse", &["migrate"]);
    assert_eq!(code, 0, "migrate failed: {stderr}");
    let (code, _, stderr) = pipeline.run_binary("sink-clickhouse", &["migrate"]);
    assert_eq!(code, 0, "second migrate must be a no-op: {stderr}");

    let sink = pipeline.spawn_sink(&[]);
    let cases = [
        (Kind::Wave, "wave_observations", 20_000_u64),
        (Kind::Weather, "weather_observations", 3_000),
        (Kind::Carbon, "carbon_intensity", 2_000),
    ];
    for (kind, _, count) in cases {
        let report = pipeline.publish(&["--kind", kind.as_str(), "--count", &count.to_string()]);
        assert_eq!(report["distinct_valid"], count);
        assert_eq!(report["stream_messages_added"], count);
    }
    for (_, table, count) in cases {
        assert_eq!(
            pipeline.wait_for_rows(table, count, Duration::from_secs(60)),
            count,
            "{table}"
        );
        // Give a wrongly repeated batch time to land before the final checks.
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(pipeline.count(table), count, "{table} raw count");
        assert_eq!(pipeline.count_final(table), count, "{table} FINAL count");
        let distinct_ids: u64 = pipeline
            .query(&format!(
                "SELECT uniqExact(event_id) FROM {}.{table}",
                pipeline.database
            ))
            .parse()
            .unwrap();
        assert_eq!(distinct_ids, count, "{table} distinct event ids");
    }

    // Values intact: row 777 of the wave run equals what edge-sim generated for index 777.
    let expected = crate::synthetic_wave(777);
    let row = pipeline.query(&format!(
        "SELECT site, toString(observed_at), source, wave_height_m, wave_height_max_m, peak_period_s, \
         ifNull(toString(mean_period_s), 'null'), wave_direction_deg, ifNull(toString(sea_temp_c), 'null'), lat, lon \
         FROM {}.wave_observations WHERE event_id = '{}' FORMAT TSV",
        pipeline.database, expected.event_id
    ));
    let observation = &expected.observation;
    let text = |value: Option<f64>| value.map_or("null".to_owned(), |v| v.to_string());
    let expected_row = [
        observation.site.clone(),
        observation
            .observed_at
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
        "edge-sim".to_owned(),
        text(observation.wave_height_m),
        text(observation.wave_height_max_m),
        text(observation.peak_period_s),
        text(observation.mean_period_s),
        text(observation.wave_direction_deg),
        text(observation.sea_temp_c),
        text(observation.lat),
        text(observation.lon),
    ]
    .join("\t");
    assert_eq!(row, expected_row);

    // The sink turned transparent huge pages off for itself (BENCHMARKS.md, 2026-12-07).
    let status = std::fs::read_to_string(format!("/proc/{}/status", sink.child.id())).unwrap();
    let thp = status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .map(str::trim);
    assert_eq!(thp, Some("0"), "THP_enabled in /proc/<sink>/status");
    drop(sink);
}

#[test]
fn duplicates_add_nothing_and_republishes_collapse_in_final() {
    let mut pipeline = Pipeline::start("duplicates");
    pipeline.duplicate_window = "2s";
    let sink = pipeline.spawn_sink(&[]);
    let report = pipeline.publish(&[
        "--kind",
        "weather",
        "--count",
        "4000",
        "--duplicate-fraction",
        "0.25",
        "--republish-after-window-fraction",
        "0.05",
    ]);
    let duplicates = report["duplicates_in_window"];
    let republished = report["republished_after_window"];
    assert!(
        duplicates > 500,
        "the run must include duplicates: {report:?}"
    );
    assert!(
        republished > 50,
        "the run must include late re-publishes: {report:?}"
    );
    assert_eq!(
        report["duplicates_dropped"], duplicates,
        "every in-window duplicate is dropped by the stream"
    );
    assert_eq!(report["stream_messages_added"], 4000 + republished);

    let table = "weather_observations";
    let raw = pipeline.wait_for_rows(table, 4000 + republished, Duration::from_secs(60));
    assert_eq!(
        raw,
        4000 + republished,
        "each stream message is written once"
    );
    assert_eq!(
        pipeline.count_final(table),
        4000,
        "FINAL collapses late re-publishes"
    );
    let distinct_keys: u64 = pipeline
        .query(&format!(
            "SELECT count() FROM (SELECT DISTINCT site, observed_at, source FROM {}.{table})",
            pipeline.database
        ))
        .parse()
        .unwrap();
    assert_eq!(distinct_keys, 4000);
    // After a merge the raw table holds one row per observation too.
    pipeline.query(&format!(
        "OPTIMIZE TABLE {}.{table} FINAL",
        pipeline.database
    ));
    assert_eq!(pipeline.count(table), 4000);
    drop(sink);
}
