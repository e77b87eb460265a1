//! Command-line and environment configuration, validated into [`SinkSettings`] before any I/O.

use std::path::PathBuf;
use std::time::Duration;

use runtime::config::{parse_duration, ConfigError, Secret};
use runtime::provision::StreamArgs;
use runtime::{NatsArgs, NatsSettings};
use schema::Kind;

use crate::positions::PositionMode;

/// Default ClickHouse HTTP endpoint.
pub const DEFAULT_CLICKHOUSE_URL: &str = "http://127.0.0.1:8123";
/// Default database holding the event tables.
pub const DEFAULT_DATABASE: &str = "nomadwave";
/// Default rows per INSERT: large, as ClickHouse recommends, far below `max_insert_block_size`.
pub const DEFAULT_BATCH_ROWS: usize = 50_000;
/// Default payload bytes per INSERT.
pub const DEFAULT_BATCH_BYTES: usize = 32 * 1024 * 1024;
/// Default age at which a partial batch is flushed: about one INSERT per second per table.
pub const DEFAULT_FLUSH_INTERVAL: &str = "1s";
/// Default bound on one INSERT.
pub const DEFAULT_INSERT_TIMEOUT: &str = "30s";
/// Default JetStream ack wait; must exceed flush interval plus insert timeout.
pub const DEFAULT_ACK_WAIT: &str = "60s";
/// Default durable consumer name.
pub const DEFAULT_CONSUMER: &str = "sink-clickhouse";
/// Default lease time: a sink that cannot renew its consumer lease for this long stops acking,
/// and another instance takes the consumer over after one and a half times this.
pub const DEFAULT_LEASE_TTL: &str = "10s";
/// ClickHouse's default `max_insert_block_size`; a batch must stay below it to be one block.
pub const MAX_INSERT_BLOCK_SIZE: usize = 1_048_576;

/// ClickHouse connection flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ClickHouseArgs {
    /// ClickHouse HTTP URL.
    #[arg(long, env = "CLICKHOUSE_URL", default_value = DEFAULT_CLICKHOUSE_URL)]
    pub clickhouse_url: String,
    /// Database holding the event tables.
    #[arg(long, env = "CLICKHOUSE_DATABASE", default_value = DEFAULT_DATABASE)]
    pub clickhouse_database: String,
    /// ClickHouse user.
    #[arg(long, env = "CLICKHOUSE_USER", default_value = "default")]
    pub clickhouse_user: String,
    /// ClickHouse password.
    #[arg(long, env = "CLICKHOUSE_PASSWORD", hide_env_values = true)]
    pub clickhouse_password: Option<Secret>,
    /// File holding the ClickHouse password (as rendered by a Vault template).
    #[arg(
        long,
        env = "CLICKHOUSE_PASSWORD_FILE",
        conflicts_with = "clickhouse_password"
    )]
    pub clickhouse_password_file: Option<PathBuf>,
    /// Upper bound on one INSERT or query; a slower one is retried.
    #[arg(long, env = "SINK_INSERT_TIMEOUT", default_value = DEFAULT_INSERT_TIMEOUT, value_parser = parse_duration)]
    pub insert_timeout: Duration,
}

/// Batching flags: a batch is cut at whichever limit comes first.
#[derive(Debug, Clone, clap::Args)]
pub struct BatchArgs {
    /// Maximum rows per INSERT.
    #[arg(long, env = "SINK_BATCH_ROWS", default_value_t = DEFAULT_BATCH_ROWS)]
    pub batch_rows: usize,
    /// Maximum payload bytes per INSERT.
    #[arg(long, env = "SINK_BATCH_BYTES", default_value_t = DEFAULT_BATCH_BYTES)]
    pub batch_bytes: usize,
    /// Maximum age of the oldest message in a batch before it is flushed.
    #[arg(long, env = "SINK_FLUSH_INTERVAL", default_value = DEFAULT_FLUSH_INTERVAL, value_parser = parse_duration)]
    pub flush_interval: Duration,
}

/// JetStream consumer flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsumerArgs {
    /// Durable consumer name (one per sink deployment).
    #[arg(long, env = "SINK_CONSUMER", default_value = DEFAULT_CONSUMER)]
    pub consumer: String,
    /// Streams to consume, comma-separated.
    #[arg(
        long,
        env = "SINK_STREAMS",
        default_value = "WAVE,WEATHER,CARBON",
        value_delimiter = ','
    )]
    pub streams: Vec<String>,
    /// How long JetStream waits for an ack before redelivering.
    #[arg(long, env = "SINK_ACK_WAIT", default_value = DEFAULT_ACK_WAIT, value_parser = parse_duration)]
    pub ack_wait: Duration,
    /// Un-acked messages JetStream lets the consumer hold; defaults to three batches.
    #[arg(long, env = "SINK_MAX_ACK_PENDING")]
    pub max_ack_pending: Option<usize>,
    /// Longest time to drain in-flight batches on shutdown.
    #[arg(long, env = "SINK_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Number of subject partitions the server maps sites into (0: unpartitioned, one
    /// consumer reads every subject).
    #[arg(long, env = "SINK_PARTITIONS", default_value_t = 0)]
    pub partitions: u32,
    /// The partition this instance consumes, 0-based [default: $NOMAD_ALLOC_INDEX].
    #[arg(long, env = "SINK_PARTITION")]
    pub partition: Option<u32>,
    /// How long the consumer lease lasts without renewal (only one sink at a time may ack a
    /// consumer; a second one waits as a standby).
    #[arg(long, env = "SINK_LEASE_TTL", default_value = DEFAULT_LEASE_TTL, value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// How long a re-read's ephemeral consumer may sit unused on the server before it expires
    /// (it is made again from where it stopped if it does, e.g. during a ClickHouse outage).
    #[arg(long, env = "SINK_REREAD_INACTIVE_THRESHOLD", default_value = "60s", value_parser = parse_duration)]
    pub reread_inactive_threshold: Duration,
    /// Who holds the lease, as logs name it; each process also draws its own token, so two
    /// processes with one id are still two holders and a restart after a crash waits like a
    /// standby [default: $NOMAD_ALLOC_ID, else hostname:pid].
    #[arg(long, env = "SINK_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Where read positions live: `acks` (a durable consumer; nats-server tracks every
    /// delivery until its batch is acked) or `table` (an ephemeral consumer without acks; the
    /// table decides what is written, a KV record where to resume; unpartitioned only).
    #[arg(long, env = "SINK_POSITIONS", value_enum, default_value = "acks")]
    pub positions: PositionMode,
}

/// The share of the subjects one sink instance consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// This instance's partition, `0..count`.
    pub index: u32,
    /// How many partitions the server mapping has.
    pub count: u32,
}

impl Partition {
    /// Reads `--partitions`/`--partition`, falling back to `NOMAD_ALLOC_INDEX` (as Nomad sets
    /// it for each allocation of a group with `count = partitions`).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when partitions are on but no valid index is given.
    pub fn from_args(
        args: &ConsumerArgs,
        alloc_index: Option<&str>,
    ) -> Result<Option<Partition>, ConfigError> {
        if args.partitions == 0 {
            if args.partition.is_some() {
                return Err(ConfigError::new(
                    "--partition/SINK_PARTITION",
                    "given without --partitions/SINK_PARTITIONS",
                ));
            }
            return Ok(None);
        }
        let index = match (args.partition, alloc_index) {
            (Some(index), _) => index,
            (None, Some(text)) => text.trim().parse::<u32>().map_err(|_| {
                ConfigError::new("--partition/SINK_PARTITION", format!("NOMAD_ALLOC_INDEX '{text}' is not a number"))
            })?,
            (None, None) => {
                return Err(ConfigError::new(
                    "--partition/SINK_PARTITION",
                    "partitions are on: give this instance's partition (or run it under Nomad, which sets NOMAD_ALLOC_INDEX)",
                ))
            }
        };
        if index >= args.partitions {
            return Err(ConfigError::new(
                "--partition/SINK_PARTITION",
                format!(
                    "partition {index} does not exist with {} partitions (0..{})",
                    args.partitions, args.partitions
                ),
            ));
        }
        Ok(Some(Partition {
            index,
            count: args.partitions,
        }))
    }
}

/// Everything `run` needs, validated.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    /// NATS connection.
    pub nats: NatsSettings,
    /// ClickHouse connection.
    pub clickhouse: ClickHouseSettings,
    /// When to cut a batch.
    pub batch: BatchPolicy,
    /// Consumer settings.
    pub consumer: ConsumerSettings,
    /// Stream retention and dedupe.
    pub streams: runtime::provision::StreamPolicy,
}

/// Validated ClickHouse connection settings.
#[derive(Debug, Clone)]
pub struct ClickHouseSettings {
    /// HTTP URL.
    pub url: String,
    /// Target database.
    pub database: String,
    /// User.
    pub user: String,
    /// Password, if any.
    pub password: Option<Secret>,
    /// Bound on one request.
    pub timeout: Duration,
}

/// When a batch is cut: at `max_rows`, at `max_bytes`, or `max_age` after its first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Rows per INSERT.
    pub max_rows: usize,
    /// Payload bytes per INSERT.
    pub max_bytes: usize,
    /// Age of the oldest message.
    pub max_age: Duration,
}

/// Validated consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Durable name.
    pub durable_name: String,
    /// The durable name before the partition suffix (`<base>-p<N>`).
    pub base_name: String,
    /// Kinds (streams) to consume.
    pub kinds: Vec<Kind>,
    /// Ack wait.
    pub ack_wait: Duration,
    /// Max ack pending, at least one batch.
    pub max_ack_pending: usize,
    /// Drain bound.
    pub drain_timeout: Duration,
    /// The partition this instance consumes; `None` reads every subject.
    pub partition: Option<Partition>,
    /// Lease time of the consumer lease.
    pub lease_ttl: Duration,
    /// Inactivity threshold of a re-read's ephemeral consumer.
    pub reread_inactive_threshold: Duration,
    /// This instance's name in the consumer lease.
    pub instance_id: String,
    /// Where read positions live.
    pub positions: PositionMode,
}

impl ClickHouseSettings {
    /// Validates the ClickHouse flags, reading the password file if one is named.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the flag for a bad URL, database name or password file.
    pub fn from_args(args: &ClickHouseArgs) -> Result<ClickHouseSettings, ConfigError> {
        let url = args.clickhouse_url.trim().trim_end_matches('/').to_owned();
        let valid_url = (url.starts_with("http://") || url.starts_with("https://"))
            && url.split("://").nth(1).is_some_and(|rest| !rest.is_empty());
        if !valid_url {
            return Err(ConfigError::new(
                "--clickhouse-url/CLICKHOUSE_URL",
                format!("'{url}' is not an HTTP URL; expected http://host:8123"),
            ));
        }
        check_identifier(
            "--clickhouse-database/CLICKHOUSE_DATABASE",
            &args.clickhouse_database,
        )?;
        let password = Secret::from_value_or_file(
            args.clickhouse_password.as_ref(),
            args.clickhouse_password_file.as_deref(),
            "--clickhouse-password-file/CLICKHOUSE_PASSWORD_FILE",
        )?;
        Ok(ClickHouseSettings {
            url,
            database: args.clickhouse_database.clone(),
            user: args.clickhouse_user.clone(),
            password,
            timeout: args.insert_timeout,
        })
    }
}

impl SinkSettings {
    /// Validates every flag of `run`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first flag whose value cannot work.
    pub fn from_args(
        nats: &NatsArgs,
        clickhouse: &ClickHouseArgs,
        batch: &BatchArgs,
        consumer: &ConsumerArgs,
        streams: &StreamArgs,
    ) -> Result<SinkSettings, ConfigError> {
        let nats = NatsSettings::from_args(nats)?;
        let clickhouse = ClickHouseSettings::from_args(clickhouse)?;
        if batch.batch_rows == 0 || batch.batch_rows >= MAX_INSERT_BLOCK_SIZE {
            return Err(ConfigError::new(
                "--batch-rows/SINK_BATCH_ROWS",
                format!(
                    "{} is outside 1..{MAX_INSERT_BLOCK_SIZE} (an INSERT must stay one block to be atomic)",
                    batch.batch_rows
                ),
            ));
        }
        if batch.batch_bytes < 1024 {
            return Err(ConfigError::new(
                "--batch-bytes/SINK_BATCH_BYTES",
                format!("{} is below the minimum of 1024", batch.batch_bytes),
            ));
        }
        if batch.flush_interval.is_zero() {
            return Err(ConfigError::new(
                "--flush-interval/SINK_FLUSH_INTERVAL",
                "must be above zero",
            ));
        }
        let needed = batch.flush_interval + clickhouse.timeout;
        if consumer.ack_wait <= needed {
            return Err(ConfigError::new(
                "--ack-wait/SINK_ACK_WAIT",
                format!(
                    "{} must exceed --flush-interval + --insert-timeout ({}), or messages are redelivered while their batch is written",
                    humantime::format_duration(consumer.ack_wait),
                    humantime::format_duration(needed)
                ),
            ));
        }
        let max_ack_pending = consumer.max_ack_pending.unwrap_or(batch.batch_rows * 3);
        if max_ack_pending < batch.batch_rows {
            return Err(ConfigError::new(
                "--max-ack-pending/SINK_MAX_ACK_PENDING",
                format!(
                    "{max_ack_pending} is below --batch-rows ({}); batches could never fill",
                    batch.batch_rows
                ),
            ));
        }
        check_durable_name(&consumer.consumer)?;
        if consumer.lease_ttl < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "--lease-ttl/SINK_LEASE_TTL",
                format!(
                    "{} is below the minimum of 1s",
                    humantime::format_duration(consumer.lease_ttl)
                ),
            ));
        }
        let instance_id = instance_id(
            consumer.instance_id.as_deref(),
            std::env::var("NOMAD_ALLOC_ID").ok().as_deref(),
        );
        let alloc_index = std::env::var("NOMAD_ALLOC_INDEX").ok();
        let partition = Partition::from_args(consumer, alloc_index.as_deref())?;
        if partition.is_some() && consumer.positions == PositionMode::Table {
            return Err(ConfigError::new(
                "--positions/SINK_POSITIONS",
                "`table` resumes from the table's own sequences, which a partition shares with the others: use `acks` with --partitions",
            ));
        }
        let mut kinds = Vec::new();
        for name in &consumer.streams {
            let kind = Kind::from_stream_name(name.trim()).ok_or_else(|| {
                ConfigError::new(
                    "--streams/SINK_STREAMS",
                    format!("unknown stream '{name}'; expected WAVE, WEATHER or CARBON"),
                )
            })?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        if kinds.is_empty() {
            return Err(ConfigError::new(
                "--streams/SINK_STREAMS",
                "no stream given",
            ));
        }
        Ok(SinkSettings {
            nats,
            clickhouse,
            batch: BatchPolicy {
                max_rows: batch.batch_rows,
                max_bytes: batch.batch_bytes,
                max_age: batch.flush_interval,
            },
            consumer: ConsumerSettings {
                durable_name: match partition {
                    Some(partition) => format!("{}-p{}", consumer.consumer, partition.index),
                    None => consumer.consumer.clone(),
                },
                base_name: consumer.consumer.clone(),
                partition,
                kinds,
                ack_wait: consumer.ack_wait,
                max_ack_pending,
                drain_timeout: consumer.drain_timeout,
                lease_ttl: consumer.lease_ttl,
                reread_inactive_threshold: consumer
                    .reread_inactive_threshold
                    .max(Duration::from_secs(1)),
                instance_id,
                positions: consumer.positions,
            },
            streams: streams.policy(),
        })
    }
}

/// The lease holder name: the flag, else the Nomad allocation (a restarted task of the same
/// allocation takes its lease back at once), else this host and process.
fn instance_id(flag: Option<&str>, nomad_alloc_id: Option<&str>) -> String {
    let given = [flag, nomad_alloc_id]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|id| !id.is_empty());
    match given {
        Some(id) => id.to_owned(),
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|name| name.trim().to_owned())
                .unwrap_or_else(|_| "unknown-host".to_owned());
            format!("{host}:{}", std::process::id())
        }
    }
}

fn check_identifier(setting: &'static str, name: &str) -> Result<(), ConfigError> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        return Ok(());
    }
    Err(ConfigError::new(
        setting,
        format!("'{name}' is not a plain identifier ([A-Za-z_][A-Za-z0-9_]*)"),
    ))
}

fn check_durable_name(name: &str) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if valid {
        return Ok(());
    }
    Err(ConfigError::new(
        "--consumer/SINK_CONSUMER",
        format!("'{name}' is not a valid durable name ([A-Za-z0-9_-]+)"),
    ))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    fn check_rejected(args: &[&str], setting: &str) {
        let mut argv = vec!["sink-clickhouse", "run"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("parsed another command")
        };
        let error = run.settings().unwrap_err();
        assert_eq!(error.setting, setting, "{error}");
    }

    #[test]
    fn defaults_are_valid() {
        let cli = Cli::try_parse_from(["sink-clickhouse", "run"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("parsed another command")
        };
        let settings = run.settings().unwrap();
        assert_eq!(settings.consumer.kinds, Kind::ALL.to_vec());
        assert!(settings.consumer.max_ack_pending >= settings.batch.max_rows);
    }

    #[test]
    fn rejects_unworkable_values() {
        check_rejected(
            &["--clickhouse-url", "localhost:8123"],
            "--clickhouse-url/CLICKHOUSE_URL",
        );
        check_rejected(
            &["--clickhouse-database", "a.b"],
            "--clickhouse-database/CLICKHOUSE_DATABASE",
        );
        check_rejected(&["--batch-rows", "0"], "--batch-rows/SINK_BATCH_ROWS");
        check_rejected(&["--batch-rows", "2000000"], "--batch-rows/SINK_BATCH_ROWS");
        check_rejected(&["--ack-wait", "5s"], "--ack-wait/SINK_ACK_WAIT");
        check_rejected(
            &["--batch-rows", "5000", "--max-ack-pending", "1000"],
            "--max-ack-pending/SINK_MAX_ACK_PENDING",
        );
        check_rejected(&["--streams", "TIDES"], "--streams/SINK_STREAMS");
        check_rejected(&["--consumer", "a.b"], "--consumer/SINK_CONSUMER");
        check_rejected(
            &["--clickhouse-password-file", "/nonexistent/password"],
            "--clickhouse-password-file/CLICKHOUSE_PASSWORD_FILE",
        );
        check_rejected(&["--nats-url", "localhost"], "--nats-url/NATS_URL");
        check_rejected(&["--lease-ttl", "500ms"], "--lease-ttl/SINK_LEASE_TTL");
    }

    #[test]
    fn instance_id_prefers_flag_then_nomad_allocation_then_process() {
        assert_eq!(instance_id(Some("blue"), Some("alloc-1")), "blue");
        assert_eq!(instance_id(Some(" "), Some("alloc-1")), "alloc-1");
        let own = instance_id(None, None);
        assert!(own.ends_with(&format!(":{}", std::process::id())), "{own}");
    }
}
