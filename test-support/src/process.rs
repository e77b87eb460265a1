//! Child-process and data-folder lifecycles shared by the three servers.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::probe;
use crate::programs::ServerProgram;

/// How long a server may take to become ready before the test fails.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `stop` waits after SIGTERM before it sends SIGKILL.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How many fresh ports a first start tries: another test may grab a free port between our probe and the bind.
const START_ATTEMPTS: u32 = 3;

/// How many log lines a startup failure shows.
const FAILURE_LOG_LINES: usize = 40;

/// Env var that keeps test data folders after the test, for post-mortems.
pub(crate) const KEEP_TEST_DATA_VAR: &str = "NOMADWAVE_KEEP_TEST_DATA";

/// A server's private folder under `<workspace>/.data/test/`, removed on drop unless [`KEEP_TEST_DATA_VAR`] is set.
pub(crate) struct DataDir {
    path: PathBuf,
}

impl DataDir {
    /// Creates `<workspace>/.data/test/<name>-<random hex>`.
    pub(crate) fn create(name: &str) -> DataDir {
        let safe_name: String = name
            .chars()
            .map(
                |c| match c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    true => c,
                    false => '-',
                },
            )
            .collect();
        let suffix: u32 = rand::random();
        let path = crate::workspace_root()
            .join(".data")
            .join("test")
            .join(format!("{safe_name}-{suffix:08x}"));
        if let Err(err) = std::fs::create_dir_all(&path) {
            panic!("cannot create test data folder {}: {err}", path.display());
        }
        DataDir { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if std::env::var_os(KEEP_TEST_DATA_VAR).is_some() {
            return;
        }
        // Best effort: a failed removal only leaves garbage in the git-ignored `.data`.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// How to run a server; kept so that `restart` runs exactly the same command.
pub(crate) struct ServerCommand {
    pub(crate) program: ServerProgram,
    pub(crate) executable: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) envs: Vec<(OsString, OsString)>,
    /// Receives the server's stdout and stderr, appended across restarts.
    pub(crate) console_log: PathBuf,
    /// Logs whose tails explain a failed start, besides `console_log`.
    pub(crate) server_logs: Vec<PathBuf>,
}

/// How a start ended.
#[derive(Debug)]
pub(crate) enum StartOutcome {
    Ready,
    Exited(ExitStatus),
    TimedOut,
    SpawnFailed(std::io::Error),
}

/// A server child process, killed on drop.
///
/// The child stays in the test's process group, so a test runner that kills a timed-out test's group also kills
/// its servers.
pub(crate) struct ServerProcess {
    command: ServerCommand,
    /// `None` while stopped; a child is always waited for before this goes back to `None`, so no zombie is left.
    child: Option<Child>,
}

impl ServerProcess {
    pub(crate) fn new(command: ServerCommand) -> ServerProcess {
        ServerProcess {
            command,
            child: None,
        }
    }

    /// The running child's pid, for signals a test sends itself (SIGSTOP to freeze a server).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Spawns the server and waits up to [`START_TIMEOUT`] for `is_ready`; a server that is not ready is killed.
    pub(crate) fn start(&mut self, mut is_ready: impl FnMut() -> bool) -> StartOutcome {
        if let Err(err) = self.spawn() {
            return StartOutcome::SpawnFailed(err);
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.try_wait() {
                return StartOutcome::Exited(status);
            }
            if is_ready() {
                return StartOutcome::Ready;
            }
            if Instant::now() >= deadline {
                self.kill();
                return StartOutcome::TimedOut;
            }
            std::thread::sleep(probe::POLL_INTERVAL);
        }
    }

    /// Starts the server, panicking with its log tails unless it becomes ready.
    pub(crate) fn start_or_panic(&mut self, is_ready: impl FnMut() -> bool) {
        if self.child.is_some() {
            self.stop();
        }
        let outcome = self.start(is_ready);
        if !matches!(outcome, StartOutcome::Ready) {
            panic!("{}", self.failure_report(&outcome));
        }
    }

    /// Sends SIGTERM and waits; sends SIGKILL if the server is still running after [`STOP_TIMEOUT`].
    pub(crate) fn stop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("Linux pids fit in i32"));
        // ESRCH only means the server already exited; the wait below reaps it either way.
        let _ = signal::kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if self.try_wait().is_some() {
                return;
            }
            std::thread::sleep(probe::POLL_INTERVAL);
        }
        self.kill();
    }

    /// Sends SIGKILL and waits for the server to be gone.
    pub(crate) fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // An error means the child already exited; `wait` reaps it either way.
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Whether the last start failed because a port was taken, which a retry on fresh ports fixes.
    pub(crate) fn port_was_taken(&self) -> bool {
        self.log_paths().iter().any(|path| {
            probe::log_tail(path, FAILURE_LOG_LINES)
                .to_ascii_lowercase()
                .contains("address already in use")
        })
    }

    /// Explains a failed start with the command and the last lines of each log.
    pub(crate) fn failure_report(&self, outcome: &StartOutcome) -> String {
        let program = self.command.program.program;
        let headline = match outcome {
            StartOutcome::Ready => format!("{program} is ready"),
            StartOutcome::Exited(status) => {
                format!("{program} exited with {status} before it became ready")
            }
            StartOutcome::TimedOut => format!(
                "{program} did not become ready within {} s",
                START_TIMEOUT.as_secs()
            ),
            StartOutcome::SpawnFailed(err) => format!("cannot spawn {program}: {err}"),
        };
        let mut report = format!(
            "{headline}\ncommand: {} {}",
            self.command.executable.display(),
            self.command
                .args
                .iter()
                .map(|arg| arg.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        for path in self.log_paths() {
            report.push_str(&format!(
                "\n--- last {FAILURE_LOG_LINES} lines of {} ---\n{}",
                path.display(),
                probe::log_tail(&path, FAILURE_LOG_LINES)
            ));
        }
        report
    }

    fn clear_logs(&self) {
        for path in self.log_paths() {
            // A log that does not exist yet is already clear.
            let _ = std::fs::remove_file(path);
        }
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let console = open_append(&self.command.console_log)?;
        let console_err = console.try_clone()?;
        let child = Command::new(&self.command.executable)
            .args(&self.command.args)
            .envs(self.command.envs.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(console_err)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// Reaps the child if it has exited, leaving `child` as `None` then.
    fn try_wait(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status)
            }
            Ok(None) => None,
            Err(err) => panic!("cannot poll {}: {err}", self.command.program.program),
        }
    }

    fn log_paths(&self) -> Vec<PathBuf> {
        let mut paths = self.command.server_logs.clone();
        paths.push(self.command.console_log.clone());
        paths
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `attempt` until its server starts, retrying on fresh ports while the failure was a taken port.
///
/// `attempt` picks ports, writes the config and returns the started (or failed) process with the ports it used.
pub(crate) fn start_on_free_ports<Ports>(
    mut attempt: impl FnMut() -> (ServerProcess, StartOutcome, Ports),
) -> (ServerProcess, Ports) {
    let mut attempt_idx = 1;
    loop {
        let (process, outcome, ports) = attempt();
        match outcome {
            StartOutcome::Ready => return (process, ports),
            StartOutcome::Exited(_) if attempt_idx < START_ATTEMPTS && process.port_was_taken() => {
                // The next attempt logs to the same files; stale "address in use" lines must not decide its fate.
                process.clear_logs();
                attempt_idx += 1;
            }
            outcome => panic!("{}", process.failure_report(&outcome)),
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}
