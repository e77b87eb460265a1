//! `feeds::pi_buoy::parse` (the MQTT bridge's decoder for `nomadwave/buoy/<site>/wave`).
//!
//! Input: the payload, published on `nomadwave/buoy/pi-001/wave`; or, when a NUL byte appears
//! in the first 256 bytes, `<topic>\0<payload>` so the topic is fuzzed too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nomadwave_fuzz::check_observation;

const TOPIC: &str = "nomadwave/buoy/pi-001/wave";

fuzz_target!(|data: &[u8]| {
    let (topic, payload) = match data.iter().take(256).position(|&byte| byte == 0) {
        Some(at) => (
            String::from_utf8_lossy(&data[..at]).into_owned(),
            &data[at + 1..],
        ),
        None => (TOPIC.to_owned(), data),
    };
    match feeds::pi_buoy::parse(&topic, payload) {
        Ok(observation) => {
            check_observation(&observation);
            assert_eq!(
                Some(observation.site.as_str()),
                feeds::pi_buoy::topic_site(&topic),
                "the site must be the topic's"
            );
        }
        Err(rejected) => {
            assert_eq!(
                rejected.location, topic,
                "a rejection is located at its topic"
            );
            assert!(!rejected.reason.is_empty());
        }
    }
});
