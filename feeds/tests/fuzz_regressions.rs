//! Inputs the fuzz targets (`fuzz/`, see `fuzz/README.md`) showed to break a parser, kept in
//! `tests/fuzz-regressions/<target>-<what>` and fed to the same parser the same way the target
//! does. Every one must come back as `Ok` or `Err`, without a panic and quickly; the findings
//! also have their own test saying what the right answer is.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::DateTime;
use feeds::rtl_433::TimeRule;

/// Far above what any of these inputs takes in a debug build; a hang shows up as a failure.
const BOUND: Duration = Duration::from_secs(2);

fn regressions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions")
}

fn read(name: &str) -> Vec<u8> {
    let path = regressions_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

fn receive_time() -> DateTime<chrono::Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default()
}

/// `rtl_433_parse` input: one byte choosing the time rule, then the payload.
fn rtl_433_input(data: &[u8]) -> Option<(TimeRule, &[u8])> {
    let (&choice, payload) = data.split_first()?;
    let rule = match choice % 3 {
        0 => TimeRule::RequireZone,
        1 => TimeRule::NaiveIsUtc,
        _ => TimeRule::Receive(receive_time()),
    };
    Some((rule, payload))
}

/// Runs one checked-in input through the parser its name prefix names, as its fuzz target does.
fn run(target: &str, data: &[u8]) {
    match target {
        "imos_parse" => drop(feeds::imos::parse(data)),
        "bom_parse" => {
            drop(feeds::bom::parse(data, None));
            drop(feeds::bom::parse(data, Some("r3dp5b")));
        }
        "electricitymaps_parse" => {
            drop(feeds::electricitymaps::parse(data, None));
            drop(feeds::electricitymaps::parse(data, Some("AU-NSW")));
        }
        "pi_buoy_parse" => {
            let (topic, payload) = match data.iter().take(256).position(|&byte| byte == 0) {
                Some(at) => (
                    String::from_utf8_lossy(&data[..at]).into_owned(),
                    &data[at + 1..],
                ),
                None => ("nomadwave/buoy/pi-001/wave".to_owned(), data),
            };
            drop(feeds::pi_buoy::parse(&topic, payload));
        }
        "rtl_433_parse" => {
            if let Some((rule, payload)) = rtl_433_input(data) {
                drop(feeds::rtl_433::parse("rtl_433/raspi/events", payload, rule));
            }
        }
        other => panic!("no parser for fuzz target {other:?}"),
    }
}

#[test]
fn every_checked_in_input_returns_without_panic_and_quickly() {
    let mut names: Vec<String> = std::fs::read_dir(regressions_dir())
        .unwrap_or_else(|error| panic!("listing tests/fuzz-regressions: {error}"))
        .map(|entry| {
            entry
                .unwrap_or_else(|error| panic!("listing tests/fuzz-regressions: {error}"))
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    assert!(!names.is_empty(), "tests/fuzz-regressions is empty");
    for name in names {
        let (target, _) = name
            .split_once('-')
            .unwrap_or_else(|| panic!("{name}: expected <target>-<what>"));
        let data = read(&name);
        let started = Instant::now();
        run(target, &data);
        let took = started.elapsed();
        assert!(took < BOUND, "{name} took {took:?}");
    }
}

/// `"time":"NaN"` is not a Unix time. It used to become 1970-01-01T00:00:00Z (NaN cast to 0),
/// an observation 50 years in the past under a valid-looking event id.
#[test]
fn rtl_433_nan_time_is_refused_not_read_as_1970() {
    let data = read("rtl_433_parse-nan-time");
    let (rule, payload) = rtl_433_input(&data).unwrap_or_else(|| panic!("empty input"));
    assert_eq!(rule, TimeRule::RequireZone);
    for rule in [TimeRule::RequireZone, TimeRule::NaiveIsUtc] {
        let error = feeds::rtl_433::parse("rtl_433/raspi/events", payload, rule)
            .expect_err("NaN is no time");
        assert_eq!(error.reason, "bad_time", "{error}");
        assert!(error.detail.contains("NaN"), "{error}");
    }
    for text in ["nan", "-NaN", "inf", "-infinity", "+Infinity"] {
        let payload = format!(r#"{{"time":"{text}","model":"X","id":1,"humidity":5}}"#);
        let error = feeds::rtl_433::parse("rtl_433/raspi/events", payload.as_bytes(), rule)
            .expect_err("not a time");
        assert_eq!(error.reason, "bad_time", "{text}: {error}");
    }
    // The receive-time rule ignores `time`, whatever it holds.
    let observation = feeds::rtl_433::parse(
        "rtl_433/raspi/events",
        payload,
        TimeRule::Receive(receive_time()),
    )
    .expect("receive time");
    assert_eq!(observation.observed_at, receive_time());
}
