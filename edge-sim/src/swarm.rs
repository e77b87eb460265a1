//! The `mqtt` mode: a swarm of simulated Pi buoys publishing wave readings to the broker, the
//! way the real ones do (topic `nomadwave/buoy/<site>/wave`, QoS 1, the payload of
//! [`feeds::pi_buoy`]).
//!
//! Buoy `b` of `N` is site `pi-<b>`; message `k` goes to buoy `k mod N` as its reading number
//! `k div N`, observed at the run's start second plus that many seconds. Each buoy's times
//! therefore strictly increase (one per second, ClickHouse's resolution), so every message is a
//! distinct observation, and the values are smooth functions of site and time.

use std::f64::consts::TAU;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS, Request};
use runtime::mqtt::{MqttArgs, MqttSettings};
use runtime::ConfigError;
use tokio_util::sync::CancellationToken;

/// Flags of `mqtt`.
#[derive(Debug, clap::Args)]
pub struct SwarmArgs {
    /// Number of buoys.
    #[arg(long, default_value_t = 10)]
    pub buoys: u32,
    /// Send exactly this many messages, wait for the broker's acks, and exit; forever if absent.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Messages per second, all buoys together; 0 sends as fast as the broker acks.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Unacknowledged QoS 1 messages allowed at once.
    #[arg(long, default_value_t = 100)]
    pub in_flight: u16,
    /// First observation time (RFC 3339); default: the current second.
    #[arg(long)]
    pub start: Option<DateTime<Utc>>,
    /// Broker connection.
    #[command(flatten)]
    pub mqtt: MqttArgs,
}

/// What a run sent.
#[derive(Debug, Clone, PartialEq)]
pub struct SwarmReport {
    /// Distinct messages handed to the client.
    pub sent: u64,
    /// Distinct messages the broker acknowledged: a message is re-sent only while its
    /// acknowledgement is outstanding, so each one is counted once.
    pub acked: u64,
    /// Publishes written again after a lost connection (messages that were in flight, or
    /// queued in the client, when the broker went away).
    pub resent: u64,
    /// `--messages`, when the run was bounded.
    pub messages: Option<u64>,
    /// Buoys.
    pub buoys: u32,
    /// First observation time.
    pub first_observed_at: DateTime<Utc>,
    /// Wall time from first publish to last ack.
    pub elapsed: Duration,
}

impl std::fmt::Display for SwarmReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent={} acked={} buoys={} first_observed_at={} seconds={:.3} resent={} outcome={}",
            self.sent,
            self.acked,
            self.buoys,
            self.first_observed_at.to_rfc3339(),
            self.elapsed.as_secs_f64(),
            self.resent,
            if self.is_complete() {
                "complete"
            } else {
                "interrupted"
            }
        )
    }
}

impl SwarmReport {
    /// Whether the run was bounded by `--messages` and the broker acknowledged all of them.
    pub fn is_complete(&self) -> bool {
        self.messages.is_some_and(|total| self.acked == total)
    }
}

/// The topic of buoy `buoy`.
pub fn topic(buoy: u32) -> String {
    format!("nomadwave/buoy/{}/wave", site(buoy))
}

/// The site id of buoy `buoy`.
pub fn site(buoy: u32) -> String {
    format!("pi-{buoy:03}")
}

/// The payload of reading `reading` of buoy `buoy` in a run starting at `start`.
pub fn payload(buoy: u32, reading: u64, start: DateTime<Utc>) -> Vec<u8> {
    let observed_at = start + chrono::Duration::seconds(reading as i64);
    let phase = f64::from(buoy) * 0.7;
    let t = observed_at.timestamp() as f64;
    let swell = (t / 600.0 * TAU + phase).sin();
    let height = 1.5 + 0.8 * swell + 0.2 * (t / 37.0 + phase).sin();
    let json = serde_json::json!({
        "site": site(buoy),
        "observed_at": observed_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "wave_height_m": round3(height),
        "wave_height_max_m": round3(height * 1.7),
        "peak_period_s": round3(11.0 + 2.0 * (t / 1800.0 + phase).cos()),
        "mean_period_s": round3(7.0 + 1.0 * (t / 1800.0 + phase).cos()),
        "wave_direction_deg": round3((170.0 + 25.0 * (t / 3600.0 + phase).sin()).rem_euclid(360.0)),
        "sea_temp_c": round3(18.0 + 0.5 * (t / 86_400.0 * TAU).sin()),
        "lat": round3(-33.80 - f64::from(buoy % 50) * 0.01),
        "lon": round3(151.30 + f64::from(buoy / 50) * 0.01),
    });
    json.to_string().into_bytes()
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// Runs the swarm until `--messages` are acknowledged or `shutdown`.
///
/// # Errors
///
/// Bad flags, or the broker unreachable for the whole run.
pub async fn run_swarm(
    args: &SwarmArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<SwarmReport> {
    if args.buoys == 0 {
        return Err(ConfigError::new("--buoys", "must be at least 1").into());
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        return Err(ConfigError::new("--rate", "must be 0 or a positive number").into());
    }
    let settings = MqttSettings::from_args(&args.mqtt)?;
    let mut options = settings.options(&format!("edge-sim-{}", std::process::id()));
    options.set_clean_session(true);
    options.set_inflight(args.in_flight.max(1));
    // One request may wait in the client's channel, no more. On a lost connection rumqttc
    // re-queues the in-flight publishes with their packet ids and appends what waits in the
    // channel, then writes them all without waiting for acks; an appended publish gets the next
    // packet id, which a re-sent one may still hold (a collision: rumqttc holds it back until
    // that PUBACK). It holds back only one: a second collision replaces the first, which is
    // then never sent, so the run could never finish. With one request in the channel there
    // is at most one collision; a larger channel would need rumqttc's flow control, which the
    // re-queued publishes bypass.
    let (client, eventloop) = AsyncClient::new(options, REQUEST_CHANNEL_CAPACITY);
    let counters = Arc::new(PublishCounters::default());
    let acked = &counters.acked;
    let stop_events = CancellationToken::new();
    let mut events = tokio::spawn(drive_connection(
        eventloop,
        Arc::clone(&counters),
        stop_events.clone(),
        settings.clone(),
    ));

    let start = args.start.unwrap_or_else(|| {
        DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap_or_else(Utc::now)
    });
    let began = Instant::now();
    let mut sent: u64 = 0;
    let mut last_progress = Instant::now();
    while args.messages.is_none_or(|total| sent < total) && !shutdown.is_cancelled() {
        if args.rate > 0.0 {
            let due = began + Duration::from_secs_f64(sent as f64 / args.rate);
            tokio::select! {
                () = tokio::time::sleep_until(due.into()) => {}
                () = shutdown.cancelled() => break,
            }
        }
        let buoy = (sent % u64::from(args.buoys)) as u32;
        let reading = sent / u64::from(args.buoys);
        let published = tokio::select! {
            published = client.publish(topic(buoy), QoS::AtLeastOnce, false, payload(buoy, reading, start)) => published,
            () = shutdown.cancelled() => break,
        };
        if let Err(error) = published {
            // The connection task gave up (the broker refused us): its reason is the error.
            stop_events.cancel();
            return Err(match events.await {
                Ok(Some(refusal)) => anyhow::anyhow!(refusal),
                _ => anyhow::Error::new(error).context("the MQTT client stopped"),
            });
        }
        sent += 1;
        if last_progress.elapsed() >= PROGRESS_INTERVAL {
            last_progress = Instant::now();
            log_progress(sent, &counters, args.messages);
        }
    }
    // Wait for the broker's acks of everything sent (bounded, and shorter once interrupted).
    let wait_limit = Duration::from_secs(600);
    let interrupted_wait = Duration::from_secs(5);
    let mut deadline = Instant::now() + wait_limit;
    while acked.load(Ordering::SeqCst) < sent && Instant::now() < deadline && !events.is_finished()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if shutdown.is_cancelled() {
            deadline = deadline.min(Instant::now() + interrupted_wait);
        }
        if last_progress.elapsed() >= PROGRESS_INTERVAL {
            last_progress = Instant::now();
            log_progress(sent, &counters, args.messages);
        }
    }
    let elapsed = began.elapsed();
    // The connection task returns once our DISCONNECT is written; it is stopped instead when
    // that does not happen soon (no connection at the moment, or publishes still in flight).
    let mut ended = None;
    let grace = Duration::from_secs(1);
    if let Ok(Ok(())) = tokio::time::timeout(grace, client.disconnect()).await {
        if let Ok(outcome) = tokio::time::timeout(grace, &mut events).await {
            ended = Some(outcome);
        }
    }
    let outcome = match ended {
        Some(outcome) => outcome,
        None => {
            stop_events.cancel();
            events.await
        }
    };
    if let Ok(Some(refusal)) = outcome {
        anyhow::bail!(refusal);
    }
    let written = counters.written.load(Ordering::SeqCst);
    let report = SwarmReport {
        sent,
        acked: acked.load(Ordering::SeqCst),
        resent: written.saturating_sub(sent),
        messages: args.messages,
        buoys: args.buoys,
        first_observed_at: start,
        elapsed,
    };
    if report.acked < report.sent && !shutdown.is_cancelled() {
        anyhow::bail!(
            "the broker acknowledged only {} of {} messages within {wait_limit:?}",
            report.acked,
            report.sent
        );
    }
    Ok(report)
}

/// Requests that may wait in the MQTT client's channel (see `run_swarm`).
const REQUEST_CHANNEL_CAPACITY: usize = 1;

/// How often a run logs what it sent and what was acknowledged.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// What the connection task saw, shared with the publishing loop.
#[derive(Debug, Default)]
struct PublishCounters {
    /// PUBACKs of publishes this client had in flight.
    acked: AtomicU64,
    /// Publishes written to a connection, first sends and re-sends alike.
    written: AtomicU64,
}

fn log_progress(sent: u64, counters: &PublishCounters, messages: Option<u64>) {
    let written = counters.written.load(Ordering::Relaxed);
    tracing::info!(
        sent,
        acked = counters.acked.load(Ordering::Relaxed),
        resent = written.saturating_sub(sent),
        target = messages,
        "swarm progress"
    );
}

/// Polls the client's event loop (it does the network I/O), counting written publishes and
/// PUBACKs, and reconnecting after errors; returns once our own DISCONNECT is written.
/// Stops when the broker refuses the connection (credentials, certificates) and returns the
/// one-line reason: a simulator run cannot succeed then.
///
/// On a lost connection the event loop keeps every unacknowledged publish and writes it again
/// after reconnecting (the session is clean, so the new session would never acknowledge the
/// old packets otherwise); those re-sends are what makes `acked` reach `sent`.
async fn drive_connection(
    mut eventloop: rumqttc::EventLoop,
    counters: Arc<PublishCounters>,
    stop: CancellationToken,
    settings: MqttSettings,
) -> Option<String> {
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return None,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                counters.acked.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                counters.written.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return None,
            Ok(_) => {}
            Err(error) => {
                // rumqttc re-queues in-flight publishes on a lost connection but not one held
                // back by a packet-id collision (a broker acking out of order): re-queue it too,
                // or it is never sent and the run never finishes.
                if let Some(publish) = eventloop.state.collision.take() {
                    eventloop.pending.push_back(Request::Publish(publish));
                }
                let failure = settings.describe_failure(&error);
                if failure.refused {
                    return Some(failure.message);
                }
                tracing::warn!(
                    error = %failure.message,
                    pending = eventloop.pending.len(),
                    "broker connection lost; reconnecting and re-sending what was not acknowledged"
                );
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_payload_is_a_valid_distinct_reading() {
        let start = DateTime::from_timestamp(1_764_000_000, 0).expect("time");
        let mut seen = std::collections::HashSet::new();
        for k in 0..200_u64 {
            let (buoy, reading) = ((k % 7) as u32, k / 7);
            let observation =
                feeds::pi_buoy::parse(&topic(buoy), &payload(buoy, reading, start)).expect("valid");
            assert!(
                seen.insert((observation.site.clone(), observation.observed_at)),
                "distinct"
            );
        }
        assert_eq!(payload(3, 5, start), payload(3, 5, start), "deterministic");
    }
}
