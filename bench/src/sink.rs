//! The sink under measurement: `sink-clickhouse run` (release) draining a pre-filled stream,
//! its memory, and publish → visible latency at a steady rate.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream;
use clickhouse::Client;
use futures::stream::{FuturesUnordered, StreamExt as _};
use schema::{Event, WaveObservation};

use crate::procs::{CpuMeter, CpuUsage, Program, RssSampler, Watched};
use crate::stream::synthesizer;
use crate::warehouse;

/// Where the sink runs against.
pub struct SinkTarget<'a> {
    /// The release binary.
    pub binary: &'a Path,
    /// NATS URL.
    pub nats_url: String,
    /// ClickHouse HTTP URL.
    pub clickhouse_url: String,
    /// Target database (created by the sink's own migration).
    pub database: &'a str,
    /// Durable consumer name (a new one reads the stream from its start).
    pub consumer: &'a str,
    /// Its stderr.
    pub log: &'a Path,
    /// A command to run it under (diagnosis: `valgrind --tool=callgrind …`); empty for none.
    pub wrapper: &'a [String],
    /// Extra environment (diagnosis: other settings than the defaults).
    pub extra_env: &'a [(String, String)],
}

/// Starts `sink-clickhouse run` with its defaults, consuming `WAVE` only.
///
/// # Errors
///
/// When it cannot be started.
pub fn start(target: &SinkTarget<'_>) -> anyhow::Result<Program> {
    let http_port = test_support::free_port();
    let mut env = vec![
        ("NATS_URL", target.nats_url.clone()),
        ("CLICKHOUSE_URL", target.clickhouse_url.clone()),
        ("CLICKHOUSE_DATABASE", target.database.to_owned()),
        ("SINK_STREAMS", "WAVE".to_owned()),
        ("SINK_CONSUMER", target.consumer.to_owned()),
        ("HTTP_LISTEN", format!("127.0.0.1:{http_port}")),
        ("RUST_LOG", "info".to_owned()),
    ];
    env.extend(
        target
            .extra_env
            .iter()
            .map(|(key, value)| (key.as_str(), value.clone())),
    );
    Program::spawn_wrapped(
        "sink-clickhouse",
        target.wrapper,
        target.binary,
        &["run"],
        &env,
        target.log.to_path_buf(),
    )
}

/// One drain of the stream by the sink.
#[derive(Debug, Clone)]
pub struct Drained {
    /// Rows in ClickHouse at the end.
    pub rows: u64,
    /// From the process start to the last row visible (startup included).
    pub seconds: f64,
    /// From the first visible row to the last.
    pub seconds_after_first_row: f64,
    /// `VmHWM` of the sink when the last row was visible.
    pub high_water_kib: u64,
    /// Peak `VmRSS` in each tenth of the drain.
    pub rss_deciles_mib: Vec<f64>,
    /// CPU use during the drain.
    pub cpu: CpuUsage,
}

impl Drained {
    /// Rows per second, startup included.
    pub fn rate(&self) -> f64 {
        self.rows as f64 / self.seconds.max(1e-9)
    }
}

/// Waits until `rows` rows are in the sink's table, sampling its memory; the clock starts at
/// `started` (just before the process was spawned).
///
/// # Errors
///
/// When the sink exits or the rows do not arrive within a generous bound.
pub async fn drain(
    sink: &mut Program,
    started: Instant,
    clickhouse: &Client,
    rows: u64,
    watched: &[Watched],
) -> anyhow::Result<Drained> {
    let meter = CpuMeter::start(watched);
    let mut rss = RssSampler::new(sink.pid());
    // Even at 2,000 rows/s this finishes; anything slower is a failure worth reporting.
    let limit = Duration::from_secs(120 + rows / 2_000);
    let mut first_row: Option<Instant> = None;
    let mut last_progress = Instant::now();
    loop {
        sink.check_running()?;
        rss.sample();
        let count = warehouse::count(clickhouse).await;
        if count > 0 {
            first_row.get_or_insert_with(Instant::now);
        }
        if count >= rows {
            let done = Instant::now();
            rss.sample();
            return Ok(Drained {
                rows: count,
                seconds: (done - started).as_secs_f64(),
                seconds_after_first_row: first_row
                    .map_or(0.0, |first| (done - first).as_secs_f64()),
                high_water_kib: rss.high_water_kib(),
                rss_deciles_mib: rss.deciles_mib(),
                cpu: meter.finish(),
            });
        }
        if started.elapsed() > limit {
            bail!(
                "the sink wrote only {count} of {rows} rows within {limit:?}; last lines of its log:\n{}",
                sink.log_tail(20)
            );
        }
        if last_progress.elapsed() >= Duration::from_secs(10) {
            last_progress = Instant::now();
            let seconds = started.elapsed().as_secs_f64();
            tracing::info!(
                rows = count,
                of = rows,
                rate = (count as f64 / seconds) as u64,
                rss_mib = rss.max_rss_kib() / 1024,
                "sink draining"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publish → visible latency at a steady rate.
#[derive(Debug, Clone)]
pub struct Latency {
    /// Events published.
    pub events: u64,
    /// Events per second asked for.
    pub rate: f64,
    /// Publishing time.
    pub seconds: f64,
    /// Events never seen in ClickHouse within the wait.
    pub unseen: u64,
    /// Latencies in milliseconds, sorted.
    pub sorted_ms: Vec<f64>,
    /// CPU use while publishing.
    pub cpu: CpuUsage,
}

impl Latency {
    /// The `q` quantile (0..=1) in milliseconds, nearest rank.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.sorted_ms.is_empty() {
            return f64::NAN;
        }
        let rank = (q * self.sorted_ms.len() as f64).ceil() as usize;
        self.sorted_ms[rank.clamp(1, self.sorted_ms.len()) - 1]
    }
}

/// Publishes `count` new events (indices from `offset`) at `rate` per second while the sink
/// runs, and records when each becomes visible, polling ClickHouse every `poll`.
///
/// Each event's clock starts just before its publish; it stops at the first poll that returns
/// its stream sequence. The poll reads only the partitions of this phase's events.
///
/// # Errors
///
/// When a publish fails or ClickHouse cannot be polled.
pub async fn latency(
    jetstream: &jetstream::Context,
    clickhouse: &Client,
    offset: u64,
    count: u64,
    rate: f64,
    poll: Duration,
    watched: &[Watched],
) -> anyhow::Result<Latency> {
    let synthesizer = synthesizer();
    let first = synthesizer.event(offset, chrono::Utc::now());
    let since = Event::<WaveObservation>::decode(&first.payload)
        .context("decoding the first latency event")?
        .observation
        .observed_at
        .timestamp();
    let base_sequence = crate::stream::stream_messages(jetstream).await?;

    let meter = CpuMeter::start(watched);
    let publisher = {
        let jetstream = jetstream.clone();
        tokio::spawn(async move { publish_steadily(&jetstream, offset, count, rate).await })
    };
    let mut visible: HashMap<u64, Instant> = HashMap::new();
    let mut published: Option<(Vec<(u64, Instant)>, f64)> = None;
    let mut cpu = None;
    let mut wait_until: Option<Instant> = None;
    let mut publisher = Some(publisher);
    loop {
        let tick = Instant::now();
        let sequences = clickhouse
            .query("SELECT stream_seq FROM ? WHERE observed_at >= toDateTime(?) AND stream_seq > ?")
            .bind(clickhouse::sql::Identifier(warehouse::TABLE))
            .bind(since)
            .bind(base_sequence)
            .fetch_all::<u64>()
            .await
            .context("polling for visible rows")?;
        let seen_at = Instant::now();
        for sequence in sequences {
            visible.entry(sequence).or_insert(seen_at);
        }
        if let Some(handle) = publisher.take_if(|handle| handle.is_finished()) {
            published = Some(handle.await.context("latency publisher failed")??);
            cpu = Some(meter.finish());
            wait_until = Some(Instant::now() + Duration::from_secs(30));
        }
        if let Some((sent, _)) = &published {
            let all_seen = sent
                .iter()
                .all(|(sequence, _)| visible.contains_key(sequence));
            if all_seen || wait_until.is_some_and(|until| Instant::now() >= until) {
                break;
            }
        }
        tokio::time::sleep(poll.saturating_sub(tick.elapsed())).await;
    }
    let (sent, seconds) = published.context("latency publisher did not finish")?;
    let mut sorted_ms = Vec::with_capacity(sent.len());
    let mut unseen = 0_u64;
    for (sequence, sent_at) in &sent {
        match visible.get(sequence) {
            Some(seen_at) => sorted_ms.push((*seen_at - *sent_at).as_secs_f64() * 1000.0),
            None => unseen += 1,
        }
    }
    sorted_ms.sort_by(f64::total_cmp);
    Ok(Latency {
        events: sent.len() as u64,
        rate,
        seconds,
        unseen,
        sorted_ms,
        cpu: cpu.unwrap_or_default(),
    })
}

/// Publishes one event every `1/rate` s; returns (sequence, send instant) per event and the
/// publishing time.
async fn publish_steadily(
    jetstream: &jetstream::Context,
    offset: u64,
    count: u64,
    rate: f64,
) -> anyhow::Result<(Vec<(u64, Instant)>, f64)> {
    let synthesizer = synthesizer();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    let mut sent = Vec::with_capacity(count as usize);
    let mut index = offset;
    loop {
        tokio::select! {
            _ = ticker.tick(), if index < offset + count => {
                let event = synthesizer.event(index, chrono::Utc::now());
                index += 1;
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, event.event_id.as_str());
                let sent_at = Instant::now();
                let ack = jetstream
                    .publish_with_headers(event.subject, headers, event.payload)
                    .await
                    .context("publishing a latency event")?;
                pending.push(async move { (ack.await, sent_at) });
            }
            Some((ack, sent_at)) = pending.next(), if !pending.is_empty() => {
                let ack = ack.context("waiting for a latency event's ack")?;
                sent.push((ack.sequence, sent_at));
            }
            else => break,
        }
    }
    Ok((sent, started.elapsed().as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let latency = Latency {
            events: 100,
            rate: 1.0,
            seconds: 1.0,
            unseen: 0,
            sorted_ms: (1..=100).map(f64::from).collect(),
            cpu: CpuUsage::default(),
        };
        assert_eq!(latency.quantile_ms(0.5), 50.0);
        assert_eq!(latency.quantile_ms(0.99), 99.0);
        assert_eq!(latency.quantile_ms(1.0), 100.0);
        assert_eq!(latency.quantile_ms(0.0), 1.0);
    }
}
