//! Simulated AODN GeoServer WFS: `GetFeature` on the real-time wave map layer
//! `aodn:aodn_wave_nrt_v2_timeseries_map`, as GeoJSON (`docs/formats.md` §3).
//!
//! The body has the shape of a live GeoServer GeoJSON answer (`totalFeatures`, a feature `id`,
//! `geometry_name`) around features whose `properties` carry exactly the columns of the genuine
//! export in `fixtures/imos/` (including its `FID`): `TIME` without a zone designator, the
//! derived `significant_wave_height`/`wave_mean_period`/`peak_wave_period`/
//! `peak_wave_direction`, and the site's metadata geometry as `[lon, lat]` under the `CRS84`
//! name, so the axis order is unambiguous.
//!
//! Each built-in buoy reports every 30 minutes on its own fixed grid (Tathra at :10 and :40,
//! Port Kembla at :00 and :30...). A response holds the observations of the last 24 hours
//! (48 per site) newest first, like the view's `ORDER BY TIME DESC`. The "SOFAR Smart
//! Mooring-V3" buoy (Cable Beach) has `significant_wave_height` and `wave_mean_period` null,
//! as the real ones do. A `CQL_FILTER=site_name='…'` naming no built-in buoy gives an empty
//! collection, as GeoServer would.
//!
//! Not verified against AODN: the institution, instrument, URL and position of Port Kembla
//! (an MHL buoy absent from the sample) and the file URL layout of the BOM buoy (Cape Sorell);
//! the other buoys use the sample's metadata.

use std::fmt::Write as _;

use axum::http::StatusCode;
use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use serde::Serialize;

use super::{cycle, epoch_seconds, latest_grid_point, phase, round_to, to_json, Answer, DAY, HOUR};

/// The layer served, as the pollers name it in `typeName`.
pub const LAYER: &str = "aodn:aodn_wave_nrt_v2_timeseries_map";

/// Seconds between two observations of a buoy.
pub const STEP_SECONDS: i64 = 1800;

/// Observations per site in one response: 24 hours at 30-minute steps.
pub const OBSERVATIONS_PER_SITE: usize = 48;

/// The format of `TIME`, `time_start` and `time_end`: UTC without a zone designator.
const TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%S";

/// One simulated wave buoy and its layer metadata.
#[derive(Debug, Clone, Copy)]
pub struct Buoy {
    /// `site_name`, as the pollers filter on it.
    pub site_name: &'static str,
    /// `institution` and `institut_for_filter`.
    pub institution: &'static str,
    /// `instrument`; "SOFAR Smart Mooring-V3" rows carry no height or mean period.
    pub instrument: &'static str,
    /// Folder of the monthly files under AODN's data root.
    url_folder: &'static str,
    /// File-name prefix of the monthly files.
    file_prefix: &'static str,
    /// Metadata geometry, `[lon, lat]`.
    pub position: [f64; 2],
    /// `latitude_min`, `longitude_min`: the deployment file's south-west corner.
    bounding_min: [f64; 2],
    /// `time_start` of the deployment.
    time_start: &'static str,
    /// Seconds after each half hour at which the buoy reports.
    pub slot_offset_seconds: i64,
    /// Mean direction the swell comes from, degrees true.
    swell_from_deg: f64,
    /// Scale of the wave heights (sheltered < 1 < exposed).
    exposure: f64,
    /// Whether the layer gives a significant height and mean period for this instrument.
    pub reports_height: bool,
}

/// The built-in buoys, served when no `CQL_FILTER` is given.
pub const BUOYS: [Buoy; 6] = [
    Buoy {
        site_name: "Tathra",
        institution: "IMOS Coastal Wave Buoys",
        instrument: "SOFAR Spotter-V3",
        url_folder: "IMOS/COASTAL-WAVE-BUOYS/WAVE-BUOYS/REALTIME/WAVE-PARAMETERS",
        file_prefix: "IMOS_COASTAL-WAVE-BUOYS",
        position: [150.010_491_666_666_67, -36.61736916666667],
        bounding_min: [-36.7368, 149.8535],
        time_start: "2024-12-08T16:50:00",
        slot_offset_seconds: 600,
        swell_from_deg: 145.0,
        exposure: 0.85,
        reports_height: true,
    },
    Buoy {
        site_name: "Port Kembla",
        institution: "Manly Hydraulics Laboratory",
        instrument: "Datawell DWR MkIII",
        url_folder: "Department_of_Planning_and_Environment-New_South_Wales/Manly_Hydraulics_Laboratory/WAVE-BUOYS/REALTIME/WAVE-PARAMETERS",
        file_prefix: "NSW-DPE-MHL",
        position: [151.0167, -34.4667],
        bounding_min: [-34.4667, 151.0167],
        time_start: "2023-03-01T00:00:00",
        slot_offset_seconds: 0,
        swell_from_deg: 160.0,
        exposure: 1.0,
        reports_height: true,
    },
    Buoy {
        site_name: "Wooli",
        institution: "IMOS Coastal Wave Buoys",
        instrument: "SOFAR Spotter-V3",
        url_folder: "IMOS/COASTAL-WAVE-BUOYS/WAVE-BUOYS/REALTIME/WAVE-PARAMETERS",
        file_prefix: "IMOS_COASTAL-WAVE-BUOYS",
        position: [153.167425, -30.20148314814815],
        bounding_min: [-33.8847, 151.0428],
        time_start: "2023-02-20T11:39:49",
        slot_offset_seconds: 1500,
        swell_from_deg: 120.0,
        exposure: 0.95,
        reports_height: true,
    },
    Buoy {
        site_name: "Cape Sorell",
        institution: "Bureau Of Meteorology",
        instrument: "Triaxys",
        url_folder: "BOM/WAVE-BUOYS/REALTIME/WAVE-PARAMETERS",
        file_prefix: "BOM",
        position: [145.05, -42.2],
        bounding_min: [-42.2, 145.05],
        time_start: "2022-11-05T16:30:00",
        slot_offset_seconds: 0,
        swell_from_deg: 250.0,
        exposure: 1.4,
        reports_height: true,
    },
    Buoy {
        site_name: "Storm Bay",
        institution: "IMOS Coastal Wave Buoys",
        instrument: "SOFAR Spotter-V3",
        url_folder: "IMOS/COASTAL-WAVE-BUOYS/WAVE-BUOYS/REALTIME/WAVE-PARAMETERS",
        file_prefix: "IMOS_COASTAL-WAVE-BUOYS",
        position: [147.423_162_5, -43.131705],
        bounding_min: [-43.1926, 147.35],
        time_start: "2025-04-06T12:40:00",
        slot_offset_seconds: 900,
        swell_from_deg: 170.0,
        exposure: 0.55,
        reports_height: true,
    },
    Buoy {
        site_name: "Cable Beach",
        institution: "University of Western Australia",
        instrument: "SOFAR Smart Mooring-V3",
        url_folder: "UWA/WAVE-BUOYS/REALTIME/WAVE-PARAMETERS",
        file_prefix: "UWA",
        position: [122.133318, -17.900914],
        bounding_min: [-17.9015, 122.1328],
        time_start: "2024-12-31T13:10:00",
        slot_offset_seconds: 900,
        swell_from_deg: 260.0,
        exposure: 0.6,
        reports_height: false,
    },
];

/// The built-in buoy named `site_name` exactly (as a CQL equality would match).
pub fn buoy(site_name: &str) -> Option<&'static Buoy> {
    BUOYS.iter().find(|buoy| buoy.site_name == site_name)
}

/// The observation times of `buoy` in a response at `now`: the last 24 hours, newest first.
pub fn observation_times(buoy: &Buoy, now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let newest = latest_grid_point(now, STEP_SECONDS, buoy.slot_offset_seconds);
    (0..OBSERVATIONS_PER_SITE)
        .map(|step| newest - Duration::seconds(STEP_SECONDS * step as i64))
        .collect()
}

/// What a buoy measured at one instant, as the map layer reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WaveValues {
    /// `significant_wave_height`, m (null for Smart Moorings).
    pub significant_wave_height: Option<f64>,
    /// `wave_mean_period`, s (null for Smart Moorings).
    pub wave_mean_period: Option<f64>,
    /// `peak_wave_period`, s.
    pub peak_wave_period: f64,
    /// `peak_wave_direction`, degrees true, where the waves come from.
    pub peak_wave_direction: f64,
}

/// The values of `buoy` at `at`: a pure function of the site and the time.
///
/// A slow swell cycle (4.3 days) drives height and peak period together, a 1.7-day wind sea
/// adds to the height and shortens the mean period's share, and the direction swings ±31°
/// around the site's usual swell direction. Ranges: heights 0.3–4 m, periods 4–16 s.
pub fn values(buoy: &Buoy, at: DateTime<Utc>) -> WaveValues {
    let name = buoy.site_name;
    let seconds = epoch_seconds(at);
    let swell = 0.5 + 0.5 * cycle(seconds, 4.3 * DAY, phase(name, "swell"));
    // The period peaks a little before the height, as a swell's long-period forerunners do.
    let swell_period = 0.5 + 0.5 * cycle(seconds, 4.3 * DAY, phase(name, "swell") + 0.6);
    let sea = 0.5 + 0.5 * cycle(seconds, 1.7 * DAY, phase(name, "sea"));
    let ripple = cycle(seconds, 2.5 * HOUR, phase(name, "ripple"));

    let height =
        ((0.45 + 1.9 * swell + 0.35 * sea + 0.06 * ripple) * buoy.exposure).clamp(0.3, 4.0);
    let peak = (6.0 + 8.5 * swell_period + 0.8 * cycle(seconds, 9.0 * HOUR, phase(name, "peak")))
        .clamp(4.0, 16.0);
    let mean = (0.55 * peak + 0.9 + 1.2 * (1.0 - sea)).clamp(4.0, 16.0);
    let mut direction = round_to(
        (buoy.swell_from_deg
            + 25.0 * cycle(seconds, 3.1 * DAY, phase(name, "direction"))
            + 6.0 * cycle(seconds, 5.0 * HOUR, phase(name, "veer")))
        .rem_euclid(360.0),
        3,
    );
    if direction >= 360.0 {
        direction -= 360.0;
    }
    WaveValues {
        significant_wave_height: buoy.reports_height.then(|| round_to(height, 3)),
        wave_mean_period: buoy.reports_height.then(|| round_to(mean, 3)),
        peak_wave_period: round_to(peak, 3),
        peak_wave_direction: direction,
    }
}

/// Answers a WFS request with query `params` at `now`.
///
/// Accepts `service=WFS`, `request=GetFeature`, `typeName` (or `typeNames`) of [`LAYER`] (with
/// or without the `aodn:` workspace), `outputFormat=application/json`, an optional
/// `CQL_FILTER=site_name='…'` and `maxFeatures`/`count`; parameter names are
/// case-insensitive as in GeoServer. Anything else is a `400` OGC exception report (XML, like
/// GeoServer's; GeoServer itself answers `200` for WFS 1.0 exceptions).
pub fn get_feature(params: &[(String, String)], now: DateTime<Utc>) -> Answer {
    let param = |name: &str| {
        params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim())
    };
    if let Some(service) = param("service") {
        if !service.eq_ignore_ascii_case("WFS") {
            return exception(
                "InvalidParameterValue",
                "service",
                &format!("No service: ( {service} )"),
            );
        }
    }
    match param("request") {
        Some(request) if request.eq_ignore_ascii_case("GetFeature") => {}
        Some(request) => {
            return exception(
                "OperationNotSupported",
                "request",
                &format!("edge-sim serves GetFeature only, not {request}"),
            )
        }
        None => {
            return exception(
                "MissingParameterValue",
                "request",
                "Could not determine request",
            )
        }
    }
    let type_name = param("typeName").or_else(|| param("typeNames"));
    match type_name {
        Some(name) if name == LAYER || Some(name) == LAYER.strip_prefix("aodn:") => {}
        Some(name) => {
            return exception(
                "InvalidParameterValue",
                "typeName",
                &format!("Feature type {name} unknown"),
            )
        }
        None => {
            return exception(
                "MissingParameterValue",
                "typeName",
                "The query should specify either typeName, featureId filter",
            )
        }
    }
    match param("outputFormat") {
        Some(format)
            if format.eq_ignore_ascii_case("application/json")
                || format.eq_ignore_ascii_case("json") => {}
        other => {
            return exception(
                "InvalidParameterValue",
                "outputFormat",
                &format!(
                    "edge-sim serves outputFormat=application/json only, not {}",
                    other.unwrap_or("GML (the default)")
                ),
            )
        }
    }
    let limit = match param("maxFeatures").or_else(|| param("count")) {
        None => usize::MAX,
        Some(text) => match text.parse::<usize>() {
            Ok(limit) => limit,
            Err(_) => {
                return exception(
                    "InvalidParameterValue",
                    "maxFeatures",
                    &format!("maxFeatures {text:?} is not a number"),
                )
            }
        },
    };
    let buoys: Vec<&Buoy> = match param("CQL_FILTER") {
        None => BUOYS.iter().collect(),
        Some(cql) => match site_filter(cql) {
            Some(site_name) => buoy(&site_name).into_iter().collect(),
            None => {
                return exception(
                    "InvalidParameterValue",
                    "CQL_FILTER",
                    &format!("edge-sim understands only site_name='…' filters, not {cql}"),
                )
            }
        },
    };
    to_json(&feature_collection(&buoys, now, limit))
}

/// The site name of a `site_name='…'` CQL filter (a quote inside doubled), or `None`.
pub fn site_filter(cql: &str) -> Option<String> {
    let literal = cql
        .trim()
        .strip_prefix("site_name")?
        .trim_start()
        .strip_prefix('=')?
        .trim()
        .strip_prefix('\'')?
        .strip_suffix('\'')?;
    let mut site = String::with_capacity(literal.len());
    let mut characters = literal.chars();
    while let Some(character) = characters.next() {
        if character == '\'' && characters.next() != Some('\'') {
            return None;
        }
        site.push(character);
    }
    Some(site)
}

fn exception(code: &str, locator: &str, message: &str) -> Answer {
    let mut body = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ServiceExceptionReport version=\"1.2.0\" \
         xmlns=\"http://www.opengis.net/ogc\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
         xsi:schemaLocation=\"http://www.opengis.net/ogc http://schemas.opengis.net/wfs/1.0.0/OGC-exception.xsd\">\n",
    );
    let _ = write!(
        body,
        "  <ServiceException code=\"{code}\" locator=\"{locator}\">\n      {}\n</ServiceException></ServiceExceptionReport>\n",
        xml_escape(message)
    );
    Answer {
        status: StatusCode::BAD_REQUEST,
        content_type: "application/vnd.ogc.se_xml;charset=UTF-8",
        body: body.into_bytes(),
    }
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[derive(Serialize)]
struct FeatureCollection {
    #[serde(rename = "type")]
    kind: &'static str,
    features: Vec<Feature>,
    #[serde(rename = "totalFeatures")]
    total_features: usize,
    #[serde(rename = "numberMatched")]
    number_matched: usize,
    #[serde(rename = "numberReturned")]
    number_returned: usize,
    crs: Crs,
}

#[derive(Serialize)]
struct Crs {
    #[serde(rename = "type")]
    kind: &'static str,
    properties: CrsName,
}

#[derive(Serialize)]
struct CrsName {
    name: &'static str,
}

#[derive(Serialize)]
struct Feature {
    #[serde(rename = "type")]
    kind: &'static str,
    id: String,
    geometry: Point,
    geometry_name: &'static str,
    properties: Properties,
}

#[derive(Serialize)]
struct Point {
    #[serde(rename = "type")]
    kind: &'static str,
    coordinates: [f64; 2],
}

/// The columns of the map layer, in the order of the genuine export.
#[derive(Serialize)]
struct Properties {
    #[serde(rename = "FID")]
    fid: String,
    file_id: i64,
    url: String,
    size: i64,
    institution: &'static str,
    institut_for_filter: &'static str,
    site_name: &'static str,
    instrument: &'static str,
    wave_buoy_type: &'static str,
    platform: &'static str,
    water_depth: Option<f64>,
    time_start: &'static str,
    time_end: String,
    latitude_min: f64,
    longitude_min: f64,
    #[serde(rename = "TIME")]
    time: String,
    significant_wave_height: Option<f64>,
    wave_mean_period: Option<f64>,
    peak_wave_direction: f64,
    peak_wave_period: f64,
}

fn feature_collection(buoys: &[&Buoy], now: DateTime<Utc>, limit: usize) -> FeatureCollection {
    let mut rows: Vec<(DateTime<Utc>, usize, &Buoy)> = Vec::new();
    for buoy in buoys {
        let index = BUOYS
            .iter()
            .position(|known| known.site_name == buoy.site_name)
            .unwrap_or(0);
        rows.extend(
            observation_times(buoy, now)
                .into_iter()
                .map(|time| (time, index, *buoy)),
        );
    }
    // ORDER BY TIME DESC, then by site for a stable order among equal times.
    rows.sort_by(|a, b| b.0.cmp(&a.0).then(a.2.site_name.cmp(b.2.site_name)));
    let total = rows.len();
    let features: Vec<Feature> = rows
        .into_iter()
        .take(limit)
        .map(|(time, index, buoy)| feature(buoy, index, time, now))
        .collect();
    FeatureCollection {
        kind: "FeatureCollection",
        total_features: total,
        number_matched: total,
        number_returned: features.len(),
        features,
        crs: Crs {
            kind: "name",
            properties: CrsName {
                name: "urn:ogc:def:crs:OGC:1.3:CRS84",
            },
        },
    }
}

fn feature(buoy: &Buoy, index: usize, time: DateTime<Utc>, now: DateTime<Utc>) -> Feature {
    let values = values(buoy, time);
    let newest = latest_grid_point(now, STEP_SECONDS, buoy.slot_offset_seconds);
    let month_start = Utc
        .with_ymd_and_hms(time.year(), time.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(time);
    let months_since_2000 = i64::from(time.year() - 2000) * 12 + i64::from(time.month0());
    let file_name = buoy.site_name.to_uppercase().replace(' ', "-");
    // The monthly file grows by one record per observation up to the newest one served.
    let (next_year, next_month) = if time.month() == 12 {
        (time.year() + 1, 1)
    } else {
        (time.year(), time.month() + 1)
    };
    let month_end = Utc
        .with_ymd_and_hms(next_year, next_month, 1, 0, 0, 0)
        .single()
        .map_or(time, |next| next - Duration::seconds(1));
    let file_end = newest.min(month_end);
    let records_in_file = (file_end - month_start).num_seconds() / STEP_SECONDS + 1;
    let fid = format!(
        "aodn_wave_nrt_v2_timeseries_map.fid-{:08x}_{:x}",
        super::stable_hash(&[buoy.site_name]) as u32,
        time.timestamp()
    );
    Feature {
        kind: "Feature",
        id: fid.clone(),
        geometry: Point {
            kind: "Point",
            coordinates: buoy.position,
        },
        geometry_name: "geom",
        properties: Properties {
            fid,
            file_id: 27_000 + months_since_2000 * 40 + index as i64,
            url: format!(
                "{}/{file_name}/{}/{}_{}_{file_name}_RT_WAVE-PARAMETERS_monthly.nc",
                buoy.url_folder,
                time.year(),
                buoy.file_prefix,
                month_start.format("%Y%m%d"),
            ),
            size: 9_000 + 38 * records_in_file.max(1),
            institution: buoy.institution,
            institut_for_filter: buoy.institution,
            site_name: buoy.site_name,
            instrument: buoy.instrument,
            wave_buoy_type: "directional",
            platform: "moored surface buoy",
            water_depth: None,
            time_start: buoy.time_start,
            time_end: newest.format(TIME_FORMAT).to_string(),
            latitude_min: buoy.bounding_min[0],
            longitude_min: buoy.bounding_min[1],
            time: time.format(TIME_FORMAT).to_string(),
            significant_wave_height: values.significant_wave_height,
            wave_mean_period: values.wave_mean_period,
            peak_wave_direction: values.peak_wave_direction,
            peak_wave_period: values.peak_wave_period,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use schema::WaveObservation;

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("a test time")
            .with_timezone(&Utc)
    }

    fn query(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect()
    }

    fn request(site: Option<&str>) -> Vec<(String, String)> {
        let filter = site.map(|site| format!("site_name='{}'", site.replace('\'', "''")));
        let mut pairs = query(&[
            ("service", "WFS"),
            ("version", "1.0.0"),
            ("request", "GetFeature"),
            ("typeName", LAYER),
            ("outputFormat", "application/json"),
        ]);
        if let Some(filter) = filter {
            pairs.push(("CQL_FILTER".to_owned(), filter));
        }
        pairs
    }

    fn parse(answer: &Answer) -> Vec<WaveObservation> {
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        let parsed = feeds::imos::parse(&answer.body).expect("the real parser reads it");
        assert!(
            parsed.rejected.is_empty(),
            "rejected: {:?}",
            parsed.rejected
        );
        assert_eq!(parsed.duplicates, 0);
        parsed.observations
    }

    fn by_key(
        observations: &[WaveObservation],
    ) -> BTreeMap<(String, DateTime<Utc>), WaveObservation> {
        observations
            .iter()
            .map(|observation| {
                (
                    (observation.site.clone(), observation.observed_at),
                    observation.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn unfiltered_layer_parses_with_plausible_values_for_every_buoy() {
        let now = at("2025-05-05T01:44:59Z");
        let observations = parse(&get_feature(&request(None), now));
        assert_eq!(observations.len(), BUOYS.len() * OBSERVATIONS_PER_SITE);
        for observation in &observations {
            assert!(observation.observed_at <= now);
            assert!(observation.observed_at > now - Duration::hours(24));
            let period = observation.peak_period_s.expect("peak period");
            assert!((4.0..=16.0).contains(&period), "{observation:?}");
            let direction = observation.wave_direction_deg.expect("direction");
            assert!((0.0..360.0).contains(&direction), "{observation:?}");
            assert!(observation.lat.is_some() && observation.lon.is_some());
            assert_eq!(observation.sea_temp_c, None, "the map layer has no TEMP");
            if observation.site == "cable-beach" {
                assert_eq!(observation.wave_height_m, None, "Smart Mooring: no height");
                assert_eq!(observation.mean_period_s, None);
            } else {
                let height = observation.wave_height_m.expect("height");
                assert!((0.3..=4.0).contains(&height), "{observation:?}");
                let mean = observation.mean_period_s.expect("mean period");
                assert!((4.0..=16.0).contains(&mean), "{observation:?}");
            }
        }
        let tathra: Vec<_> = observations
            .iter()
            .filter(|observation| observation.site == "tathra")
            .collect();
        assert_eq!(tathra.len(), OBSERVATIONS_PER_SITE);
        assert_eq!(
            tathra[0].observed_at,
            at("2025-05-05T01:40:00Z"),
            "Tathra reports at :10/:40"
        );
        let position = (tathra[0].lat.expect("lat"), tathra[0].lon.expect("lon"));
        assert!((position.0 + 36.617).abs() < 0.01 && (position.1 - 150.01).abs() < 0.01);
    }

    #[test]
    fn body_looks_like_the_layer_newest_first_without_zone() {
        let now = at("2025-05-05T01:44:59Z");
        let answer = get_feature(&request(Some("Tathra")), now);
        let document: serde_json::Value = serde_json::from_slice(&answer.body).expect("json");
        let features = document["features"].as_array().expect("features");
        assert_eq!(features.len(), OBSERVATIONS_PER_SITE);
        assert_eq!(document["totalFeatures"], 48);
        let first = &features[0]["properties"];
        assert_eq!(first["TIME"], "2025-05-05T01:40:00");
        assert_eq!(first["time_end"], "2025-05-05T01:40:00");
        assert_eq!(features[1]["properties"]["TIME"], "2025-05-05T01:10:00");
        assert_eq!(first["site_name"], "Tathra");
        let fixture = include_str!(
            "../../../fixtures/imos/aodn_wave_nrt_v2_timeseries_map_2025-05-05_features14-50.geojson"
        );
        let fixture: serde_json::Value = serde_json::from_str(fixture).expect("fixture");
        let expected: Vec<&String> = fixture["features"][0]["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .collect();
        let served: Vec<&String> = first.as_object().expect("properties").keys().collect();
        assert_eq!(served, expected, "the same columns as the genuine layer");
        let coordinates = &features[0]["geometry"]["coordinates"];
        assert!(coordinates[0].as_f64().expect("lon") > 150.0, "[lon, lat]");
    }

    #[test]
    fn same_instant_gives_the_same_bytes_and_later_keeps_old_values() {
        let now = at("2025-05-05T01:44:59Z");
        let first = get_feature(&request(Some("Port Kembla")), now);
        let again = get_feature(&request(Some("Port Kembla")), now);
        assert_eq!(first, again, "byte-identical at the same instant");
        // Within the same grid slot the body does not change either (so ETags hold).
        let same_slot = get_feature(&request(Some("Port Kembla")), now - Duration::minutes(10));
        assert_eq!(first, same_slot);

        let later = now + Duration::minutes(31);
        let old = by_key(&parse(&first));
        let new = by_key(&parse(&get_feature(&request(Some("Port Kembla")), later)));
        let added: Vec<_> = new.keys().filter(|key| !old.contains_key(key)).collect();
        assert_eq!(added.len(), 1, "one new half hour: {added:?}");
        assert_eq!(added[0].1, at("2025-05-05T02:00:00Z"));
        let mut shared = 0;
        for (key, observation) in &new {
            if let Some(before) = old.get(key) {
                assert_eq!(before, observation, "values of {key:?} changed");
                shared += 1;
            }
        }
        assert_eq!(shared, OBSERVATIONS_PER_SITE - 1);
        // Values do change over time.
        let heights: std::collections::BTreeSet<u64> = new
            .values()
            .filter_map(|observation| observation.wave_height_m)
            .map(|height| (height * 1000.0) as u64)
            .collect();
        assert!(heights.len() > 10, "heights vary: {heights:?}");
    }

    #[test]
    fn filters_select_one_site_or_none() {
        let now = at("2025-05-05T01:44:59Z");
        let cable = parse(&get_feature(&request(Some("Cable Beach")), now));
        assert_eq!(cable.len(), OBSERVATIONS_PER_SITE);
        assert!(cable
            .iter()
            .all(|observation| observation.site == "cable-beach"));
        let nobody = parse(&get_feature(&request(Some("Nowhere's End")), now));
        assert!(nobody.is_empty());
        assert_eq!(
            site_filter("site_name='Nowhere''s End'").as_deref(),
            Some("Nowhere's End")
        );
        assert_eq!(
            site_filter("site_name = 'Tathra'").as_deref(),
            Some("Tathra")
        );
        assert_eq!(site_filter("site_name='a'b'"), None);
        assert_eq!(site_filter("INTERSECTS(geom, POINT(1 2))"), None);
    }

    #[test]
    fn max_features_limits_and_bad_requests_get_an_exception_report() {
        let now = at("2025-05-05T01:44:59Z");
        let mut limited = request(None);
        limited.push(("maxFeatures".to_owned(), "5".to_owned()));
        assert_eq!(parse(&get_feature(&limited, now)).len(), 5);

        let mut other_layer = request(None);
        other_layer[3].1 = "aodn:something_else".to_owned();
        let refused = get_feature(&other_layer, now);
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        let text = String::from_utf8_lossy(&refused.body);
        assert!(
            text.contains("Feature type aodn:something_else unknown"),
            "{text}"
        );

        let gml = get_feature(&request(None)[..4], now);
        assert_eq!(gml.status, StatusCode::BAD_REQUEST);
        let unqualified = query(&[
            ("SERVICE", "wfs"),
            ("REQUEST", "getfeature"),
            ("TYPENAME", "aodn_wave_nrt_v2_timeseries_map"),
            ("OUTPUTFORMAT", "application/json"),
        ]);
        assert_eq!(get_feature(&unqualified, now).status, StatusCode::OK);
    }
}
