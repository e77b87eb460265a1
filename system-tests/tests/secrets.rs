//! Known secrets (NATS password, ClickHouse password, Electricity Maps token, MQTT password)
//! given to every binary at debug log level, through a whole run and through failures: none
//! may appear in logs, `/metrics`, error messages or `--help`.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use test_support::service::{wait_until, Service};
use test_support::{target_bin, ClickHouseServer, MosquittoServer, NatsServer};

const NATS_PASSWORD: &str = "nats-S3cret-111";
const CLICKHOUSE_PASSWORD: &str = "ch-S3cret-222";
const TOKEN: &str = "em-S3cret-333";
const MQTT_PASSWORD: &str = "mqtt-S3cret-444";
const WRONG: &str = "wrong-S3cret-555";
const SECRETS: [&str; 5] = [
    NATS_PASSWORD,
    CLICKHOUSE_PASSWORD,
    TOKEN,
    MQTT_PASSWORD,
    WRONG,
];

fn assert_clean(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(
            !text.contains(secret),
            "{what} contains the secret {secret}:\n{text}"
        );
    }
}

fn users_xml() -> String {
    let base = std::fs::read_to_string("/etc/clickhouse-server/users.xml").unwrap();
    base.replacen(
        "<users>",
        &format!(
            "<users><writer><password>{CLICKHOUSE_PASSWORD}</password><networks><ip>::/0</ip></networks>\
             <profile>default</profile><quota>default</quota></writer>"
        ),
        1,
    )
}

/// Runs `binary args` to completion with `env`; returns (exit code, stdout + stderr).
fn run(binary: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let output = Command::new(target_bin(binary))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "debug")
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn no_secret_appears_in_any_output() {
    let nats = NatsServer::start_with_config(
        "secrets",
        &format!("authorization {{\n  user: nomadwave\n  password: \"{NATS_PASSWORD}\"\n}}\n"),
    );
    let clickhouse = ClickHouseServer::start_with_users_xml("secrets", &users_xml());
    let password_file = nats.data_dir().join("mosquitto.passwd");
    let created = Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&password_file)
        .args(["bridge", MQTT_PASSWORD])
        .status()
        .unwrap();
    assert!(created.success(), "mosquitto_passwd");
    let mosquitto = MosquittoServer::start_with_config(
        "secrets",
        &format!(
            "password_file {}\nmax_inflight_messages 256\n",
            password_file.display()
        ),
    );
    // The config of test-support allows anonymous access; the password file still checks
    // the bridge's credentials, and a wrong password is refused.

    let nats_env = [("NATS_USER", "nomadwave"), ("NATS_PASSWORD", NATS_PASSWORD)];
    let clickhouse_url = clickhouse.http_url();
    let mut sink_env = nats_env.to_vec();
    sink_env.extend([
        ("RUST_LOG", "debug"),
        ("CLICKHOUSE_URL", clickhouse_url.as_str()),
        ("CLICKHOUSE_USER", "writer"),
        ("CLICKHOUSE_PASSWORD", CLICKHOUSE_PASSWORD),
        ("CLICKHOUSE_DATABASE", "nomadwave_secrets"),
    ]);
    let sink = Service::spawn(
        "sink-clickhouse",
        &nats,
        &["run", "--flush-interval", "200ms"],
        &sink_env,
    );

    // The simulated Electricity Maps checks the token.
    let upstream = Command::new(target_bin("edge-sim"))
        .env_clear()
        .args(["http", "--listen", "127.0.0.1:0", "--token", TOKEN])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut upstream = KillOnDrop(upstream);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(upstream.0.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let address = line.trim().strip_prefix("listening=").unwrap().to_owned();
    let api_url = format!("http://{address}/v3");
    let mut carbon_env = nats_env.to_vec();
    carbon_env.extend([("RUST_LOG", "debug"), ("ELECTRICITYMAPS_TOKEN", TOKEN)]);
    let carbon_args = [
        "run",
        "--zones",
        "AU-NSW",
        "--api-url",
        &api_url,
        "--interval",
        "1s",
    ];
    let carbon = Service::spawn("ingest-carbon", &nats, &carbon_args, &carbon_env);

    let mqtt_url = mosquitto.url();
    let mut bridge_env = nats_env.to_vec();
    bridge_env.extend([
        ("RUST_LOG", "debug"),
        ("MQTT_URL", mqtt_url.as_str()),
        ("MQTT_USER", "bridge"),
        ("MQTT_PASSWORD", MQTT_PASSWORD),
    ]);
    let bridge = Service::spawn("ingest-wave", &nats, &["bridge"], &bridge_env);

    // Data flows: carbon rows arrive, and the bridge carries a few buoy readings.
    let count = |table: &str| {
        clickhouse
            .try_query(&format!("SELECT count() FROM nomadwave_secrets.{table}"))
            .and_then(|text| text.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(60), || bridge
            .log_text()
            .contains("subscribed")),
        "{}",
        bridge.log_text()
    );
    let (code, swarm) = run(
        "edge-sim",
        &["mqtt", "--buoys", "2", "--messages", "10", "--rate", "0"],
        &[
            ("MQTT_URL", mqtt_url.as_str()),
            ("MQTT_USER", "bridge"),
            ("MQTT_PASSWORD", MQTT_PASSWORD),
        ],
    );
    assert_eq!(code, 0, "{swarm}");
    assert!(
        wait_until(Duration::from_secs(60), || count("carbon_intensity") > 0
            && count("wave_observations") >= 10),
        "rows: carbon {} wave {}\nsink:\n{}",
        count("carbon_intensity"),
        count("wave_observations"),
        sink.log_text()
    );

    for service in [&sink, &carbon, &bridge] {
        assert_clean("a /metrics page", &service.metrics());
        let (_, readiness) = service.readiness().unwrap_or_default();
        assert_clean("a /readyz page", &readiness);
    }

    // Failures: wrong secrets give clear errors that do not echo them.
    let wrong_clickhouse = [
        ("NATS_USER", "nomadwave"),
        ("NATS_PASSWORD", NATS_PASSWORD),
        ("CLICKHOUSE_URL", clickhouse_url.as_str()),
        ("CLICKHOUSE_USER", "writer"),
        ("CLICKHOUSE_PASSWORD", WRONG),
    ];
    let (code, text) = run("sink-clickhouse", &["migrate"], &wrong_clickhouse);
    assert_ne!(code, 0, "a wrong ClickHouse password must fail:\n{text}");
    assert_clean("sink-clickhouse migrate with a wrong password", &text);
    let (code, text) = run(
        "ingest-carbon",
        &[
            "run",
            "--zones",
            "AU-NSW",
            "--api-url",
            &api_url,
            "--http-listen",
            "127.0.0.1:0",
        ],
        &[
            ("NATS_URL", nats.url().as_str()),
            ("NATS_USER", "nomadwave"),
            ("NATS_PASSWORD", WRONG),
            ("ELECTRICITYMAPS_TOKEN", TOKEN),
            ("NATS_CONNECT_TIMEOUT", "2s"),
        ],
    );
    assert_ne!(code, 0, "a wrong NATS password must fail:\n{text}");
    assert_clean("ingest-carbon with a wrong NATS password", &text);
    let wrong_token = Service::spawn(
        "ingest-carbon",
        &nats,
        &carbon_args,
        &[
            ("NATS_USER", "nomadwave"),
            ("NATS_PASSWORD", NATS_PASSWORD),
            ("RUST_LOG", "debug"),
            ("ELECTRICITYMAPS_TOKEN", WRONG),
        ],
    );
    assert!(
        wait_until(Duration::from_secs(30), || wrong_token
            .log_text()
            .contains("401")),
        "{}",
        wrong_token.log_text()
    );
    let wrong_mqtt = Service::spawn(
        "ingest-wave",
        &nats,
        &["bridge"],
        &[
            ("NATS_USER", "nomadwave"),
            ("NATS_PASSWORD", NATS_PASSWORD),
            ("RUST_LOG", "debug"),
            ("MQTT_URL", mqtt_url.as_str()),
            ("MQTT_USER", "bridge"),
            ("MQTT_PASSWORD", WRONG),
            ("MQTT_CLIENT_ID", "wrong-password"),
        ],
    );
    assert!(
        wait_until(Duration::from_secs(30), || wrong_mqtt
            .log_text()
            .contains("refused user 'bridge'")),
        "{}",
        wrong_mqtt.log_text()
    );

    // --help, with the secrets in the environment.
    let all_env = [
        ("NATS_PASSWORD", NATS_PASSWORD),
        ("NATS_TOKEN", NATS_PASSWORD),
        ("CLICKHOUSE_PASSWORD", CLICKHOUSE_PASSWORD),
        ("ELECTRICITYMAPS_TOKEN", TOKEN),
        ("MQTT_PASSWORD", MQTT_PASSWORD),
    ];
    for (binary, subcommand) in [
        ("sink-clickhouse", "run"),
        ("sink-clickhouse", "migrate"),
        ("sink-clickhouse", "replay"),
        ("ingest-carbon", "run"),
        ("ingest-wave", "run"),
        ("ingest-wave", "bridge"),
        ("ingest-wx", "run"),
        ("edge-sim", "mqtt"),
        ("edge-sim", "publish"),
    ] {
        let (code, text) = run(binary, &[subcommand, "--help"], &all_env);
        assert_eq!(code, 0, "{binary} {subcommand} --help:\n{text}");
        assert_clean(&format!("{binary} {subcommand} --help"), &text);
    }

    // Every log line of every run.
    for service in [&sink, &carbon, &bridge, &wrong_token, &wrong_mqtt] {
        let log = service.log_text();
        assert!(log.contains("DEBUG"), "the run was at debug level");
        assert_clean(&format!("the log {}", service.log.display()), &log);
    }
    upstream.0.kill().ok();
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
