//! `edge-sim http` as the upstream of the real, unchanged pollers: a real nats-server and
//! clickhouse-server, the workspace's own binaries (`cargo build --workspace --bins` first),
//! and only the pollers' base URLs pointing at the simulator.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use edge_sim::upstream::{bom, electricitymaps, imos};
use test_support::probe::{http_get, log_tail, metric_value};
use test_support::{free_port, target_bin, ClickHouseServer, NatsServer};

const TOKEN: &str = "edge-sim-test-token";
const DATABASE: &str = "nomadwave_edge_sim_http";
const WFS_QUERY: &str = "/geoserver/ows?service=WFS&version=1.0.0&request=GetFeature&typeName=aodn%3Aaodn_wave_nrt_v2_timeseries_map&outputFormat=application%2Fjson";

/// A running `edge-sim http`, killed on drop.
struct EdgeSim {
    child: Child,
    address: SocketAddr,
    log: PathBuf,
}

impl EdgeSim {
    /// Starts `edge-sim http --listen 127.0.0.1:0 [extra]` and reads the bound address from the
    /// `listening=ADDR` line on stdout.
    fn start(log_dir: &Path, extra: &[&str]) -> EdgeSim {
        let log = log_dir.join(format!("edge-sim-http-{}.log", free_port()));
        let mut child = Command::new(target_bin("edge-sim"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .args(["http", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|error| panic!("spawn edge-sim: {error}"));
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let address = line
            .trim()
            .strip_prefix("listening=")
            .and_then(|address| address.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "edge-sim http printed {line:?} instead of listening=ADDR; log:\n{}",
                    log_tail(&log, 20)
                )
            });
        EdgeSim {
            child,
            address,
            log,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// SIGTERM, then the exit status (within 10 s).
    fn terminate(&mut self) -> ExitStatus {
        terminate(&mut self.child, &self.log)
    }
}

impl Drop for EdgeSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn terminate(child: &mut Child, log: &Path) -> ExitStatus {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "no exit within 10 s of SIGTERM; log:\n{}",
            log_tail(log, 20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A poller or the sink, killed on drop; stderr goes to a file.
struct Service {
    child: Child,
    http_port: u16,
    log: PathBuf,
}

impl Service {
    fn spawn(binary: &str, nats: &NatsServer, args: &[&str], env: &[(&str, &str)]) -> Service {
        let http_port = free_port();
        let log = nats.data_dir().join(format!("{binary}-{http_port}.log"));
        let child = Command::new(target_bin(binary))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("NATS_URL", nats.url())
            .env("RUST_LOG", "info")
            .env("HTTP_LISTEN", format!("127.0.0.1:{http_port}"))
            .envs(env.iter().copied())
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|error| panic!("spawn {binary}: {error}"));
        Service {
            child,
            http_port,
            log,
        }
    }

    fn metrics(&self) -> String {
        http_get(self.http_port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    fn tail(&self) -> String {
        format!("{}:\n{}", self.log.display(), log_tail(&self.log, 15))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One raw HTTP/1.0 exchange: (status, response head, body).
fn get(address: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status");
    (status, head, response[split + 4..].to_vec())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

/// `text` without ANSI colour sequences (the text log format colours field names).
fn without_colours(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut characters = text.chars();
    while let Some(character) = characters.next() {
        if character == '\u{1b}' {
            for inner in characters.by_ref() {
                if inner.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(character);
        }
    }
    plain
}

#[test]
fn http_mode_answers_like_the_upstreams_and_stops_on_sigterm() {
    let log_dir = std::env::temp_dir();
    let mut sim = EdgeSim::start(&log_dir, &["--token", TOKEN]);
    let address = sim.address;

    // IMOS: a GeoJSON body with an ETag, then 304 for the same validator.
    let tathra = format!("{WFS_QUERY}&CQL_FILTER=site_name%3D%27Tathra%27");
    let (status, head, body) = get(address, &tathra, &[]);
    assert_eq!(status, 200, "{head}");
    let parsed = feeds::imos::parse(&body).unwrap();
    assert!(parsed.rejected.is_empty());
    assert_eq!(parsed.observations.len(), imos::OBSERVATIONS_PER_SITE);
    assert!(parsed.observations.iter().all(|o| o.site == "tathra"));
    let etag = header(&head, "etag").expect("an ETag").to_owned();
    let (status, head, body) = get(address, &tathra, &[("If-None-Match", &etag)]);
    assert_eq!(status, 304, "{head}");
    assert!(body.is_empty());
    let (status, _, _) = get(address, &tathra, &[("If-None-Match", "\"stale\"")]);
    assert_eq!(status, 200);

    // BOM legacy and v1.
    let (status, _, body) = get(address, "/fwo/IDN60901/IDN60901.94768.json", &[]);
    assert_eq!(status, 200);
    let legacy = feeds::bom::parse(&body, None).unwrap();
    assert_eq!(legacy.observations.len(), bom::LEGACY_RECORDS);
    assert!(legacy.rejected.is_empty());
    let (status, _, body) = get(address, "/v1/locations/qvv117/observations", &[]);
    assert_eq!(status, 200);
    let v1 = feeds::bom::parse(&body, Some("qvv117")).unwrap();
    assert_eq!(v1.observations[0].site, "bom-014015");

    // Electricity Maps: the token is required and must be the configured one.
    let history = "/v3/carbon-intensity/history?zone=DE";
    for headers in [vec![], vec![("auth-token", "not-the-token")]] {
        let (status, _, body) = get(address, history, &headers);
        assert_eq!(status, 401, "{headers:?}");
        assert_eq!(body, electricitymaps::INVALID_TOKEN_BODY.as_bytes());
    }
    let (status, _, body) = get(address, history, &[("auth-token", TOKEN)]);
    assert_eq!(status, 200);
    let carbon = feeds::electricitymaps::parse(&body, Some("DE")).unwrap();
    assert_eq!(carbon.observations.len(), electricitymaps::HISTORY_HOURS);
    let (status, _, _) = get(
        address,
        "/v3/carbon-intensity/latest?zone=AU-NSW",
        &[("auth-token", TOKEN)],
    );
    assert_eq!(status, 200);

    for unknown in ["/", "/geoserver", "/v3/zones", "/fwo/IDN60901/README.txt"] {
        let (status, _, _) = get(address, unknown, &[("auth-token", TOKEN)]);
        assert_eq!(status, 404, "{unknown}");
    }

    let log = without_colours(&std::fs::read_to_string(&sim.log).unwrap_or_default());
    assert!(
        log.contains("/geoserver/ows") && log.contains("status=401"),
        "requests are logged: {log}"
    );
    assert!(!log.contains(TOKEN), "the token is never logged");

    // Another process (a restart) serves the same bytes for the same grid points.
    let mut other = EdgeSim::start(&log_dir, &[]);
    let paths = [
        WFS_QUERY.to_owned(),
        "/fwo/IDQ60701/IDQ60701.94254.json".to_owned(),
        "/v1/locations/qvv117/observations".to_owned(),
        "/v3/carbon-intensity/history?zone=AU-NSW".to_owned(),
    ];
    for path in &paths {
        let fetch_both = || {
            let token = [("auth-token", TOKEN)];
            (
                get(address, path, &token).2,
                get(other.address, path, &token).2,
            )
        };
        let (first, second) = fetch_both();
        // A grid point may appear between the two requests; then both are fetched again.
        let (first, second) = if first == second {
            (first, second)
        } else {
            fetch_both()
        };
        assert!(
            first == second && !first.is_empty(),
            "{path}: two processes disagree"
        );
    }
    assert!(other.terminate().success());
    let _ = std::fs::remove_file(&other.log);

    let status = sim.terminate();
    assert!(
        status.success(),
        "SIGTERM ends edge-sim http cleanly: {status}"
    );
    let _ = std::fs::remove_file(&sim.log);
}

fn count(clickhouse: &ClickHouseServer, table: &str, modifier: &str) -> u64 {
    clickhouse
        .try_query(&format!(
            "SELECT count() FROM {DATABASE}.{table} {modifier}"
        ))
        .and_then(|text| text.parse().ok())
        .unwrap_or(0)
}

/// Rows of a tab-separated answer, split into columns.
fn rows(clickhouse: &ClickHouseServer, sql: &str) -> Vec<Vec<String>> {
    clickhouse
        .query(sql)
        .lines()
        .map(|line| line.split('\t').map(str::to_owned).collect())
        .collect()
}

fn number(text: &str) -> f64 {
    text.parse()
        .unwrap_or_else(|_| panic!("{text:?} is not a number"))
}

/// Per site: (count, first and last observation as Unix seconds) in `table` FINAL.
fn spans(clickhouse: &ClickHouseServer, table: &str, site: &str) -> Vec<(String, u64, i64, i64)> {
    rows(
        clickhouse,
        &format!(
            "SELECT {site}, count(), toUnixTimestamp(min(observed_at)), toUnixTimestamp(max(observed_at)) \
             FROM {DATABASE}.{table} FINAL GROUP BY {site} ORDER BY {site}"
        ),
    )
    .into_iter()
    .map(|row| {
        (
            row[0].clone(),
            row[1].parse().unwrap(),
            row[2].parse().unwrap(),
            row[3].parse().unwrap(),
        )
    })
    .collect()
}

/// The distinct times of two sliding windows (at the test's start and end).
fn union(first: Vec<DateTime<Utc>>, second: Vec<DateTime<Utc>>) -> std::collections::BTreeSet<i64> {
    first
        .into_iter()
        .chain(second)
        .map(|time| time.timestamp())
        .collect()
}

#[test]
fn real_pollers_ingest_the_simulated_upstreams_once_with_plausible_values() {
    let nats = NatsServer::start("edge-sim-http");
    let clickhouse = ClickHouseServer::start("edge-sim-http");
    let mut sim = EdgeSim::start(nats.data_dir(), &["--token", TOKEN]);
    let started = Utc::now();

    let clickhouse_env = [
        ("CLICKHOUSE_URL", clickhouse.http_url()),
        ("CLICKHOUSE_DATABASE", DATABASE.to_owned()),
    ];
    let clickhouse_env: Vec<(&str, &str)> = clickhouse_env
        .iter()
        .map(|(key, value)| (*key, value.as_str()))
        .collect();
    let sink = Service::spawn(
        "sink-clickhouse",
        &nats,
        &["run", "--flush-interval", "200ms"],
        &clickhouse_env,
    );
    let poll = [
        "--interval",
        "1s",
        "--retry-min-delay",
        "100ms",
        "--max-requests-per-minute",
        "600",
    ];
    let wfs_url = sim.url("/geoserver/ows");
    let mut wave_args = vec![
        "run",
        "--wfs-url",
        &wfs_url,
        "--sites",
        "Tathra,Port Kembla,Cable Beach",
    ];
    wave_args.extend(poll);
    let wave = Service::spawn("ingest-wave", &nats, &wave_args, &[]);
    let fwo_url = sim.url("");
    let api_url = sim.url("/v1");
    let mut wx_args = vec![
        "run",
        "--stations",
        "IDN60901.94768,qvv117",
        "--fwo-url",
        &fwo_url,
        "--api-url",
        &api_url,
    ];
    wx_args.extend(poll);
    let wx = Service::spawn("ingest-wx", &nats, &wx_args, &[]);
    let carbon_url = sim.url("/v3");
    let mut carbon_args = vec!["run", "--zones", "AU-NSW,DE", "--api-url", &carbon_url];
    carbon_args.extend(poll);
    let carbon = Service::spawn(
        "ingest-carbon",
        &nats,
        &carbon_args,
        &[("ELECTRICITYMAPS_TOKEN", TOKEN)],
    );
    let services = [&sink, &wave, &wx, &carbon];
    let logs = || {
        let mut text: Vec<String> = services.iter().map(|service| service.tail()).collect();
        text.push(format!("edge-sim:\n{}", log_tail(&sim.log, 15)));
        text.join("\n\n")
    };

    // Every table fills: 3 sites × 48 half hours, 48 records + 1 latest observation, 2 × 24 hours.
    let minimum = [
        ("wave_observations", 3 * imos::OBSERVATIONS_PER_SITE as u64),
        ("weather_observations", bom::LEGACY_RECORDS as u64 + 1),
        (
            "carbon_intensity",
            2 * electricitymaps::HISTORY_HOURS as u64,
        ),
    ];
    let filled = test_support::probe::poll_until(Duration::from_secs(40), || {
        minimum
            .iter()
            .all(|(table, rows)| count(&clickhouse, table, "") >= *rows)
    });
    let counts: Vec<u64> = minimum
        .iter()
        .map(|(table, _)| count(&clickhouse, table, ""))
        .collect();
    assert!(
        filled,
        "rows {counts:?}, expected at least {minimum:?}\n{}",
        logs()
    );

    // Polls repeat every second: the simulator's ETags turn them into 304s.
    let revalidated = test_support::probe::poll_until(Duration::from_secs(15), || {
        [&wave, &wx, &carbon].iter().all(|poller| {
            metric_value(
                &poller.metrics(),
                "nomadwave_poll_http_responses_total",
                "class=\"304\"",
            ) > 0.0
        })
    });
    assert!(revalidated, "every poller got a 304\n{}", logs());
    // A few more rounds, then let the sink flush.
    std::thread::sleep(Duration::from_secs(2));
    let ended = Utc::now();
    std::thread::sleep(Duration::from_millis(800));

    for poller in [&wave, &wx, &carbon] {
        let metrics = poller.metrics();
        assert_eq!(
            metric_value(&metrics, "nomadwave_poll_records_rejected_total", ""),
            0.0,
            "the real parsers reject nothing\n{}",
            poller.tail()
        );
        assert!(
            metric_value(&metrics, "nomadwave_polls_total", "outcome=\"ok\"") > 0.0,
            "{}",
            poller.tail()
        );
    }

    // No duplicates: every observation is one row, except Electricity Maps' own revision of
    // an estimated hour when an hour boundary passed during the test.
    let hours_crossed = (electricitymaps::current_hour(ended)
        - electricitymaps::current_hour(started))
    .num_hours() as u64;
    for table in ["wave_observations", "weather_observations"] {
        assert_eq!(
            count(&clickhouse, table, ""),
            count(&clickhouse, table, "FINAL"),
            "{table}: one row per observation"
        );
    }
    let carbon_rows = count(&clickhouse, "carbon_intensity", "");
    let carbon_final = count(&clickhouse, "carbon_intensity", "FINAL");
    assert!(
        carbon_rows >= carbon_final && carbon_rows - carbon_final <= 2 * hours_crossed,
        "carbon_intensity: {carbon_rows} rows, {carbon_final} FINAL, {hours_crossed} hours crossed"
    );

    // Wave: per site, a gapless 30-minute series within the windows served.
    let wave_spans = spans(&clickhouse, "wave_observations", "site");
    let sites: Vec<&str> = wave_spans.iter().map(|span| span.0.as_str()).collect();
    assert_eq!(sites, ["cable-beach", "port-kembla", "tathra"]);
    for (site, rows, first, last) in &wave_spans {
        let name = match site.as_str() {
            "cable-beach" => "Cable Beach",
            "port-kembla" => "Port Kembla",
            _ => "Tathra",
        };
        let buoy = imos::buoy(name).unwrap();
        let served = union(
            imos::observation_times(buoy, started),
            imos::observation_times(buoy, ended),
        );
        assert!(
            served.contains(first) && served.contains(last),
            "{site}: {first}..{last} not served"
        );
        assert_eq!(
            *rows as i64,
            (last - first) / imos::STEP_SECONDS + 1,
            "{site}: gapless"
        );
        assert!(
            (imos::OBSERVATIONS_PER_SITE as u64..=served.len() as u64).contains(rows),
            "{site}: {rows} rows, {} served",
            served.len()
        );
    }
    let wave_values = rows(
        &clickhouse,
        &format!(
            "SELECT min(wave_height_m), max(wave_height_m), min(mean_period_s), max(mean_period_s), \
             min(peak_period_s), max(peak_period_s), min(wave_direction_deg), max(wave_direction_deg), \
             countIf(isNull(wave_height_m) OR isNull(peak_period_s) OR isNull(wave_direction_deg) \
                     OR isNull(lat) OR isNull(lon)), countIf(isNotNull(sea_temp_c)) \
             FROM {DATABASE}.wave_observations FINAL WHERE site != 'cable-beach'"
        ),
    );
    let wave_values: Vec<f64> = wave_values[0].iter().map(|text| number(text)).collect();
    assert!(
        wave_values[0] >= 0.3 && wave_values[1] <= 4.0,
        "heights {wave_values:?}"
    );
    assert!(
        wave_values[2] >= 4.0 && wave_values[3] <= 16.0,
        "mean periods {wave_values:?}"
    );
    assert!(
        wave_values[4] >= 4.0 && wave_values[5] <= 16.0,
        "peak periods {wave_values:?}"
    );
    assert!(
        wave_values[6] >= 0.0 && wave_values[7] < 360.0,
        "directions {wave_values:?}"
    );
    assert_eq!(
        wave_values[8], 0.0,
        "no NULL where the layer always has a value"
    );
    assert_eq!(
        wave_values[9], 0.0,
        "the map layer has no sea temperature: NULL, never 0"
    );
    let mooring = clickhouse.query(&format!(
        "SELECT countIf(isNull(wave_height_m)), countIf(isNull(mean_period_s)), \
         countIf(isNotNull(peak_period_s)), count() \
         FROM {DATABASE}.wave_observations FINAL WHERE site = 'cable-beach'"
    ));
    let mooring: Vec<&str> = mooring.split('\t').collect();
    assert!(
        mooring.iter().all(|value| *value == mooring[3]),
        "Smart Mooring: NULL height and mean period, but a peak period: {mooring:?}"
    );

    // The rows hold exactly what the simulator serves (Tathra, straight from edge-sim now).
    let tathra = format!("{WFS_QUERY}&CQL_FILTER=site_name%3D%27Tathra%27");
    let (_, _, body) = get(sim.address, &tathra, &[]);
    let served = feeds::imos::parse(&body).unwrap().observations;
    let stored: std::collections::BTreeMap<i64, f64> = rows(
        &clickhouse,
        &format!(
            "SELECT toUnixTimestamp(observed_at), wave_height_m FROM {DATABASE}.wave_observations FINAL \
             WHERE site = 'tathra'"
        ),
    )
    .into_iter()
    .map(|row| (row[0].parse().unwrap(), number(&row[1])))
    .collect();
    let compared = served
        .iter()
        .filter_map(|observation| {
            let stored = stored.get(&observation.observed_at.timestamp())?;
            assert_eq!(
                Some(*stored),
                observation.wave_height_m,
                "Tathra at {}",
                observation.observed_at
            );
            Some(())
        })
        .count();
    assert!(
        compared >= imos::OBSERVATIONS_PER_SITE - 2,
        "compared {compared} rows"
    );

    // Weather: the legacy product's gapless half hours, and the v1 station's latest observations.
    let weather_spans = spans(&clickhouse, "weather_observations", "site");
    let stations: Vec<&str> = weather_spans.iter().map(|span| span.0.as_str()).collect();
    assert_eq!(stations, ["bom-014015", "wmo-94768"]);
    let (_, v1_rows, v1_first, v1_last) = &weather_spans[0];
    let v1_served: Vec<i64> = {
        let mut at = bom::v1_observation_time(started);
        let mut times = Vec::new();
        while at <= bom::v1_observation_time(ended) {
            times.push(at.timestamp());
            at += chrono::Duration::seconds(bom::V1_STEP_SECONDS);
        }
        times
    };
    assert!(
        v1_served.contains(v1_first) && v1_served.contains(v1_last),
        "v1: {v1_first}..{v1_last} not served ({v1_served:?})"
    );
    assert!((1..=v1_served.len() as u64).contains(v1_rows));
    let (_, legacy_rows, legacy_first, legacy_last) = &weather_spans[1];
    let legacy_served = union(
        bom::legacy_record_times(started),
        bom::legacy_record_times(ended),
    );
    assert!(legacy_served.contains(legacy_first) && legacy_served.contains(legacy_last));
    assert_eq!(
        *legacy_rows as i64,
        (legacy_last - legacy_first) / bom::LEGACY_STEP_SECONDS + 1
    );
    assert!((bom::LEGACY_RECORDS as u64..=legacy_served.len() as u64).contains(legacy_rows));
    let weather_values = rows(
        &clickhouse,
        &format!(
            "SELECT site, min(air_temp_c), max(air_temp_c), min(rel_humidity_pct), max(rel_humidity_pct), \
             min(wind_speed_ms), max(wind_speed_ms), min(wind_direction_deg), max(wind_direction_deg), \
             countIf(wind_gust_ms < wind_speed_ms), \
             countIf(isNull(air_temp_c) OR isNull(rel_humidity_pct) OR isNull(wind_speed_ms) \
                     OR isNull(wind_gust_ms) OR isNull(wind_direction_deg)), \
             countIf(isNotNull(pressure_hpa)), ifNull(min(pressure_hpa), 0), ifNull(max(pressure_hpa), 0), \
             countIf(isNotNull(swell_height_m) OR isNotNull(swell_period_s)), count() \
             FROM {DATABASE}.weather_observations FINAL GROUP BY site ORDER BY site"
        ),
    );
    for row in &weather_values {
        let site = &row[0];
        let value: Vec<f64> = row[1..].iter().map(|text| number(text)).collect();
        assert!(
            value[0] >= 5.0 && value[1] <= 35.0,
            "{site} temperatures {value:?}"
        );
        assert!(
            value[2] >= 30.0 && value[3] <= 100.0,
            "{site} humidity {value:?}"
        );
        assert!(value[4] >= 0.0 && value[5] <= 15.0, "{site} wind {value:?}");
        assert!(
            value[6] >= 0.0 && value[7] < 360.0,
            "{site} wind direction {value:?}"
        );
        assert_eq!(value[8], 0.0, "{site}: gusts are never below the wind");
        assert_eq!(
            value[9], 0.0,
            "{site}: no NULL where the format has a value"
        );
        assert_eq!(
            value[13], 0.0,
            "{site}: swell is null upstream: NULL, never 0"
        );
        if site == "wmo-94768" {
            assert_eq!(
                value[10], value[14],
                "the legacy product always has pressure"
            );
            assert!(
                value[11] >= 995.0 && value[12] <= 1030.0,
                "pressure {value:?}"
            );
        } else {
            assert_eq!(value[10], 0.0, "v1 has no pressure: NULL");
        }
    }

    // Carbon: per zone, 24 hourly values (one more per hour crossed), only the newest estimated.
    let carbon_values = rows(
        &clickhouse,
        &format!(
            "SELECT zone, count(), min(carbon_intensity_g_per_kwh), max(carbon_intensity_g_per_kwh), \
             countIf(is_estimated = 1), toUnixTimestamp(max(observed_at)), \
             toUnixTimestamp(argMax(observed_at, is_estimated)), countIf(isNull(is_estimated)) \
             FROM {DATABASE}.carbon_intensity FINAL GROUP BY zone ORDER BY zone"
        ),
    );
    let zones: Vec<&str> = carbon_values.iter().map(|row| row[0].as_str()).collect();
    assert_eq!(zones, ["AU-NSW", "DE"]);
    for row in &carbon_values {
        let value: Vec<f64> = row[1..].iter().map(|text| number(text)).collect();
        assert!(
            (24.0..=24.0 + hours_crossed as f64).contains(&value[0]),
            "{row:?}"
        );
        assert!(value[1] >= 50.0 && value[2] <= 800.0, "{row:?}");
        assert_eq!(value[3], 1.0, "one estimated hour: {row:?}");
        assert_eq!(
            value[4], value[5],
            "the estimated hour is the newest: {row:?}"
        );
        assert_eq!(value[6], 0.0, "isEstimated always given: {row:?}");
        assert_eq!(value[4] as i64 % 3600, 0, "hour starts: {row:?}");
    }

    let status = sim.terminate();
    assert!(
        status.success(),
        "edge-sim http stops cleanly on SIGTERM: {status}"
    );
}
