//! Electricity Maps v3 parser against the genuine bodies (latest, past-range, errors, power
//! breakdown, zones) and variants built by editing them.

use chrono::{DateTime, TimeZone, Utc};
use feeds::{electricitymaps, Parsed, PayloadError};
use schema::CarbonIntensity;
use serde_json::{json, Value};

macro_rules! fixture {
    ($name:literal) => {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/electricitymaps/",
            $name
        )
    };
}

const LATEST_BE: &str = fixture!("v3_carbon-intensity_latest_BE_2024-11-28.json");
const LATEST_DUK: &str = fixture!("v3_carbon-intensity_latest_US-CAR-DUK_2025-03-29.json");
const PAST_RANGE: &str = fixture!("v3_carbon-intensity_past-range_DK-DK2_2024-03-18.json");
const ERROR_401: &str = fixture!("v3_error_401_invalid_auth-token.json");
const ERROR_500: &str = fixture!("v3_error_500_legacy_state_2017.json");
const BREAKDOWN: &str = fixture!("v3_power-breakdown_history_DE_2024-03-06.json");
const ZONES: &str = fixture!("v3_zones.json");

fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

fn value(path: &str) -> Value {
    serde_json::from_slice(&read(path)).expect("fixture is JSON")
}

fn parse_value(document: &Value, zone: Option<&str>) -> Parsed<CarbonIntensity> {
    electricitymaps::parse(&serde_json::to_vec(document).expect("serialises"), zone)
        .expect("parses")
}

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("RFC 3339 time in the test")
        .with_timezone(&Utc)
}

/// The past-range fixture turned into a `/history` body.
fn history() -> Value {
    let mut document = value(PAST_RANGE);
    let records = document
        .as_object_mut()
        .and_then(|root| root.remove("data"))
        .expect("past-range has data");
    document["history"] = records;
    document
}

fn rejections(parsed: &Parsed<CarbonIntensity>) -> Vec<(&str, &str)> {
    parsed
        .rejected
        .iter()
        .map(|record| (record.location.as_str(), record.reason))
        .collect()
}

#[test]
fn latest_be_has_the_file_s_values() {
    let parsed = electricitymaps::parse(&read(LATEST_BE), Some("BE")).expect("parses");
    assert_eq!(parsed.source, "electricitymaps");
    assert!(parsed.rejected.is_empty(), "{:#?}", parsed.rejected);
    assert_eq!(
        parsed.observations,
        [CarbonIntensity {
            zone: "BE".to_owned(),
            observed_at: Utc.with_ymd_and_hms(2024, 11, 28, 15, 0, 0).unwrap(),
            carbon_intensity_g_per_kwh: 214.0,
            is_estimated: Some(true),
        }]
    );
}

#[test]
fn latest_us_car_duk_has_the_file_s_values() {
    // No requested zone: the record's own zone is used.
    let parsed = electricitymaps::parse(&read(LATEST_DUK), None).expect("parses");
    assert_eq!(
        parsed.observations,
        [CarbonIntensity {
            zone: "US-CAR-DUK".to_owned(),
            observed_at: Utc.with_ymd_and_hms(2025, 3, 29, 18, 0, 0).unwrap(),
            carbon_intensity_g_per_kwh: 144.0,
            is_estimated: Some(true),
        }]
    );
}

#[test]
fn past_range_dk_dk2_gives_both_records() {
    let parsed = electricitymaps::parse(&read(PAST_RANGE), Some("DK-DK2")).expect("parses");
    assert!(parsed.rejected.is_empty(), "{:#?}", parsed.rejected);
    assert_eq!(
        parsed.observations,
        [
            CarbonIntensity {
                zone: "DK-DK2".to_owned(),
                observed_at: utc("2024-03-18T02:00:00Z"),
                carbon_intensity_g_per_kwh: 161.0,
                is_estimated: Some(false),
            },
            CarbonIntensity {
                zone: "DK-DK2".to_owned(),
                observed_at: utc("2024-03-18T03:00:00Z"),
                carbon_intensity_g_per_kwh: 167.0,
                is_estimated: Some(false),
            },
        ]
    );
}

#[test]
fn history_envelope_reads_like_past_range() {
    let from_history = parse_value(&history(), None);
    let from_past_range = electricitymaps::parse(&read(PAST_RANGE), None).expect("parses");
    assert_eq!(from_history, from_past_range);
    assert_eq!(from_history.observations.len(), 2);
}

#[test]
fn invalid_token_401_is_an_upstream_error() {
    let error = electricitymaps::parse(&read(ERROR_401), Some("BE")).expect_err("error body");
    assert_eq!(
        error,
        PayloadError::Upstream {
            message: "Invalid auth-token".to_owned()
        }
    );
    assert_eq!(error.reason(), "upstream_error");
}

#[test]
fn legacy_500_error_is_an_upstream_error_with_its_message() {
    let raw = value(ERROR_500);
    let error = electricitymaps::parse(&read(ERROR_500), None).expect_err("error body");
    assert_eq!(
        error,
        PayloadError::Upstream {
            message: raw["message"].as_str().unwrap().to_owned()
        }
    );
    assert!(
        error.to_string().contains("Unknown error occured"),
        "{error}"
    );
}

#[test]
fn access_denied_plain_text_is_a_json_error_quoting_it() {
    let error = electricitymaps::parse(b"Access denied", Some("AU-NSW")).expect_err("text");
    assert!(matches!(error, PayloadError::Json { .. }), "{error:?}");
    assert!(error.to_string().contains("Access denied"), "{error}");
}

#[test]
fn power_breakdown_history_is_a_shape_error() {
    let error = electricitymaps::parse(&read(BREAKDOWN), Some("DE")).expect_err("breakdown");
    let PayloadError::Shape {
        expected, found, ..
    } = &error
    else {
        panic!("expected Shape, got {error:?}");
    };
    assert_eq!(*expected, "carbon-intensity records");
    assert_eq!(found, "a power-breakdown history");
}

#[test]
fn power_breakdown_latest_is_a_shape_error() {
    let record = value(BREAKDOWN)["history"][0].clone();
    let error = electricitymaps::parse(&serde_json::to_vec(&record).unwrap(), Some("DE"))
        .expect_err("breakdown record");
    let PayloadError::Shape { found, .. } = &error else {
        panic!("expected Shape, got {error:?}");
    };
    assert!(found.contains("power-breakdown record"), "{found}");
}

#[test]
fn zones_list_is_a_shape_error() {
    let error = electricitymaps::parse(&read(ZONES), None).expect_err("zones");
    let PayloadError::Shape { found, .. } = &error else {
        panic!("expected Shape, got {error:?}");
    };
    assert!(found.contains("zones list"), "{found}");
    let zones = value(ZONES).as_object().unwrap().len();
    assert!(found.contains(&format!("{zones} zone codes")), "{found}");
}

#[test]
fn non_numeric_intensity_rejects_only_that_record() {
    let mut document = history();
    let records = document["history"].as_array_mut().unwrap();
    let mut extra = records[1].clone();
    extra["datetime"] = json!("2024-03-18T04:00:00.000Z");
    extra["carbonIntensity"] = json!("abc");
    records.push(extra);
    let parsed = parse_value(&document, Some("DK-DK2"));
    assert_eq!(rejections(&parsed), [("history[2]", "wrong_type")]);
    assert!(
        parsed.rejected[0].detail.contains("abc"),
        "{}",
        parsed.rejected[0]
    );
    let values: Vec<f64> = parsed
        .observations
        .iter()
        .map(|o| o.carbon_intensity_g_per_kwh)
        .collect();
    assert_eq!(values, [161.0, 167.0]);
}

#[test]
fn intensity_types_are_read_or_rejected_per_record() {
    let mut document = history();
    let template = document["history"][0].clone();
    let variants = [
        json!("175"),
        Value::Null,
        json!(true),
        json!({"value": 3}),
        json!(-5),
    ];
    let records = document["history"].as_array_mut().unwrap();
    for (hour, intensity) in variants.into_iter().enumerate() {
        let mut record = template.clone();
        record["datetime"] = json!(format!("2024-03-18T1{hour}:00:00.000Z"));
        record["carbonIntensity"] = intensity;
        records.push(record);
    }
    let mut missing = template.clone();
    missing.as_object_mut().unwrap().remove("carbonIntensity");
    missing["datetime"] = json!("2024-03-18T20:00:00.000Z");
    records.push(missing);
    let parsed = parse_value(&document, None);
    assert_eq!(
        rejections(&parsed),
        [
            ("history[3]", "missing_field"),
            ("history[4]", "wrong_type"),
            ("history[5]", "wrong_type"),
            ("history[6]", "out_of_range"),
            ("history[7]", "missing_field"),
        ]
    );
    let numeric_string = parsed
        .observations
        .iter()
        .find(|o| o.observed_at == utc("2024-03-18T10:00:00Z"))
        .expect("numeric string kept");
    assert_eq!(numeric_string.carbon_intensity_g_per_kwh, 175.0);
    assert_eq!(parsed.observations.len(), 3);
}

#[test]
fn zone_falls_back_to_wrapper_then_requested_zone() {
    let mut document = value(PAST_RANGE);
    document["data"][0].as_object_mut().unwrap().remove("zone");
    let parsed = parse_value(&document, Some("XX"));
    assert_eq!(parsed.observations[0].zone, "DK-DK2", "wrapper zone first");

    let mut latest = value(LATEST_BE);
    latest.as_object_mut().unwrap().remove("zone");
    let parsed = parse_value(&latest, Some("BE"));
    assert_eq!(parsed.observations[0].zone, "BE", "requested zone last");

    let parsed = parse_value(&latest, None);
    assert!(parsed.observations.is_empty());
    assert_eq!(rejections(&parsed), [("$", "missing_field")]);
}

#[test]
fn estimate_flag_null_or_absent_is_none() {
    let mut document = value(PAST_RANGE);
    document["data"][0]["isEstimated"] = Value::Null;
    document["data"][1]
        .as_object_mut()
        .unwrap()
        .remove("isEstimated");
    let parsed = parse_value(&document, None);
    let flags: Vec<Option<bool>> = parsed.observations.iter().map(|o| o.is_estimated).collect();
    assert_eq!(flags, [None, None]);
}

#[test]
fn datetime_offsets_convert_and_zoneless_times_are_rejected() {
    let mut document = value(PAST_RANGE);
    document["data"][0]["datetime"] = json!("2024-03-18T03:00:00.000+01:00");
    document["data"][1]["datetime"] = json!("2024-03-18T03:00:00");
    let parsed = parse_value(&document, None);
    assert_eq!(parsed.observations.len(), 1);
    assert_eq!(
        parsed.observations[0].observed_at,
        utc("2024-03-18T02:00:00Z")
    );
    assert_eq!(rejections(&parsed), [("data[1]", "bad_time")]);
}

#[test]
fn repeated_zone_and_hour_is_a_duplicate() {
    let mut document = history();
    let records = document["history"].as_array_mut().unwrap();
    let mut revised = records[0].clone();
    revised["carbonIntensity"] = json!(150);
    records.push(revised);
    let parsed = parse_value(&document, None);
    assert_eq!(parsed.duplicates, 1);
    assert_eq!(parsed.observations.len(), 2);
    assert_eq!(parsed.observations[0].carbon_intensity_g_per_kwh, 161.0);
}

#[test]
fn truncated_body_is_a_json_error() {
    let body = read(PAST_RANGE);
    let error = electricitymaps::parse(&body[..body.len() / 2], None).expect_err("half");
    assert!(matches!(error, PayloadError::Json { .. }), "{error:?}");
    assert!(error.to_string().contains("truncated"), "{error}");
}

#[test]
fn key_order_and_unknown_members_do_not_matter() {
    let raw = value(LATEST_BE);
    let mut reordered = serde_json::Map::new();
    let mut keys: Vec<&String> = raw.as_object().unwrap().keys().collect();
    keys.reverse();
    for key in keys {
        reordered.insert(key.clone(), raw[key].clone());
    }
    reordered.insert("temporalGranularity".to_owned(), json!("hourly"));
    let parsed = parse_value(&Value::Object(reordered), None);
    let original = electricitymaps::parse(&read(LATEST_BE), None).expect("parses");
    assert_eq!(parsed, original);
}

#[test]
fn other_documents_are_shape_errors() {
    for case in [
        json!([]),
        json!({}),
        json!({"zone": "DE", "history": {"0": {}}}),
        json!({"zone": "DE", "forecast": []}),
    ] {
        let error = electricitymaps::parse(&serde_json::to_vec(&case).unwrap(), Some("DE"))
            .expect_err("not carbon intensity");
        assert!(
            matches!(error, PayloadError::Shape { .. }),
            "{case}: {error:?}"
        );
    }
}
