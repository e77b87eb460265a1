//! `cargo xtask pipeline` as a user runs it: the real binary, real servers, a real SIGINT.
//!
//! Needs the workspace binaries built (`cargo build --workspace --bins`, which `cargo xtask test` does) and the
//! Debian server packages installed.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use test_support::probe;

/// How long the three tables may take to get their first rows, server start-up included.
const ROWS_TIMEOUT: Duration = Duration::from_secs(150);
/// How long xtask may take to stop everything after SIGINT.
const EXIT_TIMEOUT: Duration = Duration::from_secs(90);

/// The ports one run uses, all distinct.
struct Ports {
    nats: u16,
    mqtt: u16,
    clickhouse_http: u16,
    clickhouse_tcp: u16,
    clickhouse_interserver: u16,
    metrics_base: u16,
    upstream: u16,
}

impl Ports {
    fn pick() -> Ports {
        loop {
            let metrics_base = test_support::free_port_run(5);
            let ports = Ports {
                nats: test_support::free_port(),
                mqtt: test_support::free_port(),
                clickhouse_http: test_support::free_port(),
                clickhouse_tcp: test_support::free_port(),
                clickhouse_interserver: test_support::free_port(),
                metrics_base,
                upstream: test_support::free_port(),
            };
            let all = ports.all();
            if all.iter().collect::<BTreeSet<_>>().len() == all.len() {
                return ports;
            }
        }
    }

    fn all(&self) -> Vec<u16> {
        let mut ports = vec![
            self.nats,
            self.mqtt,
            self.clickhouse_http,
            self.clickhouse_tcp,
            self.clickhouse_interserver,
            self.upstream,
        ];
        ports.extend((0..5).map(|offset| self.metrics_base + offset));
        ports
    }

    fn flags(&self) -> Vec<String> {
        [
            ("--nats-port", self.nats),
            ("--mqtt-port", self.mqtt),
            ("--clickhouse-http-port", self.clickhouse_http),
            ("--clickhouse-tcp-port", self.clickhouse_tcp),
            ("--clickhouse-interserver-port", self.clickhouse_interserver),
            ("--metrics-port", self.metrics_base),
            ("--upstream-port", self.upstream),
        ]
        .into_iter()
        .flat_map(|(flag, port)| [flag.to_owned(), port.to_string()])
        .collect()
    }
}

/// The running `xtask pipeline`, its stdout lines and its data root.
///
/// Dropping it (also on a panic) stops whatever is left: SIGINT to xtask, SIGKILL after a minute, then SIGKILL
/// to every process still named in the run's pid files.
struct PipelineRun {
    child: Child,
    root: PathBuf,
    bin_dir: PathBuf,
    lines: Receiver<String>,
    output: Vec<String>,
}

impl PipelineRun {
    fn start(root: &Path, ports: &Ports) -> PipelineRun {
        std::fs::create_dir_all(root).expect("create the test data root");
        let xtask = test_support::target_bin("xtask");
        let bin_dir = xtask
            .parent()
            .expect("a binary sits in a folder")
            .to_path_buf();
        let stderr = std::fs::File::create(root.join("xtask.stderr")).expect("create stderr file");
        let mut child = Command::new(&xtask)
            .arg("pipeline")
            .arg("--no-build")
            .args(ports.flags())
            .env("NOMADWAVE_DATA_DIR", root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            // Its own group, as a shell job: our SIGINT is the only one it gets.
            .process_group(0)
            .spawn()
            .expect("spawn xtask pipeline");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        PipelineRun {
            child,
            root: root.to_path_buf(),
            bin_dir,
            lines,
            output: Vec::new(),
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits i32"))
    }

    /// Reads stdout until a progress line shows rows in all three tables; returns that line.
    fn wait_for_rows(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = rows_in(&line).is_some_and(|rows| rows.iter().all(|n| *n > 0));
                    self.output.push(line.clone());
                    if done {
                        return Some(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => return None,
                // xtask closed stdout: it exited.
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Waits for xtask to exit, collecting the rest of its stdout.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Ok(line) = self.lines.try_recv() {
                self.output.push(line);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // The reader ends at EOF; take what it still holds.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
                    self.output.push(line);
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stdout so far, stderr, and the tail of every pipeline log: what a failure message needs.
    fn diagnostics(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.output.push(line);
        }
        let mut text = format!(
            "--- xtask stdout ---\n{}\n--- xtask stderr ---\n{}\n",
            self.output.join("\n"),
            std::fs::read_to_string(self.root.join("xtask.stderr")).unwrap_or_default()
        );
        let log_dir = self.root.join("pipeline").join("logs");
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&log_dir)
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        logs.sort();
        for log in logs {
            text.push_str(&format!(
                "--- last 20 lines of {} ---\n{}\n",
                log.display(),
                probe::log_tail(&log, 20)
            ));
        }
        text
    }

    /// SIGKILLs every process still named in the run's pid files that is one of ours.
    fn kill_leftovers(&self) {
        let root_text = self.root.display().to_string();
        let bin_text = self.bin_dir.display().to_string();
        for (folder, marker) in [("services", &root_text), ("pipeline", &bin_text)] {
            let Ok(entries) = std::fs::read_dir(self.root.join(folder)) else {
                continue;
            };
            for path in entries.filter_map(|entry| entry.ok().map(|entry| entry.path())) {
                if path.extension().is_none_or(|ext| ext != "pid") {
                    continue;
                }
                let Some(pid) = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|text| text.trim().parse::<i32>().ok())
                else {
                    continue;
                };
                // Only a process whose command line names this run's folder (servers) or our binaries.
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(marker.as_str()) {
                    eprintln!("killing leftover pid {pid} from {}", path.display());
                    // Each one leads its own process group.
                    let _ = signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }
}

impl Drop for PipelineRun {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = signal::kill(self.pid(), Signal::SIGINT);
            if self.wait_exit(Duration::from_secs(60)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        self.kill_leftovers();
    }
}

/// The three row counts of a `progress … rows wave=N weather=N carbon=N …` line.
fn rows_in(line: &str) -> Option<[u64; 3]> {
    if !line.starts_with("progress ") {
        return None;
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let start = words.iter().position(|word| *word == "rows")? + 1;
    let value = |index: usize, key: &str| -> Option<u64> {
        words.get(start + index)?.strip_prefix(key)?.parse().ok()
    };
    Some([
        value(0, "wave=")?,
        value(1, "weather=")?,
        value(2, "carbon=")?,
    ])
}

fn unique_root() -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    test_support::workspace_root()
        .join(".data")
        .join("test")
        .join(format!("xtask-pipeline-{}-{nanos}", std::process::id()))
}

#[test]
fn rows_in_reads_the_progress_line() {
    let line = "progress t=12s events wave=3 weather=4 carbon=- bridge=240 rows wave=243 weather=4 carbon=0 lag=3 dead_letters=0";
    assert_eq!(rows_in(line), Some([243, 4, 0]));
    assert_eq!(
        rows_in("progress t=0s events wave=- rows wave=- weather=0 carbon=0"),
        None
    );
    assert_eq!(rows_in("install: cargo-nextest already installed"), None);
}

#[test]
fn pipeline_fills_every_table_and_stops_cleanly_on_sigint() {
    let started = Instant::now();
    let root = unique_root();
    let ports = Ports::pick();
    let mut run = PipelineRun::start(&root, &ports);

    let Some(line) = run.wait_for_rows(ROWS_TIMEOUT) else {
        panic!(
            "no progress line with rows in all three tables within {} s\n{}",
            ROWS_TIMEOUT.as_secs(),
            run.diagnostics()
        );
    };
    eprintln!(
        "rows in every table after {:.1} s: {line}",
        started.elapsed().as_secs_f64()
    );

    signal::kill(run.pid(), Signal::SIGINT).expect("send SIGINT to xtask");
    let stop_started = Instant::now();
    let Some(status) = run.wait_exit(EXIT_TIMEOUT) else {
        panic!(
            "xtask did not exit within {} s of SIGINT\n{}",
            EXIT_TIMEOUT.as_secs(),
            run.diagnostics()
        );
    };
    eprintln!(
        "xtask exited {status} {:.1} s after SIGINT",
        stop_started.elapsed().as_secs_f64()
    );
    assert!(
        status.success(),
        "xtask exited {status}\n{}",
        run.diagnostics()
    );
    let stdout = run.output.join("\n");
    assert!(
        stdout.contains(&format!(
            "clickhouse-client --host 127.0.0.1 --port {} --query",
            ports.clickhouse_tcp
        )),
        "no clickhouse-client hint\n{}",
        run.diagnostics()
    );
    assert!(stdout.contains("cargo xtask services up"), "{stdout}");

    let listening: Vec<u16> = ports
        .all()
        .into_iter()
        .filter(|port| probe::tcp_accepts(*port))
        .collect();
    assert!(
        listening.is_empty(),
        "still listening after the stop: {listening:?}\n{}",
        run.diagnostics()
    );
    for folder in ["services", "pipeline"] {
        let pid_files: Vec<PathBuf> = std::fs::read_dir(root.join(folder))
            .expect("the folder stays")
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "pid"))
            .collect();
        assert!(pid_files.is_empty(), "pid files left: {pid_files:?}");
    }

    let clickhouse_data = root.join("services/clickhouse/data");
    assert!(
        clickhouse_data.join("data/nomadwave").is_dir()
            && clickhouse_data.join("metadata/nomadwave").is_dir(),
        "no nomadwave database kept in {}",
        clickhouse_data.display()
    );
    assert!(root.join("pipeline/logs/sink.log").is_file());

    drop(run);
    if std::env::var_os("NOMADWAVE_KEEP_TEST_DATA").is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
    eprintln!("whole test: {:.1} s", started.elapsed().as_secs_f64());
}
