//! `feeds::electricitymaps::parse` (v3 carbon intensity latest/history/past-range, what
//! `ingest-carbon run` reads over HTTP), with and without the zone the poller asked for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nomadwave_fuzz::{array_len, check_parsed, json};

fuzz_target!(|data: &[u8]| {
    for zone in [None, Some("AU-NSW")] {
        if let Ok(parsed) = feeds::electricitymaps::parse(data, zone) {
            // `history`, else `data`, else the root is the one record.
            let records = json(data).map(|document| {
                array_len(&document, "history")
                    .or_else(|| array_len(&document, "data"))
                    .unwrap_or(1)
            });
            assert!(records.is_some(), "accepted a body that is not JSON");
            check_parsed(&parsed, &[feeds::electricitymaps::SOURCE], records);
        }
    }
});
