//! The MQTT bridge against mosquitto's own delivery rate.
//!
//! Two persistent sessions (QoS 1) are created first: a plain subscriber's and the bridge's.
//! `edge-sim mqtt` then publishes the messages once, so mosquitto queues the same messages in
//! both sessions. The plain subscriber (rumqttc, acknowledging each message as it arrives)
//! then reconnects and is timed until it has every message; the bridge is started and timed
//! until JetStream holds every event.

use std::path::Path;
use std::time::{Duration, Instant};

use std::future::IntoFuture as _;

use anyhow::{bail, Context as _};
use futures::stream::{FuturesUnordered, StreamExt as _};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::procs::{CpuMeter, CpuUsage, Program, Watched};
use crate::servers::Broker;
use crate::stream::ToPublish;

/// The Pi buoys' topic filter.
pub const WAVE_TOPICS: &str = "nomadwave/buoy/+/wave";
/// The bridge's default subscriptions.
pub const BRIDGE_TOPICS: [&str; 2] = ["nomadwave/buoy/+/wave", "rtl_433/+/events"];
/// Client id of the plain subscriber.
pub const PLAIN_CLIENT: &str = "bench-plain-subscriber";
/// Client id of the subscriber that republishes to JetStream (6d).
pub const PIPE_CLIENT: &str = "bench-republishing-subscriber";
/// Client id the bridge runs with.
pub const BRIDGE_CLIENT: &str = "bench-bridge";

fn options(broker: &Broker, client_id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    options.set_clean_session(false);
    options.set_keep_alive(Duration::from_secs(30));
    options
}

/// Discards the broker's session `client_id` (its subscriptions and queued messages): a
/// connection with a clean session, then a disconnect. An external broker may still hold one
/// from an earlier, interrupted run.
///
/// # Errors
///
/// When the broker refuses or does not answer within 10 s.
pub async fn clear_session(broker: &Broker, client_id: &str) -> anyhow::Result<()> {
    let mut options = options(broker, client_id);
    options.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let work = async {
        loop {
            match eventloop.poll().await.context("MQTT connection")? {
                Event::Incoming(Packet::ConnAck(_)) => {
                    client.try_disconnect().context("queueing the disconnect")?;
                }
                Event::Outgoing(rumqttc::Outgoing::Disconnect) => return anyhow::Ok(()),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .with_context(|| format!("clearing the MQTT session {client_id} on {}", broker.url()))?
}

/// Creates the persistent session `client_id` (discarding any earlier one) with QoS 1
/// subscriptions to `topics`, then disconnects, leaving the session (and whatever it will
/// queue) with the broker.
///
/// # Errors
///
/// When the broker refuses or does not answer within 10 s.
pub async fn create_session(
    broker: &Broker,
    client_id: &str,
    topics: &[&str],
) -> anyhow::Result<()> {
    clear_session(broker, client_id).await?;
    let (client, mut eventloop) = AsyncClient::new(options(broker, client_id), 16);
    let work = async {
        let mut acked = 0;
        loop {
            match eventloop.poll().await.context("MQTT connection")? {
                Event::Incoming(Packet::ConnAck(_)) => {
                    for topic in topics {
                        client
                            .try_subscribe(*topic, QoS::AtLeastOnce)
                            .context("queueing a subscription")?;
                    }
                }
                Event::Incoming(Packet::SubAck(_)) => {
                    acked += 1;
                    if acked == topics.len() {
                        client.try_disconnect().context("queueing the disconnect")?;
                    }
                }
                Event::Outgoing(rumqttc::Outgoing::Disconnect) => return anyhow::Ok(()),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .with_context(|| format!("creating the MQTT session {client_id} on {}", broker.url()))?
}

/// What `edge-sim mqtt` reported.
#[derive(Debug, Clone)]
pub struct Queued {
    /// Messages the broker acknowledged.
    pub messages: u64,
    /// Its own timing, first publish to last PUBACK.
    pub seconds: f64,
}

/// Publishes `messages` Pi-buoy readings with `edge-sim mqtt --rate 0` (as fast as the broker
/// acknowledges) and waits for every PUBACK.
///
/// # Errors
///
/// When edge-sim fails or reports fewer acknowledgements.
pub async fn queue(edge_sim: &Path, broker: &Broker, messages: u64) -> anyhow::Result<Queued> {
    let output = tokio::process::Command::new(edge_sim)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .args([
            "mqtt",
            "--buoys",
            "50",
            "--rate",
            "0",
            "--in-flight",
            "256",
            "--messages",
            &messages.to_string(),
            "--mqtt-url",
            &broker.url(),
        ])
        .kill_on_drop(true)
        .output()
        .await
        .context("running edge-sim mqtt")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "edge-sim mqtt failed with {}: {}{}",
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let field = |name: &str| {
        stdout
            .split_whitespace()
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let acked: u64 = field("acked")
        .and_then(|value| value.parse().ok())
        .with_context(|| format!("edge-sim mqtt printed no acked=: {stdout}"))?;
    let seconds: f64 = field("seconds")
        .and_then(|value| value.parse().ok())
        .with_context(|| format!("edge-sim mqtt printed no seconds=: {stdout}"))?;
    if acked != messages {
        bail!("the broker acknowledged {acked} of {messages} messages");
    }
    Ok(Queued {
        messages: acked,
        seconds,
    })
}

/// One timed delivery of the queued messages.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// Messages delivered (and acknowledged).
    pub messages: u64,
    /// From connecting (or starting the bridge) to the last message.
    pub seconds: f64,
    /// From the first message to the last.
    pub seconds_after_first: f64,
    /// CPU use meanwhile.
    pub cpu: CpuUsage,
    /// `VmHWM` of the bridge, when it is the bridge.
    pub high_water_kib: Option<u64>,
}

impl Delivered {
    /// Messages per second, connection included.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.seconds.max(1e-9)
    }
}

/// Reconnects the plain subscriber's session and receives `messages` messages, each
/// acknowledged by rumqttc as it arrives.
///
/// # Errors
///
/// When the connection fails or the messages do not all arrive within `limit`.
pub async fn plain_subscriber(
    broker: &Broker,
    messages: u64,
    watched: &[Watched],
    limit: Duration,
) -> anyhow::Result<Delivered> {
    subscribe(broker, PLAIN_CLIENT, messages, None, watched, limit).await
}

/// Events published to JetStream, one for each MQTT message received.
pub struct Republish<'a> {
    /// Where to.
    pub jetstream: &'a async_nats::jetstream::Context,
    /// One per message, ready to send (built before the clock starts).
    pub events: Vec<ToPublish>,
    /// Publish acks outstanding at most (the bridge's --in-flight).
    pub window: usize,
}

/// The bridge's two halves at once with nothing in between: reconnects the session
/// [`PIPE_CLIENT`] and, for each message received, publishes a ready event to JetStream with
/// at most `republish.window` acks outstanding; timed until every event is stored. MQTT
/// messages are acknowledged as they arrive, which a bridge may not do (it acks after the
/// store), so this is an upper bound of what any bridge reaches on this machine.
///
/// # Errors
///
/// When a connection or a publish fails, or not everything is stored within `limit`.
pub async fn republishing_subscriber(
    broker: &Broker,
    republish: Republish<'_>,
    watched: &[Watched],
    limit: Duration,
) -> anyhow::Result<Delivered> {
    let messages = republish.events.len() as u64;
    subscribe(
        broker,
        PIPE_CLIENT,
        messages,
        Some(republish),
        watched,
        limit,
    )
    .await
}

async fn subscribe(
    broker: &Broker,
    client_id: &str,
    messages: u64,
    republish: Option<Republish<'_>>,
    watched: &[Watched],
    limit: Duration,
) -> anyhow::Result<Delivered> {
    let meter = CpuMeter::start(watched);
    let started = Instant::now();
    let (client, mut eventloop) = AsyncClient::new(options(broker, client_id), 16);
    let mut received = 0_u64;
    let mut stored = 0_u64;
    let mut first: Option<Instant> = None;
    let (jetstream, mut events, window) = match republish {
        Some(republish) => (
            Some(republish.jetstream),
            republish.events.into_iter(),
            republish.window.max(1),
        ),
        None => (None, Vec::new().into_iter(), 1),
    };
    let mut pending = FuturesUnordered::new();
    let receive = async {
        while received < messages || !pending.is_empty() {
            tokio::select! {
                event = eventloop.poll(), if received < messages && pending.len() < window => {
                    let Event::Incoming(Packet::Publish(_)) =
                        event.context("MQTT subscriber connection")?
                    else {
                        continue;
                    };
                    first.get_or_insert_with(Instant::now);
                    received += 1;
                    let (Some(jetstream), Some(event)) = (jetstream, events.next()) else {
                        continue;
                    };
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(async_nats::header::NATS_MESSAGE_ID, event.id.as_str());
                    let ack = jetstream
                        .publish_with_headers(event.subject, headers, event.payload)
                        .await
                        .context("publishing to JetStream")?;
                    pending.push(ack.into_future());
                }
                Some(ack) = pending.next() => {
                    let ack = ack.context("waiting for a publish ack")?;
                    if ack.duplicate {
                        bail!("the stream already had an event of this run (sequence {})", ack.sequence);
                    }
                    stored += 1;
                }
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(limit, receive)
        .await
        .with_context(|| {
            format!("{client_id} got {received} of {messages} messages ({stored} stored) within {limit:?}")
        })??;
    let done = Instant::now();
    let cpu = meter.finish();
    // Send the last PUBACKs and leave.
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(event) = eventloop.poll().await {
            if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
    Ok(Delivered {
        messages: received,
        seconds: (done - started).as_secs_f64(),
        seconds_after_first: first.map_or(0.0, |first| (done - first).as_secs_f64()),
        cpu,
        high_water_kib: None,
    })
}

/// Runs the already started `bridge` until the `WAVE` stream holds `base + messages` messages.
///
/// # Errors
///
/// When the bridge exits or the events do not all arrive within `limit`.
pub async fn bridge(
    bridge: &mut Program,
    started: Instant,
    jetstream: &async_nats::jetstream::Context,
    base: u64,
    messages: u64,
    watched: &[Watched],
    limit: Duration,
) -> anyhow::Result<Delivered> {
    let meter = CpuMeter::start(watched);
    let mut first: Option<Instant> = None;
    loop {
        bridge.check_running()?;
        let stored = crate::stream::stream_messages(jetstream)
            .await?
            .saturating_sub(base);
        if stored > 0 {
            first.get_or_insert_with(Instant::now);
        }
        if stored >= messages {
            let done = Instant::now();
            return Ok(Delivered {
                messages: stored,
                seconds: (done - started).as_secs_f64(),
                seconds_after_first: first.map_or(0.0, |first| (done - first).as_secs_f64()),
                cpu: meter.finish(),
                high_water_kib: crate::procs::status_kib(bridge.pid(), "VmHWM"),
            });
        }
        if started.elapsed() > limit {
            bail!(
                "the bridge stored {stored} of {messages} events within {limit:?}; last lines of its log:\n{}",
                bridge.log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
