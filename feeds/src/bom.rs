//! Bureau of Meteorology (BOM) weather observations → [`WeatherObservation`].
//!
//! [`parse`] reads either of BOM's two unrelated JSON interfaces and works out which one it was
//! given from the document itself:
//!
//! - the legacy observation products (`/fwo/{product}/{product}.{wmo}.json`), shaped
//!   `{"observations": {"notice": [..], "header": [..], "data": [records]}}`, tagged
//!   [`SOURCE_FWO`];
//! - the undocumented v1 API (`/v1/locations/{geohash}/observations`), shaped
//!   `{"metadata": {..}, "data": {..}}`, tagged [`SOURCE_API`].
//!
//! How the quirks listed in `docs/formats.md` (section 1) are handled:
//!
//! - **Time.** Legacy records carry three times; only `aifstime_utc` (`YYYYMMDDhhmmss`, UTC) is
//!   used. `local_date_time_full` is local time whose offset moves with daylight saving (and the
//!   header only gives an abbreviation like "EST"), and `local_date_time` has no month or year,
//!   so neither is ever converted. A record without a readable `aifstime_utc` is rejected as
//!   `bad_time`. In v1 the time lives in `metadata`: `observation_time` when the response has it
//!   (2022 captures), otherwise `issue_time` (2020/2021 captures lack `observation_time`).
//!   Offsets other than `Z` are accepted and converted to UTC.
//! - **Two "missing" spellings.** Numbers are `null` when missing, text is `"-"`; both (and an
//!   absent key) become `None`, never 0.
//! - **Numbers as text.** A numeric string such as `"26.0"` is read as the number. `rain_trace`
//!   and `vis_km`, which are always strings, are not mapped to any field and are never looked
//!   at, so whatever they hold cannot reject a record.
//! - **Key sets differ per product.** Every member is optional. The coastal product IDQ60701 has
//!   no `wind_spd_kmh`/`gust_kmh`, only knots: speeds come from km/h when the km/h member holds a
//!   number and from knots otherwise (1 kt = 1852/3600 m/s). The same rule applies to the v1
//!   `wind`/`gust` objects (`speed_kilometre`, then `speed_knot`).
//! - **Pressure.** The legacy products may carry `press_msl`, `press` and `press_qnh` (hPa).
//!   `pressure_hpa` takes the first of them that holds a number, in that order: mean-sea-level
//!   pressure first, then `press` (the value BOM's pages show as "Pressure"), then the QNH
//!   altimeter setting as a last resort (close to MSL pressure at the low-lying coastal
//!   stations NomadWave polls, but computed differently). v1 has no pressure: always `None`.
//! - **Swell.** `swell_height`/`swell_period` are `null` in every known sample and no source
//!   documents their units; they are taken as metres and seconds. v1 has no swell: `None`.
//! - **Wind direction** is a 16-point compass name; `"CALM"`, `"VRB"`, `"-"` and any other
//!   text that is not a compass point become `None`.
//! - **Station ids.** Legacy: `wmo` (a number, or digits as text) gives site `wmo-{wmo}`; a
//!   record without it is rejected (`missing_field`). v1: `station.bom_id` is text with leading
//!   zeros (`"014015"`) and is kept verbatim in site `bom-{bom_id}`; without it the caller's
//!   `fallback_site` (the geohash the poller asked for) is used, and without that the record is
//!   rejected (`missing_field`). A numeric `bom_id` is rejected (`wrong_type`) rather than
//!   guessing how many leading zeros it lost.
//! - **Other v1 documents.** Forecasts (daily, hourly), location info, location search and
//!   warnings share the `{"metadata", "data"}` envelope; they are recognised and reported as a
//!   [`PayloadError::Shape`] that names what was received, so a poller pointed at the wrong
//!   endpoint says so. A root object with an `errors` member and no `data` is reported as
//!   [`PayloadError::Upstream`] (the shape of BOM's error body is not documented; this is a
//!   best-effort reading).
//! - **Key order and pretty-printing** differ between captures and never matter: the body is
//!   read into a JSON value and members are looked up by name; unknown members are ignored.
//!
//! Per record, a member this parser reads that holds the wrong type (`"air_temp": "hot"`,
//! `"wind_spd_kt": true`) rejects that record as `wrong_type`, naming the member; the other
//! records are kept. This includes a km/h speed that is not a number even when knots are
//! present: a broken member is reported, not silently replaced. Physical ranges are checked by
//! [`Parsed::push`] (`out_of_range`), and repeated (site, time) pairs by [`Parsed::dedupe`].

use chrono::{DateTime, NaiveDateTime, Utc};
use schema::WeatherObservation;
use serde_json::{Map, Value};

use crate::parsed::{json_type, json_value};
use crate::units::{compass_degrees, kmh_to_ms, knots_to_ms, number, text, NumberField};
use crate::{Parsed, PayloadError};

/// The `source` of observations read from a legacy `/fwo/` observation product.
pub const SOURCE_FWO: &str = "bom-fwo";

/// The `source` of observations read from the v1 API (`api.weather.bom.gov.au`).
pub const SOURCE_API: &str = "bom-api";

/// What `parse` accepts, for a root that is neither format.
const EXPECTED_ANY: &str = "a BOM legacy observation product ({\"observations\": {\"header\", \
                            \"data\"}}) or a BOM v1 API document ({\"metadata\", \"data\"})";

/// What `parse` accepts from the v1 API.
const EXPECTED_OBSERVATIONS: &str = "a BOM observations document";

/// v1 observation members; a `data` object with none of them is not an observation.
const V1_OBSERVATION_MEMBERS: [&str; 7] = [
    "temp",
    "temp_feels_like",
    "humidity",
    "wind",
    "gust",
    "station",
    "rain_since_9am",
];

/// Parses a BOM response body: a legacy observation product or a v1 API observations document.
///
/// The format is detected from the document: a root `observations` member means a legacy
/// product (one observation per record of `observations.data`, source [`SOURCE_FWO`]); a root
/// `data` member means the v1 API (one observation, source [`SOURCE_API`]).
///
/// `fallback_site` is used as the site, verbatim, when a v1 observation names no station
/// (`data.station.bom_id`); the poller passes the geohash it requested. Legacy products ignore
/// it.
///
/// Bad records are returned in [`Parsed::rejected`] with their location
/// (`observations.data[i]` or `data`) and a reason: `bad_time`, `wrong_type`, `missing_field`
/// or `out_of_range`.
///
/// # Errors
///
/// - [`PayloadError::Json`] when the body is not JSON (truncated, an HTML error page...);
/// - [`PayloadError::Shape`] when it is JSON but neither format (path `$`), when the legacy
///   `observations`/`observations.data` are not an object/array, or when it is another v1
///   document (a forecast, location info, a location search...), which the error names;
/// - [`PayloadError::Upstream`] when the root holds an `errors` member instead of data.
pub fn parse(
    body: &[u8],
    fallback_site: Option<&str>,
) -> Result<Parsed<WeatherObservation>, PayloadError> {
    let root = json_value(body)?;
    let Value::Object(members) = &root else {
        return Err(shape("$", EXPECTED_ANY, json_type(&root)));
    };
    if let Some(observations) = members.get("observations") {
        return parse_legacy(observations);
    }
    if let Some(data) = members.get("data") {
        return parse_v1(members.get("metadata"), data, fallback_site);
    }
    if let Some(errors) = members.get("errors") {
        return Err(PayloadError::Upstream {
            message: upstream_message(errors),
        });
    }
    Err(shape("$", EXPECTED_ANY, describe_members(members)))
}

/// Why one record was rejected.
#[derive(Debug)]
struct Rejection {
    reason: &'static str,
    detail: String,
}

fn bad_time(detail: impl Into<String>) -> Rejection {
    Rejection {
        reason: "bad_time",
        detail: detail.into(),
    }
}

fn wrong_type(field: &str, expected: &str, found: &str) -> Rejection {
    Rejection {
        reason: "wrong_type",
        detail: format!("{field} should be {expected}, found {found}"),
    }
}

fn missing_field(detail: impl Into<String>) -> Rejection {
    Rejection {
        reason: "missing_field",
        detail: detail.into(),
    }
}

fn shape(path: &str, expected: &'static str, found: String) -> PayloadError {
    PayloadError::Shape {
        path: path.to_owned(),
        expected,
        found,
    }
}

/// "an object with members "a", "b"" (at most five names), for a root that matched nothing.
fn describe_members(members: &Map<String, Value>) -> String {
    if members.is_empty() {
        return "an empty object".to_owned();
    }
    let names: Vec<String> = members
        .keys()
        .take(5)
        .map(|name| format!("{name:?}"))
        .collect();
    let more = if members.len() > 5 { ", ..." } else { "" };
    format!("an object with members {}{more}", names.join(", "))
}

/// The readable parts of an `errors` member: codes, titles, details and messages.
fn upstream_message(errors: &Value) -> String {
    let items: Vec<&Value> = match errors {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    let mut parts = Vec::new();
    for item in items {
        match item {
            Value::Object(fields) => {
                let texts: Vec<&str> = ["code", "status", "title", "detail", "message"]
                    .iter()
                    .filter_map(|name| text(fields.get(*name)))
                    .collect();
                if !texts.is_empty() {
                    parts.push(texts.join(" - "));
                }
            }
            Value::String(message) if !message.trim().is_empty() => {
                parts.push(message.trim().to_owned());
            }
            _ => {}
        }
    }
    if parts.is_empty() {
        let raw = errors.to_string();
        let shown: String = raw.chars().take(200).collect();
        format!("errors: {shown}")
    } else {
        parts.join("; ")
    }
}

/// The members of one JSON object that a record is read from, with the path prefix used in
/// rejection details (`""` for a legacy record, `"wind."` for the v1 wind object).
struct Fields<'a> {
    members: Option<&'a Map<String, Value>>,
    prefix: &'static str,
}

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.members.and_then(|members| members.get(name))
    }

    fn path(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A number, or `None` when absent, `null` or a placeholder.
    fn number(&self, name: &str) -> Result<Option<f64>, Rejection> {
        match number(self.get(name)) {
            NumberField::Value(value) => Ok(Some(value)),
            NumberField::Missing => Ok(None),
            NumberField::Invalid(found) => Err(wrong_type(&self.path(name), "a number", &found)),
        }
    }

    /// The first of `names` that holds a number; every one of them must be a number or missing.
    fn first_number(&self, names: &[&str]) -> Result<Option<f64>, Rejection> {
        let mut first = None;
        for name in names {
            let value = self.number(name)?;
            first = first.or(value);
        }
        Ok(first)
    }

    /// A speed in m/s from a km/h member, else from a knots member.
    fn speed(&self, kmh: &str, knots: &str) -> Result<Option<f64>, Rejection> {
        let from_kmh = self.number(kmh)?.map(kmh_to_ms);
        let from_knots = self.number(knots)?.map(knots_to_ms);
        Ok(from_kmh.or(from_knots))
    }

    /// Degrees true from a compass-point member.
    fn direction(&self, name: &str) -> Result<Option<f64>, Rejection> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(point)) => Ok(compass_degrees(point)),
            Some(other) => Err(wrong_type(
                &self.path(name),
                "a compass point such as \"ESE\"",
                &json_type(other),
            )),
        }
    }

    /// A nested object (`wind`, `gust`, `station`); `None` when absent or `null`.
    fn object(&self, name: &'static str) -> Result<Option<&'a Map<String, Value>>, Rejection> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(members)) => Ok(Some(members)),
            Some(other) => Err(wrong_type(&self.path(name), "an object", &json_type(other))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Legacy observation products
// ---------------------------------------------------------------------------------------------

fn parse_legacy(observations: &Value) -> Result<Parsed<WeatherObservation>, PayloadError> {
    let Value::Object(product) = observations else {
        return Err(shape(
            "observations",
            "an object holding the product's header and data",
            json_type(observations),
        ));
    };
    let records = match product.get("data") {
        Some(Value::Array(records)) => records,
        Some(other) => {
            return Err(shape(
                "observations.data",
                "an array of observation records",
                json_type(other),
            ))
        }
        None => {
            return Err(shape(
                "observations.data",
                "an array of observation records",
                "no such member".to_owned(),
            ))
        }
    };
    let mut parsed = Parsed::new(SOURCE_FWO);
    for (index, record) in records.iter().enumerate() {
        let location = format!("observations.data[{index}]");
        match legacy_record(record) {
            Ok(observation) => parsed.push(location, observation),
            Err(rejection) => parsed.reject(location, rejection.reason, rejection.detail),
        }
    }
    Ok(parsed.dedupe())
}

fn legacy_record(record: &Value) -> Result<WeatherObservation, Rejection> {
    let Value::Object(members) = record else {
        return Err(wrong_type("the record", "an object", &json_type(record)));
    };
    let fields = Fields {
        members: Some(members),
        prefix: "",
    };
    Ok(WeatherObservation {
        site: legacy_site(members.get("wmo"))?,
        observed_at: aifs_time(members.get("aifstime_utc"))?,
        wind_speed_ms: fields.speed("wind_spd_kmh", "wind_spd_kt")?,
        wind_gust_ms: fields.speed("gust_kmh", "gust_kt")?,
        wind_direction_deg: fields.direction("wind_dir")?,
        air_temp_c: fields.number("air_temp")?,
        pressure_hpa: fields.first_number(&["press_msl", "press", "press_qnh"])?,
        rel_humidity_pct: fields.number("rel_hum")?,
        swell_height_m: fields.number("swell_height")?,
        swell_period_s: fields.number("swell_period")?,
    })
}

/// `wmo-{wmo}` from a whole number or a string of digits.
fn legacy_site(wmo: Option<&Value>) -> Result<String, Rejection> {
    const EXPECTED: &str = "a WMO station number";
    match wmo {
        Some(Value::Number(number)) => match number.as_u64() {
            Some(wmo) => Ok(format!("wmo-{wmo}")),
            None => Err(wrong_type("wmo", EXPECTED, &format!("the number {number}"))),
        },
        Some(value @ Value::String(_)) => match text(Some(value)) {
            None => Err(missing_field("wmo (the station number) is a placeholder")),
            Some(digits) => match digits.parse::<u64>() {
                Ok(wmo) if digits.bytes().all(|byte| byte.is_ascii_digit()) => {
                    Ok(format!("wmo-{wmo}"))
                }
                _ => Err(wrong_type("wmo", EXPECTED, &json_type(value))),
            },
        },
        None | Some(Value::Null) => Err(missing_field("wmo (the station number) is missing")),
        Some(other) => Err(wrong_type("wmo", EXPECTED, &json_type(other))),
    }
}

/// The UTC instant of a legacy record from `aifstime_utc` ("YYYYMMDDhhmmss").
fn aifs_time(value: Option<&Value>) -> Result<DateTime<Utc>, Rejection> {
    let raw = match value {
        Some(Value::String(raw)) => raw.trim(),
        None | Some(Value::Null) => {
            return Err(bad_time(
                "aifstime_utc is missing (local_date_time_full is never used: its UTC offset \
                 changes with daylight saving)",
            ))
        }
        Some(other) => {
            return Err(bad_time(format!(
                "aifstime_utc should be a \"YYYYMMDDhhmmss\" string, found {}",
                json_type(other)
            )))
        }
    };
    if raw.len() != 14 || !raw.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(bad_time(format!(
            "aifstime_utc {raw:?} is not \"YYYYMMDDhhmmss\""
        )));
    }
    NaiveDateTime::parse_from_str(raw, "%Y%m%d%H%M%S")
        .map(|time| time.and_utc())
        .map_err(|error| bad_time(format!("aifstime_utc {raw:?} is not a valid time: {error}")))
}

// ---------------------------------------------------------------------------------------------
// v1 API
// ---------------------------------------------------------------------------------------------

fn parse_v1(
    metadata: Option<&Value>,
    data: &Value,
    fallback_site: Option<&str>,
) -> Result<Parsed<WeatherObservation>, PayloadError> {
    let observation = match data {
        Value::Object(members)
            if V1_OBSERVATION_MEMBERS
                .iter()
                .any(|name| members.contains_key(*name)) =>
        {
            members
        }
        other => {
            return Err(shape(
                "data",
                EXPECTED_OBSERVATIONS,
                describe_v1_data(other),
            ))
        }
    };
    let mut parsed = Parsed::new(SOURCE_API);
    match v1_observation(metadata, observation, fallback_site) {
        Ok(observation) => parsed.push("data", observation),
        Err(rejection) => parsed.reject("data", rejection.reason, rejection.detail),
    }
    Ok(parsed.dedupe())
}

fn v1_observation(
    metadata: Option<&Value>,
    observation: &Map<String, Value>,
    fallback_site: Option<&str>,
) -> Result<WeatherObservation, Rejection> {
    let fields = Fields {
        members: Some(observation),
        prefix: "data.",
    };
    let wind = Fields {
        members: fields.object("wind")?,
        prefix: "data.wind.",
    };
    let gust = Fields {
        members: fields.object("gust")?,
        prefix: "data.gust.",
    };
    let station = Fields {
        members: fields.object("station")?,
        prefix: "data.station.",
    };
    Ok(WeatherObservation {
        site: v1_site(&station, fallback_site)?,
        observed_at: v1_time(metadata)?,
        wind_speed_ms: wind.speed("speed_kilometre", "speed_knot")?,
        wind_gust_ms: gust.speed("speed_kilometre", "speed_knot")?,
        wind_direction_deg: wind.direction("direction")?,
        air_temp_c: fields.number("temp")?,
        pressure_hpa: None,
        rel_humidity_pct: fields.number("humidity")?,
        swell_height_m: None,
        swell_period_s: None,
    })
}

/// `bom-{bom_id}` (leading zeros kept), else the caller's fallback.
fn v1_site(station: &Fields<'_>, fallback_site: Option<&str>) -> Result<String, Rejection> {
    match station.get("bom_id") {
        Some(value @ Value::String(_)) => {
            if let Some(bom_id) = text(Some(value)) {
                return Ok(format!("bom-{bom_id}"));
            }
        }
        None | Some(Value::Null) => {}
        Some(other) => {
            return Err(wrong_type(
                &station.path("bom_id"),
                "a station number as text (\"014015\")",
                &json_type(other),
            ))
        }
    }
    match fallback_site.map(str::trim) {
        Some(site) if !site.is_empty() => Ok(site.to_owned()),
        _ => Err(missing_field(
            "data.station.bom_id is missing and no fallback site was given",
        )),
    }
}

/// `metadata.observation_time`, else `metadata.issue_time`, as UTC.
fn v1_time(metadata: Option<&Value>) -> Result<DateTime<Utc>, Rejection> {
    let members = match metadata {
        Some(Value::Object(members)) => members,
        None | Some(Value::Null) => {
            return Err(bad_time(
                "the document has no metadata, so no observation_time or issue_time",
            ))
        }
        Some(other) => {
            return Err(bad_time(format!(
                "metadata should be an object, found {}",
                json_type(other)
            )))
        }
    };
    for name in ["observation_time", "issue_time"] {
        let value = members.get(name);
        match value {
            None | Some(Value::Null) => {}
            Some(Value::String(_)) => {
                let Some(raw) = text(value) else { continue };
                return DateTime::parse_from_rfc3339(raw)
                    .map(|time| time.with_timezone(&Utc))
                    .map_err(|error| {
                        bad_time(format!(
                            "metadata.{name} {raw:?} is not an ISO-8601 time with an offset: \
                             {error}"
                        ))
                    });
            }
            Some(other) => {
                return Err(bad_time(format!(
                    "metadata.{name} should be an ISO-8601 string, found {}",
                    json_type(other)
                )))
            }
        }
    }
    Err(bad_time(
        "metadata has neither observation_time nor issue_time",
    ))
}

/// Names the v1 document whose `data` is not an observation.
fn describe_v1_data(data: &Value) -> String {
    match data {
        Value::Array(items) => {
            let count = items.len();
            let Some(Value::Object(first)) = items.first() else {
                return if count == 0 {
                    "an empty array (a location search or warnings list with no entries?)"
                        .to_owned()
                } else {
                    format!("an array of {count} items that are not objects")
                };
            };
            let has = |name: &str| first.contains_key(name);
            if has("geohash") {
                format!("a location search result ({count} locations)")
            } else if has("temp_max") || has("temp_min") || has("date") {
                format!("a daily forecast ({count} days)")
            } else if has("time") && (has("temp") || has("next_forecast_period")) {
                format!("an hourly forecast ({count} periods)")
            } else if has("warning_group_type") || has("expiry_time") {
                format!("a warnings list ({count} warnings)")
            } else {
                format!("an array of {count} objects that are not observations")
            }
        }
        Value::Object(members) => {
            let has = |name: &str| members.contains_key(name);
            if has("geohash") || has("timezone") {
                "a location info document".to_owned()
            } else if has("expiry_time") || (has("type") && has("title")) {
                "a warning".to_owned()
            } else {
                format!(
                    "an object with none of the observation members ({})",
                    V1_OBSERVATION_MEMBERS.join(", ")
                )
            }
        }
        other => json_type(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn aifstime_must_be_fourteen_digits_of_a_real_time() {
        let good = aifs_time(Some(&json!("20170218130000"))).map(|time| time.to_rfc3339());
        assert_eq!(good.ok().as_deref(), Some("2017-02-18T13:00:00+00:00"));
        for bad in [
            json!("2017021813000"),
            json!("201702181300000"),
            json!("20170230130000"),
            json!("2017-02-18T13:00"),
            json!("-"),
            json!(20170218130000_u64),
        ] {
            let rejection = aifs_time(Some(&bad)).expect_err("bad aifstime_utc");
            assert_eq!(rejection.reason, "bad_time", "{bad}");
        }
    }

    #[test]
    fn a_wrong_typed_kmh_speed_is_not_hidden_by_knots() {
        let record = json!({"wind_spd_kmh": "fast", "wind_spd_kt": 10});
        let fields = Fields {
            members: record.as_object(),
            prefix: "",
        };
        let rejection = fields
            .speed("wind_spd_kmh", "wind_spd_kt")
            .expect_err("wrong type");
        assert_eq!(rejection.reason, "wrong_type");
        assert!(
            rejection.detail.contains("wind_spd_kmh"),
            "{}",
            rejection.detail
        );
    }

    #[test]
    fn wmo_accepts_numbers_and_digit_strings_only() {
        assert_eq!(
            legacy_site(Some(&json!(94254))).ok().as_deref(),
            Some("wmo-94254")
        );
        assert_eq!(
            legacy_site(Some(&json!("94254"))).ok().as_deref(),
            Some("wmo-94254")
        );
        assert_eq!(
            legacy_site(Some(&json!("+94254")))
                .map_err(|r| r.reason)
                .err(),
            Some("wrong_type")
        );
        assert_eq!(
            legacy_site(Some(&json!(94254.5)))
                .map_err(|r| r.reason)
                .err(),
            Some("wrong_type")
        );
        assert_eq!(
            legacy_site(Some(&json!("-"))).map_err(|r| r.reason).err(),
            Some("missing_field")
        );
        assert_eq!(
            legacy_site(None).map_err(|r| r.reason).err(),
            Some("missing_field")
        );
    }
}
