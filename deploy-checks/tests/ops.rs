//! Checks of the operations kit in `ops/`: the Grafana dashboard and the Prometheus alert rules.
//!
//! Both parse (JSON, YAML) and have the shape their tools expect; the rules pass `promtool check rules` and the
//! scenarios of `ops/prometheus/tests.yml` (`promtool test rules`), which show every alert firing in the outage it
//! exists for; and every `nomadwave_*` metric they use is one the
//! binaries really serve: a real nats-server, clickhouse-server and mosquitto, the real `sink-clickhouse run`,
//! `ingest-wx run` (against `edge-sim http`, plus one station on a closed port so its retries show) and
//! `ingest-wave bridge` (fed by `edge-sim mqtt`), with wave events published by `edge-sim publish` (some malformed,
//! so dead letters show), and each name is looked up on their `/metrics` pages.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use deploy_checks::assert_no_problems;
use serde_json::Value as Json;
use serde_norway::Value as Yaml;
use test_support::probe::{http_get, log_tail};
use test_support::service::{wait_until, Service};
use test_support::{free_port, target_bin, ClickHouseServer, MosquittoServer, NatsServer};

/// The Grafana dashboard, relative to the workspace root.
const DASHBOARD: &str = "ops/grafana/nomadwave-pipeline.json";
/// The Prometheus alert rules, relative to the workspace root.
const ALERT_RULES: &str = "ops/prometheus/nomadwave-alerts.yml";

/// The lowest dashboard schema we write (Grafana 9.4); the file says 39 (Grafana 10/11).
const MIN_SCHEMA_VERSION: u64 = 36;

/// The alerts the kit must have, by name.
const EXPECTED_ALERTS: [&str; 12] = [
    "NomadwaveSinkConsumerLagGrowing",
    "NomadwaveSinkNotWriting",
    "NomadwaveSinkNoLeaseHolder",
    "NomadwaveSinkDown",
    "NomadwaveSinkAbsent",
    "NomadwaveDeadLetters",
    "NomadwaveFeedStale",
    "NomadwavePollerDown",
    "NomadwavePollerAbsent",
    "NomadwaveBridgeDisconnected",
    "NomadwaveBridgeDown",
    "NomadwaveBridgeAbsent",
];

/// The promtool unit tests of the alert rules, relative to the workspace root.
const RULE_TESTS: &str = "ops/prometheus/tests.yml";

/// Severities Alertmanager routes on.
const SEVERITIES: [&str; 2] = ["warning", "critical"];

/// Metrics the dashboard must chart, with what for.
const DASHBOARD_METRICS: [(&str, &str); 8] = [
    ("nomadwave_poll_events_published_total", "events per feed"),
    ("nomadwave_bridge_messages_total", "bridge messages"),
    ("nomadwave_sink_rows_written_total", "rows per table"),
    ("nomadwave_sink_insert_seconds_bucket", "insert latency"),
    ("nomadwave_sink_consumer_pending", "consumer lag"),
    ("nomadwave_dead_letters_total", "dead letters"),
    (
        "nomadwave_poll_last_success_timestamp_seconds",
        "feed staleness",
    ),
    ("nomadwave_retries_total", "retries"),
];

/// The prefix of every metric of ours.
const METRIC_PREFIX: &str = "nomadwave_";

/// How long the pipeline may take to make every metric appear.
const METRICS_TIMEOUT: Duration = Duration::from_secs(60);

// --- the files -----------------------------------------------------------------------------------------------------

#[test]
fn dashboard_is_grafana_json_with_a_prometheus_datasource_variable() {
    let dashboard = load_dashboard();
    let mut problems = Vec::new();

    match dashboard["schemaVersion"].as_u64() {
        Some(version) if version >= MIN_SCHEMA_VERSION => {}
        other => problems.push(format!(
            "schemaVersion is {other:?}, expected at least {MIN_SCHEMA_VERSION}"
        )),
    }
    for key in ["title", "uid"] {
        if dashboard[key].as_str().is_none_or(str::is_empty) {
            problems.push(format!("the dashboard needs a `{key}`"));
        }
    }
    let variables = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let datasource_variable = variables
        .iter()
        .find(|variable| variable["type"] == "datasource" && variable["query"] == "prometheus")
        .and_then(|variable| variable["name"].as_str())
        .map(str::to_string);
    let Some(datasource_variable) = datasource_variable else {
        problems.push(
            "templating needs a variable of type `datasource` with query `prometheus`".to_string(),
        );
        assert_no_problems(DASHBOARD, &problems);
        return;
    };
    let datasource_uid = format!("${{{datasource_variable}}}");

    let panels = all_panels(&dashboard);
    let mut ids = BTreeSet::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or_default();
        match panel["id"].as_u64() {
            Some(id) if ids.insert(id) => {}
            other => problems.push(format!(
                "panel {title:?}: id {other:?} is missing or used twice"
            )),
        }
        for key in ["h", "w", "x", "y"] {
            if panel["gridPos"][key].as_u64().is_none() {
                problems.push(format!("panel {title:?}: gridPos.{key} is missing"));
            }
        }
        if panel["type"] == "row" {
            continue;
        }
        if title.is_empty() {
            problems.push(format!("panel {}: no title", panel["id"]));
        }
        if panel["datasource"]["uid"].as_str() != Some(datasource_uid.as_str()) {
            problems.push(format!(
                "panel {title:?}: datasource {} must be the variable {datasource_uid}",
                panel["datasource"]
            ));
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel {title:?}: no targets"));
        }
        let mut ref_ids = BTreeSet::new();
        for target in &targets {
            let expression = target["expr"].as_str().unwrap_or_default();
            if expression.trim().is_empty() {
                problems.push(format!("panel {title:?}: a target without `expr`"));
            }
            if let Err(problem) = check_promql_shape(expression) {
                problems.push(format!("panel {title:?}: {problem} in {expression:?}"));
            }
            if !target["refId"]
                .as_str()
                .is_some_and(|ref_id| ref_ids.insert(ref_id.to_string()))
            {
                problems.push(format!(
                    "panel {title:?}: refId {} is missing or used twice",
                    target["refId"]
                ));
            }
            if target["datasource"]["uid"].as_str() != Some(datasource_uid.as_str()) {
                problems.push(format!(
                    "panel {title:?}: a target's datasource is not {datasource_uid}"
                ));
            }
        }
    }

    let used = metric_names(dashboard_expressions(&dashboard).iter().map(String::as_str));
    for (metric, what) in DASHBOARD_METRICS {
        if !used.contains(metric) {
            problems.push(format!("no panel charts {what} ({metric})"));
        }
    }
    if !dashboard_expressions(&dashboard).iter().any(|expression| {
        expression.contains("histogram_quantile(") && expression.contains("_bucket")
    }) {
        problems.push(
            "insert latency must be a histogram_quantile over nomadwave_sink_insert_seconds_bucket"
                .to_string(),
        );
    }
    assert_no_problems(DASHBOARD, &problems);
}

#[test]
fn alert_rules_are_prometheus_rule_groups() {
    let rules = load_rules();
    let mut problems = Vec::new();
    let groups = rules["groups"].as_sequence().cloned().unwrap_or_default();
    if groups.is_empty() {
        problems.push("no `groups`".to_string());
    }
    let mut alerts = BTreeSet::new();
    let mut group_names = BTreeSet::new();
    for group in &groups {
        let group_name = group["name"].as_str().unwrap_or_default().to_string();
        if group_name.is_empty() || !group_names.insert(group_name.clone()) {
            problems.push(format!("group name {group_name:?} is empty or used twice"));
        }
        let group_rules = group["rules"].as_sequence().cloned().unwrap_or_default();
        if group_rules.is_empty() {
            problems.push(format!("group {group_name:?} has no rules"));
        }
        for rule in &group_rules {
            let Some(alert) = rule["alert"].as_str() else {
                problems.push(format!("group {group_name:?}: a rule without `alert` (recording rules belong elsewhere)"));
                continue;
            };
            if !alerts.insert(alert.to_string()) {
                problems.push(format!("alert {alert} is defined twice"));
            }
            let expression = rule["expr"].as_str().unwrap_or_default();
            if expression.trim().is_empty() {
                problems.push(format!("{alert}: no `expr`"));
            } else if let Err(problem) = check_promql_shape(expression) {
                problems.push(format!("{alert}: {problem} in {expression:?}"));
            }
            match rule["for"].as_str() {
                Some(duration) if is_prometheus_duration(duration) => {}
                other => problems.push(format!(
                    "{alert}: `for` is {other:?}, expected a duration such as 5m"
                )),
            }
            match rule["labels"]["severity"].as_str() {
                Some(severity) if SEVERITIES.contains(&severity) => {}
                other => problems.push(format!(
                    "{alert}: labels.severity is {other:?}, expected one of {SEVERITIES:?}"
                )),
            }
            for annotation in ["summary", "description"] {
                if rule["annotations"][annotation]
                    .as_str()
                    .is_none_or(|text| text.trim().is_empty())
                {
                    problems.push(format!("{alert}: no annotations.{annotation}"));
                }
            }
            for key in rule
                .as_mapping()
                .map(|rule| rule.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
            {
                let key = key.as_str().unwrap_or_default().to_string();
                if ![
                    "alert",
                    "expr",
                    "for",
                    "keep_firing_for",
                    "labels",
                    "annotations",
                ]
                .contains(&key.as_str())
                {
                    problems.push(format!(
                        "{alert}: unknown key `{key}` (Prometheus refuses the file)"
                    ));
                }
            }
        }
    }
    for expected in EXPECTED_ALERTS {
        if !alerts.contains(expected) {
            problems.push(format!("alert {expected} is missing"));
        }
    }
    assert_no_problems(ALERT_RULES, &problems);
}

#[test]
fn alert_rules_pass_promtool_check_rules() {
    assert_promtool_succeeds(&["check", "rules", ALERT_RULES]);
}

#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    assert_promtool_succeeds(&["test", "rules", RULE_TESTS]);
}

#[test]
fn every_alert_is_shown_firing_by_a_promtool_scenario() {
    let text = read_workspace_file(RULE_TESTS);
    let tests: Yaml = serde_norway::from_str(&text)
        .unwrap_or_else(|err| panic!("{RULE_TESTS} is not valid YAML: {err}"));
    let mut firing = BTreeSet::new();
    for test in tests["tests"].as_sequence().cloned().unwrap_or_default() {
        for case in test["alert_rule_test"]
            .as_sequence()
            .cloned()
            .unwrap_or_default()
        {
            let fires = case["exp_alerts"]
                .as_sequence()
                .is_some_and(|alerts| !alerts.is_empty());
            if let (true, Some(alert)) = (fires, case["alertname"].as_str()) {
                firing.insert(alert.to_string());
            }
        }
    }
    let problems: Vec<String> = EXPECTED_ALERTS
        .iter()
        .filter(|alert| !firing.contains(**alert))
        .map(|alert| format!("no scenario expects {alert} to fire"))
        .collect();
    assert_no_problems(RULE_TESTS, &problems);
}

#[test]
fn metric_name_extraction_reads_expressions() {
    let names = metric_names(
        [
            "histogram_quantile(0.99, sum by (le) (rate(nomadwave_sink_insert_seconds_bucket[5m])))",
            "time() - nomadwave_poll_last_success_timestamp_seconds{feed=\"bom\"} > 3 * 600",
            "up{job=~\"nomadwave-sink.*\"} == 0 and xnomadwave_not_ours",
        ]
        .into_iter(),
    );
    let expected: BTreeSet<String> = [
        "nomadwave_sink_insert_seconds_bucket",
        "nomadwave_poll_last_success_timestamp_seconds",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    assert_eq!(names, expected);
    assert!(check_promql_shape("sum(rate(x[5m])").is_err());
    assert!(check_promql_shape("x{a=\"b}").is_err());
    assert!(check_promql_shape("sum by (a) (rate(x{b=\"(\"}[5m]))").is_ok());
}

// --- the metrics, against the running binaries ---------------------------------------------------------------------

#[test]
fn every_metric_of_the_dashboard_and_the_rules_is_served_by_the_binaries() {
    let mut used: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for name in metric_names(
        dashboard_expressions(&load_dashboard())
            .iter()
            .map(String::as_str),
    ) {
        used.entry(name).or_default().push(DASHBOARD);
    }
    for name in metric_names(rule_texts(&load_rules()).iter().map(String::as_str)) {
        used.entry(name).or_default().push(ALERT_RULES);
    }
    assert!(
        !used.is_empty(),
        "the kit uses no nomadwave_* metric at all"
    );

    let pipeline = Pipeline::start("ops-metrics");
    let mut missing = Vec::new();
    let found_all = wait_until(METRICS_TIMEOUT, || {
        let pages = pipeline.metric_pages();
        missing = used
            .iter()
            .filter(|(name, _)| !pages.values().any(|page| page.serves(name)))
            .map(|(name, files)| format!("{name} (used in {files:?})"))
            .collect();
        missing.is_empty()
    });
    if !found_all {
        let pages = pipeline.metric_pages();
        let served: BTreeMap<&str, Vec<&String>> = pages
            .iter()
            .map(|(service, page)| (*service, page.samples.iter().collect()))
            .collect();
        panic!(
            "within {METRICS_TIMEOUT:?}, no binary served:\n  - {}\nserved: {served:#?}\n{}",
            missing.join("\n  - "),
            pipeline.logs()
        );
    }
}

/// The servers and binaries whose `/metrics` pages the kit reads, all killed on drop.
struct Pipeline {
    _nats: NatsServer,
    _clickhouse: ClickHouseServer,
    _mosquitto: MosquittoServer,
    _upstream: EdgeSimHttp,
    sink: Service,
    poller: Service,
    bridge: Service,
}

impl Pipeline {
    fn start(name: &str) -> Pipeline {
        let nats = NatsServer::start(name);
        let clickhouse = ClickHouseServer::start(name);
        let mosquitto = MosquittoServer::start(name);
        let database = format!("nomadwave_{}", name.replace('-', "_"));

        let sink = Service::spawn(
            "sink-clickhouse",
            &nats,
            &["run", "--flush-interval", "200ms"],
            &[
                ("CLICKHOUSE_URL", &clickhouse.http_url()),
                ("CLICKHOUSE_DATABASE", &database),
            ],
        );
        let bridge = Service::spawn(
            "ingest-wave",
            &nats,
            &["bridge"],
            &[
                ("MQTT_URL", &mosquitto.url()),
                ("MQTT_CLIENT_ID", "ops-metrics-bridge"),
            ],
        );
        let upstream = EdgeSimHttp::start(nats.data_dir());
        // One station from the simulator (events, last success) and one on a closed port (retries).
        let fwo_url = upstream.url("");
        let closed_api_url = format!("http://127.0.0.1:{}/v1", free_port());
        let poller = Service::spawn(
            "ingest-wx",
            &nats,
            &[
                "run",
                "--stations",
                "IDQ60701.94254,qvv117",
                "--fwo-url",
                &fwo_url,
                "--api-url",
                &closed_api_url,
                "--interval",
                "5s",
                "--max-retries",
                "2",
                "--retry-min-delay",
                "100ms",
                "--max-requests-per-minute",
                "600",
            ],
            &[],
        );

        for (service, what) in [
            (&sink, "sink-clickhouse run"),
            (&bridge, "ingest-wave bridge"),
        ] {
            assert!(
                wait_until(Duration::from_secs(30), || service
                    .readiness()
                    .is_some_and(|(status, _)| status == 200)),
                "{what} never became ready:\n{}",
                log_tail(&service.log, 30)
            );
        }

        // Wave events, half of them malformed, so the sink inserts (latency histogram) and dead-letters.
        let published = run_to_completion(
            Command::new(target_bin("edge-sim"))
                .args([
                    "publish",
                    "--kind",
                    "wave",
                    "--count",
                    "10",
                    "--malformed-fraction",
                    "0.5",
                ])
                .env_clear()
                .env("NATS_URL", nats.url()),
        );
        assert!(
            published.status.success(),
            "edge-sim publish failed: {}",
            String::from_utf8_lossy(&published.stderr)
        );
        // Five acknowledged readings through mosquitto and the bridge.
        let sent = run_to_completion(
            Command::new(target_bin("edge-sim"))
                .args(["mqtt", "--buoys", "2", "--messages", "5"])
                .env_clear()
                .env("MQTT_URL", mosquitto.url()),
        );
        assert!(
            sent.status.success(),
            "edge-sim mqtt failed: {}",
            String::from_utf8_lossy(&sent.stderr)
        );

        Pipeline {
            _nats: nats,
            _clickhouse: clickhouse,
            _mosquitto: mosquitto,
            _upstream: upstream,
            sink,
            poller,
            bridge,
        }
    }

    fn metric_pages(&self) -> BTreeMap<&'static str, MetricPage> {
        [
            ("sink-clickhouse", &self.sink),
            ("ingest-wx", &self.poller),
            ("ingest-wave bridge", &self.bridge),
        ]
        .into_iter()
        .map(|(name, service)| {
            let page = http_get(service.http_port, "/metrics")
                .map(|(_, body)| body)
                .unwrap_or_default();
            (name, MetricPage::parse(&page))
        })
        .collect()
    }

    fn logs(&self) -> String {
        [
            ("sink-clickhouse", &self.sink),
            ("ingest-wx", &self.poller),
            ("ingest-wave bridge", &self.bridge),
        ]
        .iter()
        .map(|(name, service)| format!("--- {name} log:\n{}", log_tail(&service.log, 20)))
        .collect::<Vec<_>>()
        .join("\n")
    }
}

/// What a Prometheus text page serves: its sample names and the names it declares as histograms.
struct MetricPage {
    samples: BTreeSet<String>,
    histograms: BTreeSet<String>,
}

impl MetricPage {
    fn parse(page: &str) -> MetricPage {
        let mut samples = BTreeSet::new();
        let mut histograms = BTreeSet::new();
        for line in page.lines().map(str::trim) {
            if let Some(declaration) = line.strip_prefix("# TYPE ") {
                let mut words = declaration.split_whitespace();
                if let (Some(name), Some("histogram")) = (words.next(), words.next()) {
                    histograms.insert(name.to_string());
                }
            } else if !line.is_empty() && !line.starts_with('#') {
                let name: String = line
                    .chars()
                    .take_while(|character| is_metric_character(*character))
                    .collect();
                samples.insert(name);
            }
        }
        MetricPage {
            samples,
            histograms,
        }
    }

    /// Whether a query for `name` finds series here; `…_bucket` must also belong to a histogram, not a summary.
    fn serves(&self, name: &str) -> bool {
        if !self.samples.contains(name) {
            return false;
        }
        match name.strip_suffix("_bucket") {
            Some(base) => self.histograms.contains(base),
            None => true,
        }
    }
}

/// A running `edge-sim http` on a free port, killed on drop.
struct EdgeSimHttp {
    child: Child,
    address: String,
}

impl EdgeSimHttp {
    /// Starts `edge-sim http --listen 127.0.0.1:0` and reads the bound address from its `listening=ADDR` line.
    fn start(log_dir: &Path) -> EdgeSimHttp {
        let log: PathBuf = log_dir.join("edge-sim-http.log");
        let log_file = std::fs::File::create(&log).expect("the edge-sim log file can be created");
        let mut child = Command::new(target_bin("edge-sim"))
            .args(["http", "--listen", "127.0.0.1:0"])
            .env_clear()
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start edge-sim http: {err}"));
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            let _ = BufReader::new(stdout).read_line(&mut line);
        }
        let Some(address) = line.trim().strip_prefix("listening=").map(str::to_string) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "edge-sim http printed {line:?} instead of listening=ADDR; log:\n{}",
                log_tail(&log, 20)
            );
        };
        EdgeSimHttp { child, address }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }
}

impl Drop for EdgeSimHttp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command that ends by itself (edge-sim publish, edge-sim mqtt --messages).
fn run_to_completion(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"))
}

// --- reading the kit -----------------------------------------------------------------------------------------------

fn load_dashboard() -> Json {
    let text = read_workspace_file(DASHBOARD);
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{DASHBOARD} is not valid JSON: {err}"))
}

fn load_rules() -> Yaml {
    let text = read_workspace_file(ALERT_RULES);
    serde_norway::from_str(&text)
        .unwrap_or_else(|err| panic!("{ALERT_RULES} is not valid YAML: {err}"))
}

/// Every panel, those inside collapsed rows included.
fn all_panels(dashboard: &Json) -> Vec<Json> {
    let mut panels = Vec::new();
    for panel in dashboard["panels"].as_array().cloned().unwrap_or_default() {
        panels.extend(panel["panels"].as_array().cloned().unwrap_or_default());
        panels.push(panel);
    }
    panels
}

fn dashboard_expressions(dashboard: &Json) -> Vec<String> {
    all_panels(dashboard)
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| target["expr"].as_str().map(str::to_string))
        .collect()
}

/// The texts of the rules that name metrics: expressions, and the annotations that tell an operator what to query.
fn rule_texts(rules: &Yaml) -> Vec<String> {
    let mut texts = Vec::new();
    for group in rules["groups"].as_sequence().cloned().unwrap_or_default() {
        for rule in group["rules"].as_sequence().cloned().unwrap_or_default() {
            texts.extend(rule["expr"].as_str().map(str::to_string));
            for annotation in ["summary", "description"] {
                texts.extend(rule["annotations"][annotation].as_str().map(str::to_string));
            }
        }
    }
    texts
}

/// Every `nomadwave_*` identifier in the texts, whole words only.
fn metric_names<'a>(texts: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for text in texts {
        for (start, _) in text.match_indices(METRIC_PREFIX) {
            let preceded_by_identifier = text[..start]
                .chars()
                .next_back()
                .is_some_and(is_metric_character);
            if preceded_by_identifier {
                continue;
            }
            let name: String = text[start..]
                .chars()
                .take_while(|character| is_metric_character(*character))
                .collect();
            names.insert(name);
        }
    }
    names
}

fn is_metric_character(character: char) -> bool {
    character.is_ascii_alphanumeric() || character == '_' || character == ':'
}

/// A light syntax check of a PromQL expression: brackets balanced and nested properly, strings closed.
///
/// The dashboard's expressions have no promtool check of their own; this catches the usual slip of an edit.
fn check_promql_shape(expression: &str) -> Result<(), String> {
    let mut open = Vec::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for character in expression.chars() {
        if let Some(delimiter) = quote {
            if escaped {
                escaped = false;
            } else if character == '\\' {
                escaped = true;
            } else if character == delimiter {
                quote = None;
            }
            continue;
        }
        match character {
            '"' | '\'' | '`' => quote = Some(character),
            '(' | '[' | '{' => open.push(character),
            ')' | ']' | '}' => {
                let expected = match character {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if open.pop() != Some(expected) {
                    return Err(format!("unbalanced `{character}`"));
                }
            }
            _ => {}
        }
    }
    if let Some(delimiter) = quote {
        return Err(format!("unclosed string ({delimiter})"));
    }
    if let Some(bracket) = open.pop() {
        return Err(format!("unclosed `{bracket}`"));
    }
    Ok(())
}

/// Prometheus durations as rule files use them: `0m`, `5m`, `1h30m`.
fn is_prometheus_duration(text: &str) -> bool {
    let mut rest = text;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let Some(unit) = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|unit| rest.starts_with(unit))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
    }
    true
}

/// Runs `promtool ARGS…` in the workspace root and fails the test with its output unless it succeeds.
///
/// A missing promtool fails the test naming the Debian package; the check never skips.
fn assert_promtool_succeeds(args: &[&str]) {
    let output = match Command::new("promtool")
        .args(args)
        .current_dir(test_support::workspace_root())
        .output()
    {
        Ok(output) => output,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => panic!(
            "`promtool` is not installed: install the Debian package with `apt-get install -y --no-install-recommends prometheus` \
             (`cargo xtask install` does); this check never skips"
        ),
        Err(err) => panic!("cannot run promtool: {err}"),
    };
    assert!(
        output.status.success(),
        "`promtool {}` failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn read_workspace_file(relative: &str) -> String {
    let path = test_support::workspace_root().join(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
}
