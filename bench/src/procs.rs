//! Processes the benchmark runs or watches: release binaries of the workspace, their memory
//! (`/proc/<pid>/status`) and CPU time (`/proc/<pid>/stat`), and the machine's CPU time
//! (`/proc/stat`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// The workspace binaries a full run needs, built in release by [`build_release_binaries`].
pub const BINARIES: [&str; 3] = ["sink-clickhouse", "ingest-wave", "edge-sim"];

/// Builds the binaries the benchmark drives, in release, so a run never measures a stale build.
///
/// Uses the `cargo` that runs us (`CARGO`) when started by `cargo run`, else `cargo` on `PATH`.
///
/// # Errors
///
/// When cargo cannot be started or the build fails.
pub async fn build_release_binaries() -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = tokio::process::Command::new(&cargo);
    command
        .current_dir(test_support::workspace_root())
        .args(["build", "--release", "--quiet"]);
    for binary in BINARIES {
        command.args(["-p", binary]);
    }
    tracing::info!(binaries = ?BINARIES, "building release binaries");
    let status = command
        .status()
        .await
        .with_context(|| format!("cannot run {}", cargo.to_string_lossy()))?;
    if !status.success() {
        bail!("cargo build --release of {BINARIES:?} failed with {status}");
    }
    Ok(())
}

/// The release binary `name`, next to the running `bench` executable (`target/release/`).
///
/// # Errors
///
/// When it has not been built.
pub fn release_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the bench executable")?;
    let folder = exe
        .parent()
        .context("the bench executable has no parent folder")?;
    let path = folder.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: run `cargo build --release -p bench -p sink-clickhouse -p ingest-wave -p edge-sim` (or drop --no-build)",
            path.display()
        );
    }
    if !folder.ends_with("release") {
        tracing::warn!(folder = %folder.display(), "bench is not running from target/release: the figures describe an unoptimised build");
    }
    Ok(path)
}

/// A child process (a workspace binary under measurement), killed on drop.
pub struct Program {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Program {
    /// Starts `binary` with `args` and exactly the environment `env` (plus `PATH`), stderr to
    /// `log`.
    ///
    /// # Errors
    ///
    /// When the log cannot be created or the program cannot be started.
    pub fn spawn(
        name: &str,
        binary: &Path,
        args: &[&str],
        env: &[(&str, String)],
        log: PathBuf,
    ) -> anyhow::Result<Program> {
        Program::spawn_wrapped(name, &[], binary, args, env, log)
    }

    /// Like [`Program::spawn`], run under `wrapper` (a command and its arguments, such as
    /// `valgrind --tool=callgrind`) when it is not empty.
    ///
    /// # Errors
    ///
    /// When the log cannot be created or the program cannot be started.
    pub fn spawn_wrapped(
        name: &str,
        wrapper: &[String],
        binary: &Path,
        args: &[&str],
        env: &[(&str, String)],
        log: PathBuf,
    ) -> anyhow::Result<Program> {
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command.args(wrapper_args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let child = command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        tracing::info!(name, pid = child.id(), log = %log.display(), "started");
        Ok(Program {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the log's tail when the process has exited.
    ///
    /// # Errors
    ///
    /// When it is no longer running.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "{} exited with {status}; last lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(20)
            ),
            Err(error) => Err(error).with_context(|| format!("cannot poll {}", self.name)),
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit, then SIGKILL.
    ///
    /// # Errors
    ///
    /// When the signal cannot be sent.
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Ok(Some(status));
        }
        let pid = nix::unistd::Pid::from_raw(
            i32::try_from(self.child.id()).context("pid does not fit in i32")?,
        );
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .with_context(|| format!("cannot send SIGTERM to {}", self.name))?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Ok(Some(status));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!(name = %self.name, "no exit within {timeout:?} of SIGTERM; killing");
        let _ = self.child.kill();
        let _ = self.child.wait();
        Ok(None)
    }

    /// The last `lines` lines of its stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        test_support::probe::log_tail(&self.log, lines)
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `kB` field of `/proc/<pid>/status` (`VmHWM`, `VmRSS`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// User and system CPU time of `pid` (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some((user, system))
}

/// Busy and total ticks of all CPUs from `/proc/stat` (busy excludes idle and iowait).
fn machine_ticks() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .filter_map(|value| value.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is already inside user).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// `/proc` reports CPU time in USER_HZ, which Linux fixes at 100 for user space.
fn clock_ticks_per_second() -> f64 {
    100.0
}

/// Number of online CPUs.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism()
        .map(std::num::NonZeroUsize::get)
        .unwrap_or(1)
}

/// Process ids whose command line contains `fragment` (a server's private data folder).
pub fn pids_with_argument(fragment: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id();
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|bytes| String::from_utf8_lossy(&bytes).contains(fragment))
                .unwrap_or(false)
        })
        .collect()
}

/// What the CPU column of a server on another host says.
pub const NOT_MEASURED: &str = "not measured (external server)";

/// A named set of processes whose CPU use is measured over a phase.
#[derive(Debug, Clone)]
pub struct Watched {
    /// Label in the report.
    pub label: String,
    /// Its processes.
    pub pids: Vec<u32>,
    /// False for an external server: its processes are not on this machine's `/proc`.
    pub measured: bool,
}

impl Watched {
    /// One label for `pids`.
    pub fn new(label: &str, pids: Vec<u32>) -> Watched {
        Watched {
            label: label.to_owned(),
            pids,
            measured: true,
        }
    }

    /// A server on its own host, shown as [`NOT_MEASURED`].
    pub fn external(label: &str) -> Watched {
        Watched {
            label: label.to_owned(),
            pids: Vec::new(),
            measured: false,
        }
    }

    fn ticks(&self) -> (u64, u64) {
        self.pids
            .iter()
            .filter_map(|pid| cpu_ticks(*pid))
            .fold((0, 0), |(user, system), (u, s)| (user + u, system + s))
    }
}

/// CPU time of watched processes and of the whole machine since [`CpuMeter::start`].
pub struct CpuMeter {
    started: Instant,
    watched: Vec<(Watched, (u64, u64))>,
    machine: Option<(u64, u64)>,
}

/// CPU use over a phase, in percent of one core (a 2-core machine tops out at 200).
#[derive(Debug, Clone, Default)]
pub struct CpuUsage {
    /// Per watched label: user + system, and system alone; `None` when not measured (an
    /// external server).
    pub processes: Vec<(String, Option<(f64, f64)>)>,
    /// The whole machine, all processes.
    pub machine: f64,
    /// The whole machine's capacity (100 × cores).
    pub capacity: f64,
}

impl CpuUsage {
    /// Busy time not spent in any watched process: other users' load, the kernel, tools.
    pub fn others(&self) -> f64 {
        let ours: f64 = self
            .processes
            .iter()
            .filter_map(|(_, measured)| measured.map(|(percent, _)| percent))
            .sum();
        (self.machine - ours).max(0.0)
    }

    /// One line: `nats 95% (sys 20) · sink 80% (sys 10) · … · other 12% · machine 187/200%`.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self
            .processes
            .iter()
            .map(|(label, measured)| match measured {
                Some((percent, system)) => format!("{label} {percent:.0}% (sys {system:.0})"),
                None => format!("{label} {NOT_MEASURED}"),
            })
            .collect();
        parts.push(format!("other {:.0}%", self.others()));
        parts.push(format!("machine {:.0}/{:.0}%", self.machine, self.capacity));
        parts.join(" · ")
    }
}

impl CpuMeter {
    /// Starts measuring `watched` and the machine.
    pub fn start(watched: &[Watched]) -> CpuMeter {
        CpuMeter {
            started: Instant::now(),
            watched: watched
                .iter()
                .map(|watched| (watched.clone(), watched.ticks()))
                .collect(),
            machine: machine_ticks(),
        }
    }

    /// CPU use since the start.
    pub fn finish(&self) -> CpuUsage {
        let seconds = self.started.elapsed().as_secs_f64().max(1e-6);
        let per_second = clock_ticks_per_second();
        let processes = self
            .watched
            .iter()
            .map(|(watched, (user_before, system_before))| {
                if !watched.measured {
                    return (watched.label.clone(), None);
                }
                let (user, system) = watched.ticks();
                let user = user.saturating_sub(*user_before) as f64 / per_second;
                let system = system.saturating_sub(*system_before) as f64 / per_second;
                (
                    watched.label.clone(),
                    Some((100.0 * (user + system) / seconds, 100.0 * system / seconds)),
                )
            })
            .collect();
        let capacity = 100.0 * cpu_count() as f64;
        let machine = match (self.machine, machine_ticks()) {
            (Some((busy_before, total_before)), Some((busy_after, total_after)))
                if total_after > total_before =>
            {
                capacity * (busy_after - busy_before) as f64 / (total_after - total_before) as f64
            }
            _ => 0.0,
        };
        CpuUsage {
            processes,
            machine,
            capacity,
        }
    }
}

/// Samples a process's resident memory while a phase runs.
pub struct RssSampler {
    pid: u32,
    max_rss_kib: u64,
    samples: Vec<(f64, u64)>,
    started: Instant,
}

impl RssSampler {
    /// Starts sampling `pid`.
    pub fn new(pid: u32) -> RssSampler {
        RssSampler {
            pid,
            max_rss_kib: 0,
            samples: Vec::new(),
            started: Instant::now(),
        }
    }

    /// Takes one sample of `VmRSS`.
    pub fn sample(&mut self) {
        if let Some(rss) = status_kib(self.pid, "VmRSS") {
            self.max_rss_kib = self.max_rss_kib.max(rss);
            self.samples
                .push((self.started.elapsed().as_secs_f64(), rss));
        }
    }

    /// Largest `VmRSS` seen.
    pub fn max_rss_kib(&self) -> u64 {
        self.max_rss_kib
    }

    /// `VmHWM` now (the kernel's own peak), or the sampled maximum when unreadable.
    pub fn high_water_kib(&self) -> u64 {
        status_kib(self.pid, "VmHWM").unwrap_or(self.max_rss_kib)
    }

    /// The peak resident memory within each tenth of the run (shows whether it grows).
    pub fn deciles_mib(&self) -> Vec<f64> {
        let Some(&(end, _)) = self.samples.last() else {
            return Vec::new();
        };
        let mut peaks = vec![0_u64; 10];
        for &(at, rss) in &self.samples {
            let slot = ((at / end.max(1e-6)) * 10.0).floor() as usize;
            let slot = slot.min(9);
            peaks[slot] = peaks[slot].max(rss);
        }
        peaks.into_iter().map(|kib| kib as f64 / 1024.0).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_external_server_is_not_measured_rather_than_idle() {
        let usage = CpuUsage {
            processes: vec![
                ("nats-server".to_owned(), None),
                ("bench".to_owned(), Some((50.0, 5.0))),
            ],
            machine: 80.0,
            capacity: 200.0,
        };
        assert_eq!(
            usage.summary(),
            "nats-server not measured (external server) · bench 50% (sys 5) · other 30% · machine 80/200%"
        );
        let meter = CpuMeter::start(&[Watched::external("clickhouse")]);
        assert_eq!(
            meter.finish().processes,
            vec![("clickhouse".to_owned(), None)]
        );
    }
}
