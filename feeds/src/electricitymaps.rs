//! Electricity Maps API v3 carbon intensity → [`CarbonIntensity`].
//!
//! Reads the bodies of `/carbon-intensity/latest` (one record), `/carbon-intensity/history`
//! (`{"zone", "history": [...]}`) and `/carbon-intensity/past-range` (`{"zone", "data": [...]}`),
//! as described in `docs/formats.md` §2.
//!
//! What this parser does about the quirks documented there:
//!
//! - **Three envelopes.** The document is recognised by its members, never by key order: a
//!   `history` array, a `data` array (past-range calls its array `data`, not `history`), or a
//!   bare record (`carbonIntensity`/`datetime` at the root).
//! - **Zone.** Each record normally names its zone; when it does not, the wrapper's `zone` and
//!   then the zone the caller asked for are used.
//! - **`carbonIntensity` is required by the schema**: null or absent rejects that record
//!   (`missing_field`) instead of becoming 0; a numeric string is read as a number; a boolean,
//!   object or non-numeric string rejects the record (`wrong_type`). The other records stay.
//! - **`datetime`** is millisecond ISO-8601 with `Z`; any RFC 3339 offset is converted to UTC. A
//!   time without a zone designator is rejected (`bad_time`): the API documents none, and
//!   guessing a zone would shift the hour.
//! - **`isEstimated`** may be a boolean or null; null/absent is `None` ("the source does not
//!   say"), never `false`.
//! - **Values are revised** upstream; this parser keeps whatever the payload says and leaves the
//!   (zone, datetime) key to [`Parsed::dedupe`] and the consumers.
//! - **Error bodies are not uniform.** `{"error": "Invalid auth-token"}` (401),
//!   `{"status": "error", "message": ...}` (older 500s) and similar become
//!   [`PayloadError::Upstream`] with the upstream's message. A plain-text body such as 403
//!   `Access denied` is not JSON; it comes out as [`PayloadError::Json`] whose message quotes
//!   the start of the text.
//! - **Neighbouring documents.** A power-breakdown record or history (breakdown objects, no
//!   `carbonIntensity`), the `/zones` list and forecasts are not carbon-intensity observations
//!   and are whole-payload [`PayloadError::Shape`] errors naming what was found.

use chrono::{DateTime, Utc};
use schema::CarbonIntensity;
use serde_json::{Map, Value};

use crate::parsed::{json_type, json_value};
use crate::units::{self, NumberField};
use crate::{Parsed, PayloadError};

/// The `source` of every event parsed from an Electricity Maps payload.
pub const SOURCE: &str = "electricitymaps";

const EXPECTED: &str = "carbon-intensity records";

/// Members only power-breakdown documents have.
const BREAKDOWN_MEMBERS: [&str; 4] = [
    "powerConsumptionBreakdown",
    "powerProductionBreakdown",
    "powerImportBreakdown",
    "powerExportBreakdown",
];

/// Parses an Electricity Maps v3 carbon-intensity body (latest, history or past-range).
///
/// `requested_zone` is the zone the caller asked for; it is only used for records that name no
/// zone themselves and have no wrapper `zone`.
///
/// Each record becomes one [`CarbonIntensity`], or one rejected record (location `$`,
/// `history[i]` or `data[i]`) when its `carbonIntensity` is null or missing (`missing_field`) or
/// of the wrong type (`wrong_type`), its `datetime` is missing or unreadable, it has no zone,
/// or its value is out of physical range.
///
/// # Errors
///
/// - [`PayloadError::Json`] when the body is not JSON (truncated, HTML, plain-text errors);
/// - [`PayloadError::Upstream`] for an error document (`{"error": ...}`,
///   `{"status": "error", "message": ...}`);
/// - [`PayloadError::Shape`] for any other document, naming it when it is recognised
///   (power breakdown, zones list, forecast).
pub fn parse(
    body: &[u8],
    requested_zone: Option<&str>,
) -> Result<Parsed<CarbonIntensity>, PayloadError> {
    let document = json_value(body).map_err(|error| plain_text(error, body))?;
    let Value::Object(root) = &document else {
        return Err(PayloadError::Shape {
            path: "$".to_owned(),
            expected: EXPECTED,
            found: json_type(&document),
        });
    };
    if let Some(message) = upstream_error(root) {
        return Err(PayloadError::Upstream { message });
    }

    let (kind, records) = records(&document, root)?;
    if !records
        .iter()
        .any(|(_, record)| record.get("carbonIntensity").is_some())
        && records.iter().any(|(_, record)| is_breakdown(record))
    {
        return Err(PayloadError::Shape {
            path: "$".to_owned(),
            expected: EXPECTED,
            found: match kind {
                Envelope::Single => "a power-breakdown record (/power-breakdown/latest)".to_owned(),
                Envelope::History => "a power-breakdown history".to_owned(),
                Envelope::Data => "power-breakdown records".to_owned(),
            },
        });
    }

    let wrapper_zone = units::text(root.get("zone"));
    let fallback_zone = wrapper_zone.or(requested_zone.map(str::trim).filter(|z| !z.is_empty()));
    let mut parsed = Parsed::new(SOURCE);
    for (location, record) in records {
        match read_record(record, fallback_zone) {
            Ok(observation) => parsed.push(location, observation),
            Err((reason, detail)) => parsed.reject(location, reason, detail),
        }
    }
    Ok(parsed.dedupe())
}

/// Which envelope the records came in.
#[derive(Clone, Copy)]
enum Envelope {
    Single,
    History,
    Data,
}

/// Records with their locations (`$`, `history[i]`, `data[i]`).
type Located<'a> = Vec<(String, &'a Value)>;

/// The records of the document with their locations, or what the document is instead.
fn records<'a>(
    document: &'a Value,
    root: &'a Map<String, Value>,
) -> Result<(Envelope, Located<'a>), PayloadError> {
    for (member, kind) in [("history", Envelope::History), ("data", Envelope::Data)] {
        match root.get(member) {
            None => {}
            Some(Value::Array(items)) => {
                let located = items
                    .iter()
                    .enumerate()
                    .map(|(index, item)| (format!("{member}[{index}]"), item))
                    .collect();
                return Ok((kind, located));
            }
            Some(other) => {
                return Err(PayloadError::Shape {
                    path: format!("$.{member}"),
                    expected: "an array of carbon-intensity records",
                    found: json_type(other),
                })
            }
        }
    }
    if root.contains_key("carbonIntensity") || root.contains_key("datetime") {
        return Ok((Envelope::Single, vec![("$".to_owned(), document)]));
    }
    if root.contains_key("forecast") {
        return Err(PayloadError::Shape {
            path: "$".to_owned(),
            expected: EXPECTED,
            found: "a carbon-intensity forecast (predictions, not observations)".to_owned(),
        });
    }
    if let Some(found) = zones_list(root) {
        return Err(PayloadError::Shape {
            path: "$".to_owned(),
            expected: EXPECTED,
            found,
        });
    }
    let names: Vec<&str> = root.keys().take(6).map(String::as_str).collect();
    Err(PayloadError::Shape {
        path: "$".to_owned(),
        expected: EXPECTED,
        found: if names.is_empty() {
            "an empty object".to_owned()
        } else {
            format!(
                "an object with members {} and no carbonIntensity, history or data",
                names.join(", ")
            )
        },
    })
}

/// Describes the `/zones` list (zone code → `{zoneName, countryName?}`), if that is what it is.
fn zones_list(root: &Map<String, Value>) -> Option<String> {
    let mut zones = 0usize;
    let mut example = None;
    for (code, entry) in root {
        let name = entry.get("zoneName").and_then(Value::as_str);
        if name.is_none() && entry.get("countryName").is_none() {
            return None;
        }
        zones += 1;
        if example.is_none() {
            example = Some(format!("{code} = {:?}", name.unwrap_or("")));
        }
    }
    let example = example?;
    Some(format!(
        "the zones list ({zones} zone codes with their names, e.g. {example}), not data"
    ))
}

fn is_breakdown(record: &Value) -> bool {
    BREAKDOWN_MEMBERS
        .iter()
        .any(|member| record.get(member).is_some())
}

/// The upstream's message when the document is an error report.
fn upstream_error(root: &Map<String, Value>) -> Option<String> {
    let status_error = root
        .get("status")
        .and_then(Value::as_str)
        .is_some_and(|status| status.trim().eq_ignore_ascii_case("error"));
    let error = root.get("error").filter(|error| !error.is_null());
    let has_records = ["carbonIntensity", "datetime", "history", "data"]
        .iter()
        .any(|member| root.contains_key(*member));
    let message_only = !has_records
        && root.len() <= 3
        && root.get("message").is_some_and(Value::is_string)
        && !root.values().any(Value::is_object);
    if !status_error && error.is_none() && !message_only {
        return None;
    }
    let message = [root.get("message"), error, root.get("detail")]
        .into_iter()
        .flatten()
        .find_map(message_text);
    Some(message.unwrap_or_else(|| {
        format!(
            "an error document without a message: {}",
            Value::Object(root.clone())
        )
    }))
}

/// Text of an error member: a string, or an object's `message`/`error`/`detail`.
fn message_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) if !text.trim().is_empty() => Some(text.trim().to_owned()),
        Value::Object(object) => ["message", "error", "detail"]
            .iter()
            .filter_map(|member| object.get(*member))
            .find_map(message_text),
        Value::Null | Value::String(_) => None,
        other => Some(other.to_string()),
    }
}

/// Adds the start of a plain-text body (Electricity Maps' 403 `Access denied`) to the JSON
/// error, so the log says what the upstream answered.
fn plain_text(error: PayloadError, body: &[u8]) -> PayloadError {
    let PayloadError::Json {
        line,
        column,
        message,
        hint,
    } = error
    else {
        return error;
    };
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let not_plain_text = !hint.is_empty()
        || text.is_empty()
        || text.starts_with(['{', '[', '"', '<'])
        || text.chars().any(|c| c.is_control() && !c.is_whitespace());
    if not_plain_text {
        return PayloadError::Json {
            line,
            column,
            message,
            hint,
        };
    }
    let shown: String = text.chars().take(80).collect();
    PayloadError::Json {
        line,
        column,
        message: format!("{message}; the body is {shown:?}"),
        hint: " (the body is plain text, not the API's JSON: an access or error message)",
    }
}

type Rejection = (&'static str, String);

fn read_record(record: &Value, fallback_zone: Option<&str>) -> Result<CarbonIntensity, Rejection> {
    let Value::Object(record) = record else {
        return Err((
            "wrong_type",
            format!("a record must be an object, found {}", json_type(record)),
        ));
    };
    let zone = match record.get("zone") {
        Some(Value::String(_)) | None | Some(Value::Null) => units::text(record.get("zone"))
            .or(fallback_zone)
            .ok_or_else(|| ("missing_field", "the record names no zone".to_owned()))?,
        Some(other) => {
            return Err((
                "wrong_type",
                format!("zone must be a string, found {}", json_type(other)),
            ))
        }
    };
    let observed_at = match record.get("datetime") {
        Some(Value::String(text)) => DateTime::parse_from_rfc3339(text.trim())
            .map(|time| time.with_timezone(&Utc))
            .map_err(|_| {
                (
                    "bad_time",
                    format!(
                        "zone {zone}: datetime {text:?} is not an ISO-8601 time with a zone \
                         designator"
                    ),
                )
            })?,
        None | Some(Value::Null) => {
            return Err(("missing_field", format!("zone {zone}: datetime is missing")))
        }
        Some(other) => {
            return Err((
                "bad_time",
                format!(
                    "zone {zone}: datetime must be a string, found {}",
                    json_type(other)
                ),
            ))
        }
    };
    let carbon_intensity_g_per_kwh = match units::number(record.get("carbonIntensity")) {
        NumberField::Value(value) => value,
        NumberField::Missing => {
            return Err((
                "missing_field",
                format!("zone {zone} at {observed_at}: carbonIntensity is null or missing"),
            ))
        }
        NumberField::Invalid(found) => {
            return Err((
                "wrong_type",
                format!(
                    "zone {zone} at {observed_at}: carbonIntensity must be a number, found {found}"
                ),
            ))
        }
    };
    let is_estimated = match record.get("isEstimated") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(flag)) => Some(*flag),
        Some(Value::String(text)) if text.trim().eq_ignore_ascii_case("true") => Some(true),
        Some(Value::String(text)) if text.trim().eq_ignore_ascii_case("false") => Some(false),
        Some(other) => {
            return Err((
                "wrong_type",
                format!(
                    "zone {zone} at {observed_at}: isEstimated must be a boolean, found {}",
                    json_type(other)
                ),
            ))
        }
    };
    Ok(CarbonIntensity {
        zone: zone.to_owned(),
        observed_at,
        carbon_intensity_g_per_kwh,
        is_estimated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_bodies_are_quoted_in_the_json_error() {
        let error = parse(b"Access denied", None).expect_err("not JSON");
        let text = error.to_string();
        assert!(text.contains("Access denied"), "{text}");
        assert!(text.contains("plain text"), "{text}");
        assert!(
            matches!(error, PayloadError::Json { line: 1, .. }),
            "{error:?}"
        );
    }

    #[test]
    fn html_bodies_keep_the_shared_hint() {
        let error = parse(b"<html>502</html>", None).expect_err("html");
        assert!(error.to_string().contains("HTML"), "{error}");
    }

    #[test]
    fn a_bare_message_object_is_an_upstream_error() {
        let error = parse(br#"{"message":"Zone 'XX' not found"}"#, Some("XX")).expect_err("error");
        assert_eq!(
            error,
            PayloadError::Upstream {
                message: "Zone 'XX' not found".to_owned()
            }
        );
    }
}
