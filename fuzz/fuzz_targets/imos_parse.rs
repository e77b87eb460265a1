//! `feeds::imos::parse` (AODN GeoServer GeoJSON, what `ingest-wave run` reads over HTTP).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nomadwave_fuzz::{array_len, check_parsed, json};

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = feeds::imos::parse(data) {
        // An accepted document is a FeatureCollection: every feature is accounted for.
        let features = json(data).and_then(|document| array_len(&document, "features"));
        assert!(
            features.is_some(),
            "accepted a document without a features array"
        );
        check_parsed(&parsed, &[feeds::imos::SOURCE], features);
    }
});
