//! AODN wave-buoy parser against the genuine map-layer export, the layer's field list and
//! variants built by editing that export.

use std::collections::HashSet;

use chrono::{DateTime, TimeZone, Utc};
use feeds::{imos, normalize_site, Parsed, PayloadError};
use schema::WaveObservation;
use serde_json::{json, Value};

const MAP_LAYER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../fixtures/imos/aodn_wave_nrt_v2_timeseries_map_2025-05-05_features14-50.geojson"
);
const FIELD_LIST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../fixtures/imos/ogcapi_wms_fields_aodn_wave_nrt_v2_timeseries_map.json"
);

fn map_layer_bytes() -> Vec<u8> {
    std::fs::read(MAP_LAYER).expect("map-layer fixture")
}

fn map_layer() -> Value {
    serde_json::from_slice(&map_layer_bytes()).expect("fixture is JSON")
}

fn parse_value(document: &Value) -> Parsed<WaveObservation> {
    imos::parse(&serde_json::to_vec(document).expect("serialises")).expect("parses")
}

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("RFC 3339 time in the test")
        .with_timezone(&Utc)
}

fn features(document: &Value) -> &Vec<Value> {
    document["features"].as_array().expect("features array")
}

fn features_mut(document: &mut Value) -> &mut Vec<Value> {
    document["features"].as_array_mut().expect("features array")
}

/// Index of the only feature of `site_name` at `time` in the raw fixture.
fn feature_index(document: &Value, site_name: &str, time: &str) -> usize {
    let matches: Vec<usize> = features(document)
        .iter()
        .enumerate()
        .filter(|(_, feature)| {
            feature["properties"]["site_name"] == site_name && feature["properties"]["TIME"] == time
        })
        .map(|(index, _)| index)
        .collect();
    assert_eq!(matches.len(), 1, "{site_name} at {time}: {matches:?}");
    matches[0]
}

fn find<'a>(parsed: &'a Parsed<WaveObservation>, site: &str, at: &str) -> &'a WaveObservation {
    let at = utc(at);
    parsed
        .observations
        .iter()
        .find(|observation| observation.site == site && observation.observed_at == at)
        .unwrap_or_else(|| panic!("no observation for {site} at {at}: {parsed:#?}"))
}

/// The fixture's TIME (no zone designator, UTC by contract) as an instant, computed without
/// the parser.
fn raw_time(feature: &Value) -> DateTime<Utc> {
    let text = feature["properties"]["TIME"].as_str().expect("TIME string");
    utc(&format!("{text}Z"))
}

/// A data-layer feature (the raw IMOS variables), built from the fixture's Tathra feature so
/// the rest of the feature stays genuine.
fn data_layer_feature(document: &Value) -> Value {
    let mut feature =
        features(document)[feature_index(document, "Tathra", "2025-05-05T00:40:00")].clone();
    feature["properties"] = json!({
        "file_id": 39200,
        "institution": "IMOS Coastal Wave Buoys",
        "institut_for_filter": "IMOS Coastal Wave Buoys",
        "source_id": 7,
        "site_name": "Tathra",
        "TIME": "2025-05-05T00:40:00",
        "LATITUDE": -36.7312,
        "LONGITUDE": 150.0021,
        "WSSH": null,
        "WHTH": 1.23,
        "WMXH": 2.05,
        "WPPE": 9.8,
        "WPMH": 6.1,
        "WPFM": null,
        "WPDI": 101.5,
        "SSWMD": 77.0,
        "WMDS": 30.1,
        "WPDS": 25.4,
        "WAVE_quality_control": "1",
        "WPSM": null,
        "WPTH": null,
        "WPTE": null
    });
    feature
}

fn one_feature_collection(document: &Value, feature: Value) -> Value {
    let mut collection = document.clone();
    *features_mut(&mut collection) = vec![feature];
    collection
}

#[test]
fn tathra_feature_has_the_file_s_values() {
    let parsed = imos::parse(&map_layer_bytes()).expect("parses");
    let tathra = find(&parsed, "tathra", "2025-05-05T00:40:00Z");
    assert_eq!(
        tathra.observed_at,
        Utc.with_ymd_and_hms(2025, 5, 5, 0, 40, 0).unwrap()
    );
    assert_eq!(tathra.wave_height_m, Some(0.968));
    assert_eq!(tathra.mean_period_s, Some(5.471));
    assert_eq!(tathra.peak_period_s, Some(5.389));
    assert_eq!(tathra.wave_direction_deg, Some(54.914));
    assert_eq!(tathra.wave_height_max_m, None);
    assert_eq!(tathra.sea_temp_c, None);
    // The map layer has no per-observation position: the feature geometry (deployment
    // position) is used, not the bounding-box corner latitude_min/longitude_min
    // (-36.7368/149.8535).
    assert_eq!(tathra.lat, Some(-36.61736916666667));
    // The file writes 150.010491666666667; that is this f64.
    assert_eq!(tathra.lon, Some(150.01049166666667));
}

#[test]
fn every_feature_matches_its_raw_values() {
    let document = map_layer();
    let parsed = parse_value(&document);
    for feature in features(&document) {
        let properties = &feature["properties"];
        let site = normalize_site(properties["site_name"].as_str().unwrap());
        let at = raw_time(feature);
        let observation = parsed
            .observations
            .iter()
            .find(|observation| observation.site == site && observation.observed_at == at)
            .unwrap_or_else(|| panic!("{site} at {at} missing"));
        assert_eq!(
            observation.wave_height_m,
            properties["significant_wave_height"].as_f64(),
            "{site} {at}"
        );
        assert_eq!(
            observation.mean_period_s,
            properties["wave_mean_period"].as_f64(),
            "{site} {at}"
        );
        assert_eq!(
            observation.peak_period_s,
            properties["peak_wave_period"].as_f64(),
            "{site} {at}"
        );
        assert_eq!(
            observation.wave_direction_deg,
            properties["peak_wave_direction"].as_f64(),
            "{site} {at}"
        );
        assert_eq!(
            observation.lon,
            feature["geometry"]["coordinates"][0].as_f64(),
            "{site} {at}"
        );
        assert_eq!(
            observation.lat,
            feature["geometry"]["coordinates"][1].as_f64(),
            "{site} {at}"
        );
    }
}

#[test]
fn smart_mooring_rows_have_no_height_but_keep_peak_period() {
    let document = map_layer();
    let parsed = parse_value(&document);
    let moorings: Vec<&Value> = features(&document)
        .iter()
        .filter(|feature| feature["properties"]["instrument"] == "SOFAR Smart Mooring-V3")
        .collect();
    assert!(
        moorings.len() >= 5,
        "the fixture has several Smart Mooring-V3 rows"
    );
    for feature in moorings {
        let site = normalize_site(feature["properties"]["site_name"].as_str().unwrap());
        let at = raw_time(feature);
        let observation = find(&parsed, &site, &at.to_rfc3339());
        assert_eq!(
            observation.wave_height_m, None,
            "{site} {at}: null is not 0"
        );
        assert_eq!(observation.mean_period_s, None, "{site} {at}");
        let peak = feature["properties"]["peak_wave_period"].as_f64().unwrap();
        assert_eq!(observation.peak_period_s, Some(peak), "{site} {at}");
        assert!(observation.wave_direction_deg.is_some(), "{site} {at}");
    }
    let cable_beach = find(&parsed, "cable-beach", "2025-05-05T01:15:00Z");
    assert_eq!(cable_beach.wave_height_m, None);
    assert_eq!(cable_beach.peak_period_s, Some(2.62));
    assert_eq!(cable_beach.wave_direction_deg, Some(135.758));
}

#[test]
fn datawell_lakes_entrance_has_no_direction() {
    let parsed = imos::parse(&map_layer_bytes()).expect("parses");
    let lakes = find(&parsed, "lakes-entrance", "2025-05-05T00:40:00Z");
    assert_eq!(lakes.wave_direction_deg, None);
    assert_eq!(lakes.wave_height_m, Some(0.35));
    assert_eq!(lakes.mean_period_s, Some(5.2));
    assert_eq!(lakes.peak_period_s, Some(10.9));
    assert_eq!(lakes.lat, Some(-37.9));
    assert_eq!(lakes.lon, Some(147.97));
}

#[test]
fn one_observation_per_distinct_site_and_time() {
    let document = map_layer();
    let distinct: HashSet<(String, String)> = features(&document)
        .iter()
        .map(|feature| {
            let properties = &feature["properties"];
            (
                properties["site_name"].as_str().unwrap().to_owned(),
                properties["TIME"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let parsed = imos::parse(&map_layer_bytes()).expect("parses");
    assert_eq!(parsed.source, "imos-aodn");
    assert_eq!(parsed.observations.len(), distinct.len());
    assert!(parsed.rejected.is_empty(), "{:#?}", parsed.rejected);
    assert_eq!(
        parsed.duplicates,
        features(&document).len() - distinct.len()
    );
    // Several rows per site: it is a time series, not a latest-per-site list.
    let port_fairy = parsed
        .observations
        .iter()
        .filter(|o| o.site == "port-fairy")
        .count();
    assert_eq!(port_fairy, 2);
}

#[test]
fn a_repeated_site_and_time_is_counted_as_duplicate() {
    let mut document = map_layer();
    let index = feature_index(&document, "Storm Bay", "2025-05-05T00:45:00");
    let mut repeat = features(&document)[index].clone();
    repeat["properties"]["significant_wave_height"] = json!(9.99);
    features_mut(&mut document).push(repeat);
    let parsed = parse_value(&document);
    assert_eq!(parsed.duplicates, 1);
    assert_eq!(parsed.observations.len(), features(&document).len() - 1);
    // The first record wins.
    let storm_bay = find(&parsed, "storm-bay", "2025-05-05T00:45:00Z");
    assert_eq!(storm_bay.wave_height_m, Some(0.77));
}

#[test]
fn field_list_is_a_clear_shape_error() {
    let body = std::fs::read(FIELD_LIST).expect("field-list fixture");
    let error = imos::parse(&body).expect_err("a field list is not features");
    let PayloadError::Shape { path, found, .. } = &error else {
        panic!("expected a Shape error, got {error:?}");
    };
    assert_eq!(path, "$");
    assert!(found.contains("field/schema list"), "{found}");
    assert!(found.contains("aodn_wave_nrt_v2_timeseries_map"), "{found}");
    assert!(found.contains("20 column"), "{found}");
    assert!(error.to_string().contains("FeatureCollection"), "{error}");
}

#[test]
fn data_layer_takes_whth_wmxh_and_the_observed_position() {
    let document = map_layer();
    let feature = data_layer_feature(&document);
    let parsed = parse_value(&one_feature_collection(&document, feature));
    assert!(parsed.rejected.is_empty(), "{:#?}", parsed.rejected);
    let observation = find(&parsed, "tathra", "2025-05-05T00:40:00Z");
    assert_eq!(observation.wave_height_m, Some(1.23));
    assert_eq!(observation.wave_height_max_m, Some(2.05));
    assert_eq!(observation.peak_period_s, Some(9.8));
    assert_eq!(observation.mean_period_s, Some(6.1));
    assert_eq!(observation.wave_direction_deg, Some(101.5));
    assert_eq!(observation.lat, Some(-36.7312));
    assert_eq!(observation.lon, Some(150.0021));
    assert_eq!(observation.sea_temp_c, None);
}

#[test]
fn data_layer_spotter_uses_wssh_and_wpfm() {
    let document = map_layer();
    let mut feature = data_layer_feature(&document);
    let properties = &mut feature["properties"];
    properties["WHTH"] = Value::Null;
    properties["WPMH"] = Value::Null;
    properties["WSSH"] = json!(0.88);
    properties["WPFM"] = json!(4.4);
    properties["TEMP"] = json!("17.5");
    let parsed = parse_value(&one_feature_collection(&document, feature));
    let observation = find(&parsed, "tathra", "2025-05-05T00:40:00Z");
    assert_eq!(observation.wave_height_m, Some(0.88));
    assert_eq!(observation.mean_period_s, Some(4.4));
    assert_eq!(observation.sea_temp_c, Some(17.5));
}

#[test]
fn column_names_in_another_case_are_read() {
    let document = map_layer();
    let mut feature = data_layer_feature(&document);
    let properties = feature["properties"].as_object_mut().unwrap();
    let renamed: serde_json::Map<String, Value> = properties
        .iter()
        .map(|(key, value)| (key.to_ascii_lowercase(), value.clone()))
        .collect();
    *properties = renamed;
    let parsed = parse_value(&one_feature_collection(&document, feature));
    let observation = find(&parsed, "tathra", "2025-05-05T00:40:00Z");
    assert_eq!(observation.wave_height_m, Some(1.23));
    assert_eq!(observation.lat, Some(-36.7312));
}

#[test]
fn whth_wins_when_both_heights_are_present() {
    let document = map_layer();
    let mut feature = data_layer_feature(&document);
    feature["properties"]["WSSH"] = json!(0.5);
    let parsed = parse_value(&one_feature_collection(&document, feature));
    assert_eq!(
        find(&parsed, "tathra", "2025-05-05T00:40:00Z").wave_height_m,
        Some(1.23)
    );
}

#[test]
fn mean_direction_is_not_used_as_peak_direction() {
    let document = map_layer();
    let mut feature = data_layer_feature(&document);
    feature["properties"]["WPDI"] = Value::Null;
    let parsed = parse_value(&one_feature_collection(&document, feature));
    let observation = find(&parsed, "tathra", "2025-05-05T00:40:00Z");
    assert_eq!(
        observation.wave_direction_deg, None,
        "SSWMD (77) must not stand in"
    );
}

#[test]
fn zulu_and_offset_times_convert_to_utc() {
    let mut document = map_layer();
    let zulu = feature_index(&document, "Tathra", "2025-05-05T00:40:00");
    let offset = feature_index(&document, "Storm Bay", "2025-05-05T01:15:00");
    let fractional = feature_index(&document, "Robe", "2025-05-05T01:15:00");
    features_mut(&mut document)[zulu]["properties"]["TIME"] = json!("2025-05-05T00:40:00Z");
    features_mut(&mut document)[offset]["properties"]["TIME"] = json!("2025-05-05T11:15:00+10:00");
    features_mut(&mut document)[fractional]["properties"]["TIME"] =
        json!("2025-05-05T01:15:00.500");
    let parsed = parse_value(&document);
    // A fraction of a second would key a second row for the same second: refused, by name.
    assert_eq!(parsed.rejected.len(), 1, "{:#?}", parsed.rejected);
    assert_eq!(parsed.rejected[0].reason, "sub_second_time");
    assert_eq!(
        parsed.rejected[0].location,
        format!("features[{fractional}]")
    );
    assert_eq!(
        find(&parsed, "tathra", "2025-05-05T00:40:00Z").wave_height_m,
        Some(0.968)
    );
    let storm_bay = find(&parsed, "storm-bay", "2025-05-05T01:15:00Z");
    assert_eq!(storm_bay.wave_direction_deg, Some(29.562));
    assert!(!parsed.observations.iter().any(|o| o.site == "robe"
        && o.observed_at >= utc("2025-05-05T01:15:00Z")
        && o.observed_at < utc("2025-05-05T01:15:01Z")));
    assert!(!parsed
        .observations
        .iter()
        .any(|o| o.site == "storm-bay" && o.observed_at == utc("2025-05-05T11:15:00Z")));
}

#[test]
fn qc_flag_4_as_string_is_rejected_as_bad_quality() {
    let document = map_layer();
    let mut bad = data_layer_feature(&document);
    bad["properties"]["WAVE_quality_control"] = json!("4");
    let mut bad_number = data_layer_feature(&document);
    bad_number["properties"]["WAVE_quality_control"] = json!(4);
    bad_number["properties"]["TIME"] = json!("2025-05-05T01:40:00");
    let mut questionable = data_layer_feature(&document);
    questionable["properties"]["WAVE_quality_control"] = json!(" 3 ");
    questionable["properties"]["TIME"] = json!("2025-05-05T02:40:00");
    let mut collection = document.clone();
    *features_mut(&mut collection) = vec![bad, bad_number, questionable];
    let parsed = parse_value(&collection);
    let rejected: Vec<(&str, &str)> = parsed
        .rejected
        .iter()
        .map(|record| (record.location.as_str(), record.reason))
        .collect();
    assert_eq!(
        rejected,
        [
            ("features[0]", "bad_quality"),
            ("features[1]", "bad_quality")
        ]
    );
    assert!(
        parsed.rejected[0].detail.contains("tathra"),
        "{}",
        parsed.rejected[0]
    );
    assert_eq!(parsed.observations.len(), 1);
    assert_eq!(
        parsed.observations[0].observed_at,
        utc("2025-05-05T02:40:00Z")
    );
}

#[test]
fn garbage_time_rejects_only_that_feature() {
    let mut document = map_layer();
    let total = features(&document).len();
    let index = feature_index(&document, "Wooli", "2025-05-05T00:55:00");
    features_mut(&mut document)[index]["properties"]["TIME"] = json!("garbage");
    let parsed = parse_value(&document);
    assert_eq!(parsed.rejected.len(), 1, "{:#?}", parsed.rejected);
    let rejected = &parsed.rejected[0];
    assert_eq!(rejected.location, format!("features[{index}]"));
    assert_eq!(rejected.reason, "bad_time");
    assert!(rejected.detail.contains("garbage"), "{rejected}");
    assert_eq!(parsed.observations.len(), total - 1);
    assert!(!parsed.observations.iter().any(|o| o.site == "wooli"));
}

#[test]
fn missing_site_or_time_is_rejected_with_its_index() {
    let mut document = map_layer();
    features_mut(&mut document)[2]["properties"]
        .as_object_mut()
        .unwrap()
        .remove("site_name");
    features_mut(&mut document)[5]["properties"]["TIME"] = Value::Null;
    features_mut(&mut document)[7]["properties"]["site_name"] = json!(42);
    let parsed = parse_value(&document);
    let rejected: Vec<(&str, &str)> = parsed
        .rejected
        .iter()
        .map(|record| (record.location.as_str(), record.reason))
        .collect();
    assert_eq!(
        rejected,
        [
            ("features[2]", "missing_field"),
            ("features[5]", "missing_field"),
            ("features[7]", "wrong_type")
        ]
    );
    assert_eq!(parsed.observations.len(), features(&document).len() - 3);
}

#[test]
fn a_wrongly_typed_value_rejects_its_feature() {
    let mut document = map_layer();
    features_mut(&mut document)[1]["properties"]["peak_wave_period"] = json!(true);
    features_mut(&mut document)[3]["properties"]["significant_wave_height"] = json!(45.0);
    let parsed = parse_value(&document);
    let rejected: Vec<(&str, &str)> = parsed
        .rejected
        .iter()
        .map(|record| (record.location.as_str(), record.reason))
        .collect();
    assert_eq!(
        rejected,
        [
            ("features[1]", "wrong_type"),
            ("features[3]", "out_of_range")
        ]
    );
    assert!(parsed.rejected[0].detail.contains("peak_wave_period"));
}

#[test]
fn truncated_body_is_a_json_error() {
    let body = map_layer_bytes();
    let error = imos::parse(&body[..body.len() / 2]).expect_err("half a document");
    assert!(matches!(error, PayloadError::Json { .. }), "{error:?}");
    assert!(error.to_string().contains("truncated"), "{error}");
}

#[test]
fn wfs_members_are_accepted_and_ignored() {
    let mut document = map_layer();
    document["totalFeatures"] = json!(37);
    document["numberMatched"] = json!(37);
    document["numberReturned"] = json!(37);
    document["timeStamp"] = json!("2025-05-05T02:00:00.000Z");
    for (index, feature) in features_mut(&mut document).iter_mut().enumerate() {
        feature["id"] = json!(format!("aodn_wave_nrt_v2_timeseries_map.fid-{index}"));
        feature["geometry_name"] = json!("geom");
    }
    let plain = imos::parse(&map_layer_bytes()).expect("parses");
    let wfs = parse_value(&document);
    assert_eq!(wfs, plain);
}

#[test]
fn position_falls_back_to_latitude_min_without_geometry() {
    let mut document = map_layer();
    let index = feature_index(&document, "Tathra", "2025-05-05T00:40:00");
    features_mut(&mut document)[index]["geometry"] = Value::Null;
    let parsed = parse_value(&document);
    let tathra = find(&parsed, "tathra", "2025-05-05T00:40:00Z");
    assert_eq!(tathra.lat, Some(-36.7368));
    assert_eq!(tathra.lon, Some(149.8535));
}

#[test]
fn geometry_axis_order_follows_the_crs() {
    let mut document = map_layer();
    // What GeoServer writes for WFS 1.1/2.0 in EPSG:4326: [lat, lon].
    document["crs"]["properties"]["name"] = json!("urn:ogc:def:crs:EPSG::4326");
    for feature in features_mut(&mut document) {
        let coordinates = feature["geometry"]["coordinates"].as_array_mut().unwrap();
        coordinates.swap(0, 1);
    }
    let swapped = parse_value(&document);
    let tathra = find(&swapped, "tathra", "2025-05-05T00:40:00Z");
    assert_eq!(tathra.lat, Some(-36.61736916666667));
    assert_eq!(tathra.lon, Some(150.01049166666667));
    assert_eq!(swapped, imos::parse(&map_layer_bytes()).expect("parses"));

    // A projected CRS: the geometry is not degrees, latitude_min/longitude_min are used.
    document["crs"]["properties"]["name"] = json!("urn:ogc:def:crs:EPSG::3857");
    let projected = parse_value(&document);
    let tathra = find(&projected, "tathra", "2025-05-05T00:40:00Z");
    assert_eq!(tathra.lat, Some(-36.7368));
    assert_eq!(tathra.lon, Some(149.8535));
}

#[test]
fn documents_that_are_not_feature_collections_are_shape_errors() {
    let document = map_layer();
    let cases = [
        json!({"type": "Feature", "properties": {}, "geometry": null}),
        json!({"type": "FeatureCollection", "name": "wave_buoys"}),
        json!({"type": "FeatureCollection", "features": {"0": {}}}),
        json!(features(&document).clone()),
        json!("FeatureCollection"),
    ];
    for case in cases {
        let error = imos::parse(&serde_json::to_vec(&case).unwrap()).expect_err("not features");
        assert!(
            matches!(error, PayloadError::Shape { .. }),
            "{case}: {error:?}"
        );
    }
}

#[test]
fn a_single_feature_is_refused_by_its_type() {
    let document = map_layer();
    let mut feature = features(&document)[0].clone();
    // Even with a features member, a "Feature" is not a collection.
    feature["features"] = json!([]);
    let error = imos::parse(&serde_json::to_vec(&feature).unwrap()).expect_err("a Feature");
    let PayloadError::Shape { path, found, .. } = &error else {
        panic!("expected Shape, got {error:?}");
    };
    assert_eq!(path, "$.type");
    assert!(found.contains("Feature"), "{found}");
}

#[test]
fn geoserver_exception_report_is_an_upstream_error() {
    let body = br#"{"version":"1.1.0","exceptions":[{"code":"InvalidParameterValue","locator":"typeName","text":"Feature type aodn:nope unknown"}]}"#;
    let error = imos::parse(body).expect_err("exception report");
    assert_eq!(
        error,
        PayloadError::Upstream {
            message: "InvalidParameterValue: Feature type aodn:nope unknown".to_owned()
        }
    );
}

#[test]
fn empty_feature_collection_is_an_empty_result() {
    let parsed = imos::parse(br#"{"type":"FeatureCollection","features":[],"totalFeatures":0}"#)
        .expect("parses");
    assert!(parsed.observations.is_empty());
    assert!(parsed.rejected.is_empty());
}
