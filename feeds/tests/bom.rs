//! `feeds::bom::parse` against the genuine BOM payloads in `fixtures/bom`, and against variants
//! of them edited here. Expected values are read off the fixture files by hand.

use chrono::{DateTime, TimeZone, Utc};
use feeds::bom::{parse, SOURCE_API, SOURCE_FWO};
use feeds::{Parsed, PayloadError};
use schema::WeatherObservation;
use serde_json::{json, Value};

macro_rules! fixture_path {
    ($name:literal) => {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/bom/", $name)
    };
}

const LEGACY: &str = fixture_path!("legacy_fwo_IDQ60701.94254_2017-02-18.json");
const V1_DARWIN: &str = fixture_path!("api_v1_observations_darwin_2022-10-07.json");
const V1_CANBERRA: &str = fixture_path!("api_v1_observations_canberra_2020-12-24.json");
const V1_DAILY: &str = fixture_path!("api_v1_forecasts_daily_darwin_2022-10-07.json");
const V1_HOURLY: &str = fixture_path!("api_v1_forecasts_hourly_2022-10-07.json");
const V1_LOCATION_INFO: &str = fixture_path!("api_v1_location_info_qvv117n_darwin_2022-10-07.json");
const V1_SEARCH: &str = fixture_path!("api_v1_locations_search_darwin_2022-10-07.json");

fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|error| panic!("reading {path}: {error}"))
}

fn read_json(path: &str) -> Value {
    serde_json::from_slice(&read(path)).expect("fixture is JSON")
}

fn parse_value(value: &Value, fallback_site: Option<&str>) -> Parsed<WeatherObservation> {
    let body = serde_json::to_vec(value).expect("serialise");
    parse(&body, fallback_site).expect("a readable payload")
}

fn utc(year: i32, month: u32, day: u32, hour: u32, minute: u32, second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(year, month, day, hour, minute, second)
        .single()
        .expect("a valid time")
}

/// Asserts a converted value to 1e-9 (the conversions multiply by inexact factors).
fn assert_close(actual: Option<f64>, expected: f64, what: &str) {
    let actual = actual.unwrap_or_else(|| panic!("{what}: expected {expected}, got None"));
    assert!(
        (actual - expected).abs() < 1e-9,
        "{what}: expected {expected}, got {actual}"
    );
}

/// The legacy fixture's `observations.data[index]`, for editing.
fn legacy_record(document: &mut Value, index: usize) -> &mut serde_json::Map<String, Value> {
    document["observations"]["data"][index]
        .as_object_mut()
        .expect("a record object")
}

#[test]
fn legacy_coastal_product_gives_both_records_with_knots_converted() {
    let parsed = parse(&read(LEGACY), None).expect("the legacy fixture parses");
    assert_eq!(parsed.source, SOURCE_FWO);
    assert_eq!(parsed.source, "bom-fwo");
    assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
    assert_eq!(parsed.duplicates, 0);
    assert_eq!(parsed.observations.len(), 2);

    // sort_order 0: aifstime_utc 20170218130000 (local 23:00 EST), wind ESE 7 kt, gust 8 kt.
    let latest = &parsed.observations[0];
    assert_eq!(latest.site, "wmo-94254");
    assert_eq!(latest.observed_at, utc(2017, 2, 18, 13, 0, 0));
    assert_close(latest.wind_speed_ms, 3.601_111_111_111, "7 kt"); // 7 × 1852 / 3600
    assert_close(latest.wind_gust_ms, 4.115_555_555_556, "8 kt"); // 8 × 1852 / 3600
    assert_eq!(latest.wind_direction_deg, Some(112.5)); // ESE
    assert_eq!(latest.air_temp_c, Some(26.0));
    assert_eq!(latest.pressure_hpa, Some(1008.4)); // `press`: this product has no press_msl
    assert_eq!(latest.rel_humidity_pct, None); // no rel_hum key in IDQ60701
    assert_eq!(latest.swell_height_m, None); // null
    assert_eq!(latest.swell_period_s, None); // null

    // sort_order 1: aifstime_utc 20170218123000, wind ESE 5 kt, gust 6 kt.
    let earlier = &parsed.observations[1];
    assert_eq!(earlier.site, "wmo-94254");
    assert_eq!(earlier.observed_at, utc(2017, 2, 18, 12, 30, 0));
    assert_close(earlier.wind_speed_ms, 2.572_222_222_222, "5 kt");
    assert_close(earlier.wind_gust_ms, 3.086_666_666_667, "6 kt");
    assert_eq!(earlier.wind_direction_deg, Some(112.5));
    assert_eq!(earlier.air_temp_c, Some(26.1));
    assert_eq!(earlier.pressure_hpa, Some(1008.7));
    assert_eq!(earlier.rel_humidity_pct, None);
    assert_eq!(earlier.swell_height_m, None);
    assert_eq!(earlier.swell_period_s, None);
}

#[test]
fn legacy_time_ignores_local_date_time_full() {
    let mut document = read_json(LEGACY);
    let record = legacy_record(&mut document, 0);
    record.insert("local_date_time_full".into(), json!("20991231235959"));
    record.insert("local_date_time".into(), json!("31/11:59pm"));
    let parsed = parse_value(&document, None);
    assert_eq!(parsed.observations.len(), 2);
    assert_eq!(
        parsed.observations[0].observed_at,
        utc(2017, 2, 18, 13, 0, 0)
    );
}

#[test]
fn legacy_kmh_wins_over_knots() {
    let mut document = read_json(LEGACY);
    let record = legacy_record(&mut document, 0);
    // Deliberately inconsistent with the knots (7 kt, 8 kt) so the source used is visible.
    record.insert("wind_spd_kmh".into(), json!(18));
    record.insert("gust_kmh".into(), json!("27")); // as text
    let parsed = parse_value(&document, None);
    assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
    assert_close(parsed.observations[0].wind_speed_ms, 5.0, "18 km/h");
    assert_close(parsed.observations[0].wind_gust_ms, 7.5, "27 km/h");
    // The untouched record still uses its knots.
    assert_close(
        parsed.observations[1].wind_speed_ms,
        2.572_222_222_222,
        "5 kt",
    );

    // A null or "-" km/h falls back to knots rather than giving 0.
    let mut document = read_json(LEGACY);
    let record = legacy_record(&mut document, 0);
    record.insert("wind_spd_kmh".into(), Value::Null);
    record.insert("gust_kmh".into(), json!("-"));
    let parsed = parse_value(&document, None);
    assert_close(
        parsed.observations[0].wind_speed_ms,
        3.601_111_111_111,
        "7 kt",
    );
    assert_close(
        parsed.observations[0].wind_gust_ms,
        4.115_555_555_556,
        "8 kt",
    );
}

#[test]
fn legacy_record_without_aifstime_is_rejected_and_the_other_kept() {
    let mut document = read_json(LEGACY);
    legacy_record(&mut document, 1).remove("aifstime_utc");
    let parsed = parse_value(&document, None);
    assert_eq!(parsed.observations.len(), 1);
    assert_eq!(
        parsed.observations[0].observed_at,
        utc(2017, 2, 18, 13, 0, 0)
    );
    assert_eq!(parsed.rejected.len(), 1);
    assert_eq!(parsed.rejected[0].location, "observations.data[1]");
    assert_eq!(parsed.rejected[0].reason, "bad_time");
    assert!(
        parsed.rejected[0].detail.contains("aifstime_utc"),
        "{}",
        parsed.rejected[0]
    );

    // Present but malformed is rejected the same way, at its own index.
    let mut document = read_json(LEGACY);
    legacy_record(&mut document, 0).insert("aifstime_utc".into(), json!("2017-02-18 13:00"));
    let parsed = parse_value(&document, None);
    assert_eq!(parsed.observations.len(), 1);
    assert_eq!(
        parsed.observations[0].observed_at,
        utc(2017, 2, 18, 12, 30, 0)
    );
    assert_eq!(parsed.rejected.len(), 1);
    assert_eq!(parsed.rejected[0].location, "observations.data[0]");
    assert_eq!(parsed.rejected[0].reason, "bad_time");
}

#[test]
fn legacy_wrong_typed_field_rejects_only_that_record() {
    for bad in [json!("hot"), json!(true), json!([26.0])] {
        let mut document = read_json(LEGACY);
        legacy_record(&mut document, 0).insert("air_temp".into(), bad.clone());
        let parsed = parse_value(&document, None);
        assert_eq!(parsed.observations.len(), 1, "{bad}");
        assert_eq!(parsed.observations[0].air_temp_c, Some(26.1));
        assert_eq!(parsed.rejected.len(), 1, "{bad}");
        let rejected = &parsed.rejected[0];
        assert_eq!(rejected.location, "observations.data[0]");
        assert_eq!(rejected.reason, "wrong_type");
        assert!(rejected.detail.contains("air_temp"), "{rejected}");
    }

    // The same for a knots speed and a wind direction that is not text.
    let mut document = read_json(LEGACY);
    legacy_record(&mut document, 1).insert("wind_spd_kt".into(), json!({"value": 5}));
    legacy_record(&mut document, 0).insert("wind_dir".into(), json!(112.5));
    let parsed = parse_value(&document, None);
    assert!(parsed.observations.is_empty());
    let details: Vec<&str> = parsed.rejected.iter().map(|r| r.detail.as_str()).collect();
    assert_eq!(parsed.rejected.len(), 2, "{details:?}");
    assert!(details[0].contains("wind_dir"), "{details:?}");
    assert!(details[1].contains("wind_spd_kt"), "{details:?}");
}

#[test]
fn legacy_rain_trace_and_vis_km_strings_change_nothing() {
    let expected = parse(&read(LEGACY), None).expect("fixture parses");
    for (rain, visibility) in [
        (json!("0.0"), json!("10")),
        (json!("Tce"), json!("-")),
        (json!(""), json!("10km")),
        (Value::Null, json!(10)),
    ] {
        let mut document = read_json(LEGACY);
        for index in 0..2 {
            let record = legacy_record(&mut document, index);
            record.insert("rain_trace".into(), rain.clone());
            record.insert("vis_km".into(), visibility.clone());
        }
        let parsed = parse_value(&document, None);
        assert_eq!(parsed, expected, "rain_trace {rain}, vis_km {visibility}");
    }
}

#[test]
fn legacy_pressure_prefers_msl_then_press_then_qnh() {
    let mut document = read_json(LEGACY);
    let record = legacy_record(&mut document, 0);
    record.insert("press_msl".into(), json!(1009.1));
    record.insert("press_qnh".into(), json!(1009.3));
    let record = legacy_record(&mut document, 1);
    record.insert("press".into(), Value::Null);
    record.insert("press_qnh".into(), json!("1009.6"));
    let parsed = parse_value(&document, None);
    assert_eq!(parsed.observations[0].pressure_hpa, Some(1009.1));
    assert_eq!(parsed.observations[1].pressure_hpa, Some(1009.6));

    // None at all → None, not 0.
    let mut document = read_json(LEGACY);
    legacy_record(&mut document, 0).remove("press");
    let parsed = parse_value(&document, None);
    assert_eq!(parsed.observations[0].pressure_hpa, None);
}

#[test]
fn legacy_full_product_fields_numbers_as_text_and_placeholders() {
    let mut document = read_json(LEGACY);
    let record = legacy_record(&mut document, 0);
    record.insert("rel_hum".into(), json!("71"));
    record.insert("air_temp".into(), json!(" 25.5 "));
    record.insert("swell_height".into(), json!(1.5));
    record.insert("swell_period".into(), json!("9"));
    let record = legacy_record(&mut document, 1);
    record.insert("air_temp".into(), json!("-"));
    record.insert("rel_hum".into(), Value::Null);
    let parsed = parse_value(&document, None);
    assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
    let latest = &parsed.observations[0];
    assert_eq!(latest.rel_humidity_pct, Some(71.0));
    assert_eq!(latest.air_temp_c, Some(25.5));
    assert_eq!(latest.swell_height_m, Some(1.5));
    assert_eq!(latest.swell_period_s, Some(9.0));
    assert_eq!(parsed.observations[1].air_temp_c, None);
    assert_eq!(parsed.observations[1].rel_humidity_pct, None);
}

#[test]
fn legacy_calm_variable_and_missing_wind_directions_are_none() {
    for direction in [json!("CALM"), json!("VRB"), json!("-"), Value::Null] {
        let mut document = read_json(LEGACY);
        legacy_record(&mut document, 0).insert("wind_dir".into(), direction.clone());
        let parsed = parse_value(&document, None);
        assert!(
            parsed.rejected.is_empty(),
            "{direction}: {:?}",
            parsed.rejected
        );
        assert_eq!(
            parsed.observations[0].wind_direction_deg, None,
            "{direction}"
        );
    }
    let mut document = read_json(LEGACY);
    legacy_record(&mut document, 0).insert("wind_dir".into(), json!("wsw"));
    let parsed = parse_value(&document, None);
    assert_eq!(parsed.observations[0].wind_direction_deg, Some(247.5));
}

#[test]
fn legacy_station_number_is_required() {
    let mut document = read_json(LEGACY);
    legacy_record(&mut document, 0).remove("wmo");
    legacy_record(&mut document, 1).insert("wmo".into(), json!("94254"));
    let parsed = parse_value(&document, None);
    assert_eq!(parsed.observations.len(), 1);
    assert_eq!(parsed.observations[0].site, "wmo-94254");
    assert_eq!(
        parsed.observations[0].observed_at,
        utc(2017, 2, 18, 12, 30, 0)
    );
    assert_eq!(parsed.rejected.len(), 1);
    assert_eq!(parsed.rejected[0].location, "observations.data[0]");
    assert_eq!(parsed.rejected[0].reason, "missing_field");
    assert!(
        parsed.rejected[0].detail.contains("wmo"),
        "{}",
        parsed.rejected[0]
    );
}

#[test]
fn legacy_repeated_record_is_a_duplicate_and_out_of_range_is_rejected() {
    let mut document = read_json(LEGACY);
    let first = document["observations"]["data"][0].clone();
    document["observations"]["data"]
        .as_array_mut()
        .expect("data array")
        .push(first);
    let parsed = parse_value(&document, None);
    assert_eq!(parsed.observations.len(), 2);
    assert_eq!(parsed.duplicates, 1);

    let mut document = read_json(LEGACY);
    legacy_record(&mut document, 1).insert("rel_hum".into(), json!(150));
    let parsed = parse_value(&document, None);
    assert_eq!(parsed.observations.len(), 1);
    assert_eq!(parsed.rejected.len(), 1);
    assert_eq!(parsed.rejected[0].location, "observations.data[1]");
    assert_eq!(parsed.rejected[0].reason, "out_of_range");
}

#[test]
fn legacy_data_that_is_not_an_array_is_a_shape_error() {
    let mut document = read_json(LEGACY);
    document["observations"]["data"] = json!({"sort_order": 0});
    let body = serde_json::to_vec(&document).expect("serialise");
    match parse(&body, None) {
        Err(PayloadError::Shape { path, .. }) => assert_eq!(path, "observations.data"),
        other => panic!("expected a Shape error, got {other:?}"),
    }
}

#[test]
fn v1_darwin_uses_observation_time_and_kmh() {
    let parsed = parse(&read(V1_DARWIN), Some("qvv117")).expect("the Darwin fixture parses");
    assert_eq!(parsed.source, SOURCE_API);
    assert_eq!(parsed.source, "bom-api");
    assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
    assert_eq!(parsed.observations.len(), 1);
    let observation = &parsed.observations[0];
    assert_eq!(observation.site, "bom-014015"); // leading zero kept; fallback not used
                                                // observation_time 00:10:00Z, not issue_time 00:11:02Z.
    assert_eq!(observation.observed_at, utc(2022, 10, 7, 0, 10, 0));
    assert_close(observation.wind_speed_ms, 3.055_555_555_556, "11 km/h"); // not 6 kt
    assert_close(observation.wind_gust_ms, 3.611_111_111_111, "13 km/h"); // not 7 kt
    assert_eq!(observation.wind_direction_deg, Some(225.0)); // SW
    assert_eq!(observation.air_temp_c, Some(30.5)); // temp, not temp_feels_like 33.6
    assert_eq!(observation.rel_humidity_pct, Some(64.0));
    assert_eq!(observation.pressure_hpa, None);
    assert_eq!(observation.swell_height_m, None);
    assert_eq!(observation.swell_period_s, None);
}

#[test]
fn v1_canberra_2020_falls_back_to_issue_time() {
    let parsed = parse(&read(V1_CANBERRA), None).expect("the Canberra fixture parses");
    assert_eq!(parsed.source, SOURCE_API);
    assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
    assert_eq!(parsed.observations.len(), 1);
    let observation = &parsed.observations[0];
    assert_eq!(observation.site, "bom-070351");
    assert_eq!(observation.observed_at, utc(2020, 12, 24, 7, 51, 1));
    assert_close(observation.wind_speed_ms, 6.111_111_111_111, "22 km/h");
    assert_close(observation.wind_gust_ms, 7.222_222_222_222, "26 km/h");
    assert_eq!(observation.wind_direction_deg, Some(292.5)); // WNW
    assert_eq!(observation.air_temp_c, Some(25.2));
    assert_eq!(observation.rel_humidity_pct, Some(28.0));
    assert_eq!(observation.pressure_hpa, None);
}

#[test]
fn v1_time_offsets_are_converted_and_bad_times_rejected() {
    let mut document = read_json(V1_DARWIN);
    document["metadata"]["observation_time"] = json!("2022-10-07T09:40:00+09:30");
    let parsed = parse_value(&document, None);
    assert_eq!(
        parsed.observations[0].observed_at,
        utc(2022, 10, 7, 0, 10, 0)
    );

    let mut document = read_json(V1_DARWIN);
    document["metadata"]["observation_time"] = json!("yesterday");
    let parsed = parse_value(&document, None);
    assert!(parsed.observations.is_empty());
    assert_eq!(parsed.rejected.len(), 1);
    assert_eq!(parsed.rejected[0].location, "data");
    assert_eq!(parsed.rejected[0].reason, "bad_time");
    assert!(
        parsed.rejected[0].detail.contains("observation_time"),
        "{}",
        parsed.rejected[0]
    );

    let mut document = read_json(V1_CANBERRA);
    document["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("issue_time");
    let parsed = parse_value(&document, None);
    assert!(parsed.observations.is_empty());
    assert_eq!(parsed.rejected[0].reason, "bad_time");
}

#[test]
fn v1_without_station_uses_the_fallback_site_or_is_rejected() {
    let mut document = read_json(V1_CANBERRA);
    document["data"]
        .as_object_mut()
        .expect("data")
        .remove("station");
    let parsed = parse_value(&document, Some("r3dp2m"));
    assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
    assert_eq!(parsed.observations[0].site, "r3dp2m");

    let parsed = parse_value(&document, None);
    assert!(parsed.observations.is_empty());
    assert_eq!(parsed.rejected.len(), 1);
    assert_eq!(parsed.rejected[0].location, "data");
    assert_eq!(parsed.rejected[0].reason, "missing_field");

    // A numeric bom_id has lost its leading zero: rejected, not guessed.
    let mut document = read_json(V1_CANBERRA);
    document["data"]["station"]["bom_id"] = json!(70351);
    let parsed = parse_value(&document, Some("r3dp2m"));
    assert!(parsed.observations.is_empty());
    assert_eq!(parsed.rejected[0].reason, "wrong_type");
    assert!(
        parsed.rejected[0].detail.contains("bom_id"),
        "{}",
        parsed.rejected[0]
    );
}

#[test]
fn v1_knots_when_kilometres_missing_and_wrong_types_rejected() {
    let mut document = read_json(V1_DARWIN);
    document["data"]["wind"]["speed_kilometre"] = Value::Null;
    document["data"]["gust"]
        .as_object_mut()
        .expect("gust")
        .remove("speed_kilometre");
    let parsed = parse_value(&document, None);
    assert_close(
        parsed.observations[0].wind_speed_ms,
        3.086_666_666_667,
        "6 kt",
    );
    assert_close(
        parsed.observations[0].wind_gust_ms,
        3.601_111_111_111,
        "7 kt",
    );

    let mut document = read_json(V1_DARWIN);
    document["data"]["temp"] = json!("hot");
    let parsed = parse_value(&document, None);
    assert!(parsed.observations.is_empty());
    assert_eq!(parsed.rejected[0].reason, "wrong_type");
    assert!(
        parsed.rejected[0].detail.contains("temp"),
        "{}",
        parsed.rejected[0]
    );

    let mut document = read_json(V1_DARWIN);
    document["data"]["wind"] = json!("SW 11");
    let parsed = parse_value(&document, None);
    assert_eq!(parsed.rejected[0].reason, "wrong_type");
    assert!(
        parsed.rejected[0].detail.contains("wind"),
        "{}",
        parsed.rejected[0]
    );
}

fn shape_error(body: &[u8]) -> (String, String, String) {
    match parse(body, Some("qvv117")) {
        Err(PayloadError::Shape {
            path,
            expected,
            found,
        }) => (path, expected.to_owned(), found),
        other => panic!("expected a Shape error, got {other:?}"),
    }
}

#[test]
fn other_v1_documents_are_shape_errors_naming_what_they_are() {
    for (path, what) in [
        (V1_DAILY, "a daily forecast"),
        (V1_HOURLY, "an hourly forecast"),
        (V1_LOCATION_INFO, "a location info document"),
        (V1_SEARCH, "a location search result"),
    ] {
        let (at, expected, found) = shape_error(&read(path));
        assert_eq!(at, "data", "{path}");
        assert_eq!(expected, "a BOM observations document", "{path}");
        assert!(
            found.starts_with(what),
            "{path}: found {found:?}, wanted {what:?}"
        );
    }
    let (_, _, found) = shape_error(&read(V1_DAILY));
    assert_eq!(found, "a daily forecast (7 days)");
}

#[test]
fn a_document_in_neither_format_is_a_shape_error_at_the_root() {
    for body in [
        &br#"{"zone": "AU-NSW", "carbonIntensity": 600}"#[..],
        b"[1, 2, 3]",
        b"{}",
        b"\"observations\"",
    ] {
        let (path, expected, _) = shape_error(body);
        assert_eq!(path, "$", "{}", String::from_utf8_lossy(body));
        assert!(expected.contains("legacy"), "{expected}");
    }
}

#[test]
fn an_error_document_is_an_upstream_error() {
    let body = br#"{"errors": [{"code": "WEATHER-400", "title": "Invalid Geohash"}]}"#;
    match parse(body, None) {
        Err(PayloadError::Upstream { message }) => {
            assert_eq!(message, "WEATHER-400 - Invalid Geohash");
        }
        other => panic!("expected an Upstream error, got {other:?}"),
    }
}

#[test]
fn a_truncated_body_is_a_json_error_saying_truncated() {
    for path in [LEGACY, V1_DARWIN] {
        let body = read(path);
        let half = &body[..body.len() / 2];
        let error = parse(half, None).expect_err("half a document");
        assert!(matches!(error, PayloadError::Json { .. }), "{error:?}");
        assert!(error.to_string().contains("truncated"), "{error}");
    }
}

#[test]
fn an_html_page_is_a_json_error_mentioning_html() {
    let body = b"\n<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head>\
                 <body>Access denied</body></html>";
    let error = parse(body, None).expect_err("an HTML page");
    assert!(matches!(error, PayloadError::Json { .. }), "{error:?}");
    assert!(error.to_string().contains("HTML"), "{error}");
}
