//! The HTTP side of a poll: rate limit, conditional request, timeout, retries with backoff and
//! `Retry-After`, and a response size limit.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{
    HeaderMap, HeaderValue, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, RETRY_AFTER,
};
use reqwest::StatusCode;
use runtime::RetryPolicy;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::config::PollSettings;
use crate::events;
use crate::feed::Target;

/// The validators a server sent with its last fully processed response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    /// `ETag`, sent back as `If-None-Match`.
    pub etag: Option<HeaderValue>,
    /// `Last-Modified`, sent back as `If-Modified-Since`.
    pub last_modified: Option<HeaderValue>,
}

/// A successful fetch.
#[derive(Debug)]
pub enum Fetched {
    /// 304: nothing changed since the validators we sent.
    NotModified,
    /// A 2xx body, with the validators to remember once it is processed.
    Body {
        /// The response body.
        body: Bytes,
        /// Validators of this response.
        validators: Validators,
    },
}

/// Why a poll got no usable response.
#[derive(Debug, Error)]
pub enum FetchError {
    /// A 4xx other than 429: retrying will not help; the configuration (token, station id,
    /// URL) or the client's identity is probably wrong.
    #[error("{url} answered HTTP {status}{hint}: {excerpt}")]
    Refused {
        /// The URL, without secrets (tokens travel in headers).
        url: String,
        /// The status.
        status: StatusCode,
        /// What to check.
        hint: &'static str,
        /// The start of the body.
        excerpt: String,
    },
    /// Transient failures went on past the retry budget.
    #[error("{url}: gave up after {attempts} attempts; last failure: {last}")]
    GaveUp {
        /// The URL.
        url: String,
        /// Attempts made.
        attempts: usize,
        /// The last failure.
        last: String,
    },
    /// The body exceeded the size limit.
    #[error("{url}: response body exceeds the {limit}-byte limit (--max-response-bytes); not read further")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// Shutdown interrupted the fetch.
    #[error("cancelled by shutdown")]
    Cancelled,
}

impl FetchError {
    /// Metric label of the failure.
    pub fn reason(&self) -> &'static str {
        match self {
            FetchError::Refused { .. } => "refused",
            FetchError::GaveUp { .. } => "gave_up",
            FetchError::TooLarge { .. } => "too_large",
            FetchError::Cancelled => "cancelled",
        }
    }
}

/// One attempt's failure, classified.
enum Attempt {
    Retry {
        description: String,
        retry_after: Option<Duration>,
    },
    Fail(FetchError),
}

/// The HTTP client of one feed: one connection pool and one rate limiter for all its targets.
pub struct HttpFetcher {
    client: reqwest::Client,
    limiter: Arc<DefaultDirectRateLimiter>,
    /// The queue in front of `limiter`. Left to itself, governor wakes every waiting target at
    /// the same instant and whichever runs first takes the slot, so one busy target can starve
    /// the rest; tokio's mutex hands the turn over first come, first served.
    queue: tokio::sync::Mutex<()>,
    feed: &'static str,
    max_retries: usize,
    retry_min_delay: Duration,
    retry_max_delay: Duration,
    max_response_bytes: usize,
}

impl HttpFetcher {
    /// Builds the client (timeout, User-Agent) and the limiter.
    ///
    /// # Errors
    ///
    /// When the TLS backend cannot be initialised or the User-Agent is not a header value.
    pub fn new(feed: &'static str, settings: &PollSettings) -> Result<HttpFetcher, reqwest::Error> {
        let client = reqwest::Client::builder()
            .user_agent(settings.user_agent.clone())
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
            .build()?;
        let per_minute =
            NonZeroU32::new(settings.max_requests_per_minute).unwrap_or(NonZeroU32::MIN);
        // A burst of one: requests are spread evenly over the minute, never bunched.
        let quota = Quota::per_minute(per_minute).allow_burst(NonZeroU32::MIN);
        Ok(HttpFetcher {
            client,
            limiter: Arc::new(RateLimiter::direct(quota)),
            queue: tokio::sync::Mutex::new(()),
            feed,
            max_retries: settings.max_retries,
            retry_min_delay: settings.retry_min_delay,
            retry_max_delay: settings.retry_max_delay,
            max_response_bytes: settings.max_response_bytes,
        })
    }

    /// Waits until this caller may send a request: behind every caller that asked earlier, then
    /// for the limiter's next slot.
    async fn wait_for_turn(&self) {
        let _turn = self.queue.lock().await;
        self.limiter.until_ready().await;
    }

    /// GETs `target`, retrying transient failures with exponential backoff and jitter (or the
    /// server's `Retry-After`, capped), each attempt waiting for the rate limiter.
    ///
    /// # Errors
    ///
    /// See [`FetchError`].
    pub async fn fetch(
        &self,
        target: &Target,
        validators: &Validators,
        shutdown: &CancellationToken,
    ) -> Result<Fetched, FetchError> {
        let policy = RetryPolicy {
            operation: "http",
            min_delay: self.retry_min_delay,
            max_delay: self.retry_max_delay,
            max_retries: Some(self.max_retries),
        };
        let mut delays = policy.delays();
        let mut attempts = 0;
        loop {
            tokio::select! {
                () = self.wait_for_turn() => {}
                () = shutdown.cancelled() => return Err(FetchError::Cancelled),
            }
            attempts += 1;
            let outcome = tokio::select! {
                outcome = self.attempt(target, validators) => outcome,
                () = shutdown.cancelled() => return Err(FetchError::Cancelled),
            };
            let (description, retry_after) = match outcome {
                Ok(fetched) => return Ok(fetched),
                Err(Attempt::Fail(error)) => return Err(error),
                Err(Attempt::Retry {
                    description,
                    retry_after,
                }) => (description, retry_after),
            };
            let Some(backoff) = delays.next() else {
                return Err(FetchError::GaveUp {
                    url: target.url.to_string(),
                    attempts,
                    last: description,
                });
            };
            let delay = retry_after.map_or(backoff, |asked| asked.min(self.retry_max_delay));
            events::retrying(
                self.feed,
                target,
                attempts,
                delay,
                &description,
                retry_after.is_some(),
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return Err(FetchError::Cancelled),
            }
        }
    }

    async fn attempt(&self, target: &Target, validators: &Validators) -> Result<Fetched, Attempt> {
        let mut request = self.client.get(target.url.clone());
        for (name, value) in &target.headers {
            request = request.header(name, value);
        }
        if let Some(etag) = &validators.etag {
            request = request.header(IF_NONE_MATCH, etag);
        }
        if let Some(modified) = &validators.last_modified {
            request = request.header(IF_MODIFIED_SINCE, modified);
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                let class = if error.is_timeout() {
                    "timeout"
                } else {
                    "connect"
                };
                events::http_response(self.feed, target, class);
                return Err(Attempt::Retry {
                    description: describe_transport_error(&error),
                    retry_after: None,
                });
            }
        };
        let status = response.status();
        events::http_response(self.feed, target, status_class(status));
        if status == StatusCode::NOT_MODIFIED {
            return Ok(Fetched::NotModified);
        }
        if status.is_success() {
            let validators = Validators {
                etag: response.headers().get(ETAG).cloned(),
                last_modified: response.headers().get(LAST_MODIFIED).cloned(),
            };
            let body = self.read_body(target, &mut response).await?;
            return Ok(Fetched::Body { body, validators });
        }
        let retry_after = retry_after(response.headers(), SystemTime::now());
        let excerpt = self.read_excerpt(&mut response).await;
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Err(Attempt::Retry {
                description: format!("HTTP {status}: {excerpt}"),
                retry_after,
            });
        }
        Err(Attempt::Fail(FetchError::Refused {
            url: target.url.to_string(),
            status,
            hint: refusal_hint(status),
            excerpt,
        }))
    }

    async fn read_body(
        &self,
        target: &Target,
        response: &mut reqwest::Response,
    ) -> Result<Bytes, Attempt> {
        let too_large = || {
            Attempt::Fail(FetchError::TooLarge {
                url: target.url.to_string(),
                limit: self.max_response_bytes,
            })
        };
        if response
            .content_length()
            .is_some_and(|length| length > self.max_response_bytes as u64)
        {
            return Err(too_large());
        }
        let mut body = BytesMut::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > self.max_response_bytes {
                        return Err(too_large());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body.freeze()),
                Err(error) => {
                    let class = if error.is_timeout() {
                        "timeout"
                    } else {
                        "connect"
                    };
                    events::http_response(self.feed, target, class);
                    return Err(Attempt::Retry {
                        description: format!(
                            "reading the body failed after {} bytes: {}",
                            body.len(),
                            describe_transport_error(&error)
                        ),
                        retry_after: None,
                    });
                }
            }
        }
    }

    /// The first few hundred bytes of an error body, as one line of text.
    async fn read_excerpt(&self, response: &mut reqwest::Response) -> String {
        const LIMIT: usize = 300;
        let mut bytes = Vec::new();
        while bytes.len() < LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
                _ => break,
            }
        }
        bytes.truncate(LIMIT);
        let text = String::from_utf8_lossy(&bytes);
        let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if line.is_empty() {
            "(empty body)".to_owned()
        } else {
            line
        }
    }
}

fn describe_transport_error(error: &reqwest::Error) -> String {
    // reqwest's Display includes the URL; the source chain says what actually happened.
    let what = if error.is_timeout() {
        "request timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "transport error"
    };
    match std::error::Error::source(error) {
        Some(cause) => format!("{what}: {}", runtime::config::error_line(cause)),
        None => what.to_owned(),
    }
}

/// The metric label of a status: `2xx`, `304`, `429`, `4xx`, `5xx`.
pub fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        304 => "304",
        429 => "429",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

fn refusal_hint(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => " (check the token: ELECTRICITYMAPS_TOKEN or ELECTRICITYMAPS_TOKEN_FILE)",
        403 => " (access denied: check the token's plan, or the upstream may be refusing this client's User-Agent)",
        404 => " (check the site/station/zone id and the base URL)",
        _ => "",
    }
}

/// The delay a `Retry-After` header asks for: delta-seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(text).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(
            retry_after(&headers, SystemTime::now()),
            Some(Duration::from_secs(7))
        );
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&later).expect("header"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(30)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers, now), None);
    }

    fn settings(max_requests_per_minute: u32) -> PollSettings {
        PollSettings {
            interval: Duration::from_secs(1),
            site_intervals: std::collections::BTreeMap::new(),
            request_timeout: Duration::from_secs(1),
            max_requests_per_minute,
            max_retries: 0,
            retry_min_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_secs(1),
            user_agent: "NomadWave-ingest/test".to_owned(),
            ready_max_age: Duration::from_secs(60),
            revision_window: Duration::from_secs(60),
            max_clock_skew: Duration::from_secs(60),
            max_response_bytes: 1 << 20,
            cursor_bucket: "cursors".to_owned(),
        }
    }

    /// Four targets that each ask for the next request as soon as they have sent one: every
    /// one of them must get its turn, in the order they asked, not the quickest one every time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn targets_waiting_for_the_limiter_take_turns() {
        const TARGETS: usize = 4;
        const ROUNDS: usize = 3;
        let fetcher = Arc::new(HttpFetcher::new("test", &settings(1200)).expect("client"));
        // Spend the free slot so that every target below has to queue.
        fetcher.wait_for_turn().await;
        let turns = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        for target in 0..TARGETS {
            let (fetcher, turns) = (Arc::clone(&fetcher), Arc::clone(&turns));
            tasks.spawn(async move {
                for _ in 0..ROUNDS {
                    fetcher.wait_for_turn().await;
                    turns.lock().expect("turns").push(target);
                }
            });
            // Let each target queue before the next one starts.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        while let Some(joined) = tasks.join_next().await {
            joined.expect("a target task panicked");
        }
        let turns = turns.lock().expect("turns").clone();
        for (round, window) in turns.chunks(TARGETS).enumerate() {
            let mut targets = window.to_vec();
            targets.sort_unstable();
            assert_eq!(
                targets,
                (0..TARGETS).collect::<Vec<_>>(),
                "round {round} did not give every target one turn: {turns:?}"
            );
        }
    }

    #[test]
    fn statuses_fall_into_the_documented_classes() {
        assert_eq!(status_class(StatusCode::OK), "2xx");
        assert_eq!(status_class(StatusCode::NOT_MODIFIED), "304");
        assert_eq!(status_class(StatusCode::TOO_MANY_REQUESTS), "429");
        assert_eq!(status_class(StatusCode::UNAUTHORIZED), "4xx");
        assert_eq!(status_class(StatusCode::BAD_GATEWAY), "5xx");
    }
}
