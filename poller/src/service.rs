//! The two commands every poller has: `run` (poll and publish) and `parse` (print a saved
//! response as events).

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use chrono::{DateTime, Utc};
use feeds::{Parsed, PayloadError, RejectedRecord};
use runtime::provision::ensure_kv;
use runtime::publish::{publish_with_id, Outgoing, Published};
use runtime::retry::RetryError;
use runtime::{ConfigError, Health, NatsSettings, RetryPolicy};
use schema::{Event, Observation};
use thiserror::Error;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{PollSettings, ServiceArgs};
use crate::cursor::{CursorError, CursorStore, Decision, StoredCursor};
use crate::events::{self, PollReport};
use crate::feed::{Feed, Target};
use crate::fetch::{FetchError, Fetched, HttpFetcher, Validators};

/// Reads a saved upstream response from `path`, parses it with `parse` and prints one event
/// per line (JSON) on stdout; rejected records and duplicates are reported on stderr.
///
/// # Errors
///
/// When the file cannot be read or is not a readable document: the message says what and
/// where (line and column for JSON errors).
pub fn parse_file<O, P>(path: &Path, parse: P) -> anyhow::Result<()>
where
    O: Observation,
    P: FnOnce(&[u8]) -> Result<Parsed<O>, PayloadError>,
{
    let body = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let parsed = parse(&body).with_context(|| format!("cannot parse {}", path.display()))?;
    let ingested_at = Utc::now();
    let mut stdout = std::io::stdout().lock();
    for observation in parsed.observations.iter().cloned() {
        let event = Event::new(parsed.source, observation, ingested_at);
        stdout.write_all(&event.encode())?;
        stdout.write_all(b"\n")?;
    }
    stdout.flush()?;
    let mut stderr = std::io::stderr().lock();
    for rejected in &parsed.rejected {
        writeln!(stderr, "{}: rejected {rejected}", path.display())?;
    }
    writeln!(
        stderr,
        "{}: {} events, {} records rejected, {} duplicates dropped",
        path.display(),
        parsed.observations.len(),
        parsed.rejected.len(),
        parsed.duplicates
    )?;
    Ok(())
}

/// Runs `feed`'s poll loop until `shutdown` fires: provisions the streams and the cursor
/// bucket, serves `/metrics`, `/healthz`, `/readyz`, and polls every target on its interval.
///
/// # Errors
///
/// Bad configuration (a [`ConfigError`] in the chain) or a failure to start (NATS unreachable,
/// port busy); once running, failures are retried, logged and counted instead.
pub async fn run_service<F: Feed, const PORT: u16>(
    feed: F,
    args: &ServiceArgs<PORT>,
    service: &'static str,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let settings = PollSettings::from_args(&args.poll, feed.defaults(), service)?;
    let nats = NatsSettings::from_args(&args.nats)?;
    let targets = feed.targets();
    if targets.is_empty() {
        return Err(ConfigError::new(
            "targets",
            "nothing to poll: configure at least one site/station/zone",
        )
        .into());
    }
    let started = runtime::service::start_service(
        service,
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
    let bucket = ensure_kv(&jetstream, &settings.cursor_bucket, 1).await?;
    let cursors = CursorStore::new(bucket, &settings.cursor_bucket, feed.name());
    let fetcher =
        HttpFetcher::new(feed.name(), &settings).context("cannot build the HTTP client")?;

    tracing::info!(
        feed = feed.name(),
        targets = targets.len(),
        interval_s = settings.interval.as_secs_f64(),
        max_requests_per_minute = settings.max_requests_per_minute,
        "polling"
    );
    let context = Arc::new(PollContext {
        feed,
        settings,
        fetcher,
        cursors,
        jetstream,
        freshness: Freshness::new(&targets),
        shutdown: shutdown.clone(),
    });
    let mut tasks = JoinSet::new();
    for target in targets {
        tasks.spawn(poll_target(Arc::clone(&context), target));
    }
    tasks.spawn(watch_readiness(Arc::clone(&context), health));
    while let Some(joined) = tasks.join_next().await {
        if let Err(error) = joined {
            tracing::error!(%error, "a poll task ended abnormally");
        }
    }
    runtime::service::flush_before_exit(
        &client,
        "nothing: every event was acknowledged before the cursor moved",
    )
    .await;
    let _ = http.await;
    tracing::info!("stopped");
    Ok(())
}

/// Events published between two cursor saves within one response.
const CHECKPOINT_EVERY: usize = 200;

struct PollContext<F> {
    feed: F,
    settings: PollSettings,
    fetcher: HttpFetcher,
    cursors: CursorStore,
    jetstream: jetstream::Context,
    freshness: Freshness,
    shutdown: CancellationToken,
}

/// Why a poll ended without processing its response.
#[derive(Debug, Error)]
enum PollError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("the response is not usable")]
    Payload(#[from] PayloadError),
    #[error(transparent)]
    Cursor(#[from] CursorError),
    #[error("publishing to JetStream failed: {0}")]
    Publish(String),
    #[error("cancelled by shutdown")]
    Cancelled,
}

impl PollError {
    fn reason(&self) -> &'static str {
        match self {
            PollError::Fetch(error) => error.reason(),
            PollError::Payload(error) => error.reason(),
            PollError::Cursor(_) => "cursor",
            PollError::Publish(_) => "publish",
            PollError::Cancelled => "cancelled",
        }
    }
}

/// What one target remembers between polls.
#[derive(Default)]
struct TargetState {
    validators: Validators,
    cursors: HashMap<String, StoredCursor>,
}

async fn poll_target<F: Feed>(context: Arc<PollContext<F>>, target: Target) {
    let interval = context.settings.interval_for(&target.site, &target.name);
    // Spread the first polls of many targets over a few seconds; the rate limiter does the rest.
    let spread = Duration::from_millis(rand::random_range(
        0..=interval.min(Duration::from_secs(3)).as_millis() as u64,
    ));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + spread, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut state = TargetState::default();
    loop {
        tokio::select! {
            () = context.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let name = context.feed.name();
        match poll_once(&context, &target, &mut state).await {
            Ok(report) => {
                events::poll_succeeded(name, &target, &report);
                context.freshness.succeeded(&target.site);
            }
            Err(PollError::Cancelled) => return,
            Err(error) => {
                events::poll_failed(name, &target, error.reason(), &error);
                if let PollError::Fetch(FetchError::Refused { status, .. }) = &error {
                    context
                        .freshness
                        .refused(&target.site, format!("HTTP {status}"));
                }
            }
        }
    }
}

async fn poll_once<F: Feed>(
    context: &PollContext<F>,
    target: &Target,
    state: &mut TargetState,
) -> Result<PollReport, PollError> {
    let feed = context.feed.name();
    let fetched = context
        .fetcher
        .fetch(target, &state.validators, &context.shutdown)
        .await
        .map_err(|error| match error {
            FetchError::Cancelled => PollError::Cancelled,
            other => PollError::Fetch(other),
        })?;
    let (body, validators) = match fetched {
        Fetched::NotModified => {
            return Ok(PollReport {
                not_modified: true,
                ..PollReport::default()
            })
        }
        Fetched::Body { body, validators } => (body, validators),
    };
    let parsed = context.feed.parse(target, &body)?;
    let mut report = PollReport {
        duplicates_in_response: parsed.duplicates as u64,
        rejected: parsed.rejected.len() as u64,
        ..PollReport::default()
    };
    for rejected in &parsed.rejected {
        events::record_rejected(feed, target, rejected);
    }

    // Oldest first, grouped by the site each record is about (one cursor per site).
    let ingested_at = Utc::now();
    let mut by_site: BTreeMap<String, Vec<Event<F::Observation>>> = BTreeMap::new();
    for observation in parsed.observations {
        if let Some(rejected) =
            too_far_ahead(&observation, ingested_at, context.settings.max_clock_skew)
        {
            events::record_rejected(feed, target, &rejected);
            report.rejected += 1;
            continue;
        }
        let event = Event::new(parsed.source, observation, ingested_at);
        by_site
            .entry(event.observation.site().to_owned())
            .or_default()
            .push(event);
    }
    let window = context.settings.revision_window;
    for (site, mut site_events) in by_site {
        site_events.sort_by_key(|event| event.observation.observed_at());
        let stored = match state.cursors.get_mut(&site) {
            Some(stored) => stored,
            None => {
                let loaded = context.cursors.load(&site).await?;
                state.cursors.entry(site.clone()).or_insert(loaded)
            }
        };
        let mut unsaved = 0_usize;
        let mut outcome = Ok(());
        for event in site_events {
            let observed_at = event.observation.observed_at();
            let id = event.event_id.as_str();
            match stored.cursor.decide(observed_at, id, window) {
                Decision::Unchanged => report.unchanged += 1,
                Decision::Stale => report.stale += 1,
                decision @ (Decision::Publish | Decision::Republish) => match publish(
                    context,
                    &event,
                    stored.cursor.message_id(
                        observed_at,
                        id,
                        decision,
                        Utc::now().timestamp_millis(),
                    ),
                )
                .await
                {
                    Ok(published) => {
                        match published {
                            Published::Stored { .. } => report.published += 1,
                            Published::Duplicate => report.duplicates_in_stream += 1,
                        }
                        stored.cursor.record(observed_at, id, window);
                        unsaved += 1;
                        // A long response (a first poll, a backlog) checkpoints as it goes, so
                        // a crash republishes at most this many, well inside the duplicate window.
                        if unsaved >= CHECKPOINT_EVERY {
                            context.cursors.save(&site, stored, window).await?;
                            unsaved = 0;
                        }
                    }
                    Err(error) => {
                        outcome = Err(error);
                        break;
                    }
                },
            }
        }
        // Whatever was acknowledged is recorded, even when shutdown interrupted the rest.
        if unsaved > 0 {
            context.cursors.save(&site, stored, window).await?;
        }
        outcome?;
    }
    // Only now is the response fully processed: a later 304 may safely skip it.
    state.validators = validators;
    Ok(report)
}

/// Publishes `event` with `message_id` as `Nats-Msg-Id` (see [`crate::cursor::Cursor::message_id`]).
async fn publish<F: Feed>(
    context: &PollContext<F>,
    event: &Event<F::Observation>,
    message_id: String,
) -> Result<Published, PollError> {
    let outgoing = Outgoing {
        subject: event.subject(),
        message_id,
        headers: async_nats::HeaderMap::new(),
        payload: event.encode().into(),
    };
    publish_with_id(
        &context.jetstream,
        outgoing,
        RetryPolicy::PUBLISH,
        &context.shutdown,
    )
    .await
    .map_err(|error| match error {
        RetryError::Cancelled => PollError::Cancelled,
        RetryError::Failed(error) => PollError::Publish(error.to_string()),
    })
}

/// When each target last succeeded, and whether its last answer was a refusal.
struct Freshness {
    started: Instant,
    sites: Mutex<BTreeMap<String, SiteFreshness>>,
}

#[derive(Default)]
struct SiteFreshness {
    last_success: Option<Instant>,
    refused: Option<String>,
}

impl Freshness {
    fn new(targets: &[Target]) -> Freshness {
        Freshness {
            started: Instant::now(),
            sites: Mutex::new(
                targets
                    .iter()
                    .map(|target| (target.site.clone(), SiteFreshness::default()))
                    .collect(),
            ),
        }
    }

    fn with_sites<T>(&self, action: impl FnOnce(&mut BTreeMap<String, SiteFreshness>) -> T) -> T {
        let mut sites = match self.sites.lock() {
            Ok(sites) => sites,
            Err(poisoned) => poisoned.into_inner(),
        };
        action(&mut sites)
    }

    fn succeeded(&self, site: &str) {
        self.with_sites(|sites| {
            let entry = sites.entry(site.to_owned()).or_default();
            entry.last_success = Some(Instant::now());
            entry.refused = None;
        });
    }

    fn refused(&self, site: &str, why: String) {
        self.with_sites(|sites| sites.entry(site.to_owned()).or_default().refused = Some(why));
    }

    /// `None` when ready, else why not.
    fn problem(&self, max_age: Duration) -> Option<String> {
        let now = Instant::now();
        self.with_sites(|sites| {
            let problems: Vec<String> = sites
                .iter()
                .filter_map(|(site, freshness)| {
                    if let Some(why) = &freshness.refused {
                        return Some(format!("{site}: upstream refused ({why})"));
                    }
                    match freshness.last_success {
                        None => Some(format!(
                            "{site}: no successful poll in {}s since start",
                            now.duration_since(self.started).as_secs()
                        )),
                        Some(at) if now.duration_since(at) > max_age => Some(format!(
                            "{site}: last successful poll {}s ago (limit {}s)",
                            now.duration_since(at).as_secs(),
                            max_age.as_secs()
                        )),
                        Some(_) => None,
                    }
                })
                .collect();
            (!problems.is_empty()).then(|| problems.join("; "))
        })
    }
}

async fn watch_readiness<F: Feed>(context: Arc<PollContext<F>>, health: Health) {
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            () = context.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match context.freshness.problem(context.settings.ready_max_age) {
            None => health.set_ready("feed"),
            Some(problem) => health.set_not_ready("feed", problem),
        }
    }
}

/// A record dated beyond `skew` ahead of `now`, as a rejection; `None` when it is plausible.
///
/// Such a record would move its site's cursor into the future, after which every real record
/// looks stale (rule of [`crate::cursor::Cursor::decide`]); it is refused instead, by name.
pub fn too_far_ahead<O: Observation>(
    observation: &O,
    now: DateTime<Utc>,
    skew: Duration,
) -> Option<RejectedRecord> {
    let limit = now + chrono::Duration::from_std(skew).unwrap_or(chrono::Duration::MAX);
    (observation.observed_at() > limit).then(|| RejectedRecord {
        location: format!("site {}", observation.site()),
        reason: "future_time",
        detail: format!(
            "observed_at {} is more than {}s ahead of this host's clock ({}); check the upstream's clock (--max-clock-skew/POLL_MAX_CLOCK_SKEW)",
            observation.observed_at().to_rfc3339(),
            skew.as_secs(),
            now.to_rfc3339()
        ),
    })
}
