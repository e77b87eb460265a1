//! Configuration errors and the exit codes every binary maps its result to.

use thiserror::Error;

/// Exit code for invalid configuration (sysexits' `EX_USAGE`).
pub const EXIT_BAD_CONFIG: u8 = 64;

/// Exit code for a failure while running.
pub const EXIT_RUNTIME_FAILURE: u8 = 1;

/// A setting that cannot be used, found before any I/O.
///
/// The message names both the flag and its environment variable, so an operator can fix
/// whichever one they set.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid {setting}: {problem}")]
pub struct ConfigError {
    /// The flag and env var, e.g. `--nats-url/NATS_URL`.
    pub setting: &'static str,
    /// What is wrong and which values are allowed.
    pub problem: String,
}

impl ConfigError {
    /// Builds an error for `setting`.
    pub fn new(setting: &'static str, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            setting,
            problem: problem.into(),
        }
    }
}

/// Maps a binary's result to its exit code, printing the whole cause chain on one line.
///
/// Configuration errors (anywhere in the chain) exit with [`EXIT_BAD_CONFIG`], everything else
/// with [`EXIT_RUNTIME_FAILURE`]. This is the only place a service writes to stderr directly:
/// the line must reach the operator even when tracing is not initialised yet.
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            let is_config = error.chain().any(|cause| cause.is::<ConfigError>());
            std::process::ExitCode::from(if is_config {
                EXIT_BAD_CONFIG
            } else {
                EXIT_RUNTIME_FAILURE
            })
        }
    }
}

/// Renders an error and all its sources on one line, joined by `: `.
pub fn error_line(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A secret string (password, token) whose `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself; call only where it is handed to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The secret given directly, or else read from `file` (how Vault templates and Docker
    /// secrets mount it); one trailing newline is dropped. `setting` names the file flag in the
    /// error, which never contains the file's content.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when the file cannot be read or is empty.
    pub fn from_value_or_file(
        value: Option<&Secret>,
        file: Option<&std::path::Path>,
        setting: &'static str,
    ) -> Result<Option<Secret>, ConfigError> {
        match (value, file) {
            (Some(secret), _) => Ok(Some(secret.clone())),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|error| {
                    ConfigError::new(setting, format!("cannot read {}: {error}", path.display()))
                })?;
                let secret = text.trim_end_matches(['\n', '\r']);
                if secret.is_empty() {
                    return Err(ConfigError::new(
                        setting,
                        format!("{} is empty", path.display()),
                    ));
                }
                Ok(Some(Secret::new(secret)))
            }
            (None, None) => Ok(None),
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Secret(<redacted>)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(value.to_owned()))
    }
}

/// Parses a humantime duration such as `500ms`, `5s` or `2m` (a clap value parser).
///
/// # Errors
///
/// Returns the parser's message when the text is not a duration.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|error| format!("{error} (examples: 500ms, 5s, 2m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_hides_value() {
        let secret = Secret::new("hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn config_error_anywhere_in_chain_exits_64() {
        let error = anyhow::Error::new(ConfigError::new("--x/X", "bad")).context("starting");
        assert_eq!(format!("{error:#}"), "starting: invalid --x/X: bad");
        let code = exit_code(Err(error));
        assert_eq!(
            format!("{code:?}"),
            format!("{:?}", std::process::ExitCode::from(64))
        );
    }
}
