//! Named retry policies built on `backon`, and the one loop that logs and counts retries.
//!
//! `backon` is the maintained successor of the `backoff` crate, which is flagged unmaintained
//! (RUSTSEC-2025-0012). Classification of errors stays with the caller; this module only
//! decides how long to wait and for how many attempts.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// What a failure means for the operation that produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try again later: timeouts, refused connections, 5xx, 429, a server restarting.
    Transient,
    /// Retrying cannot help: bad credentials, missing table, 4xx; surface it to the operator.
    Permanent,
    /// The input itself is bad: dead-letter it and move on.
    Poison,
}

/// A named exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Name used in logs and in the `operation` label of `nomadwave_retries_total`.
    pub operation: &'static str,
    /// First delay.
    pub min_delay: Duration,
    /// Largest delay between attempts.
    pub max_delay: Duration,
    /// Retries before giving up; `None` retries until cancelled (backpressure, not loss).
    pub max_retries: Option<usize>,
}

impl RetryPolicy {
    /// Connecting to a server at startup: a handful of quick attempts.
    pub const CONNECT: RetryPolicy = RetryPolicy {
        operation: "connect",
        min_delay: Duration::from_millis(200),
        max_delay: Duration::from_secs(5),
        max_retries: Some(5),
    };

    /// Publishing to JetStream: retried until it succeeds or shutdown, since giving up would
    /// lose an observation.
    pub const PUBLISH: RetryPolicy = RetryPolicy {
        operation: "publish",
        min_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(10),
        max_retries: None,
    };

    /// Inserting a batch into ClickHouse: retried until it succeeds or shutdown, with the
    /// batch's messages kept un-acked meanwhile.
    pub const INSERT: RetryPolicy = RetryPolicy {
        operation: "insert",
        min_delay: Duration::from_millis(250),
        max_delay: Duration::from_secs(15),
        max_retries: None,
    };

    /// Declaring a JetStream object that another starting process may be creating at the same
    /// moment: a few short waits, then the refusal stands.
    pub const DECLARE: RetryPolicy = RetryPolicy {
        operation: "declare",
        min_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(1),
        max_retries: Some(4),
    };

    /// Polling an upstream HTTP API.
    pub const HTTP: RetryPolicy = RetryPolicy {
        operation: "http",
        min_delay: Duration::from_millis(500),
        max_delay: Duration::from_secs(60),
        max_retries: Some(6),
    };

    /// The same policy under another operation name.
    pub const fn named(self, operation: &'static str) -> RetryPolicy {
        RetryPolicy { operation, ..self }
    }

    /// The `backon` builder for this policy.
    pub fn backoff(&self) -> ExponentialBuilder {
        let builder = ExponentialBuilder::default()
            .with_jitter()
            .with_factor(2.0)
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay);
        match self.max_retries {
            Some(times) => builder.with_max_times(times),
            None => builder.without_max_times(),
        }
    }

    /// The sequence of delays this policy would wait (for tests and docs).
    pub fn delays(&self) -> impl Iterator<Item = Duration> {
        self.backoff().build()
    }
}

/// How a retried operation ended without success.
#[derive(Debug, Error)]
pub enum RetryError<E> {
    /// The error was not transient, or the policy ran out of attempts.
    #[error(transparent)]
    Failed(E),
    /// Shutdown fired while waiting.
    #[error("cancelled by shutdown")]
    Cancelled,
}

/// Runs `operation` until it succeeds, retrying errors that `classify` calls transient.
///
/// Each retry is logged at warn with its attempt number and delay, and counted in
/// `nomadwave_retries_total{operation}`. Waiting (and the operation itself) races `shutdown`.
///
/// # Errors
///
/// [`RetryError::Failed`] with the last error once it is not transient or attempts run out;
/// [`RetryError::Cancelled`] when `shutdown` fires first.
pub async fn retry<T, E, Operation, Attempt, Classify>(
    policy: RetryPolicy,
    shutdown: &CancellationToken,
    classify: Classify,
    mut operation: Operation,
) -> Result<T, RetryError<E>>
where
    E: Display,
    Operation: FnMut() -> Attempt,
    Attempt: Future<Output = Result<T, E>>,
    Classify: Fn(&E) -> ErrorClass,
{
    let mut delays = policy.backoff().build();
    let mut attempt: u64 = 0;
    loop {
        let result = tokio::select! {
            result = operation() => result,
            () = shutdown.cancelled() => return Err(RetryError::Cancelled),
        };
        let error = match result {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        if classify(&error) != ErrorClass::Transient {
            return Err(RetryError::Failed(error));
        }
        let Some(delay) = delays.next() else {
            return Err(RetryError::Failed(error));
        };
        attempt += 1;
        tracing::warn!(
            operation = policy.operation,
            attempt,
            delay_ms = delay.as_millis() as u64,
            %error,
            "transient failure; retrying"
        );
        metrics::counter!("nomadwave_retries_total", "operation" => policy.operation).increment(1);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return Err(RetryError::Cancelled),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn bounded_policies_stop_and_unbounded_ones_do_not() {
        assert_eq!(RetryPolicy::CONNECT.delays().count(), 5);
        assert!(RetryPolicy::INSERT.delays().take(1000).count() == 1000);
        assert!(RetryPolicy::INSERT
            .delays()
            .take(100)
            .all(|delay| delay <= RetryPolicy::INSERT.max_delay * 2));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_until_success_but_not_permanent() {
        let calls = AtomicUsize::new(0);
        let token = CancellationToken::new();
        let result: Result<u32, RetryError<&str>> = retry(
            RetryPolicy::PUBLISH,
            &token,
            |_| ErrorClass::Transient,
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0..=2 => Err("refused"),
                    _ => Ok(7),
                }
            },
        )
        .await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 4);

        let permanent_calls = AtomicUsize::new(0);
        let result: Result<u32, RetryError<&str>> = retry(
            RetryPolicy::PUBLISH,
            &token,
            |_| ErrorClass::Permanent,
            || async {
                permanent_calls.fetch_add(1, Ordering::SeqCst);
                Err("unauthorized")
            },
        )
        .await;
        assert!(matches!(result, Err(RetryError::Failed("unauthorized"))));
        assert_eq!(permanent_calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_interrupts_an_endless_retry() {
        let token = CancellationToken::new();
        let cancel = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            cancel.cancel();
        });
        let result: Result<(), RetryError<&str>> = retry(
            RetryPolicy::INSERT,
            &token,
            |_| ErrorClass::Transient,
            || async { Err("down") },
        )
        .await;
        assert!(matches!(result, Err(RetryError::Cancelled)));
    }
}
