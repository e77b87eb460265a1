//! Flags every poller shares, validated into [`PollSettings`].

use std::collections::BTreeMap;
use std::time::Duration;

use runtime::provision::StreamArgs;
use runtime::{parse_duration, ConfigError, HttpArgs, NatsArgs};

/// A feed's own defaults, used where the operator sets nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedDefaults {
    /// How often each target is polled.
    pub interval: Duration,
    /// Requests per minute to the upstream, all targets together.
    pub max_requests_per_minute: u32,
    /// How far behind a target's newest published observation new or revised records are still
    /// published (late data, revised values).
    pub revision_window: Duration,
}

/// Flags of the poll loop, shared by every `run` command.
#[derive(Debug, Clone, clap::Args)]
pub struct PollArgs {
    /// How often each site/zone is polled [default: the feed's own, see --help of run].
    #[arg(long = "interval", env = "POLL_INTERVAL", value_parser = parse_duration)]
    pub interval: Option<Duration>,
    /// Per-site/zone interval, as SITE=DURATION (repeat the flag, or comma-separate in the env).
    #[arg(
        long = "site-interval",
        env = "POLL_SITE_INTERVALS",
        value_delimiter = ','
    )]
    pub site_intervals: Vec<String>,
    /// Timeout of one HTTP request, connect to last byte.
    #[arg(long, env = "POLL_REQUEST_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Requests per minute to the upstream, all sites together [default: the feed's own].
    #[arg(long, env = "POLL_MAX_REQUESTS_PER_MINUTE")]
    pub max_requests_per_minute: Option<u32>,
    /// Retries of one poll on timeouts, connection errors, 5xx and 429 before waiting for the
    /// next interval.
    #[arg(long, env = "POLL_MAX_RETRIES", default_value_t = 5)]
    pub max_retries: usize,
    /// First backoff delay between retries (doubles, with jitter).
    #[arg(long, env = "POLL_RETRY_MIN_DELAY", default_value = "1s", value_parser = parse_duration)]
    pub retry_min_delay: Duration,
    /// Longest wait between retries, also the cap on an upstream's Retry-After.
    #[arg(long, env = "POLL_RETRY_MAX_DELAY", default_value = "2m", value_parser = parse_duration)]
    pub retry_max_delay: Duration,
    /// The User-Agent sent upstream (BOM refuses some default clients).
    #[arg(long, env = "POLL_USER_AGENT")]
    pub user_agent: Option<String>,
    /// /readyz fails when any site's last successful poll is older than this
    /// [default: 3 × the longest interval].
    #[arg(long, env = "POLL_READY_MAX_AGE", value_parser = parse_duration)]
    pub ready_max_age: Option<Duration>,
    /// Records up to this far behind a site's newest published one are still published when new
    /// or revised [default: the feed's own].
    #[arg(long, env = "POLL_REVISION_WINDOW", value_parser = parse_duration)]
    pub revision_window: Option<Duration>,
    /// Records dated more than this ahead of this host's clock are rejected (reason
    /// `future_time`) and never move a site's cursor: an upstream's clock error must not make
    /// every later real record look stale.
    #[arg(long, env = "POLL_MAX_CLOCK_SKEW", default_value = "1h", value_parser = parse_duration)]
    pub max_clock_skew: Duration,
    /// Largest response body accepted; a bigger one is rejected and counted.
    #[arg(long, env = "POLL_MAX_RESPONSE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_response_bytes: usize,
    /// JetStream key-value bucket holding each site's cursor.
    #[arg(
        long,
        env = "POLL_CURSOR_BUCKET",
        default_value = "nomadwave_poll_cursors"
    )]
    pub cursor_bucket: String,
}

/// Everything `run` needs beside the feed's own flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs<const PORT: u16> {
    /// Poll loop.
    #[command(flatten)]
    pub poll: PollArgs,
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Stream retention and dedupe (used when the poller creates the streams).
    #[command(flatten)]
    pub streams: StreamArgs,
    /// Metrics and health endpoint.
    #[command(flatten)]
    pub http: HttpArgs<PORT>,
}

/// The validated poll settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PollSettings {
    /// Interval of every target without an override.
    pub interval: Duration,
    /// Per-target intervals.
    pub site_intervals: BTreeMap<String, Duration>,
    /// HTTP request timeout.
    pub request_timeout: Duration,
    /// Upstream rate limit.
    pub max_requests_per_minute: u32,
    /// Retries per poll.
    pub max_retries: usize,
    /// First backoff delay.
    pub retry_min_delay: Duration,
    /// Backoff and Retry-After cap.
    pub retry_max_delay: Duration,
    /// User-Agent header.
    pub user_agent: String,
    /// Readiness bound on the age of the last success.
    pub ready_max_age: Duration,
    /// Revision window of the cursor.
    pub revision_window: Duration,
    /// How far ahead of now a record may be dated.
    pub max_clock_skew: Duration,
    /// Response size limit.
    pub max_response_bytes: usize,
    /// KV bucket of the cursors.
    pub cursor_bucket: String,
}

impl PollSettings {
    /// Validates `args`, filling gaps from the feed's `defaults`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first unusable flag.
    pub fn from_args(
        args: &PollArgs,
        defaults: FeedDefaults,
        service: &'static str,
    ) -> Result<PollSettings, ConfigError> {
        let interval = args.interval.unwrap_or(defaults.interval);
        if interval.is_zero() {
            return Err(ConfigError::new(
                "--interval/POLL_INTERVAL",
                "must be above 0",
            ));
        }
        let mut site_intervals = BTreeMap::new();
        for entry in &args.site_intervals {
            let setting = "--site-interval/POLL_SITE_INTERVALS";
            let Some((site, duration)) = entry.rsplit_once('=') else {
                return Err(ConfigError::new(
                    setting,
                    format!("'{entry}' is not SITE=DURATION (example: Tathra=5m)"),
                ));
            };
            let duration = parse_duration(duration.trim())
                .map_err(|problem| ConfigError::new(setting, format!("'{entry}': {problem}")))?;
            if duration.is_zero() {
                return Err(ConfigError::new(
                    setting,
                    format!("'{entry}': must be above 0"),
                ));
            }
            site_intervals.insert(site.trim().to_owned(), duration);
        }
        let max_requests_per_minute = args
            .max_requests_per_minute
            .unwrap_or(defaults.max_requests_per_minute);
        if max_requests_per_minute == 0 {
            return Err(ConfigError::new(
                "--max-requests-per-minute/POLL_MAX_REQUESTS_PER_MINUTE",
                "must be at least 1",
            ));
        }
        if args.request_timeout.is_zero() {
            return Err(ConfigError::new(
                "--request-timeout/POLL_REQUEST_TIMEOUT",
                "must be above 0",
            ));
        }
        if args.retry_min_delay > args.retry_max_delay {
            return Err(ConfigError::new(
                "--retry-min-delay/POLL_RETRY_MIN_DELAY",
                "must not exceed --retry-max-delay",
            ));
        }
        if args.max_response_bytes == 0 {
            return Err(ConfigError::new(
                "--max-response-bytes/POLL_MAX_RESPONSE_BYTES",
                "must be above 0",
            ));
        }
        let bucket_ok = !args.cursor_bucket.is_empty()
            && args
                .cursor_bucket
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !bucket_ok {
            return Err(ConfigError::new(
                "--cursor-bucket/POLL_CURSOR_BUCKET",
                format!(
                    "'{}' is not a bucket name (letters, digits, _ and - only)",
                    args.cursor_bucket
                ),
            ));
        }
        let longest = site_intervals
            .values()
            .copied()
            .fold(interval, Duration::max);
        let user_agent = match &args.user_agent {
            Some(agent) if !agent.trim().is_empty() => agent.trim().to_owned(),
            Some(_) => {
                return Err(ConfigError::new(
                    "--user-agent/POLL_USER_AGENT",
                    "must not be empty",
                ))
            }
            None => default_user_agent(service),
        };
        Ok(PollSettings {
            interval,
            site_intervals,
            request_timeout: args.request_timeout,
            max_requests_per_minute,
            max_retries: args.max_retries,
            retry_min_delay: args.retry_min_delay,
            retry_max_delay: args.retry_max_delay,
            user_agent,
            ready_max_age: args.ready_max_age.unwrap_or(longest * 3),
            revision_window: args.revision_window.unwrap_or(defaults.revision_window),
            max_clock_skew: args.max_clock_skew,
            max_response_bytes: args.max_response_bytes,
            cursor_bucket: args.cursor_bucket.clone(),
        })
    }

    /// The interval of the target whose site id or configured name is `site`.
    pub fn interval_for(&self, site: &str, name: &str) -> Duration {
        self.site_intervals
            .get(site)
            .or_else(|| self.site_intervals.get(name))
            .copied()
            .unwrap_or(self.interval)
    }
}

/// `NomadWave-ingest/<version> (<service>; +https://github.com/nomadwave)`: descriptive, so an
/// upstream can tell who we are.
pub fn default_user_agent(service: &str) -> String {
    format!(
        "NomadWave-ingest/{} ({service}; surf and carbon dashboard; +https://nomadwave.example/contact)",
        env!("CARGO_PKG_VERSION")
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        poll: PollArgs,
    }

    const DEFAULTS: FeedDefaults = FeedDefaults {
        interval: Duration::from_secs(600),
        max_requests_per_minute: 30,
        revision_window: Duration::from_secs(3600),
    };

    fn settings(flags: &[&str]) -> Result<PollSettings, ConfigError> {
        let mut argv = vec!["test"];
        argv.extend_from_slice(flags);
        let wrapper = Wrapper::try_parse_from(argv).expect("flags parse");
        PollSettings::from_args(&wrapper.poll, DEFAULTS, "ingest-test")
    }

    #[test]
    fn defaults_come_from_the_feed() {
        let settings = settings(&[]).expect("valid");
        assert_eq!(settings.interval, Duration::from_secs(600));
        assert_eq!(settings.max_requests_per_minute, 30);
        assert_eq!(settings.ready_max_age, Duration::from_secs(1800));
        assert!(settings.user_agent.starts_with("NomadWave-ingest/"));
    }

    #[test]
    fn site_intervals_override_and_lengthen_the_readiness_bound() {
        let settings = settings(&[
            "--site-interval",
            "Tathra=5m",
            "--site-interval",
            "Port Fairy=1h",
        ])
        .expect("valid");
        assert_eq!(
            settings.interval_for("tathra", "Tathra"),
            Duration::from_secs(300)
        );
        assert_eq!(
            settings.interval_for("wooli", "Wooli"),
            Duration::from_secs(600)
        );
        assert_eq!(settings.ready_max_age, Duration::from_secs(3 * 3600));
    }

    #[test]
    fn bad_values_name_their_flag() {
        let error = settings(&["--site-interval", "Tathra"]).expect_err("no =");
        assert_eq!(error.setting, "--site-interval/POLL_SITE_INTERVALS");
        let error = settings(&["--max-requests-per-minute", "0"]).expect_err("zero");
        assert_eq!(
            error.setting,
            "--max-requests-per-minute/POLL_MAX_REQUESTS_PER_MINUTE"
        );
        let error = settings(&["--cursor-bucket", "a.b"]).expect_err("dot");
        assert_eq!(error.setting, "--cursor-bucket/POLL_CURSOR_BUCKET");
    }
}
