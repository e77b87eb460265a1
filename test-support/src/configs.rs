//! Config file writers shared by the test servers and `cargo xtask services`.
//!
//! Each function is pure: it returns the text of a config file and leaves writing it to the caller.
//! Every server keeps all of its state (data, logs, config) inside one folder, so that a test can delete it whole.

use std::path::Path;

/// Debian's ClickHouse server config, used as the base that [`clickhouse_config`] rewrites.
pub const CLICKHOUSE_BASE_CONFIG: &str = "/etc/clickhouse-server/config.xml";

/// Debian's ClickHouse users file, copied beside the rewritten config because the config names it relatively.
pub const CLICKHOUSE_BASE_USERS: &str = "/etc/clickhouse-server/users.xml";

/// Name of the log file that [`nats_config`] points nats-server at.
pub const NATS_LOG_FILE: &str = "nats.log";

/// Line that nats-server logs once JetStream is up and the client listener accepts connections.
pub const NATS_READY_LOG_LINE: &str = "Server is ready";

/// Name of the log file that [`mosquitto_config`] points mosquitto at.
pub const MOSQUITTO_LOG_FILE: &str = "mosquitto.log";

/// Folder, inside the server folder, that ClickHouse keeps its data in.
pub const CLICKHOUSE_DATA_FOLDER: &str = "data";

/// Folder, inside the server folder, that ClickHouse writes its logs to.
pub const CLICKHOUSE_LOG_FOLDER: &str = "log";

/// Name of ClickHouse's main log file inside [`CLICKHOUSE_LOG_FOLDER`].
pub const CLICKHOUSE_LOG_FILE: &str = "clickhouse-server.log";

/// The three TCP ports a ClickHouse server listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClickHousePorts {
    /// HTTP interface, used by the pipeline and by tests.
    pub http: u16,
    /// Native protocol, used by `clickhouse-client`.
    pub tcp: u16,
    /// Replica exchange; unused here but always bound by the server, so it must not collide.
    pub interserver: u16,
}

/// Reasons a base ClickHouse config cannot be rewritten.
#[derive(Debug, thiserror::Error)]
pub enum ClickHouseConfigError {
    /// The base config has neither a `<yandex>` (before 22.x) nor a `<clickhouse>` root element.
    #[error("base clickhouse config has no <yandex> or <clickhouse> root element")]
    MissingRootElement,
}

/// Rewrites Debian's ClickHouse `config.xml` so that the server keeps everything inside `dir` and listens on `ports`.
///
/// The rewrite:
/// - moves `/var/log/clickhouse-server/` to `dir/log/` and `/var/lib/clickhouse/` to `dir/data/`;
/// - sets the HTTP, native and interserver ports;
/// - drops every `listen_host`, `mysql_port` and `postgresql_port` line and listens on 127.0.0.1 only,
///   so that parallel servers never collide on `::1` or on a port they do not need.
///
/// The users file stays relative (`users.xml`), so the caller writes one beside the config.
///
/// # Errors
///
/// Returns [`ClickHouseConfigError::MissingRootElement`] when `base_xml` is not a ClickHouse server config.
pub fn clickhouse_config(
    base_xml: &str,
    dir: &Path,
    ports: ClickHousePorts,
) -> Result<String, ClickHouseConfigError> {
    let dir_text = escape_xml(&dir.display().to_string());
    let log_dir = format!("{dir_text}/{CLICKHOUSE_LOG_FOLDER}/");
    let data_dir = format!("{dir_text}/{CLICKHOUSE_DATA_FOLDER}/");
    let relocated = base_xml
        .replace("/var/log/clickhouse-server/", &log_dir)
        .replace("/var/lib/clickhouse/", &data_dir);

    let dropped_prefixes = [
        "<listen_host>",
        "<mysql_port>",
        "<postgresql_port>",
        "<http_port>",
        "<tcp_port>",
        "<interserver_http_port>",
    ];
    let mut kept_lines: Vec<&str> = relocated
        .lines()
        .filter(|line| {
            let trimmed = line.trim_start();
            !dropped_prefixes
                .iter()
                .any(|prefix| trimmed.starts_with(prefix))
        })
        .collect();

    let root_idx = kept_lines
        .iter()
        .position(|line| {
            let trimmed = line.trim();
            trimmed == "<yandex>" || trimmed == "<clickhouse>"
        })
        .ok_or(ClickHouseConfigError::MissingRootElement)?;
    let overrides = format!(
        "    <!-- Written by nomadwave test-support: loopback only, ports chosen by the caller. -->\n\
         \x20   <listen_host>127.0.0.1</listen_host>\n\
         \x20   <http_port>{}</http_port>\n\
         \x20   <tcp_port>{}</tcp_port>\n\
         \x20   <interserver_http_port>{}</interserver_http_port>",
        ports.http, ports.tcp, ports.interserver
    );
    kept_lines.insert(root_idx + 1, &overrides);

    let mut config = kept_lines.join("\n");
    config.push('\n');
    Ok(config)
}

/// Builds a mosquitto config that listens on 127.0.0.1:`port` and persists to `dir`, followed by `extra_config`.
///
/// Anonymous clients are allowed and queues are unlimited (`max_queued_messages 0`), so that a test never loses
/// QoS 1 messages to a queue limit.
/// `user root` keeps mosquitto from dropping to the `mosquitto` user when started as root, which would leave it
/// unable to write into a root-owned `dir`; mosquitto ignores the option when not started as root.
pub fn mosquitto_config(dir: &Path, port: u16, extra_config: &str) -> String {
    let dir_text = dir.display();
    format!(
        "# Written by nomadwave test-support.\n\
         listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         persistence true\n\
         persistence_location {dir_text}/\n\
         max_queued_messages 0\n\
         log_dest file {dir_text}/{MOSQUITTO_LOG_FILE}\n\
         user root\n\
         {extra_config}\n"
    )
}

/// Builds a nats-server config that listens on 127.0.0.1:`port` with JetStream stored in `dir`, followed by `extra_config`.
///
/// nats-server appends `jetstream/` to `store_dir` itself, so the streams end up in `dir/jetstream/`.
/// The log goes to `dir/nats.log`; readiness checks look there for [`NATS_READY_LOG_LINE`].
pub fn nats_config(dir: &Path, port: u16, extra_config: &str) -> String {
    let dir_text = quote_nats_string(&dir.display().to_string());
    let log_file = quote_nats_string(&dir.join(NATS_LOG_FILE).display().to_string());
    format!(
        "# Written by nomadwave test-support.\n\
         listen: \"127.0.0.1:{port}\"\n\
         jetstream {{\n\
         \x20 store_dir: \"{dir_text}\"\n\
         }}\n\
         log_file: \"{log_file}\"\n\
         {extra_config}\n"
    )
}

fn escape_xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn quote_nats_string(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "<?xml version=\"1.0\"?>\n\
        <yandex>\n\
        \x20   <logger>\n\
        \x20       <log>/var/log/clickhouse-server/clickhouse-server.log</log>\n\
        \x20   </logger>\n\
        \x20   <http_port>8123</http_port>\n\
        \x20   <tcp_port>9000</tcp_port>\n\
        \x20   <interserver_http_port>9009</interserver_http_port>\n\
        \x20   <listen_host>::1</listen_host>\n\
        \x20   <listen_host>127.0.0.1</listen_host>\n\
        \x20   <path>/var/lib/clickhouse/</path>\n\
        </yandex>\n";

    const PORTS: ClickHousePorts = ClickHousePorts {
        http: 18123,
        tcp: 19000,
        interserver: 19009,
    };

    #[test]
    fn clickhouse_config_relocates_paths_and_ports() {
        let config = clickhouse_config(BASE, Path::new("/srv/ch"), PORTS).expect("valid base");
        assert!(config.contains("<log>/srv/ch/log/clickhouse-server.log</log>"));
        assert!(config.contains("<path>/srv/ch/data/</path>"));
        assert!(config.contains("<http_port>18123</http_port>"));
        assert!(config.contains("<tcp_port>19000</tcp_port>"));
        assert!(config.contains("<interserver_http_port>19009</interserver_http_port>"));
        assert!(!config.contains(">8123<"));
        assert!(!config.contains("::1"));
        assert_eq!(config.matches("<listen_host>").count(), 1);
        assert!(!config.contains("/var/"));
    }

    #[test]
    fn clickhouse_config_accepts_the_new_root_element() {
        let base = BASE.replace("yandex>", "clickhouse>");
        let config = clickhouse_config(&base, Path::new("/srv/ch"), PORTS).expect("valid base");
        assert!(config.contains("<clickhouse>\n    <!-- Written"));
    }

    #[test]
    fn clickhouse_config_rejects_other_xml() {
        let res = clickhouse_config("<foo></foo>", Path::new("/srv/ch"), PORTS);
        assert!(matches!(
            res,
            Err(ClickHouseConfigError::MissingRootElement)
        ));
    }

    #[test]
    fn clickhouse_config_rewrites_debians_file() {
        let Ok(base) = std::fs::read_to_string(CLICKHOUSE_BASE_CONFIG) else {
            panic!("{CLICKHOUSE_BASE_CONFIG} is missing: install the Debian package `clickhouse-server` (run `cargo xtask test`, which installs it)");
        };
        let config = clickhouse_config(&base, Path::new("/srv/ch"), PORTS).expect("valid base");
        assert!(!config.contains("/var/lib/clickhouse/"));
        assert!(!config.contains("/var/log/clickhouse-server/"));
        let n_listen_hosts = config
            .lines()
            .filter(|line| line.trim_start().starts_with("<listen_host>"))
            .count();
        assert_eq!(n_listen_hosts, 1);
    }

    #[test]
    fn mosquitto_config_appends_extra_config() {
        let config = mosquitto_config(Path::new("/srv/mq"), 1884, "password_file /srv/pw");
        assert!(config.contains("listener 1884 127.0.0.1\n"));
        assert!(config.contains("persistence_location /srv/mq/\n"));
        assert!(config.contains("log_dest file /srv/mq/mosquitto.log\n"));
        assert!(config.ends_with("password_file /srv/pw\n"));
    }

    #[test]
    fn nats_config_appends_extra_config() {
        let config = nats_config(Path::new("/srv/nats"), 4223, "max_payload: 1024");
        assert!(config.contains("listen: \"127.0.0.1:4223\"\n"));
        assert!(config.contains("store_dir: \"/srv/nats\"\n"));
        assert!(config.contains("log_file: \"/srv/nats/nats.log\"\n"));
        assert!(config.ends_with("max_payload: 1024\n"));
    }
}
