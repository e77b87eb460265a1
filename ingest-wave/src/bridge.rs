//! `ingest-wave bridge`: Pi-side MQTT → JetStream, acknowledging each MQTT message only after
//! JetStream stored its event (or its dead letter).
//!
//! ```text
//!  mosquitto ──QoS 1, persistent session, manual acks──► event loop ──► pipeline (in order)
//!                                                                         │ decode by topic
//!                                                                         │ publish (Nats-Msg-Id) or dead-letter
//!                                                                         ▼ wait for the JetStream ack
//!  mosquitto ◄──────────────────────── PUBACK, in arrival order ─────────┘
//! ```
//!
//! Topics: `nomadwave/buoy/<site>/wave` (Pi buoys, [`feeds::pi_buoy`]) become wave events;
//! `rtl_433/<host>/events` (Pi weather stations, [`feeds::rtl_433`]) become weather events.
//! Anything else, and any payload that cannot be read, is dead-lettered with its topic and the
//! reason, then acknowledged: never dropped silently.
//!
//! A PUBACK is sent only on the connection the message arrived on. After a reconnect, messages
//! of the old connection are not acknowledged: the broker redelivers them (persistent session)
//! and their deterministic event ids make JetStream drop the second copy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use chrono::Utc;
use clap::ValueEnum;
use futures::stream::{FuturesOrdered, StreamExt as _};
use rumqttc::{AsyncClient, Event, Packet, Publish, QoS};
use runtime::mqtt::{MqttArgs, MqttSettings};
use runtime::provision::StreamArgs;
use runtime::publish::{dead_letter, publish_with_id, Outgoing, Published};
use runtime::retry::RetryError;
use runtime::{ConfigError, HttpArgs, NatsArgs, NatsSettings, RetryPolicy};
use schema::{Event as SchemaEvent, Kind, Observation};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Flags of `bridge`.
#[derive(Debug, clap::Args)]
pub struct BridgeArgs {
    /// Broker connection.
    #[command(flatten)]
    pub mqtt: MqttArgs,
    /// Client id; keep it stable so the broker keeps this bridge's session (and its queued
    /// messages) across restarts.
    #[arg(long, env = "MQTT_CLIENT_ID", default_value = "nomadwave-bridge")]
    pub mqtt_client_id: String,
    /// Topic filters to subscribe to (QoS 1), comma-separated.
    #[arg(
        long,
        env = "MQTT_TOPICS",
        value_delimiter = ',',
        default_value = "nomadwave/buoy/+/wave,rtl_433/+/events"
    )]
    pub topics: Vec<String>,
    /// How rtl_433's `time` is read: `require-zone` refuses local times without a zone,
    /// `naive-utc` reads them as UTC (rtl_433 -M time:utc), `receive` uses the bridge's receive
    /// time (a redelivered message may then become a second observation).
    #[arg(
        long,
        env = "MQTT_RTL433_TIME",
        value_enum,
        default_value = "require-zone"
    )]
    pub rtl433_time: Rtl433Time,
    /// Largest payload accepted; a bigger one is dead-lettered (first 4 KiB kept).
    #[arg(long, env = "MQTT_MAX_PAYLOAD_BYTES", default_value_t = 64 * 1024)]
    pub max_payload_bytes: usize,
    /// Messages being published to JetStream at once (pipelined; acks stay in order).
    #[arg(long, env = "BRIDGE_IN_FLIGHT", default_value_t = 256)]
    pub in_flight: usize,
    /// Bound on finishing in-flight messages at shutdown; unfinished ones are redelivered later.
    #[arg(long, env = "BRIDGE_DRAIN_TIMEOUT", default_value = "10s", value_parser = runtime::parse_duration)]
    pub drain_timeout: Duration,
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Stream retention and dedupe.
    #[command(flatten)]
    pub streams: StreamArgs,
    /// Metrics and health endpoint.
    #[command(flatten)]
    pub http: HttpArgs<{ runtime::http::default_port::BRIDGE }>,
}

/// The `--rtl433-time` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Rtl433Time {
    /// Only zoned times or Unix seconds.
    RequireZone,
    /// Times without zone are UTC.
    NaiveUtc,
    /// The bridge's receive time.
    Receive,
}

/// What became of one MQTT message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored as a new event.
    Published,
    /// JetStream already had it (a redelivery).
    Duplicate,
    /// Stored in the dead-letter stream.
    DeadLettered,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Published => "published",
            Outcome::Duplicate => "duplicate",
            Outcome::DeadLettered => "dead_lettered",
        }
    }
}

/// The per-message metrics, registered once: looking a labelled metric up per message cost
/// about 3 % of the bridge's instructions (callgrind, BENCHMARKS.md).
#[derive(Clone)]
struct MessageMetrics {
    received: metrics::Counter,
    in_flight: metrics::Gauge,
    published: metrics::Counter,
    duplicate: metrics::Counter,
    dead_lettered: metrics::Counter,
    acks_skipped: metrics::Counter,
}

impl MessageMetrics {
    fn register() -> MessageMetrics {
        let outcome = |outcome: Outcome| metrics::counter!("nomadwave_bridge_messages_total", "outcome" => outcome.label());
        MessageMetrics {
            received: metrics::counter!("nomadwave_bridge_messages_received_total"),
            in_flight: metrics::gauge!("nomadwave_bridge_in_flight"),
            published: outcome(Outcome::Published),
            duplicate: outcome(Outcome::Duplicate),
            dead_lettered: outcome(Outcome::DeadLettered),
            acks_skipped: metrics::counter!("nomadwave_bridge_acks_skipped_total"),
        }
    }

    fn outcome(&self, outcome: Outcome) -> &metrics::Counter {
        match outcome {
            Outcome::Published => &self.published,
            Outcome::Duplicate => &self.duplicate,
            Outcome::DeadLettered => &self.dead_lettered,
        }
    }
}

/// A message received on connection `generation`.
struct Received {
    publish: Publish,
    generation: u64,
}

struct Pipeline {
    jetstream: jetstream::Context,
    rtl433_time: Rtl433Time,
    max_payload_bytes: usize,
    hard_stop: CancellationToken,
}

/// Runs the bridge until `shutdown`, then finishes in-flight messages (bounded by
/// `--drain-timeout`) and disconnects.
///
/// # Errors
///
/// Bad configuration (exit 64), or a failure to start (NATS unreachable, port busy).
pub async fn run_bridge(args: &BridgeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mqtt = MqttSettings::from_args(&args.mqtt)?;
    let nats = NatsSettings::from_args(&args.nats)?;
    let topics: Vec<String> = args
        .topics
        .iter()
        .map(|topic| topic.trim().to_owned())
        .filter(|topic| !topic.is_empty())
        .collect();
    if topics.is_empty() {
        return Err(ConfigError::new("--topics/MQTT_TOPICS", "no topic filter given").into());
    }
    if args.mqtt_client_id.trim().is_empty() {
        return Err(
            ConfigError::new("--mqtt-client-id/MQTT_CLIENT_ID", "must not be empty").into(),
        );
    }
    if args.in_flight == 0 || args.max_payload_bytes == 0 {
        return Err(ConfigError::new(
            "--in-flight/BRIDGE_IN_FLIGHT",
            "in-flight and max payload must be above 0",
        )
        .into());
    }
    let started = runtime::service::start_service(
        "ingest-wave-bridge",
        args.http.http_listen,
        &nats,
        &args.streams.policy(),
        &shutdown,
    )
    .await?;
    let (health, http, client, jetstream) = (
        started.health,
        started.http,
        started.client,
        started.jetstream,
    );
    health.set_not_ready("mqtt", "not connected yet");

    let mut options = mqtt.options(args.mqtt_client_id.trim());
    options.set_clean_session(false);
    options.set_manual_acks(true);
    // rumqttc refuses packets above its limit by dropping the connection, which would make the
    // broker redeliver the same message forever; keep its limit well above ours so oversize
    // payloads reach the pipeline and are dead-lettered instead.
    let packet_limit = args.max_payload_bytes.saturating_mul(4).max(1024 * 1024);
    options.set_max_packet_size(packet_limit, packet_limit);
    // The request channel carries our PUBACKs; it must never fill (that would stall the
    // pipeline, and with it the event loop): it holds at most the broker's in-flight window.
    let (mqtt_client, mut eventloop) = AsyncClient::new(options, 65_536);

    let hard_stop = CancellationToken::new();
    let pipeline = Arc::new(Pipeline {
        jetstream,
        rtl433_time: args.rtl433_time,
        max_payload_bytes: args.max_payload_bytes,
        hard_stop: hard_stop.clone(),
    });
    let generation = Arc::new(AtomicU64::new(0));
    // Unbounded so the event loop never waits (it must keep answering pings); the broker's
    // in-flight window (`max_inflight_messages`) bounds what it holds.
    let (sender, receiver) = mpsc::unbounded_channel::<Received>();
    let message_metrics = MessageMetrics::register();
    let mut acknowledger = tokio::spawn(acknowledge_in_order(
        receiver,
        Arc::clone(&pipeline),
        mqtt_client.clone(),
        Arc::clone(&generation),
        args.in_flight,
        message_metrics.clone(),
    ));
    tracing::info!(broker = %mqtt.address(), client_id = %args.mqtt_client_id, topics = ?topics, "bridging MQTT to JetStream");

    let mut reconnect_delay = Duration::from_millis(200);
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                let current = generation.fetch_add(1, Ordering::SeqCst) + 1;
                reconnect_delay = Duration::from_millis(200);
                health.set_ready("mqtt");
                metrics::gauge!("nomadwave_bridge_mqtt_connected").set(1.0);
                tracing::info!(
                    session_present = ack.session_present,
                    generation = current,
                    "connected to the broker"
                );
                // Subscriptions live in the session; renew them when the broker had none.
                if !ack.session_present {
                    for topic in &topics {
                        if let Err(error) =
                            mqtt_client.try_subscribe(topic.clone(), QoS::AtLeastOnce)
                        {
                            tracing::error!(topic, %error, "cannot queue the subscription");
                        }
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let received = Received {
                    publish,
                    generation: generation.load(Ordering::SeqCst),
                };
                message_metrics.received.increment(1);
                if sender.send(received).is_err() {
                    break;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                tracing::info!(codes = ?ack.return_codes, "subscribed");
            }
            Ok(_) => {}
            Err(error) => {
                // A refusal (credentials, certificates) is logged as an error and retried with
                // a longer backoff: the bridge stays up but not ready until someone fixes the
                // broker's or the bridge's configuration.
                let failure = mqtt.describe_failure(&error);
                health.set_not_ready("mqtt", failure.message.clone());
                metrics::gauge!("nomadwave_bridge_mqtt_connected").set(0.0);
                let delay_ms = reconnect_delay.as_millis() as u64;
                let max_delay = if failure.refused {
                    tracing::error!(delay_ms, "{}; retrying", failure.message);
                    Duration::from_secs(30)
                } else {
                    tracing::warn!(error = %failure.message, delay_ms, "broker connection lost; reconnecting");
                    Duration::from_secs(10)
                };
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(reconnect_delay) => {}
                }
                reconnect_delay = (reconnect_delay * 2).min(max_delay);
            }
        }
    }

    // Drain: no new messages; finish what is in flight while the event loop still runs so the
    // PUBACKs reach the broker.
    drop(sender);
    tracing::info!("shutting down: finishing in-flight messages");
    let deadline = tokio::time::sleep(args.drain_timeout);
    tokio::pin!(deadline);
    let mut drained = false;
    loop {
        tokio::select! {
            _ = &mut acknowledger, if !drained => { drained = true; break; }
            () = &mut deadline => {
                tracing::warn!("drain timeout: unfinished messages stay with the broker and will be redelivered");
                hard_stop.cancel();
                break;
            }
            event = eventloop.poll() => if event.is_err() { tokio::time::sleep(Duration::from_millis(100)).await },
        }
    }
    if !drained {
        let _ = acknowledger.await;
    }
    // Let the last PUBACKs go out, then leave cleanly (the session stays on the broker).
    let _ = mqtt_client.try_disconnect();
    let flush_deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < flush_deadline {
        match tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await {
            Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) | Ok(Err(_)) => break,
            _ => {}
        }
    }
    runtime::service::flush_before_exit(
        &client,
        "PUBACK-less messages stay with the broker and are redelivered",
    )
    .await;
    let _ = http.await;
    tracing::info!("stopped");
    Ok(())
}

/// Runs up to `in_flight` messages through the pipeline at once and acknowledges them in
/// arrival order, each only once its JetStream write is done.
async fn acknowledge_in_order(
    mut receiver: mpsc::UnboundedReceiver<Received>,
    pipeline: Arc<Pipeline>,
    client: AsyncClient,
    generation: Arc<AtomicU64>,
    in_flight: usize,
    metrics: MessageMetrics,
) {
    let mut pending = FuturesOrdered::new();
    let mut open = true;
    loop {
        metrics.in_flight.set(pending.len() as f64);
        tokio::select! {
            Some(done) = pending.next(), if !pending.is_empty() => {
                acknowledge(&client, &generation, &metrics, done).await;
            }
            received = receiver.recv(), if open && pending.len() < in_flight => match received {
                Some(received) => pending.push_back(process(Arc::clone(&pipeline), received)),
                None => open = false,
            },
            else => break,
        }
    }
}

async fn acknowledge(
    client: &AsyncClient,
    generation: &AtomicU64,
    metrics: &MessageMetrics,
    done: (Received, Option<Outcome>),
) {
    let (received, outcome) = done;
    let Some(outcome) = outcome else {
        return; // interrupted by the hard stop: not safe, not acknowledged
    };
    metrics.outcome(outcome).increment(1);
    if received.generation != generation.load(Ordering::SeqCst) {
        // The connection it came on is gone; the broker will redeliver it.
        metrics.acks_skipped.increment(1);
        return;
    }
    if let Err(error) = client.ack(&received.publish).await {
        tracing::warn!(topic = %received.publish.topic, %error, "cannot queue the PUBACK; the broker will redeliver");
    }
}

/// Decodes, publishes or dead-letters one message. `None` when the hard stop interrupted it.
async fn process(pipeline: Arc<Pipeline>, received: Received) -> (Received, Option<Outcome>) {
    let outcome = route(&pipeline, &received.publish).await;
    (received, outcome)
}

async fn route(pipeline: &Pipeline, publish: &Publish) -> Option<Outcome> {
    let topic = publish.topic.as_str();
    let payload = &publish.payload;
    let (kind, source_label) = if feeds::rtl_433::is_events_topic(topic) {
        (Kind::Weather, "rtl_433")
    } else {
        (Kind::Wave, "pi_buoy")
    };
    if payload.len() > pipeline.max_payload_bytes {
        let detail = format!(
            "payload of {} bytes exceeds --max-payload-bytes {}; first 4096 bytes kept",
            payload.len(),
            pipeline.max_payload_bytes
        );
        let kept = payload.slice(..payload.len().min(4096));
        return dead_letter_message(pipeline, kind, topic, payload, kept, "too_large", &detail)
            .await;
    }
    let decoded = if source_label == "rtl_433" {
        let rule = match pipeline.rtl433_time {
            Rtl433Time::RequireZone => feeds::rtl_433::TimeRule::RequireZone,
            Rtl433Time::NaiveUtc => feeds::rtl_433::TimeRule::NaiveIsUtc,
            Rtl433Time::Receive => {
                // Whole seconds: the receive time becomes part of the event id.
                let now = Utc::now();
                feeds::rtl_433::TimeRule::Receive(
                    chrono::DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now),
                )
            }
        };
        feeds::rtl_433::parse(topic, payload, rule)
            .map(|observation| event(feeds::rtl_433::SOURCE, observation))
    } else if feeds::pi_buoy::topic_site(topic).is_some() {
        feeds::pi_buoy::parse(topic, payload)
            .map(|observation| event(feeds::pi_buoy::SOURCE, observation))
    } else {
        Err(feeds::RejectedRecord {
            location: topic.to_owned(),
            reason: "unknown_topic",
            detail: format!(
                "topic {topic:?} is neither nomadwave/buoy/<site>/wave nor rtl_433/<host>/events"
            ),
        })
    };
    match decoded {
        Ok(outgoing) => publish_event(pipeline, outgoing).await,
        Err(rejected) => {
            metrics::counter!("nomadwave_bridge_rejected_total", "source" => source_label, "reason" => rejected.reason).increment(1);
            tracing::warn!(topic, reason = rejected.reason, detail = %rejected.detail, "message rejected; dead-lettering it");
            dead_letter_message(
                pipeline,
                kind,
                topic,
                payload,
                payload.clone(),
                rejected.reason,
                &rejected.detail,
            )
            .await
        }
    }
}

/// The outgoing JetStream message of an observation.
fn event<O: Observation>(source: &str, observation: O) -> Outgoing {
    let event = SchemaEvent::new(source, observation, Utc::now());
    let (subject, payload) = (event.subject(), event.encode().into());
    Outgoing {
        subject,
        message_id: event.event_id.into_string(),
        headers: async_nats::HeaderMap::new(),
        payload,
    }
}

async fn publish_event(pipeline: &Pipeline, outgoing: Outgoing) -> Option<Outcome> {
    match publish_with_id(
        &pipeline.jetstream,
        outgoing,
        RetryPolicy::PUBLISH,
        &pipeline.hard_stop,
    )
    .await
    {
        Ok(Published::Stored { .. }) => Some(Outcome::Published),
        Ok(Published::Duplicate) => Some(Outcome::Duplicate),
        Err(RetryError::Cancelled) => None,
        // PUBLISH retries forever; a Failed can only come from a future policy change.
        Err(RetryError::Failed(error)) => {
            tracing::error!(%error, "publish failed; the message stays with the broker");
            None
        }
    }
}

async fn dead_letter_message(
    pipeline: &Pipeline,
    kind: Kind,
    topic: &str,
    original: &Bytes,
    kept: Bytes,
    reason: &'static str,
    detail: &str,
) -> Option<Outcome> {
    // One dead letter per distinct (topic, payload), however often the broker redelivers it.
    let mut digest = Sha256::new();
    digest.update(topic.as_bytes());
    digest.update([0]);
    digest.update(original);
    let hash = digest.finalize();
    let id: String = hash
        .iter()
        .take(16)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let outgoing = dead_letter(
        kind,
        reason,
        detail,
        format!("deadletter-mqtt-{id}"),
        &[(schema::dead_letter::SOURCE_TOPIC, topic)],
        kept,
    );
    let outcome = publish_event(pipeline, outgoing).await?;
    metrics::counter!("nomadwave_dead_letters_total", "kind" => kind.as_str(), "reason" => reason)
        .increment(1);
    Some(match outcome {
        Outcome::Duplicate | Outcome::Published | Outcome::DeadLettered => Outcome::DeadLettered,
    })
}
