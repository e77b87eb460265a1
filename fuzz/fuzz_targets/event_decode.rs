//! `schema::Event::<O>::decode`, the sink's decoder of every JetStream message, for all three
//! kinds. An accepted event must validate, be of its stream's kind and version, and survive an
//! encode/decode round trip unchanged (what replay and dead-letter re-publishing rely on).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nomadwave_fuzz::{check_observation, Numbers};
use schema::{CarbonIntensity, Event, WaveObservation, WeatherObservation, SCHEMA_VERSION};

fn decode<O: Numbers>(data: &[u8]) {
    match Event::<O>::decode(data) {
        Ok(event) => {
            check_observation(&event.observation);
            assert_eq!(event.kind, O::KIND);
            assert_eq!(event.schema_version, SCHEMA_VERSION);
            let again = Event::<O>::decode(&event.encode())
                .unwrap_or_else(|error| panic!("re-encoded event does not decode: {error}"));
            assert_eq!(again, event, "encode/decode changed the event");
        }
        Err(error) => assert!(!error.reason().is_empty()),
    }
}

fuzz_target!(|data: &[u8]| {
    decode::<WaveObservation>(data);
    decode::<WeatherObservation>(data);
    decode::<CarbonIntensity>(data);
});
