//! The machine a run measured: CPU, memory, kernel, load and server versions.

use std::fmt::Write as _;

/// What is known about the machine.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    /// `model name` of the first CPU.
    pub cpu_model: String,
    /// `processor` entries in `/proc/cpuinfo`.
    pub cpus: usize,
    /// `MemTotal` in KiB.
    pub memory_kib: u64,
    /// `MemAvailable` in KiB at the start.
    pub available_kib: u64,
    /// Kernel release.
    pub kernel: String,
    /// `/proc/loadavg`'s three averages at the start.
    pub load_before: String,
    /// The same at the end.
    pub load_after: String,
    /// Each server the run used: `name: local (version)` or `name: external (URL, version)`.
    pub servers: Vec<String>,
    /// Tool versions.
    pub versions: Vec<(String, String)>,
}

impl Machine {
    /// Reads `/proc`.
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == "model name").then(|| value.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let cpus = cpuinfo
            .lines()
            .filter(|line| {
                line.split(':')
                    .next()
                    .is_some_and(|key| key.trim() == "processor")
            })
            .count();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let field = |name: &str| {
            meminfo
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        Machine {
            cpu_model,
            cpus,
            memory_kib: field("MemTotal"),
            available_kib: field("MemAvailable"),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|text| text.trim().to_owned())
                .unwrap_or_default(),
            load_before: load_average(),
            load_after: String::new(),
            servers: Vec::new(),
            versions: Vec::new(),
        }
    }

    /// Markdown lines describing the machine.
    pub fn describe(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "- machine: {} × {} (from /proc/cpuinfo), {:.1} GiB memory (MemTotal), {:.1} GiB available at the start; Linux {}",
            self.cpus,
            self.cpu_model,
            self.memory_kib as f64 / 1024.0 / 1024.0,
            self.available_kib as f64 / 1024.0 / 1024.0,
            self.kernel
        );
        let _ = writeln!(
            text,
            "- load average (1/5/15 min): {} at the start, {} at the end",
            self.load_before, self.load_after
        );
        if !self.servers.is_empty() {
            let _ = writeln!(text, "- servers: {}", self.servers.join("; "));
        }
        if !self.versions.is_empty() {
            let versions: Vec<String> = self
                .versions
                .iter()
                .map(|(name, version)| {
                    // `nats-server --version` and friends print their own name first.
                    if version
                        .to_ascii_lowercase()
                        .starts_with(&name.to_ascii_lowercase())
                    {
                        version.clone()
                    } else {
                        format!("{name} {version}")
                    }
                })
                .collect();
            let _ = writeln!(text, "- versions: {}", versions.join(", "));
        }
        text
    }
}

impl Machine {
    /// Adds a server's line once (both sides of a run may use the same external server).
    pub fn add_server(&mut self, line: String) {
        if !self.servers.contains(&line) {
            self.servers.push(line);
        }
    }
}

/// The three load averages of `/proc/loadavg`.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The first line a program prints for `args` (stdout, else stderr), or why not.
pub async fn program_version(program: &str, args: &[&str]) -> String {
    let path = match program {
        "nats-server" => test_support::programs::NATS_SERVER.find(),
        "mosquitto" => test_support::programs::MOSQUITTO.find(),
        other => Some(other.into()),
    };
    let Some(path) = path else {
        return "not installed".to_owned();
    };
    match tokio::process::Command::new(path).args(args).output().await {
        Ok(output) => {
            let text = if output.stdout.is_empty() {
                output.stderr
            } else {
                output.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        }
        Err(error) => format!("unknown ({error})"),
    }
}
