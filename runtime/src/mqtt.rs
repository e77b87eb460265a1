//! MQTT connection settings shared by the bridge and the edge simulator.

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::MqttOptions;

use crate::config::{parse_duration, ConfigError, Secret};

/// Default broker address.
pub const DEFAULT_MQTT_URL: &str = "mqtt://127.0.0.1:1883";

/// Flags of an MQTT connection, flattened into the commands that talk to mosquitto.
#[derive(Debug, Clone, clap::Args)]
pub struct MqttArgs {
    /// Broker address, mqtt://host:port.
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
}

impl MqttSettings {
    /// Validates `args`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the flag: a URL that is not `mqtt://host[:port]`, an unreadable
    /// password file, a keep-alive under 5 s.
    pub fn from_args(args: &MqttArgs) -> Result<MqttSettings, ConfigError> {
        const URL: &str = "--mqtt-url/MQTT_URL";
        let url = args.mqtt_url.trim();
        let rest = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
            .ok_or_else(|| ConfigError::new(URL, format!("'{url}' is not mqtt://host:port")))?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => {
                let port = port.parse::<u16>().map_err(|_| {
                    ConfigError::new(URL, format!("'{url}': '{port}' is not a port"))
                })?;
                (host, port)
            }
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
        Ok(MqttSettings {
            host: host.to_owned(),
            port,
            credentials,
            keep_alive: args.mqtt_keep_alive,
        })
    }

    /// `host:port`, for logs.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Client options for `client_id`; the caller sets session and ack behaviour.
    pub fn options(&self, client_id: &str) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, self.host.clone(), self.port);
        options.set_keep_alive(self.keep_alive);
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user.clone(), password.expose().to_owned());
        }
        options
    }
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
}
