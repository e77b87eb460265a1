//! Simulated Electricity Maps API v3 carbon intensity (`docs/formats.md` §2):
//! `/v3/carbon-intensity/history?zone=Z` (`{"zone", "history": [24 hourly records, oldest
//! first]}`) and `/v3/carbon-intensity/latest?zone=Z` (one record).
//!
//! Records have the fields of the genuine samples: `zone`, `carbonIntensity` (an integer,
//! gCO2eq/kWh), `datetime` (hour start, millisecond ISO with `Z`), `updatedAt`, `createdAt`
//! (about three days earlier, at 43–52 minutes past the hour), `emissionFactorType`
//! ("lifecycle"), `isEstimated` and `estimationMethod`.
//!
//! The current hour is the newest record; it is an estimate (`isEstimated: true`,
//! `"TIME_SLICER_AVERAGE"`, a value a little off the final one, updated 12 minutes before the
//! hour began). When the next hour starts, it becomes final (`isEstimated: false`, `null`
//! method, the final value), which is the kind of revision the real API makes. Older hours
//! never change. Values follow each zone's usual level, a midday solar dip in local time, an
//! evening peak and multi-day weather cycles, within 50–800.
//!
//! Every request needs the header `auth-token`: without one (or with another token than the
//! one `edge-sim http --token` was given) the answer is `401 {"error":"Invalid auth-token"}`,
//! the genuine body. Requests without a usable `zone` get `400` with an `{"error": ...}` body
//! whose wording is not verified against the real API.

use axum::http::StatusCode;
use chrono::{DateTime, Duration, Timelike, Utc};
use serde::Serialize;

use super::{
    cycle, epoch_seconds, latest_grid_point, phase, stable_hash, to_json, unit, Answer, DAY,
};

/// Hourly records in a history answer.
pub const HISTORY_HOURS: usize = 24;

/// The genuine body of a refused token (fixture `v3_error_401_invalid_auth-token.json`).
pub const INVALID_TOKEN_BODY: &str = "{\"error\":\"Invalid auth-token\"}";

/// A grid zone's character: its UTC offset (for the solar dip), usual intensity and how much
/// solar power lowers it at noon.
struct Zone {
    code: &'static str,
    utc_offset_hours: f64,
    base: f64,
    solar_dip: f64,
}

const ZONES: [Zone; 13] = [
    Zone {
        code: "AU-NSW",
        utc_offset_hours: 10.0,
        base: 620.0,
        solar_dip: 260.0,
    },
    Zone {
        code: "AU-VIC",
        utc_offset_hours: 10.0,
        base: 640.0,
        solar_dip: 230.0,
    },
    Zone {
        code: "AU-QLD",
        utc_offset_hours: 10.0,
        base: 610.0,
        solar_dip: 250.0,
    },
    Zone {
        code: "AU-SA",
        utc_offset_hours: 9.5,
        base: 230.0,
        solar_dip: 170.0,
    },
    Zone {
        code: "AU-TAS",
        utc_offset_hours: 10.0,
        base: 120.0,
        solar_dip: 40.0,
    },
    Zone {
        code: "AU-WA",
        utc_offset_hours: 8.0,
        base: 520.0,
        solar_dip: 220.0,
    },
    Zone {
        code: "AU-NT",
        utc_offset_hours: 9.5,
        base: 480.0,
        solar_dip: 120.0,
    },
    Zone {
        code: "DE",
        utc_offset_hours: 1.0,
        base: 400.0,
        solar_dip: 150.0,
    },
    Zone {
        code: "FR",
        utc_offset_hours: 1.0,
        base: 70.0,
        solar_dip: 15.0,
    },
    Zone {
        code: "BE",
        utc_offset_hours: 1.0,
        base: 180.0,
        solar_dip: 70.0,
    },
    Zone {
        code: "DK-DK2",
        utc_offset_hours: 1.0,
        base: 160.0,
        solar_dip: 50.0,
    },
    Zone {
        code: "GB",
        utc_offset_hours: 0.0,
        base: 200.0,
        solar_dip: 70.0,
    },
    Zone {
        code: "US-CAR-DUK",
        utc_offset_hours: -5.0,
        base: 360.0,
        solar_dip: 90.0,
    },
];

/// Checks the `auth-token` header: present, non-empty, and equal to `expected` when one is set.
///
/// # Errors
///
/// The `401` answer with the genuine `{"error":"Invalid auth-token"}` body.
pub fn authorize(presented: Option<&str>, expected: Option<&str>) -> Result<(), Answer> {
    let accepted = match (presented.map(str::trim), expected) {
        (None | Some(""), _) => false,
        (Some(token), Some(expected)) => token == expected,
        (Some(_), None) => true,
    };
    if accepted {
        Ok(())
    } else {
        Err(Answer::json_error(
            StatusCode::UNAUTHORIZED,
            INVALID_TOKEN_BODY.as_bytes().to_vec(),
        ))
    }
}

/// The hour whose record is the newest (and estimated) at `now`.
pub fn current_hour(now: DateTime<Utc>) -> DateTime<Utc> {
    latest_grid_point(now, 3600, 0)
}

/// Answers `/v3/carbon-intensity/{endpoint}` (`history` or `latest`) with query `params` at
/// `now`; the token has already been checked.
pub fn carbon_intensity(endpoint: &str, params: &[(String, String)], now: DateTime<Utc>) -> Answer {
    if !matches!(endpoint, "history" | "latest") {
        return Answer::text(
            StatusCode::NOT_FOUND,
            format!("404 Not Found: edge-sim serves carbon-intensity/history and /latest, not {endpoint}\n"),
        );
    }
    let zone = params
        .iter()
        .find(|(key, _)| key == "zone")
        .map(|(_, value)| value.trim());
    let zone = match zone {
        Some(zone)
            if !zone.is_empty()
                && zone.chars().all(|c| {
                    c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-' || c == '_'
                }) =>
        {
            zone
        }
        Some(zone) => return bad_request(&format!("Zone '{zone}' is not a zone code")),
        None => return bad_request("edge-sim needs a zone parameter (lat/lon are not simulated)"),
    };
    let hour = current_hour(now);
    if endpoint == "latest" {
        return to_json(&record(zone, hour, hour));
    }
    let history = (0..HISTORY_HOURS)
        .rev()
        .map(|back| record(zone, hour - Duration::hours(back as i64), hour))
        .collect();
    to_json(&History {
        zone: zone.to_owned(),
        history,
    })
}

fn bad_request(message: &str) -> Answer {
    let body = serde_json::json!({ "error": message });
    Answer::json_error(StatusCode::BAD_REQUEST, body.to_string().into_bytes())
}

#[derive(Serialize)]
struct History {
    zone: String,
    history: Vec<Record>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    zone: String,
    carbon_intensity: i64,
    datetime: String,
    updated_at: String,
    created_at: String,
    emission_factor_type: &'static str,
    is_estimated: bool,
    estimation_method: Option<&'static str>,
}

/// The final intensity of `zone` for the hour starting at `hour`, gCO2eq/kWh (50–800).
pub fn final_intensity(zone: &str, hour: DateTime<Utc>) -> i64 {
    let (offset, base, solar_dip) = match ZONES.iter().find(|known| known.code == zone) {
        Some(known) => (known.utc_offset_hours, known.base, known.solar_dip),
        None => {
            let base = 150.0 + 450.0 * unit(zone, "base");
            (0.0, base, 0.3 * base)
        }
    };
    let seconds = epoch_seconds(hour);
    let local_hour = (f64::from(hour.hour()) + 0.5 + offset).rem_euclid(24.0);
    let solar = (std::f64::consts::TAU * (local_hour - 12.5) / 24.0)
        .cos()
        .max(0.0)
        .powf(1.5);
    let evening = (-(local_hour - 19.0).powi(2) / 4.0).exp();
    let weather = 1.0
        + 0.12 * cycle(seconds, 3.4 * DAY, phase(zone, "wind"))
        + 0.06 * cycle(seconds, 1.3 * DAY, phase(zone, "demand"));
    (base * weather - solar_dip * solar + 0.08 * base * evening)
        .clamp(50.0, 800.0)
        .round() as i64
}

/// The record of `zone` for `hour`, as served while `current` is the newest hour.
fn record(zone: &str, hour: DateTime<Utc>, current: DateTime<Utc>) -> Record {
    let stamp = |at: DateTime<Utc>| at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    let hash = stable_hash(&[zone, &hour.timestamp().to_string()]);
    let estimated = hour >= current;
    let final_value = final_intensity(zone, hour);
    let (carbon_intensity, updated_at) = if estimated {
        let bias = (hash % 31) as i64 - 15;
        (
            (final_value + bias).clamp(50, 800),
            hour - Duration::minutes(12) + Duration::milliseconds((hash >> 8) as i64 % 60_000),
        )
    } else {
        (
            final_value,
            hour + Duration::minutes(59) + Duration::milliseconds((hash >> 16) as i64 % 59_000),
        )
    };
    let created_at = hour - Duration::hours(72)
        + Duration::minutes(43)
        + Duration::milliseconds((hash >> 24) as i64 % 540_000);
    Record {
        zone: zone.to_owned(),
        carbon_intensity,
        datetime: stamp(hour),
        updated_at: stamp(updated_at),
        created_at: stamp(created_at),
        emission_factor_type: "lifecycle",
        is_estimated: estimated,
        estimation_method: estimated.then_some("TIME_SLICER_AVERAGE"),
    }
}

#[cfg(test)]
mod tests {
    use schema::CarbonIntensity;

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("a test time")
            .with_timezone(&Utc)
    }

    fn zone(code: &str) -> Vec<(String, String)> {
        vec![("zone".to_owned(), code.to_owned())]
    }

    fn parse(answer: &Answer, zone: &str) -> Vec<CarbonIntensity> {
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        let parsed = feeds::electricitymaps::parse(&answer.body, Some(zone))
            .expect("the real parser reads it");
        assert!(
            parsed.rejected.is_empty(),
            "rejected: {:?}",
            parsed.rejected
        );
        assert_eq!(parsed.duplicates, 0);
        parsed.observations
    }

    #[test]
    fn history_is_24_hours_oldest_first_with_only_the_newest_estimated() {
        let now = at("2024-03-06T19:20:00Z");
        for code in ["AU-NSW", "DE", "XX-SIM"] {
            let answer = carbon_intensity("history", &zone(code), now);
            let records = parse(&answer, code);
            assert_eq!(records.len(), HISTORY_HOURS);
            assert_eq!(records[0].observed_at, at("2024-03-05T20:00:00Z"));
            assert_eq!(records[23].observed_at, at("2024-03-06T19:00:00Z"));
            for (index, record) in records.iter().enumerate() {
                assert_eq!(record.zone, code);
                assert!(
                    (50.0..=800.0).contains(&record.carbon_intensity_g_per_kwh),
                    "{record:?}"
                );
                assert_eq!(record.carbon_intensity_g_per_kwh.fract(), 0.0);
                assert_eq!(record.is_estimated, Some(index == 23), "{record:?}");
            }
            let values: std::collections::BTreeSet<i64> = records
                .iter()
                .map(|record| record.carbon_intensity_g_per_kwh as i64)
                .collect();
            assert!(
                values.len() > 5,
                "{code}: values vary over the day: {values:?}"
            );

            let document: serde_json::Value = serde_json::from_slice(&answer.body).expect("json");
            assert_eq!(document["zone"], code);
            let newest = &document["history"][23];
            assert_eq!(newest["datetime"], "2024-03-06T19:00:00.000Z");
            assert_eq!(newest["estimationMethod"], "TIME_SLICER_AVERAGE");
            assert!(newest["updatedAt"]
                .as_str()
                .expect("updatedAt")
                .starts_with("2024-03-06T18:48:"));
            assert!(document["history"][0]["estimationMethod"].is_null());
            assert!(document["history"][0]["createdAt"]
                .as_str()
                .expect("createdAt")
                .starts_with("2024-03-02T20:"));
            assert_eq!(document["history"][0]["emissionFactorType"], "lifecycle");
        }
    }

    #[test]
    fn latest_is_the_newest_history_record() {
        let now = at("2024-11-28T15:10:00Z");
        let latest = parse(&carbon_intensity("latest", &zone("BE"), now), "BE");
        let history = parse(&carbon_intensity("history", &zone("BE"), now), "BE");
        assert_eq!(latest.len(), 1);
        assert_eq!(latest[0], history[23]);
        assert_eq!(latest[0].observed_at, at("2024-11-28T15:00:00Z"));
    }

    #[test]
    fn same_hour_is_identical_and_the_next_hour_finalizes_the_estimate() {
        let now = at("2024-03-06T19:20:00Z");
        let first = carbon_intensity("history", &zone("AU-NSW"), now);
        assert_eq!(first, carbon_intensity("history", &zone("AU-NSW"), now));
        assert_eq!(
            first,
            carbon_intensity("history", &zone("AU-NSW"), now + Duration::minutes(39))
        );

        let old = parse(&first, "AU-NSW");
        let new = parse(
            &carbon_intensity("history", &zone("AU-NSW"), now + Duration::hours(1)),
            "AU-NSW",
        );
        assert_eq!(
            new[23].observed_at,
            at("2024-03-06T20:00:00Z"),
            "a new hour"
        );
        assert_eq!(new[22].observed_at, old[23].observed_at);
        assert_eq!(
            new[22].is_estimated,
            Some(false),
            "the estimate became final"
        );
        assert_eq!(
            new[22].carbon_intensity_g_per_kwh as i64,
            final_intensity("AU-NSW", old[23].observed_at)
        );
        assert_eq!(&new[..22], &old[1..23], "older hours never change");
    }

    #[test]
    fn tokens_and_zones_are_checked() {
        let refused = authorize(None, None).expect_err("no token");
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert_eq!(refused.body, INVALID_TOKEN_BODY.as_bytes());
        assert!(authorize(Some(" "), None).is_err());
        assert!(authorize(Some("any"), None).is_ok());
        assert!(authorize(Some("wrong"), Some("right")).is_err());
        assert!(authorize(Some("right"), Some("right")).is_ok());
        let parsed = feeds::electricitymaps::parse(&refused.body, None);
        assert!(parsed.is_err(), "the parser recognises the error body");

        let now = at("2024-03-06T19:20:00Z");
        assert_eq!(
            carbon_intensity("history", &[], now).status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            carbon_intensity("history", &zone("de; drop"), now).status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            carbon_intensity("forecast", &zone("DE"), now).status,
            StatusCode::NOT_FOUND
        );
    }
}
