//! Event kinds and the JetStream names derived from them, defined once.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Prefix shared by every NomadWave subject.
pub const SUBJECT_ROOT: &str = "nomadwave";

/// Stream that keeps messages the sink could not decode or validate.
pub const DEAD_LETTER_STREAM: &str = "DEADLETTER";

/// Subjects captured by [`DEAD_LETTER_STREAM`].
pub const DEAD_LETTER_SUBJECTS: &str = "nomadwave.deadletter.>";

/// The kind of observation an event carries; each kind has its own stream and table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Wave buoy observations (IMOS/AODN, Pi buoys).
    Wave,
    /// Weather station observations (Bureau of Meteorology, rtl_433 stations).
    Weather,
    /// Grid carbon intensity per zone (Electricity Maps).
    Carbon,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; 3] = [Kind::Wave, Kind::Weather, Kind::Carbon];

    /// The lowercase name used in JSON, subjects and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Wave => "wave",
            Kind::Weather => "weather",
            Kind::Carbon => "carbon",
        }
    }

    /// Parses the lowercase name.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// The JetStream stream holding this kind: `WAVE`, `WEATHER` or `CARBON`.
    pub fn stream_name(self) -> &'static str {
        match self {
            Kind::Wave => "WAVE",
            Kind::Weather => "WEATHER",
            Kind::Carbon => "CARBON",
        }
    }

    /// The kind whose stream has this name.
    pub fn from_stream_name(name: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|kind| kind.stream_name() == name)
    }

    /// Subject filter capturing every site of this kind, e.g. `nomadwave.wave.>`.
    pub fn subject_filter(self) -> String {
        format!("{SUBJECT_ROOT}.{}.>", self.as_str())
    }

    /// Subjects of partition `index` once the server maps `nomadwave.<kind>.<site>` to
    /// `nomadwave.<kind>.<partition>.<site>` (see [`Kind::partition_mapping`]).
    pub fn partition_filter(self, index: u32) -> String {
        format!("{SUBJECT_ROOT}.{}.{index}.*", self.as_str())
    }

    /// The nats-server subject mapping that spreads this kind's sites over `count` partitions
    /// by a hash of the site token, as a `mappings` entry: `(source, destination)`.
    pub fn partition_mapping(self, count: u32) -> (String, String) {
        (
            format!("{SUBJECT_ROOT}.{}.*", self.as_str()),
            format!(
                "{SUBJECT_ROOT}.{}.{{{{partition({count},1)}}}}.{{{{wildcard(1)}}}}",
                self.as_str()
            ),
        )
    }

    /// Subject an event of this kind from `site` is published on, e.g. `nomadwave.wave.CapeSorell`.
    ///
    /// The site becomes a single subject token: characters that NATS treats specially (`.`,
    /// `*`, `>`, whitespace) and anything outside `[A-Za-z0-9_-]` become `_`.
    pub fn subject_for_site(self, site: &str) -> String {
        // Built by hand rather than with `format!`: every published event needs one, and this
        // is a quarter of the cost.
        let kind = self.as_str();
        let mut subject = String::with_capacity(SUBJECT_ROOT.len() + kind.len() + site.len() + 2);
        subject.push_str(SUBJECT_ROOT);
        subject.push('.');
        subject.push_str(kind);
        subject.push('.');
        push_subject_token(&mut subject, site);
        subject
    }

    /// Subject a dead letter from this kind's stream is published on.
    pub fn dead_letter_subject(self) -> String {
        format!("{SUBJECT_ROOT}.deadletter.{}", self.as_str())
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Appends `site` as one subject token: each character outside `[A-Za-z0-9_-]` becomes `_`,
/// and an empty site becomes `_`.
fn push_subject_token(subject: &mut String, site: &str) {
    if site.is_empty() {
        subject.push('_');
        return;
    }
    subject.extend(site.chars().map(|c| match c {
        'A'..='Z' | 'a'..='z' | '0'..='9' | '_' | '-' => c,
        _ => '_',
    }));
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_name(kind.as_str()), Some(kind));
            assert_eq!(Kind::from_stream_name(kind.stream_name()), Some(kind));
        }
        assert_eq!(Kind::from_name("tide"), None);
    }

    #[test]
    fn site_becomes_one_safe_token() {
        assert_eq!(
            Kind::Wave.subject_for_site("Cape Sorell.2 >*"),
            "nomadwave.wave.Cape_Sorell_2___"
        );
        assert_eq!(
            Kind::Carbon.subject_for_site("DK-DK2"),
            "nomadwave.carbon.DK-DK2"
        );
        assert_eq!(Kind::Weather.subject_for_site(""), "nomadwave.weather._");
    }

    proptest! {
        #[test]
        fn subject_is_what_the_format_string_made(site in "\\PC{0,16}") {
            let token: String = site
                .chars()
                .map(|c| match c {
                    'A'..='Z' | 'a'..='z' | '0'..='9' | '_' | '-' => c,
                    _ => '_',
                })
                .collect();
            let token = if token.is_empty() { "_".to_owned() } else { token };
            for kind in Kind::ALL {
                prop_assert_eq!(
                    kind.subject_for_site(&site),
                    format!("{SUBJECT_ROOT}.{}.{token}", kind.as_str())
                );
            }
        }
    }
}
