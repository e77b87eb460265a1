//! A minimal blocking HTTP/1.0 client for the ClickHouse HTTP interface.
//!
//! HTTP/1.0 with `Connection: close` keeps the response unchunked, so the body is simply everything after the headers.
//! A hand-written client keeps reqwest's blocking runtime out of tokio tests and adds no dependency.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// Bounds how long one request may hang, so a wedged server fails the test instead of stalling it.
const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// Bounds the TCP connect, which on loopback either succeeds at once or is refused.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Status and body of one HTTP response.
#[derive(Debug)]
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    pub(crate) body: String,
}

/// One HTTP request to 127.0.0.1.
pub(crate) struct HttpRequest<'a> {
    pub(crate) port: u16,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) headers: &'a [(&'a str, &'a str)],
    pub(crate) body: &'a str,
}

/// Sends `request` and reads the whole response.
pub(crate) fn send(request: &HttpRequest<'_>) -> io::Result<HttpResponse> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, request.port));
    let mut stream = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;

    let mut head = format!(
        "{} {} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: {}\r\n",
        request.method,
        request.path,
        request.port,
        request.body.len()
    );
    for (name, value) in request.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(request.body.as_bytes())?;

    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> io::Result<HttpResponse> {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(invalid(format!(
            "response without end of headers: {text:?}"
        )));
    };
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| invalid(format!("malformed status line: {status_line:?}")))?;
    Ok(HttpResponse {
        status,
        body: body.to_owned(),
    })
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let response =
            parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nOk.\n").expect("valid");
        assert_eq!(response.status, 200);
        assert_eq!(response.body, "Ok.\n");
    }

    #[test]
    fn rejects_truncated_response() {
        assert!(parse_response(b"HTTP/1.0 200 OK\r\n").is_err());
    }
}
