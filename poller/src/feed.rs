//! What a binary tells the poll loop about its upstream.

use feeds::{Parsed, PayloadError};
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::Url;
use schema::Observation;

use crate::config::FeedDefaults;

/// One URL polled on its own schedule with its own cursor: a site, station or zone.
#[derive(Clone)]
pub struct Target {
    /// The id events from this target carry (metric label, cursor key), e.g. `tathra`, `DE`.
    pub site: String,
    /// The name the operator configured (`Tathra`, `IDQ60701.94254`), for logs and overrides.
    pub name: String,
    /// What to GET.
    pub url: Url,
    /// Extra request headers; mark secrets with [`HeaderValue::set_sensitive`].
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for Target {
    // Headers may hold tokens: never print them.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Target")
            .field("site", &self.site)
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

/// An upstream the poll loop can drive.
pub trait Feed: Send + Sync + 'static {
    /// What its responses hold.
    type Observation: Observation + 'static;

    /// Short upstream name: metric label and cursor key prefix (`imos`, `bom`, `electricitymaps`).
    fn name(&self) -> &'static str;

    /// Intervals, rate limit and revision window when the operator sets none.
    fn defaults(&self) -> FeedDefaults;

    /// The URLs to poll.
    fn targets(&self) -> Vec<Target>;

    /// Reads one response of `target`.
    ///
    /// # Errors
    ///
    /// A [`PayloadError`] when the body is not a readable document of this upstream.
    fn parse(
        &self,
        target: &Target,
        body: &[u8],
    ) -> Result<Parsed<Self::Observation>, PayloadError>;
}
