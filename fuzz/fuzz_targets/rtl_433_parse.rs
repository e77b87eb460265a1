//! `feeds::rtl_433::parse` (the MQTT bridge's decoder for `rtl_433/<host>/events`).
//!
//! Input: one byte choosing the `TimeRule` (`% 3`: require-zone, naive-is-UTC, receive time),
//! then the payload.
#![no_main]

use chrono::DateTime;
use feeds::rtl_433::TimeRule;
use libfuzzer_sys::fuzz_target;
use nomadwave_fuzz::{check_observation, json};
use serde_json::Value;

const TOPIC: &str = "rtl_433/raspi/events";

/// The event's `time` member as text (a string, or a number's digits).
fn time_member(payload: &[u8]) -> Option<String> {
    match json(payload)?.get("time")? {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, payload)) = data.split_first() else {
        return;
    };
    let received = DateTime::from_timestamp(1_700_000_000, 0).expect("a valid time");
    let rule = match choice % 3 {
        0 => TimeRule::RequireZone,
        1 => TimeRule::NaiveIsUtc,
        _ => TimeRule::Receive(received),
    };
    match feeds::rtl_433::parse(TOPIC, payload, rule) {
        Ok(observation) => {
            check_observation(&observation);
            assert!(observation.site.starts_with("rtl433-"), "{observation:?}");
            if let TimeRule::Receive(at) = rule {
                assert_eq!(observation.observed_at, at, "the receive time must be used");
            } else if let Some(time) = time_member(payload) {
                // "No NaN or infinite value" includes the time: a non-finite "Unix time" must
                // be refused, not turned into some instant.
                let number = time.trim().parse::<f64>();
                assert!(
                    !number.is_ok_and(|seconds| !seconds.is_finite()),
                    "time {time:?} became {}",
                    observation.observed_at
                );
            }
        }
        Err(rejected) => {
            assert_eq!(rejected.location, TOPIC);
            assert!(!rejected.reason.is_empty());
        }
    }
});
