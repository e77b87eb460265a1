//! Simulated Bureau of Meteorology observations (`docs/formats.md` §1): the legacy product JSON
//! (`/fwo/{product}/{product}.{wmo}.json`) and the v1 API's nearest-station observation
//! (`/v1/locations/{geohash}/observations`).
//!
//! **Legacy products.** `{"observations": {"notice": [..], "header": [..], "data": [..]}}` with
//! 48 records 30 minutes apart (on the hour and half hour), newest first (`sort_order` 0), the
//! newest being the last half hour at least 11 minutes old (the product is "issued" 11 minutes
//! after its newest record, as in the genuine sample). Records carry the full key set of the
//! state products (IDV60801 style): `aifstime_utc` (UTC), `local_date_time_full` and
//! `local_date_time` in the station's local time with Australian daylight saving applied per
//! state, wind in km/h *and* knots (both rounded from one speed, so they agree), a compass
//! `wind_dir`, `press`/`press_qnh`/`press_msl`, `rel_hum`, `air_temp`, `apparent_t`, `dewpt`,
//! `delta_t`, `rain_trace` as text, `"-"` in the text fields the real products leave empty,
//! `null` cloud numbers and `null` swell. Any product id of the real form (`IDN60901`) and any
//! WMO number is served; the state (and so the time zone) comes from the product's third
//! letter. A few stations have their real names and positions; others get a generic name at
//! the state capital.
//!
//! **v1 API.** `{"metadata": {response_timestamp, issue_time, observation_time, copyright},
//! "data": {...}}` holding the latest observation on a 10-minute grid (published 2 minutes
//! after the observation), with `max_temp`, `min_temp`, `max_gust` and `rain_since_9am` over
//! the samples since 9 am local time. Known geohashes map to real stations (`qvv117` → Darwin
//! Airport, `bom_id` "014015"); any other valid 6- or 7-character geohash gets a simulated
//! station at its decoded position.
//!
//! Every value is a pure function of (station, observation time).

use axum::http::StatusCode;
use chrono::{
    DateTime, Datelike, Duration, FixedOffset, NaiveDate, NaiveTime, Timelike, Utc, Weekday,
};
use serde::Serialize;

use super::{
    cycle, epoch_seconds, latest_grid_point, phase, round_to, stable_hash, to_json, unit, Answer,
    DAY, HOUR,
};

/// Seconds between two records of a legacy product.
pub const LEGACY_STEP_SECONDS: i64 = 1800;
/// Records in a legacy product: 24 hours of half hours.
pub const LEGACY_RECORDS: usize = 48;
/// How long after its newest record a legacy product is issued.
pub const LEGACY_ISSUE_DELAY_MINUTES: i64 = 11;
/// Seconds between two v1 observations.
pub const V1_STEP_SECONDS: i64 = 600;
/// How long after the observation the v1 API serves it.
pub const V1_PUBLISH_DELAY_SECONDS: i64 = 120;

const COPYRIGHT_LEGACY_YEAR_PREFIX: &str = "Copyright Commonwealth of Australia ";
const COPYRIGHT_LEGACY_SUFFIX: &str = ", Bureau of Meteorology. For more information see: \
     http://www.bom.gov.au/other/copyright.shtml http://www.bom.gov.au/other/disclaimer.shtml";
const COPYRIGHT_V1: &str = "This Application Programming Interface (API) is owned by the Bureau \
     of Meteorology (Bureau). You must not use, copy or share it. Please contact us for more \
     information on ways in which you can access our data. Follow this link \
     http://www.bom.gov.au/inside/contacts.shtml to view our contact details.";

const COMPASS: [&str; 16] = [
    "N", "NNE", "NE", "ENE", "E", "ESE", "SE", "SSE", "S", "SSW", "SW", "WSW", "W", "WNW", "NW",
    "NNW",
];

// ---- time zones ----

/// The Australian time-zone rules a station follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeZoneRule {
    /// NSW, ACT, Victoria, Tasmania: UTC+10, daylight saving UTC+11.
    Eastern,
    /// Queensland: UTC+10, no daylight saving.
    Queensland,
    /// South Australia: UTC+9:30, daylight saving UTC+10:30.
    Central,
    /// Northern Territory: UTC+9:30, no daylight saving.
    NorthernTerritory,
    /// Western Australia: UTC+8, no daylight saving.
    Western,
}

impl TimeZoneRule {
    fn standard_offset_seconds(self) -> i32 {
        match self {
            TimeZoneRule::Eastern | TimeZoneRule::Queensland => 10 * 3600,
            TimeZoneRule::Central | TimeZoneRule::NorthernTerritory => 9 * 3600 + 1800,
            TimeZoneRule::Western => 8 * 3600,
        }
    }

    fn observes_daylight_saving(self) -> bool {
        matches!(self, TimeZoneRule::Eastern | TimeZoneRule::Central)
    }

    /// Whether daylight saving is in force at `utc`: from the first Sunday of October,
    /// 2:00 standard time, to the first Sunday of April, 3:00 daylight time.
    pub fn is_daylight_saving(self, utc: DateTime<Utc>) -> bool {
        if !self.observes_daylight_saving() {
            return false;
        }
        let standard =
            utc.naive_utc() + Duration::seconds(i64::from(self.standard_offset_seconds()));
        let two_am = NaiveTime::from_hms_opt(2, 0, 0).unwrap_or_default();
        let first_sunday = |month: u32| {
            NaiveDate::from_weekday_of_month_opt(standard.year(), month, Weekday::Sun, 1)
                .map(|date| date.and_time(two_am))
        };
        match (first_sunday(10), first_sunday(4)) {
            (Some(starts), Some(ends)) => standard >= starts || standard < ends,
            _ => false,
        }
    }

    /// `utc` as local time, with the abbreviation BOM prints (`EST`, `EDT`, `CST`, `CDT`, `WST`).
    pub fn local(self, utc: DateTime<Utc>) -> (DateTime<FixedOffset>, &'static str) {
        let daylight = self.is_daylight_saving(utc);
        let offset = self.standard_offset_seconds() + if daylight { 3600 } else { 0 };
        let abbreviation = match (self, daylight) {
            (TimeZoneRule::Eastern | TimeZoneRule::Queensland, false) => "EST",
            (TimeZoneRule::Eastern | TimeZoneRule::Queensland, true) => "EDT",
            (TimeZoneRule::Central | TimeZoneRule::NorthernTerritory, false) => "CST",
            (TimeZoneRule::Central | TimeZoneRule::NorthernTerritory, true) => "CDT",
            (TimeZoneRule::Western, _) => "WST",
        };
        // Offsets below a day are always valid; UTC is an unreachable fallback.
        let zone = FixedOffset::east_opt(offset).unwrap_or(*utc.fixed_offset().offset());
        (utc.with_timezone(&zone), abbreviation)
    }

    /// The latest 9 am local time at or before `utc` (the start of BOM's rainfall day).
    fn nine_am_before(self, utc: DateTime<Utc>) -> DateTime<Utc> {
        let (local, _) = self.local(utc);
        let nine = NaiveTime::from_hms_opt(9, 0, 0).unwrap_or_default();
        let day = if local.hour() >= 9 {
            local.date_naive()
        } else {
            local.date_naive().pred_opt().unwrap_or(local.date_naive())
        };
        let naive =
            day.and_time(nine) - Duration::seconds(i64::from(local.offset().local_minus_utc()));
        naive.and_utc()
    }
}

/// An Australian state or territory, as the legacy products name it.
#[derive(Debug, Clone, Copy)]
struct State {
    code: &'static str,
    name: &'static str,
    zone: TimeZoneRule,
    /// The capital's position, for stations without a known one.
    capital: [f64; 2],
}

/// The state of a product id such as `IDN60901` (its third letter), if it is of the real form.
fn product_state(product: &str) -> Option<State> {
    let well_formed = product.len() == 8
        && product.starts_with("ID")
        && product[3..].chars().all(|c| c.is_ascii_digit());
    if !well_formed {
        return None;
    }
    let state = match product.as_bytes()[2] {
        b'N' => State {
            code: "NSW",
            name: "New South Wales",
            zone: TimeZoneRule::Eastern,
            capital: [-33.9, 151.2],
        },
        b'V' => State {
            code: "VIC",
            name: "Victoria",
            zone: TimeZoneRule::Eastern,
            capital: [-37.8, 145.0],
        },
        b'T' => State {
            code: "TAS",
            name: "Tasmania",
            zone: TimeZoneRule::Eastern,
            capital: [-42.9, 147.3],
        },
        b'Q' => State {
            code: "QLD",
            name: "Queensland",
            zone: TimeZoneRule::Queensland,
            capital: [-27.5, 153.0],
        },
        b'S' => State {
            code: "SA",
            name: "South Australia",
            zone: TimeZoneRule::Central,
            capital: [-34.9, 138.6],
        },
        b'D' => State {
            code: "NT",
            name: "Northern Territory",
            zone: TimeZoneRule::NorthernTerritory,
            capital: [-12.4, 130.9],
        },
        b'W' => State {
            code: "WA",
            name: "Western Australia",
            zone: TimeZoneRule::Western,
            capital: [-31.9, 116.0],
        },
        _ => return None,
    };
    Some(state)
}

// ---- stations ----

/// A station of the legacy products with its real name and position.
struct LegacyStation {
    wmo: u32,
    name: &'static str,
    lat: f64,
    lon: f64,
    elevation_m: f64,
}

const LEGACY_STATIONS: [LegacyStation; 9] = [
    LegacyStation {
        wmo: 94768,
        name: "Sydney - Observatory Hill",
        lat: -33.9,
        lon: 151.2,
        elevation_m: 39.0,
    },
    LegacyStation {
        wmo: 94767,
        name: "Sydney Airport",
        lat: -33.9,
        lon: 151.2,
        elevation_m: 6.0,
    },
    LegacyStation {
        wmo: 94254,
        name: "Mornington Island Airport",
        lat: -16.7,
        lon: 139.2,
        elevation_m: 9.0,
    },
    LegacyStation {
        wmo: 94926,
        name: "Canberra",
        lat: -35.3,
        lon: 149.2,
        elevation_m: 578.0,
    },
    LegacyStation {
        wmo: 94120,
        name: "Darwin Airport",
        lat: -12.4,
        lon: 130.9,
        elevation_m: 30.0,
    },
    LegacyStation {
        wmo: 94610,
        name: "Perth Airport",
        lat: -31.9,
        lon: 116.0,
        elevation_m: 15.0,
    },
    LegacyStation {
        wmo: 95936,
        name: "Melbourne (Olympic Park)",
        lat: -37.8,
        lon: 145.0,
        elevation_m: 8.0,
    },
    LegacyStation {
        wmo: 94970,
        name: "Hobart (Ellerslie Road)",
        lat: -42.9,
        lon: 147.3,
        elevation_m: 51.0,
    },
    LegacyStation {
        wmo: 94576,
        name: "Brisbane",
        lat: -27.5,
        lon: 153.0,
        elevation_m: 8.0,
    },
];

/// A v1 API location with its nearest real station.
struct ApiLocation {
    geohash: &'static str,
    bom_id: &'static str,
    station: &'static str,
    distance_m: u32,
    lat: f64,
    lon: f64,
    zone: TimeZoneRule,
}

const API_LOCATIONS: [ApiLocation; 5] = [
    ApiLocation {
        geohash: "qvv117",
        bom_id: "014015",
        station: "Darwin Airport",
        distance_m: 6899,
        lat: -12.4633,
        lon: 130.8451,
        zone: TimeZoneRule::NorthernTerritory,
    },
    ApiLocation {
        geohash: "r3dp5h",
        bom_id: "070351",
        station: "Canberra",
        distance_m: 7204,
        lat: -35.3049,
        lon: 149.2014,
        zone: TimeZoneRule::Eastern,
    },
    ApiLocation {
        geohash: "r3gx2g",
        bom_id: "066062",
        station: "Sydney Observatory Hill",
        distance_m: 1210,
        lat: -33.8607,
        lon: 151.2050,
        zone: TimeZoneRule::Eastern,
    },
    ApiLocation {
        geohash: "r36xhf",
        bom_id: "069147",
        station: "Merimbula Airport",
        distance_m: 17650,
        lat: -36.7258,
        lon: 149.9840,
        zone: TimeZoneRule::Eastern,
    },
    ApiLocation {
        geohash: "r22u08",
        bom_id: "094029",
        station: "Hobart (Ellerslie Road)",
        distance_m: 1530,
        lat: -42.8897,
        lon: 147.3278,
        zone: TimeZoneRule::Eastern,
    },
];

const GEOHASH_ALPHABET: &str = "0123456789bcdefghjkmnpqrstuvwxyz";

/// The centre (lat, lon) of a geohash, or `None` when it holds a character outside the alphabet.
pub fn decode_geohash(geohash: &str) -> Option<(f64, f64)> {
    let (mut lat, mut lon) = ((-90.0_f64, 90.0_f64), (-180.0_f64, 180.0_f64));
    let mut even = true;
    for character in geohash.chars() {
        let value = GEOHASH_ALPHABET.find(character)?;
        for bit in (0..5).rev() {
            let range = if even { &mut lon } else { &mut lat };
            let middle = (range.0 + range.1) / 2.0;
            if value >> bit & 1 == 1 {
                range.0 = middle;
            } else {
                range.1 = middle;
            }
            even = !even;
        }
    }
    Some(((lat.0 + lat.1) / 2.0, (lon.0 + lon.1) / 2.0))
}

/// A rough Australian time-zone rule for a position (for simulated stations only).
fn zone_at(lat: f64, lon: f64) -> TimeZoneRule {
    if lon < 129.0 {
        TimeZoneRule::Western
    } else if lon < 138.0 && lat > -26.0 {
        TimeZoneRule::NorthernTerritory
    } else if lon < 141.0 {
        TimeZoneRule::Central
    } else if lat > -29.0 {
        TimeZoneRule::Queensland
    } else {
        TimeZoneRule::Eastern
    }
}

// ---- values ----

/// What a station measured at one instant, before the formats round and convert it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weather {
    /// Air temperature, °C (5–35).
    pub air_temp_c: f64,
    /// Relative humidity, % (30–100).
    pub rel_hum_pct: f64,
    /// Mean-sea-level pressure, hPa (995–1030).
    pub press_msl_hpa: f64,
    /// Mean wind speed, m/s (1.5–14).
    pub wind_ms: f64,
    /// Gust speed, m/s.
    pub gust_ms: f64,
    /// Direction the wind comes from, degrees true.
    pub wind_from_deg: f64,
}

/// The weather of station `seed` at (`lat`, `lon`) at `at`: a pure function of the three.
///
/// Temperature follows latitude (warm tropics), the season (southern summer in January), the
/// local solar day (warmest at 15:00) and a 4.7-day synoptic cycle; humidity falls as the day
/// warms; pressure swings with 5.3- and 2.2-day systems plus the semi-diurnal tide; wind has a
/// 2.9-day cycle and an afternoon sea breeze.
pub fn weather(seed: &str, lat: f64, lon: f64, at: DateTime<Utc>) -> Weather {
    let seconds = epoch_seconds(at);
    let solar_hours = (seconds / HOUR + lon / 15.0).rem_euclid(24.0);
    let diurnal = (std::f64::consts::TAU * (solar_hours - 15.0) / 24.0).cos();
    let day_of_year = f64::from(at.ordinal0());
    let season = (std::f64::consts::TAU * (day_of_year - 20.0) / 365.25).cos();
    let abs_lat = lat.abs();
    let tropical = abs_lat < 20.0;

    let annual_mean = 29.0 - 0.45 * (abs_lat - 12.0);
    let seasonal_amplitude = 1.5 + 0.12 * (abs_lat - 12.0).max(0.0);
    let temperature = annual_mean
        + seasonal_amplitude * season
        + 4.0 * diurnal
        + 2.5 * cycle(seconds, 4.7 * DAY, phase(seed, "synoptic-temperature"));
    let humidity = if tropical { 74.0 } else { 62.0 }
        + 14.0 * cycle(seconds, 3.9 * DAY, phase(seed, "humidity"))
        - 12.8 * diurnal;
    let pressure = if tropical { 1010.5 } else { 1014.5 }
        + 7.0 * cycle(seconds, 5.3 * DAY, phase(seed, "pressure-system"))
        + 3.0 * cycle(seconds, 2.2 * DAY, phase(seed, "pressure-trough"))
        + 1.1 * (std::f64::consts::TAU * (solar_hours - 10.0) / 12.0).cos();
    let wind = 6.5
        + 3.5 * cycle(seconds, 2.9 * DAY, phase(seed, "wind"))
        + 1.8 * diurnal.max(0.0)
        + 1.0 * cycle(seconds, 7.0 * HOUR, phase(seed, "wind-gusty"));
    let wind = wind.clamp(1.5, 14.0);
    let gust = wind * (1.3 + 0.12 * cycle(seconds, 3.0 * HOUR, phase(seed, "gust"))) + 1.0;
    let direction = 360.0 * unit(seed, "wind-direction")
        + 70.0 * cycle(seconds, 3.7 * DAY, phase(seed, "wind-veer"))
        + 25.0 * diurnal;
    Weather {
        air_temp_c: round_to(temperature.clamp(5.0, 35.0), 1),
        rel_hum_pct: humidity.clamp(30.0, 100.0).round(),
        press_msl_hpa: round_to(pressure.clamp(995.0, 1030.0), 1),
        wind_ms: wind,
        gust_ms: gust,
        wind_from_deg: direction.rem_euclid(360.0),
    }
}

/// Rain in mm between `from` (exclusive) and `to` (inclusive), summed over `step_seconds` slots
/// of a rate that is zero most of the time (a shower spell every few days).
fn rain_mm(seed: &str, from: DateTime<Utc>, to: DateTime<Utc>, step_seconds: i64) -> f64 {
    let mut total = 0.0;
    let mut slot = to;
    while slot > from {
        let seconds = epoch_seconds(slot);
        let spell = (cycle(seconds, 3.3 * DAY, phase(seed, "rain")) - 0.8).max(0.0);
        let rate_mm_per_hour =
            6.0 * spell * (0.5 + 0.5 * cycle(seconds, 5.0 * HOUR, phase(seed, "shower")));
        total += rate_mm_per_hour * step_seconds as f64 / HOUR;
        slot -= Duration::seconds(step_seconds);
    }
    round_to(total, 1)
}

/// Speed in whole km/h.
fn kmh(speed_ms: f64) -> i64 {
    (speed_ms * 3.6).round() as i64
}

/// Speed in whole knots.
fn knots(speed_ms: f64) -> i64 {
    (speed_ms * 3600.0 / 1852.0).round() as i64
}

fn compass(degrees: f64) -> &'static str {
    let index = (degrees.rem_euclid(360.0) / 22.5).round() as usize % COMPASS.len();
    COMPASS[index]
}

/// Vapour pressure, hPa.
fn vapour_pressure(temperature: f64, humidity: f64) -> f64 {
    humidity / 100.0 * 6.105 * (17.27 * temperature / (237.7 + temperature)).exp()
}

/// BOM's apparent temperature (Steadman, without radiation), °C.
fn apparent_temperature(temperature: f64, humidity: f64, wind_ms: f64) -> f64 {
    round_to(
        temperature + 0.33 * vapour_pressure(temperature, humidity) - 0.70 * wind_ms - 4.0,
        1,
    )
}

/// Dew point (Magnus), °C.
fn dew_point(temperature: f64, humidity: f64) -> f64 {
    let gamma = (humidity / 100.0).ln() + 17.62 * temperature / (243.12 + temperature);
    round_to(243.12 * gamma / (17.62 - gamma), 1)
}

/// Wet-bulb depression (Stull's wet-bulb formula), °C.
fn wet_bulb_depression(temperature: f64, humidity: f64) -> f64 {
    let wet_bulb = temperature * (0.151_977 * (humidity + 8.313_659).sqrt()).atan()
        + (temperature + humidity).atan()
        - (humidity - 1.676_331).atan()
        + 0.003_918_38 * humidity.powf(1.5) * (0.023_101 * humidity).atan()
        - 4.686_035;
    round_to((temperature - wet_bulb).max(0.0), 1)
}

// ---- legacy products ----

#[derive(Serialize)]
struct LegacyDocument {
    observations: LegacyObservations,
}

#[derive(Serialize)]
struct LegacyObservations {
    notice: [Notice; 1],
    header: [Header; 1],
    data: Vec<LegacyRecord>,
}

#[derive(Serialize)]
struct Notice {
    copyright: String,
    copyright_url: &'static str,
    disclaimer_url: &'static str,
    feedback_url: &'static str,
}

#[derive(Serialize)]
struct Header {
    refresh_message: String,
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "main_ID")]
    main_id: String,
    name: String,
    state_time_zone: &'static str,
    time_zone: &'static str,
    product_name: &'static str,
    state: &'static str,
}

/// One record, with the key set of the full state products.
#[derive(Serialize)]
struct LegacyRecord {
    sort_order: usize,
    wmo: u32,
    name: String,
    history_product: String,
    local_date_time: String,
    local_date_time_full: String,
    aifstime_utc: String,
    lat: f64,
    lon: f64,
    apparent_t: f64,
    cloud: &'static str,
    cloud_base_m: Option<i64>,
    cloud_oktas: Option<i64>,
    cloud_type_id: Option<i64>,
    cloud_type: &'static str,
    delta_t: f64,
    gust_kmh: i64,
    gust_kt: i64,
    air_temp: f64,
    dewpt: f64,
    press: f64,
    press_qnh: f64,
    press_msl: f64,
    press_tend: &'static str,
    rain_trace: String,
    rel_hum: i64,
    sea_state: &'static str,
    swell_dir_worded: &'static str,
    swell_height: Option<f64>,
    swell_period: Option<f64>,
    vis_km: &'static str,
    weather: &'static str,
    wind_dir: &'static str,
    wind_spd_kmh: i64,
    wind_spd_kt: i64,
}

/// The record times of a legacy product served at `now`, newest first.
pub fn legacy_record_times(now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let newest = latest_grid_point(
        now - Duration::minutes(LEGACY_ISSUE_DELAY_MINUTES),
        LEGACY_STEP_SECONDS,
        0,
    );
    (0..LEGACY_RECORDS)
        .map(|step| newest - Duration::seconds(LEGACY_STEP_SECONDS * step as i64))
        .collect()
}

/// Answers `GET /fwo/{product}/{file}` at `now`; `file` must be `{product}.{wmo}.json`.
///
/// A product id not of the real form (`ID` + state letter + five digits), a file naming
/// another product, or a WMO number that is not 1–6 digits is `404`, as BOM answers for
/// files it does not have.
pub fn legacy_product(product: &str, file: &str, now: DateTime<Utc>) -> Answer {
    let not_found = || {
        Answer::text(
            StatusCode::NOT_FOUND,
            format!("404 Not Found: no observation product /fwo/{product}/{file}\n"),
        )
    };
    let Some(state) = product_state(product) else {
        return not_found();
    };
    let Some(wmo_text) = file
        .strip_prefix(product)
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|rest| rest.strip_suffix(".json"))
    else {
        return not_found();
    };
    let wmo = match wmo_text.parse::<u32>() {
        Ok(wmo)
            if (1..=6).contains(&wmo_text.len())
                && wmo_text.chars().all(|c| c.is_ascii_digit()) =>
        {
            wmo
        }
        _ => return not_found(),
    };
    to_json(&legacy_document(product, state, wmo, now))
}

fn legacy_document(product: &str, state: State, wmo: u32, now: DateTime<Utc>) -> LegacyDocument {
    let known = LEGACY_STATIONS.iter().find(|station| station.wmo == wmo);
    let (name, lat, lon, elevation) = match known {
        Some(station) => (
            station.name.to_owned(),
            station.lat,
            station.lon,
            station.elevation_m,
        ),
        None => (
            format!("Station {wmo}"),
            state.capital[0],
            state.capital[1],
            10.0,
        ),
    };
    let seed = format!("wmo-{wmo}");
    let times = legacy_record_times(now);
    let newest = times.first().copied().unwrap_or(now);
    let issued = newest + Duration::minutes(LEGACY_ISSUE_DELAY_MINUTES);
    let (issued_local, issued_zone) = state.zone.local(issued);
    let data = times
        .iter()
        .enumerate()
        .map(|(sort_order, at)| {
            let weather = weather(&seed, lat, lon, *at);
            let (local, _) = state.zone.local(*at);
            let rain = rain_mm(
                &seed,
                state.zone.nine_am_before(*at),
                *at,
                LEGACY_STEP_SECONDS,
            );
            LegacyRecord {
                sort_order,
                wmo,
                name: name.clone(),
                history_product: product.to_owned(),
                local_date_time: local.format("%d/%I:%M%P").to_string(),
                local_date_time_full: local.format("%Y%m%d%H%M%S").to_string(),
                aifstime_utc: at.format("%Y%m%d%H%M%S").to_string(),
                lat,
                lon,
                apparent_t: apparent_temperature(
                    weather.air_temp_c,
                    weather.rel_hum_pct,
                    weather.wind_ms,
                ),
                cloud: "-",
                cloud_base_m: None,
                cloud_oktas: None,
                cloud_type_id: None,
                cloud_type: "-",
                delta_t: wet_bulb_depression(weather.air_temp_c, weather.rel_hum_pct),
                gust_kmh: kmh(weather.gust_ms),
                gust_kt: knots(weather.gust_ms),
                air_temp: weather.air_temp_c,
                dewpt: dew_point(weather.air_temp_c, weather.rel_hum_pct),
                press: round_to(weather.press_msl_hpa - elevation / 8.3, 1),
                press_qnh: weather.press_msl_hpa,
                press_msl: weather.press_msl_hpa,
                press_tend: "-",
                rain_trace: format!("{rain:.1}"),
                rel_hum: weather.rel_hum_pct as i64,
                sea_state: "-",
                swell_dir_worded: "-",
                swell_height: None,
                swell_period: None,
                vis_km: "10",
                weather: "-",
                wind_dir: compass(weather.wind_from_deg),
                wind_spd_kmh: kmh(weather.wind_ms),
                wind_spd_kt: knots(weather.wind_ms),
            }
        })
        .collect();
    let product_name = match product.get(3..6) {
        Some("607") => "Coastal Weather Observations",
        Some("609") => "Capital City Weather Observations",
        _ => "Weather Observations",
    };
    LegacyDocument {
        observations: LegacyObservations {
            notice: [Notice {
                copyright: format!(
                    "{COPYRIGHT_LEGACY_YEAR_PREFIX}{}{COPYRIGHT_LEGACY_SUFFIX}",
                    issued_local.year()
                ),
                copyright_url: "http://www.bom.gov.au/other/copyright.shtml",
                disclaimer_url: "http://www.bom.gov.au/other/disclaimer.shtml",
                feedback_url: "http://www.bom.gov.au/other/feedback",
            }],
            header: [Header {
                refresh_message: format!(
                    "Issued at {} {issued_zone} {}",
                    issued_local.format("%l:%M %P"),
                    issued_local.format("%A %e %B %Y")
                ),
                id: product.to_owned(),
                main_id: format!("{}0", &product[..product.len() - 1]),
                name,
                state_time_zone: state.code,
                time_zone: issued_zone,
                product_name,
                state: state.name,
            }],
            data,
        },
    }
}

// ---- v1 API ----

#[derive(Serialize)]
struct V1Document {
    metadata: V1Metadata,
    data: V1Observation,
}

#[derive(Serialize)]
struct V1Metadata {
    response_timestamp: String,
    issue_time: String,
    observation_time: String,
    copyright: &'static str,
}

#[derive(Serialize)]
struct V1Observation {
    temp: f64,
    temp_feels_like: f64,
    wind: V1Wind,
    gust: V1Speed,
    max_gust: V1MaxGust,
    max_temp: V1Extreme,
    min_temp: V1Extreme,
    rain_since_9am: f64,
    humidity: i64,
    station: V1Station,
}

#[derive(Serialize)]
struct V1Wind {
    speed_kilometre: i64,
    speed_knot: i64,
    direction: &'static str,
}

#[derive(Serialize)]
struct V1Speed {
    speed_kilometre: i64,
    speed_knot: i64,
}

#[derive(Serialize)]
struct V1MaxGust {
    speed_kilometre: i64,
    speed_knot: i64,
    time: String,
}

#[derive(Serialize)]
struct V1Extreme {
    time: String,
    value: f64,
}

#[derive(Serialize)]
struct V1Station {
    bom_id: String,
    name: String,
    distance: u32,
}

/// The observation time the v1 API serves at `now`: the newest 10-minute mark at least
/// [`V1_PUBLISH_DELAY_SECONDS`] old.
pub fn v1_observation_time(now: DateTime<Utc>) -> DateTime<Utc> {
    latest_grid_point(
        now - Duration::seconds(V1_PUBLISH_DELAY_SECONDS),
        V1_STEP_SECONDS,
        0,
    )
}

/// Answers `GET /v1/locations/{geohash}/observations` at `now`.
///
/// A geohash that is not 6 or 7 characters of the geohash alphabet is `400` with a body in the
/// v1 `{"errors": [...]}` shape (BOM's real error body is not documented).
pub fn v1_observations(geohash: &str, now: DateTime<Utc>) -> Answer {
    let decoded = decode_geohash(geohash).filter(|_| (6..=7).contains(&geohash.len()));
    let Some((lat, lon)) = decoded else {
        let body = serde_json::json!({
            "errors": [{"code": "400", "title": "Invalid Request", "detail": format!("{geohash:?} is not a 6 or 7 character geohash")}]
        });
        return Answer::json_error(StatusCode::BAD_REQUEST, body.to_string().into_bytes());
    };
    let short = &geohash[..6];
    let (bom_id, station_name, distance, lat, lon, zone) =
        match API_LOCATIONS.iter().find(|known| known.geohash == short) {
            Some(known) => (
                known.bom_id.to_owned(),
                known.station.to_owned(),
                known.distance_m,
                known.lat,
                known.lon,
                known.zone,
            ),
            None => {
                let hash = stable_hash(&[short, "station"]);
                (
                    format!("{:06}", 1_000 + hash % 98_000),
                    format!("Simulated station {short}"),
                    (hash >> 20) as u32 % 20_000,
                    lat,
                    lon,
                    zone_at(lat, lon),
                )
            }
        };
    let seed = format!("bom-{bom_id}");
    let observed = v1_observation_time(now);
    let current = weather(&seed, lat, lon, observed);
    let since_nine = zone.nine_am_before(observed);
    let mut samples = Vec::new();
    let mut at = observed;
    while at >= since_nine {
        samples.push((at, weather(&seed, lat, lon, at)));
        at -= Duration::seconds(V1_STEP_SECONDS);
    }
    let iso = |at: DateTime<Utc>| at.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let extreme = |pick: fn(&Weather) -> f64, larger: bool| {
        samples
            .iter()
            .map(|(at, weather)| (*at, pick(weather)))
            .reduce(|best, next| {
                if (larger && next.1 > best.1) || (!larger && next.1 < best.1) {
                    next
                } else {
                    best
                }
            })
            .unwrap_or((observed, pick(&current)))
    };
    let (max_temp_at, max_temp) = extreme(|weather| weather.air_temp_c, true);
    let (min_temp_at, min_temp) = extreme(|weather| weather.air_temp_c, false);
    let (max_gust_at, max_gust) = extreme(|weather| weather.gust_ms, true);
    let document = V1Document {
        metadata: V1Metadata {
            response_timestamp: iso(observed + Duration::seconds(V1_PUBLISH_DELAY_SECONDS)),
            issue_time: iso(observed + Duration::seconds(62)),
            observation_time: iso(observed),
            copyright: COPYRIGHT_V1,
        },
        data: V1Observation {
            temp: current.air_temp_c,
            temp_feels_like: apparent_temperature(
                current.air_temp_c,
                current.rel_hum_pct,
                current.wind_ms,
            ),
            wind: V1Wind {
                speed_kilometre: kmh(current.wind_ms),
                speed_knot: knots(current.wind_ms),
                direction: compass(current.wind_from_deg),
            },
            gust: V1Speed {
                speed_kilometre: kmh(current.gust_ms),
                speed_knot: knots(current.gust_ms),
            },
            max_gust: V1MaxGust {
                speed_kilometre: kmh(max_gust),
                speed_knot: knots(max_gust),
                time: iso(max_gust_at),
            },
            max_temp: V1Extreme {
                time: iso(max_temp_at),
                value: max_temp,
            },
            min_temp: V1Extreme {
                time: iso(min_temp_at),
                value: min_temp,
            },
            rain_since_9am: rain_mm(&seed, since_nine, observed, V1_STEP_SECONDS),
            humidity: current.rel_hum_pct as i64,
            station: V1Station {
                bom_id,
                name: station_name,
                distance,
            },
        },
    };
    to_json(&document)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use schema::WeatherObservation;

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("a test time")
            .with_timezone(&Utc)
    }

    fn parse(answer: &Answer) -> Vec<WeatherObservation> {
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        let parsed = feeds::bom::parse(&answer.body, None).expect("the real parser reads it");
        assert!(
            parsed.rejected.is_empty(),
            "rejected: {:?}",
            parsed.rejected
        );
        assert_eq!(parsed.duplicates, 0);
        parsed.observations
    }

    fn assert_plausible(observation: &WeatherObservation) {
        let within = |value: Option<f64>, low: f64, high: f64| {
            value.is_some_and(|value| (low..=high).contains(&value))
        };
        assert!(within(observation.air_temp_c, 5.0, 35.0), "{observation:?}");
        assert!(
            within(observation.rel_humidity_pct, 30.0, 100.0),
            "{observation:?}"
        );
        assert!(
            within(observation.wind_speed_ms, 0.0, 15.0),
            "{observation:?}"
        );
        assert!(
            within(observation.wind_gust_ms, 0.0, 25.0),
            "{observation:?}"
        );
        assert!(
            observation.wind_gust_ms >= observation.wind_speed_ms,
            "{observation:?}"
        );
        assert!(
            within(observation.wind_direction_deg, 0.0, 360.0),
            "{observation:?}"
        );
        assert_eq!(observation.swell_height_m, None);
        assert_eq!(observation.swell_period_s, None);
    }

    #[test]
    fn legacy_product_parses_with_48_plausible_half_hours() {
        let now = at("2025-01-15T03:40:00Z");
        let observations = parse(&legacy_product("IDN60901", "IDN60901.94768.json", now));
        assert_eq!(observations.len(), LEGACY_RECORDS);
        for observation in &observations {
            assert_eq!(observation.site, "wmo-94768");
            assert_plausible(observation);
            assert!(observation
                .pressure_hpa
                .is_some_and(|p| (995.0..=1030.0).contains(&p)));
            assert_eq!(observation.observed_at.timestamp() % LEGACY_STEP_SECONDS, 0);
        }
        let newest = observations
            .iter()
            .map(|o| o.observed_at)
            .max()
            .expect("records");
        let oldest = observations
            .iter()
            .map(|o| o.observed_at)
            .min()
            .expect("records");
        assert_eq!(
            newest,
            at("2025-01-15T03:00:00Z"),
            "03:30 is not issued until 03:41"
        );
        assert_eq!(newest - oldest, Duration::minutes(30 * 47));
    }

    #[test]
    fn legacy_records_look_like_the_real_product() {
        let now = at("2025-01-15T03:41:00Z");
        let answer = legacy_product("IDN60901", "IDN60901.94768.json", now);
        let document: serde_json::Value = serde_json::from_slice(&answer.body).expect("json");
        let header = &document["observations"]["header"][0];
        assert_eq!(
            header["refresh_message"],
            "Issued at  2:41 pm EDT Wednesday 15 January 2025"
        );
        assert_eq!(header["time_zone"], "EDT");
        assert_eq!(header["main_ID"], "IDN60900");
        assert_eq!(header["name"], "Sydney - Observatory Hill");
        let records = document["observations"]["data"].as_array().expect("data");
        let first = &records[0];
        assert_eq!(first["sort_order"], 0);
        assert_eq!(first["aifstime_utc"], "20250115033000");
        assert_eq!(
            first["local_date_time_full"], "20250115143000",
            "AEDT is UTC+11"
        );
        assert_eq!(first["local_date_time"], "15/02:30pm");
        assert_eq!(records[1]["aifstime_utc"], "20250115030000", "newest first");
        for record in records {
            let kmh = record["wind_spd_kmh"].as_i64().expect("km/h");
            let kt = record["wind_spd_kt"].as_i64().expect("kt");
            assert!(
                (kmh as f64 - kt as f64 * 1.852).abs() <= 1.5,
                "{kmh} km/h vs {kt} kt"
            );
            assert!(record["gust_kmh"].as_i64().expect("gust") >= kmh);
            assert!(COMPASS.contains(&record["wind_dir"].as_str().expect("dir")));
            for placeholder in [
                "cloud",
                "cloud_type",
                "press_tend",
                "sea_state",
                "swell_dir_worded",
                "weather",
            ] {
                assert_eq!(record[placeholder], "-", "{placeholder}");
            }
            assert!(record["swell_height"].is_null() && record["swell_period"].is_null());
            assert!(record["rain_trace"].is_string());
            assert!(record["rel_hum"].is_i64());
        }

        let winter = legacy_product(
            "IDN60901",
            "IDN60901.94768.json",
            at("2025-07-15T03:41:00Z"),
        );
        let winter: serde_json::Value = serde_json::from_slice(&winter.body).expect("json");
        assert_eq!(winter["observations"]["header"][0]["time_zone"], "EST");
        assert_eq!(
            winter["observations"]["data"][0]["local_date_time_full"],
            "20250715133000"
        );
        let queensland = legacy_product("IDQ60701", "IDQ60701.94254.json", now);
        let queensland: serde_json::Value = serde_json::from_slice(&queensland.body).expect("json");
        assert_eq!(
            queensland["observations"]["header"][0]["time_zone"], "EST",
            "no DST in QLD"
        );
        assert_eq!(
            queensland["observations"]["header"][0]["product_name"],
            "Coastal Weather Observations"
        );
    }

    #[test]
    fn legacy_same_instant_is_identical_and_later_keeps_old_values() {
        let now = at("2025-05-05T01:44:59Z");
        let first = legacy_product("IDN60901", "IDN60901.94768.json", now);
        assert_eq!(
            first,
            legacy_product("IDN60901", "IDN60901.94768.json", now)
        );
        let by_key =
            |observations: Vec<WeatherObservation>| -> BTreeMap<DateTime<Utc>, WeatherObservation> {
                observations
                    .into_iter()
                    .map(|o| (o.observed_at, o))
                    .collect()
            };
        let old = by_key(parse(&first));
        let new = by_key(parse(&legacy_product(
            "IDN60901",
            "IDN60901.94768.json",
            now + Duration::minutes(30),
        )));
        let added: Vec<_> = new.keys().filter(|time| !old.contains_key(time)).collect();
        assert_eq!(added.len(), 1);
        for (time, observation) in &new {
            if let Some(before) = old.get(time) {
                assert_eq!(before, observation, "values at {time} changed");
            }
        }
        let temperatures: std::collections::BTreeSet<i64> = new
            .values()
            .filter_map(|o| o.air_temp_c)
            .map(|t| (t * 10.0) as i64)
            .collect();
        assert!(
            temperatures.len() > 10,
            "temperatures vary: {temperatures:?}"
        );
    }

    #[test]
    fn legacy_refuses_files_it_does_not_have() {
        let now = at("2025-05-05T01:44:59Z");
        for (product, file) in [
            ("IDN60901", "IDN60801.94768.json"),
            ("IDN60901", "IDN60901.94768.xml"),
            ("IDN60901", "IDN60901..json"),
            ("IDX60901", "IDX60901.94768.json"),
            ("Sydney", "Sydney.94768.json"),
        ] {
            assert_eq!(
                legacy_product(product, file, now).status,
                StatusCode::NOT_FOUND,
                "{file}"
            );
        }
        // An unknown station of a known state is served under a generic name.
        let unknown = parse(&legacy_product("IDW60801", "IDW60801.12345.json", now));
        assert_eq!(unknown[0].site, "wmo-12345");
    }

    #[test]
    fn v1_serves_the_latest_ten_minute_observation() {
        let now = at("2022-10-07T00:19:26Z");
        let answer = v1_observations("qvv117", now);
        let observations = parse(&answer);
        assert_eq!(observations.len(), 1);
        let observation = &observations[0];
        assert_eq!(observation.site, "bom-014015");
        assert_eq!(observation.observed_at, at("2022-10-07T00:10:00Z"));
        assert_plausible(observation);
        assert_eq!(observation.pressure_hpa, None, "v1 has no pressure");

        let document: serde_json::Value = serde_json::from_slice(&answer.body).expect("json");
        assert_eq!(document["metadata"]["issue_time"], "2022-10-07T00:11:02Z");
        assert_eq!(document["data"]["station"]["bom_id"], "014015");
        let temp = document["data"]["temp"].as_f64().expect("temp");
        assert!(document["data"]["max_temp"]["value"].as_f64().expect("max") >= temp);
        assert!(document["data"]["min_temp"]["value"].as_f64().expect("min") <= temp);

        assert_eq!(
            answer,
            v1_observations("qvv117n", now),
            "7 characters: same location"
        );
        let within_slot = v1_observations("qvv117", now - Duration::seconds(25));
        assert_eq!(answer, within_slot, "unchanged until the next observation");
        let next = parse(&v1_observations("qvv117", now + Duration::minutes(10)));
        assert_eq!(next[0].observed_at, at("2022-10-07T00:20:00Z"));
    }

    #[test]
    fn v1_simulates_unknown_locations_and_refuses_bad_geohashes() {
        let now = at("2022-10-07T00:19:26Z");
        let observations = parse(&v1_observations("r1r0fs", now));
        assert!(observations[0].site.starts_with("bom-"));
        assert_plausible(&observations[0]);
        for bad in ["qvv11", "qvv117na", "qvv11a"] {
            assert_eq!(
                v1_observations(bad, now).status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        let (lat, lon) = decode_geohash("qvv117n").expect("valid");
        assert!(
            (lat + 12.4633).abs() < 0.01 && (lon - 130.845).abs() < 0.01,
            "{lat} {lon}"
        );
    }

    #[test]
    fn daylight_saving_follows_the_australian_rules() {
        let sydney = TimeZoneRule::Eastern;
        // 2025: DST ends Sunday 6 April 03:00 AEDT (16:00Z on the 5th), starts 5 October 02:00 AEST (16:00Z on the 4th).
        assert!(sydney.is_daylight_saving(at("2025-04-05T15:59:59Z")));
        assert!(!sydney.is_daylight_saving(at("2025-04-05T16:00:00Z")));
        assert!(!sydney.is_daylight_saving(at("2025-10-04T15:59:59Z")));
        assert!(sydney.is_daylight_saving(at("2025-10-04T16:00:00Z")));
        assert!(!TimeZoneRule::Queensland.is_daylight_saving(at("2025-01-15T00:00:00Z")));
        let (adelaide, abbreviation) = TimeZoneRule::Central.local(at("2025-01-15T00:00:00Z"));
        assert_eq!(
            (adelaide.format("%H:%M").to_string().as_str(), abbreviation),
            ("10:30", "CDT")
        );
        let nine = TimeZoneRule::Eastern.nine_am_before(at("2025-01-15T03:40:00Z"));
        assert_eq!(nine, at("2025-01-14T22:00:00Z"));
        let before_nine = TimeZoneRule::Eastern.nine_am_before(at("2025-01-14T21:00:00Z"));
        assert_eq!(before_nine, at("2025-01-13T22:00:00Z"));
    }
}
