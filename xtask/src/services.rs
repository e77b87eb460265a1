//! `cargo xtask services up|down|status`: long-running local servers for development.
//!
//! Each server runs detached in its own process group, with its config, data and logs in `.data/services/<name>/`.
//! `.data/services/<name>.pid` names the process and `.data/services/<name>.url` the URL it serves.
//! `NOMADWAVE_DATA_DIR` moves `.data` elsewhere (the servers then live in `$NOMADWAVE_DATA_DIR/services/`).
//! A pid only counts as ours while `/proc/<pid>/cmdline` names our config file, so a stale pid file never makes
//! `down` signal an unrelated process.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use test_support::configs::{self, ClickHousePorts};
use test_support::probe;
use test_support::programs::{self, ServerProgram};

/// Default NATS client port.
const DEFAULT_NATS_PORT: u16 = 4222;
/// Default MQTT port.
const DEFAULT_MQTT_PORT: u16 = 1883;
/// Default ClickHouse HTTP port.
const DEFAULT_CLICKHOUSE_HTTP_PORT: u16 = 8123;
/// Default ClickHouse native protocol port.
const DEFAULT_CLICKHOUSE_TCP_PORT: u16 = 9000;
/// Default ClickHouse interserver port.
const DEFAULT_CLICKHOUSE_INTERSERVER_PORT: u16 = 9009;

/// How long `up` waits for each server to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `down` waits after SIGTERM before it sends SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `down` waits after SIGKILL before it gives up.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// How many log lines a failed start shows.
const FAILURE_LOG_LINES: usize = 40;
/// Env var naming the data root that replaces `<workspace>/.data`; `pipeline` keeps its logs there too.
pub const DATA_DIR_VAR: &str = "NOMADWAVE_DATA_DIR";
/// Env var that stops newer ClickHouse releases from forking a watchdog, so our pid is the server's pid.
const CLICKHOUSE_WATCHDOG_VAR: &str = "CLICKHOUSE_WATCHDOG_ENABLE";

/// What to do with the local servers.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Start every server that is not running yet, then print the env exports on stdout.
    ///
    /// Progress goes to stderr, so `eval "$(cargo xtask services up)"` sets the variables.
    Up(UpArgs),
    /// Stop the servers that `up` started: SIGTERM, then SIGKILL after 15 s.
    Down,
    /// Print each server's pid, whether it is alive and its URL.
    Status,
}

/// Ports for `services up`; they only matter when a server is not running yet.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// NATS client port on 127.0.0.1.
    #[arg(long, default_value_t = DEFAULT_NATS_PORT)]
    pub nats_port: u16,
    /// MQTT port on 127.0.0.1.
    #[arg(long, default_value_t = DEFAULT_MQTT_PORT)]
    pub mqtt_port: u16,
    /// ClickHouse HTTP port on 127.0.0.1.
    #[arg(long, default_value_t = DEFAULT_CLICKHOUSE_HTTP_PORT)]
    pub clickhouse_http_port: u16,
    /// ClickHouse native protocol port on 127.0.0.1, used by clickhouse-client.
    #[arg(long, default_value_t = DEFAULT_CLICKHOUSE_TCP_PORT)]
    pub clickhouse_tcp_port: u16,
    /// ClickHouse interserver port on 127.0.0.1; unused, but always bound.
    #[arg(long, default_value_t = DEFAULT_CLICKHOUSE_INTERSERVER_PORT)]
    pub clickhouse_interserver_port: u16,
}

impl UpArgs {
    /// The flags that make `services up` use these ports, leaving out the defaults.
    pub fn non_default_flags(&self) -> Vec<String> {
        [
            ("--nats-port", self.nats_port, DEFAULT_NATS_PORT),
            ("--mqtt-port", self.mqtt_port, DEFAULT_MQTT_PORT),
            (
                "--clickhouse-http-port",
                self.clickhouse_http_port,
                DEFAULT_CLICKHOUSE_HTTP_PORT,
            ),
            (
                "--clickhouse-tcp-port",
                self.clickhouse_tcp_port,
                DEFAULT_CLICKHOUSE_TCP_PORT,
            ),
            (
                "--clickhouse-interserver-port",
                self.clickhouse_interserver_port,
                DEFAULT_CLICKHOUSE_INTERSERVER_PORT,
            ),
        ]
        .into_iter()
        .filter(|(_, port, default)| port != default)
        .map(|(flag, port, _)| format!("{flag} {port}"))
        .collect()
    }
}

/// Where the three servers answer, whoever started them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// `nats://127.0.0.1:<port>`.
    pub nats_url: String,
    /// `http://127.0.0.1:<port>`.
    pub clickhouse_url: String,
    /// `mqtt://127.0.0.1:<port>`.
    pub mqtt_url: String,
    /// The ClickHouse HTTP port, for queries.
    pub clickhouse_http_port: u16,
    /// The ClickHouse native port, for clickhouse-client.
    pub clickhouse_tcp_port: u16,
}

/// Carries out `action`.
///
/// # Errors
///
/// Fails when a server cannot be configured, started or stopped, or a state file cannot be read or written.
pub fn run_action(action: Action) -> anyhow::Result<()> {
    match action {
        Action::Up(args) => up(&args),
        Action::Down => down(),
        Action::Status => status(),
    }
}

/// One of the three local servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Nats,
    ClickHouse,
    Mosquitto,
}

/// Start order; `down` goes in reverse.
const SERVICES: [Service; 3] = [Service::Nats, Service::ClickHouse, Service::Mosquitto];

/// Everything needed to spawn a configured server and know when it is ready.
struct Launch {
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    /// Ports that must be free before the start, so that a foreign server is reported instead of reused.
    ports: Vec<u16>,
    url: String,
    readiness: Readiness,
    /// Logs whose tails explain a failed start.
    logs: Vec<PathBuf>,
}

/// How to tell that a freshly spawned server is ready.
enum Readiness {
    /// nats-server logged its ready line after `offset` and its port accepts.
    NatsLog {
        log: PathBuf,
        offset: u64,
        port: u16,
    },
    /// ClickHouse answers `GET /ping`.
    ClickHousePing { http_port: u16 },
    /// The port accepts TCP connections.
    TcpPort { port: u16 },
}

impl Readiness {
    fn is_ready(&self) -> bool {
        match self {
            Readiness::NatsLog { log, offset, port } => {
                probe::log_contains_after(log, *offset, configs::NATS_READY_LOG_LINE)
                    && probe::tcp_accepts(*port)
            }
            Readiness::ClickHousePing { http_port } => probe::clickhouse_ping(*http_port),
            Readiness::TcpPort { port } => probe::tcp_accepts(*port),
        }
    }
}

impl Service {
    /// Short name, also the name of its folder, pid and url files.
    pub fn name(self) -> &'static str {
        match self {
            Service::Nats => "nats",
            Service::ClickHouse => "clickhouse",
            Service::Mosquitto => "mosquitto",
        }
    }

    fn program(self) -> ServerProgram {
        match self {
            Service::Nats => programs::NATS_SERVER,
            Service::ClickHouse => programs::CLICKHOUSE_SERVER,
            Service::Mosquitto => programs::MOSQUITTO,
        }
    }

    /// Env var that the pipeline's binaries read this server's URL from.
    fn url_var(self) -> &'static str {
        match self {
            Service::Nats => "NATS_URL",
            Service::ClickHouse => "CLICKHOUSE_URL",
            Service::Mosquitto => "MQTT_URL",
        }
    }

    fn dir(self) -> PathBuf {
        services_root().join(self.name())
    }

    fn pid_file(self) -> PathBuf {
        services_root().join(format!("{}.pid", self.name()))
    }

    fn url_file(self) -> PathBuf {
        services_root().join(format!("{}.url", self.name()))
    }

    /// The config file, whose path in a process's command line proves the process is ours.
    fn config_path(self) -> PathBuf {
        let file_name = match self {
            Service::Nats => "nats.conf",
            Service::ClickHouse => "config.xml",
            Service::Mosquitto => "mosquitto.conf",
        };
        self.dir().join(file_name)
    }

    /// Writes the config files into the service folder and says how to run the server.
    fn prepare(self, args: &UpArgs) -> anyhow::Result<Launch> {
        let dir = self.dir();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let config_path = self.config_path();
        match self {
            Service::Nats => {
                let port = args.nats_port;
                write_file(&config_path, &configs::nats_config(&dir, port, ""))?;
                let log = dir.join(configs::NATS_LOG_FILE);
                Ok(Launch {
                    args: vec!["-c".into(), config_path.into()],
                    envs: Vec::new(),
                    ports: vec![port],
                    url: format!("nats://127.0.0.1:{port}"),
                    readiness: Readiness::NatsLog {
                        offset: probe::file_len(&log),
                        log: log.clone(),
                        port,
                    },
                    logs: vec![log],
                })
            }
            Service::ClickHouse => {
                let ports = ClickHousePorts {
                    http: args.clickhouse_http_port,
                    tcp: args.clickhouse_tcp_port,
                    interserver: args.clickhouse_interserver_port,
                };
                let base_xml = read_file(Path::new(configs::CLICKHOUSE_BASE_CONFIG))?;
                let config =
                    configs::clickhouse_config(&base_xml, &dir, ports).with_context(|| {
                        format!("cannot rewrite {}", configs::CLICKHOUSE_BASE_CONFIG)
                    })?;
                write_file(&config_path, &config)?;
                let users_xml = read_file(Path::new(configs::CLICKHOUSE_BASE_USERS))?;
                write_file(&dir.join("users.xml"), &users_xml)?;
                Ok(Launch {
                    args: vec![format!("--config-file={}", config_path.display()).into()],
                    envs: vec![(CLICKHOUSE_WATCHDOG_VAR.into(), "0".into())],
                    ports: vec![ports.http, ports.tcp, ports.interserver],
                    url: format!("http://127.0.0.1:{}", ports.http),
                    readiness: Readiness::ClickHousePing {
                        http_port: ports.http,
                    },
                    logs: vec![dir
                        .join(configs::CLICKHOUSE_LOG_FOLDER)
                        .join(configs::CLICKHOUSE_LOG_FILE)],
                })
            }
            Service::Mosquitto => {
                let port = args.mqtt_port;
                write_file(&config_path, &configs::mosquitto_config(&dir, port, ""))?;
                Ok(Launch {
                    args: vec!["-c".into(), config_path.into()],
                    envs: Vec::new(),
                    ports: vec![port],
                    url: format!("mqtt://127.0.0.1:{port}"),
                    readiness: Readiness::TcpPort { port },
                    logs: vec![dir.join(configs::MOSQUITTO_LOG_FILE)],
                })
            }
        }
    }
}

fn up(args: &UpArgs) -> anyhow::Result<()> {
    let mut started = Vec::new();
    up_services(args, &mut started)?;
    let mut exports = Vec::new();
    for service in SERVICES {
        let url = read_file(&service.url_file())?;
        exports.push(format!("{}={}", service.url_var(), url.trim()));
    }
    outln!("export {}", exports.join(" "));
    Ok(())
}

/// Starts every server that is not running yet, pushing each one it starts onto `started` as soon as it runs,
/// so that the caller knows what to stop even when a later server fails to start.
///
/// A server that is already running is used as it is, on the ports it was started with.
///
/// # Errors
///
/// Fails when a server cannot be configured or started, or a state file cannot be read or written.
pub fn up_services(args: &UpArgs, started: &mut Vec<Service>) -> anyhow::Result<Endpoints> {
    for service in SERVICES {
        let name = service.name();
        match running_pid(service)? {
            Some(pid) => {
                let url = read_file(&service.url_file())?;
                errln!(
                    "{name}: already running (pid {pid}) at {}, using it as it is",
                    url.trim()
                );
            }
            None => {
                start_service(service, args)?;
                started.push(service);
            }
        }
    }
    endpoints()
}

/// Where the running servers answer, read from their url files and ClickHouse's config.
fn endpoints() -> anyhow::Result<Endpoints> {
    let url = |service: Service| -> anyhow::Result<String> {
        Ok(read_file(&service.url_file())?.trim().to_owned())
    };
    let clickhouse_url = url(Service::ClickHouse)?;
    let clickhouse_http_port = url_port(&clickhouse_url)
        .with_context(|| format!("no port in the ClickHouse URL `{clickhouse_url}`"))?;
    let config_path = Service::ClickHouse.config_path();
    let clickhouse_tcp_port = xml_element(&read_file(&config_path)?, "tcp_port")
        .and_then(|text| text.parse::<u16>().ok())
        .with_context(|| format!("no <tcp_port> in {}", config_path.display()))?;
    Ok(Endpoints {
        nats_url: url(Service::Nats)?,
        clickhouse_url,
        mqtt_url: url(Service::Mosquitto)?,
        clickhouse_http_port,
        clickhouse_tcp_port,
    })
}

/// The port of `scheme://host:port[/…]`.
fn url_port(url: &str) -> Option<u16> {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = after_scheme.split('/').next()?;
    authority.rsplit_once(':')?.1.parse().ok()
}

/// The text of the first `<name>…</name>` in `xml`.
fn xml_element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&close)?;
    Some(xml[start..start + len].trim())
}

fn start_service(service: Service, args: &UpArgs) -> anyhow::Result<()> {
    let name = service.name();
    let program = service.program();
    let Some(executable) = program.find() else {
        anyhow::bail!(
            "{name}: `{}` is not installed: install the Debian package `{}` (`cargo xtask install` does)",
            program.program,
            program.debian_package
        );
    };
    remove_state_files(service)?;
    let launch = service.prepare(args)?;
    if let Some(port) = launch.ports.iter().find(|port| probe::tcp_accepts(**port)) {
        anyhow::bail!(
            "{name}: port {port} on 127.0.0.1 is already taken by another process; stop it or choose other ports (see `cargo xtask services up --help`)"
        );
    }

    let console_log = service.dir().join("console.log");
    let console = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&console_log)
        .with_context(|| format!("cannot open {}", console_log.display()))?;
    let console_err = console
        .try_clone()
        .with_context(|| format!("cannot reopen {}", console_log.display()))?;
    // Own process group: the server survives xtask and ignores the Ctrl-C meant for the terminal's foreground job.
    let mut child = Command::new(&executable)
        .args(&launch.args)
        .envs(launch.envs.iter().map(|(key, value)| (key, value)))
        .current_dir(service.dir())
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(console_err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot spawn {}", executable.display()))?;
    write_file(&service.pid_file(), &format!("{}\n", child.id()))?;
    write_file(&service.url_file(), &format!("{}\n", launch.url))?;

    if let Err(err) = wait_ready(&mut child, &launch.readiness) {
        // Kill through the Child handle, which cannot name any process but the one we spawned.
        let _ = child.kill();
        let _ = child.wait();
        remove_state_files(service)?;
        let mut logs = launch.logs.clone();
        logs.push(console_log);
        let tails: Vec<String> = logs
            .iter()
            .map(|path| {
                format!(
                    "--- last {FAILURE_LOG_LINES} lines of {} ---\n{}",
                    path.display(),
                    probe::log_tail(path, FAILURE_LOG_LINES)
                )
            })
            .collect();
        anyhow::bail!("{name} did not start: {err:#}\n{}", tails.join("\n"));
    }
    errln!(
        "{name}: started (pid {}) at {}, data in {}",
        child.id(),
        launch.url,
        service.dir().display()
    );
    Ok(())
}

fn wait_ready(child: &mut Child, readiness: &Readiness) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().context("cannot poll the server process")? {
            anyhow::bail!("the server exited with {status} before it became ready");
        }
        if readiness.is_ready() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the server did not become ready within {} s",
                START_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(probe::POLL_INTERVAL);
    }
}

fn down() -> anyhow::Result<()> {
    stop_services(&SERVICES)
}

/// Stops `services` in reverse start order (whatever order they are given in), leaving their data in place.
///
/// # Errors
///
/// Fails when a server survives SIGKILL or a state file cannot be read or removed; the other servers are still
/// stopped first.
pub fn stop_services(services: &[Service]) -> anyhow::Result<()> {
    let mut first_error = None;
    for service in SERVICES.iter().rev().copied() {
        if !services.contains(&service) {
            continue;
        }
        if let Err(err) = stop_service(service) {
            errln!("{}: {err:#}", service.name());
            first_error.get_or_insert(err);
        }
    }
    match first_error {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

fn stop_service(service: Service) -> anyhow::Result<()> {
    let name = service.name();
    match running_pid(service)? {
        Some(pid) => {
            stop_process(service, pid)?;
            errln!("{name}: stopped (pid {pid})");
        }
        None if service.pid_file().exists() => {
            errln!("{name}: not running (removing stale pid file)")
        }
        None => errln!("{name}: not running"),
    }
    remove_state_files(service)
}

fn stop_process(service: Service, pid: u32) -> anyhow::Result<()> {
    let name = service.name();
    let nix_pid = Pid::from_raw(i32::try_from(pid).context("pid out of range")?);
    // ESRCH means it exited between the check and the signal, which is what we want anyway.
    let _ = signal::kill(nix_pid, Signal::SIGTERM);
    let still_ours = || is_service_process(service, pid);
    if probe::poll_until(STOP_TIMEOUT, || !still_ours()) {
        return Ok(());
    }
    errln!(
        "{name}: still running {} s after SIGTERM, sending SIGKILL",
        STOP_TIMEOUT.as_secs()
    );
    // Re-checked just before: the pid must still be our server, never a reused pid.
    if still_ours() {
        let _ = signal::kill(nix_pid, Signal::SIGKILL);
    }
    if probe::poll_until(KILL_TIMEOUT, || !still_ours()) {
        return Ok(());
    }
    anyhow::bail!("{name}: pid {pid} survived SIGKILL")
}

fn status() -> anyhow::Result<()> {
    outln!("{:<12} {:>8}  {:<7}  url", "service", "pid", "alive");
    for service in SERVICES {
        let pid_text = match std::fs::read_to_string(service.pid_file()) {
            Ok(text) => text.trim().to_owned(),
            Err(_) => "-".to_owned(),
        };
        let alive = running_pid(service)?.is_some();
        let url = match std::fs::read_to_string(service.url_file()) {
            Ok(text) => text.trim().to_owned(),
            Err(_) => "-".to_owned(),
        };
        outln!(
            "{:<12} {:>8}  {:<7}  {url}",
            service.name(),
            pid_text,
            if alive { "yes" } else { "no" }
        );
    }
    Ok(())
}

/// The pid in the service's pid file, if that process is alive and runs our config.
fn running_pid(service: Service) -> anyhow::Result<Option<u32>> {
    let pid_file = service.pid_file();
    let text = match std::fs::read_to_string(&pid_file) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", pid_file.display())),
    };
    let Ok(pid) = text.trim().parse::<u32>() else {
        return Ok(None);
    };
    match is_service_process(service, pid) {
        true => Ok(Some(pid)),
        false => Ok(None),
    }
}

/// Whether `pid` is a live process whose command line names the service's config file.
///
/// A zombie has an empty command line, so an exited server counts as gone even before it is reaped.
fn is_service_process(service: Service, pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let config_path = service.config_path();
    let needle = config_path.to_string_lossy();
    cmdline
        .split(|byte| *byte == 0)
        .any(|arg| String::from_utf8_lossy(arg).contains(needle.as_ref()))
}

fn remove_state_files(service: Service) -> anyhow::Result<()> {
    for path in [service.pid_file(), service.url_file()] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(err).with_context(|| format!("cannot remove {}", path.display()))
            }
        }
    }
    Ok(())
}

/// The data root: `$NOMADWAVE_DATA_DIR` (made absolute) or `<workspace>/.data`.
pub fn data_root() -> PathBuf {
    match std::env::var_os(DATA_DIR_VAR) {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            // Absolute, because servers run in their own folder and `down` recognises them by config path.
            std::path::absolute(&dir).unwrap_or(dir)
        }
        _ => test_support::workspace_root().join(".data"),
    }
}

/// Where the servers keep their folders and state files.
pub fn services_root() -> PathBuf {
    data_root().join("services")
}

fn read_file(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn write_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_port_reads_the_authority() {
        assert_eq!(url_port("http://127.0.0.1:8123"), Some(8123));
        assert_eq!(url_port("nats://127.0.0.1:4222/"), Some(4222));
        assert_eq!(url_port("http://127.0.0.1"), None);
    }

    #[test]
    fn xml_element_finds_the_first_value() {
        let xml = "<yandex>\n    <http_port>18123</http_port>\n    <tcp_port> 19000 </tcp_port>\n</yandex>";
        assert_eq!(xml_element(xml, "tcp_port"), Some("19000"));
        assert_eq!(xml_element(xml, "mysql_port"), None);
    }

    #[test]
    fn non_default_flags_lists_only_changed_ports() {
        let args = UpArgs {
            nats_port: 4300,
            mqtt_port: DEFAULT_MQTT_PORT,
            clickhouse_http_port: DEFAULT_CLICKHOUSE_HTTP_PORT,
            clickhouse_tcp_port: 9100,
            clickhouse_interserver_port: DEFAULT_CLICKHOUSE_INTERSERVER_PORT,
        };
        assert_eq!(
            args.non_default_flags(),
            ["--nats-port 4300", "--clickhouse-tcp-port 9100"]
        );
    }
}
