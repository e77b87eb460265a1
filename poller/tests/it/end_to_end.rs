//! The genuine fixtures, served by a local upstream, through all three pollers and the sink
//! into ClickHouse: one row per distinct observation, with the values of the files.

use std::time::Duration;

use test_support::ClickHouseServer;

use crate::{fixture, stream_len, wait_until, Reply, Service, Upstream};

const DATABASE: &str = "nomadwave_feeds_e2e";

fn count(clickhouse: &ClickHouseServer, table: &str, modifier: &str) -> u64 {
    clickhouse
        .try_query(&format!(
            "SELECT count() FROM {DATABASE}.{table} {modifier}"
        ))
        .and_then(|text| text.parse().ok())
        .unwrap_or(0)
}

fn number(clickhouse: &ClickHouseServer, sql: &str) -> f64 {
    let text = clickhouse.query(sql);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{sql} gave {text:?}"))
}

#[test]
fn fixtures_reach_clickhouse_once_with_their_values() {
    let nats = test_support::NatsServer::start("feeds-e2e");
    let clickhouse = ClickHouseServer::start("feeds-e2e");
    let upstream = Upstream::start();
    upstream.script(
        "/geoserver/ows",
        vec![Reply::ok(fixture(
            "imos/aodn_wave_nrt_v2_timeseries_map_2025-05-05_features14-50.geojson",
        ))],
    );
    upstream.script(
        "/fwo/IDQ60701/IDQ60701.94254.json",
        vec![Reply::ok(fixture(
            "bom/legacy_fwo_IDQ60701.94254_2017-02-18.json",
        ))],
    );
    upstream.script(
        "/v1/locations/qvv117/observations",
        vec![Reply::ok(fixture(
            "bom/api_v1_observations_darwin_2022-10-07.json",
        ))],
    );
    upstream.script(
        "/v1/locations/r3dp39/observations",
        vec![Reply::ok(fixture(
            "bom/api_v1_observations_canberra_2020-12-24.json",
        ))],
    );
    for (zone, file) in [
        (
            "BE",
            "electricitymaps/v3_carbon-intensity_latest_BE_2024-11-28.json",
        ),
        (
            "US-CAR-DUK",
            "electricitymaps/v3_carbon-intensity_latest_US-CAR-DUK_2025-03-29.json",
        ),
        (
            "DK-DK2",
            "electricitymaps/v3_carbon-intensity_past-range_DK-DK2_2024-03-18.json",
        ),
    ] {
        upstream.script(
            &format!("/v3/carbon-intensity/history?zone={zone}"),
            vec![Reply::ok(fixture(file))],
        );
    }

    let clickhouse_env = [
        ("CLICKHOUSE_URL", clickhouse.http_url()),
        ("CLICKHOUSE_DATABASE", DATABASE.to_owned()),
    ];
    let clickhouse_env: Vec<(&str, &str)> = clickhouse_env
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    let _sink = Service::spawn(
        "sink-clickhouse",
        &nats,
        &["run", "--flush-interval", "200ms"],
        &clickhouse_env,
    );
    let poll = [
        "--interval",
        "1s",
        "--retry-min-delay",
        "100ms",
        "--max-requests-per-minute",
        "600",
    ];
    let wave_url = upstream.url("/geoserver/ows");
    let mut wave_args = vec!["run", "--wfs-url", &wave_url];
    wave_args.extend(poll);
    let _wave = Service::spawn("ingest-wave", &nats, &wave_args, &[]);
    let fwo_url = upstream.url("/");
    let api_url = upstream.url("/v1");
    let mut wx_args = vec![
        "run",
        "--stations",
        "IDQ60701.94254,qvv117n,r3dp39",
        "--fwo-url",
        &fwo_url,
        "--api-url",
        &api_url,
    ];
    wx_args.extend(poll);
    let _wx = Service::spawn("ingest-wx", &nats, &wx_args, &[]);
    let carbon_url = upstream.url("/v3");
    let mut carbon_args = vec![
        "run",
        "--zones",
        "BE,US-CAR-DUK,DK-DK2",
        "--api-url",
        &carbon_url,
    ];
    carbon_args.extend(poll);
    let _carbon = Service::spawn(
        "ingest-carbon",
        &nats,
        &carbon_args,
        &[("ELECTRICITYMAPS_TOKEN", "e2e-token")],
    );

    // Distinct observations in the files: 37 wave features, 2 + 1 + 1 weather records, 2 carbon
    // hours plus the two latest values (the feed tests check these counts against the raw JSON).
    let expected = [
        ("wave_observations", 37),
        ("weather_observations", 4),
        ("carbon_intensity", 4),
    ];
    let arrived = wait_until(Duration::from_secs(60), || {
        expected
            .iter()
            .all(|(table, rows)| count(&clickhouse, table, "") >= *rows)
    });
    let counts: Vec<u64> = expected
        .iter()
        .map(|(table, _)| count(&clickhouse, table, ""))
        .collect();
    assert!(arrived, "rows per table {counts:?}, expected {expected:?}");

    // Several more poll rounds: the cursors keep every poll from republishing.
    std::thread::sleep(Duration::from_secs(4));
    for (table, rows) in expected {
        assert_eq!(
            count(&clickhouse, table, ""),
            rows,
            "{table}: rows after more polls"
        );
        assert_eq!(
            count(&clickhouse, table, "FINAL"),
            rows,
            "{table}: rows FINAL"
        );
    }
    assert_eq!(
        stream_len(&nats, "WAVE"),
        37,
        "WAVE stream holds each observation once"
    );

    // Values as in the files, in SI units.
    let bom = |column: &str, site: &str, unix: i64| {
        number(
            &clickhouse,
            &format!(
                "SELECT {column} FROM {DATABASE}.weather_observations FINAL \
                 WHERE site = '{site}' AND toUnixTimestamp(observed_at) = {unix}"
            ),
        )
    };
    // Legacy: 7 kt at 2017-02-18T13:00:00Z (aifstime_utc 20170218130000).
    assert!(
        (bom("wind_speed_ms", "wmo-94254", 1_487_422_800) - 7.0 * 1852.0 / 3600.0).abs() < 1e-9
    );
    assert!((bom("pressure_hpa", "wmo-94254", 1_487_422_800) - 1008.4).abs() < 1e-9);
    // v1 Darwin: 11 km/h at 2022-10-07T00:10:00Z (observation_time).
    assert!((bom("wind_speed_ms", "bom-014015", 1_665_101_400) - 11.0 / 3.6).abs() < 1e-9);
    let missing = clickhouse.query(&format!(
        "SELECT isNull(rel_humidity_pct), isNull(swell_height_m) FROM {DATABASE}.weather_observations FINAL \
         WHERE site = 'wmo-94254' AND toUnixTimestamp(observed_at) = 1487422800"
    ));
    assert_eq!(
        missing.trim(),
        "1\t1",
        "values the product does not give stay NULL, never 0"
    );

    // IMOS: Tathra's Spotter at 2025-05-05T00:40:00 (no zone in the file: UTC).
    let tathra = number(
        &clickhouse,
        &format!(
            "SELECT wave_height_m FROM {DATABASE}.wave_observations FINAL \
             WHERE site = 'tathra' AND toUnixTimestamp(observed_at) = 1746405600"
        ),
    );
    assert!(
        (tathra - 0.968).abs() < 1e-9,
        "Tathra significant height {tathra}"
    );
    let moorings = clickhouse.query(&format!(
        "SELECT countIf(isNull(wave_height_m)), countIf(isNotNull(peak_period_s)) \
         FROM {DATABASE}.wave_observations FINAL WHERE site = 'cable-beach'"
    ));
    assert_eq!(
        moorings.trim(),
        "2\t2",
        "Smart Mooring rows: no height (NULL), but a peak period"
    );

    // Electricity Maps: BE latest as in the file.
    let be = clickhouse.query(&format!(
        "SELECT carbon_intensity_g_per_kwh, toUnixTimestamp(observed_at) FROM {DATABASE}.carbon_intensity FINAL WHERE zone = 'BE'"
    ));
    let file: serde_json::Value = serde_json::from_slice(&fixture(
        "electricitymaps/v3_carbon-intensity_latest_BE_2024-11-28.json",
    ))
    .unwrap();
    let expected_unix = chrono::DateTime::parse_from_rfc3339(file["datetime"].as_str().unwrap())
        .unwrap()
        .timestamp();
    assert_eq!(
        be.trim(),
        format!("{}\t{expected_unix}", file["carbonIntensity"]),
        "BE row"
    );
}
