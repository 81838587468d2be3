//! The stop signal every long-running task watches.
//!
//! One `watch` channel: `Service::shutdown` flips it once; listeners stop
//! accepting, idle sessions hang up with 421, workers stop taking messages.

use tokio::sync::watch;

/// A task's view of the stop signal; cheap to clone.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A trigger and its first receiver.
    pub fn channel() -> (watch::Sender<bool>, Shutdown) {
        let (trigger, receiver) = watch::channel(false);
        (trigger, Shutdown(receiver))
    }

    /// Whether the service is stopping.
    pub fn is_stopping(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the service is stopping (at once if it already is).
    pub async fn stopped(&mut self) {
        // An error means the trigger is gone, which also means stopping.
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }
}
