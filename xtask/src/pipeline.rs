//! `cargo xtask pipeline`: the whole pipeline on this machine, fed by the simulators, until Ctrl-C.
//!
//! Steps: install what is missing, build the binaries, start the servers that are not running yet
//! (through `services`), check the ports, spawn the seven processes, show progress every 2 s, and on
//! SIGINT/SIGTERM/SIGHUP stop the processes in order (publishers first, the sink last so that it drains),
//! then the servers this run started. Data and logs stay for inspection.
//!
//! Each process runs in its own process group, so a Ctrl-C in the terminal reaches only xtask, which decides
//! the stop order. Its stdout and stderr go to `<data root>/pipeline/logs/<name>.log` (truncated per run) and
//! its pid to `<data root>/pipeline/<name>.pid` while it runs.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use test_support::probe;

use crate::install;
use crate::output;
use crate::services::{self, Endpoints, Service, UpArgs};
use crate::shell;

/// Default first metrics port: the sink's, as in README; the others follow.
const DEFAULT_METRICS_PORT: u16 = 9464;
/// Default port of the simulated upstreams (`edge-sim http`), as in compose.yaml.
const DEFAULT_UPSTREAM_PORT: u16 = 8088;
/// The Electricity Maps token shared by `edge-sim http` and `ingest-carbon`; only the simulator accepts it.
const DUMMY_TOKEN: &str = "nomadwave-local-dummy-token";
/// Poll interval of the three pollers, short so that new rows show up while one watches.
const POLL_INTERVAL: &str = "30s";
/// How often the progress display is refreshed.
const TICK: Duration = Duration::from_secs(2);
/// How often waits check for a signal or a dead process.
const WAIT_STEP: Duration = Duration::from_millis(100);
/// How long a process may take to become ready before the start fails.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long each process gets after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How many log lines explain a process that died.
const FAILURE_LOG_LINES: usize = 30;
/// Tables whose row counts are shown, in display order (wave, weather, carbon).
const TABLES: [&str; 3] = [
    "wave_observations",
    "weather_observations",
    "carbon_intensity",
];
/// Sink `kind` labels, in the same order.
const KINDS: [&str; 3] = ["wave", "weather", "carbon"];

/// Flags of `cargo xtask pipeline`.
#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// Server ports; they only matter for servers that are not running yet.
    #[command(flatten)]
    servers: UpArgs,
    /// First of five consecutive ports on 127.0.0.1 serving /metrics: sink, bridge, ingest-wave, ingest-wx,
    /// ingest-carbon.
    #[arg(long, default_value_t = DEFAULT_METRICS_PORT)]
    metrics_port: u16,
    /// Port on 127.0.0.1 of the simulated IMOS, BOM and Electricity Maps APIs (`edge-sim http`).
    #[arg(long, default_value_t = DEFAULT_UPSTREAM_PORT)]
    upstream_port: u16,
    /// Build and run the release binaries (target/release) instead of the debug ones.
    #[arg(long)]
    release: bool,
    /// Do not build; run the binaries already in the target folder.
    #[arg(long)]
    no_build: bool,
}

/// Where a process is told to serve /metrics: `--metrics-port` plus this offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Sink,
    UpstreamSim,
    Bridge,
    IngestWave,
    IngestWx,
    IngestCarbon,
    BuoySim,
}

/// Spawn order; the stop order is the reverse: buoys, pollers, bridge, upstreams, sink.
const ROLES: [Role; 7] = [
    Role::Sink,
    Role::UpstreamSim,
    Role::Bridge,
    Role::IngestWave,
    Role::IngestWx,
    Role::IngestCarbon,
    Role::BuoySim,
];

/// Packages of the binaries the pipeline runs.
const PACKAGES: [&str; 5] = [
    "sink-clickhouse",
    "edge-sim",
    "ingest-wave",
    "ingest-wx",
    "ingest-carbon",
];

impl Role {
    /// Name of the log and pid files, and of the process in messages.
    fn name(self) -> &'static str {
        match self {
            Role::Sink => "sink",
            Role::UpstreamSim => "edge-sim-http",
            Role::Bridge => "bridge",
            Role::IngestWave => "ingest-wave",
            Role::IngestWx => "ingest-wx",
            Role::IngestCarbon => "ingest-carbon",
            Role::BuoySim => "edge-sim-mqtt",
        }
    }

    fn binary(self) -> &'static str {
        match self {
            Role::Sink => "sink-clickhouse",
            Role::UpstreamSim | Role::BuoySim => "edge-sim",
            Role::Bridge | Role::IngestWave => "ingest-wave",
            Role::IngestWx => "ingest-wx",
            Role::IngestCarbon => "ingest-carbon",
        }
    }

    /// Offset from `--metrics-port`, for the processes that serve /metrics.
    fn metrics_offset(self) -> Option<u16> {
        match self {
            Role::Sink => Some(0),
            Role::Bridge => Some(1),
            Role::IngestWave => Some(2),
            Role::IngestWx => Some(3),
            Role::IngestCarbon => Some(4),
            Role::UpstreamSim | Role::BuoySim => None,
        }
    }
}

/// The ports this run's processes listen on, checked before anything is spawned.
#[derive(Debug, Clone, Copy)]
struct Ports {
    metrics_base: u16,
    upstream: u16,
}

impl Ports {
    fn metrics(self, role: Role) -> Option<u16> {
        role.metrics_offset()
            .map(|offset| self.metrics_base.saturating_add(offset))
    }

    /// Every port with what it is for, as said in error messages.
    fn described(self) -> Vec<(u16, String)> {
        let mut ports = vec![(self.upstream, "edge-sim http, --upstream-port".to_owned())];
        for role in ROLES {
            if let (Some(port), Some(offset)) = (self.metrics(role), role.metrics_offset()) {
                ports.push((
                    port,
                    format!("{} /metrics, --metrics-port + {offset}", role.name()),
                ));
            }
        }
        ports
    }
}

/// Everything a process needs to be spawned.
struct Launch {
    role: Role,
    args: Vec<String>,
    envs: Vec<(&'static str, String)>,
}

/// The command line and environment of each process, as in compose.yaml but on loopback ports.
fn launches(ports: Ports, endpoints: &Endpoints) -> Vec<Launch> {
    let upstream = format!("http://127.0.0.1:{}", ports.upstream);
    let strings = |words: &[&str]| words.iter().map(|word| (*word).to_owned()).collect();
    ROLES
        .into_iter()
        .map(|role| {
            let mut envs = vec![("RUST_LOG", "info".to_owned())];
            if let Some(port) = ports.metrics(role) {
                envs.push(("HTTP_LISTEN", format!("127.0.0.1:{port}")));
            }
            let args: Vec<String> = match role {
                Role::Sink => {
                    envs.push(("NATS_URL", endpoints.nats_url.clone()));
                    envs.push(("CLICKHOUSE_URL", endpoints.clickhouse_url.clone()));
                    strings(&["run"])
                }
                Role::UpstreamSim => vec![
                    "http".to_owned(),
                    "--listen".to_owned(),
                    format!("127.0.0.1:{}", ports.upstream),
                    "--token".to_owned(),
                    DUMMY_TOKEN.to_owned(),
                ],
                Role::Bridge => {
                    envs.push(("NATS_URL", endpoints.nats_url.clone()));
                    envs.push(("MQTT_URL", endpoints.mqtt_url.clone()));
                    envs.push(("MQTT_CLIENT_ID", "nomadwave-bridge-local".to_owned()));
                    strings(&["bridge"])
                }
                Role::IngestWave => {
                    envs.push(("NATS_URL", endpoints.nats_url.clone()));
                    vec![
                        "run".to_owned(),
                        "--sites".to_owned(),
                        "Tathra,Port Kembla,Cable Beach".to_owned(),
                        "--wfs-url".to_owned(),
                        format!("{upstream}/geoserver/ows"),
                        "--interval".to_owned(),
                        POLL_INTERVAL.to_owned(),
                    ]
                }
                Role::IngestWx => {
                    envs.push(("NATS_URL", endpoints.nats_url.clone()));
                    vec![
                        "run".to_owned(),
                        "--stations".to_owned(),
                        "IDN60901.94768,qvv117".to_owned(),
                        "--fwo-url".to_owned(),
                        upstream.clone(),
                        "--api-url".to_owned(),
                        format!("{upstream}/v1"),
                        "--interval".to_owned(),
                        POLL_INTERVAL.to_owned(),
                    ]
                }
                Role::IngestCarbon => {
                    envs.push(("NATS_URL", endpoints.nats_url.clone()));
                    envs.push(("ELECTRICITYMAPS_TOKEN", DUMMY_TOKEN.to_owned()));
                    vec![
                        "run".to_owned(),
                        "--zones".to_owned(),
                        "AU-NSW,DE".to_owned(),
                        "--api-url".to_owned(),
                        format!("{upstream}/v3"),
                        "--interval".to_owned(),
                        POLL_INTERVAL.to_owned(),
                    ]
                }
                Role::BuoySim => {
                    envs.push(("MQTT_URL", endpoints.mqtt_url.clone()));
                    strings(&["mqtt", "--buoys", "20", "--rate", "20"])
                }
            };
            Launch { role, args, envs }
        })
        .collect()
}

/// Runs the pipeline until a signal, and returns 0 after a clean stop or 1 when a process died.
///
/// # Errors
///
/// Fails when installing, building, starting a server or spawning a process fails; whatever was started by
/// then is stopped first.
pub fn run(args: &PipelineArgs) -> anyhow::Result<ExitCode> {
    let ports = Ports {
        metrics_base: args.metrics_port,
        upstream: args.upstream_port,
    };
    check_port_plan(ports, &args.servers)?;
    let interrupted = install_signal_handler()?;

    // A Ctrl-C during apt-get or cargo also ends them (same process group): that is a stop, not a failure.
    let interrupted_early = || {
        let stop = interrupted.load(Ordering::SeqCst);
        if stop {
            errln!("pipeline: interrupted before anything was started");
        }
        stop
    };
    let installed = install::install();
    if interrupted_early() {
        return Ok(ExitCode::SUCCESS);
    }
    installed?;
    let bin_dir = target_dir()?.join(if args.release { "release" } else { "debug" });
    if args.no_build {
        errln!(
            "pipeline: --no-build: using the binaries in {}",
            bin_dir.display()
        );
    } else {
        let built = build(args.release);
        if interrupted_early() {
            return Ok(ExitCode::SUCCESS);
        }
        built?;
    }
    for package in PACKAGES {
        let path = bin_dir.join(package);
        if !path.is_file() {
            anyhow::bail!(
                "{} is missing: build it with `cargo build --workspace --bins{}` (or drop --no-build)",
                path.display(),
                if args.release { " --release" } else { "" }
            );
        }
    }
    check_ports_free(ports)?;

    let mut started = StartedServers::default();
    let outcome =
        services::up_services(&args.servers, &mut started.services).and_then(|endpoints| {
            let outcome = run_processes(ports, &endpoints, &bin_dir, &interrupted)?;
            Ok((outcome, endpoints))
        });
    let servers_stopped = started.stop();
    let (outcome, endpoints) = outcome?;
    servers_stopped.context("cannot stop the servers this run started")?;

    print_summary(args, &endpoints, &started.services);
    match outcome {
        Outcome::Interrupted => Ok(ExitCode::SUCCESS),
        Outcome::ProcessDied => Ok(ExitCode::FAILURE),
    }
}

/// The servers this run started, stopped by [`StartedServers::stop`] on the normal paths and by `Drop` on
/// every other one (a panic, an early return), so that no way out of a run leaves them running.
#[derive(Default)]
struct StartedServers {
    /// Filled by `up_services` as each server comes up, so a failure half-way still names the ones to stop.
    services: Vec<Service>,
    /// Set by `stop`, so `Drop` does not stop them twice.
    stopped: bool,
}

impl StartedServers {
    fn stop(&mut self) -> anyhow::Result<()> {
        self.stopped = true;
        services::stop_services(&self.services)
    }
}

impl Drop for StartedServers {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.stop();
        }
    }
}

/// How the monitoring ended.
enum Outcome {
    /// SIGINT, SIGTERM or SIGHUP: a normal stop.
    Interrupted,
    /// A process exited on its own; already reported.
    ProcessDied,
}

/// Ports must be in range and distinct from each other and from the server ports.
fn check_port_plan(ports: Ports, servers: &UpArgs) -> anyhow::Result<()> {
    if ports.metrics_base.checked_add(4).is_none() {
        anyhow::bail!(
            "--metrics-port {} leaves no room for the five metrics ports (it must be at most 65531)",
            ports.metrics_base
        );
    }
    let mut all = ports.described();
    all.extend([
        (servers.nats_port, "nats, --nats-port".to_owned()),
        (servers.mqtt_port, "mosquitto, --mqtt-port".to_owned()),
        (
            servers.clickhouse_http_port,
            "clickhouse http, --clickhouse-http-port".to_owned(),
        ),
        (
            servers.clickhouse_tcp_port,
            "clickhouse native, --clickhouse-tcp-port".to_owned(),
        ),
        (
            servers.clickhouse_interserver_port,
            "clickhouse interserver, --clickhouse-interserver-port".to_owned(),
        ),
    ]);
    for (index, (port, what)) in all.iter().enumerate() {
        if let Some((_, other)) = all[..index].iter().find(|(earlier, _)| earlier == port) {
            anyhow::bail!("port {port} is given twice: for {other} and for {what}");
        }
    }
    Ok(())
}

/// Every port of this run's processes must be free on 127.0.0.1.
fn check_ports_free(ports: Ports) -> anyhow::Result<()> {
    for (port, what) in ports.described() {
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
            anyhow::bail!(
                "port {port} on 127.0.0.1 ({what}) is already taken by another process; is another pipeline running? \
                 Stop it or choose other ports (see `cargo xtask pipeline --help`)"
            );
        }
    }
    Ok(())
}

/// Sets a flag on SIGINT, SIGTERM and SIGHUP, leaving the stop to the main thread.
fn install_signal_handler() -> anyhow::Result<Arc<AtomicBool>> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            errln!("pipeline: already stopping, please wait (each process gets up to 15 s)");
        }
    })
    .context("cannot install the SIGINT/SIGTERM handler")?;
    Ok(interrupted)
}

/// The target folder: where this xtask binary was built (`<target>/debug/xtask`), else `<workspace>/target`.
fn target_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the running xtask binary")?;
    let from_exe = exe
        .parent()
        .filter(|dir| {
            dir.file_name()
                .is_some_and(|name| name == "debug" || name == "release")
        })
        .and_then(Path::parent);
    Ok(match from_exe {
        Some(dir) => dir.to_path_buf(),
        None => test_support::workspace_root().join("target"),
    })
}

fn build(release: bool) -> anyhow::Result<()> {
    let mut command = shell::cargo();
    command
        .current_dir(test_support::workspace_root())
        .arg("build");
    // The whole workspace, as `cargo xtask test` builds it: a subset (`-p …`) unifies features differently and
    // would rebuild the shared dependencies, and then again for the next test run.
    command.args(["--workspace", "--bins"]);
    if release {
        command.arg("--release");
    }
    shell::run_checked(&mut command).context("building the pipeline binaries failed")
}

/// One spawned process.
struct Running {
    role: Role,
    child: Child,
    log: PathBuf,
    pid_file: PathBuf,
    /// Set once the process was reaped.
    exited: Option<ExitStatus>,
}

impl Running {
    /// Whether it is still running; reaps it and remembers its status when not.
    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
                let _ = std::fs::remove_file(&self.pid_file);
            }
        }
        self.exited
    }

    /// SIGTERM, up to [`STOP_TIMEOUT`] to exit, then SIGKILL.
    fn stop(&mut self) {
        let name = self.role.name();
        if let Some(status) = self.poll_exit() {
            errln!("{name}: had already exited ({status})");
            return;
        }
        let started = Instant::now();
        // The child is not reaped yet, so its pid cannot name another process.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        while started.elapsed() < STOP_TIMEOUT {
            if let Some(status) = self.poll_exit() {
                errln!(
                    "{name}: stopped ({status}) in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                return;
            }
            std::thread::sleep(WAIT_STEP);
        }
        errln!(
            "{name}: still running {} s after SIGTERM, sending SIGKILL",
            STOP_TIMEOUT.as_secs()
        );
        self.kill();
    }

    fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.exited = Some(status);
            }
            let _ = std::fs::remove_file(&self.pid_file);
        }
    }
}

/// The spawned processes, in spawn order.
#[derive(Default)]
struct Fleet {
    processes: Vec<Running>,
}

impl Fleet {
    /// Stops every process, last spawned first, so the sink drains after everything that feeds it stopped.
    fn stop_all(&mut self) {
        for running in self.processes.iter_mut().rev() {
            running.stop();
        }
    }
}

impl Drop for Fleet {
    /// Last resort on a panic: nothing survives xtask. The normal paths call [`Fleet::stop_all`] first.
    fn drop(&mut self) {
        for running in self.processes.iter_mut().rev() {
            running.kill();
        }
    }
}

fn run_processes(
    ports: Ports,
    endpoints: &Endpoints,
    bin_dir: &Path,
    interrupted: &AtomicBool,
) -> anyhow::Result<Outcome> {
    let pipeline_dir = services::data_root().join("pipeline");
    let log_dir = pipeline_dir.join("logs");
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;
    let mut fleet = Fleet::default();
    let outcome = spawn_and_watch(
        &mut fleet,
        ports,
        endpoints,
        bin_dir,
        &pipeline_dir,
        interrupted,
    );
    match &outcome {
        Ok(Outcome::Interrupted) => {
            errln!("pipeline: stopping (publishers first, the sink last)")
        }
        Ok(Outcome::ProcessDied) | Err(_) => errln!("pipeline: stopping the other processes"),
    }
    fleet.stop_all();
    outcome
}

fn spawn_and_watch(
    fleet: &mut Fleet,
    ports: Ports,
    endpoints: &Endpoints,
    bin_dir: &Path,
    pipeline_dir: &Path,
    interrupted: &AtomicBool,
) -> anyhow::Result<Outcome> {
    for launch in launches(ports, endpoints) {
        if interrupted.load(Ordering::SeqCst) {
            return Ok(Outcome::Interrupted);
        }
        let role = launch.role;
        let running = spawn(&launch, bin_dir, pipeline_dir)?;
        errln!(
            "{}: started (pid {}), log {}",
            role.name(),
            running.child.id(),
            running.log.display()
        );
        fleet.processes.push(running);
        let Some(running) = fleet.processes.last_mut() else {
            continue;
        };
        // Wait where a later process depends on this one: the sink has created the tables, the simulated
        // upstreams answer, and the bridge's MQTT session exists before the buoys publish (the broker drops
        // messages that no session subscribed to yet).
        let ready: Option<Box<dyn Fn() -> bool>> = match role {
            Role::Sink | Role::Bridge => ports.metrics(role).map(|port| {
                Box::new(move || matches!(probe::http_get(port, "/readyz"), Some((200, _))))
                    as Box<dyn Fn() -> bool>
            }),
            Role::UpstreamSim => {
                let port = ports.upstream;
                Some(Box::new(move || probe::tcp_accepts(port)))
            }
            _ => None,
        };
        if let Some(ready) = ready {
            match wait_ready(running, &*ready, interrupted) {
                Wait::Ready => errln!("{}: ready", role.name()),
                Wait::Interrupted => return Ok(Outcome::Interrupted),
                Wait::Died(status) => {
                    report_death(running, status);
                    return Ok(Outcome::ProcessDied);
                }
                Wait::TimedOut => anyhow::bail!(
                    "{} did not become ready within {} s; last lines of {}:\n{}",
                    role.name(),
                    READY_TIMEOUT.as_secs(),
                    running.log.display(),
                    probe::log_tail(&running.log, FAILURE_LOG_LINES)
                ),
            }
        }
    }
    errln!(
        "pipeline: all processes running; logs in {}; Ctrl-C stops everything",
        pipeline_dir.join("logs").display()
    );
    watch(fleet, ports, endpoints, interrupted)
}

fn spawn(launch: &Launch, bin_dir: &Path, pipeline_dir: &Path) -> anyhow::Result<Running> {
    let name = launch.role.name();
    let log = pipeline_dir.join("logs").join(format!("{name}.log"));
    let log_file =
        File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let log_err = log_file
        .try_clone()
        .with_context(|| format!("cannot reopen {}", log.display()))?;
    let binary = bin_dir.join(launch.role.binary());
    let mut command = Command::new(&binary);
    // A clean environment, so that a stray POLL_INTERVAL or token file in the shell cannot change the run.
    command.env_clear();
    for var in ["PATH", "HOME", "TZ"] {
        if let Some(value) = std::env::var_os(var) {
            command.env(var, value);
        }
    }
    command
        .envs(launch.envs.iter().map(|(key, value)| (key, value)))
        .env("RUST_BACKTRACE", "1")
        .args(&launch.args)
        .current_dir(pipeline_dir)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        // Own process group: the terminal's Ctrl-C reaches xtask only, which stops the processes in order.
        .process_group(0);
    let child = command
        .spawn()
        .with_context(|| format!("cannot spawn {name} ({})", binary.display()))?;
    let pid_file = pipeline_dir.join(format!("{name}.pid"));
    let running = Running {
        role: launch.role,
        log,
        pid_file: pid_file.clone(),
        child,
        exited: None,
    };
    std::fs::write(&pid_file, format!("{}\n", running.child.id()))
        .with_context(|| format!("cannot write {}", pid_file.display()))?;
    Ok(running)
}

enum Wait {
    Ready,
    Interrupted,
    Died(ExitStatus),
    TimedOut,
}

fn wait_ready(running: &mut Running, ready: &dyn Fn() -> bool, interrupted: &AtomicBool) -> Wait {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if interrupted.load(Ordering::SeqCst) {
            return Wait::Interrupted;
        }
        if let Some(status) = running.poll_exit() {
            return Wait::Died(status);
        }
        if ready() {
            return Wait::Ready;
        }
        if Instant::now() >= deadline {
            return Wait::TimedOut;
        }
        std::thread::sleep(WAIT_STEP);
    }
}

fn report_death(running: &Running, status: ExitStatus) {
    errln!(
        "error: {} exited unexpectedly ({status}); last lines of {}:\n{}",
        running.role.name(),
        running.log.display(),
        probe::log_tail(&running.log, FAILURE_LOG_LINES)
    );
}

/// Shows progress every [`TICK`] until a signal or a process exits.
fn watch(
    fleet: &mut Fleet,
    ports: Ports,
    endpoints: &Endpoints,
    interrupted: &AtomicBool,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let mut display = Display::new(std::io::stdout().is_terminal());
    let mut next_tick = Instant::now();
    loop {
        if interrupted.load(Ordering::SeqCst) {
            display.finish();
            return Ok(Outcome::Interrupted);
        }
        for running in &mut fleet.processes {
            if let Some(status) = running.poll_exit() {
                display.finish();
                report_death(running, status);
                return Ok(Outcome::ProcessDied);
            }
        }
        if Instant::now() >= next_tick && display.is_on() {
            let snapshot = Snapshot::take(ports, endpoints.clickhouse_http_port);
            display.show(started.elapsed(), &snapshot);
            next_tick += TICK;
        }
        std::thread::sleep(WAIT_STEP);
    }
}

/// What one tick shows; `None` where the value could not be read (process or table not there yet).
#[derive(Debug, Default, Clone, PartialEq)]
struct Snapshot {
    /// Events published by ingest-wave, ingest-wx, ingest-carbon and the bridge.
    events: [Option<f64>; 4],
    /// Rows in wave_observations, weather_observations, carbon_intensity.
    rows: [Option<u64>; 3],
    /// Sink consumer pending per kind (wave, weather, carbon).
    lag: [Option<f64>; 3],
    /// Dead letters of the sink and the bridge together.
    dead_letters: Option<f64>,
}

impl Snapshot {
    fn take(ports: Ports, clickhouse_http_port: u16) -> Snapshot {
        let page = |role: Role| {
            ports
                .metrics(role)
                .and_then(|port| probe::http_get(port, "/metrics"))
                .filter(|(status, _)| *status == 200)
                .map(|(_, body)| body)
        };
        let published = |role: Role| {
            page(role)
                .map(|body| probe::metric_value(&body, "nomadwave_poll_events_published_total", ""))
        };
        let sink = page(Role::Sink);
        let bridge = page(Role::Bridge);
        let bridge_published = bridge.as_deref().map(|body| {
            probe::metric_value(
                body,
                "nomadwave_bridge_messages_total",
                "outcome=\"published\"",
            )
        });
        let dead = |body: &Option<String>| {
            body.as_deref()
                .map(|body| probe::metric_value(body, "nomadwave_dead_letters_total", ""))
        };
        let dead_letters = match (dead(&sink), dead(&bridge)) {
            (None, None) => None,
            (sink, bridge) => Some(sink.unwrap_or(0.0) + bridge.unwrap_or(0.0)),
        };
        Snapshot {
            events: [
                published(Role::IngestWave),
                published(Role::IngestWx),
                published(Role::IngestCarbon),
                bridge_published,
            ],
            rows: TABLES.map(|table| count_rows(clickhouse_http_port, table)),
            lag: KINDS.map(|kind| {
                sink.as_deref().map(|body| {
                    probe::metric_value(
                        body,
                        "nomadwave_sink_consumer_pending",
                        &format!("kind=\"{kind}\""),
                    )
                })
            }),
            dead_letters,
        }
    }

    fn total_lag(&self) -> Option<f64> {
        self.lag
            .iter()
            .copied()
            .try_fold(0.0, |sum, lag| lag.map(|lag| sum + lag))
    }

    /// One line, for logs and tests: `progress t=12s events wave=… rows wave=… lag=… dead_letters=…`.
    fn plain_line(&self, elapsed: Duration) -> String {
        let [wave, weather, carbon, bridge] = self.events.map(number);
        let [wave_rows, weather_rows, carbon_rows] = self.rows.map(count);
        format!(
            "progress t={}s events wave={wave} weather={weather} carbon={carbon} bridge={bridge} \
             rows wave={wave_rows} weather={weather_rows} carbon={carbon_rows} lag={} dead_letters={}",
            elapsed.as_secs(),
            number(self.total_lag()),
            number(self.dead_letters),
        )
    }

    /// The block redrawn in place on a terminal.
    fn block(&self, elapsed: Duration) -> Vec<String> {
        let [wave, weather, carbon, bridge] = self.events.map(number);
        let [wave_rows, weather_rows, carbon_rows] = self.rows.map(count);
        let [wave_lag, weather_lag, carbon_lag] = self.lag.map(number);
        vec![
            format!(
                "NomadWave pipeline, running {}  (Ctrl-C stops everything)",
                clock(elapsed)
            ),
            format!(
                "  {:<13}{:>12}{:>12}{:>12}{:>12}",
                "", "wave", "weather", "carbon", "bridge"
            ),
            format!(
                "  {:<13}{wave:>12}{weather:>12}{carbon:>12}{bridge:>12}",
                "events"
            ),
            format!(
                "  {:<13}{wave_rows:>12}{weather_rows:>12}{carbon_rows:>12}",
                "rows"
            ),
            format!(
                "  {:<13}{wave_lag:>12}{weather_lag:>12}{carbon_lag:>12}",
                "consumer lag"
            ),
            format!("  {:<13}{:>12}", "dead letters", number(self.dead_letters)),
        ]
    }
}

/// `SELECT count()` of `nomadwave.<table>` over ClickHouse's HTTP interface.
fn count_rows(http_port: u16, table: &str) -> Option<u64> {
    let query = format!("SELECT count() FROM nomadwave.{table}");
    let path = format!("/?query={}", url_encode(&query));
    match probe::http_get(http_port, &path) {
        Some((200, body)) => body.trim().parse().ok(),
        _ => None,
    }
}

/// Percent-encodes everything but unreserved characters.
fn url_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// A metric value as a whole number, or `-` when unknown.
fn number(value: Option<f64>) -> String {
    match value {
        // `+ 0.0` turns the -0.0 of an empty f64 sum into 0.
        Some(value) => format!("{:.0}", value + 0.0),
        None => "-".to_owned(),
    }
}

/// A row count, or `-` when unknown.
fn count(value: Option<u64>) -> String {
    match value {
        Some(value) => value.to_string(),
        None => "-".to_owned(),
    }
}

/// `1h02m03s`, `2m05s` or `7s`.
fn clock(elapsed: Duration) -> String {
    let secs = elapsed.as_secs();
    let (hours, minutes, seconds) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, _) => format!("{minutes}m{seconds:02}s"),
        _ => format!("{hours}h{minutes:02}m{seconds:02}s"),
    }
}

/// The progress output: a block redrawn in place on a terminal, one line per tick otherwise.
///
/// A failed write switches it off and the pipeline runs on: stdout is then usually a pipe whose reader is
/// gone (`| tee log` after a Ctrl-C, or `| head`), and only a signal or a dying process ends a run.
struct Display {
    terminal: bool,
    /// Lines drawn by the previous redraw, to move the cursor back over.
    drawn: usize,
    /// Cleared by the first write that fails.
    on: bool,
}

impl Display {
    fn new(terminal: bool) -> Display {
        Display {
            terminal,
            drawn: 0,
            on: true,
        }
    }

    fn is_on(&self) -> bool {
        self.on
    }

    fn show(&mut self, elapsed: Duration, snapshot: &Snapshot) {
        let text = if self.terminal {
            let lines = snapshot.block(elapsed);
            let mut text = String::new();
            if self.drawn > 0 {
                // Cursor up over the previous block; each line is cleared before it is rewritten.
                text.push_str(&format!("\x1b[{}A", self.drawn));
            }
            for line in &lines {
                text.push_str("\x1b[2K");
                text.push_str(line);
                text.push('\n');
            }
            self.drawn = lines.len();
            text
        } else {
            format!("{}\n", snapshot.plain_line(elapsed))
        };
        let mut out = std::io::stdout().lock();
        if let Err(error) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            self.on = false;
            let reason = match output::is_closed_output(&error) {
                true => "stdout was closed".to_owned(),
                false => format!("cannot write to stdout: {error}"),
            };
            errln!("pipeline: {reason}; progress display stopped, Ctrl-C still stops everything");
        }
    }

    /// Leaves the last block on screen; later messages start below it (and below a `^C` echo).
    fn finish(&mut self) {
        if self.terminal && self.drawn > 0 && self.on {
            outln!();
            self.drawn = 0;
        }
    }
}

/// Where the data is and how to look at it.
fn print_summary(args: &PipelineArgs, endpoints: &Endpoints, started: &[Service]) {
    let root = services::data_root();
    let data_var = match std::env::var_os(services::DATA_DIR_VAR) {
        Some(dir) if !dir.is_empty() => {
            format!("{}={} ", services::DATA_DIR_VAR, root.display())
        }
        _ => String::new(),
    };
    let flags = args.servers.non_default_flags();
    let up = if flags.is_empty() {
        format!("{data_var}cargo xtask services up")
    } else {
        format!("{data_var}cargo xtask services up {}", flags.join(" "))
    };
    outln!("pipeline stopped; the data stays:");
    outln!(
        "  servers (data, configs, logs): {}",
        services::services_root().display()
    );
    outln!(
        "  pipeline logs:                 {}",
        root.join("pipeline").join("logs").display()
    );
    if started.contains(&Service::ClickHouse) {
        outln!("to inspect, start the servers again (they keep their data): {up}");
    } else {
        outln!("clickhouse-server was already running before this run and still is");
    }
    let client = format!(
        "clickhouse-client --host 127.0.0.1 --port {}",
        endpoints.clickhouse_tcp_port
    );
    for table in TABLES {
        outln!("  {client} --query \"SELECT count() FROM nomadwave.{table} FINAL\"");
    }
    outln!(
        "  {client} --query \"SELECT site, observed_at, wave_height_m FROM nomadwave.wave_observations FINAL ORDER BY observed_at DESC LIMIT 10\""
    );
    if started.contains(&Service::ClickHouse) {
        outln!("then stop them with: {data_var}cargo xtask services down");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints() -> Endpoints {
        Endpoints {
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            clickhouse_url: "http://127.0.0.1:8123".to_owned(),
            mqtt_url: "mqtt://127.0.0.1:1883".to_owned(),
            clickhouse_http_port: 8123,
            clickhouse_tcp_port: 9000,
        }
    }

    fn up_args() -> UpArgs {
        UpArgs {
            nats_port: 4222,
            mqtt_port: 1883,
            clickhouse_http_port: 8123,
            clickhouse_tcp_port: 9000,
            clickhouse_interserver_port: 9009,
        }
    }

    const PORTS: Ports = Ports {
        metrics_base: 9464,
        upstream: 8088,
    };

    #[test]
    fn every_metrics_port_is_distinct_and_consecutive() {
        let mut metrics: Vec<u16> = ROLES
            .iter()
            .filter_map(|role| PORTS.metrics(*role))
            .collect();
        metrics.sort_unstable();
        assert_eq!(metrics, [9464, 9465, 9466, 9467, 9468]);
    }

    #[test]
    fn stop_order_is_publishers_first_and_the_sink_last() {
        let stop_order: Vec<&str> = ROLES.iter().rev().map(|role| role.name()).collect();
        assert_eq!(
            stop_order,
            [
                "edge-sim-mqtt",
                "ingest-carbon",
                "ingest-wx",
                "ingest-wave",
                "bridge",
                "edge-sim-http",
                "sink"
            ]
        );
    }

    #[test]
    fn launches_point_the_pollers_at_the_simulator() {
        let launches = launches(PORTS, &endpoints());
        let find = |role: Role| {
            launches
                .iter()
                .find(|launch| launch.role == role)
                .expect("every role is launched")
        };
        let carbon = find(Role::IngestCarbon);
        assert!(carbon.args.contains(&"http://127.0.0.1:8088/v3".to_owned()));
        assert!(carbon
            .envs
            .contains(&("ELECTRICITYMAPS_TOKEN", DUMMY_TOKEN.to_owned())));
        assert!(carbon
            .envs
            .contains(&("HTTP_LISTEN", "127.0.0.1:9468".to_owned())));
        let upstream = find(Role::UpstreamSim);
        assert_eq!(
            upstream.args,
            ["http", "--listen", "127.0.0.1:8088", "--token", DUMMY_TOKEN]
        );
        assert!(!upstream.envs.iter().any(|(key, _)| *key == "HTTP_LISTEN"));
        let sink = find(Role::Sink);
        assert!(sink
            .envs
            .contains(&("CLICKHOUSE_URL", "http://127.0.0.1:8123".to_owned())));
        let bridge = find(Role::Bridge);
        assert!(bridge
            .envs
            .contains(&("MQTT_CLIENT_ID", "nomadwave-bridge-local".to_owned())));
    }

    #[test]
    fn port_plan_rejects_collisions_and_overflow() {
        let clash = Ports {
            metrics_base: 8999,
            upstream: 8088,
        };
        let err = check_port_plan(clash, &up_args()).expect_err("9000 is used twice");
        assert!(
            err.to_string().contains("port 9000 is given twice"),
            "{err}"
        );
        let overflow = Ports {
            metrics_base: 65533,
            upstream: 8088,
        };
        assert!(check_port_plan(overflow, &up_args()).is_err());
        assert!(check_port_plan(PORTS, &up_args()).is_ok());
    }

    #[test]
    fn plain_line_has_every_number_and_dashes_for_unknowns() {
        let snapshot = Snapshot {
            events: [Some(3.0), Some(4.0), None, Some(-0.0)],
            rows: [Some(243), Some(4), Some(0)],
            lag: [Some(1.0), Some(0.0), Some(2.0)],
            dead_letters: Some(0.0),
        };
        assert_eq!(
            snapshot.plain_line(Duration::from_secs(12)),
            "progress t=12s events wave=3 weather=4 carbon=- bridge=0 rows wave=243 weather=4 carbon=0 lag=3 dead_letters=0"
        );
        let unknown = Snapshot::default();
        assert!(unknown
            .plain_line(Duration::ZERO)
            .ends_with("lag=- dead_letters=-"));
    }

    #[test]
    fn block_shows_the_running_time_and_six_lines() {
        let block = Snapshot::default().block(Duration::from_secs(65));
        assert!(block[0].contains("running 1m05s"));
        assert_eq!(block.len(), 6);
    }

    #[test]
    fn url_encode_escapes_spaces_and_parentheses() {
        assert_eq!(
            url_encode("SELECT count() FROM nomadwave.t"),
            "SELECT%20count%28%29%20FROM%20nomadwave.t"
        );
    }

    #[test]
    fn package_variables_of_cargo_run_are_recognised() {
        assert!(crate::shell::is_cargo_run_var("CARGO_PKG_NAME"));
        assert!(crate::shell::is_cargo_run_var("CARGO_MANIFEST_DIR"));
        assert!(!crate::shell::is_cargo_run_var("CARGO_HOME"));
        assert!(!crate::shell::is_cargo_run_var("CARGO_TARGET_DIR"));
        assert!(!crate::shell::is_cargo_run_var("CARGO"));
    }

    #[test]
    fn clock_formats() {
        assert_eq!(clock(Duration::from_secs(7)), "7s");
        assert_eq!(clock(Duration::from_secs(125)), "2m05s");
        assert_eq!(clock(Duration::from_secs(3723)), "1h02m03s");
    }
}
