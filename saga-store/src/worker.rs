//! What every worker loop shares: a stop signal and a backoff after errors.

use std::time::Duration;

use tokio::sync::watch;

/// Exponential backoff after errors: 50 ms, doubling, up to a maximum.
#[derive(Debug)]
pub(crate) struct Backoff {
    current: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(max: Duration) -> Self {
        Self {
            current: Duration::from_millis(50),
            max,
        }
    }

    pub(crate) fn next(&mut self) -> Duration {
        let delay = self.current;
        self.current = (self.current * 2).min(self.max);
        delay
    }

    pub(crate) fn reset(&mut self) {
        self.current = Duration::from_millis(50);
    }
}

/// A stop signal shared by the workers.
#[derive(Clone, Debug)]
pub(crate) struct Shutdown(pub(crate) watch::Receiver<bool>);

impl Shutdown {
    pub(crate) fn requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Returns once shutdown is requested.
    pub(crate) async fn stopped(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Sleeps for `duration`, or until `wake` fires, or until shutdown; `true` on shutdown.
    pub(crate) async fn pause(
        &mut self,
        duration: Duration,
        wake: Option<&tokio::sync::Notify>,
    ) -> bool {
        let stop = self.0.wait_for(|stop| *stop);
        match wake {
            Some(notify) => tokio::select! {
                _ = stop => return true,
                _ = notify.notified() => {}
                () = tokio::time::sleep(duration) => {}
            },
            None => tokio::select! {
                _ = stop => return true,
                () = tokio::time::sleep(duration) => {}
            },
        }
        self.requested()
    }
}
