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
use rumqttc::{AsyncClient, Event, Packet, QoS};
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
    /// Messages handed to the client.
    pub sent: u64,
    /// Messages the broker acknowledged.
    pub acked: u64,
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
            "sent={} acked={} buoys={} first_observed_at={} seconds={:.3}",
            self.sent,
            self.acked,
            self.buoys,
            self.first_observed_at.to_rfc3339(),
            self.elapsed.as_secs_f64()
        )
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
    let (client, eventloop) = AsyncClient::new(options, usize::from(args.in_flight.max(1)));
    let acked = Arc::new(AtomicU64::new(0));
    let stop_events = CancellationToken::new();
    let events = tokio::spawn(drive_connection(
        eventloop,
        Arc::clone(&acked),
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
        if args.messages.is_none() && last_progress.elapsed() >= Duration::from_secs(10) {
            last_progress = Instant::now();
            tracing::info!(
                sent,
                acked = acked.load(Ordering::Relaxed),
                "swarm progress"
            );
        }
    }
    // Wait for the broker's acks of everything sent (bounded when interrupted).
    let wait_limit = if shutdown.is_cancelled() {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(600)
    };
    let deadline = Instant::now() + wait_limit;
    while acked.load(Ordering::SeqCst) < sent && Instant::now() < deadline && !events.is_finished()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = began.elapsed();
    let _ = client.try_disconnect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop_events.cancel();
    if let Ok(Some(refusal)) = events.await {
        anyhow::bail!(refusal);
    }
    let report = SwarmReport {
        sent,
        acked: acked.load(Ordering::SeqCst),
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

/// Polls the client's event loop (it does the network I/O), counting PUBACKs and reconnecting
/// after errors. Stops when the broker refuses the connection (credentials, certificates) and
/// returns the one-line reason: a simulator run cannot succeed then.
async fn drive_connection(
    mut eventloop: rumqttc::EventLoop,
    acked: Arc<AtomicU64>,
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
                acked.fetch_add(1, Ordering::SeqCst);
            }
            Ok(_) => {}
            Err(error) => {
                let failure = settings.describe_failure(&error);
                if failure.refused {
                    return Some(failure.message);
                }
                tracing::warn!(error = %failure.message, "broker connection lost; reconnecting");
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
