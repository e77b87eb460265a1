//! Authenticated and encrypted connections against real servers: NATS (user/password, token,
//! nkey, TLS with server verification and client certificates), ClickHouse (user/password)
//! and mosquitto (password file, TLS, client certificates).
//!
//! Each good credential carries events through the real binaries; each wrong one gives one
//! clear error line, quickly, without echoing the secret. The CA and the certificates are
//! made by the test (rcgen) and written next to the server's data.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use test_support::service::{wait_until, Service};
use test_support::{target_bin, ClickHouseServer, MosquittoServer, NatsServer, ScratchDir};

const NATS_PASSWORD: &str = "nats-Auth-111";
const NATS_TOKEN: &str = "nats-Token-222";
const CLICKHOUSE_PASSWORD: &str = "ch-Auth-333";
const MQTT_PASSWORD: &str = "mqtt-Auth-444";
const WRONG: &str = "wrong-Auth-555";
const SECRETS: [&str; 5] = [
    NATS_PASSWORD,
    NATS_TOKEN,
    CLICKHOUSE_PASSWORD,
    MQTT_PASSWORD,
    WRONG,
];

/// A CA, a server certificate for 127.0.0.1 and localhost, a client certificate, and a
/// second CA that signed neither, as PEM files in `dir`.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    other_ca: PathBuf,
}

impl Pki {
    fn create(dir: &Path) -> Pki {
        let dir = dir.join("pki");
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let (ca_cert, ca_key) = certificate_authority("NomadWave test CA");
        let (other_cert, _) = certificate_authority("Somebody else's CA");
        let issue = |names: Vec<String>, purpose: ExtendedKeyUsagePurpose, common_name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![purpose];
            let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = issue(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "localhost",
        );
        let (client_cert, client_key) =
            issue(Vec::new(), ExtendedKeyUsagePurpose::ClientAuth, "bridge");
        Pki {
            ca: write("ca.pem", ca_cert.pem()),
            server_cert: write("server.pem", server_cert),
            server_key: write("server-key.pem", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client-key.pem", client_key),
            other_ca: write("other-ca.pem", other_cert.pem()),
        }
    }

    fn nats_tls_block(&self, verify_clients: bool) -> String {
        format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: {verify_clients}\n  timeout: 2\n}}\n",
            self.server_cert.display(),
            self.server_key.display(),
            self.ca.display()
        )
    }

    fn mosquitto_tls_lines(&self, require_certificate: bool) -> String {
        format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {require_certificate}\n",
            self.ca.display(),
            self.server_cert.display(),
            self.server_key.display()
        )
    }
}

fn certificate_authority(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (params.self_signed(&key).unwrap(), key)
}

/// How a finished command went.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    /// The single `error: …` line `runtime::exit_code` prints; fails unless there is exactly
    /// one, and checks that no secret is in the output.
    fn error_line(&self) -> &str {
        assert_clean("the output", &self.stdout);
        assert_clean("the output", &self.stderr);
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|line| line.starts_with("error: "))
            .collect();
        assert_eq!(lines.len(), 1, "one error line expected:\n{}", self.stderr);
        lines[0]
    }
}

/// Runs `binary args` with only `env` (and PATH), killing it after `limit`.
fn run(binary: &str, args: &[&str], env: &[(&str, &str)], limit: Duration) -> Run {
    let folder = ScratchDir::create(&format!("auth-run-{binary}"));
    let (out_path, err_path) = (folder.path().join("stdout"), folder.path().join("stderr"));
    let started = Instant::now();
    let mut child = Command::new(target_bin(binary))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{binary} {args:?} still ran after {limit:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        elapsed: started.elapsed(),
    }
}

fn assert_clean(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(
            !text.contains(secret),
            "{what} contains the secret {secret}:\n{text}"
        );
    }
}

/// `edge-sim publish --kind wave --count 5` with `env`; returns the finished run.
fn publish(offset: u64, env: &[(&str, &str)]) -> Run {
    let offset = offset.to_string();
    run(
        "edge-sim",
        &[
            "publish", "--kind", "wave", "--count", "5", "--offset", &offset,
        ],
        env,
        Duration::from_secs(30),
    )
}

fn assert_published(run: &Run) {
    assert_eq!(run.code, 0, "publish failed:\n{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("distinct_valid=5"), "{}", run.stdout);
    assert_clean("publish output", &run.stderr);
}

/// A failed start: exit 1, within `seconds`, one error line containing every `expected`.
fn assert_refused(run: &Run, seconds: u64, expected: &[&str]) -> String {
    let line = run.error_line().to_owned();
    assert_eq!(run.code, 1, "{line}");
    assert!(
        run.elapsed < Duration::from_secs(seconds),
        "took {:?}: {line}",
        run.elapsed
    );
    for part in expected {
        assert!(line.contains(part), "'{part}' missing from: {line}");
    }
    line
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

fn mosquitto_password_file(dir: &Path) -> PathBuf {
    let path = dir.join("mosquitto.passwd");
    let created = Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&path)
        .args(["bridge", MQTT_PASSWORD])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(created.success(), "mosquitto_passwd");
    path
}

#[test]
fn nats_user_password_nkey_and_token() {
    let user = nkeys::KeyPair::new_user();
    let stranger = nkeys::KeyPair::new_user();
    let nats = NatsServer::start_with_config(
        "auth-nats-users",
        &format!(
            "authorization {{\n  users = [\n    {{ user: nomadwave, password: \"{NATS_PASSWORD}\" }}\n    {{ nkey: {} }}\n  ]\n}}\n",
            user.public_key()
        ),
    );
    let url = nats.url();
    let seed_file = nats.data_dir().join("user.nk");
    std::fs::write(&seed_file, user.seed().unwrap()).unwrap();
    let stranger_file = nats.data_dir().join("stranger.nk");
    std::fs::write(&stranger_file, stranger.seed().unwrap()).unwrap();
    let seed_path = seed_file.display().to_string();
    let stranger_path = stranger_file.display().to_string();

    assert_published(&publish(
        0,
        &[
            ("NATS_URL", &url),
            ("NATS_USER", "nomadwave"),
            ("NATS_PASSWORD", NATS_PASSWORD),
        ],
    ));
    assert_published(&publish(
        5,
        &[("NATS_URL", &url), ("NATS_NKEY_SEED_FILE", &seed_path)],
    ));

    let line = assert_refused(
        &publish(
            10,
            &[
                ("NATS_URL", &url),
                ("NATS_USER", "nomadwave"),
                ("NATS_PASSWORD", WRONG),
            ],
        ),
        5,
        &[
            &url,
            "rejected user 'nomadwave'",
            "authorization violation",
            "--nats-password/NATS_PASSWORD",
        ],
    );
    eprintln!("wrong NATS password: {line}");
    let line = assert_refused(
        &publish(
            10,
            &[("NATS_URL", &url), ("NATS_NKEY_SEED_FILE", &stranger_path)],
        ),
        5,
        &[
            &format!("rejected nkey {}", stranger.public_key()),
            "lists no user with this public key",
        ],
    );
    assert!(!line.contains(&stranger.seed().unwrap()), "{line}");
    eprintln!("unknown nkey: {line}");
    let line = assert_refused(
        &publish(10, &[("NATS_URL", &url)]),
        5,
        &["rejected a connection without credentials", "--nats-user"],
    );
    eprintln!("no NATS credentials: {line}");

    // A service binary fails the same way at startup.
    let line = assert_refused(
        &run(
            "ingest-wave",
            &["bridge", "--http-listen", "127.0.0.1:0"],
            &[
                ("NATS_URL", &url),
                ("NATS_USER", "nomadwave"),
                ("NATS_PASSWORD", WRONG),
                ("MQTT_URL", "mqtt://127.0.0.1:9"),
            ],
            Duration::from_secs(20),
        ),
        5,
        &["rejected user 'nomadwave'"],
    );
    eprintln!("bridge, wrong NATS password: {line}");

    let token_nats = NatsServer::start_with_config(
        "auth-nats-token",
        &format!("authorization {{\n  token: \"{NATS_TOKEN}\"\n}}\n"),
    );
    let token_url = token_nats.url();
    assert_published(&publish(
        0,
        &[("NATS_URL", &token_url), ("NATS_TOKEN", NATS_TOKEN)],
    ));
    let line = assert_refused(
        &publish(5, &[("NATS_URL", &token_url), ("NATS_TOKEN", WRONG)]),
        5,
        &["rejected the token", "--nats-token/NATS_TOKEN"],
    );
    eprintln!("wrong NATS token: {line}");
}

/// A NATS JWT (v2, `ed25519-nkey`) with `nats` as its claims, signed by `issuer`.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: &str) -> String {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let issued_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = base64_url(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = format!(
        r#"{{"jti":"TESTJWT{id}X{issued_at}","iat":{issued_at},"iss":"{}","name":"{name}","sub":"{subject}","nats":{nats}}}"#,
        issuer.public_key()
    );
    let signed = format!("{header}.{}", base64_url(claims.as_bytes()));
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", base64_url(&signature))
}

/// Base64url without padding, as JWTs use.
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut text = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, byte)| n | u32::from(*byte) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            text.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    text
}

/// A `.creds` file for a new user of `account`, as `nsc` writes it.
fn creds_file(path: &Path, account: &nkeys::KeyPair) -> String {
    let user = nkeys::KeyPair::new_user();
    let jwt = nats_jwt(
        account,
        &user.public_key(),
        "sink",
        r#"{"pub":{},"sub":{},"subs":-1,"data":-1,"payload":-1,"type":"user","version":2}"#,
    );
    std::fs::write(
        path,
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    path.display().to_string()
}

#[test]
fn nats_creds_file_in_operator_mode() {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let stranger_account = nkeys::KeyPair::new_account();
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        "nomadwave-test",
        r#"{"type":"operator","version":2}"#,
    );
    // JetStream is on for the account when its limits give it storage.
    let account_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        "NOMADWAVE",
        r#"{"limits":{"subs":-1,"data":-1,"payload":-1,"imports":-1,"exports":-1,"wildcards":true,"conn":-1,"leaf":-1,"mem_storage":-1,"disk_storage":-1,"streams":-1,"consumer":-1},"default_permissions":{"pub":{},"sub":{}},"type":"account","version":2}"#,
    );
    // JetStream needs a system account in operator mode.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = nats_jwt(
        &operator,
        &system.public_key(),
        "SYS",
        r#"{"limits":{"subs":-1,"data":-1,"payload":-1,"imports":-1,"exports":-1,"wildcards":true,"conn":-1,"leaf":-1},"type":"account","version":2}"#,
    );
    let scratch = ScratchDir::create("auth-nats-operator-keys");
    let operator_path = scratch.path().join("operator.jwt");
    std::fs::write(&operator_path, &operator_jwt).unwrap();
    let nats = NatsServer::start_with_config(
        "auth-nats-operator",
        &format!(
            "operator: \"{}\"\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n  {}: \"{account_jwt}\"\n  {}: \"{system_jwt}\"\n}}\n",
            operator_path.display(),
            system.public_key(),
            account.public_key(),
            system.public_key()
        ),
    );
    let url = nats.url();
    let good = creds_file(&scratch.path().join("sink.creds"), &account);
    let unknown = creds_file(&scratch.path().join("stranger.creds"), &stranger_account);
    assert_published(&publish(0, &[("NATS_URL", &url), ("NATS_CREDS", &good)]));
    let line = assert_refused(
        &publish(5, &[("NATS_URL", &url), ("NATS_CREDS", &unknown)]),
        5,
        &[
            &format!("rejected the credentials in {unknown}"),
            "authorization violation",
            "--nats-creds/NATS_CREDS",
        ],
    );
    eprintln!("creds file of an unknown user: {line}");
}

#[test]
fn nats_tls_verifies_the_server_and_client_certificates() {
    let scratch = ScratchDir::create("auth-nats-pki");
    let pki = Pki::create(scratch.path());
    let nats = NatsServer::start_with_config(
        "auth-nats-mtls",
        &format!(
            "{}authorization {{\n  user: nomadwave\n  password: \"{NATS_PASSWORD}\"\n}}\n",
            pki.nats_tls_block(true)
        ),
    );
    let url = format!("tls://127.0.0.1:{}", nats.port());
    let (ca, other_ca) = (
        pki.ca.display().to_string(),
        pki.other_ca.display().to_string(),
    );
    let (cert, key) = (
        pki.client_cert.display().to_string(),
        pki.client_key.display().to_string(),
    );
    let call = |offset: u64, extra: &[(&str, &str)]| {
        let mut env = vec![("NATS_USER", "nomadwave"), ("NATS_PASSWORD", NATS_PASSWORD)];
        env.extend_from_slice(extra);
        publish(offset, &env)
    };

    assert_published(&call(
        0,
        &[
            ("NATS_URL", &url),
            ("NATS_TLS_CA", &ca),
            ("NATS_TLS_CERT", &cert),
            ("NATS_TLS_KEY", &key),
        ],
    ));
    let line = assert_refused(
        &call(5, &[("NATS_URL", &url), ("NATS_TLS_CA", &ca)]),
        5,
        &[
            &format!("TLS to NATS at {url} failed"),
            "the server requires a client certificate",
            "--nats-tls-cert/NATS_TLS_CERT",
        ],
    );
    eprintln!("missing client certificate: {line}");
    let line = assert_refused(
        &call(
            5,
            &[
                ("NATS_URL", &url),
                ("NATS_TLS_CA", &other_ca),
                ("NATS_TLS_CERT", &cert),
                ("NATS_TLS_KEY", &key),
            ],
        ),
        5,
        &[
            "UnknownIssuer",
            "not signed by a CA in --nats-tls-ca/NATS_TLS_CA",
        ],
    );
    eprintln!("untrusted server certificate: {line}");
    // A plain nats:// URL: the server demands TLS, and the system CAs do not know ours.
    let plain = nats.url();
    let line = assert_refused(&call(5, &[("NATS_URL", &plain)]), 5, &["UnknownIssuer"]);
    eprintln!("no CA given: {line}");
}

#[test]
fn sink_runs_over_tls_nats_with_a_clickhouse_password() {
    let scratch = ScratchDir::create("auth-sink-pki");
    let pki = Pki::create(scratch.path());
    let nats = NatsServer::start_with_config(
        "auth-sink-nats",
        &format!(
            "{}authorization {{\n  user: nomadwave\n  password: \"{NATS_PASSWORD}\"\n}}\n",
            pki.nats_tls_block(false)
        ),
    );
    let clickhouse = ClickHouseServer::start_with_users_xml("auth-sink", &users_xml());
    let nats_url = format!("tls://127.0.0.1:{}", nats.port());
    let ca = pki.ca.display().to_string();
    let clickhouse_url = clickhouse.http_url();
    let nats_env = [
        ("NATS_URL", nats_url.as_str()),
        ("NATS_TLS_CA", ca.as_str()),
        ("NATS_USER", "nomadwave"),
        ("NATS_PASSWORD", NATS_PASSWORD),
    ];
    let env_for = |user: &'static str, password: &'static str| {
        let mut env = nats_env.to_vec();
        env.extend([
            ("CLICKHOUSE_URL", clickhouse_url.as_str()),
            ("CLICKHOUSE_USER", user),
            ("CLICKHOUSE_PASSWORD", password),
            ("CLICKHOUSE_DATABASE", "nomadwave_auth"),
        ]);
        env
    };

    let good = env_for("writer", CLICKHOUSE_PASSWORD);
    let migrated = run(
        "sink-clickhouse",
        &["migrate"],
        &good,
        Duration::from_secs(30),
    );
    assert_eq!(migrated.code, 0, "{}", migrated.stderr);
    let sink = Service::spawn(
        "sink-clickhouse",
        &nats,
        &["run", "--flush-interval", "200ms"],
        &good,
    );
    assert_published(&publish(0, &nats_env));
    let count = || {
        clickhouse
            .try_query("SELECT count() FROM nomadwave_auth.wave_observations")
            .and_then(|text| text.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(30), || count() >= 5),
        "rows: {}\nsink:\n{}",
        count(),
        sink.log_text()
    );
    assert_eq!(count(), 5);
    assert_clean("the sink's log", &sink.log_text());

    // Wrong ClickHouse credentials: one line at startup, no retry storm.
    for (what, user, password) in [
        ("wrong password", "writer", WRONG),
        ("unknown user", "nobody", CLICKHOUSE_PASSWORD),
    ] {
        let env = env_for(user, password);
        let migrate = run(
            "sink-clickhouse",
            &["migrate"],
            &env,
            Duration::from_secs(20),
        );
        let line = assert_refused(
            &migrate,
            5,
            &[
                &format!("user '{user}'"),
                "authentication failed",
                &clickhouse_url,
            ],
        );
        eprintln!("migrate, {what}: {line}");
        let mut run_env = env.clone();
        run_env.push(("HTTP_LISTEN", "127.0.0.1:0"));
        let started = run(
            "sink-clickhouse",
            &["run"],
            &run_env,
            Duration::from_secs(20),
        );
        let line = assert_refused(
            &started,
            8,
            &[&format!("user '{user}'"), "authentication failed"],
        );
        // Each logged attempt carries the server's message.
        let attempts = started.stderr.matches("DB::Exception").count();
        assert!(
            attempts <= 3,
            "{attempts} attempts logged:\n{}",
            started.stderr
        );
        eprintln!("run, {what}: {line}");
    }
}

#[test]
fn mqtt_needs_the_password_and_refuses_anonymous_clients() {
    let nats = NatsServer::start("auth-mqtt-password");
    let password_file = mosquitto_password_file(nats.data_dir());
    // The generated config says `allow_anonymous true`; a later line overrides it.
    let mosquitto = MosquittoServer::start_with_config(
        "auth-mqtt-password",
        &format!(
            "password_file {}\nallow_anonymous false\nmax_inflight_messages 256\n",
            password_file.display()
        ),
    );
    let mqtt_url = mosquitto.url();
    let good = [
        ("MQTT_URL", mqtt_url.as_str()),
        ("MQTT_USER", "bridge"),
        ("MQTT_PASSWORD", MQTT_PASSWORD),
    ];
    let bridge = Service::spawn("ingest-wave", &nats, &["bridge"], &good);
    assert!(
        wait_until(Duration::from_secs(20), || bridge
            .log_text()
            .contains("subscribed")),
        "{}",
        bridge.log_text()
    );
    let swarm = run(
        "edge-sim",
        &["mqtt", "--buoys", "2", "--messages", "10", "--rate", "0"],
        &good,
        Duration::from_secs(30),
    );
    assert_eq!(swarm.code, 0, "{}", swarm.stderr);
    assert!(
        wait_until(Duration::from_secs(20), || bridge
            .metrics()
            .contains("outcome=\"published\"} 10")),
        "{}\n{}",
        bridge.metrics(),
        bridge.log_text()
    );

    let wrong = [
        ("MQTT_URL", mqtt_url.as_str()),
        ("MQTT_USER", "bridge"),
        ("MQTT_PASSWORD", WRONG),
        ("MQTT_CLIENT_ID", "wrong-password"),
    ];
    let mut refused_bridge = Service::spawn("ingest-wave", &nats, &["bridge"], &wrong);
    let expected = format!("MQTT broker {mqtt_url} refused user 'bridge': not authorized");
    assert!(
        wait_until(Duration::from_secs(20), || refused_bridge
            .log_text()
            .contains(&expected)),
        "{}",
        refused_bridge.log_text()
    );
    let (status, body) = refused_bridge.readiness().unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not authorized"), "{body}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(refused_bridge.is_running(), "the bridge keeps retrying");
    let log = refused_bridge.log_text();
    let attempts = log.matches(&expected).count();
    assert!(
        (1..=6).contains(&attempts),
        "backoff: {attempts} refusals logged\n{log}"
    );
    assert_clean("the refused bridge's log", &log);
    eprintln!(
        "bridge, wrong MQTT password: {}",
        log.lines().find(|line| line.contains(&expected)).unwrap()
    );

    let line = assert_refused(
        &run(
            "edge-sim",
            &["mqtt", "--buoys", "1", "--messages", "1"],
            &wrong,
            Duration::from_secs(20),
        ),
        5,
        &[&expected, "--mqtt-password/MQTT_PASSWORD"],
    );
    eprintln!("edge-sim mqtt, wrong password: {line}");
    let line = assert_refused(
        &run(
            "edge-sim",
            &["mqtt", "--buoys", "1", "--messages", "1"],
            &[("MQTT_URL", mqtt_url.as_str())],
            Duration::from_secs(20),
        ),
        5,
        &["refused an anonymous connection", "--mqtt-user/MQTT_USER"],
    );
    eprintln!("edge-sim mqtt, anonymous: {line}");
}

#[test]
fn mqtt_tls_verifies_the_broker_and_client_certificates() {
    let nats = NatsServer::start("auth-mqtt-tls");
    let pki = Pki::create(nats.data_dir());
    let password_file = mosquitto_password_file(nats.data_dir());
    let tls_broker = MosquittoServer::start_with_config(
        "auth-mqtt-tls",
        &format!(
            "{}password_file {}\nallow_anonymous false\nmax_inflight_messages 256\n",
            pki.mosquitto_tls_lines(false),
            password_file.display()
        ),
    );
    let url = format!("mqtts://127.0.0.1:{}", tls_broker.port());
    let (ca, other_ca) = (
        pki.ca.display().to_string(),
        pki.other_ca.display().to_string(),
    );
    let good = [
        ("MQTT_URL", url.as_str()),
        ("MQTT_TLS_CA", ca.as_str()),
        ("MQTT_USER", "bridge"),
        ("MQTT_PASSWORD", MQTT_PASSWORD),
    ];
    let bridge = Service::spawn("ingest-wave", &nats, &["bridge"], &good);
    assert!(
        wait_until(Duration::from_secs(20), || bridge
            .log_text()
            .contains("subscribed")),
        "{}",
        bridge.log_text()
    );
    let swarm = run(
        "edge-sim",
        &["mqtt", "--buoys", "2", "--messages", "10", "--rate", "0"],
        &good,
        Duration::from_secs(30),
    );
    assert_eq!(swarm.code, 0, "{}", swarm.stderr);
    assert!(
        wait_until(Duration::from_secs(20), || bridge
            .metrics()
            .contains("outcome=\"published\"} 10")),
        "{}\n{}",
        bridge.metrics(),
        bridge.log_text()
    );

    // A CA that did not sign the broker's certificate.
    let untrusted = [
        ("MQTT_URL", url.as_str()),
        ("MQTT_TLS_CA", other_ca.as_str()),
        ("MQTT_USER", "bridge"),
        ("MQTT_PASSWORD", MQTT_PASSWORD),
        ("MQTT_CLIENT_ID", "untrusted"),
    ];
    let line = assert_refused(
        &run(
            "edge-sim",
            &["mqtt", "--buoys", "1", "--messages", "1"],
            &untrusted,
            Duration::from_secs(20),
        ),
        5,
        &[
            &format!("TLS to MQTT broker {url} failed"),
            "UnknownIssuer",
            "--mqtt-tls-ca/MQTT_TLS_CA",
        ],
    );
    eprintln!("edge-sim mqtt, untrusted broker: {line}");
    let untrusted_bridge = Service::spawn("ingest-wave", &nats, &["bridge"], &untrusted);
    assert!(
        wait_until(Duration::from_secs(20), || untrusted_bridge
            .log_text()
            .contains("UnknownIssuer")),
        "{}",
        untrusted_bridge.log_text()
    );
    let (status, body) = untrusted_bridge.readiness().unwrap();
    assert_eq!(status, 503, "{body}");

    // A broker that requires a client certificate.
    let mtls_broker =
        MosquittoServer::start_with_config("auth-mqtt-mtls", &pki.mosquitto_tls_lines(true));
    let mtls_url = format!("mqtts://127.0.0.1:{}", mtls_broker.port());
    let (cert, key) = (
        pki.client_cert.display().to_string(),
        pki.client_key.display().to_string(),
    );
    let swarm = run(
        "edge-sim",
        &["mqtt", "--buoys", "1", "--messages", "3", "--rate", "0"],
        &[
            ("MQTT_URL", mtls_url.as_str()),
            ("MQTT_TLS_CA", ca.as_str()),
            ("MQTT_TLS_CERT", cert.as_str()),
            ("MQTT_TLS_KEY", key.as_str()),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(swarm.code, 0, "{}", swarm.stderr);
    assert!(swarm.stdout.contains("acked=3"), "{}", swarm.stdout);
    let line = assert_refused(
        &run(
            "edge-sim",
            &["mqtt", "--buoys", "1", "--messages", "1"],
            &[
                ("MQTT_URL", mtls_url.as_str()),
                ("MQTT_TLS_CA", ca.as_str()),
            ],
            Duration::from_secs(20),
        ),
        5,
        &[
            &format!("TLS to MQTT broker {mtls_url} failed"),
            "the broker requires a client certificate",
        ],
    );
    eprintln!("edge-sim mqtt, no client certificate: {line}");
}
