//! `feeds::bom::parse` (legacy `/fwo/` products and v1 API observations, what `ingest-wx run`
//! reads over HTTP), with and without the fallback site the poller passes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nomadwave_fuzz::{array_len, check_parsed, json};

fuzz_target!(|data: &[u8]| {
    for fallback in [None, Some("r3dp5b")] {
        if let Ok(parsed) = feeds::bom::parse(data, fallback) {
            // A legacy product yields one result per `observations.data` record, a v1 document
            // exactly one.
            let records = json(data).and_then(|document| match document.get("observations") {
                Some(observations) => array_len(observations, "data"),
                None => Some(1),
            });
            assert!(records.is_some(), "accepted a document without records");
            check_parsed(
                &parsed,
                &[feeds::bom::SOURCE_FWO, feeds::bom::SOURCE_API],
                records,
            );
        }
    }
});
