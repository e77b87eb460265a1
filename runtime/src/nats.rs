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
    /// Path of a `.creds` file (JWT + nkey seed) for decentralized (operator mode) authentication.
    #[arg(long, env = "NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// Path of a file holding a user nkey seed (`SU…`), for servers that list `nkey` users.
    #[arg(long, env = "NATS_NKEY_SEED_FILE")]
    pub nats_nkey_seed_file: Option<PathBuf>,
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
    UserPassword {
        user: String,
        password: Secret,
    },
    Token(Secret),
    CredsFile(PathBuf),
    Nkey {
        path: PathBuf,
        seed: Secret,
        public_key: String,
    },
}

#[derive(Debug, Clone)]
struct NatsTls {
    ca: Option<PathBuf>,
    client: Option<(PathBuf, PathBuf)>,
}

/// Why a NATS connection could not be made.
///
/// Every message is one line naming the servers, what failed and which flags to check; the
/// client's own error text is included, never a secret.
#[derive(Debug, Error)]
pub enum NatsError {
    /// No server answered.
    #[error("cannot reach NATS at {urls} (--nats-url/NATS_URL): {detail}; is the server running and the address right?")]
    Unreachable {
        /// The configured URLs, without credentials.
        urls: String,
        /// The client's error, on one line.
        detail: String,
    },
    /// The server refused the credentials (or wants some and none were given).
    #[error("NATS at {urls} rejected {who}: authorization violation; {hint}")]
    Unauthorized {
        /// The configured URLs.
        urls: String,
        /// Which identity was refused: `user 'name'`, `the token`, `nkey U…`, `the creds file …`.
        who: String,
        /// What to check.
        hint: &'static str,
    },
    /// TLS could not be set up, the server certificate was not trusted, or the server refused
    /// ours.
    #[error("TLS to NATS at {urls} failed: {detail}; {hint}")]
    Tls {
        /// The configured URLs.
        urls: String,
        /// The TLS error, on one line.
        detail: String,
        /// What to check.
        hint: &'static str,
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
        let chosen = [
            args.nats_user.is_some() || args.nats_password.is_some(),
            args.nats_token.is_some(),
            args.nats_creds.is_some(),
            args.nats_nkey_seed_file.is_some(),
        ];
        if chosen.iter().filter(|chosen| **chosen).count() > 1 {
            return Err(ConfigError::new(
                "--nats-user/--nats-token/--nats-creds/--nats-nkey-seed-file",
                "choose one authentication method: user+password, token, creds file or nkey seed file",
            ));
        }
        let auth = match (
            &args.nats_user,
            &args.nats_password,
            &args.nats_token,
            &args.nats_creds,
            &args.nats_nkey_seed_file,
        ) {
            (Some(user), Some(password), ..) => NatsAuth::UserPassword {
                user: user.clone(),
                password: password.clone(),
            },
            (Some(_), None, ..) => {
                return Err(ConfigError::new(
                    "--nats-password/NATS_PASSWORD",
                    "missing: --nats-user is set, so a password is required",
                ))
            }
            (None, Some(_), ..) => {
                return Err(ConfigError::new(
                    "--nats-user/NATS_USER",
                    "missing: a password is set, so a user is required",
                ))
            }
            (None, None, Some(token), ..) => NatsAuth::Token(token.clone()),
            (None, None, None, Some(path), _) => {
                require_file("--nats-creds/NATS_CREDS", path)?;
                NatsAuth::CredsFile(path.clone())
            }
            (None, None, None, None, Some(path)) => read_nkey_seed(path)?,
            (None, None, None, None, None) => NatsAuth::None,
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
            nats_nkey_seed_file: None,
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
            NatsAuth::Nkey { seed, .. } => ConnectOptions::with_nkey(seed.expose().to_owned()),
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
            Ok(Err(source)) => Err(self.classify(urls, &source)),
            Err(_elapsed) => Err(NatsError::Unreachable {
                urls,
                detail: format!(
                    "no answer within {} (--nats-connect-timeout/NATS_CONNECT_TIMEOUT)",
                    humantime::format_duration(self.connect_timeout)
                ),
            }),
        }
    }

    /// Turns the client's connect error into a one-line [`NatsError`] naming the cause.
    ///
    /// async-nats reports a failed TLS handshake (and the alert a server sends when it refuses
    /// our certificate) as an I/O error, so the rustls error is looked for in the chain.
    fn classify(&self, urls: String, error: &async_nats::ConnectError) -> NatsError {
        match error.kind() {
            ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
                let (who, hint) = match &self.auth {
                    NatsAuth::None => (
                        "a connection without credentials".to_owned(),
                        "the server requires authentication: give --nats-user/NATS_USER with NATS_PASSWORD, --nats-token/NATS_TOKEN, --nats-nkey-seed-file/NATS_NKEY_SEED_FILE or --nats-creds/NATS_CREDS",
                    ),
                    NatsAuth::UserPassword { user, .. } => (
                        format!("user '{user}'"),
                        "wrong password or unknown user: check --nats-user/NATS_USER and --nats-password/NATS_PASSWORD against the server's authorization block",
                    ),
                    NatsAuth::Token(_) => (
                        "the token".to_owned(),
                        "check --nats-token/NATS_TOKEN against the server's authorization token",
                    ),
                    NatsAuth::CredsFile(path) => (
                        format!("the credentials in {}", path.display()),
                        "the user is unknown to the server's accounts, revoked or expired: check --nats-creds/NATS_CREDS",
                    ),
                    NatsAuth::Nkey { path, public_key, .. } => (
                        format!("nkey {public_key} (seed from {})", path.display()),
                        "the server lists no user with this public key: check --nats-nkey-seed-file/NATS_NKEY_SEED_FILE against the server's nkey users",
                    ),
                };
                NatsError::Unauthorized { urls, who, hint }
            }
            kind => match tls_failure(
                error,
                self.tls.as_ref().is_some_and(|tls| tls.client.is_some()),
            ) {
                Some(tls) => NatsError::Tls {
                    urls,
                    detail: tls.detail,
                    hint: tls.hint,
                },
                None if kind == ConnectErrorKind::Tls => NatsError::Tls {
                    urls,
                    detail: one_line(&error.to_string()),
                    hint: TLS_SETUP_HINT,
                },
                None => NatsError::Unreachable {
                    urls,
                    detail: one_line(&error.to_string()),
                },
            },
        }
    }
}

const TLS_SETUP_HINT: &str = "check --nats-tls-ca/NATS_TLS_CA, --nats-tls-cert/NATS_TLS_CERT and --nats-tls-key/NATS_TLS_KEY (PEM files) and that the server has TLS on";

struct TlsFailure {
    detail: String,
    hint: &'static str,
}

/// Finds a rustls error in `error`'s chain (directly or inside an `io::Error`) and explains it.
///
/// Servers answer a missing client certificate with different alerts (Go's TLS sends
/// `BadCertificate`, OpenSSL `CertificateRequired`), so `has_client_cert` decides between
/// "requires one" and "refused ours".
fn tls_failure(
    error: &(dyn std::error::Error + 'static),
    has_client_cert: bool,
) -> Option<TlsFailure> {
    use async_nats::rustls::{AlertDescription, CertificateError, Error as RustlsError};
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = current {
        let rustls = cause.downcast_ref::<RustlsError>().or_else(|| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<RustlsError>())
        });
        if let Some(rustls) = rustls {
            let hint = match rustls {
                RustlsError::InvalidCertificate(CertificateError::UnknownIssuer)
                | RustlsError::InvalidCertificate(CertificateError::BadSignature) => {
                    "the server's certificate is not signed by a CA in --nats-tls-ca/NATS_TLS_CA: give the CA that issued it"
                }
                RustlsError::InvalidCertificate(CertificateError::NotValidForName) => {
                    "the server's certificate does not name the host of --nats-url/NATS_URL: connect by a name or IP address the certificate lists"
                }
                RustlsError::InvalidCertificate(_) => {
                    "the server's certificate was refused: check it and --nats-tls-ca/NATS_TLS_CA"
                }
                RustlsError::AlertReceived(
                    AlertDescription::CertificateRequired
                    | AlertDescription::HandshakeFailure
                    | AlertDescription::BadCertificate
                    | AlertDescription::UnknownCA,
                ) if !has_client_cert => {
                    "the server requires a client certificate: give --nats-tls-cert/NATS_TLS_CERT and --nats-tls-key/NATS_TLS_KEY"
                }
                RustlsError::AlertReceived(
                    AlertDescription::BadCertificate
                    | AlertDescription::UnknownCA
                    | AlertDescription::CertificateUnknown,
                ) => {
                    "the server refused our client certificate: --nats-tls-cert/NATS_TLS_CERT must be signed by a CA the server trusts"
                }
                _ => TLS_SETUP_HINT,
            };
            return Some(TlsFailure {
                detail: one_line(&rustls.to_string()),
                hint,
            });
        }
        current = cause.source();
    }
    None
}

/// Collapses line breaks so an error stays on one log line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Reads and checks an nkey seed file; the seed itself never appears in an error.
fn read_nkey_seed(path: &std::path::Path) -> Result<NatsAuth, ConfigError> {
    const SETTING: &str = "--nats-nkey-seed-file/NATS_NKEY_SEED_FILE";
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigError::new(SETTING, format!("cannot read {}: {error}", path.display()))
    })?;
    if text.contains("NATS USER JWT") {
        return Err(ConfigError::new(
            SETTING,
            format!(
                "{} is a .creds file (JWT + seed); give it with --nats-creds/NATS_CREDS instead",
                path.display()
            ),
        ));
    }
    let seed = text.trim();
    if seed.is_empty() {
        return Err(ConfigError::new(
            SETTING,
            format!("{} is empty", path.display()),
        ));
    }
    let key_pair = nkeys::KeyPair::from_seed(seed).map_err(|_| {
        ConfigError::new(
            SETTING,
            format!(
                "{} does not hold an nkey seed (one line starting with SU, as `nsc` or `nk -gen user` write)",
                path.display()
            ),
        )
    })?;
    if !seed.starts_with("SU") {
        return Err(ConfigError::new(
            SETTING,
            format!(
                "{} holds a seed of another kind (key {}…); a user seed starts with SU",
                path.display(),
                key_pair.public_key().chars().take(1).collect::<String>()
            ),
        ));
    }
    Ok(NatsAuth::Nkey {
        path: path.to_owned(),
        seed: Secret::new(seed),
        public_key: key_pair.public_key(),
    })
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
            nats_nkey_seed_file: None,
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
        check_rejected(
            two_methods,
            "--nats-user/--nats-token/--nats-creds/--nats-nkey-seed-file",
        );

        let mut missing_creds = args(&["nats://a:1"]);
        missing_creds.nats_creds = Some("/nonexistent.creds".into());
        check_rejected(missing_creds, "--nats-creds/NATS_CREDS");

        let mut cert_only = args(&["nats://a:1"]);
        cert_only.nats_tls_cert = Some("/etc/hostname".into());
        check_rejected(cert_only, "--nats-tls-key/NATS_TLS_KEY");
    }

    #[test]
    fn reads_nkey_seed_files_without_echoing_them() {
        let folder = tempfile::tempdir().unwrap();
        let user = nkeys::KeyPair::new_user();
        let seed = user.seed().unwrap();
        let path = folder.path().join("user.nk");
        std::fs::write(&path, format!("{seed}\n")).unwrap();
        let mut with_seed = args(&["nats://a:1"]);
        with_seed.nats_nkey_seed_file = Some(path.clone());
        let settings = NatsSettings::from_args(&with_seed).unwrap();
        match &settings.auth {
            NatsAuth::Nkey { public_key, .. } => assert_eq!(public_key, &user.public_key()),
            other => panic!("expected nkey auth, got {other:?}"),
        }
        assert!(!format!("{settings:?}").contains(&seed));

        let account_seed = nkeys::KeyPair::new_account().seed().unwrap();
        for (content, expected) in [
            ("".to_owned(), "is empty"),
            ("not a seed".to_owned(), "does not hold an nkey seed"),
            (account_seed.clone(), "a user seed starts with SU"),
            (
                "-----BEGIN NATS USER JWT-----\nxyz\n".to_owned(),
                "--nats-creds",
            ),
        ] {
            std::fs::write(&path, &content).unwrap();
            let error = NatsSettings::from_args(&with_seed).unwrap_err();
            assert_eq!(error.setting, "--nats-nkey-seed-file/NATS_NKEY_SEED_FILE");
            assert!(error.problem.contains(expected), "{error}");
            assert!(!error.to_string().contains(&account_seed), "{error}");
        }
    }

    #[test]
    fn finds_tls_errors_inside_io_errors() {
        use async_nats::rustls::{AlertDescription, CertificateError, Error as RustlsError};
        let wrapped = |error: RustlsError| {
            async_nats::ConnectError::with_source(
                ConnectErrorKind::Io,
                std::io::Error::new(std::io::ErrorKind::InvalidData, error),
            )
        };
        let untrusted = tls_failure(
            &wrapped(RustlsError::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
            false,
        )
        .expect("a TLS failure");
        assert!(
            untrusted.hint.contains("--nats-tls-ca"),
            "{}",
            untrusted.hint
        );
        let no_client_cert = tls_failure(
            &wrapped(RustlsError::AlertReceived(AlertDescription::BadCertificate)),
            false,
        )
        .expect("a TLS failure");
        assert!(
            no_client_cert
                .hint
                .contains("requires a client certificate"),
            "{}",
            no_client_cert.hint
        );
        let refused = async_nats::ConnectError::with_source(
            ConnectErrorKind::Io,
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        );
        let refused_cert = tls_failure(
            &wrapped(RustlsError::AlertReceived(AlertDescription::BadCertificate)),
            true,
        )
        .expect("a TLS failure");
        assert!(
            refused_cert.hint.contains("refused our client certificate"),
            "{}",
            refused_cert.hint
        );
        assert!(tls_failure(&refused, false).is_none());
    }
}
