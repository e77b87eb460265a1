//! `edge-sim http`: the three upstream APIs the pollers read, served locally in their real
//! formats with plausible, changing values.
//!
//! The real pollers (`ingest-wave run`, `ingest-wx run`, `ingest-carbon run`) run unchanged
//! against it; only their base URLs differ. Routes:
//!
//! | route | upstream | module |
//! |---|---|---|
//! | `GET /geoserver/ows` (also `/geoserver/wfs`) `?service=WFS&request=GetFeature&typeName=aodn:aodn_wave_nrt_v2_timeseries_map&outputFormat=application/json[&CQL_FILTER=site_name='Tathra']` | AODN GeoServer WFS | [`imos`] |
//! | `GET /fwo/{product}/{product}.{wmo}.json` | BOM legacy observation product | [`bom`] |
//! | `GET /v1/locations/{geohash}/observations` | BOM v1 API | [`bom`] |
//! | `GET /v3/carbon-intensity/history?zone=Z`, `GET /v3/carbon-intensity/latest?zone=Z` (header `auth-token`) | Electricity Maps v3 | [`electricitymaps`] |
//!
//! Anything else is 404.
//!
//! **Values are a pure function of (site or zone, observation time)**: smooth sinusoids of the
//! time with phases taken from a stable hash of the site name. The clock only decides which
//! points of each upstream's time grid exist yet, so two requests (or a restart) give identical
//! values for the same observation, and new observations appear as time passes. A body depends
//! only on the grid points it holds, so it is byte-identical until the next grid point appears:
//! each `200` carries an `ETag` (a hash of the body) and a matching `If-None-Match` gets `304`.

pub mod bom;
pub mod electricitymaps;
pub mod imos;

use std::f64::consts::TAU;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Query, Request, State};
use axum::http::header::{CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use runtime::Secret;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// Flags of `edge-sim http`.
#[derive(Debug, clap::Args)]
pub struct HttpArgs {
    /// Address to serve the simulated upstreams on; port 0 picks a free port (the bound
    /// address is printed on stdout as `listening=ADDR`).
    #[arg(long, env = "EDGE_SIM_HTTP_LISTEN", default_value = "127.0.0.1:8088")]
    pub listen: SocketAddr,
    /// The only Electricity Maps `auth-token` accepted; without it, any non-empty token is.
    #[arg(long, env = "EDGE_SIM_ELECTRICITYMAPS_TOKEN", hide_env_values = true)]
    pub token: Option<Secret>,
}

/// Why `edge-sim http` could not serve.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The listen address could not be bound.
    #[error("cannot listen on {address} (--listen/EDGE_SIM_HTTP_LISTEN)")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The server stopped with an I/O error.
    #[error("serving the simulated upstreams on {address} failed")]
    Serve {
        /// The bound address.
        address: SocketAddr,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// Where handlers read the current time; a fixed clock makes the router deterministic in tests.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// What the router needs: the accepted Electricity Maps token and the clock.
#[derive(Clone)]
pub struct Simulator {
    /// The only `auth-token` accepted; `None` accepts any non-empty token.
    pub token: Option<Secret>,
    /// The current time.
    pub clock: Clock,
}

impl Simulator {
    /// A simulator on the wall clock.
    pub fn new(token: Option<Secret>) -> Simulator {
        Simulator {
            token,
            clock: Arc::new(Utc::now),
        }
    }
}

/// Binds `args.listen`, prints `listening=ADDR` on stdout and serves until `shutdown` fires.
///
/// # Errors
///
/// [`ServeError::Bind`] when the address cannot be bound, [`ServeError::Serve`] when serving
/// fails.
pub async fn serve(args: &HttpArgs, shutdown: CancellationToken) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| ServeError::Bind {
            address: args.listen,
            source,
        })?;
    let address = listener.local_addr().unwrap_or(args.listen);
    // The one line of command output: scripts and tests read the port from it.
    println!("listening={address}");
    tracing::info!(
        %address,
        token_required = args.token.is_some(),
        "serving simulated IMOS, BOM and Electricity Maps APIs"
    );
    axum::serve(listener, router(Simulator::new(args.token.clone())))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(|source| ServeError::Serve { address, source })?;
    tracing::info!("stopped serving the simulated upstreams");
    Ok(())
}

/// The routes of the three simulated upstreams, with request logging.
pub fn router(simulator: Simulator) -> Router {
    Router::new()
        .route("/geoserver/ows", get(imos_wfs))
        .route("/geoserver/wfs", get(imos_wfs))
        .route("/fwo/{product}/{file}", get(bom_legacy))
        .route("/v1/locations/{geohash}/observations", get(bom_v1))
        .route("/v3/carbon-intensity/{endpoint}", get(carbon_intensity))
        .fallback(not_found)
        .layer(middleware::from_fn(log_request))
        .with_state(simulator)
}

type QueryPairs = Query<Vec<(String, String)>>;

async fn imos_wfs(
    State(simulator): State<Simulator>,
    Query(params): QueryPairs,
    headers: HeaderMap,
) -> Response {
    conditional(&headers, imos::get_feature(&params, (simulator.clock)()))
}

async fn bom_legacy(
    State(simulator): State<Simulator>,
    Path((product, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    conditional(
        &headers,
        bom::legacy_product(&product, &file, (simulator.clock)()),
    )
}

async fn bom_v1(
    State(simulator): State<Simulator>,
    Path(geohash): Path<String>,
    headers: HeaderMap,
) -> Response {
    conditional(
        &headers,
        bom::v1_observations(&geohash, (simulator.clock)()),
    )
}

async fn carbon_intensity(
    State(simulator): State<Simulator>,
    Path(endpoint): Path<String>,
    Query(params): QueryPairs,
    headers: HeaderMap,
) -> Response {
    let presented = headers
        .get("auth-token")
        .map(|value| value.to_str().unwrap_or_default());
    let expected = simulator.token.as_ref().map(Secret::expose);
    let answer = match electricitymaps::authorize(presented, expected) {
        Ok(()) => electricitymaps::carbon_intensity(&endpoint, &params, (simulator.clock)()),
        Err(refusal) => refusal,
    };
    conditional(&headers, answer)
}

async fn not_found(request: Request) -> Response {
    Answer::text(
        StatusCode::NOT_FOUND,
        format!(
            "404 Not Found: edge-sim serves no {}\n",
            request.uri().path()
        ),
    )
    .into_response()
}

async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let elapsed_ms = round_to(started.elapsed().as_secs_f64() * 1000.0, 3);
    if response.status().is_client_error() || response.status().is_server_error() {
        tracing::warn!(%method, path, query, status, elapsed_ms, "request refused");
    } else {
        tracing::info!(%method, path, query, status, elapsed_ms, "request");
    }
    response
}

/// One HTTP answer of a simulated upstream, before conditional-request handling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Status code.
    pub status: StatusCode,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
}

impl Answer {
    /// A `200` JSON document.
    pub fn json(body: Vec<u8>) -> Answer {
        Answer {
            status: StatusCode::OK,
            content_type: "application/json",
            body,
        }
    }

    /// An error with a JSON body.
    pub fn json_error(status: StatusCode, body: Vec<u8>) -> Answer {
        Answer {
            status,
            content_type: "application/json",
            body,
        }
    }

    /// An answer with a plain-text body.
    pub fn text(status: StatusCode, body: impl Into<String>) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        (
            self.status,
            [(CONTENT_TYPE, HeaderValue::from_static(self.content_type))],
            self.body,
        )
            .into_response()
    }
}

/// The strong validator of `body`: a quoted hash of its bytes.
pub fn etag_of(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let hex: String = digest[..12]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("\"{hex}\"")
}

/// Whether an `If-None-Match` header value names `etag` (weak comparison, lists and `*`).
pub fn if_none_match_hits(header: &str, etag: &str) -> bool {
    header.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

/// A `200` gets an `ETag`, and becomes a `304` when the request's `If-None-Match` names it.
fn conditional(request_headers: &HeaderMap, answer: Answer) -> Response {
    if answer.status != StatusCode::OK {
        return answer.into_response();
    }
    let etag = etag_of(&answer.body);
    let Ok(etag_header) = HeaderValue::from_str(&etag) else {
        return answer.into_response();
    };
    let hit = request_headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| if_none_match_hits(value, &etag));
    if hit {
        return (StatusCode::NOT_MODIFIED, [(ETAG, etag_header)]).into_response();
    }
    let mut response = answer.into_response();
    response.headers_mut().insert(ETAG, etag_header);
    response
}

// ---- deterministic signals shared by the upstreams ----

/// Seconds in an hour.
pub(crate) const HOUR: f64 = 3600.0;
/// Seconds in a day.
pub(crate) const DAY: f64 = 86_400.0;

/// FNV-1a (64 bit) of `parts`, separated by a byte no UTF-8 text contains: stable across
/// builds, platforms and restarts, unlike `std`'s hasher.
pub(crate) fn stable_hash(parts: &[&str]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0xff)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(PRIME);
        }
    }
    hash
}

/// A number in `[0, 1)` derived from `name` and `salt`.
pub(crate) fn unit(name: &str, salt: &str) -> f64 {
    // The top 53 bits fit an f64 mantissa exactly.
    (stable_hash(&[name, salt]) >> 11) as f64 / (1_u64 << 53) as f64
}

/// A phase in `[0, 2π)` derived from `name` and `salt`.
pub(crate) fn phase(name: &str, salt: &str) -> f64 {
    unit(name, salt) * TAU
}

/// `sin(2π · t / period + phase)` of an instant given in seconds since the epoch.
pub(crate) fn cycle(seconds: f64, period_seconds: f64, phase: f64) -> f64 {
    (TAU * seconds / period_seconds + phase).sin()
}

/// Seconds since the epoch, as the argument of the sinusoids.
pub(crate) fn epoch_seconds(at: DateTime<Utc>) -> f64 {
    at.timestamp() as f64
}

/// `value` rounded to `decimals` places.
pub(crate) fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10_f64.powi(decimals);
    (value * scale).round() / scale
}

/// The newest instant `k · step + offset` (seconds since the epoch) at or before `now`.
pub(crate) fn latest_grid_point(
    now: DateTime<Utc>,
    step_seconds: i64,
    offset_seconds: i64,
) -> DateTime<Utc> {
    let slot = (now.timestamp() - offset_seconds).div_euclid(step_seconds);
    DateTime::from_timestamp(slot * step_seconds + offset_seconds, 0).unwrap_or(now)
}

/// Serializes a response document; our own structs always serialize.
pub(crate) fn to_json<T: serde::Serialize>(document: &T) -> Answer {
    match serde_json::to_vec_pretty(document) {
        Ok(body) => Answer::json(body),
        Err(error) => Answer::text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("edge-sim could not encode the document: {error}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn etag_is_a_quoted_stable_hash_of_the_body() {
        let etag = etag_of(b"{\"a\":1}");
        assert_eq!(etag, etag_of(b"{\"a\":1}"));
        assert_ne!(etag, etag_of(b"{\"a\":2}"));
        assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() == 26);
    }

    #[test]
    fn if_none_match_accepts_lists_weak_tags_and_star() {
        let etag = "\"abc\"";
        assert!(if_none_match_hits("\"abc\"", etag));
        assert!(if_none_match_hits("\"x\", W/\"abc\"", etag));
        assert!(if_none_match_hits("*", etag));
        assert!(!if_none_match_hits("\"abd\"", etag));
    }

    #[test]
    fn conditional_answers_304_to_a_matching_validator_only() {
        let answer = Answer::json(b"{}".to_vec());
        let fresh = conditional(&HeaderMap::new(), answer.clone());
        assert_eq!(fresh.status(), StatusCode::OK);
        let etag = fresh.headers().get(ETAG).expect("an etag").clone();

        let mut headers = HeaderMap::new();
        headers.insert(IF_NONE_MATCH, etag.clone());
        let cached = conditional(&headers, answer.clone());
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(cached.headers().get(ETAG), Some(&etag));

        headers.insert(IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert_eq!(conditional(&headers, answer).status(), StatusCode::OK);

        let refused = Answer::text(StatusCode::UNAUTHORIZED, "no");
        let response = conditional(&HeaderMap::new(), refused);
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(
            response.headers().get(ETAG).is_none(),
            "errors carry no etag"
        );
    }

    #[test]
    fn stable_hash_is_pinned() {
        // FNV-1a of "a" followed by the 0xff separator; a change here changes every value.
        assert_eq!(stable_hash(&["a"]), 0x089b_c907_b544_c769_u64);
        assert_ne!(stable_hash(&["ab", "c"]), stable_hash(&["a", "bc"]));
        let value = unit("Tathra", "height");
        assert!((0.0..1.0).contains(&value));
    }

    /// Every upstream, at instants spread over a year (both daylight-saving switches, every
    /// season and hour): the real parsers reject nothing and every value stays in range.
    #[test]
    fn a_year_of_responses_parses_and_stays_plausible() {
        let start = Utc
            .with_ymd_and_hms(2025, 1, 1, 0, 0, 0)
            .single()
            .expect("time");
        let within = |value: Option<f64>, low: f64, high: f64| {
            value.is_some_and(|value| (low..=high).contains(&value))
        };
        for step in 0..120 {
            let now = start + chrono::Duration::minutes(step * (73 * 60 + 13));
            let wave = imos::get_feature(
                &[
                    ("request".to_owned(), "GetFeature".to_owned()),
                    ("typeName".to_owned(), imos::LAYER.to_owned()),
                    ("outputFormat".to_owned(), "application/json".to_owned()),
                ],
                now,
            );
            let wave = feeds::imos::parse(&wave.body).expect("wave parses");
            assert!(wave.rejected.is_empty(), "{now}: {:?}", wave.rejected);
            for observation in &wave.observations {
                if observation.site != "cable-beach" {
                    assert!(
                        within(observation.wave_height_m, 0.3, 4.0),
                        "{observation:?}"
                    );
                    assert!(
                        within(observation.mean_period_s, 4.0, 16.0),
                        "{observation:?}"
                    );
                }
                assert!(
                    within(observation.peak_period_s, 4.0, 16.0),
                    "{observation:?}"
                );
                assert!(
                    within(observation.wave_direction_deg, 0.0, 360.0),
                    "{observation:?}"
                );
            }
            for answer in [
                bom::legacy_product("IDT60801", "IDT60801.94970.json", now),
                bom::legacy_product("IDD60801", "IDD60801.94120.json", now),
                bom::v1_observations("r3gx2g", now),
                bom::v1_observations("qvv117", now),
            ] {
                let weather = feeds::bom::parse(&answer.body, None).expect("weather parses");
                assert!(weather.rejected.is_empty(), "{now}: {:?}", weather.rejected);
                for observation in &weather.observations {
                    assert!(within(observation.air_temp_c, 5.0, 35.0), "{observation:?}");
                    assert!(
                        within(observation.rel_humidity_pct, 30.0, 100.0),
                        "{observation:?}"
                    );
                    assert!(
                        within(observation.wind_speed_ms, 0.0, 15.0),
                        "{observation:?}"
                    );
                    assert!(observation
                        .pressure_hpa
                        .is_none_or(|p| (995.0..=1030.0).contains(&p)));
                }
            }
            for zone in ["AU-NSW", "AU-SA", "DE", "FR"] {
                let params = [("zone".to_owned(), zone.to_owned())];
                let answer = electricitymaps::carbon_intensity("history", &params, now);
                let carbon =
                    feeds::electricitymaps::parse(&answer.body, Some(zone)).expect("parses");
                assert!(carbon.rejected.is_empty(), "{now}: {:?}", carbon.rejected);
                assert_eq!(carbon.observations.len(), electricitymaps::HISTORY_HOURS);
                for record in &carbon.observations {
                    assert!((50.0..=800.0).contains(&record.carbon_intensity_g_per_kwh));
                }
            }
        }
    }

    #[test]
    fn grid_points_are_at_or_before_now() {
        let now = Utc
            .with_ymd_and_hms(2025, 5, 5, 1, 44, 59)
            .single()
            .expect("time");
        let half_hour_at_ten = latest_grid_point(now, 1800, 600);
        assert_eq!(
            half_hour_at_ten,
            Utc.with_ymd_and_hms(2025, 5, 5, 1, 40, 0)
                .single()
                .expect("time")
        );
        assert_eq!(
            latest_grid_point(half_hour_at_ten, 1800, 600),
            half_hour_at_ten
        );
        assert_eq!(
            latest_grid_point(now, 3600, 0),
            Utc.with_ymd_and_hms(2025, 5, 5, 1, 0, 0)
                .single()
                .expect("time")
        );
    }
}
