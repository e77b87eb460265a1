//! `ingest-wx`: Bureau of Meteorology observations → `WEATHER` events.
//!
//! Two BOM interfaces are polled, chosen per station by the form of its id:
//! - `IDQ60701.94254` (product.WMO): the legacy product JSON at
//!   `{fwo-url}/fwo/IDQ60701/IDQ60701.94254.json`, which carries pressure and swell;
//! - a geohash (`qvv117`, 6 or 7 characters): the v1 API's nearest-station observation at
//!   `{api-url}/locations/{geohash6}/observations` (no pressure, no swell).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use feeds::{Parsed, PayloadError};
use poller::{Feed, FeedDefaults, ServiceArgs, Target};
use reqwest::Url;
use runtime::{ConfigError, LogArgs};
use schema::WeatherObservation;
use tokio_util::sync::CancellationToken;

/// BOM's web host serving the legacy `/fwo/` products.
pub const DEFAULT_FWO_URL: &str = "http://www.bom.gov.au";

/// The v1 API behind the BOM app.
pub const DEFAULT_API_URL: &str = "https://api.weather.bom.gov.au/v1";

/// Command line of `ingest-wx`.
#[derive(Debug, Parser)]
#[command(
    name = "ingest-wx",
    version,
    about = "Bureau of Meteorology observations → NomadWave WEATHER events"
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
    /// Print a saved BOM response (legacy product or v1 API) as one event per line on stdout.
    Parse {
        /// The saved response.
        file: PathBuf,
        /// Site id for a v1 observation whose station has no id.
        #[arg(long)]
        fallback_site: Option<String>,
    },
    /// Poll BOM and publish weather events until SIGINT/SIGTERM.
    Run(Box<RunArgs>),
}

/// Flags of `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Stations, comma-separated: PRODUCT.WMO for legacy products (IDQ60701.94254) or a
    /// location geohash for the v1 API (qvv117).
    #[arg(long, env = "BOM_STATIONS", value_delimiter = ',', required = true)]
    pub stations: Vec<String>,
    /// Host of the legacy /fwo/ products.
    #[arg(long, env = "BOM_FWO_URL", default_value = DEFAULT_FWO_URL)]
    pub fwo_url: String,
    /// Base of the v1 API.
    #[arg(long, env = "BOM_API_URL", default_value = DEFAULT_API_URL)]
    pub api_url: String,
    /// Poll loop, NATS, streams, metrics.
    #[command(flatten)]
    pub service: ServiceArgs<{ runtime::http::default_port::INGEST_WX }>,
}

/// A configured station, by interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Station {
    /// A legacy product and WMO number.
    Product {
        /// e.g. `IDQ60701`.
        product: String,
        /// e.g. `94254`.
        wmo: String,
    },
    /// A v1 API location geohash (the first 6 characters are used).
    Geohash(String),
}

impl Station {
    /// Reads `IDQ60701.94254` or a geohash.
    ///
    /// # Errors
    ///
    /// A message saying which forms are accepted.
    pub fn parse(text: &str) -> Result<Station, String> {
        let text = text.trim();
        if let Some((product, wmo)) = text.split_once('.') {
            let product_ok = product.len() == 8
                && product.starts_with("ID")
                && product[2..3].chars().all(|c| c.is_ascii_uppercase())
                && product[3..].chars().all(|c| c.is_ascii_digit());
            let wmo_ok =
                !wmo.is_empty() && wmo.len() <= 6 && wmo.chars().all(|c| c.is_ascii_digit());
            if product_ok && wmo_ok {
                return Ok(Station::Product {
                    product: product.to_owned(),
                    wmo: wmo.to_owned(),
                });
            }
        }
        // Geohash alphabet: digits and lower-case letters except a, i, l, o.
        let geohash_ok = (6..=7).contains(&text.len())
            && text
                .chars()
                .all(|c| c.is_ascii_digit() || (c.is_ascii_lowercase() && !"ailo".contains(c)));
        if geohash_ok {
            return Ok(Station::Geohash(text[..6].to_owned()));
        }
        Err(format!(
            "'{text}' is neither PRODUCT.WMO (e.g. IDQ60701.94254) nor a 6- or 7-character location geohash (e.g. qvv117)"
        ))
    }
}

/// The BOM feed as the poll loop sees it.
#[derive(Debug, Clone)]
pub struct BomFeed {
    targets: Vec<Target>,
}

impl BomFeed {
    /// One target per station.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for an unusable URL or station id.
    pub fn from_args(args: &RunArgs) -> Result<BomFeed, ConfigError> {
        let fwo = base_url(&args.fwo_url, "--fwo-url/BOM_FWO_URL")?;
        let api = base_url(&args.api_url, "--api-url/BOM_API_URL")?;
        let mut targets = Vec::new();
        for text in args
            .stations
            .iter()
            .map(|station| station.trim())
            .filter(|station| !station.is_empty())
        {
            let station = Station::parse(text)
                .map_err(|problem| ConfigError::new("--stations/BOM_STATIONS", problem))?;
            let (site, path) = match &station {
                Station::Product { product, wmo } => (
                    format!("wmo-{wmo}"),
                    format!("fwo/{product}/{product}.{wmo}.json"),
                ),
                Station::Geohash(geohash) => {
                    (geohash.clone(), format!("locations/{geohash}/observations"))
                }
            };
            let url = fwo_or_api(&station, &fwo, &api)
                .join(&path)
                .map_err(|error| {
                    ConfigError::new("--stations/BOM_STATIONS", format!("'{text}': {error}"))
                })?;
            targets.push(Target {
                site,
                name: text.to_owned(),
                url,
                headers: Vec::new(),
            });
        }
        if targets.is_empty() {
            return Err(ConfigError::new(
                "--stations/BOM_STATIONS",
                "no station given",
            ));
        }
        Ok(BomFeed { targets })
    }
}

fn fwo_or_api<'a>(station: &Station, fwo: &'a Url, api: &'a Url) -> &'a Url {
    match station {
        Station::Product { .. } => fwo,
        Station::Geohash(_) => api,
    }
}

/// Parses a base URL so that `join` appends to its path.
fn base_url(text: &str, setting: &'static str) -> Result<Url, ConfigError> {
    let with_slash = if text.ends_with('/') {
        text.to_owned()
    } else {
        format!("{text}/")
    };
    let url = Url::parse(&with_slash)
        .map_err(|error| ConfigError::new(setting, format!("'{text}': {error}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::new(
            setting,
            format!("'{text}' is not an http(s) URL"),
        ));
    }
    Ok(url)
}

impl Feed for BomFeed {
    type Observation = WeatherObservation;

    fn name(&self) -> &'static str {
        "bom"
    }

    fn defaults(&self) -> FeedDefaults {
        FeedDefaults {
            // Records are 30 minutes apart and the website refreshes about every 10 minutes;
            // other clients never poll faster than 5 minutes.
            interval: std::time::Duration::from_secs(10 * 60),
            // No published limit: stay gentle (BOM blocks clients it dislikes).
            max_requests_per_minute: 12,
            revision_window: std::time::Duration::from_secs(6 * 3600),
        }
    }

    fn targets(&self) -> Vec<Target> {
        self.targets.clone()
    }

    fn parse(
        &self,
        target: &Target,
        body: &[u8],
    ) -> Result<Parsed<WeatherObservation>, PayloadError> {
        feeds::bom::parse(body, Some(&target.site))
    }
}

/// Runs the parsed command.
///
/// # Errors
///
/// Bad configuration (exit 64) or a runtime failure, with context naming what failed.
pub async fn run(cli: Cli, shutdown: CancellationToken) -> anyhow::Result<()> {
    match cli.command {
        Command::Parse {
            file,
            fallback_site,
        } => poller::parse_file(&file, |body| {
            feeds::bom::parse(body, fallback_site.as_deref())
        }),
        Command::Run(args) => {
            let feed = BomFeed::from_args(&args)?;
            poller::run_service(feed, &args.service, "ingest-wx", shutdown).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn station_ids_pick_their_interface() {
        assert_eq!(
            Station::parse("IDQ60701.94254"),
            Ok(Station::Product {
                product: "IDQ60701".into(),
                wmo: "94254".into()
            })
        );
        assert_eq!(
            Station::parse("qvv117n"),
            Ok(Station::Geohash("qvv117".into()))
        );
        assert!(Station::parse("Sydney").is_err());
        assert!(Station::parse("IDQ6070.94254").is_err());
    }
}
