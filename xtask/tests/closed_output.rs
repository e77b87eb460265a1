//! `cargo xtask pipeline | tee log`, then Ctrl-C: the same SIGINT ends `tee` first, so xtask
//! stops with its output going nowhere (EPIPE). It must still stop every process and server it
//! started, exit 0, and leave a state in which the next run starts cleanly.
//!
//! Runs the real `target/debug/xtask pipeline --no-build` (build the workspace binaries first)
//! on free ports and its own data root; real servers, a real pipe, a real SIGINT.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use test_support::probe;

/// Until the first progress line, server start-up included.
const START_TIMEOUT: Duration = Duration::from_secs(150);
/// For xtask to stop everything after SIGINT.
const EXIT_TIMEOUT: Duration = Duration::from_secs(90);

/// Where the run's stderr goes.
#[derive(Clone, Copy, PartialEq)]
enum Stderr {
    /// Into the same pipe as stdout (`2>&1 | tee log`).
    SamePipe,
    /// Into a file (`| tee log`, stderr on the terminal).
    File,
}

#[test]
fn stdout_and_stderr_into_a_closed_pipe_then_sigint_stops_everything() {
    let root = unique_root("closed-both");
    let ports = Ports::pick();
    let mut run = Run::start(&root, &ports, Stderr::SamePipe);
    let pids = run.read_until_progress_then_close();
    // The next progress line (every 2 s) hits the closed pipe before the signal does.
    std::thread::sleep(Duration::from_secs(3));
    let status = run.interrupt();
    assert!(status.success(), "xtask exited {status}; {}", run.stderr());
    assert_all_gone(&root, &ports, &pids);

    // A second run on the same data root starts its own servers and stops cleanly.
    let mut second = Run::start(&root, &ports, Stderr::File);
    let pids = second.read_until_progress_then_close();
    let stderr = second.stderr();
    for server in ["nats", "clickhouse", "mosquitto"] {
        assert!(
            stderr.contains(&format!("{server}: started (pid")),
            "the second run did not start {server} itself:\n{stderr}"
        );
    }
    let status = second.interrupt();
    assert!(status.success(), "second run exited {status}; {stderr}");
    assert_all_gone(&root, &ports, &pids);
    remove_root(&root);
}

#[test]
fn stdout_into_a_closed_pipe_then_sigint_stops_everything() {
    let root = unique_root("closed-stdout");
    let ports = Ports::pick();
    let mut run = Run::start(&root, &ports, Stderr::File);
    let pids = run.read_until_progress_then_close();
    std::thread::sleep(Duration::from_secs(3));
    let status = run.interrupt();
    let stderr = run.stderr();
    assert!(status.success(), "xtask exited {status}; {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("progress display stopped"), "{stderr}");
    assert_all_gone(&root, &ports, &pids);
    remove_root(&root);
}

/// One `xtask pipeline` process.
struct Run {
    child: Child,
    root: PathBuf,
    stderr_mode: Stderr,
    /// The read end of the output pipe, until the test closes it.
    output: Option<Box<dyn BufRead>>,
    /// Everything read from stdout.
    seen: String,
}

impl Run {
    fn start(root: &Path, ports: &Ports, stderr_mode: Stderr) -> Run {
        std::fs::create_dir_all(root).unwrap();
        let mut command = Command::new(test_support::target_bin("xtask"));
        command
            .arg("pipeline")
            .arg("--no-build")
            .args(ports.flags())
            .env("NOMADWAVE_DATA_DIR", root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Its own group, as a shell job: our SIGINT is the only one it gets.
            .process_group(0);
        let (child, output): (Child, Box<dyn BufRead>) = match stderr_mode {
            Stderr::File => {
                let mut child = command
                    .stderr(File::create(root.join("xtask.stderr")).unwrap())
                    .spawn()
                    .unwrap();
                let stdout = child.stdout.take().unwrap();
                (child, Box::new(BufReader::new(stdout)))
            }
            Stderr::SamePipe => {
                // stderr duplicated onto stdout's pipe, as the shell does for `2>&1 |`.
                let (reader, writer) = std::io::pipe().unwrap();
                let child = command
                    .stdout(writer.try_clone().unwrap())
                    .stderr(writer)
                    .spawn()
                    .unwrap();
                (child, Box::new(BufReader::new(reader)))
            }
        };
        // `command` holds our copies of the write ends: only xtask may keep the pipe open.
        drop(command);
        Run {
            child,
            root: root.to_path_buf(),
            stderr_mode,
            output: Some(output),
            seen: String::new(),
        }
    }

    /// Reads lines until the first progress line, then closes the read end (tee is gone);
    /// returns the pids of every server and process the run reported starting.
    fn read_until_progress_then_close(&mut self) -> Vec<u32> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut line = String::new();
        loop {
            assert!(
                Instant::now() < deadline,
                "no progress line within {START_TIMEOUT:?}:\n{}",
                self.diagnostics()
            );
            line.clear();
            let output = self
                .output
                .as_mut()
                .expect("the output is open until this returns");
            let n_read = output.read_line(&mut line).unwrap();
            assert!(
                n_read > 0,
                "xtask closed its output:\n{}",
                self.diagnostics()
            );
            self.seen.push_str(&line);
            if line.starts_with("progress ") {
                break;
            }
        }
        // The only read end: xtask's next write fails with EPIPE.
        self.output = None;
        let text = match self.stderr_mode {
            Stderr::SamePipe => self.seen.clone(),
            Stderr::File => self.stderr(),
        };
        let pids = started_pids(&text);
        // Three servers and seven pipeline processes.
        assert_eq!(pids.len(), 10, "started pids in:\n{text}");
        pids
    }

    /// SIGINT, then waits for the exit.
    fn interrupt(&mut self) -> ExitStatus {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        signal::kill(pid, Signal::SIGINT).unwrap();
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("xtask did not exit within {EXIT_TIMEOUT:?} of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.root.join("xtask.stderr")).unwrap_or_default()
    }

    fn diagnostics(&self) -> String {
        format!(
            "--- output ---\n{}\n--- stderr ---\n{}",
            self.seen,
            self.stderr()
        )
    }
}

impl Drop for Run {
    /// On a failed assertion: nothing this run started may outlive the test.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = signal::kill(
                Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0)),
                Signal::SIGINT,
            );
            let _ = self.child.wait();
        }
    }
}

/// The `(pid N)` of every `NAME: started (pid N)` line.
fn started_pids(text: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|line| line.split_once(": started (pid ")?.1.split_once(')'))
        .filter_map(|(pid, _)| pid.parse().ok())
        .collect()
}

/// Every reported pid is gone (or now names something else), no port answers, no pid file is left.
fn assert_all_gone(root: &Path, ports: &Ports, pids: &[u32]) {
    let bin_dir = test_support::target_bin("xtask")
        .parent()
        .unwrap()
        .display()
        .to_string();
    let root_text = root.display().to_string();
    let alive: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains(&root_text) || cmdline.contains(&bin_dir)
        })
        .collect();
    assert!(alive.is_empty(), "still running after the stop: {alive:?}");
    let listening: Vec<u16> = ports
        .all()
        .into_iter()
        .filter(|port| probe::tcp_accepts(*port))
        .collect();
    assert!(listening.is_empty(), "still listening: {listening:?}");
    for folder in ["services", "pipeline"] {
        let entries: Vec<PathBuf> = match std::fs::read_dir(root.join(folder)) {
            Ok(entries) => entries
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .collect(),
            Err(_) => Vec::new(),
        };
        let pid_files: Vec<&PathBuf> = entries
            .iter()
            .filter(|path| path.extension().is_some_and(|ext| ext == "pid"))
            .collect();
        assert!(pid_files.is_empty(), "pid files left: {pid_files:?}");
    }
}

/// The ports one run uses, all distinct.
struct Ports {
    servers: [u16; 5],
    metrics_base: u16,
    upstream: u16,
}

impl Ports {
    fn pick() -> Ports {
        loop {
            let ports = Ports {
                servers: std::array::from_fn(|_| test_support::free_port()),
                metrics_base: test_support::free_port_run(5),
                upstream: test_support::free_port(),
            };
            let all = ports.all();
            if all.iter().collect::<BTreeSet<_>>().len() == all.len() {
                return ports;
            }
        }
    }

    fn all(&self) -> Vec<u16> {
        let mut ports = self.servers.to_vec();
        ports.push(self.upstream);
        ports.extend((0..5).map(|offset| self.metrics_base + offset));
        ports
    }

    fn flags(&self) -> Vec<String> {
        let [nats, mqtt, http, tcp, interserver] = self.servers;
        [
            ("--nats-port", nats),
            ("--mqtt-port", mqtt),
            ("--clickhouse-http-port", http),
            ("--clickhouse-tcp-port", tcp),
            ("--clickhouse-interserver-port", interserver),
            ("--metrics-port", self.metrics_base),
            ("--upstream-port", self.upstream),
        ]
        .into_iter()
        .flat_map(|(flag, port)| [flag.to_owned(), port.to_string()])
        .collect()
    }
}

fn unique_root(name: &str) -> PathBuf {
    test_support::workspace_root()
        .join(".data")
        .join("test")
        .join(format!(
            "xtask-{name}-{}-{}",
            std::process::id(),
            test_support::free_port()
        ))
}

fn remove_root(root: &Path) {
    if std::env::var_os("NOMADWAVE_KEEP_TEST_DATA").is_none() {
        let _ = std::fs::remove_dir_all(root);
    }
}
