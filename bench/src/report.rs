//! The results table (printed, and added to `BENCHMARKS.md`).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;

use crate::ceiling::Piped;
use crate::mqtt::{Delivered, Queued};
use crate::procs::CpuUsage;
use crate::sink::{Drained, Latency};
use crate::stream::{AckMode, Consumed};
use crate::warehouse::Inserted;

/// The sink must reach this share of the slower raw limit (raw consume without acks, raw
/// insert).
pub const SINK_TARGET: f64 = 0.85;
/// The bridge must reach this share of raw JetStream publishing at its own in-flight window
/// (6c); mosquitto's delivery to a plain subscriber (6a) is shown for context.
pub const BRIDGE_TARGET: f64 = 0.85;
/// "Flat" memory: the peak at the larger volume is at most this multiple of the smaller's.
pub const RSS_FLAT_FACTOR: f64 = 1.25;
/// The sink's default flush interval, in milliseconds.
pub const FLUSH_INTERVAL_MS: f64 = 1000.0;
/// The "small margin" above the flush interval allowed for p99 latency.
pub const LATENCY_MARGIN_MS: f64 = 250.0;

/// Everything one run measured; a phase that was skipped (or failed) is `None`.
#[derive(Default)]
pub struct Results {
    /// Filling the stream for the throughput phases: events, seconds.
    pub fill: Option<(u64, f64)>,
    /// Raw JetStream consume, per ack mode.
    pub raw_consume: Vec<(AckMode, Consumed, CpuUsage)>,
    /// Raw ClickHouse insert.
    pub raw_insert: Option<(Inserted, CpuUsage)>,
    /// Raw consume feeding raw insert, both at once.
    pub raw_pipeline: Option<(Piped, CpuUsage)>,
    /// The sink's decode + row build of the same events on one thread: events, seconds.
    pub decode: Option<(u64, f64)>,
    /// The sink draining the throughput phases' events.
    pub sink: Option<Drained>,
    /// The sink draining the larger stream (second memory point).
    pub sink_large: Option<Drained>,
    /// Raw JetStream consume (`AckPolicy::None`) of the whole larger stream, just before the
    /// sink drains it: what nats-server delivers from a stream of that size.
    pub raw_consume_large: Option<(Consumed, CpuUsage)>,
    /// How the sink under measurement was configured: "defaults", or the `--sink-env` settings.
    pub sink_settings: String,
    /// Publish → visible latency.
    pub latency: Option<Latency>,
    /// `edge-sim mqtt` queueing the bridge phase's messages.
    pub mqtt_queue: Option<Queued>,
    /// Mosquitto → plain subscriber.
    pub plain: Option<Delivered>,
    /// Raw JetStream publish of bridge-like events at the bridge's in-flight: events, seconds, CPU.
    pub raw_publish: Option<(u64, f64, CpuUsage, usize)>,
    /// Mosquitto → subscriber republishing ready events → JetStream, at the bridge's window.
    pub republish: Option<Delivered>,
    /// Mosquitto → bridge → JetStream.
    pub bridge: Option<Delivered>,
    /// Phases that failed, with the error.
    pub failures: Vec<(String, String)>,
}

/// `1234567` → `1,234,567`.
pub fn thousands(value: f64) -> String {
    let rounded = value.round();
    if !rounded.is_finite() {
        return "n/a".to_owned();
    }
    let digits = format!("{:.0}", rounded.abs());
    let mut grouped = String::new();
    for (position, digit) in digits.chars().enumerate() {
        if position > 0 && (digits.len() - position).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    if rounded < 0.0 {
        format!("-{grouped}")
    } else {
        grouped
    }
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**MISSED**"
    }
}

/// A raw consume's rate cell: events and megabytes per second.
fn consume_rate(consumed: &Consumed) -> String {
    format!(
        "{} ev/s ({:.0} MB/s)",
        thousands(consumed.rate()),
        consumed.bytes as f64 / consumed.seconds.max(1e-9) / 1e6
    )
}

impl Results {
    fn raw_consume_rate(&self) -> Option<f64> {
        self.raw_consume
            .iter()
            .find(|(mode, _, _)| *mode == AckMode::None)
            .map(|(_, consumed, _)| consumed.rate())
    }

    fn raw_insert_rate(&self) -> Option<f64> {
        self.raw_insert
            .as_ref()
            .map(|(inserted, _)| inserted.rows as f64 / inserted.seconds.max(1e-9))
    }

    /// The slower raw limit and its name.
    fn raw_limit(&self) -> Option<(f64, &'static str)> {
        match (self.raw_consume_rate(), self.raw_insert_rate()) {
            (Some(consume), Some(insert)) if consume <= insert => Some((consume, "(1)")),
            (Some(_), Some(insert)) => Some((insert, "(2)")),
            _ => None,
        }
    }

    fn sink_settings_label(&self) -> &str {
        if self.sink_settings.is_empty() {
            "defaults"
        } else {
            &self.sink_settings
        }
    }

    /// The results table, in Markdown.
    pub fn table(&self) -> String {
        let mut rows: Vec<[String; 8]> = Vec::new();
        let mut row = |cells: [&str; 8]| rows.push(cells.map(str::to_owned));
        if let Some((events, seconds)) = self.fill {
            row([
                "0",
                "fill WAVE: JetStream publish with Nats-Msg-Id, 4096 acks in flight (context)",
                &thousands(events as f64),
                &format!("{seconds:.1}"),
                &format!("{} ev/s", thousands(events as f64 / seconds.max(1e-9))),
                "",
                "",
                "",
            ]);
        }
        for (index, (mode, consumed, _)) in self.raw_consume.iter().enumerate() {
            let number = ["1", "1b", "1c", "1d"].get(index).copied().unwrap_or("1+");
            let what = if *mode == AckMode::None {
                format!("raw JetStream consume: pull consumer, {}", mode.label())
            } else {
                format!("raw JetStream consume, {} (context)", mode.label())
            };
            row([
                number,
                &what,
                &thousands(consumed.messages as f64),
                &format!("{:.2}", consumed.seconds),
                &consume_rate(consumed),
                "",
                "",
                "",
            ]);
        }
        if let Some((inserted, _)) = &self.raw_insert {
            row([
                "2",
                &format!(
                    "raw ClickHouse insert: RowBinary, no validation, {} rows/INSERT, one at a time",
                    thousands((inserted.rows as f64 / inserted.inserts.max(1) as f64).ceil())
                ),
                &thousands(inserted.rows as f64),
                &format!("{:.2}", inserted.seconds),
                &format!("{} rows/s", thousands(inserted.rows as f64 / inserted.seconds.max(1e-9))),
                "",
                "",
                "",
            ]);
        }
        let limit = self.raw_limit();
        if let Some((piped, _)) = &self.raw_pipeline {
            let rate = piped.rows as f64 / piped.seconds.max(1e-9);
            let ratio = limit
                .map(|(limit, which)| format!("{:.2} of min(1, 2) = {which}", rate / limit))
                .unwrap_or_default();
            row([
                "2c",
                &format!(
                    "(1) feeding (2) at once: AckPolicy::None pull, one INSERT of ready rows per {} messages, nothing else (what any reader reaches on this machine; context)",
                    thousands((piped.rows as f64 / piped.inserts.max(1) as f64).ceil())
                ),
                &thousands(piped.rows as f64),
                &format!("{:.2}", piped.seconds),
                &format!("{} rows/s", thousands(rate)),
                &ratio,
                "",
                "",
            ]);
        }
        if let Some((events, seconds)) = self.decode {
            row([
                "2b",
                "decode + row build alone (Event::decode, to_row), one thread: the sink's own CPU work per event (context)",
                &thousands(events as f64),
                &format!("{seconds:.2}"),
                &format!("{} ev/s", thousands(events as f64 / seconds.max(1e-9))),
                "",
                "",
                "",
            ]);
        }
        if let Some((consumed, _)) = &self.raw_consume_large {
            let ratio = self
                .raw_consume_rate()
                .map(|small| format!("{:.2} × (1)", consumed.rate() / small))
                .unwrap_or_default();
            row([
                "1e",
                "raw JetStream consume of the larger stream, AckPolicy::None, just before (3b) (context)",
                &thousands(consumed.messages as f64),
                &format!("{:.2}", consumed.seconds),
                &consume_rate(consumed),
                &ratio,
                "",
                "",
            ]);
        }
        let ceiling = self
            .raw_pipeline
            .as_ref()
            .map(|(piped, _)| piped.rows as f64 / piped.seconds.max(1e-9));
        let large_consume = self
            .raw_consume_large
            .as_ref()
            .map(|(consumed, _)| consumed.rate());
        let what = format!(
            "sink-clickhouse run (release, {}) end to end: start → last row visible",
            self.sink_settings_label()
        );
        for (number, drained) in [("3", &self.sink), ("3b", &self.sink_large)] {
            let Some(drained) = drained else { continue };
            let (ratio, target, met) = match limit {
                Some((limit, which)) => {
                    let ratio = drained.rate() / limit;
                    let of_ceiling = ceiling
                        .map(|ceiling| format!("; {:.2} of (2c)", drained.rate() / ceiling))
                        .unwrap_or_default();
                    let of_large = match (number, large_consume) {
                        ("3b", Some(large)) => format!("; {:.2} of (1e)", drained.rate() / large),
                        _ => String::new(),
                    };
                    (
                        format!("{ratio:.2} of min(1, 2) = {which}{of_ceiling}{of_large}"),
                        format!("≥ {SINK_TARGET:.2}"),
                        verdict(ratio >= SINK_TARGET).to_owned(),
                    )
                }
                None => (String::new(), String::new(), String::new()),
            };
            row([
                number,
                &what,
                &thousands(drained.rows as f64),
                &format!("{:.2}", drained.seconds),
                &format!("{} rows/s", thousands(drained.rate())),
                &ratio,
                &target,
                &met,
            ]);
        }
        if let Some(drained) = &self.sink {
            row([
                "4",
                "sink peak RSS (VmHWM) after the smaller drain",
                &thousands(drained.rows as f64),
                "",
                &mib(drained.high_water_kib),
                "",
                "",
                "",
            ]);
        }
        if let Some(large) = &self.sink_large {
            let (ratio, met) = match &self.sink {
                Some(small) => {
                    let ratio = large.high_water_kib as f64 / small.high_water_kib.max(1) as f64;
                    (
                        format!("{ratio:.2} × (4)"),
                        verdict(ratio <= RSS_FLAT_FACTOR).to_owned(),
                    )
                }
                None => (String::new(), String::new()),
            };
            row([
                "4b",
                "sink peak RSS (VmHWM) after the larger drain",
                &thousands(large.rows as f64),
                "",
                &mib(large.high_water_kib),
                &ratio,
                &format!("≤ {RSS_FLAT_FACTOR:.2} × (4)"),
                &met,
            ]);
        }
        if let Some(latency) = &self.latency {
            let p99 = latency.quantile_ms(0.99);
            let bound = FLUSH_INTERVAL_MS + LATENCY_MARGIN_MS;
            row([
                "5",
                &format!(
                    "publish → visible in ClickHouse at {:.0} ev/s (sink flush interval 1 s, poll every 50 ms){}",
                    latency.rate,
                    if latency.unseen > 0 {
                        format!("; {} never seen", latency.unseen)
                    } else {
                        String::new()
                    }
                ),
                &thousands(latency.events as f64),
                &format!("{:.1}", latency.seconds),
                &format!(
                    "p50 {:.0} ms · p99 {:.0} ms · max {:.0} ms",
                    latency.quantile_ms(0.5),
                    p99,
                    latency.quantile_ms(1.0)
                ),
                "",
                &format!("p99 ≤ {bound:.0} ms"),
                verdict(p99 <= bound && latency.unseen == 0),
            ]);
        }
        if let Some(queued) = &self.mqtt_queue {
            row([
                "6·",
                "queue: edge-sim mqtt --rate 0 (QoS 1, 256 in flight) into two persistent sessions (context)",
                &thousands(queued.messages as f64),
                &format!("{:.2}", queued.seconds),
                &format!("{} msg/s", thousands(queued.messages as f64 / queued.seconds.max(1e-9))),
                "",
                "",
                "",
            ]);
        }
        if let Some(plain) = &self.plain {
            row([
                "6a",
                "mosquitto → plain rumqttc QoS 1 subscriber (acks at once): connect → last message",
                &thousands(plain.messages as f64),
                &format!("{:.2}", plain.seconds),
                &format!("{} msg/s", thousands(plain.rate())),
                "",
                "",
                "",
            ]);
        }
        if let Some((events, seconds, _, window)) = &self.raw_publish {
            let label = format!(
                "raw JetStream publish of the bridge's kind of events, {window} acks in flight (the bridge's --in-flight in this run)"
            );
            row([
                "6c",
                &label,
                &thousands(*events as f64),
                &format!("{seconds:.2}"),
                &format!("{} ev/s", thousands(*events as f64 / seconds.max(1e-9))),
                "",
                "",
                "",
            ]);
        }
        let raw_publish_rate = self
            .raw_publish
            .as_ref()
            .map(|(events, seconds, _, _)| *events as f64 / seconds.max(1e-9));
        if let Some(republished) = &self.republish {
            let ratio = raw_publish_rate
                .map(|raw| format!("{:.2} of (6c)", republished.rate() / raw))
                .unwrap_or_default();
            row([
                "6d",
                "(6a) and (6c) at once: a subscriber publishing a ready event to JetStream per MQTT message, same window, nothing else (what any bridge reaches on this machine; context)",
                &thousands(republished.messages as f64),
                &format!("{:.2}", republished.seconds),
                &format!("{} msg/s", thousands(republished.rate())),
                &ratio,
                "",
                "",
            ]);
        }
        if let Some(bridge) = &self.bridge {
            let of_plain = self
                .plain
                .as_ref()
                .map(|plain| format!("; {:.2} of (6a)", bridge.rate() / plain.rate()))
                .unwrap_or_default();
            let of_plain = match &self.republish {
                Some(republished) => {
                    format!(
                        "{of_plain}; {:.2} of (6d)",
                        bridge.rate() / republished.rate()
                    )
                }
                None => of_plain,
            };
            let (ratio, met) = match &self.raw_publish {
                Some((events, seconds, _, _)) => {
                    let ratio = bridge.rate() / (*events as f64 / seconds.max(1e-9));
                    (
                        format!("{ratio:.2} of (6c){of_plain}"),
                        verdict(ratio >= BRIDGE_TARGET).to_owned(),
                    )
                }
                None => (of_plain, String::new()),
            };
            row([
                "6b",
                "ingest-wave bridge (release): start → last event stored in JetStream",
                &thousands(bridge.messages as f64),
                &format!("{:.2}", bridge.seconds),
                &format!("{} msg/s", thousands(bridge.rate())),
                &ratio,
                &format!("≥ {BRIDGE_TARGET:.2}"),
                &met,
            ]);
        }
        let mut table = String::from(
            "| # | measurement | events | seconds | value | ratio | target | |\n|---|---|---:|---:|---:|---|---|---|\n",
        );
        for cells in rows {
            let _ = writeln!(table, "| {} |", cells.join(" | "));
        }
        table
    }

    /// CPU use per phase, in Markdown.
    pub fn cpu_table(&self) -> String {
        let mut phases: Vec<(String, &CpuUsage)> = Vec::new();
        for (mode, _, cpu) in &self.raw_consume {
            phases.push((format!("raw consume, {}", mode.label()), cpu));
        }
        if let Some((_, cpu)) = &self.raw_insert {
            phases.push(("raw insert".to_owned(), cpu));
        }
        if let Some((_, cpu)) = &self.raw_pipeline {
            phases.push(("raw consume feeding raw insert (2c)".to_owned(), cpu));
        }
        if let Some(drained) = &self.sink {
            phases.push(("sink, smaller drain".to_owned(), &drained.cpu));
        }
        if let Some((_, cpu)) = &self.raw_consume_large {
            phases.push((
                "raw consume of the larger stream, AckPolicy::None (1e)".to_owned(),
                cpu,
            ));
        }
        if let Some(drained) = &self.sink_large {
            phases.push(("sink, larger drain".to_owned(), &drained.cpu));
        }
        if let Some(latency) = &self.latency {
            phases.push(("latency".to_owned(), &latency.cpu));
        }
        if let Some(plain) = &self.plain {
            phases.push(("mosquitto → plain subscriber".to_owned(), &plain.cpu));
        }
        if let Some((_, _, cpu, window)) = &self.raw_publish {
            phases.push((format!("raw JetStream publish, {window} in flight"), cpu));
        }
        if let Some(republished) = &self.republish {
            phases.push((
                "mosquitto → republishing subscriber → JetStream (6d)".to_owned(),
                &republished.cpu,
            ));
        }
        if let Some(bridge) = &self.bridge {
            phases.push(("mosquitto → bridge → JetStream".to_owned(), &bridge.cpu));
        }
        let mut table = String::from(
            "| phase | CPU, percent of one core (user + system, all threads) |\n|---|---|\n",
        );
        for (phase, cpu) in phases {
            let _ = writeln!(table, "| {phase} | {} |", cpu.summary());
        }
        table
    }

    /// Further detail: timings without startup, memory over the drains, failures.
    pub fn details(&self) -> String {
        let mut text = String::new();
        for (label, drained) in [("smaller", &self.sink), ("larger", &self.sink_large)] {
            let Some(drained) = drained else { continue };
            let deciles: Vec<String> = drained
                .rss_deciles_mib
                .iter()
                .map(|mib| format!("{mib:.0}"))
                .collect();
            let _ = writeln!(
                text,
                "- sink, {label} drain: {} rows/s from the first visible row ({:.2} s); VmRSS peak per tenth of the drain (MiB): {}",
                thousands(drained.rows as f64 / drained.seconds_after_first_row.max(1e-9)),
                drained.seconds_after_first_row,
                deciles.join(", ")
            );
        }
        if let Some(latency) = &self.latency {
            let _ = writeln!(
                text,
                "- latency quantiles (ms): p10 {:.0}, p50 {:.0}, p90 {:.0}, p99 {:.0}, p99.9 {:.0}, max {:.0}",
                latency.quantile_ms(0.1),
                latency.quantile_ms(0.5),
                latency.quantile_ms(0.9),
                latency.quantile_ms(0.99),
                latency.quantile_ms(0.999),
                latency.quantile_ms(1.0)
            );
        }
        for (label, delivered) in [("plain subscriber", &self.plain), ("bridge", &self.bridge)] {
            let Some(delivered) = delivered else { continue };
            let _ = writeln!(
                text,
                "- {label}: {} msg/s from the first message ({:.2} s){}",
                thousands(delivered.messages as f64 / delivered.seconds_after_first.max(1e-9)),
                delivered.seconds_after_first,
                delivered
                    .high_water_kib
                    .map(|kib| format!("; VmHWM {}", mib(kib)))
                    .unwrap_or_default()
            );
        }
        for (phase, error) in &self.failures {
            let _ = writeln!(text, "- **phase {phase} failed**: {error}");
        }
        text
    }
}

/// Marker after which runs are added, newest first.
pub const RESULTS_BEGIN: &str =
    "<!-- bench:results:begin (runs are added below by `bench`, newest first) -->";
/// Marker closing the generated runs.
pub const RESULTS_END: &str = "<!-- bench:results:end -->";

/// Adds `block` as the newest run in the report at `path`, keeping everything else.
///
/// # Errors
///
/// When the file cannot be read or written.
pub fn add_run(path: &Path, block: &str) -> anyhow::Result<()> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::from(
            "# Benchmarks\n\nRuns of `cargo run --release -p bench`, newest first.\n\n",
        ),
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    };
    let updated = match existing.find(RESULTS_BEGIN) {
        Some(at) => {
            let insert_at = at + RESULTS_BEGIN.len();
            format!(
                "{}\n\n{}{}",
                &existing[..insert_at],
                block.trim_end(),
                &existing[insert_at..]
            )
        }
        None => format!(
            "{}\n{RESULTS_BEGIN}\n\n{}\n\n{RESULTS_END}\n",
            existing.trim_end(),
            block.trim_end()
        ),
    };
    std::fs::write(path, updated).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(-12_345.0), "-12,345");
        assert_eq!(thousands(f64::NAN), "n/a");
    }

    #[test]
    fn runs_are_added_newest_first_and_the_rest_is_kept() {
        let folder = std::env::temp_dir().join(format!("bench-report-{}", std::process::id()));
        std::fs::create_dir_all(&folder).unwrap();
        let path = folder.join("BENCHMARKS.md");
        std::fs::write(&path, "# Benchmarks\n\nMethod text.\n").unwrap();
        add_run(&path, "### Run A\n").unwrap();
        add_run(&path, "### Run B\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&folder).unwrap();
        let method = text.find("Method text.").unwrap();
        let begin = text.find(RESULTS_BEGIN).unwrap();
        let (a, b) = (text.find("Run A").unwrap(), text.find("Run B").unwrap());
        let end = text.find(RESULTS_END).unwrap();
        assert!(method < begin && begin < b && b < a && a < end, "{text}");
    }
}
