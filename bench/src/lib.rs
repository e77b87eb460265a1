//! `bench`: measures `sink-clickhouse` and `ingest-wave bridge` against the machine's own
//! limits, in one run, on the same machine and the same events.
//!
//! Phases (each on servers from `test-support`, on free loopback ports, or on the servers
//! `NATS_URL`, `CLICKHOUSE_URL` and `MQTT_URL` name: see [`servers`]):
//! 1. raw JetStream consume of a pre-filled `WAVE` stream by a pull consumer;
//! 2. raw ClickHouse insert of the same events as the sink's own rows;
//!    2c. both at once: the raw consume feeding the raw insert, nothing in between (the
//!    ceiling of any reader on this machine, see [`ceiling`]);
//! 3. the sink (release binary, defaults) draining the same stream;
//! 4. the sink's peak RSS after that drain and after a larger one;
//! 5. publish → visible latency at a steady rate while the sink runs;
//! 6. the bridge against mosquitto's delivery rate to a plain QoS 1 subscriber, raw JetStream
//!    publishing at the bridge's window, and both at once (a subscriber republishing ready
//!    events: the ceiling of any bridge on this machine).
//!
//! Layout: [`stream`] (JetStream fill and raw consume), [`warehouse`] (ClickHouse raw insert
//! and polling), [`ceiling`] (both at once), [`sink`] (sink drain and latency), [`mqtt`] (broker and bridge), [`procs`]
//! (child processes, `/proc` memory and CPU), [`servers`] (local or external servers),
//! [`machine`], [`report`].
//! Not part of the test command: run it with `cargo run --release -p bench`.

pub mod ceiling;
pub mod machine;
pub mod mqtt;
pub mod procs;
pub mod report;
pub mod servers;
pub mod sink;
pub mod stream;
pub mod warehouse;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use runtime::provision::{ensure_event_streams, StreamPolicy};
use runtime::LogArgs;
use test_support::{ClickHouseServer, MosquittoServer, NatsServer};

use crate::procs::{Program, Watched};
use crate::report::Results;
use crate::servers::{Addresses, Broker, ExternalNats, Server, DATABASE};
use crate::stream::AckMode;

/// Command line of `bench`.
#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "Benchmarks sink-clickhouse and the MQTT bridge against raw JetStream, ClickHouse and mosquitto rates measured in the same run"
)]
pub struct Cli {
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
    /// Events for the raw consume, raw insert and sink phases, and the first memory point
    /// [default: 1000000; --quick 100000].
    #[arg(long)]
    pub events: Option<u64>,
    /// Events in the stream for the second memory point (0 skips it) [default: 5000000;
    /// --quick 300000].
    #[arg(long)]
    pub rss_events: Option<u64>,
    /// Messages for the bridge phase [default: 200000; --quick 20000].
    #[arg(long)]
    pub bridge_messages: Option<u64>,
    /// Events per second in the latency phase.
    #[arg(long, default_value_t = 500.0)]
    pub latency_rate: f64,
    /// Length of the latency phase [default: 20s; --quick 5s].
    #[arg(long, value_parser = runtime::parse_duration)]
    pub latency_duration: Option<Duration>,
    /// Messages per pull request of the raw consumers.
    #[arg(long, default_value_t = 5_000)]
    pub pull_batch: usize,
    /// Rows per INSERT of the raw insert (the sink's default --batch-rows).
    #[arg(long, default_value_t = sink_clickhouse::config::DEFAULT_BATCH_ROWS)]
    pub insert_batch: usize,
    /// A short run (the defaults above marked --quick); writes no report unless --report is given.
    #[arg(long)]
    pub quick: bool,
    /// Phases to leave out, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub skip: Vec<Phase>,
    /// File the run's results are added to [default: BENCHMARKS.md in the workspace root,
    /// except with --quick].
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write no report file.
    #[arg(long, conflicts_with = "report")]
    pub no_report: bool,
    /// Use the release binaries as they are instead of building them first.
    #[arg(long)]
    pub no_build: bool,
    /// Diagnosis only: extra environment of `sink-clickhouse run`, KEY=VALUE (repeatable),
    /// e.g. SINK_MAX_ACK_PENDING=300000. The command line in the report shows it.
    #[arg(long, value_parser = key_value)]
    pub sink_env: Vec<(String, String)>,
    /// Diagnosis only: extra environment of `ingest-wave bridge`, KEY=VALUE (repeatable).
    #[arg(long, value_parser = key_value)]
    pub bridge_env: Vec<(String, String)>,
    /// Diagnosis only: run the sink under this command, e.g.
    /// "valgrind --tool=callgrind --callgrind-out-file=/tmp/sink.callgrind"; it must run the
    /// sink in its own process (valgrind does, strace does not), or the sink is not stopped.
    #[arg(long)]
    pub sink_wrapper: Option<String>,
    /// Diagnosis only: run the bridge under this command.
    #[arg(long)]
    pub bridge_wrapper: Option<String>,
    /// Diagnosis only: another sink-clickhouse binary (an experimental build) instead of
    /// target/release/sink-clickhouse.
    #[arg(long)]
    pub sink_binary: Option<PathBuf>,
    /// Diagnosis only: another ingest-wave binary instead of target/release/ingest-wave.
    #[arg(long)]
    pub bridge_binary: Option<PathBuf>,
    /// Diagnosis only: give the raw consumers this filter subject (the sink's consumers had
    /// `nomadwave.wave.>` before the fix described in BENCHMARKS.md).
    #[arg(long)]
    pub raw_filter: Option<String>,
    /// Diagnosis only: mosquitto's max_inflight_messages (deploy/mosquitto/mosquitto.conf has
    /// 256, as the measured configuration); the local broker only (an external broker of
    /// MQTT_URL keeps its own).
    #[arg(long, default_value_t = 256)]
    pub mosquitto_inflight: u32,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("'{text}' is not KEY=VALUE"))?;
    Ok((key.to_owned(), value.to_owned()))
}

/// Phases that can be skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    /// Raw consume and raw insert.
    Raw,
    /// The sink drains (throughput and memory).
    Sink,
    /// The second, larger drain.
    Rss,
    /// Publish → visible latency.
    Latency,
    /// Bridge against mosquitto.
    Bridge,
}

/// The sizes a run uses.
#[derive(Debug, Clone)]
struct Plan {
    events: u64,
    rss_events: u64,
    bridge_messages: u64,
    latency_rate: f64,
    latency_duration: Duration,
    pull_batch: usize,
    insert_batch: usize,
    skip: Vec<Phase>,
    sink_env: Vec<(String, String)>,
    bridge_env: Vec<(String, String)>,
    sink_wrapper: Vec<String>,
    bridge_wrapper: Vec<String>,
    mosquitto_inflight: u32,
    raw_filter: Option<String>,
}

impl Plan {
    fn from_cli(cli: &Cli) -> anyhow::Result<Plan> {
        let pick = |given: Option<u64>, quick: u64, full: u64| {
            given.unwrap_or(if cli.quick { quick } else { full })
        };
        let plan = Plan {
            events: pick(cli.events, 100_000, 1_000_000),
            rss_events: pick(cli.rss_events, 300_000, 5_000_000),
            bridge_messages: pick(cli.bridge_messages, 20_000, 200_000),
            latency_rate: cli.latency_rate,
            latency_duration: cli.latency_duration.unwrap_or(if cli.quick {
                Duration::from_secs(5)
            } else {
                Duration::from_secs(20)
            }),
            pull_batch: cli.pull_batch,
            insert_batch: cli.insert_batch,
            skip: cli.skip.clone(),
            sink_env: cli.sink_env.clone(),
            bridge_env: cli.bridge_env.clone(),
            sink_wrapper: split_command(cli.sink_wrapper.as_deref()),
            bridge_wrapper: split_command(cli.bridge_wrapper.as_deref()),
            mosquitto_inflight: cli.mosquitto_inflight,
            raw_filter: cli.raw_filter.clone(),
        };
        if plan.events == 0 || plan.bridge_messages == 0 || plan.pull_batch == 0 {
            bail!(runtime::ConfigError::new(
                "--events/--bridge-messages/--pull-batch",
                "must be above 0"
            ));
        }
        if !(plan.latency_rate > 0.0 && plan.latency_rate.is_finite()) {
            bail!(runtime::ConfigError::new(
                "--latency-rate",
                "must be a positive number"
            ));
        }
        Ok(plan)
    }

    fn runs(&self, phase: Phase) -> bool {
        !self.skip.contains(&phase)
    }

    fn latency_events(&self) -> u64 {
        if self.runs(Phase::Latency) && self.runs(Phase::Sink) {
            (self.latency_rate * self.latency_duration.as_secs_f64()).round() as u64
        } else {
            0
        }
    }
}

fn split_command(command: Option<&str>) -> Vec<String> {
    command
        .map(|command| command.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The release binaries a run drives.
struct Binaries {
    sink: PathBuf,
    bridge: PathBuf,
    edge_sim: PathBuf,
}

/// Runs the benchmark, prints the table and adds it to the report file.
///
/// # Errors
///
/// Bad flags, missing binaries or servers, or a phase that could not run.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let plan = Plan::from_cli(&cli)?;
    let addresses = Addresses::from_env()?;
    if !cli.no_build {
        procs::build_release_binaries().await?;
    }
    let binaries = Binaries {
        sink: match &cli.sink_binary {
            Some(path) => path.clone(),
            None => procs::release_bin("sink-clickhouse")?,
        },
        bridge: match &cli.bridge_binary {
            Some(path) => path.clone(),
            None => procs::release_bin("ingest-wave")?,
        },
        edge_sim: procs::release_bin("edge-sim")?,
    };
    let began = Instant::now();
    let started_at = chrono::Utc::now();
    let mut machine = machine::Machine::read();
    let logs = test_support::workspace_root()
        .join(".data")
        .join("bench")
        .join(started_at.format("%Y%m%dT%H%M%SZ").to_string());
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    tracing::info!(?plan, servers = %addresses.summary(), load = %machine.load_before, logs = %logs.display(), "benchmark starting");
    let external_nats = addresses.nats.clone().map(ExternalNats::new);
    let sides = Sides {
        plan: &plan,
        binaries: &binaries,
        logs: &logs,
        addresses: &addresses,
        external_nats: external_nats.as_ref(),
    };

    let mut results = Results {
        sink_settings: plan
            .sink_env
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<Vec<_>>()
            .join(" "),
        ..Results::default()
    };
    let work = async {
        if plan.runs(Phase::Raw) || plan.runs(Phase::Sink) {
            let outcome = sink_side(&sides, &mut results, &mut machine).await;
            release_external(&sides).await;
            outcome?;
        }
        if plan.runs(Phase::Bridge) {
            let outcome = bridge_side(&sides, &mut results, &mut machine).await;
            release_external(&sides).await;
            if let Err(error) = outcome {
                tracing::error!(error = %format!("{error:#}"), "bridge phase failed");
                results
                    .failures
                    .push(("bridge".to_owned(), format!("{error:#}")));
            }
        }
        anyhow::Ok(())
    };
    let outcome = tokio::select! {
        result = work => result,
        () = interrupted() => Err(anyhow::anyhow!("interrupted; servers and children stopped")),
    };
    // Again after a failure or an interruption, which skip the sides' own clean-up.
    release_external(&sides).await;
    outcome?;
    machine.load_after = machine::load_average();
    machine.versions.push((
        "rustc".to_owned(),
        machine::program_version("rustc", &["--version"]).await,
    ));

    let table = results.table();
    let cpu = results.cpu_table();
    let details = results.details();
    println!("\n{table}\n{cpu}\n{details}");
    println!("{}", machine.describe());

    let report = match (&cli.report, cli.no_report, cli.quick) {
        (_, true, _) => None,
        (Some(path), _, _) => Some(path.clone()),
        (None, false, true) => None,
        (None, false, false) => Some(test_support::workspace_root().join("BENCHMARKS.md")),
    };
    if let Some(path) = report {
        let block = format!(
            "### Run of {} ({})\n\n- command: `{}`\n- wall time of the whole run: {:.1} min; child logs in `{}`\n{}\n{table}\nCPU per phase:\n\n{cpu}\n{details}",
            started_at.format("%Y-%m-%d %H:%M UTC"),
            run_kind(cli.quick, &plan.skip),
            command_line(),
            began.elapsed().as_secs_f64() / 60.0,
            logs.strip_prefix(test_support::workspace_root())
                .unwrap_or(&logs)
                .display(),
            machine.describe(),
        );
        report::add_run(&path, &block)?;
        tracing::info!(report = %path.display(), "results added");
    }
    if !results.failures.is_empty() {
        bail!(
            "{} phase(s) failed: {}",
            results.failures.len(),
            results
                .failures
                .iter()
                .map(|(phase, _)| phase.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// `full`, `quick`, or which phases a partial run left out.
fn run_kind(quick: bool, skip: &[Phase]) -> String {
    let size = if quick { "quick" } else { "full" };
    if skip.is_empty() {
        return size.to_owned();
    }
    let skipped: Vec<String> = skip
        .iter()
        .filter_map(|phase| phase.to_possible_value())
        .map(|value| value.get_name().to_owned())
        .collect();
    format!("{size} sizes, partial: skipped {}", skipped.join(", "))
}

/// The command as typed, as near as can be told.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let prefix = if std::env::var_os("CARGO").is_some() {
        "cargo run --release -p bench --".to_owned()
    } else {
        "target/release/bench".to_owned()
    };
    if args.is_empty() {
        prefix.trim_end_matches(" --").to_owned()
    } else {
        format!("{prefix} {}", args.join(" "))
    }
}

/// SIGINT or SIGTERM: the run stops and every server and child is killed on the way out.
async fn interrupted() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// Starts a server from `test-support` on a blocking thread (its constructors wait and panic).
async fn start_server<S: Send + 'static>(
    name: &'static str,
    start: impl FnOnce() -> S + Send + 'static,
) -> anyhow::Result<S> {
    tokio::task::spawn_blocking(start).await.map_err(|error| {
        let reason = error
            .try_into_panic()
            .ok()
            .and_then(|payload| {
                payload.downcast_ref::<String>().cloned().or_else(|| {
                    payload
                        .downcast_ref::<&str>()
                        .map(|text| (*text).to_owned())
                })
            })
            .unwrap_or_else(|| "unknown failure".to_owned());
        anyhow::anyhow!("cannot start {name}: {reason}")
    })
}

/// What both sides of a run share.
struct Sides<'a> {
    plan: &'a Plan,
    binaries: &'a Binaries,
    logs: &'a std::path::Path,
    addresses: &'a Addresses,
    external_nats: Option<&'a ExternalNats>,
}

/// Deletes what the run made on external servers: the streams on the NATS of `NATS_URL`
/// (only once claimed) and the database on the ClickHouse of `CLICKHOUSE_URL`.
async fn release_external(sides: &Sides<'_>) {
    if let Some(nats) = sides.external_nats {
        nats.release().await;
    }
    if let Some(url) = &sides.addresses.clickhouse {
        if let Err(error) = warehouse::drop_database(url, DATABASE).await {
            tracing::warn!(url = %url, database = DATABASE, error = %format!("{error:#}"), "cannot drop the benchmark's database; drop it by hand");
        }
    }
}

/// NATS for one side of the run: the one of `NATS_URL`, else a new local one named `name`.
async fn nats_server(
    name: &'static str,
    addresses: &Addresses,
) -> anyhow::Result<Server<NatsServer>> {
    if let Some(url) = &addresses.nats {
        return Ok(Server::external("nats-server", url.clone()));
    }
    let server = start_server("nats-server", move || NatsServer::start(name)).await?;
    let (url, data_dir) = (server.url(), server.data_dir().to_path_buf());
    Ok(Server::local("nats-server", url, server, data_dir))
}

/// Connects to `nats`, claims it when external (refusing one that has NomadWave's streams)
/// and declares the streams; records its version.
async fn connect_nats(
    nats: &Server<NatsServer>,
    external: Option<&ExternalNats>,
    machine: &mut machine::Machine,
) -> anyhow::Result<(async_nats::Client, async_nats::jetstream::Context)> {
    let client = servers::connect_nats(nats.url()).await?;
    let version = client.server_info().version;
    machine.add_server(nats.describe(&format!("nats-server {version}")));
    let jetstream = stream::context(client.clone());
    if nats.is_external() {
        tracing::info!(url = %nats.url(), version = %version, "using the external NATS server of NATS_URL");
        if let Some(external) = external {
            external.claim(&jetstream).await?;
        }
    }
    ensure_event_streams(&jetstream, &StreamPolicy::default())
        .await
        .context("declaring the streams")?;
    Ok((client, jetstream))
}

/// Raw consume, raw insert, the sink's drains and the latency phase, on one NATS and one
/// ClickHouse.
async fn sink_side(
    sides: &Sides<'_>,
    results: &mut Results,
    machine: &mut machine::Machine,
) -> anyhow::Result<()> {
    let (plan, binaries, logs) = (sides.plan, sides.binaries, sides.logs);
    let nats = nats_server("bench-nats", sides.addresses).await?;
    let clickhouse: Server<ClickHouseServer> = match &sides.addresses.clickhouse {
        Some(url) => Server::external("clickhouse", url.clone()),
        None => {
            let server = start_server("clickhouse-server", || {
                ClickHouseServer::start("bench-clickhouse")
            })
            .await?;
            let (url, data_dir) = (server.http_url(), server.data_dir().to_path_buf());
            Server::local("clickhouse", url, server, data_dir)
        }
    };
    let ch_url = clickhouse.url().to_owned();
    let ch_version = warehouse::version(&ch_url).await;
    machine.add_server(clickhouse.describe(&format!("ClickHouse {ch_version}")));
    if clickhouse.is_external() {
        tracing::info!(url = %ch_url, version = %ch_version, database = DATABASE, "using the external ClickHouse server of CLICKHOUSE_URL");
    }
    // On an external server only our database's merges count; locally every merge does.
    let merges_of = clickhouse.is_external().then_some(DATABASE);
    let nats_watch = nats.watched();
    let ch_watch = clickhouse.watched();
    let bench_watch = Watched::new("bench", vec![std::process::id()]);
    tracing::info!(nats = %nats.url(), clickhouse = %ch_url, nats_pids = ?nats_watch.pids, clickhouse_pids = ?ch_watch.pids, "servers ready");

    let (client, jetstream) = connect_nats(&nats, sides.external_nats, machine).await?;

    tracing::info!(events = plan.events, "filling WAVE");
    let filled = stream::fill(&jetstream, 0, plan.events, plan.runs(Phase::Raw)).await?;
    tracing::info!(
        events = filled.events,
        seconds = filled.seconds,
        rate = (filled.events as f64 / filled.seconds) as u64,
        "WAVE filled"
    );
    results.fill = Some((filled.events, filled.seconds));

    if plan.runs(Phase::Raw) {
        for (index, mode) in [
            AckMode::None,
            AckMode::AllPerBatch,
            AckMode::EachMessage,
            AckMode::EachMessageInBursts,
        ]
        .into_iter()
        .enumerate()
        {
            let (consumed, cpu) = measured_raw_consume(
                &jetstream,
                plan,
                &format!("bench-raw-{index}"),
                plan.events,
                mode,
                &[nats_watch.clone(), bench_watch.clone()],
            )
            .await?;
            results.raw_consume.push((mode, consumed, cpu));
        }

        let database = DATABASE;
        warehouse::drop_database(&ch_url, database).await?;
        warehouse::migrate(&ch_url, database).await?;
        // The sink's own per-event CPU work, alone on one thread: JSON decode and row build.
        let decoding = Instant::now();
        let rows = warehouse::rows(&filled.kept)?;
        let decode_seconds = decoding.elapsed().as_secs_f64();
        tracing::info!(
            seconds = decode_seconds,
            rate = (rows.len() as f64 / decode_seconds) as u64,
            "decode + to_row"
        );
        results.decode = Some((rows.len() as u64, decode_seconds));
        drop(filled);
        warehouse::wait_for_merges(&ch_url, merges_of, Duration::from_secs(60)).await;
        let meter = procs::CpuMeter::start(&[ch_watch.clone(), bench_watch.clone()]);
        let inserted = warehouse::raw_insert(&ch_url, database, &rows, plan.insert_batch).await?;
        let cpu = meter.finish();
        tracing::info!(
            seconds = inserted.seconds,
            rate = (inserted.rows as f64 / inserted.seconds) as u64,
            cpu = %cpu.summary(),
            "raw insert"
        );
        results.raw_insert = Some((inserted, cpu));

        warehouse::drop_database(&ch_url, database).await?;
        warehouse::migrate(&ch_url, database).await?;
        warehouse::wait_for_merges(&ch_url, merges_of, Duration::from_secs(60)).await;
        let meter =
            procs::CpuMeter::start(&[nats_watch.clone(), ch_watch.clone(), bench_watch.clone()]);
        let piped = ceiling::raw_pipeline(
            &jetstream,
            &ch_url,
            database,
            std::sync::Arc::new(rows),
            plan.pull_batch,
            plan.insert_batch,
        )
        .await?;
        let cpu = meter.finish();
        tracing::info!(
            seconds = piped.seconds,
            rate = (piped.rows as f64 / piped.seconds) as u64,
            cpu = %cpu.summary(),
            "raw consume feeding raw insert"
        );
        results.raw_pipeline = Some((piped, cpu));
        warehouse::drop_database(&ch_url, database).await?;
    } else {
        drop(filled);
    }

    if !plan.runs(Phase::Sink) {
        return Ok(());
    }
    let database = DATABASE;
    warehouse::drop_database(&ch_url, database).await?;
    warehouse::wait_for_merges(&ch_url, merges_of, Duration::from_secs(60)).await;
    let started = Instant::now();
    let mut sink = sink::start(&sink::SinkTarget {
        binary: &binaries.sink,
        nats_url: nats.url().to_owned(),
        clickhouse_url: ch_url.clone(),
        database,
        consumer: "sink-clickhouse",
        log: &logs.join("sink.log"),
        wrapper: &plan.sink_wrapper,
        extra_env: &plan.sink_env,
    })?;
    let sink_watch = Watched::new("sink", vec![sink.pid()]);
    let watched = [
        nats_watch.clone(),
        ch_watch.clone(),
        sink_watch.clone(),
        bench_watch.clone(),
    ];
    let table = warehouse::client(&ch_url, database);
    let drained = sink::drain(&mut sink, started, &table, plan.events, &watched).await?;
    tracing::info!(
        seconds = drained.seconds,
        rate = drained.rate() as u64,
        vm_hwm_mib = drained.high_water_kib / 1024,
        cpu = %drained.cpu.summary(),
        "sink drained"
    );
    results.sink = Some(drained);

    let latency_events = plan.latency_events();
    if latency_events > 0 {
        tracing::info!(
            rate = plan.latency_rate,
            events = latency_events,
            "latency phase"
        );
        let latency = sink::latency(
            &jetstream,
            &table,
            plan.events,
            latency_events,
            plan.latency_rate,
            Duration::from_millis(50),
            &watched,
        )
        .await?;
        tracing::info!(
            p50_ms = latency.quantile_ms(0.5),
            p99_ms = latency.quantile_ms(0.99),
            max_ms = latency.quantile_ms(1.0),
            unseen = latency.unseen,
            "latency measured"
        );
        results.latency = Some(latency);
    }
    stop(&mut sink).await;
    drop(sink);
    drop(table);

    let in_stream = stream::stream_messages(&jetstream).await?;
    if plan.runs(Phase::Rss) && plan.rss_events > in_stream {
        warehouse::drop_database(&ch_url, database).await?;
        let more = plan.rss_events - in_stream;
        tracing::info!(
            more,
            total = plan.rss_events,
            "filling WAVE for the larger drain"
        );
        stream::fill(&jetstream, plan.events + latency_events, more, false).await?;
        let total = stream::stream_messages(&jetstream).await?;
        if plan.runs(Phase::Raw) {
            results.raw_consume_large = Some(
                measured_raw_consume(
                    &jetstream,
                    plan,
                    "bench-raw-large",
                    total,
                    AckMode::None,
                    &[nats_watch.clone(), bench_watch.clone()],
                )
                .await?,
            );
        }
        warehouse::wait_for_merges(&ch_url, merges_of, Duration::from_secs(60)).await;
        let started = Instant::now();
        let mut sink = sink::start(&sink::SinkTarget {
            binary: &binaries.sink,
            nats_url: nats.url().to_owned(),
            clickhouse_url: ch_url.clone(),
            database,
            consumer: "bench-large",
            log: &logs.join("sink-large.log"),
            wrapper: &plan.sink_wrapper,
            extra_env: &plan.sink_env,
        })?;
        let watched = [
            nats_watch.clone(),
            ch_watch.clone(),
            Watched::new("sink", vec![sink.pid()]),
            bench_watch.clone(),
        ];
        let table = warehouse::client(&ch_url, database);
        let drained = sink::drain(&mut sink, started, &table, total, &watched).await?;
        tracing::info!(
            rows = drained.rows,
            seconds = drained.seconds,
            rate = drained.rate() as u64,
            vm_hwm_mib = drained.high_water_kib / 1024,
            cpu = %drained.cpu.summary(),
            "sink drained the larger stream"
        );
        results.sink_large = Some(drained);
        stop(&mut sink).await;
    } else if plan.runs(Phase::Rss) {
        tracing::warn!(
            rss_events = plan.rss_events,
            in_stream,
            "--rss-events is not above the events already in the stream; no second memory point"
        );
    }
    warehouse::drop_database(&ch_url, DATABASE).await?;
    client.flush().await.context("flushing NATS")?;
    // Clients first, so they do not try to reconnect to stopped servers.
    drop(jetstream);
    drop(client);
    drop(clickhouse);
    drop(nats);
    Ok(())
}

async fn stop(program: &mut Program) {
    // Generous: a sink under valgrind takes a while to drain.
    match program.terminate(Duration::from_secs(120)).await {
        Ok(Some(status)) if status.success() => {}
        Ok(Some(status)) => tracing::warn!(%status, "child exited uncleanly"),
        Ok(None) => tracing::warn!("child was killed"),
        Err(error) => tracing::warn!(error = %format!("{error:#}"), "cannot stop child"),
    }
}

/// The bridge's default `--in-flight`.
const BRIDGE_IN_FLIGHT: usize = 256;

/// The bridge's in-flight window in this run: `--bridge-env BRIDGE_IN_FLIGHT=N`, else its
/// default; the raw publish (6c) uses the same, so the ratio compares equal windows.
fn bridge_in_flight(bridge_env: &[(String, String)]) -> usize {
    bridge_env
        .iter()
        .rev()
        .find(|(key, _)| key == "BRIDGE_IN_FLIGHT")
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(BRIDGE_IN_FLIGHT)
}

/// Mosquitto's delivery rate to a plain subscriber against the bridge's, same messages.
async fn bridge_side(
    sides: &Sides<'_>,
    results: &mut Results,
    machine: &mut machine::Machine,
) -> anyhow::Result<()> {
    let (plan, binaries, logs) = (sides.plan, sides.binaries, sides.logs);
    let nats = nats_server("bench-bridge-nats", sides.addresses).await?;
    let (mosquitto, broker): (Server<MosquittoServer>, Broker) = match &sides.addresses.mqtt {
        Some(broker) => {
            tracing::info!(url = %broker.url(), "using the external MQTT broker of MQTT_URL; its own max_inflight_messages applies, not --mosquitto-inflight");
            machine.add_server(format!(
                "mosquitto: external ({}, version not read; the broker's own max_inflight_messages applies, not --mosquitto-inflight {})",
                broker.url(),
                plan.mosquitto_inflight
            ));
            (Server::external("mosquitto", broker.url()), broker.clone())
        }
        None => {
            let extra_config = format!("max_inflight_messages {}", plan.mosquitto_inflight);
            let server = start_server("mosquitto", move || {
                MosquittoServer::start_with_config("bench-mosquitto", &extra_config)
            })
            .await?;
            let broker = Broker::loopback(server.port());
            let data_dir = server.data_dir().to_path_buf();
            let version = machine::program_version("mosquitto", &["-h"]).await;
            machine.add_server(format!(
                "mosquitto: local ({version}, max_inflight_messages {})",
                plan.mosquitto_inflight
            ));
            (
                Server::local("mosquitto", broker.url(), server, data_dir),
                broker,
            )
        }
    };
    let nats_watch = nats.watched();
    let mosquitto_watch = mosquitto.watched();
    let bench_watch = Watched::new("bench", vec![std::process::id()]);
    let (client, jetstream) = connect_nats(&nats, sides.external_nats, machine).await?;

    mqtt::create_session(&broker, mqtt::PLAIN_CLIENT, &[mqtt::WAVE_TOPICS]).await?;
    mqtt::create_session(&broker, mqtt::PIPE_CLIENT, &[mqtt::WAVE_TOPICS]).await?;
    mqtt::create_session(&broker, mqtt::BRIDGE_CLIENT, &mqtt::BRIDGE_TOPICS).await?;
    tracing::info!(
        messages = plan.bridge_messages,
        "queueing MQTT messages in both sessions"
    );
    let queued = mqtt::queue(&binaries.edge_sim, &broker, plan.bridge_messages).await?;
    results.mqtt_queue = Some(queued);
    let limit = Duration::from_secs(120 + plan.bridge_messages / 500);

    let plain = mqtt::plain_subscriber(
        &broker,
        plan.bridge_messages,
        &[mosquitto_watch.clone(), bench_watch.clone()],
        limit,
    )
    .await?;
    tracing::info!(
        seconds = plain.seconds,
        rate = plain.rate() as u64,
        cpu = %plain.cpu.summary(),
        "mosquitto → plain subscriber"
    );
    results.plain = Some(plain);

    // The JetStream half of the bridge's work alone: the same kind of events, as many acks
    // outstanding as the bridge allows (its default --in-flight).
    let events = stream::bridge_events(plan.bridge_messages, 2020)?;
    let window = bridge_in_flight(&plan.bridge_env);
    let meter = procs::CpuMeter::start(&[nats_watch.clone(), bench_watch.clone()]);
    let published = stream::raw_publish(&jetstream, events, window).await?;
    let cpu = meter.finish();
    tracing::info!(
        seconds = published.seconds,
        rate = (published.events as f64 / published.seconds) as u64,
        cpu = %cpu.summary(),
        "raw JetStream publish at the bridge's in-flight"
    );
    results.raw_publish = Some((published.events, published.seconds, cpu, window));

    // Both halves at once with nothing in between: the most any bridge reaches here.
    let republish = mqtt::Republish {
        jetstream: &jetstream,
        events: stream::bridge_events(plan.bridge_messages, 2021)?,
        window,
    };
    let republished = mqtt::republishing_subscriber(
        &broker,
        republish,
        &[
            mosquitto_watch.clone(),
            nats_watch.clone(),
            bench_watch.clone(),
        ],
        limit,
    )
    .await?;
    tracing::info!(
        seconds = republished.seconds,
        rate = republished.rate() as u64,
        cpu = %republished.cpu.summary(),
        "mosquitto → republishing subscriber → JetStream"
    );
    results.republish = Some(republished);

    let base = stream::stream_messages(&jetstream).await?;
    let http_port = test_support::free_port();
    let mut env = vec![
        ("NATS_URL", nats.url().to_owned()),
        ("MQTT_URL", broker.url()),
        ("MQTT_CLIENT_ID", mqtt::BRIDGE_CLIENT.to_owned()),
        ("HTTP_LISTEN", format!("127.0.0.1:{http_port}")),
        ("RUST_LOG", "info".to_owned()),
    ];
    env.extend(
        plan.bridge_env
            .iter()
            .map(|(key, value)| (key.as_str(), value.clone())),
    );
    let started = Instant::now();
    let mut bridge = Program::spawn_wrapped(
        "ingest-wave bridge",
        &plan.bridge_wrapper,
        &binaries.bridge,
        &["bridge"],
        &env,
        logs.join("bridge.log"),
    )?;
    let watched = [
        mosquitto_watch,
        nats_watch,
        Watched::new("bridge", vec![bridge.pid()]),
        bench_watch,
    ];
    let delivered = mqtt::bridge(
        &mut bridge,
        started,
        &jetstream,
        base,
        plan.bridge_messages,
        &watched,
        limit,
    )
    .await?;
    tracing::info!(
        seconds = delivered.seconds,
        rate = delivered.rate() as u64,
        cpu = %delivered.cpu.summary(),
        "mosquitto → bridge → JetStream"
    );
    results.bridge = Some(delivered);
    stop(&mut bridge).await;
    if mosquitto.is_external() {
        // Leave no persistent sessions queueing messages on someone else's broker.
        for client_id in [mqtt::PLAIN_CLIENT, mqtt::PIPE_CLIENT, mqtt::BRIDGE_CLIENT] {
            if let Err(error) = mqtt::clear_session(&broker, client_id).await {
                tracing::warn!(client_id, error = %format!("{error:#}"), "cannot clear the benchmark's MQTT session");
            }
        }
    }
    drop(jetstream);
    drop(client);
    drop(mosquitto);
    drop(nats);
    Ok(())
}

/// One raw consume of the first `count` messages of `WAVE` (consumer `name`, acking as `mode`
/// says), with the CPU `watched` took meanwhile.
async fn measured_raw_consume(
    jetstream: &async_nats::jetstream::Context,
    plan: &Plan,
    name: &str,
    count: u64,
    mode: AckMode,
    watched: &[procs::Watched],
) -> anyhow::Result<(stream::Consumed, procs::CpuUsage)> {
    let meter = procs::CpuMeter::start(watched);
    let consumed = stream::raw_consume(
        jetstream,
        name,
        count,
        plan.pull_batch,
        mode,
        plan.raw_filter.clone(),
    )
    .await?;
    let cpu = meter.finish();
    tracing::info!(
        consumer = name,
        mode = mode.label(),
        events = consumed.messages,
        seconds = consumed.seconds,
        rate = consumed.rate() as u64,
        cpu = %cpu.summary(),
        "raw consume"
    );
    Ok((consumed, cpu))
}
