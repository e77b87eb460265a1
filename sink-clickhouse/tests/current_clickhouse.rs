//! The sink on a current ClickHouse: 26.9, run in-process by chdb (PyPI `chdb-core`) behind a
//! small HTTP front, with a real nats-server and the real binaries.
//!
//! Debian ships ClickHouse 18.16 only; `tests/it` runs on it. Here the sink's DDL, its
//! migrations and every query it sends (version, watermark, redelivery check, incarnations,
//! verification) run on the 26.9 engine, and the deduplication settings the sink relies on
//! are checked as it assumes them. `cargo xtask install` puts chdb into `.data/venv`; without
//! it these tests fail, naming that command.
//!
//! Layout: `current_clickhouse/chdb_http.py` is the HTTP front (what it supports is in its
//! docstring); `current_clickhouse/shim.rs` starts it as a child process.

// Test code: a failed unwrap is a failed test, with the value in the message.
#![allow(clippy::unwrap_used)]

#[path = "current_clickhouse/shim.rs"]
mod shim;

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shim::{ChdbServer, CLICKHOUSE_RELEASE};
use test_support::{free_port, target_bin, NatsServer};

const TABLE: &str = "wave_observations";

/// Events the pipeline test publishes.
const EVENTS: u64 = 2000;

/// The wave table as the sink created it before `stream_incarnation` existed and on 18.16,
/// which has no deduplication window (from `table_ddl` at commit fe017e5).
const OLD_WAVE_TABLE: &str = "CREATE TABLE {database}.wave_observations (\
     site String, observed_at DateTime, source String, \
     event_id String, schema_version UInt16, ingested_at DateTime, \
     wave_height_m Nullable(Float64), wave_height_max_m Nullable(Float64), \
     peak_period_s Nullable(Float64), mean_period_s Nullable(Float64), \
     wave_direction_deg Nullable(Float64), sea_temp_c Nullable(Float64), \
     lat Nullable(Float64), lon Nullable(Float64), stream_seq UInt64) \
     ENGINE = ReplacingMergeTree(stream_seq) \
     PARTITION BY toYYYYMM(observed_at) \
     ORDER BY (site, observed_at, source)";

#[test]
fn the_sink_writes_and_replays_on_clickhouse_26_9() {
    let started = Instant::now();
    let setup = Setup::start("current-clickhouse-pipeline", true);
    let (code, _, stderr) = setup.run_binary("sink-clickhouse", &["migrate"]);
    assert_eq!(code, 0, "migrate failed on {}: {stderr}", setup.version());
    let create = setup.clickhouse.query(&format!(
        "SELECT create_table_query FROM system.tables WHERE database = '{}' AND name = '{TABLE}'",
        setup.database
    ));
    assert!(
        create.contains("non_replicated_deduplication_window = 1000"),
        "the 26.9 table keeps a deduplication window: {create}"
    );
    let show = setup
        .clickhouse
        .query(&format!("SHOW CREATE TABLE {}.{TABLE}", setup.database));
    assert!(
        show.contains("stream_incarnation") && show.contains("non_replicated_deduplication_window"),
        "{show}"
    );
    println!("SHOW CREATE TABLE on {}: {show}", setup.version());

    let mut sink = setup.spawn_sink();
    let publish_started = Instant::now();
    let report = setup.publish_wave(EVENTS);
    assert_eq!(report["distinct_valid"], EVENTS, "{report:?}");
    let rows = setup.wait_for_rows(&mut sink, EVENTS, Duration::from_secs(120));
    assert_eq!(
        rows,
        EVENTS,
        "the sink stored {rows} of {EVENTS} rows on {}; its log:\n{}",
        setup.version(),
        sink.log_text()
    );
    println!(
        "{EVENTS} events published and stored in {:?}",
        publish_started.elapsed()
    );
    assert_eq!(setup.count(&setup.database, ""), EVENTS);
    assert_eq!(setup.count(&setup.database, "FINAL"), EVENTS);
    assert_eq!(
        setup.clickhouse.query(&format!(
            "SELECT uniqExact(stream_seq), min(stream_seq), max(stream_seq), \
             countIf(stream_incarnation = 0) FROM {}.{TABLE}",
            setup.database
        )),
        format!("{EVENTS}\t1\t{EVENTS}\t0")
    );
    let log = sink.log_text();
    let connected = log
        .lines()
        .find(|line| line.contains("connected to clickhouse"))
        .unwrap_or_else(|| panic!("no version line in the sink's log:\n{log}"));
    assert!(
        connected.contains(&format!("version={CLICKHOUSE_RELEASE}"))
            && connected.contains("validation=true"),
        "{connected}"
    );
    println!("sink: {connected}");
    assert!(
        !log.contains("ERROR") && !log.contains("retry"),
        "the sink ran without errors or retries on {}:\n{log}",
        setup.version()
    );
    drop(sink);
    let front_log = setup.clickhouse.log_text();
    let insert = front_log
        .lines()
        .find(|line| line.contains("INSERT INTO"))
        .unwrap_or_else(|| panic!("no INSERT in the front's log:\n{front_log}"));
    assert!(
        insert.contains("async_insert=0") && insert.contains("insert_deduplication_token="),
        "the sink's INSERTs switch async_insert off and carry a token on 26.9: {insert}"
    );
    println!("front: {insert}");

    // A replay into a fresh database verifies; one into the live tables writes nothing.
    let fresh = format!("{}_replayed", setup.database);
    let report = setup.replay(&["--database", &fresh]);
    assert_eq!(report["verified"], "true", "{report:?}");
    assert_eq!(report["written"], EVENTS.to_string(), "{report:?}");
    assert_eq!(setup.count(&fresh, "FINAL"), EVENTS);
    let fingerprint = |database: &str| {
        setup.clickhouse.query(&format!(
            "SELECT count(), sum(cityHash64(site, toUnixTimestamp(observed_at), source)) \
             FROM {database}.{TABLE}"
        ))
    };
    assert_eq!(fingerprint(&fresh), fingerprint(&setup.database));
    let report = setup.replay(&[]);
    assert_eq!(report["verified"], "true", "{report:?}");
    assert_eq!(report["written"], "0", "{report:?}");
    assert_eq!(report["already_present"], EVENTS.to_string(), "{report:?}");
    assert_eq!(setup.count(&setup.database, "FINAL"), EVENTS);
    println!(
        "pipeline test on {} took {:?}",
        setup.version(),
        started.elapsed()
    );
}

#[test]
fn migrate_upgrades_a_table_of_the_old_layout_on_clickhouse_26_9() {
    let setup = Setup::start("current-clickhouse-migrate", false);
    let database = &setup.database;
    setup
        .clickhouse
        .query(&format!("CREATE DATABASE {database}"));
    setup
        .clickhouse
        .query(&OLD_WAVE_TABLE.replace("{database}", database));
    setup.clickhouse.query(&format!(
        "INSERT INTO {database}.{TABLE} (site, observed_at, source, event_id, schema_version, \
         ingested_at, stream_seq) VALUES ('old-site', '2024-01-01 00:00:00', 'buoy', 'e-1', 1, \
         '2024-01-01 00:00:05', 7)"
    ));

    let (code, _, stderr) = setup.run_binary("sink-clickhouse", &["migrate"]);
    assert_eq!(code, 0, "migrate failed on {}: {stderr}", setup.version());
    assert!(
        stderr.contains("table upgraded"),
        "migrate logs what it changed:\n{stderr}"
    );
    let engine_full = setup.clickhouse.query(&format!(
        "SELECT engine_full FROM system.tables WHERE database = '{database}' AND name = '{TABLE}'"
    ));
    assert!(
        engine_full.contains("non_replicated_deduplication_window = 1000"),
        "{engine_full}"
    );
    assert_eq!(
        setup.clickhouse.query(&format!(
            "SELECT type FROM system.columns WHERE database = '{database}' AND table = '{TABLE}' \
             AND name = 'stream_incarnation'"
        )),
        "UInt64"
    );
    assert_eq!(
        setup.clickhouse.query(&format!(
            "SELECT site, stream_incarnation, stream_seq FROM {database}.{TABLE}"
        )),
        "old-site\t0\t7",
        "the old row is kept, as incarnation 0"
    );
    println!(
        "upgraded on {}: {}",
        setup.version(),
        setup
            .clickhouse
            .query(&format!("SHOW CREATE TABLE {database}.{TABLE}"))
    );

    // A second run finds nothing to change.
    let (code, _, stderr) = setup.run_binary("sink-clickhouse", &["migrate"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("table upgraded"), "{stderr}");
}

#[test]
fn deduplication_settings_behave_as_the_sink_assumes_on_clickhouse_26_9() {
    let clickhouse = ChdbServer::start("current-clickhouse-dedupe");
    assert!(
        clickhouse.version().starts_with(CLICKHOUSE_RELEASE),
        "chdb runs {}, not {CLICKHOUSE_RELEASE}",
        clickhouse.version()
    );
    let async_insert = clickhouse
        .query("SELECT value, default, changed FROM system.settings WHERE name = 'async_insert'");
    println!(
        "async_insert on {} (value, default, changed): {async_insert}",
        clickhouse.version()
    );
    assert_eq!(
        async_insert, "1\t1\t0",
        "the sink assumes async_insert is on by default from 26.3, so it sends async_insert=0"
    );
    println!(
        "related defaults: {}",
        clickhouse.query(
            "SELECT groupArray(name || '=' || value) FROM system.settings WHERE name IN \
                 ('insert_deduplicate', 'async_insert_deduplicate', 'wait_for_async_insert')"
        )
    );

    clickhouse.query("CREATE DATABASE dedupe");
    clickhouse.query(
        "CREATE TABLE dedupe.t (seq UInt64, site String) ENGINE = ReplacingMergeTree(seq) \
         ORDER BY site SETTINGS non_replicated_deduplication_window = 1000",
    );
    // As the sink sends it: the statement in the URL, the token and async_insert=0 as URL
    // settings (the HTTP front applies them to the one statement).
    let sink_settings = [
        ("query_id", "batch-1"),
        ("insert_deduplication_token", "wave-batch-1"),
        ("async_insert", "0"),
    ];
    for _ in 0..2 {
        clickhouse
            .query_with(
                &sink_settings,
                "INSERT INTO dedupe.t VALUES (1, 'a'), (2, 'b')",
            )
            .unwrap();
    }
    assert_eq!(
        clickhouse.query("SELECT count() FROM dedupe.t"),
        "2",
        "the same INSERT with the same token twice writes once"
    );
    // The same rows under another token are a new block, written again (FINAL collapses them).
    clickhouse
        .query_with(
            &[
                ("insert_deduplication_token", "wave-batch-2"),
                ("async_insert", "0"),
            ],
            "INSERT INTO dedupe.t VALUES (1, 'a'), (2, 'b')",
        )
        .unwrap();
    assert_eq!(clickhouse.query("SELECT count() FROM dedupe.t"), "4");
    assert_eq!(clickhouse.query("SELECT count() FROM dedupe.t FINAL"), "2");
    // In SQL, with the settings in the statement itself.
    for _ in 0..2 {
        clickhouse.query(
            "INSERT INTO dedupe.t SETTINGS insert_deduplication_token = 'wave-batch-3', \
             async_insert = 0 VALUES (3, 'c')",
        );
    }
    assert_eq!(clickhouse.query("SELECT count() FROM dedupe.t"), "5");
    // The table setting is what makes the token count on a non-replicated table.
    clickhouse.query("CREATE TABLE dedupe.no_window (seq UInt64) ENGINE = MergeTree ORDER BY seq");
    for _ in 0..2 {
        clickhouse
            .query_with(&sink_settings, "INSERT INTO dedupe.no_window VALUES (1)")
            .unwrap();
    }
    assert_eq!(
        clickhouse.query("SELECT count() FROM dedupe.no_window"),
        "2",
        "without non_replicated_deduplication_window the token is ignored"
    );
    // The settings really reach the engine: an unknown one fails as on a server.
    let error = clickhouse
        .query_with(&[("no_such_setting", "1")], "SELECT 1")
        .unwrap_err();
    assert!(error.starts_with("Code: 115."), "{error}");
}

/// The servers of one test and the settings every binary gets.
struct Setup {
    nats: Option<NatsServer>,
    clickhouse: ChdbServer,
    database: String,
}

/// A running `sink-clickhouse run` with its log in a file, killed on drop.
struct Sink {
    child: Child,
    log: std::path::PathBuf,
}

impl Sink {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Setup {
    fn start(name: &str, with_nats: bool) -> Setup {
        let clickhouse = ChdbServer::start(name);
        assert!(
            clickhouse.version().starts_with(CLICKHOUSE_RELEASE),
            "chdb runs {}, not {CLICKHOUSE_RELEASE}",
            clickhouse.version()
        );
        Setup {
            nats: with_nats.then(|| NatsServer::start(name)),
            clickhouse,
            database: format!("nomadwave_{}", name.replace('-', "_")),
        }
    }

    fn version(&self) -> &str {
        self.clickhouse.version()
    }

    fn env(&self, command: &mut Command) {
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CLICKHOUSE_URL", self.clickhouse.http_url())
            .env("CLICKHOUSE_DATABASE", &self.database)
            .env("NOMADWAVE_DUPLICATE_WINDOW", "2m")
            .env("SINK_LEASE_TTL", "2s")
            .env("RUST_LOG", "info");
        if let Some(nats) = &self.nats {
            command.env("NATS_URL", nats.url());
        }
    }

    fn spawn_sink(&self) -> Sink {
        let log = self.clickhouse.data_dir().join("sink.log");
        let mut command = Command::new(target_bin("sink-clickhouse"));
        self.env(&mut command);
        command
            .arg("run")
            .args(["--http-listen", &format!("127.0.0.1:{}", free_port())])
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap());
        let child = command.spawn().expect("spawn sink-clickhouse");
        Sink { child, log }
    }

    /// Runs a workspace binary to completion; returns (exit code, stdout, stderr).
    fn run_binary(&self, binary: &str, args: &[&str]) -> (i32, String, String) {
        let mut command = Command::new(target_bin(binary));
        self.env(&mut command);
        let output = command.args(args).output().expect("run binary");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// `edge-sim publish` of `count` wave events; its `key=value` report.
    fn publish_wave(&self, count: u64) -> HashMap<String, u64> {
        let mut command = Command::new(target_bin("edge-sim"));
        self.env(&mut command);
        let mut child = command
            .args(["publish", "--kind", "wave", "--count", &count.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn edge-sim");
        let mut stdout = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "edge-sim publish failed: {status}; {stdout}"
        );
        stdout
            .split_whitespace()
            .filter_map(|pair| pair.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.parse().unwrap()))
            .collect()
    }

    /// `sink-clickhouse replay --stream WAVE` with `extra`; its `key=value` report.
    fn replay(&self, extra: &[&str]) -> HashMap<String, String> {
        let mut args = vec!["replay", "--stream", "WAVE", "--progress", "log"];
        args.extend_from_slice(extra);
        let (code, stdout, stderr) = self.run_binary("sink-clickhouse", &args);
        assert_eq!(
            code,
            0,
            "replay {extra:?} failed on {}: {stderr}\nfront log:\n{}",
            self.version(),
            self.clickhouse.log_text()
        );
        stdout
            .split_whitespace()
            .filter_map(|pair| pair.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect()
    }

    /// `count()` of the wave table in `database`, with `modifier` (`FINAL` or nothing).
    fn count(&self, database: &str, modifier: &str) -> u64 {
        self.clickhouse
            .query(&format!(
                "SELECT count() FROM {database}.{TABLE} {modifier}"
            ))
            .parse()
            .unwrap()
    }

    /// Polls until the live wave table holds `expected` rows, `timeout` passes or the sink
    /// exits (a permanent error stops it: no point waiting for rows then).
    fn wait_for_rows(&self, sink: &mut Sink, expected: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let count = self
                .clickhouse
                .query_with(
                    &[],
                    &format!("SELECT count() FROM {}.{TABLE}", self.database),
                )
                .ok()
                .and_then(|text| text.parse().ok())
                .unwrap_or(0);
            let exited = sink.child.try_wait().unwrap().is_some();
            if count >= expected || exited || Instant::now() > deadline {
                return count;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
