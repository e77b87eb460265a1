//! The poll loop shared by `ingest-wave`, `ingest-wx` and `ingest-carbon`.
//!
//! A binary describes its upstream as a [`Feed`]: which URLs to poll (one [`Target`] per site or
//! zone) and how to parse a response (with the `feeds` crate). This crate does the rest, once:
//!
//! ```text
//!  per target, every interval:
//!   rate limiter ─► GET (timeout, User-Agent, ETag/Last-Modified) ─► retry 5xx/429/timeouts
//!        │                                                             (backoff, Retry-After)
//!        ▼
//!   parse ─► drop records the cursor has seen ─► publish each (Nats-Msg-Id, wait for ack)
//!        │
//!        ▼
//!   cursor compare-and-set in JetStream KV ─► remember ETag ─► mark success (readiness)
//! ```
//!
//! Layout:
//! - [`config`]: the flags every poller shares ([`PollArgs`], [`ServiceArgs`]);
//! - [`fetch`]: the HTTP side (rate limit, conditional requests, retries, size limit);
//! - [`cursor`]: the per-target [`Cursor`] and its KV store;
//! - [`feed`]: the [`Feed`] trait and [`Target`];
//! - [`service`]: `run` (the loop above, per target) and `parse` (print a saved response);
//! - [`events`]: metrics and log lines, emitted together.
//!
//! Invariant: a target's cursor and its conditional-request validators advance only after
//! every event of the response is acknowledged by JetStream. A crash anywhere republishes at
//! most what JetStream's duplicate window then drops, and loses nothing.

pub mod config;
pub mod cursor;
pub mod events;
pub mod feed;
pub mod fetch;
pub mod service;

pub use config::{FeedDefaults, PollArgs, PollSettings, ServiceArgs};
pub use cursor::{Cursor, CursorStore};
pub use feed::{Feed, Target};
pub use service::{parse_file, run_service};
