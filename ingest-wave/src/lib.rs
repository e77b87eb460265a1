//! `ingest-wave`: IMOS/AODN wave buoy observations → `WAVE` events.
//!
//! `parse FILE` prints a saved GeoServer response as events; `run` polls the AODN WFS for each
//! configured site (or the whole layer) through the shared [`poller`]; `bridge` carries the Pi
//! buoys' (and Pi weather stations') MQTT messages into JetStream ([`bridge`]).

pub mod bridge;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use feeds::{Parsed, PayloadError};
use poller::{Feed, FeedDefaults, ServiceArgs, Target};
use reqwest::Url;
use runtime::{ConfigError, LogArgs};
use schema::WaveObservation;
use tokio_util::sync::CancellationToken;

/// The public AODN GeoServer endpoint (WFS).
pub const DEFAULT_WFS_URL: &str = "https://geoserver-123.aodn.org.au/geoserver/ows";

/// The real-time wave layer with one row per observation (last 7 days).
pub const DEFAULT_LAYER: &str = "aodn:aodn_wave_nrt_v2_timeseries_map";

/// Command line of `ingest-wave`.
#[derive(Debug, Parser)]
#[command(
    name = "ingest-wave",
    version,
    about = "IMOS/AODN wave buoys → NomadWave WAVE events"
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
    /// Print a saved AODN GeoJSON response as one event per line (JSON) on stdout.
    Parse {
        /// The saved response.
        file: PathBuf,
    },
    /// Poll the AODN WFS and publish wave events until SIGINT/SIGTERM.
    Run(Box<RunArgs>),
    /// Bridge Pi buoys' MQTT messages (and rtl_433 weather events) to JetStream.
    Bridge(Box<bridge::BridgeArgs>),
}

/// Flags of `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// AODN site names to poll, comma-separated (e.g. "Tathra,Port Fairy"); empty polls the whole
    /// layer in one request.
    #[arg(long, env = "IMOS_SITES", value_delimiter = ',')]
    pub sites: Vec<String>,
    /// The GeoServer OWS endpoint.
    #[arg(long, env = "IMOS_WFS_URL", default_value = DEFAULT_WFS_URL)]
    pub wfs_url: String,
    /// The WFS layer (typeName).
    #[arg(long, env = "IMOS_LAYER", default_value = DEFAULT_LAYER)]
    pub layer: String,
    /// Poll loop, NATS, streams, metrics.
    #[command(flatten)]
    pub service: ServiceArgs<{ runtime::http::default_port::INGEST_WAVE }>,
}

/// The AODN wave feed as the poll loop sees it.
#[derive(Debug, Clone)]
pub struct ImosFeed {
    targets: Vec<Target>,
}

impl ImosFeed {
    /// One target per site (a CQL filter on `site_name`), or one for the whole layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when the URL or a site name is unusable.
    pub fn from_args(args: &RunArgs) -> Result<ImosFeed, ConfigError> {
        let base = Url::parse(&args.wfs_url).map_err(|error| {
            ConfigError::new(
                "--wfs-url/IMOS_WFS_URL",
                format!("'{}': {error}", args.wfs_url),
            )
        })?;
        if args.layer.trim().is_empty() {
            return Err(ConfigError::new("--layer/IMOS_LAYER", "must not be empty"));
        }
        let mut query = vec![
            ("service", "WFS".to_owned()),
            ("version", "1.0.0".to_owned()),
            ("request", "GetFeature".to_owned()),
            ("typeName", args.layer.trim().to_owned()),
            ("outputFormat", "application/json".to_owned()),
        ];
        let sites: Vec<&str> = args
            .sites
            .iter()
            .map(|site| site.trim())
            .filter(|site| !site.is_empty())
            .collect();
        if sites.is_empty() {
            let url = Url::parse_with_params(base.as_str(), &query)
                .map_err(|error| ConfigError::new("--wfs-url/IMOS_WFS_URL", error.to_string()))?;
            return Ok(ImosFeed {
                targets: vec![Target {
                    site: "all".to_owned(),
                    name: "all".to_owned(),
                    url,
                    headers: Vec::new(),
                }],
            });
        }
        let mut targets = Vec::with_capacity(sites.len());
        for name in sites {
            let site = feeds::normalize_site(name);
            if site.is_empty() {
                return Err(ConfigError::new(
                    "--sites/IMOS_SITES",
                    format!("'{name}' has no letters or digits"),
                ));
            }
            // CQL string literal: a quote is doubled.
            query.push((
                "CQL_FILTER",
                format!("site_name='{}'", name.replace('\'', "''")),
            ));
            let url = Url::parse_with_params(base.as_str(), &query)
                .map_err(|error| ConfigError::new("--wfs-url/IMOS_WFS_URL", error.to_string()))?;
            query.pop();
            targets.push(Target {
                site,
                name: name.to_owned(),
                url,
                headers: Vec::new(),
            });
        }
        Ok(ImosFeed { targets })
    }
}

impl Feed for ImosFeed {
    type Observation = WaveObservation;

    fn name(&self) -> &'static str {
        "imos"
    }

    fn defaults(&self) -> FeedDefaults {
        FeedDefaults {
            // Buoys report hourly (at :05, :30 or :40 past); a 15-minute poll sees each batch
            // within a quarter hour.
            interval: std::time::Duration::from_secs(15 * 60),
            max_requests_per_minute: 30,
            // Late GTS bulletins arrive hours after the observation.
            revision_window: std::time::Duration::from_secs(24 * 3600),
        }
    }

    fn targets(&self) -> Vec<Target> {
        self.targets.clone()
    }

    fn parse(&self, target: &Target, body: &[u8]) -> Result<Parsed<WaveObservation>, PayloadError> {
        let mut parsed = feeds::imos::parse(body)?;
        if target.site != "all" {
            // The CQL filter should already have done this; a server that ignores it must not
            // make us publish sites nobody configured.
            parsed
                .observations
                .retain(|observation| observation.site == target.site);
        }
        Ok(parsed)
    }
}

/// Runs the parsed command.
///
/// # Errors
///
/// Bad configuration (exit 64) or a runtime failure, with context naming what failed.
pub async fn run(cli: Cli, shutdown: CancellationToken) -> anyhow::Result<()> {
    match cli.command {
        Command::Parse { file } => poller::parse_file(&file, feeds::imos::parse),
        Command::Run(args) => {
            let feed = ImosFeed::from_args(&args)?;
            poller::run_service(feed, &args.service, "ingest-wave", shutdown).await
        }
        Command::Bridge(args) => bridge::run_bridge(&args, shutdown).await,
    }
}
