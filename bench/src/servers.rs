//! Where the servers come from: started here on free loopback ports by `test-support`, or
//! given in the environment (`NATS_URL`, `CLICKHOUSE_URL`, `MQTT_URL`) and running on their
//! own hosts, as in production. Each is chosen on its own.
//!
//! An external server is only touched where the benchmark made something:
//! - NATS: the run refuses a server that already has any of [`owned_streams`] (NomadWave's
//!   event streams, the dead-letter stream and the sink's lease and position buckets), so
//!   everything it fills is its own; it deletes those streams after each side of the run, and
//!   after a failure or an interruption. Point `NATS_URL` at a server without NomadWave's
//!   streams (never at production's: its sinks would consume the benchmark's events).
//! - ClickHouse: only the database [`DATABASE`], dropped before each phase that fills it and
//!   at the end.
//! - MQTT: the two persistent sessions of [`crate::mqtt`], cleared before and after use. The
//!   broker's own `max_inflight_messages` applies (the local broker gets the plan's), and
//!   anything else subscribed to `nomadwave/buoy/+/wave` receives the benchmark's readings.
//!
//! CPU time of an external server cannot be read from `/proc` here: its column says
//! [`crate::procs::NOT_MEASURED`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context as _};
use async_nats::jetstream;
use runtime::ConfigError;

use crate::procs::Watched;

/// NATS server of an external run.
pub const NATS_VAR: &str = "NATS_URL";
/// ClickHouse HTTP endpoint of an external run.
pub const CLICKHOUSE_VAR: &str = "CLICKHOUSE_URL";
/// MQTT broker of an external run.
pub const MQTT_VAR: &str = "MQTT_URL";

/// The one ClickHouse database the benchmark creates (and drops), on any server.
pub const DATABASE: &str = "nomadwave_bench";

/// The streams the benchmark declares or makes the sink declare: `WAVE`, `WEATHER`, `CARBON`,
/// the dead-letter stream and the sink's lease and position buckets (`KV_<bucket>`).
pub fn owned_streams() -> Vec<String> {
    let mut names: Vec<String> = schema::Kind::ALL
        .into_iter()
        .map(|kind| kind.stream_name().to_owned())
        .collect();
    names.push(schema::kind::DEAD_LETTER_STREAM.to_owned());
    names.push(format!("KV_{}", sink_clickhouse::lease::LEASE_BUCKET));
    names.push(format!(
        "KV_{}",
        sink_clickhouse::positions::POSITION_BUCKET
    ));
    names
}

/// An MQTT broker, plain TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl Broker {
    /// The broker on loopback.
    pub fn loopback(port: u16) -> Broker {
        Broker {
            host: "127.0.0.1".to_owned(),
            port,
        }
    }

    /// `mqtt://host:port`, as the bridge and edge-sim take it.
    pub fn url(&self) -> String {
        format!("mqtt://{}:{}", self.host, self.port)
    }
}

/// The servers named in the environment; `None` means start a local one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addresses {
    /// `NATS_URL`.
    pub nats: Option<String>,
    /// `CLICKHOUSE_URL`, without a trailing slash.
    pub clickhouse: Option<String>,
    /// `MQTT_URL`.
    pub mqtt: Option<Broker>,
}

impl Addresses {
    /// Reads the process environment.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the variable whose value is not a usable URL.
    pub fn from_env() -> Result<Addresses, ConfigError> {
        Addresses::from_lookup(|name| {
            std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
        })
    }

    /// Reads the variables through `lookup`; unset and empty (or blank) both mean local.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the variable whose value is not a usable URL.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Addresses, ConfigError> {
        let given = |name: &str| {
            lookup(name)
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
        };
        Ok(Addresses {
            nats: given(NATS_VAR)
                .map(|url| parse_nats_url(&url))
                .transpose()?,
            clickhouse: given(CLICKHOUSE_VAR)
                .map(|url| parse_clickhouse_url(&url))
                .transpose()?,
            mqtt: given(MQTT_VAR)
                .map(|url| parse_mqtt_url(&url))
                .transpose()?,
        })
    }

    /// One line for the log: which servers are external.
    pub fn summary(&self) -> String {
        let one = |name: &str, url: Option<String>| match url {
            Some(url) => format!("{name} external ({url})"),
            None => format!("{name} local"),
        };
        [
            one("nats-server", self.nats.clone()),
            one("clickhouse-server", self.clickhouse.clone()),
            one("mosquitto", self.mqtt.as_ref().map(Broker::url)),
        ]
        .join(", ")
    }
}

/// Checks `NATS_URL` as the binaries do (`runtime::NatsSettings`): `nats://` or `tls://`
/// URLs, comma-separated, no credentials in the URL.
///
/// # Errors
///
/// A [`ConfigError`] naming `NATS_URL`.
pub fn parse_nats_url(url: &str) -> Result<String, ConfigError> {
    if url.contains('@') {
        return Err(ConfigError::new(
            NATS_VAR,
            "credentials in the URL are not accepted; the benchmark connects without authentication",
        ));
    }
    let urls: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect();
    for one in &urls {
        runtime::NatsSettings::plain(one)
            .map_err(|error| ConfigError::new(NATS_VAR, error.problem))?;
    }
    Ok(urls.join(","))
}

/// Connects to the comma-separated servers of `urls` (checked by [`parse_nats_url`]).
///
/// # Errors
///
/// When a URL does not parse or no server answers.
pub async fn connect_nats(urls: &str) -> anyhow::Result<async_nats::Client> {
    let servers = urls
        .split(',')
        .map(|url| url.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("'{urls}' is not a list of NATS URLs"))?;
    async_nats::connect(servers)
        .await
        .with_context(|| format!("connecting to NATS at {urls}"))
}

/// Checks `CLICKHOUSE_URL`: `http://` or `https://` with a host, no credentials (the
/// benchmark connects as `default` without a password, as the local server has it).
///
/// # Errors
///
/// A [`ConfigError`] naming `CLICKHOUSE_URL`.
pub fn parse_clickhouse_url(url: &str) -> Result<String, ConfigError> {
    let url = url.trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| {
            ConfigError::new(
                CLICKHOUSE_VAR,
                format!("'{url}' is not an HTTP URL; expected http://host:8123"),
            )
        })?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.starts_with(':') {
        return Err(ConfigError::new(
            CLICKHOUSE_VAR,
            format!("'{url}' has no host; expected http://host:8123"),
        ));
    }
    if authority.contains('@') {
        return Err(ConfigError::new(
            CLICKHOUSE_VAR,
            "credentials in the URL are not accepted; the benchmark connects as user default without a password",
        ));
    }
    Ok(url.to_owned())
}

/// Checks `MQTT_URL`: `mqtt://host[:port]` (or `tcp://`), port 1883 when left out. TLS
/// (`mqtts://`) is refused: the benchmark's own MQTT clients are plain.
///
/// # Errors
///
/// A [`ConfigError`] naming `MQTT_URL`.
pub fn parse_mqtt_url(url: &str) -> Result<Broker, ConfigError> {
    if url.starts_with("mqtts://") || url.starts_with("ssl://") {
        return Err(ConfigError::new(
            MQTT_VAR,
            format!(
                "'{url}': TLS brokers are not supported by the benchmark; give mqtt://host:port"
            ),
        ));
    }
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .ok_or_else(|| ConfigError::new(MQTT_VAR, format!("'{url}' is not mqtt://host:port")))?
        .trim_end_matches('/');
    if rest.contains('@') || rest.contains('/') {
        return Err(ConfigError::new(
            MQTT_VAR,
            format!("'{url}' is not mqtt://host:port (no user, no path)"),
        ));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse::<u16>()
                .ok()
                .filter(|port| *port > 0)
                .ok_or_else(|| {
                    ConfigError::new(MQTT_VAR, format!("'{url}': '{port}' is not a port"))
                })?,
        ),
        None => (rest, 1883),
    };
    if host.is_empty() {
        return Err(ConfigError::new(MQTT_VAR, format!("'{url}' has no host")));
    }
    Ok(Broker {
        host: host.to_owned(),
        port,
    })
}

/// A server a phase uses: one started here (stopped on drop) or an external one.
pub struct Server<S> {
    label: &'static str,
    url: String,
    local: Option<(S, PathBuf)>,
}

impl<S> Server<S> {
    /// A server started here, with its private data folder (to find its processes).
    pub fn local(label: &'static str, url: String, server: S, data_dir: PathBuf) -> Server<S> {
        Server {
            label,
            url,
            local: Some((server, data_dir)),
        }
    }

    /// A server on its own host.
    pub fn external(label: &'static str, url: String) -> Server<S> {
        Server {
            label,
            url,
            local: None,
        }
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether it runs elsewhere.
    pub fn is_external(&self) -> bool {
        self.local.is_none()
    }

    /// Its processes for CPU metering (none, marked not measured, when external).
    pub fn watched(&self) -> Watched {
        match &self.local {
            Some((_, data_dir)) => Watched::new(
                self.label,
                crate::procs::pids_with_argument(&data_dir.display().to_string()),
            ),
            None => Watched::external(self.label),
        }
    }

    /// `local (version)` or `external (URL, version)`, for the report's machine section.
    pub fn describe(&self, version: &str) -> String {
        if self.is_external() {
            format!("{}: external ({}, {version})", self.label, self.url)
        } else {
            format!("{}: local ({version})", self.label)
        }
    }
}

/// The NATS server of `NATS_URL`, claimed for one side of the run at a time.
#[derive(Debug)]
pub struct ExternalNats {
    /// Its URL.
    pub url: String,
    /// Set while the benchmark's streams on it are its own (between claim and release).
    claimed: AtomicBool,
}

impl ExternalNats {
    /// The server at `url`, not yet claimed.
    pub fn new(url: String) -> ExternalNats {
        ExternalNats {
            url,
            claimed: AtomicBool::new(false),
        }
    }

    /// Refuses the server when it has any of [`owned_streams`]; otherwise the benchmark may
    /// create and later delete them.
    ///
    /// # Errors
    ///
    /// When the server has such a stream, or cannot be read.
    pub async fn claim(&self, jetstream: &jetstream::Context) -> anyhow::Result<()> {
        let mut present = Vec::new();
        for name in owned_streams() {
            match jetstream.get_stream(&name).await {
                Ok(mut stream) => {
                    let info = stream
                        .info()
                        .await
                        .with_context(|| format!("reading stream {name} on {}", self.url))?;
                    present.push(format!(
                        "{name} ({} messages, {} consumers)",
                        info.state.messages, info.state.consumer_count
                    ));
                }
                Err(error) if is_not_found(&error) => {
                    // Absent: the benchmark may create it.
                }
                Err(error) => {
                    return Err(error).with_context(|| {
                        format!("looking up stream {name} on {NATS_VAR}={}", self.url)
                    })
                }
            }
        }
        if !present.is_empty() {
            bail!(
                "{NATS_VAR}={} already has {}: the benchmark fills and then deletes these streams, so it only runs on a NATS server without them; point {NATS_VAR} at a server it may use (never production's), or delete them yourself if they are disposable (nats stream rm <name>)",
                self.url,
                present.join(", ")
            );
        }
        self.claimed.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Deletes [`owned_streams`] (all made by this run) when claimed; does nothing otherwise.
    /// Failures are logged: the run's own outcome matters more.
    pub async fn release(&self) {
        if !self.claimed.swap(false, Ordering::SeqCst) {
            return;
        }
        let client = match connect_nats(&self.url).await {
            Ok(client) => client,
            Err(error) => {
                tracing::warn!(url = %self.url, error = %format!("{error:#}"), streams = ?owned_streams(), "cannot connect to delete the benchmark's streams; delete them by hand");
                return;
            }
        };
        let jetstream = crate::stream::context(client.clone());
        for name in owned_streams() {
            match jetstream.delete_stream(&name).await {
                Ok(_) => {
                    tracing::info!(stream = %name, url = %self.url, "deleted the benchmark's stream")
                }
                Err(error) if is_not_found(&error) => {}
                Err(error) => {
                    tracing::warn!(stream = %name, url = %self.url, %error, "cannot delete the benchmark's stream; delete it by hand")
                }
            }
        }
        let _ = client.flush().await;
    }
}

fn is_not_found(error: &jetstream::context::GetStreamError) -> bool {
    matches!(
        error.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(error)
            if error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        }
    }

    #[test]
    fn unset_and_empty_variables_mean_local_servers() {
        assert_eq!(
            Addresses::from_lookup(lookup(&[])),
            Ok(Addresses::default())
        );
        let blank = lookup(&[(NATS_VAR, ""), (CLICKHOUSE_VAR, "  "), (MQTT_VAR, "")]);
        assert_eq!(Addresses::from_lookup(blank), Ok(Addresses::default()));
    }

    #[test]
    fn each_server_is_chosen_on_its_own() {
        let nats_only = lookup(&[(NATS_VAR, "nats://127.0.0.1:4333")]);
        assert_eq!(
            Addresses::from_lookup(nats_only),
            Ok(Addresses {
                nats: Some("nats://127.0.0.1:4333".to_owned()),
                ..Addresses::default()
            })
        );
        let all = lookup(&[
            (NATS_VAR, " nats://a:4222, nats://b:4222 "),
            (CLICKHOUSE_VAR, "http://ch.internal:8123/"),
            (MQTT_VAR, "mqtt://broker.internal:1884"),
        ]);
        assert_eq!(
            Addresses::from_lookup(all),
            Ok(Addresses {
                nats: Some("nats://a:4222,nats://b:4222".to_owned()),
                clickhouse: Some("http://ch.internal:8123".to_owned()),
                mqtt: Some(Broker {
                    host: "broker.internal".to_owned(),
                    port: 1884
                }),
            })
        );
    }

    #[test]
    fn mqtt_port_defaults_to_1883() {
        assert_eq!(
            parse_mqtt_url("mqtt://broker"),
            Ok(Broker {
                host: "broker".to_owned(),
                port: 1883
            })
        );
        assert_eq!(
            parse_mqtt_url("tcp://10.0.0.5:1999/").map(|broker| broker.url()),
            Ok("mqtt://10.0.0.5:1999".to_owned())
        );
    }

    #[test]
    fn bad_urls_name_their_variable() {
        let cases = [
            (NATS_VAR, "127.0.0.1:4222"),
            (NATS_VAR, "http://127.0.0.1:4222"),
            (NATS_VAR, "nats://user:secret@127.0.0.1:4222"),
            (CLICKHOUSE_VAR, "127.0.0.1:8123"),
            (CLICKHOUSE_VAR, "http://"),
            (CLICKHOUSE_VAR, "http://:8123"),
            (CLICKHOUSE_VAR, "http://default:secret@ch:8123"),
            (MQTT_VAR, "127.0.0.1:1883"),
            (MQTT_VAR, "mqtt://"),
            (MQTT_VAR, "mqtt://broker:port"),
            (MQTT_VAR, "mqtt://broker:0"),
            (MQTT_VAR, "mqtt://broker:70000"),
            (MQTT_VAR, "mqtts://broker:8883"),
            (MQTT_VAR, "mqtt://user@broker:1883"),
        ];
        for (variable, value) in cases {
            let error = Addresses::from_lookup(lookup(&[(variable, value)]))
                .expect_err(&format!("{variable}={value} must be refused"));
            assert_eq!(error.setting, variable, "{value}");
            let text = error.to_string();
            assert!(text.contains(variable), "{text}");
            assert!(
                !text.contains("secret"),
                "the message repeats a password: {text}"
            );
        }
    }

    #[test]
    fn the_report_names_local_and_external_servers() {
        let local: Server<()> = Server::local(
            "nats-server",
            "nats://127.0.0.1:1".to_owned(),
            (),
            PathBuf::from("/nonexistent"),
        );
        assert!(!local.is_external());
        assert_eq!(
            local.describe("nats-server v2.10.0"),
            "nats-server: local (nats-server v2.10.0)"
        );
        let external: Server<()> =
            Server::external("clickhouse-server", "http://ch:8123".to_owned());
        assert!(external.is_external());
        assert!(!external.watched().measured);
        assert_eq!(
            external.describe("version 24.8"),
            "clickhouse-server: external (http://ch:8123, version 24.8)"
        );
    }

    #[test]
    fn owned_streams_are_nomadwaves_and_the_sink_buckets() {
        assert_eq!(
            owned_streams(),
            [
                "WAVE",
                "WEATHER",
                "CARBON",
                "DEADLETTER",
                "KV_nomadwave_sink_leases",
                "KV_nomadwave_sink_positions"
            ]
        );
    }
}
