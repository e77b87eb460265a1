//! Upstream faults as an operator meets them, through the real `ingest-carbon` binary and a real
//! nats-server: 429 with Retry-After, 500, a hang, truncated JSON, an HTML page, 401, ETag/304,
//! the rate limit, and bad token configuration.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use test_support::probe::metric_value;
use test_support::NatsServer;

use crate::upstream::Seen;
use crate::{fixture, stream_events, stream_len, wait_until, Reply, Service, Upstream};

const PAST_RANGE_DK: &str = "electricitymaps/v3_carbon-intensity_past-range_DK-DK2_2024-03-18.json";
const LATEST_BE: &str = "electricitymaps/v3_carbon-intensity_latest_BE_2024-11-28.json";
const LATEST_US: &str = "electricitymaps/v3_carbon-intensity_latest_US-CAR-DUK_2025-03-29.json";
const ERROR_401: &str = "electricitymaps/v3_error_401_invalid_auth-token.json";
const ERROR_500: &str = "electricitymaps/v3_error_500_legacy_state_2017.json";

const HISTORY_PATH: &str = "/v3/carbon-intensity/history";
const LATEST_PATH: &str = "/v3/carbon-intensity/latest";

/// Short timings so faults play out in seconds; a generous rate limit unless a test sets its own.
const FAST: [&str; 10] = [
    "--interval",
    "1s",
    "--request-timeout",
    "1s",
    "--retry-min-delay",
    "100ms",
    "--retry-max-delay",
    "2s",
    "--max-requests-per-minute",
    "600",
];

const PATIENCE: Duration = Duration::from_secs(30);

/// `ingest-carbon run` arguments polling `zones` at `endpoint` of `api_url` with [`FAST`] timings.
fn carbon_args<'a>(api_url: &'a str, zones: &'a str, endpoint: &'a str) -> Vec<&'a str> {
    carbon_args_with(api_url, zones, endpoint, &FAST)
}

/// Like [`carbon_args`] with other timing flags (clap refuses a repeated flag).
fn carbon_args_with<'a>(
    api_url: &'a str,
    zones: &'a str,
    endpoint: &'a str,
    timings: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--zones",
        zones,
        "--api-url",
        api_url,
        "--endpoint",
        endpoint,
    ];
    args.extend_from_slice(timings);
    args
}

/// The log without terminal colour codes, so field names and values can be searched.
fn plain_log(service: &Service) -> String {
    strip_ansi(&service.log_text())
}

fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates, up to and including the final byte (@ to ~).
            for next in chars.by_ref() {
                if ('@'..='~').contains(&next) {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// What a failed assertion shows: the service's log and metrics page.
fn diagnostics(service: &Service) -> String {
    format!(
        "\n--- service log ---\n{}\n--- /metrics ---\n{}",
        plain_log(service),
        service.metrics()
    )
}

/// Sum of the samples of `name` whose line holds every one of `labels` (in any order).
fn metric(page: &str, name: &str, labels: &[&str]) -> f64 {
    let lines: Vec<&str> = page
        .lines()
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .collect();
    metric_value(&lines.join("\n"), name, "")
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers.get(name).and_then(|value| value.to_str().ok())
}

/// Waits for the process to exit by itself and returns its status.
fn wait_for_exit(service: &mut Service, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = service.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the process did not exit within {timeout:?}{}",
            diagnostics(service)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn faults_are_retried_and_the_right_events_arrive_once() {
    let nats = NatsServer::start("faults-retried");
    let upstream = Upstream::start();
    let good = fixture(PAST_RANGE_DK);
    let truncated = good[..good.len() / 2].to_vec();
    let html_page = Reply {
        status: 200,
        headers: vec![("content-type", "text/html; charset=utf-8".to_owned())],
        body: b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\
                <body><h1>Bad Gateway</h1><p>cloudflare</p></body></html>\n"
            .to_vec(),
        delay: Duration::ZERO,
        etag: None,
    };
    upstream.script(
        HISTORY_PATH,
        vec![
            Reply::status(429, r#"{"error":"Too many requests"}"#).with_header("retry-after", "1"),
            Reply::status(500, fixture(ERROR_500)),
            // A hang: answered long after the client's 1 s timeout.
            Reply::ok(good.clone()).after(Duration::from_secs(3)),
            Reply::ok(truncated),
            html_page,
            Reply::ok(good.clone()),
        ],
    );
    let api_url = upstream.url("/v3");
    let mut service = Service::spawn(
        "ingest-carbon",
        &nats,
        &carbon_args(&api_url, "DK-DK2", "history"),
        &[("ELECTRICITYMAPS_TOKEN", "faults-token")],
    );

    assert!(
        wait_until(PATIENCE, || stream_len(&nats, "CARBON") >= 2),
        "the 2 records of the fixture never reached CARBON{}",
        diagnostics(&service)
    );
    // Several more polls of the same good body: the cursor must not republish.
    let polls_ok = |service: &Service| {
        metric(
            &service.metrics(),
            "nomadwave_polls_total",
            &[r#"site="DK-DK2""#, r#"outcome="ok""#],
        )
    };
    assert!(
        wait_until(PATIENCE, || polls_ok(&service) >= 4.0),
        "fewer than 4 successful polls{}",
        diagnostics(&service)
    );

    let events = stream_events(&nats, "CARBON");
    assert_eq!(
        events.len(),
        2,
        "CARBON should hold exactly the fixture's 2 events after repeated polls: {events:#?}{}",
        diagnostics(&service)
    );
    let document: serde_json::Value = serde_json::from_slice(&good).unwrap();
    let records = document["data"].as_array().unwrap();
    assert_eq!(records.len(), 2, "the fixture changed");
    for (event, record) in events.iter().zip(records) {
        assert_eq!(
            event["zone"],
            record["zone"],
            "zone of {event}{}",
            diagnostics(&service)
        );
        let observed =
            chrono::DateTime::parse_from_rfc3339(event["observed_at"].as_str().unwrap()).unwrap();
        let expected =
            chrono::DateTime::parse_from_rfc3339(record["datetime"].as_str().unwrap()).unwrap();
        assert_eq!(
            observed,
            expected,
            "observed_at of {event}{}",
            diagnostics(&service)
        );
        assert_eq!(
            event["carbon_intensity_g_per_kwh"].as_f64(),
            record["carbonIntensity"].as_f64(),
            "carbon intensity of {event}{}",
            diagnostics(&service)
        );
        assert_eq!(event["source"], "electricitymaps", "source of {event}");
    }

    // Retry-After: 1 was honoured (lower bound only).
    let mut seen = upstream.seen(HISTORY_PATH);
    seen.sort_by_key(|seen| seen.at);
    let throttled = seen
        .iter()
        .position(|seen| seen.status == 429)
        .unwrap_or_else(|| panic!("no 429 was served: {seen:#?}"));
    let next = seen
        .get(throttled + 1)
        .unwrap_or_else(|| panic!("no request after the 429: {seen:#?}"));
    let gap = next.at.duration_since(seen[throttled].at);
    assert!(
        gap >= Duration::from_millis(950),
        "the request after the 429 (Retry-After: 1) came only {gap:?} later{}",
        diagnostics(&service)
    );

    let page = service.metrics();
    for class in ["429", "5xx", "timeout"] {
        let count = metric(
            &page,
            "nomadwave_poll_http_responses_total",
            &[r#"site="DK-DK2""#, &format!(r#"class="{class}""#)],
        );
        assert!(
            count >= 1.0,
            "no HTTP response of class {class} counted{}",
            diagnostics(&service)
        );
    }
    let malformed = metric(
        &page,
        "nomadwave_polls_total",
        &[r#"site="DK-DK2""#, r#"outcome="malformed_json""#],
    );
    assert!(
        malformed >= 2.0,
        "the truncated and the HTML bodies should each fail a poll as malformed_json, got {malformed}{}",
        diagnostics(&service)
    );
    let duplicates_in_stream = metric(
        &page,
        "nomadwave_poll_duplicates_total",
        &[r#"site="DK-DK2""#, r#"where="stream""#],
    );
    assert_eq!(
        duplicates_in_stream,
        0.0,
        "the cursor, not JetStream's dedupe, should stop republishing{}",
        diagnostics(&service)
    );
    let unchanged = metric(
        &page,
        "nomadwave_poll_records_skipped_total",
        &[r#"site="DK-DK2""#, r#"reason="unchanged""#],
    );
    assert!(
        unchanged >= 2.0,
        "no record skipped as unchanged{}",
        diagnostics(&service)
    );

    let log = plain_log(&service);
    assert!(
        log.contains("truncated response?"),
        "the log should say the body looks truncated{}",
        diagnostics(&service)
    );
    assert!(
        log.contains("looks like an HTML or XML page"),
        "the log should say the body looks like an HTML page{}",
        diagnostics(&service)
    );
    assert!(
        service.is_running(),
        "the poller exited after the faults{}",
        diagnostics(&service)
    );
    assert!(
        !log.contains("panicked"),
        "the poller panicked{}",
        diagnostics(&service)
    );
}

#[test]
fn unauthorized_is_not_retried_and_drops_readiness() {
    const TOKEN: &str = "tok-SECRET-4242";
    let nats = NatsServer::start("faults-unauthorized");
    let upstream = Upstream::start();
    upstream.script(
        &format!("{LATEST_PATH}?zone=BE"),
        vec![Reply::status(401, fixture(ERROR_401))],
    );
    upstream.script(
        &format!("{LATEST_PATH}?zone=US-CAR-DUK"),
        vec![Reply::ok(fixture(LATEST_US))],
    );
    let api_url = upstream.url("/v3");
    let started = Instant::now();
    let mut service = Service::spawn(
        "ingest-carbon",
        &nats,
        &carbon_args(&api_url, "BE,US-CAR-DUK", "latest"),
        &[("ELECTRICITYMAPS_TOKEN", TOKEN)],
    );

    assert!(
        wait_until(PATIENCE, || stream_events(&nats, "CARBON")
            .iter()
            .any(|event| event["zone"] == "US-CAR-DUK")),
        "the US-CAR-DUK event never arrived while BE was refused{}",
        diagnostics(&service)
    );
    let mut readiness = None;
    let refused_only_be = wait_until(PATIENCE, || {
        readiness = service.readiness();
        readiness.as_ref().is_some_and(|(status, body)| {
            *status == 503 && body.contains("BE: upstream refused") && !body.contains("US-CAR-DUK")
        })
    });
    assert!(
        refused_only_be,
        "/readyz should be 503 naming BE (and only BE), was {readiness:?}{}",
        diagnostics(&service)
    );
    assert!(
        wait_until(PATIENCE, || upstream
            .seen_query(LATEST_PATH, "zone=BE")
            .len()
            >= 3),
        "BE was not polled again on later intervals{}",
        diagnostics(&service)
    );

    // One request per poll: no retry of a 401 within a poll.
    let be_requests = upstream.seen_query(LATEST_PATH, "zone=BE");
    let elapsed = started.elapsed();
    let intervals = elapsed.as_secs_f64().floor() as usize;
    assert!(
        be_requests.len() <= intervals + 1,
        "{} BE requests in {elapsed:?} at a 1 s interval: a 401 is being retried{}",
        be_requests.len(),
        diagnostics(&service)
    );
    for pair in be_requests.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(
            gap >= Duration::from_millis(500),
            "two BE requests {gap:?} apart: a 401 is being retried{}",
            diagnostics(&service)
        );
    }

    let log = plain_log(&service);
    let refusal = log
        .lines()
        .find(|line| line.contains("poll failed") && line.contains("zone=BE"))
        .unwrap_or_else(|| panic!("no log line for the BE refusal{}", diagnostics(&service)));
    assert!(
        refusal.contains("401") && refusal.contains("ELECTRICITYMAPS_TOKEN"),
        "the refusal line should name HTTP 401 and the token settings: {refusal}{}",
        diagnostics(&service)
    );

    let page = service.metrics();
    let refused = metric(
        &page,
        "nomadwave_poll_http_responses_total",
        &[r#"site="BE""#, r#"class="4xx""#],
    );
    assert!(
        refused >= 1.0,
        "no 4xx counted for BE{}",
        diagnostics(&service)
    );
    assert!(
        !log.contains(TOKEN),
        "the token leaked into the log{}",
        diagnostics(&service)
    );
    assert!(
        !page.contains(TOKEN),
        "the token leaked into /metrics:\n{page}"
    );

    let all = upstream.seen_all();
    assert!(!all.is_empty());
    for seen in &all {
        assert_eq!(
            header(seen, "auth-token"),
            Some(TOKEN),
            "a request without the token: {seen:?}"
        );
        let agent = header(seen, "user-agent").unwrap_or_default();
        assert!(
            agent.starts_with("NomadWave-ingest/"),
            "User-Agent {agent:?} is not NomadWave's: {seen:?}"
        );
    }
    assert!(
        service.is_running(),
        "the poller exited{}",
        diagnostics(&service)
    );
    assert!(
        !log.contains("panicked"),
        "the poller panicked{}",
        diagnostics(&service)
    );
}

#[test]
fn conditional_requests_use_etag() {
    let nats = NatsServer::start("faults-etag");
    let upstream = Upstream::start();
    upstream.script(
        LATEST_PATH,
        vec![Reply::ok(fixture(LATEST_BE)).with_etag("\"v1\"")],
    );
    let api_url = upstream.url("/v3");
    let mut service = Service::spawn(
        "ingest-carbon",
        &nats,
        &carbon_args(&api_url, "BE", "latest"),
        &[("ELECTRICITYMAPS_TOKEN", "etag-token")],
    );

    let not_modified = |service: &Service| {
        metric(
            &service.metrics(),
            "nomadwave_polls_total",
            &[r#"site="BE""#, r#"outcome="not_modified""#],
        )
    };
    assert!(
        wait_until(PATIENCE, || not_modified(&service) >= 2.0),
        "no poll ended not_modified{}",
        diagnostics(&service)
    );
    let seen = upstream.seen(LATEST_PATH);
    assert_eq!(
        header(&seen[0], "if-none-match"),
        None,
        "the first request cannot be conditional{}",
        diagnostics(&service)
    );
    assert_eq!(seen[0].status, 200);
    for later in &seen[1..] {
        assert_eq!(
            header(later, "if-none-match"),
            Some("\"v1\""),
            "a later request did not send the ETag back: {later:?}{}",
            diagnostics(&service)
        );
        assert_eq!(
            later.status, 304,
            "the server should have answered 304: {later:?}"
        );
    }
    assert!(
        upstream
            .seen(LATEST_PATH)
            .iter()
            .filter(|seen| seen.status == 304)
            .count()
            >= 2,
        "fewer than two 304s served{}",
        diagnostics(&service)
    );
    assert_eq!(
        stream_len(&nats, "CARBON"),
        1,
        "CARBON should hold the one BE event{}",
        diagnostics(&service)
    );
    let mut readiness = None;
    assert!(
        wait_until(PATIENCE, || {
            readiness = service.readiness();
            readiness.as_ref().is_some_and(|(status, _)| *status == 200)
        }),
        "/readyz is not 200 while polls succeed: {readiness:?}{}",
        diagnostics(&service)
    );
    let log = plain_log(&service);
    assert!(
        service.is_running(),
        "the poller exited{}",
        diagnostics(&service)
    );
    assert!(
        !log.contains("panicked"),
        "the poller panicked{}",
        diagnostics(&service)
    );
}

#[test]
fn rate_limit_spaces_requests() {
    const ZONES: [&str; 4] = ["BE", "DE", "FR", "NL"];
    let nats = NatsServer::start("faults-rate-limit");
    let upstream = Upstream::start();
    // Every zone gets the BE body: only the timing of requests matters here.
    upstream.script(LATEST_PATH, vec![Reply::ok(fixture(LATEST_BE))]);
    let api_url = upstream.url("/v3");
    let zones = ZONES.join(",");
    let timings = [
        "--interval",
        "1s",
        "--request-timeout",
        "1s",
        "--retry-min-delay",
        "100ms",
        "--retry-max-delay",
        "2s",
        "--max-requests-per-minute",
        "60",
    ];
    let mut service = Service::spawn(
        "ingest-carbon",
        &nats,
        &carbon_args_with(&api_url, &zones, "latest", &timings),
        &[("ELECTRICITYMAPS_TOKEN", "rate-token")],
    );

    let every_zone_polled = |seen: &[Seen]| {
        ZONES
            .iter()
            .all(|zone| seen.iter().any(|seen| seen.query == format!("zone={zone}")))
    };
    assert!(
        wait_until(Duration::from_secs(40), || {
            let seen = upstream.seen(LATEST_PATH);
            seen.len() >= 8 && every_zone_polled(&seen)
        }),
        "8 requests covering all 4 zones did not arrive: {:?}{}",
        upstream
            .seen(LATEST_PATH)
            .iter()
            .map(|seen| seen.query.clone())
            .collect::<Vec<_>>(),
        diagnostics(&service)
    );
    let mut seen = upstream.seen(LATEST_PATH);
    seen.sort_by_key(|seen| seen.at);
    let start = seen[0].at;
    let timeline: Vec<String> = seen
        .iter()
        .map(|seen| {
            format!(
                "{:>8.3}s {}",
                seen.at.duration_since(start).as_secs_f64(),
                seen.query
            )
        })
        .collect();
    for pair in seen.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(
            gap >= Duration::from_millis(900),
            "two requests {gap:?} apart at 60/min:\n{}{}",
            timeline.join("\n"),
            diagnostics(&service)
        );
    }
    assert!(
        service.is_running(),
        "the poller exited{}",
        diagnostics(&service)
    );
}

#[test]
fn token_file_is_read_and_bad_config_exits_64() {
    let nats = NatsServer::start("faults-token-config");
    let upstream = Upstream::start();
    upstream.script(LATEST_PATH, vec![Reply::ok(fixture(LATEST_BE))]);
    let api_url = upstream.url("/v3");
    let args = carbon_args(&api_url, "BE", "latest");

    // A token file as a Vault template renders it: the value and a newline.
    let token_file = nats.data_dir().join("electricitymaps-token");
    std::fs::write(&token_file, "tok-FILE-5150\n").unwrap();
    let token_file_text = token_file.display().to_string();
    let mut service = Service::spawn(
        "ingest-carbon",
        &nats,
        &args,
        &[("ELECTRICITYMAPS_TOKEN_FILE", token_file_text.as_str())],
    );
    assert!(
        wait_until(PATIENCE, || !upstream.seen(LATEST_PATH).is_empty()),
        "no request with the file's token{}",
        diagnostics(&service)
    );
    for seen in upstream.seen(LATEST_PATH) {
        assert_eq!(
            header(&seen, "auth-token"),
            Some("tok-FILE-5150"),
            "the token file's value should be sent trimmed: {seen:?}{}",
            diagnostics(&service)
        );
    }
    assert!(
        service.is_running(),
        "the poller exited{}",
        diagnostics(&service)
    );
    assert!(
        !plain_log(&service).contains("tok-FILE-5150"),
        "the token leaked into the log{}",
        diagnostics(&service)
    );
    service.terminate();

    // No token at all.
    let mut service = Service::spawn("ingest-carbon", &nats, &args, &[]);
    let status = wait_for_exit(&mut service, Duration::from_secs(20));
    assert_eq!(
        status.code(),
        Some(64),
        "exit status without a token{}",
        diagnostics(&service)
    );
    let log = plain_log(&service);
    let lines: Vec<&str> = log.lines().filter(|line| !line.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "one error line expected{}",
        diagnostics(&service)
    );
    assert!(
        lines[0].contains("ELECTRICITYMAPS_TOKEN"),
        "the error should name ELECTRICITYMAPS_TOKEN: {}",
        lines[0]
    );

    // A token file that does not exist.
    let missing = nats.data_dir().join("no-such-token");
    let missing_text = missing.display().to_string();
    let mut service = Service::spawn(
        "ingest-carbon",
        &nats,
        &args,
        &[("ELECTRICITYMAPS_TOKEN_FILE", missing_text.as_str())],
    );
    let status = wait_for_exit(&mut service, Duration::from_secs(20));
    assert_eq!(
        status.code(),
        Some(64),
        "exit status with a missing token file{}",
        diagnostics(&service)
    );
    let log = plain_log(&service);
    let lines: Vec<&str> = log.lines().filter(|line| !line.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "one error line expected{}",
        diagnostics(&service)
    );
    assert!(
        lines[0].contains("ELECTRICITYMAPS_TOKEN_FILE") && lines[0].contains(&missing_text),
        "the error should name ELECTRICITYMAPS_TOKEN_FILE and the path: {}",
        lines[0]
    );
}
