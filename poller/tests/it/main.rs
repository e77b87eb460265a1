//! Real-server tests of the three pollers: a real nats-server (and clickhouse-server for the
//! end-to-end test), the real binaries, and a local upstream serving the genuine fixtures and
//! scripted faults.
//!
//! The binaries are the workspace's own (`cargo build --bins` first; `cargo xtask test` does).

#![allow(clippy::unwrap_used)]

mod cursor;
mod end_to_end;
mod faults;
mod upstream;

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt as _;
pub use test_support::service::{wait_until, Service};
use test_support::{workspace_root, NatsServer};

pub use upstream::{Reply, Upstream};

/// A fixture file's bytes.
pub fn fixture(path: &str) -> Vec<u8> {
    let full = workspace_root().join("fixtures").join(path);
    std::fs::read(&full).unwrap_or_else(|error| panic!("read {}: {error}", full.display()))
}

/// Every message of `stream`, decoded as JSON, in stream order.
pub fn stream_events(nats: &NatsServer, stream: &str) -> Vec<serde_json::Value> {
    let url = nats.url();
    let stream = stream.to_owned();
    runtime().block_on(async move {
        let client = async_nats::connect(url).await.unwrap();
        let jetstream = jetstream::new(client);
        let Ok(mut handle) = jetstream.get_stream(&stream).await else {
            return Vec::new();
        };
        let info = handle.info().await.unwrap().clone();
        if info.state.messages == 0 {
            return Vec::new();
        }
        let consumer = handle
            .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap();
        let mut events = Vec::new();
        while (events.len() as u64) < info.state.messages {
            let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .expect("stream read stalled")
                .unwrap()
                .unwrap();
            events.push(serde_json::from_slice(&message.payload).unwrap());
        }
        events
    })
}

/// Number of messages in `stream` (0 when it does not exist yet).
pub fn stream_len(nats: &NatsServer, stream: &str) -> u64 {
    let url = nats.url();
    let stream = stream.to_owned();
    runtime().block_on(async move {
        let client = async_nats::connect(url).await.unwrap();
        let jetstream = jetstream::new(client);
        match jetstream.get_stream(&stream).await {
            Ok(mut handle) => handle
                .info()
                .await
                .map(|info| info.state.messages)
                .unwrap_or(0),
            Err(_) => 0,
        }
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Distinct (site, observed_at) pairs among `events`.
pub fn distinct_keys(
    events: &[serde_json::Value],
    site_field: &str,
) -> std::collections::BTreeSet<(String, String)> {
    events
        .iter()
        .map(|event| {
            (
                event[site_field].as_str().unwrap().to_owned(),
                event["observed_at"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}
