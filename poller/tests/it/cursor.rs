//! The cursor: a poller killed mid-response and restarted publishes no duplicate and leaves no
//! gap; a poller restarted after a complete poll publishes only what is new.

use std::time::Duration;

use serde_json::{json, Value};

use crate::{
    distinct_keys, fixture, stream_events, stream_len, wait_until, Reply, Service, Upstream,
};
use test_support::probe::metric_value;

/// An AODN map-layer response with `count` Tathra observations, one every 10 minutes from
/// 2025-05-01T00:00, built from a genuine feature of the fixture.
fn tathra_series(count: usize) -> Vec<u8> {
    let mut document: Value = serde_json::from_slice(&fixture(
        "imos/aodn_wave_nrt_v2_timeseries_map_2025-05-05_features14-50.geojson",
    ))
    .unwrap();
    let template = document["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|feature| feature["properties"]["site_name"] == "Tathra")
        .cloned()
        .unwrap();
    let start = chrono::DateTime::parse_from_rfc3339("2025-05-01T00:00:00Z").unwrap();
    let features: Vec<Value> = (0..count)
        .map(|index| {
            let mut feature = template.clone();
            let time = start + chrono::Duration::minutes(10 * index as i64);
            feature["properties"]["TIME"] = json!(time.format("%Y-%m-%dT%H:%M:%S").to_string());
            feature["properties"]["significant_wave_height"] =
                json!(0.5 + (index % 50) as f64 / 100.0);
            feature
        })
        .collect();
    document["features"] = Value::Array(features);
    serde_json::to_vec(&document).unwrap()
}

fn spawn_wave(nats: &test_support::NatsServer, upstream: &Upstream) -> Service {
    let url = upstream.url("/geoserver/ows");
    Service::spawn(
        "ingest-wave",
        nats,
        &[
            "run",
            "--sites",
            "Tathra",
            "--wfs-url",
            &url,
            "--interval",
            "1s",
            "--max-requests-per-minute",
            "600",
        ],
        // A short duplicate window: after a completed poll, only the cursor prevents
        // republishing.
        &[("NOMADWAVE_DUPLICATE_WINDOW", "30s")],
    )
}

#[test]
fn killed_mid_run_and_restarted_publishes_each_observation_once() {
    let nats = test_support::NatsServer::start("cursor-restart");
    let upstream = Upstream::start();
    // 6000 observations: a first poll long enough to be killed in the middle of.
    upstream.script("/geoserver/ows", vec![Reply::ok(tathra_series(6000))]);

    let mut first = spawn_wave(&nats, &upstream);
    let started = wait_until(Duration::from_secs(60), || {
        stream_len(&nats, "WAVE") >= 1000
    });
    assert!(
        started,
        "first poller published {} events; log:\n{}",
        stream_len(&nats, "WAVE"),
        first.log_text()
    );
    first.kill(); // SIGKILL, mid-response
    let at_kill = stream_len(&nats, "WAVE");
    assert!(
        at_kill < 6000,
        "the kill must land mid-response (stream had {at_kill})"
    );

    // Restarted: finishes the response without duplicates (cursor checkpoint + Nats-Msg-Id).
    let second = spawn_wave(&nats, &upstream);
    let finished = wait_until(Duration::from_secs(90), || {
        stream_len(&nats, "WAVE") >= 6000
    });
    assert!(
        finished,
        "stream holds {}; log:\n{}",
        stream_len(&nats, "WAVE"),
        second.log_text()
    );
    std::thread::sleep(Duration::from_secs(3));
    let events = stream_events(&nats, "WAVE");
    assert_eq!(
        events.len(),
        6000,
        "each observation exactly once after the restart"
    );
    assert_eq!(
        distinct_keys(&events, "site").len(),
        6000,
        "no gap, no repeat"
    );
    drop(second);

    // Past the duplicate window, a third poller against a response with 25 more observations
    // publishes exactly those 25: the cursor, not JetStream's window, stops the rest.
    std::thread::sleep(Duration::from_secs(31));
    upstream.script("/geoserver/ows", vec![Reply::ok(tathra_series(6025))]);
    let third = spawn_wave(&nats, &upstream);
    let grew = wait_until(Duration::from_secs(60), || {
        stream_len(&nats, "WAVE") >= 6025
    });
    assert!(
        grew,
        "stream holds {}; log:\n{}",
        stream_len(&nats, "WAVE"),
        third.log_text()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        stream_len(&nats, "WAVE"),
        6025,
        "only the new observations were published"
    );
    let page = third.metrics();
    assert_eq!(
        metric_value(&page, "nomadwave_poll_duplicates_total", "where=\"stream\""),
        0.0,
        "nothing needed JetStream's dedupe:\n{page}"
    );
    assert_eq!(
        metric_value(
            &page,
            "nomadwave_poll_events_published_total",
            "site=\"tathra\""
        ),
        25.0,
        "{page}"
    );
}

#[test]
fn a_record_dated_a_year_ahead_is_rejected_and_later_real_records_still_publish() {
    let nats = test_support::NatsServer::start("cursor-future");
    let upstream = Upstream::start();
    // Ten real observations and one with a runaway clock, a year ahead of now.
    let with_future = |count: usize| {
        let mut document: Value = serde_json::from_slice(&tathra_series(count)).unwrap();
        let features = document["features"].as_array_mut().unwrap();
        let mut future = features[0].clone();
        let next_year = chrono::Utc::now() + chrono::Duration::days(365);
        future["properties"]["TIME"] = json!(next_year.format("%Y-%m-%dT%H:%M:%S").to_string());
        features.push(future);
        serde_json::to_vec(&document).unwrap()
    };
    upstream.script("/geoserver/ows", vec![Reply::ok(with_future(10))]);
    let poller = spawn_wave(&nats, &upstream);
    assert!(
        wait_until(Duration::from_secs(60), || stream_len(&nats, "WAVE") >= 10),
        "stream holds {}; log:\n{}",
        stream_len(&nats, "WAVE"),
        poller.log_text()
    );
    // The next responses carry ten more real observations (and the same future record).
    upstream.script("/geoserver/ows", vec![Reply::ok(with_future(20))]);
    let grew = wait_until(Duration::from_secs(60), || stream_len(&nats, "WAVE") >= 20);
    assert!(
        grew,
        "the later real records were taken as stale: stream holds {}; log:\n{}",
        stream_len(&nats, "WAVE"),
        poller.log_text()
    );
    std::thread::sleep(Duration::from_secs(3));
    let events = stream_events(&nats, "WAVE");
    assert_eq!(
        events.len(),
        20,
        "the real records, once each, and not the future one"
    );
    let page = poller.metrics();
    assert!(
        metric_value(
            &page,
            "nomadwave_poll_records_rejected_total",
            "reason=\"future_time\""
        ) >= 2.0,
        "the future record is rejected by name at every poll:\n{page}"
    );
    assert!(
        poller.log_text().contains("future_time"),
        "the log names the reason"
    );
}

#[test]
fn two_pollers_racing_on_one_site_leave_the_newest_revision_last() {
    let nats = test_support::NatsServer::start("cursor-race");
    // The upstream revised 00:20 (1.11 m → 2.22 m). The new poller sees the revision; the old
    // one of a deploy fetched just before it and publishes later, then sees it too.
    let with_last = |height: f64| {
        let mut document: Value = serde_json::from_slice(&tathra_series(3)).unwrap();
        document["features"][2]["properties"]["significant_wave_height"] = json!(height);
        serde_json::to_vec(&document).unwrap()
    };
    let fresh = Upstream::start();
    fresh.script("/geoserver/ows", vec![Reply::ok(with_last(2.22))]);
    let stale = Upstream::start();
    stale.script(
        "/geoserver/ows",
        vec![
            Reply::ok(with_last(1.11)).after(Duration::from_secs(3)),
            Reply::ok(with_last(2.22)),
        ],
    );
    let new_poller = spawn_wave(&nats, &fresh);
    assert!(
        wait_until(Duration::from_secs(60), || stream_len(&nats, "WAVE") >= 3),
        "log:\n{}",
        new_poller.log_text()
    );
    let old_poller = spawn_wave(&nats, &stale);
    // The old poller publishes the old revision, then, at its next polls, the new one again.
    assert!(
        wait_until(Duration::from_secs(60), || stale
            .seen("/geoserver/ows")
            .len()
            >= 4),
        "the old poller polled {} times; log:\n{}",
        stale.seen("/geoserver/ows").len(),
        old_poller.log_text()
    );
    std::thread::sleep(Duration::from_secs(2));
    let heights: Vec<f64> = stream_events(&nats, "WAVE")
        .iter()
        .filter(|event| event["observed_at"] == "2025-05-01T00:20:00Z")
        .map(|event| event["wave_height_m"].as_f64().unwrap())
        .collect();
    assert!(
        heights.contains(&1.11),
        "the old poller's stale revision was published: {heights:?}"
    );
    // The table keeps the highest stream sequence (ReplacingMergeTree(stream_seq)): the
    // newest revision must be the stream's last message for the key.
    assert_eq!(
        heights.last(),
        Some(&2.22),
        "the newest revision was dropped as a duplicate after the stale one: {heights:?}"
    );
}
