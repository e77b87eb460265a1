//! NATS connection settings and connect.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::{Client, ConnectErrorKind, ConnectOptions, ServerAddr};
use thiserror::Error;

use crate::config::{parse_duration, ConfigError, Secret};

/// Default NATS address, a local server.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// Default bound on the initial connection attempt.
pub const DEFAULT_CONNECT_TIMEOUT: &str = "5s";

/// NATS connection flags, flattened into every binary's config.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URLs, comma-separated (nats:// or tls://).
    #[arg(long = "nats-url", env = "NATS_URL", default_value = DEFAULT_NATS_URL, value_delimiter = ',')]
    pub nats_url: Vec<String>,
    /// User name for user/password authentication.
    #[arg(long, env = "NATS_USER")]
    pub nats_user: Option<String>,
    /// Password for user/password authentication.
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<Secret>,
    /// Token for token authentication.
    #[arg(long, env = "NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<Secret>,
    /// Path of a `.creds` file (JWT + nkey seed) for decentralized authentication.
    #[arg(long, env = "NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// PEM file of CA certificates to verify the server with (turns TLS on).
    #[arg(long, env = "NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (needs --nats-tls-key).
    #[arg(long, env = "NATS_TLS_CERT")]
    pub nats_tls_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(long, env = "NATS_TLS_KEY")]
    pub nats_tls_key: Option<PathBuf>,
    /// How long the first connection may take before startup fails.
    #[arg(long, env = "NATS_CONNECT_TIMEOUT", default_value = DEFAULT_CONNECT_TIMEOUT, value_parser = parse_duration)]
    pub nats_connect_timeout: Duration,
}

/// Validated NATS settings; built only through [`NatsSettings::from_args`].
#[derive(Debug, Clone)]
pub struct NatsSettings {
    servers: Vec<ServerAddr>,
    display_urls: String,
    auth: NatsAuth,
    tls: Option<NatsTls>,
    connect_timeout: Duration,
}

#[derive(Debug, Clone)]
enum NatsAuth {
    None,
    UserPassword { user: String, password: Secret },
    Token(Secret),
    CredsFile(PathBuf),
}

#[derive(Debug, Clone)]
struct NatsTls {
    ca: Option<PathBuf>,
    client: Option<(PathBuf, PathBuf)>,
}

/// Why a NATS connection could not be made.
#[derive(Debug, Error)]
pub enum NatsError {
    /// No server answered.
    #[error("cannot reach NATS at {urls} (--nats-url/NATS_URL); is the server running and the address right?")]
    Unreachable {
        /// The configured URLs, without credentials.
        urls: String,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The server refused the credentials.
    #[error("NATS at {urls} rejected the credentials (--nats-user/--nats-password, --nats-token or --nats-creds)")]
    Unauthorized {
        /// The configured URLs.
        urls: String,
    },
    /// TLS could not be set up or the server certificate was refused.
    #[error("TLS to NATS at {urls} failed (--nats-tls-ca, --nats-tls-cert, --nats-tls-key)")]
    Tls {
        /// The configured URLs.
        urls: String,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The creds file could not be read.
    #[error("cannot read NATS creds file {path} (--nats-creds/NATS_CREDS)")]
    Creds {
        /// The configured path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl NatsSettings {
    /// Validates the flags without any I/O.
    ///
    /// # Errors
    ///
    /// Returns a [`ConfigError`] naming the flag for a bad URL, a user without password (or
    /// the reverse), several authentication methods at once, a certificate without key, or a
    /// file that does not exist.
    pub fn from_args(args: &NatsArgs) -> Result<NatsSettings, ConfigError> {
        const URL: &str = "--nats-url/NATS_URL";
        let urls: Vec<&str> = args
            .nats_url
            .iter()
            .map(|url| url.trim())
            .filter(|url| !url.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(ConfigError::new(
                URL,
                "no server given; expected nats://host:port",
            ));
        }
        let mut servers = Vec::with_capacity(urls.len());
        for url in &urls {
            let has_known_scheme = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|scheme| url.starts_with(scheme));
            let server: ServerAddr = match url.parse() {
                Ok(server) if has_known_scheme => server,
                _ => {
                    return Err(ConfigError::new(
                        URL,
                        format!("'{url}' is not a NATS URL; expected nats://host:port or tls://host:port, comma-separated"),
                    ))
                }
            };
            if server.has_user_pass() {
                return Err(ConfigError::new(
                    URL,
                    "credentials in the URL are not accepted; use --nats-user and NATS_PASSWORD",
                ));
            }
            servers.push(server);
        }
        let auth = match (
            &args.nats_user,
            &args.nats_password,
            &args.nats_token,
            &args.nats_creds,
        ) {
            (None, None, None, None) => NatsAuth::None,
            (Some(user), Some(password), None, None) => NatsAuth::UserPassword {
                user: user.clone(),
                password: password.clone(),
            },
            (Some(_), None, _, _) => {
                return Err(ConfigError::new(
                    "--nats-password/NATS_PASSWORD",
                    "missing: --nats-user is set, so a password is required",
                ))
            }
            (None, Some(_), _, _) => {
                return Err(ConfigError::new(
                    "--nats-user/NATS_USER",
                    "missing: a password is set, so a user is required",
                ))
            }
            (None, None, Some(token), None) => NatsAuth::Token(token.clone()),
            (None, None, None, Some(path)) => {
                require_file("--nats-creds/NATS_CREDS", path)?;
                NatsAuth::CredsFile(path.clone())
            }
            _ => {
                return Err(ConfigError::new(
                    "--nats-user/--nats-token/--nats-creds",
                    "choose one authentication method: user+password, token or creds file",
                ))
            }
        };
        let client = match (&args.nats_tls_cert, &args.nats_tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                require_file("--nats-tls-cert/NATS_TLS_CERT", cert)?;
                require_file("--nats-tls-key/NATS_TLS_KEY", key)?;
                Some((cert.clone(), key.clone()))
            }
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "--nats-tls-key/NATS_TLS_KEY",
                    "missing: --nats-tls-cert is set, so its private key is required",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "--nats-tls-cert/NATS_TLS_CERT",
                    "missing: --nats-tls-key is set, so its certificate is required",
                ))
            }
        };
        if let Some(ca) = &args.nats_tls_ca {
            require_file("--nats-tls-ca/NATS_TLS_CA", ca)?;
        }
        let wants_tls = args.nats_tls_ca.is_some()
            || client.is_some()
            || urls.iter().any(|url| url.starts_with("tls://"));
        let tls = wants_tls.then(|| NatsTls {
            ca: args.nats_tls_ca.clone(),
            client,
        });
        Ok(NatsSettings {
            servers,
            display_urls: urls.join(","),
            auth,
            tls,
            connect_timeout: args.nats_connect_timeout,
        })
    }

    /// Settings for a single unauthenticated server, as tests and tools use.
    pub fn plain(url: &str) -> Result<NatsSettings, ConfigError> {
        NatsSettings::from_args(&NatsArgs {
            nats_url: vec![url.to_owned()],
            nats_user: None,
            nats_password: None,
            nats_token: None,
            nats_creds: None,
            nats_tls_ca: None,
            nats_tls_cert: None,
            nats_tls_key: None,
            nats_connect_timeout: Duration::from_secs(5),
        })
    }

    /// The configured URLs, safe to log.
    pub fn display_urls(&self) -> &str {
        &self.display_urls
    }

    /// Connects, naming the client `client_name` on the server.
    ///
    /// The first connection must succeed within the connect timeout; after that the client
    /// reconnects on its own forever, and connection events are logged.
    ///
    /// # Errors
    ///
    /// Returns a [`NatsError`] saying whether the server was unreachable, refused the
    /// credentials or failed TLS.
    pub async fn connect(&self, client_name: &str) -> Result<Client, NatsError> {
        let mut options = match &self.auth {
            NatsAuth::None => ConnectOptions::new(),
            NatsAuth::UserPassword { user, password } => {
                ConnectOptions::with_user_and_password(user.clone(), password.expose().to_owned())
            }
            NatsAuth::Token(token) => ConnectOptions::with_token(token.expose().to_owned()),
            NatsAuth::CredsFile(path) => ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|source| NatsError::Creds {
                    path: path.clone(),
                    source,
                })?,
        };
        if let Some(tls) = &self.tls {
            options = options.require_tls(true);
            if let Some(ca) = &tls.ca {
                options = options.add_root_certificates(ca.clone());
            }
            if let Some((cert, key)) = &tls.client {
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
        }
        let urls = self.display_urls.clone();
        options = options
            .name(client_name)
            .connection_timeout(self.connect_timeout)
            .max_reconnects(None)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("nats connected"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("nats disconnected; reconnecting")
                    }
                    other => tracing::info!(event = %other, "nats event"),
                }
            });
        let result = tokio::time::timeout(
            self.connect_timeout + Duration::from_secs(1),
            options.connect(self.servers.clone()),
        )
        .await;
        match result {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(source)) => Err(match source.kind() {
                ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
                    NatsError::Unauthorized { urls }
                }
                ConnectErrorKind::Tls => NatsError::Tls { urls, source },
                _ => NatsError::Unreachable { urls, source },
            }),
            Err(_elapsed) => Err(NatsError::Unreachable {
                urls,
                source: async_nats::ConnectError::new(ConnectErrorKind::TimedOut),
            }),
        }
    }
}

fn require_file(setting: &'static str, path: &std::path::Path) -> Result<(), ConfigError> {
    if path.is_file() {
        return Ok(());
    }
    Err(ConfigError::new(
        setting,
        format!("{} is not a readable file", path.display()),
    ))
}

/// Keeps the `nats` readiness check in line with the client's connection state.
pub fn report_connection(
    client: Client,
    health: crate::Health,
    shutdown: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => match client.connection_state() {
                    async_nats::connection::State::Connected => health.set_ready("nats"),
                    state => health.set_not_ready("nats", format!("{state:?}")),
                },
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(urls: &[&str]) -> NatsArgs {
        NatsArgs {
            nats_url: urls.iter().map(|url| url.to_string()).collect(),
            nats_user: None,
            nats_password: None,
            nats_token: None,
            nats_creds: None,
            nats_tls_ca: None,
            nats_tls_cert: None,
            nats_tls_key: None,
            nats_connect_timeout: Duration::from_secs(1),
        }
    }

    fn check_rejected(args: NatsArgs, setting: &str) {
        let error = NatsSettings::from_args(&args).unwrap_err();
        assert_eq!(error.setting, setting, "{error}");
    }

    #[test]
    fn accepts_url_lists() {
        let settings = NatsSettings::from_args(&args(&["nats://a:4222", " tls://b:4222"])).unwrap();
        assert_eq!(settings.display_urls(), "nats://a:4222,tls://b:4222");
        assert!(settings.tls.is_some(), "tls:// turns TLS on");
    }

    #[test]
    fn rejects_bad_urls() {
        check_rejected(args(&["http://x:1"]), "--nats-url/NATS_URL");
        check_rejected(args(&["not a url"]), "--nats-url/NATS_URL");
        check_rejected(args(&[""]), "--nats-url/NATS_URL");
        check_rejected(args(&["nats://u:p@host:4222"]), "--nats-url/NATS_URL");
    }

    #[test]
    fn rejects_half_credentials() {
        let mut user_only = args(&["nats://a:1"]);
        user_only.nats_user = Some("u".into());
        check_rejected(user_only, "--nats-password/NATS_PASSWORD");

        let mut two_methods = args(&["nats://a:1"]);
        two_methods.nats_token = Some(Secret::new("t"));
        two_methods.nats_creds = Some("/nonexistent".into());
        check_rejected(two_methods, "--nats-user/--nats-token/--nats-creds");

        let mut missing_creds = args(&["nats://a:1"]);
        missing_creds.nats_creds = Some("/nonexistent.creds".into());
        check_rejected(missing_creds, "--nats-creds/NATS_CREDS");

        let mut cert_only = args(&["nats://a:1"]);
        cert_only.nats_tls_cert = Some("/etc/hostname".into());
        check_rejected(cert_only, "--nats-tls-key/NATS_TLS_KEY");
    }
}
