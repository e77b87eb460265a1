//! AODN GeoServer wave-buoy GeoJSON → [`WaveObservation`].
//!
//! Reads a WFS `GetFeature` answer (`outputFormat=application/json`) or an export of it: a
//! GeoJSON `FeatureCollection` whose feature `properties` are the columns of one of the two
//! real-time layers described in `docs/formats.md` §3.
//!
//! What this parser does about the quirks documented there:
//!
//! - **Two layers, two vocabularies.** The map layer (`aodn_wave_nrt_v2_timeseries_map`) gives
//!   the derived columns `significant_wave_height`, `wave_mean_period`, `peak_wave_period`,
//!   `peak_wave_direction`; the data layer (`aodn_wave_nrt_v2_timeseries_data`) gives the raw
//!   IMOS variables. Both are read from the same code: a raw variable wins over the derived
//!   column when both are present.
//! - **Height family depends on the buoy.** Datawell/Triaxys buoys report the time-domain
//!   `WHTH`, Spotters the spectral `WSSH`; whichever holds a value is taken, `WHTH` first. The
//!   mean period follows the same rule (`WPMH` first, then `WPFM`). Peak direction is `WPDI`
//!   only; the mean direction `SSWMD` is a different quantity and is never substituted.
//! - **Null is not zero.** The map layer leaves `significant_wave_height` null for
//!   "SOFAR Smart Mooring" rows and `peak_wave_direction` null for the Datawell row; those
//!   stay `None`.
//! - **`TIME` has no zone designator** but is UTC. A trailing `Z`, an explicit offset
//!   (converted to UTC) and fractional seconds are accepted too.
//! - **`WAVE_quality_control` may be a string** (`varchar(5)` in the view). A record flagged 4
//!   ("bad", IOC flag scheme) is rejected as `bad_quality`; 1, 2, 3 and 9 are kept.
//! - **Position.** The observation's own `LATITUDE`/`LONGITUDE` (data layer) is preferred. The
//!   map layer has none, so the feature geometry (the deployment's metadata position) comes
//!   next, and `latitude_min`/`longitude_min` only last: in the genuine sample those are the
//!   south-west corner of the deployment file's bounding box, which for several buoys lies
//!   hundreds of kilometres from the site (the buoy was switched on before it was towed out).
//!   A position is always taken as a pair from one source, never mixed. Geometry axis order
//!   follows the collection's `crs`: lon/lat by default and for `CRS84`, lat/lon for
//!   `urn:ogc:def:crs:EPSG::4326` (what GeoServer emits for WFS 1.1/2.0); a projected CRS
//!   makes the geometry unusable as degrees.
//! - **Site names differ in spelling** between AODN products, so the site id is
//!   [`normalize_site`] of `site_name`.
//! - **Time series, not latest-per-site.** Rows repeating a (site, `TIME`) are dropped by
//!   [`Parsed::dedupe`].
//! - **Column-name case.** An exact name wins; otherwise a name differing only in case is used.
//! - **Unknown members** (`totalFeatures`, `numberMatched`, `id`, `geometry_name`, `crs`,
//!   `name`, `FID`...) are ignored and key order is never relied on.
//! - **Wrong documents.** The OGC API field list of the layer (a schema, not observations), a
//!   GeoServer JSON exception report and any non-`FeatureCollection` are whole-payload errors.

use chrono::{DateTime, Utc};
use schema::WaveObservation;
use serde_json::{Map, Value};

use crate::parsed::{json_type, json_value};
use crate::units::{self, NumberField};
use crate::{normalize_site, Parsed, PayloadError};

/// The `source` of every event parsed from an AODN wave-buoy payload.
pub const SOURCE: &str = "imos-aodn";

/// IOC quality flag for "bad data".
const QC_BAD: f64 = 4.0;

/// Parses an AODN wave-buoy GeoJSON `FeatureCollection` (map or data layer).
///
/// Each feature becomes one [`WaveObservation`], or one rejected record (location
/// `features[i]`) when its `site_name` or `TIME` is missing or unreadable, a value has the
/// wrong type, its quality flag is 4 ("bad"), or a value is out of physical range.
///
/// # Errors
///
/// - [`PayloadError::Json`] when the body is not JSON (truncated, HTML or XML page);
/// - [`PayloadError::Upstream`] for a GeoServer JSON exception report;
/// - [`PayloadError::Shape`] when the document is not a `FeatureCollection` with a `features`
///   array (including the layer's field list, which describes columns rather than features).
pub fn parse(body: &[u8]) -> Result<Parsed<WaveObservation>, PayloadError> {
    let document = json_value(body)?;
    let features = features(&document)?;
    let axes = Axes::of(&document);
    let mut parsed = Parsed::new(SOURCE);
    for (index, feature) in features.iter().enumerate() {
        let location = format!("features[{index}]");
        match read_feature(feature, axes) {
            Ok(observation) => parsed.push(location, observation),
            Err(rejection) => parsed.reject(location, rejection.reason, rejection.detail),
        }
    }
    Ok(parsed.dedupe())
}

/// Finds the `features` array, or explains what the document is instead.
fn features(document: &Value) -> Result<&Vec<Value>, PayloadError> {
    const EXPECTED: &str = "a GeoJSON FeatureCollection of wave-buoy observations";
    let object = match document {
        Value::Object(object) => object,
        Value::Array(items) if items.iter().any(is_field_list) => {
            return Err(PayloadError::Shape {
                path: "$".to_owned(),
                expected: EXPECTED,
                found: field_list_description(items),
            })
        }
        other => {
            return Err(PayloadError::Shape {
                path: "$".to_owned(),
                expected: EXPECTED,
                found: json_type(other),
            })
        }
    };
    if let Some(message) = exception_report(object) {
        return Err(PayloadError::Upstream { message });
    }
    if is_field_list_object(object) {
        return Err(PayloadError::Shape {
            path: "$".to_owned(),
            expected: EXPECTED,
            found: field_list_description(std::slice::from_ref(document)),
        });
    }
    match object.get("type") {
        None => {}
        Some(Value::String(kind)) if kind == "FeatureCollection" => {}
        Some(Value::String(kind)) => {
            return Err(PayloadError::Shape {
                path: "$.type".to_owned(),
                expected: "\"FeatureCollection\"",
                found: format!("a GeoJSON {kind:?}"),
            })
        }
        Some(other) => {
            return Err(PayloadError::Shape {
                path: "$.type".to_owned(),
                expected: "\"FeatureCollection\"",
                found: json_type(other),
            })
        }
    }
    match object.get("features") {
        Some(Value::Array(features)) => Ok(features),
        Some(other) => Err(PayloadError::Shape {
            path: "$.features".to_owned(),
            expected: "an array of GeoJSON features",
            found: json_type(other),
        }),
        None => Err(PayloadError::Shape {
            path: "$".to_owned(),
            expected: EXPECTED,
            found: format!("an object without \"features\" ({})", member_names(object)),
        }),
    }
}

/// True for one entry of the OGC API field list: `{"typename": ..., "fields": [{name, type}]}`.
fn is_field_list(item: &Value) -> bool {
    item.as_object().is_some_and(is_field_list_object)
}

fn is_field_list_object(object: &Map<String, Value>) -> bool {
    !object.contains_key("features")
        && object
            .get("fields")
            .and_then(Value::as_array)
            .is_some_and(|fields| {
                fields
                    .iter()
                    .any(|field| field.get("name").is_some() && field.get("type").is_some())
            })
}

fn field_list_description(items: &[Value]) -> String {
    let layer = items
        .iter()
        .find_map(|item| item.get("typename").and_then(Value::as_str))
        .unwrap_or("a layer");
    let fields = items
        .iter()
        .filter_map(|item| item.get("fields").and_then(Value::as_array))
        .map(Vec::len)
        .sum::<usize>();
    format!(
        "a field/schema list of {layer} ({fields} column names and types): the layer's \
         description, not features with observations"
    )
}

/// GeoServer's JSON exception report: `{"exceptions": [{"code", "locator", "text"}]}`.
fn exception_report(object: &Map<String, Value>) -> Option<String> {
    let exceptions = object.get("exceptions")?.as_array()?;
    let messages: Vec<String> = exceptions
        .iter()
        .map(|exception| {
            let code = units::text(exception.get("code")).unwrap_or("exception");
            match units::text(exception.get("text")) {
                Some(text) => format!("{code}: {text}"),
                None => code.to_owned(),
            }
        })
        .collect();
    Some(if messages.is_empty() {
        "empty exception report".to_owned()
    } else {
        messages.join("; ")
    })
}

fn member_names(object: &Map<String, Value>) -> String {
    let names: Vec<&str> = object.keys().take(6).map(String::as_str).collect();
    if names.is_empty() {
        "no members".to_owned()
    } else {
        format!("members {}", names.join(", "))
    }
}

/// Why one feature was rejected.
struct Rejection {
    reason: &'static str,
    detail: String,
}

impl Rejection {
    fn new(reason: &'static str, detail: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }

    /// The same rejection with the feature's site and time added to the detail.
    fn with(self, context: impl Fn(String) -> String) -> Rejection {
        Rejection {
            reason: self.reason,
            detail: context(self.detail),
        }
    }
}

fn read_feature(feature: &Value, axes: Axes) -> Result<WaveObservation, Rejection> {
    let Value::Object(feature) = feature else {
        return Err(Rejection::new(
            "wrong_type",
            format!("a feature must be an object, found {}", json_type(feature)),
        ));
    };
    let properties = match feature.get("properties") {
        Some(Value::Object(properties)) => properties,
        None | Some(Value::Null) => {
            return Err(Rejection::new(
                "missing_field",
                "the feature has no properties",
            ))
        }
        Some(other) => {
            return Err(Rejection::new(
                "wrong_type",
                format!("properties must be an object, found {}", json_type(other)),
            ))
        }
    };

    let site = site(properties)?;
    let observed_at = observed_at(properties)?;
    let context = |detail: String| format!("{detail} (site {site:?}, TIME {observed_at})");

    let quality = number(properties, "WAVE_quality_control").map_err(|r| r.with(context))?;
    if quality == Some(QC_BAD) {
        return Err(Rejection::new(
            "bad_quality",
            context("WAVE_quality_control is 4 (bad data)".to_owned()),
        ));
    }

    let first =
        |names: &[&'static str]| first_number(properties, names).map_err(|r| r.with(context));
    let (lat, lon) = position(feature, properties, axes).map_err(|r| r.with(context))?;
    Ok(WaveObservation {
        wave_height_m: first(&["WHTH", "WSSH", "significant_wave_height"])?,
        wave_height_max_m: first(&["WMXH"])?,
        peak_period_s: first(&["WPPE", "peak_wave_period"])?,
        mean_period_s: first(&["WPMH", "WPFM", "wave_mean_period"])?,
        wave_direction_deg: first(&["WPDI", "peak_wave_direction"])?,
        sea_temp_c: first(&["TEMP"])?,
        lat,
        lon,
        site,
        observed_at,
    })
}

fn site(properties: &Map<String, Value>) -> Result<String, Rejection> {
    match member(properties, "site_name") {
        Some(Value::String(name)) => {
            let site = normalize_site(name);
            if site.is_empty() {
                Err(Rejection::new(
                    "missing_field",
                    format!("site_name {name:?} holds no usable site id"),
                ))
            } else {
                Ok(site)
            }
        }
        None | Some(Value::Null) => Err(Rejection::new("missing_field", "site_name is missing")),
        Some(other) => Err(Rejection::new(
            "wrong_type",
            format!("site_name must be a string, found {}", json_type(other)),
        )),
    }
}

fn observed_at(properties: &Map<String, Value>) -> Result<DateTime<Utc>, Rejection> {
    match member(properties, "TIME") {
        Some(Value::String(text)) => crate::units::time_assuming_utc(text).ok_or_else(|| {
            Rejection::new(
                "bad_time",
                format!("TIME {text:?} is not an ISO-8601 date and time"),
            )
        }),
        None | Some(Value::Null) => Err(Rejection::new("missing_field", "TIME is missing")),
        Some(other) => Err(Rejection::new(
            "bad_time",
            format!(
                "TIME must be an ISO-8601 string, found {}",
                json_type(other)
            ),
        )),
    }
}

/// A property by its column name; a spelling differing only in case is accepted when the exact
/// one is absent (the views mix cases, `TIME` beside `site_name`, and an export or another
/// service may not keep them).
fn member<'a>(properties: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    properties.get(name).or_else(|| {
        properties
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    })
}

/// One optional numeric property: `None` when absent, null or a placeholder.
fn number(properties: &Map<String, Value>, name: &str) -> Result<Option<f64>, Rejection> {
    match units::number(member(properties, name)) {
        NumberField::Value(value) => Ok(Some(value)),
        NumberField::Missing => Ok(None),
        NumberField::Invalid(found) => Err(Rejection::new(
            "wrong_type",
            format!("{name} must be a number, found {found}"),
        )),
    }
}

/// The first of `names` that holds a value. A later name is only a fallback: an unreadable
/// earlier one still rejects the record.
fn first_number(properties: &Map<String, Value>, names: &[&str]) -> Result<Option<f64>, Rejection> {
    for name in names {
        if let Some(value) = number(properties, name)? {
            return Ok(Some(value));
        }
    }
    Ok(None)
}

/// (lat, lon) from the observation itself, else the feature geometry, else the deployment's
/// `latitude_min`/`longitude_min`; each source only counts when it gives both.
fn position(
    feature: &Map<String, Value>,
    properties: &Map<String, Value>,
    axes: Axes,
) -> Result<(Option<f64>, Option<f64>), Rejection> {
    if let (Some(lat), Some(lon)) = (
        number(properties, "LATITUDE")?,
        number(properties, "LONGITUDE")?,
    ) {
        return Ok((Some(lat), Some(lon)));
    }
    if let Some((lon, lat)) = point(feature.get("geometry"), axes) {
        return Ok((Some(lat), Some(lon)));
    }
    if let (Some(lat), Some(lon)) = (
        number(properties, "latitude_min")?,
        number(properties, "longitude_min")?,
    ) {
        return Ok((Some(lat), Some(lon)));
    }
    Ok((None, None))
}

/// How to read a geometry's coordinates, from the collection's `crs` member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Axes {
    /// Longitude, latitude: GeoJSON's default, `CRS84`, and the `EPSG:4326` forms GeoServer
    /// writes in lon/lat order.
    LonLat,
    /// Latitude, longitude: `urn:ogc:def:crs:EPSG::4326`, which GeoServer writes for WFS
    /// 1.1/2.0 requests (GEOS-2397).
    LatLon,
    /// Some other (projected) CRS: the coordinates are not degrees and are not used.
    Unknown,
}

impl Axes {
    fn of(document: &Value) -> Axes {
        let Some(name) = document
            .get("crs")
            .and_then(|crs| crs.get("properties"))
            .and_then(|properties| properties.get("name"))
            .and_then(Value::as_str)
        else {
            return Axes::LonLat;
        };
        let name = name.trim().to_ascii_uppercase();
        if name.ends_with("CRS84") || name.ends_with("CRS:84") {
            Axes::LonLat
        } else if name == "URN:OGC:DEF:CRS:EPSG::4326"
            || name == "URN:OGC:DEF:CRS:EPSG:6.6:4326"
            || name.ends_with("/DEF/CRS/EPSG/0/4326")
        {
            Axes::LatLon
        } else if name == "EPSG:4326" || name.ends_with("EPSG.XML#4326") {
            Axes::LonLat
        } else {
            Axes::Unknown
        }
    }
}

/// `(lon, lat)` of a GeoJSON `Point`; anything else (null, other geometry types, a projected
/// CRS) is no position.
fn point(geometry: Option<&Value>, axes: Axes) -> Option<(f64, f64)> {
    let geometry = geometry?.as_object()?;
    if geometry.get("type").and_then(Value::as_str) != Some("Point") {
        return None;
    }
    let coordinates = geometry.get("coordinates")?.as_array()?;
    let first = coordinates.first()?.as_f64()?;
    let second = coordinates.get(1)?.as_f64()?;
    match axes {
        Axes::LonLat => Some((first, second)),
        Axes::LatLon => Some((second, first)),
        Axes::Unknown => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn times_without_zone_are_utc_and_offsets_convert() {
        let utc = Utc.with_ymd_and_hms(2025, 5, 5, 0, 40, 0).unwrap();
        assert_eq!(
            crate::units::time_assuming_utc("2025-05-05T00:40:00"),
            Some(utc)
        );
        assert_eq!(
            crate::units::time_assuming_utc("2025-05-05T00:40:00Z"),
            Some(utc)
        );
        assert_eq!(
            crate::units::time_assuming_utc("2025-05-05 00:40:00"),
            Some(utc)
        );
        assert_eq!(
            crate::units::time_assuming_utc("2025-05-05T10:40:00+10:00"),
            Some(utc)
        );
        assert_eq!(
            crate::units::time_assuming_utc("2025-05-05T10:40:00+1000"),
            Some(utc)
        );
        assert_eq!(
            crate::units::time_assuming_utc("2025-05-05T10:40:00.000+10:00"),
            Some(utc)
        );
        assert_eq!(
            crate::units::time_assuming_utc("2025-05-05T00:40:00.250"),
            Some(utc + chrono::Duration::milliseconds(250))
        );
        assert_eq!(crate::units::time_assuming_utc("garbage"), None);
        assert_eq!(crate::units::time_assuming_utc("2025-13-05T00:40:00"), None);
    }
}
