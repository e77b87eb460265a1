//! The result every parser returns and the error for a payload that cannot be read at all.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use schema::Observation;
use thiserror::Error;

/// What a parser made of one upstream response.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<O> {
    /// The `source` every event from this payload carries (e.g. `bom-fwo`).
    pub source: &'static str,
    /// Valid observations, in payload order, one per natural key.
    pub observations: Vec<O>,
    /// Records that could not be turned into a valid observation.
    pub rejected: Vec<RejectedRecord>,
    /// Records dropped because an earlier record had the same (site, `observed_at`).
    pub duplicates: usize,
}

/// One record of a payload that was rejected, with where it is and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRecord {
    /// Where the record sits in the payload, as a JSON path (`features[3]`, `observations.data[0]`).
    pub location: String,
    /// A short machine-friendly reason (`bad_time`, `wrong_type`, `out_of_range`, `missing_field`,
    /// `time_out_of_range`, `sub_second_time`).
    pub reason: &'static str,
    /// What was wrong, for a human: the field and the offending value.
    pub detail: String,
}

impl std::fmt::Display for RejectedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} ({})", self.location, self.detail, self.reason)
    }
}

impl<O: Observation> Parsed<O> {
    /// An empty result for a payload of `source`.
    pub fn new(source: &'static str) -> Parsed<O> {
        Parsed {
            source,
            observations: Vec::new(),
            rejected: Vec::new(),
            duplicates: 0,
        }
    }

    /// Records a record that failed before it became an observation.
    pub fn reject(
        &mut self,
        location: impl Into<String>,
        reason: &'static str,
        detail: impl Into<String>,
    ) {
        self.rejected.push(RejectedRecord {
            location: location.into(),
            reason,
            detail: detail.into(),
        });
    }

    /// Adds an observation after checking its physical ranges; an out-of-range one is rejected.
    pub fn push(&mut self, location: impl Into<String>, observation: O) {
        match observation.validate() {
            Ok(()) => self.observations.push(observation),
            Err(error) => self.reject(location, error.reason(), error.to_string()),
        }
    }

    /// Drops every observation whose (site, `observed_at`) an earlier one already has, counting
    /// them in [`Parsed::duplicates`]. Parsers call this last.
    pub fn dedupe(mut self) -> Parsed<O> {
        let mut seen: HashSet<(String, DateTime<Utc>)> = HashSet::new();
        let before = self.observations.len();
        self.observations.retain(|observation| {
            seen.insert((observation.site().to_owned(), observation.observed_at()))
        });
        self.duplicates += before - self.observations.len();
        self
    }
}

/// Why a whole payload could not be read. Each variant says what and where.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PayloadError {
    /// The bytes are not JSON (truncated body, HTML error page...).
    #[error("not valid JSON at line {line}, column {column}: {message}{hint}")]
    Json {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// serde_json's description.
        message: String,
        /// Extra guidance, e.g. " (the body looks like an HTML page, not the API's JSON)".
        hint: &'static str,
    },
    /// The JSON is not the document this parser reads.
    #[error("{path}: expected {expected}, found {found}")]
    Shape {
        /// JSON path of the offending member (`$` for the root).
        path: String,
        /// What the parser needs there.
        expected: &'static str,
        /// What it found (a JSON type or a short description).
        found: String,
    },
    /// The upstream answered with its own error document instead of data.
    #[error("the upstream returned an error document instead of data: {message}")]
    Upstream {
        /// The message the upstream gave.
        message: String,
    },
}

impl PayloadError {
    /// Builds [`PayloadError::Json`] from serde_json's error, noticing HTML bodies.
    pub fn from_json(error: &serde_json::Error, body: &[u8]) -> PayloadError {
        let start = body
            .iter()
            .position(|byte| !byte.is_ascii_whitespace())
            .map_or(&body[..0], |at| &body[at..]);
        let hint = if start.first() == Some(&b'<') {
            " (the body looks like an HTML or XML page, not the API's JSON)"
        } else if error.is_eof() {
            " (the body ends early: truncated response?)"
        } else {
            ""
        };
        PayloadError::Json {
            line: error.line(),
            column: error.column(),
            message: error.to_string(),
            hint,
        }
    }

    /// A short machine-friendly reason for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            PayloadError::Json { .. } => "malformed_json",
            PayloadError::Shape { .. } => "unexpected_document",
            PayloadError::Upstream { .. } => "upstream_error",
        }
    }
}

/// Parses a payload into a JSON value, with a [`PayloadError::Json`] that says where it broke.
pub(crate) fn json_value(body: &[u8]) -> Result<serde_json::Value, PayloadError> {
    serde_json::from_slice(body).map_err(|error| PayloadError::from_json(&error, body))
}

/// The JSON type of a value, for error messages.
pub(crate) fn json_type(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "null".to_owned(),
        serde_json::Value::Bool(_) => "a boolean".to_owned(),
        serde_json::Value::Number(number) => format!("the number {number}"),
        serde_json::Value::String(text) => {
            let shown: String = text.chars().take(40).collect();
            format!("the string {shown:?}")
        }
        serde_json::Value::Array(_) => "an array".to_owned(),
        serde_json::Value::Object(_) => "an object".to_owned(),
    }
}

/// Turns an upstream site name into a stable id: lower case, every run of other characters
/// collapsed to one `-`, no leading or trailing `-`. "Mt Eliza" and "MT-ELIZA" both become
/// `mt-eliza`.
pub fn normalize_site(name: &str) -> String {
    let mut id = String::with_capacity(name.len());
    let mut pending_dash = false;
    for character in name.chars() {
        if character.is_alphanumeric() {
            if pending_dash && !id.is_empty() {
                id.push('-');
            }
            pending_dash = false;
            id.extend(character.to_lowercase());
        } else {
            pending_dash = true;
        }
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_names_from_both_aodn_spellings_agree() {
        assert_eq!(normalize_site("Mt Eliza"), "mt-eliza");
        assert_eq!(normalize_site("MT-ELIZA"), "mt-eliza");
        assert_eq!(normalize_site("  Port  Fairy "), "port-fairy");
        assert_eq!(
            normalize_site("VICTOR-HARBOUROFFSHORE"),
            "victor-harbouroffshore"
        );
    }

    #[test]
    fn truncated_and_html_bodies_say_so() {
        let truncated = br#"{"a": [1, 2"#;
        let error = json_value(truncated).expect_err("truncated");
        assert!(error.to_string().contains("truncated"), "{error}");
        let html = b"<html><body>502 Bad Gateway</body></html>";
        let error = json_value(html).expect_err("html");
        assert!(error.to_string().contains("HTML"), "{error}");
    }
}
