//! How a running sink stops: one type, two levels.
//!
//! - **Stop intake**: stop pulling; batches in hand are still written and acked. Fired by
//!   SIGINT/SIGTERM, by a stream that failed (so the process exits whole and is restarted), or
//!   by a lost lease.
//! - **Abandon**: stop waiting on anything (INSERT and dead-letter retries, a lapsed lease's
//!   renewal): un-acked messages are simply redelivered to the next holder. Fired when the
//!   drain timeout expires after intake stopped, or at once when the lease is lost (another
//!   sink owns the consumer now).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The sink's two stop levels; cheap to clone.
#[derive(Debug, Clone)]
pub struct SinkShutdown {
    intake: CancellationToken,
    abandon: CancellationToken,
}

impl SinkShutdown {
    /// Levels that follow `signal` (the SIGINT/SIGTERM token): a signal stops intake, and the
    /// drain timeout counts from whenever intake stops.
    pub fn new(signal: &CancellationToken, drain_timeout: Duration) -> SinkShutdown {
        let shutdown = SinkShutdown {
            intake: signal.child_token(),
            abandon: CancellationToken::new(),
        };
        let deadline = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = deadline.intake.cancelled() => {}
                () = deadline.abandon.cancelled() => return,
            }
            tokio::select! {
                () = tokio::time::sleep(drain_timeout) => {
                    tracing::warn!(?drain_timeout, "drain timeout expired; un-acked messages will be redelivered");
                    deadline.abandon.cancel();
                }
                () = deadline.abandon.cancelled() => {}
            }
        });
        shutdown
    }

    /// Levels for a command without a drain (replay): both follow `signal` at once.
    pub fn immediate(signal: &CancellationToken) -> SinkShutdown {
        SinkShutdown {
            intake: signal.child_token(),
            abandon: signal.child_token(),
        }
    }

    /// Fires when intake stops.
    pub fn intake(&self) -> &CancellationToken {
        &self.intake
    }

    /// Fires when waiting is abandoned.
    pub fn abandoned(&self) -> &CancellationToken {
        &self.abandon
    }

    /// Stops intake (every stream), keeping what is in hand.
    pub fn stop_intake(&self) {
        self.intake.cancel();
    }

    /// Stops intake and every wait at once.
    pub fn abandon(&self) {
        self.intake.cancel();
        self.abandon.cancel();
    }

    /// Abandons at once when `lost` fires (the consumer lease was taken over).
    pub fn follow_lease(&self, lost: CancellationToken) {
        let shutdown = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = lost.cancelled() => shutdown.abandon(),
                () = shutdown.abandon.cancelled() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_timeout_abandons_only_after_intake_stopped() {
        let signal = CancellationToken::new();
        let shutdown = SinkShutdown::new(&signal, Duration::from_secs(30));
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert!(
            !shutdown.abandoned().is_cancelled(),
            "no signal, no deadline"
        );
        signal.cancel();
        assert!(shutdown.intake().is_cancelled());
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(!shutdown.abandoned().is_cancelled(), "still draining");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(shutdown.abandoned().is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_abandons_at_once() {
        let signal = CancellationToken::new();
        let shutdown = SinkShutdown::new(&signal, Duration::from_secs(30));
        let lost = CancellationToken::new();
        shutdown.follow_lease(lost.clone());
        lost.cancel();
        tokio::task::yield_now().await;
        assert!(shutdown.intake().is_cancelled() && shutdown.abandoned().is_cancelled());
        assert!(
            !signal.is_cancelled(),
            "the process decides its exit, not the signal token"
        );
    }
}
