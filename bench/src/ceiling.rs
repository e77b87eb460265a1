//! What the servers allow on this machine when both run at once: the raw consume (1) feeding
//! the raw insert (2) concurrently, with none of a sink's own work in between (no decoding,
//! no row building, no acks, no position records; the rows are built before the clock starts).
//!
//! The sink's target is a share of min(1, 2), each measured alone. On a machine whose cores
//! are shared by nats-server, ClickHouse and the sink, both servers working at once may not
//! reach that minimum even for a reader that does nothing; this phase measures that ceiling,
//! so the sink's ratio can be read against what any reader could have done here.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use sink_clickhouse::rows::WaveRow;
use tokio::sync::mpsc;

use crate::warehouse;

/// What the concurrent pipeline moved.
pub struct Piped {
    /// Messages read, and rows written (the same number).
    pub rows: u64,
    /// INSERT statements.
    pub inserts: u64,
    /// From the first pull request to the end of the last INSERT.
    pub seconds: f64,
}

/// Reads the first `rows.len()` messages of `WAVE` with a new `AckPolicy::None` pull
/// consumer (`pull_batch` per request) and, for every `insert_batch` messages read, INSERTs
/// the same messages' rows from `rows` (row `i` is stream sequence `i + 1`) on another task,
/// at most one INSERT waiting while one runs: the sink's own hand-off between its reader and
/// its writer.
///
/// # Errors
///
/// When the consumer cannot be created, the pull ends early or an INSERT fails.
pub async fn raw_pipeline(
    jetstream: &jetstream::Context,
    clickhouse_url: &str,
    database: &str,
    rows: Arc<Vec<WaveRow>>,
    pull_batch: usize,
    insert_batch: usize,
) -> anyhow::Result<Piped> {
    let name = "bench-pipeline";
    let count = rows.len() as u64;
    let stream = crate::stream::wave_stream(jetstream).await?;
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.to_owned()),
            ack_policy: consumer::AckPolicy::None,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating consumer {name}"))?;
    let (ranges, mut received) = mpsc::channel::<Range<usize>>(1);
    let client = warehouse::client(clickhouse_url, database);
    let inserter_rows = Arc::clone(&rows);
    let started = Instant::now();
    let inserter = tokio::spawn(async move {
        let mut inserts = 0_u64;
        while let Some(range) = received.recv().await {
            warehouse::insert_rows(&client, &inserter_rows[range]).await?;
            inserts += 1;
        }
        anyhow::Ok(inserts)
    });
    let mut messages = crate::stream::pull(&consumer, pull_batch).await?;
    let step = insert_batch.max(1) as u64;
    let mut read = 0_u64;
    let mut cut = 0_u64;
    while read < count {
        match messages.next().await {
            Some(Ok(_message)) => read += 1,
            Some(Err(error)) => {
                tracing::warn!(%error, consumer = name, "pull interrupted");
                continue;
            }
            None => bail!("pull of consumer {name} ended after {read} of {count} messages"),
        }
        if read - cut >= step || read == count {
            // The inserter only stops early on a failed INSERT, reported below.
            if ranges.send(cut as usize..read as usize).await.is_err() {
                break;
            }
            cut = read;
        }
    }
    drop(ranges);
    drop(messages);
    let inserts = inserter
        .await
        .context("the inserting task panicked")?
        .context("an INSERT of the pipeline failed")?;
    let seconds = started.elapsed().as_secs_f64();
    if let Err(error) = stream.delete_consumer(name).await {
        tracing::warn!(%error, consumer = name, "cannot delete the benchmark consumer");
    }
    if cut != count {
        bail!("the pipeline wrote {cut} of {count} rows");
    }
    Ok(Piped {
        rows: count,
        inserts,
        seconds,
    })
}
