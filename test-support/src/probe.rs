//! Readiness probes, shared by the test servers and `cargo xtask services up`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::http::{self, HttpRequest};

/// Pause between two probes while waiting for a server.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn tcp_accepts(port: u16) -> bool {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok()
}

/// Whether a ClickHouse server answers `GET /ping` on 127.0.0.1:`http_port` with `Ok.`.
pub fn clickhouse_ping(http_port: u16) -> bool {
    let request = HttpRequest {
        port: http_port,
        method: "GET",
        path: "/ping",
        headers: &[],
        body: "",
    };
    match http::send(&request) {
        Ok(response) => response.status == 200 && response.body.trim() == "Ok.",
        Err(_) => false,
    }
}

/// Size of the file at `path`, or 0 when it does not exist yet.
///
/// Taken before a start so that [`log_contains_after`] ignores lines left by earlier runs.
pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|meta| meta.len()).unwrap_or(0)
}

/// Whether the file at `path` contains `needle` after byte `offset`.
pub fn log_contains_after(path: &Path, offset: u64, needle: &str) -> bool {
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    if file.seek(SeekFrom::Start(offset)).is_err() {
        return false;
    }
    let mut tail = Vec::new();
    if file.read_to_end(&mut tail).is_err() {
        return false;
    }
    String::from_utf8_lossy(&tail).contains(needle)
}

/// Calls `is_done` every [`POLL_INTERVAL`] until it returns true or `timeout` passes; returns whether it did.
pub fn poll_until(timeout: Duration, mut is_done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if is_done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// The last `n_lines` lines of the file at `path`, or a note saying why there are none.
pub fn log_tail(path: &Path, n_lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(n_lines);
            lines[start..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

/// GET `path` from 127.0.0.1:`port`; returns (status, body), or None if nothing listens.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())?;
    Some((status, body))
}

/// Sum of the Prometheus samples named `name` whose line contains `label_fragment`.
pub fn metric_value(page: &str, name: &str, label_fragment: &str) -> f64 {
    page.lines()
        .filter(|line| line.starts_with(name) && line.contains(label_fragment))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
