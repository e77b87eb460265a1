//! [`ChdbServer`]: ClickHouse 26.9 (chdb, in-process in Python) behind `chdb_http.py`, the
//! HTTP front the sink's client talks to, as a child process killed on drop.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use test_support::{workspace_root, ScratchDir};

/// The release chdb must embed (`chdb-core` on PyPI, installed by `cargo xtask install`).
pub const CLICKHOUSE_RELEASE: &str = "26.9";

/// How long one statement may take before the test fails.
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// The chdb HTTP front, on a free loopback port with its data under `.data/test/`.
pub struct ChdbServer {
    child: Child,
    /// Kept open: the front exits when it sees its stdin close, so even a killed test leaves
    /// no front behind.
    stdin: Option<ChildStdin>,
    port: u16,
    version: String,
    log: PathBuf,
    /// Dropped after `child` is gone (see `Drop`), so the folder is removed last.
    data_dir: ScratchDir,
}

impl ChdbServer {
    /// Starts the front for the test `name` and waits for its `ready` line.
    ///
    /// Panics, naming `cargo xtask install`, when `.data/venv` has no Python with chdb.
    pub fn start(name: &str) -> ChdbServer {
        let python = workspace_root().join(".data/venv/bin/python");
        assert!(
            python.is_file(),
            "{} is missing: run `cargo xtask install` (it installs chdb-core into .data/venv)",
            python.display()
        );
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/current_clickhouse/chdb_http.py");
        let data_dir = ScratchDir::create(name);
        let log = data_dir.path().join("chdb_http.log");
        let log_file = File::create(&log).expect("create the front's log file");
        let mut child = Command::new(&python)
            .arg(&script)
            .arg(data_dir.path().join("chdb"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", python.display()));
        let stdin = child.stdin.take();
        let mut ready = String::new();
        let stdout = child.stdout.take().expect("stdout is piped");
        let _ = BufReader::new(stdout).read_line(&mut ready);
        let fields: Vec<(&str, &str)> = ready
            .split_whitespace()
            .filter_map(|pair| pair.split_once('='))
            .collect();
        let field = |key: &str| {
            fields
                .iter()
                .find(|(name, _)| *name == key)
                .map(|(_, value)| (*value).to_owned())
        };
        let (Some(port), Some(version)) = (field("port"), field("version")) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the chdb HTTP front did not start (is chdb-core installed? run `cargo xtask install`); its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        ChdbServer {
            child,
            stdin,
            port: port.parse().expect("the front prints its port as a number"),
            version,
            log,
            data_dir,
        }
    }

    /// `http://127.0.0.1:PORT`, for `CLICKHOUSE_URL`.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What `SELECT version()` answered at start, such as `26.9.2.1`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The folder of this test's files (the front's data and log, the sink's log).
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The front's log: one line per statement, with the error text of each failed one.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `sql` and returns the body (TabSeparated), trimmed; panics with the error text.
    pub fn query(&self, sql: &str) -> String {
        self.query_with(&[], sql)
            .unwrap_or_else(|text| panic!("{sql}\nfailed: {text}"))
    }

    /// Runs `sql` with `settings` as URL parameters, as the sink's client sends them; `Err`
    /// holds the server's error text.
    ///
    /// # Errors
    ///
    /// The status was not 200, or the front could not be reached.
    pub fn query_with(&self, settings: &[(&str, &str)], sql: &str) -> Result<String, String> {
        let query: String = settings
            .iter()
            .map(|(name, value)| format!("{name}={}", percent_encode(value)))
            .collect::<Vec<_>>()
            .join("&");
        let mut stream =
            TcpStream::connect(("127.0.0.1", self.port)).map_err(|err| err.to_string())?;
        stream
            .set_read_timeout(Some(QUERY_TIMEOUT))
            .map_err(|err| err.to_string())?;
        let request = format!(
            "POST /?{query} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{sql}",
            sql.len()
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|err| err.to_string())?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .map_err(|err| err.to_string())?;
        let response = String::from_utf8_lossy(&response);
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("malformed response: {response}"))?;
        match head.split_whitespace().nth(1) {
            Some("200") => Ok(body.trim().to_owned()),
            _ => Err(body.trim().to_owned()),
        }
    }
}

impl Drop for ChdbServer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}
