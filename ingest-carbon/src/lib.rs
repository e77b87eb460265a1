//! `ingest-carbon`: Electricity Maps carbon intensity → `CARBON` events.
//!
//! Polls `/carbon-intensity/history` (the last 24 hours, which also carries revisions of
//! earlier hours) or `/carbon-intensity/latest` per zone, with the `auth-token` header. The
//! token comes from `ELECTRICITYMAPS_TOKEN` or a file named by `ELECTRICITYMAPS_TOKEN_FILE`
//! and is never logged or shown.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use feeds::{Parsed, PayloadError};
use poller::{Feed, FeedDefaults, ServiceArgs, Target};
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::Url;
use runtime::{ConfigError, LogArgs, Secret};
use schema::CarbonIntensity;
use tokio_util::sync::CancellationToken;

/// Electricity Maps API v3.
pub const DEFAULT_API_URL: &str = "https://api.electricitymaps.com/v3";

/// Command line of `ingest-carbon`.
#[derive(Debug, Parser)]
#[command(
    name = "ingest-carbon",
    version,
    about = "Electricity Maps carbon intensity → NomadWave CARBON events"
)]
pub struct Cli {
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a saved Electricity Maps response (latest, history, past-range) as events on stdout.
    Parse {
        /// The saved response.
        file: PathBuf,
        /// Zone for records that do not name theirs.
        #[arg(long)]
        zone: Option<String>,
    },
    /// Poll Electricity Maps and publish carbon events until SIGINT/SIGTERM.
    Run(Box<RunArgs>),
}

/// Which endpoint is polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Endpoint {
    /// `/carbon-intensity/history`: 24 hourly values, revisions included.
    History,
    /// `/carbon-intensity/latest`: the current hour only.
    Latest,
}

/// Flags of `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Zones, comma-separated (e.g. AU-NSW,DE).
    #[arg(
        long,
        env = "ELECTRICITYMAPS_ZONES",
        value_delimiter = ',',
        required = true
    )]
    pub zones: Vec<String>,
    /// Endpoint polled per zone.
    #[arg(
        long,
        env = "ELECTRICITYMAPS_ENDPOINT",
        value_enum,
        default_value = "history"
    )]
    pub endpoint: Endpoint,
    /// Base URL of the API.
    #[arg(long, env = "ELECTRICITYMAPS_URL", default_value = DEFAULT_API_URL)]
    pub api_url: String,
    /// API token (sent as the auth-token header).
    #[arg(long, env = "ELECTRICITYMAPS_TOKEN", hide_env_values = true)]
    pub token: Option<Secret>,
    /// File holding the API token (as rendered by a Vault template).
    #[arg(long, env = "ELECTRICITYMAPS_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// Poll loop, NATS, streams, metrics.
    #[command(flatten)]
    pub service: ServiceArgs<{ runtime::http::default_port::INGEST_CARBON }>,
}

/// The Electricity Maps feed as the poll loop sees it.
#[derive(Debug, Clone)]
pub struct ElectricityMapsFeed {
    targets: Vec<Target>,
}

impl ElectricityMapsFeed {
    /// One target per zone, each carrying the token header (marked sensitive).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a missing or unreadable token, a bad URL or zone.
    pub fn from_args(args: &RunArgs) -> Result<ElectricityMapsFeed, ConfigError> {
        const TOKEN_SETTING: &str = "--token-file/ELECTRICITYMAPS_TOKEN_FILE";
        let token = Secret::from_value_or_file(
            args.token.as_ref(),
            args.token_file.as_deref(),
            TOKEN_SETTING,
        )?
        .ok_or_else(|| {
            ConfigError::new(
                "--token/ELECTRICITYMAPS_TOKEN",
                "no API token: set ELECTRICITYMAPS_TOKEN or ELECTRICITYMAPS_TOKEN_FILE",
            )
        })?;
        let mut header = HeaderValue::from_str(token.expose().trim()).map_err(|_| {
            // Never echo the value: say what is wrong with it.
            ConfigError::new(
                "--token/ELECTRICITYMAPS_TOKEN",
                "the token holds characters not allowed in an HTTP header",
            )
        })?;
        header.set_sensitive(true);
        let base = {
            let text = args.api_url.trim_end_matches('/');
            Url::parse(&format!("{text}/")).map_err(|error| {
                ConfigError::new(
                    "--api-url/ELECTRICITYMAPS_URL",
                    format!("'{}': {error}", args.api_url),
                )
            })?
        };
        let path = match args.endpoint {
            Endpoint::History => "carbon-intensity/history",
            Endpoint::Latest => "carbon-intensity/latest",
        };
        let mut targets = Vec::new();
        for zone in args
            .zones
            .iter()
            .map(|zone| zone.trim())
            .filter(|zone| !zone.is_empty())
        {
            if !zone
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(ConfigError::new(
                    "--zones/ELECTRICITYMAPS_ZONES",
                    format!("'{zone}' is not a zone code (e.g. AU-NSW)"),
                ));
            }
            let mut url = base.join(path).map_err(|error| {
                ConfigError::new("--api-url/ELECTRICITYMAPS_URL", error.to_string())
            })?;
            url.query_pairs_mut().append_pair("zone", zone);
            targets.push(Target {
                site: zone.to_owned(),
                name: zone.to_owned(),
                url,
                headers: vec![(HeaderName::from_static("auth-token"), header.clone())],
            });
        }
        if targets.is_empty() {
            return Err(ConfigError::new(
                "--zones/ELECTRICITYMAPS_ZONES",
                "no zone given",
            ));
        }
        Ok(ElectricityMapsFeed { targets })
    }
}

impl Feed for ElectricityMapsFeed {
    type Observation = CarbonIntensity;

    fn name(&self) -> &'static str {
        "electricitymaps"
    }

    fn defaults(&self) -> FeedDefaults {
        FeedDefaults {
            // Hourly values, recomputed around :46-:52 past the hour.
            interval: std::time::Duration::from_secs(15 * 60),
            // No published limit; plans differ. Stay far below anything plausible.
            max_requests_per_minute: 10,
            // History holds 24 hours and its values keep being revised.
            revision_window: std::time::Duration::from_secs(24 * 3600),
        }
    }

    fn targets(&self) -> Vec<Target> {
        self.targets.clone()
    }

    fn parse(&self, target: &Target, body: &[u8]) -> Result<Parsed<CarbonIntensity>, PayloadError> {
        feeds::electricitymaps::parse(body, Some(&target.site))
    }
}

/// Runs the parsed command.
///
/// # Errors
///
/// Bad configuration (exit 64) or a runtime failure, with context naming what failed.
pub async fn run(cli: Cli, shutdown: CancellationToken) -> anyhow::Result<()> {
    match cli.command {
        Command::Parse { file, zone } => poller::parse_file(&file, |body| {
            feeds::electricitymaps::parse(body, zone.as_deref())
        }),
        Command::Run(args) => {
            let feed = ElectricityMapsFeed::from_args(&args)?;
            poller::run_service(feed, &args.service, "ingest-carbon", shutdown).await
        }
    }
}
