//! edge-sim mqtt → mosquitto → bridge → JetStream → sink → ClickHouse: exactly M rows, also
//! when the broker, the bridge or NATS is restarted in the middle; bad payloads are
//! dead-lettered with their topic and reason, and acknowledged.

use std::time::Duration;

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use test_support::probe::metric_value;
use test_support::service::wait_until;

use crate::{finish_swarm, Edge};

const TABLE: &str = "wave_observations";

#[test]
fn swarm_messages_arrive_exactly_once() {
    let edge = Edge::start("bridge-plain");
    let report =
        finish_swarm(edge.spawn_swarm(&["--buoys", "10", "--messages", "3000", "--rate", "0"]));
    assert!(report.contains("sent=3000 acked=3000"), "{report}");
    edge.assert_exactly(TABLE, 3000, "plain run");
    let page = edge.bridge().metrics();
    assert_eq!(
        metric_value(
            &page,
            "nomadwave_bridge_messages_total",
            "outcome=\"published\""
        ),
        3000.0,
        "{page}"
    );
}

#[test]
fn broker_restart_mid_run_loses_nothing() {
    let mut edge = Edge::start("bridge-broker-restart");
    let swarm = edge.spawn_swarm(&["--buoys", "8", "--messages", "4000", "--rate", "800"]);
    assert!(
        wait_until(Duration::from_secs(60), || edge.count(TABLE, "") >= 800),
        "first rows"
    );
    edge.mosquitto.restart();
    let report = finish_swarm(swarm);
    assert!(report.contains("sent=4000 acked=4000"), "{report}");
    edge.assert_exactly(TABLE, 4000, "broker restarted mid-run");
}

#[test]
fn bridge_sigkilled_mid_run_loses_and_duplicates_nothing() {
    let mut edge = Edge::start("bridge-kill");
    let swarm = edge.spawn_swarm(&["--buoys", "8", "--messages", "4000", "--rate", "800"]);
    for round in 0..2 {
        let floor = 800 * (round + 1);
        assert!(
            wait_until(Duration::from_secs(60), || edge.count(TABLE, "") >= floor),
            "rows before kill {round}"
        );
        edge.bridge.as_mut().unwrap().kill(); // SIGKILL: un-acked messages stay with the broker
        std::thread::sleep(Duration::from_millis(500));
        edge.bridge = Some(edge.spawn_bridge(&[]));
    }
    let report = finish_swarm(swarm);
    assert!(report.contains("sent=4000 acked=4000"), "{report}");
    edge.assert_exactly(TABLE, 4000, "bridge SIGKILLed twice mid-run");
}

#[test]
fn nats_restart_mid_run_loses_nothing() {
    let mut edge = Edge::start("bridge-nats-restart");
    let swarm = edge.spawn_swarm(&["--buoys", "8", "--messages", "4000", "--rate", "800"]);
    assert!(
        wait_until(Duration::from_secs(60), || edge.count(TABLE, "") >= 800),
        "first rows"
    );
    edge.nats.restart();
    let report = finish_swarm(swarm);
    assert!(report.contains("sent=4000 acked=4000"), "{report}");
    edge.assert_exactly(TABLE, 4000, "NATS restarted mid-run");
}

/// Publishes `messages` at QoS 1 and waits for the broker's acks.
fn publish_raw(url: &str, messages: &[(&str, &[u8])]) {
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let mut options = MqttOptions::new("raw-publisher", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(10));
    let (client, mut connection) = Client::new(options, 64);
    for (topic, payload) in messages {
        client
            .publish(*topic, QoS::AtLeastOnce, false, payload.to_vec())
            .unwrap();
    }
    let mut acked = 0;
    for event in connection.iter() {
        if let Ok(Event::Incoming(Packet::PubAck(_))) = event {
            acked += 1;
            if acked == messages.len() {
                break;
            }
        }
    }
    let _ = client.disconnect();
}

#[test]
fn bad_payloads_are_dead_lettered_and_rtl_433_becomes_weather() {
    let mut edge = Edge::start("bridge-bad-input");
    // The bridge is restarted with the rule for rtl_433 local times declared UTC.
    edge.bridge.as_mut().unwrap().kill();
    edge.bridge = Some(edge.spawn_bridge(&["--rtl433-time", "naive-utc"]));
    assert!(wait_until(Duration::from_secs(30), || edge
        .bridge()
        .log_text()
        .contains("connected to the broker")));
    let nexus = std::fs::read(
        test_support::workspace_root().join("fixtures/mqtt/rtl_433_Nexus-TH_event_docs.json"),
    )
    .unwrap();
    let good = br#"{"observed_at":"2026-11-25T01:00:00Z","wave_height_m":1.2}"#;
    publish_raw(
        &edge.mosquitto.url(),
        &[
            (
                "nomadwave/buoy/pi-900/wave",
                b"{\"observed_at\":\"2026-11-25T01:00",
            ),
            (
                "nomadwave/buoy/pi-900/wave",
                br#"{"observed_at":"2026-11-25 11:00:00","wave_height_m":1}"#,
            ),
            ("nomadwave/buoy/pi-900/wave", good),
            // A Pi with an unset clock, and a reading with a fraction of a second.
            (
                "nomadwave/buoy/pi-901/wave",
                br#"{"observed_at":"1969-12-31T23:59:59Z","wave_height_m":1}"#,
            ),
            (
                "nomadwave/buoy/pi-902/wave",
                br#"{"observed_at":"2026-11-25T01:00:00.500Z","wave_height_m":1}"#,
            ),
            // One sensor (same model, id and channel) heard by two gateways.
            ("rtl_433/raspi/events", &nexus),
            ("rtl_433/pi-north/events", &nexus),
        ],
    );
    edge.assert_exactly(TABLE, 1, "the one good buoy reading");
    edge.assert_exactly("weather_observations", 2, "one rtl_433 reading per gateway");
    let weather = edge.clickhouse.query(&format!(
        "SELECT site, air_temp_c, rel_humidity_pct, isNull(wind_speed_ms) FROM {}.weather_observations FINAL ORDER BY site",
        edge.database
    ));
    assert_eq!(
        weather.trim(),
        "rtl433-pi-north-nexus-th-42-ch2\t20.5\t83\t1\nrtl433-raspi-nexus-th-42-ch2\t20.5\t83\t1",
        "rtl_433 values, one site per gateway"
    );

    let page = edge.bridge().metrics();
    assert_eq!(
        metric_value(
            &page,
            "nomadwave_dead_letters_total",
            "reason=\"malformed_json\""
        ),
        1.0,
        "{page}"
    );
    assert_eq!(
        metric_value(&page, "nomadwave_dead_letters_total", "reason=\"bad_time\""),
        1.0,
        "{page}"
    );
    for reason in ["time_out_of_range", "sub_second_time"] {
        assert_eq!(
            metric_value(
                &page,
                "nomadwave_dead_letters_total",
                &format!("reason=\"{reason}\"")
            ),
            1.0,
            "{reason}: {page}"
        );
    }
    let log = edge.bridge().log_text();
    assert!(
        log.contains("pi-900") && log.contains("bad_time"),
        "the log names topic and reason:\n{log}"
    );

    // Acknowledged: a restarted bridge (same session) gets nothing redelivered.
    edge.bridge.as_mut().unwrap().kill();
    edge.bridge = Some(edge.spawn_bridge(&["--rtl433-time", "naive-utc"]));
    assert!(wait_until(Duration::from_secs(30), || edge
        .bridge()
        .log_text()
        .contains("subscribed")
        || edge.bridge().log_text().contains("session_present=true")));
    std::thread::sleep(Duration::from_secs(2));
    let page = edge.bridge().metrics();
    assert_eq!(
        metric_value(&page, "nomadwave_bridge_messages_received_total", ""),
        0.0,
        "nothing redelivered:\n{page}"
    );
}
