//! MQTT connection settings shared by the bridge and the edge simulator: plain `mqtt://` or
//! TLS `mqtts://` (rustls, server verified against `--mqtt-tls-ca`, optional client
//! certificate), user and password, and one-line explanations of refused connections.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rumqttc::{ConnectReturnCode, ConnectionError, MqttOptions, TlsConfiguration, Transport};

use crate::config::{parse_duration, ConfigError, Secret};

/// Default broker address.
pub const DEFAULT_MQTT_URL: &str = "mqtt://127.0.0.1:1883";

/// Default port of `mqtts://` URLs.
pub const DEFAULT_MQTTS_PORT: u16 = 8883;

/// Flags of an MQTT connection, flattened into the commands that talk to mosquitto.
#[derive(Debug, Clone, clap::Args)]
pub struct MqttArgs {
    /// Broker address, mqtt://host:port, or mqtts://host:port for TLS (needs --mqtt-tls-ca).
    #[arg(long, env = "MQTT_URL", default_value = DEFAULT_MQTT_URL)]
    pub mqtt_url: String,
    /// MQTT user name.
    #[arg(long, env = "MQTT_USER")]
    pub mqtt_user: Option<String>,
    /// MQTT password (never logged).
    #[arg(
        long,
        env = "MQTT_PASSWORD",
        hide_env_values = true,
        requires = "mqtt_user"
    )]
    pub mqtt_password: Option<Secret>,
    /// File holding the MQTT password (as rendered by a Vault template).
    #[arg(
        long,
        env = "MQTT_PASSWORD_FILE",
        conflicts_with = "mqtt_password",
        requires = "mqtt_user"
    )]
    pub mqtt_password_file: Option<PathBuf>,
    /// Keep-alive interval; the broker drops a silent client after 1.5 × this.
    #[arg(long, env = "MQTT_KEEP_ALIVE", default_value = "30s", value_parser = parse_duration)]
    pub mqtt_keep_alive: Duration,
    /// PEM file of CA certificates to verify the broker with (mqtts:// only).
    #[arg(long, env = "MQTT_TLS_CA")]
    pub mqtt_tls_ca: Option<PathBuf>,
    /// PEM client certificate, for brokers with `require_certificate true` (needs --mqtt-tls-key).
    #[arg(long, env = "MQTT_TLS_CERT")]
    pub mqtt_tls_cert: Option<PathBuf>,
    /// PEM private key of the client certificate (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "MQTT_TLS_KEY")]
    pub mqtt_tls_key: Option<PathBuf>,
}

/// TLS material, read and checked at startup.
#[derive(Clone)]
pub struct MqttTls {
    /// PEM CA bundle.
    ca: Vec<u8>,
    /// PEM client certificate chain and key.
    client_auth: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for MqttTls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret; the rest is noise in a log.
        formatter
            .debug_struct("MqttTls")
            .field("client_auth", &self.client_auth.is_some())
            .finish_non_exhaustive()
    }
}

/// Validated MQTT settings.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// User and password, if any.
    pub credentials: Option<(String, Secret)>,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// TLS (mqtts://), if on.
    pub tls: Option<MqttTls>,
}

/// How a broker connection failed, for the log and the readiness reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttFailure {
    /// One line: what failed, with which broker, and what to check. Never a secret.
    pub message: String,
    /// Whether the broker refused us (credentials, certificates): retrying unchanged only
    /// helps once someone fixes the broker's or our configuration.
    pub refused: bool,
}

impl MqttSettings {
    /// Validates `args`, reading the password file and the TLS files.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the flag: a URL that is not `mqtt://host[:port]` or
    /// `mqtts://host[:port]`, `mqtts://` without `--mqtt-tls-ca` (or TLS files with
    /// `mqtt://`), an unreadable password file, a TLS file that is unreadable or holds no
    /// certificate or key, a keep-alive under 5 s.
    pub fn from_args(args: &MqttArgs) -> Result<MqttSettings, ConfigError> {
        const URL: &str = "--mqtt-url/MQTT_URL";
        let url = args.mqtt_url.trim();
        let (rest, use_tls) = if let Some(rest) = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
        {
            (rest, false)
        } else if let Some(rest) = url
            .strip_prefix("mqtts://")
            .or_else(|| url.strip_prefix("ssl://"))
        {
            (rest, true)
        } else {
            return Err(ConfigError::new(
                URL,
                format!("'{url}' is not mqtt://host:port or mqtts://host:port"),
            ));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => {
                let port = port.parse::<u16>().map_err(|_| {
                    ConfigError::new(URL, format!("'{url}': '{port}' is not a port"))
                })?;
                (host, port)
            }
            None if use_tls => (rest, DEFAULT_MQTTS_PORT),
            None => (rest, 1883),
        };
        if host.is_empty() {
            return Err(ConfigError::new(URL, format!("'{url}' has no host")));
        }
        let password = Secret::from_value_or_file(
            args.mqtt_password.as_ref(),
            args.mqtt_password_file.as_deref(),
            "--mqtt-password-file/MQTT_PASSWORD_FILE",
        )?;
        let credentials = args
            .mqtt_user
            .clone()
            .map(|user| (user, password.unwrap_or_else(|| Secret::new(""))));
        if args.mqtt_keep_alive < Duration::from_secs(5) {
            return Err(ConfigError::new(
                "--mqtt-keep-alive/MQTT_KEEP_ALIVE",
                "must be at least 5s",
            ));
        }
        let tls = tls_from_args(args, use_tls, url)?;
        Ok(MqttSettings {
            host: host.to_owned(),
            port,
            credentials,
            keep_alive: args.mqtt_keep_alive,
            tls,
        })
    }

    /// `host:port`, for logs.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The broker as a URL, `mqtt://host:port` or `mqtts://host:port`, for error messages.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }

    /// Explains a failed connection attempt on one line, naming the broker, the user and the
    /// flags to check: a refusal by return code (`not authorized`, `bad user name or
    /// password`), a certificate the client does not trust, a client certificate the broker
    /// wants or refuses, or an unreachable broker.
    pub fn describe_failure(&self, error: &ConnectionError) -> MqttFailure {
        let broker = self.url();
        if let ConnectionError::ConnectionRefused(code) = error {
            let who = match &self.credentials {
                Some((user, _)) => format!("user '{user}'"),
                None => "an anonymous connection".to_owned(),
            };
            let hint = match (code, &self.credentials) {
                (
                    ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
                    Some(_),
                ) => "check --mqtt-user/MQTT_USER and --mqtt-password/MQTT_PASSWORD (or MQTT_PASSWORD_FILE) against the broker's password_file",
                (
                    ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
                    None,
                ) => "the broker does not allow anonymous clients: give --mqtt-user/MQTT_USER and --mqtt-password/MQTT_PASSWORD (or MQTT_PASSWORD_FILE)",
                (ConnectReturnCode::BadClientId, _) => {
                    "the broker refused the client id (--mqtt-client-id/MQTT_CLIENT_ID)"
                }
                _ => "see the broker's log",
            };
            let reason = match code {
                ConnectReturnCode::NotAuthorized => "not authorized",
                ConnectReturnCode::BadUserNamePassword => "bad user name or password",
                ConnectReturnCode::BadClientId => "client id rejected",
                ConnectReturnCode::ServiceUnavailable => "service unavailable",
                ConnectReturnCode::RefusedProtocolVersion => "protocol version refused",
                ConnectReturnCode::Success => "success",
            };
            return MqttFailure {
                message: format!("MQTT broker {broker} refused {who}: {reason}; {hint}"),
                refused: !matches!(code, ConnectReturnCode::ServiceUnavailable),
            };
        }
        let has_client_cert = self
            .tls
            .as_ref()
            .is_some_and(|tls| tls.client_auth.is_some());
        if let Some((detail, hint)) = tls_problem(error, has_client_cert) {
            return MqttFailure {
                message: format!("TLS to MQTT broker {broker} failed: {detail}; {hint}"),
                refused: true,
            };
        }
        MqttFailure {
            message: format!(
                "cannot reach MQTT broker {broker} (--mqtt-url/MQTT_URL): {}",
                one_line(&error.to_string())
            ),
            refused: false,
        }
    }

    /// Client options for `client_id`; the caller sets session and ack behaviour.
    pub fn options(&self, client_id: &str) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, self.host.clone(), self.port);
        options.set_keep_alive(self.keep_alive);
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user.clone(), password.expose().to_owned());
        }
        if let Some(tls) = &self.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
                ca: tls.ca.clone(),
                alpn: None,
                client_auth: tls.client_auth.clone(),
            }));
        }
        options
    }
}

fn tls_from_args(
    args: &MqttArgs,
    use_tls: bool,
    url: &str,
) -> Result<Option<MqttTls>, ConfigError> {
    const CA: &str = "--mqtt-tls-ca/MQTT_TLS_CA";
    const CERT: &str = "--mqtt-tls-cert/MQTT_TLS_CERT";
    const KEY: &str = "--mqtt-tls-key/MQTT_TLS_KEY";
    if !use_tls {
        if args.mqtt_tls_ca.is_some() || args.mqtt_tls_cert.is_some() {
            return Err(ConfigError::new(
                "--mqtt-url/MQTT_URL",
                format!(
                    "'{url}' is plain MQTT but TLS files are given; use mqtts://host:port for TLS"
                ),
            ));
        }
        return Ok(None);
    }
    let Some(ca_path) = &args.mqtt_tls_ca else {
        return Err(ConfigError::new(
            CA,
            format!("missing: '{url}' uses TLS, so the CA bundle that signed the broker's certificate is required (for a public CA: /etc/ssl/certs/ca-certificates.crt)"),
        ));
    };
    let ca = read_pem(CA, ca_path)?;
    if count_certificates(&ca) == 0 {
        return Err(ConfigError::new(
            CA,
            format!("{} holds no PEM certificate", ca_path.display()),
        ));
    }
    let client_auth = match (&args.mqtt_tls_cert, &args.mqtt_tls_key) {
        (Some(cert_path), Some(key_path)) => {
            let cert = read_pem(CERT, cert_path)?;
            if count_certificates(&cert) == 0 {
                return Err(ConfigError::new(
                    CERT,
                    format!("{} holds no PEM certificate", cert_path.display()),
                ));
            }
            let key = read_pem(KEY, key_path)?;
            if !holds_private_key(&key) {
                return Err(ConfigError::new(
                    KEY,
                    format!(
                        "{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                        key_path.display()
                    ),
                ));
            }
            Some((cert, key))
        }
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::new(
                KEY,
                "missing: --mqtt-tls-cert is set, so its private key is required",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                CERT,
                "missing: --mqtt-tls-key is set, so its certificate is required",
            ))
        }
    };
    Ok(Some(MqttTls { ca, client_auth }))
}

fn read_pem(setting: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|error| {
        ConfigError::new(setting, format!("cannot read {}: {error}", path.display()))
    })
}

fn count_certificates(pem: &[u8]) -> usize {
    rustls_pemfile::certs(&mut std::io::BufReader::new(pem))
        .filter(Result::is_ok)
        .count()
}

fn holds_private_key(pem: &[u8]) -> bool {
    matches!(
        rustls_pemfile::private_key(&mut std::io::BufReader::new(pem)),
        Ok(Some(_))
    )
}

/// A rustls error anywhere in `error` (rumqttc wraps it in its TLS error or in an I/O error),
/// explained; `has_client_cert` tells a missing client certificate from a refused one, as
/// brokers answer both with the same alerts.
fn tls_problem(error: &ConnectionError, has_client_cert: bool) -> Option<(String, &'static str)> {
    use rumqttc::tokio_rustls::rustls::{AlertDescription, CertificateError, Error as RustlsError};
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut found = None;
    while let Some(cause) = current {
        let rustls = cause.downcast_ref::<RustlsError>().or_else(|| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<RustlsError>())
        });
        if rustls.is_some() {
            found = rustls;
            break;
        }
        current = cause.source();
    }
    let rustls = match (found, error) {
        (Some(rustls), _) => rustls,
        // A TLS setup error without rustls inside (no certificate in a file, bad key).
        (None, ConnectionError::Tls(tls)) => {
            return Some((
                one_line(&tls.to_string()),
                "check --mqtt-tls-ca/MQTT_TLS_CA, --mqtt-tls-cert/MQTT_TLS_CERT and --mqtt-tls-key/MQTT_TLS_KEY",
            ))
        }
        (None, _) => return None,
    };
    let hint = match rustls {
        RustlsError::InvalidCertificate(CertificateError::UnknownIssuer)
        | RustlsError::InvalidCertificate(CertificateError::BadSignature) => {
            "the broker's certificate is not signed by a CA in --mqtt-tls-ca/MQTT_TLS_CA: give the CA that issued it"
        }
        RustlsError::InvalidCertificate(CertificateError::NotValidForName) => {
            "the broker's certificate does not name the host of --mqtt-url/MQTT_URL: connect by a name or IP address the certificate lists"
        }
        RustlsError::InvalidCertificate(_) => {
            "the broker's certificate was refused: check it and --mqtt-tls-ca/MQTT_TLS_CA"
        }
        RustlsError::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::HandshakeFailure
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA,
        ) if !has_client_cert => {
            "the broker requires a client certificate: give --mqtt-tls-cert/MQTT_TLS_CERT and --mqtt-tls-key/MQTT_TLS_KEY"
        }
        RustlsError::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown,
        ) => {
            "the broker refused our client certificate: --mqtt-tls-cert/MQTT_TLS_CERT must be signed by a CA the broker trusts"
        }
        _ => "check --mqtt-tls-ca/MQTT_TLS_CA, --mqtt-tls-cert/MQTT_TLS_CERT, --mqtt-tls-key/MQTT_TLS_KEY and that the broker's listener has TLS on",
    };
    Some((one_line(&rustls.to_string()), hint))
}

/// Collapses line breaks so an error stays on one log line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: &str) -> MqttArgs {
        MqttArgs {
            mqtt_url: url.to_owned(),
            mqtt_user: None,
            mqtt_password: None,
            mqtt_password_file: None,
            mqtt_keep_alive: Duration::from_secs(30),
            mqtt_tls_ca: None,
            mqtt_tls_cert: None,
            mqtt_tls_key: None,
        }
    }

    #[test]
    fn reads_broker_urls() {
        let settings = MqttSettings::from_args(&args("mqtt://mosquitto:1884")).expect("valid");
        assert_eq!(settings.address(), "mosquitto:1884");
        let settings = MqttSettings::from_args(&args("mqtt://127.0.0.1")).expect("valid");
        assert_eq!(settings.port, 1883);
        for bad in ["http://x:1", "mqtt://:1883", "mqtt://x:port"] {
            let error = MqttSettings::from_args(&args(bad)).expect_err(bad);
            assert_eq!(error.setting, "--mqtt-url/MQTT_URL");
        }
    }

    #[test]
    fn mqtts_needs_a_ca_and_plain_mqtt_refuses_tls_files() {
        let error = MqttSettings::from_args(&args("mqtts://broker")).expect_err("no CA");
        assert_eq!(error.setting, "--mqtt-tls-ca/MQTT_TLS_CA");
        let mut plain_with_ca = args("mqtt://broker");
        plain_with_ca.mqtt_tls_ca = Some("/etc/hostname".into());
        let error = MqttSettings::from_args(&plain_with_ca).expect_err("TLS files on mqtt://");
        assert_eq!(error.setting, "--mqtt-url/MQTT_URL");
        let mut not_pem = args("mqtts://broker");
        not_pem.mqtt_tls_ca = Some("/etc/hostname".into());
        let error = MqttSettings::from_args(&not_pem).expect_err("no certificate");
        assert_eq!(error.setting, "--mqtt-tls-ca/MQTT_TLS_CA");
        assert!(error.problem.contains("no PEM certificate"), "{error}");
    }

    #[test]
    fn explains_refusals() {
        let mut with_user = args("mqtt://broker:1884");
        with_user.mqtt_user = Some("bridge".into());
        with_user.mqtt_password = Some(Secret::new("hunter2"));
        let settings = MqttSettings::from_args(&with_user).expect("valid");
        let failure = settings.describe_failure(&ConnectionError::ConnectionRefused(
            ConnectReturnCode::NotAuthorized,
        ));
        assert!(failure.refused);
        assert!(
            failure.message.starts_with(
                "MQTT broker mqtt://broker:1884 refused user 'bridge': not authorized;"
            ),
            "{}",
            failure.message
        );
        assert!(!failure.message.contains("hunter2"));
        let anonymous = MqttSettings::from_args(&args("mqtt://broker:1884")).expect("valid");
        let failure = anonymous.describe_failure(&ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword,
        ));
        assert!(
            failure
                .message
                .contains("refused an anonymous connection: bad user name or password"),
            "{}",
            failure.message
        );
        let failure = anonymous.describe_failure(&ConnectionError::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert!(!failure.refused);
        assert!(
            failure
                .message
                .starts_with("cannot reach MQTT broker mqtt://broker:1884"),
            "{}",
            failure.message
        );
    }
}
