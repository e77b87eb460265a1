//! The suite runs on the nats-server it was asked to run on: the server's own INFO names the
//! version `--version` reports, and, when `cargo xtask test` says which release a pass is for
//! (`NOMADWAVE_EXPECT_NATS_VERSION`), that release.

#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::net::TcpStream;

use test_support::{nats_server_executable, nats_server_version, NatsServer};

/// The `"version":"…"` member of the INFO line a NATS server greets every client with.
fn info_version(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut greeting = vec![0_u8; 4096];
    let read = stream.read(&mut greeting).unwrap();
    let greeting = String::from_utf8_lossy(&greeting[..read]).into_owned();
    let start = greeting.find("\"version\":\"").unwrap() + "\"version\":\"".len();
    let end = start + greeting[start..].find('"').unwrap();
    greeting[start..end].to_owned()
}

#[test]
fn tests_run_on_the_requested_nats_server_version() {
    let server = NatsServer::start("nats-version");
    let executable = nats_server_executable();
    let reported = nats_server_version(&executable);
    let running = info_version(server.port());
    eprintln!(
        "this pass runs on nats-server {running} ({})",
        executable.display()
    );
    assert!(
        reported.contains(&running),
        "`--version` says {reported:?} but the running server says {running}"
    );
    if let Ok(expected) = std::env::var("NOMADWAVE_EXPECT_NATS_VERSION") {
        assert!(
            running.starts_with(&expected),
            "this pass should run on nats-server {expected}, but runs on {running}"
        );
    }
}
