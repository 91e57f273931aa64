//! The named stop signal and the protocol every task follows when the daemon stops.
//!
//! The protocol, in order (`daemon::run` drives it, bounded by its stop timeout):
//!
//! 1. The `shutdown` future given to `run` completes (SIGTERM or SIGINT for `vigil run`):
//!    `/healthz` turns not ready and systemd is told `STOPPING=1`.
//! 2. [`Stop::stop`] fires: every source sees [`Shutdown::recv`] return, takes no new frame,
//!    waits until each frame it handed over is done (a file marked done or moved, a message
//!    acknowledged) and returns. A frame not handed over stays where it is: the file in its
//!    folder, the message at the broker.
//! 3. With the sources gone, the frame queue closes: the decode workers and the inference
//!    thread finish what is queued and end.
//! 4. The decide stage decides every scored frame (alerts into the sinks), then ends when its
//!    queue closes and hands the sinks back.
//! 5. The alert connection sends what the outbox holds for a few seconds; what is left waits
//!    in the outbox for the next start.
//! 6. `stopped` is published (retained) and the MQTT session closes with a clean DISCONNECT,
//!    so the broker does not publish the Last-Will.
//!
//! Tasks that only react to others (the control task, the snapshot worker) end when their
//! inputs close.

use tokio::sync::watch;

/// The sending side of the stop signal, held by whoever decides to stop.
#[derive(Debug)]
pub struct Stop {
    tx: watch::Sender<bool>,
}

impl Default for Stop {
    fn default() -> Self {
        Stop { tx: watch::channel(false).0 }
    }
}

impl Stop {
    /// A signal that has not fired.
    pub fn new() -> Stop {
        Stop::default()
    }

    /// A receiver for one task.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown { is_shutdown: *self.tx.borrow(), rx: self.tx.subscribe() }
    }

    /// Fires the signal: every [`Shutdown`] returns from `recv`, now or at its next call.
    pub fn stop(&self) {
        let _ = self.tx.send(true);
    }
}

/// A task's view of the stop signal.
#[derive(Debug, Clone)]
pub struct Shutdown {
    is_shutdown: bool,
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// Whether the stop was signalled (as seen by the last `recv`, or at subscription).
    pub fn is_shutdown(&self) -> bool {
        self.is_shutdown
    }

    /// Waits for the stop; returns at once when it was already signalled. Cancel-safe, so it
    /// can be one branch of a `select!`. A dropped [`Stop`] counts as a stop.
    pub async fn recv(&mut self) {
        while !self.is_shutdown {
            if self.rx.changed().await.is_err() || *self.rx.borrow() {
                self.is_shutdown = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_subscriber_sees_the_stop_even_one_subscribed_after_it() {
        let stop = Stop::new();
        let mut early = stop.subscribe();
        assert!(!early.is_shutdown());
        let waiter = tokio::spawn(async move {
            early.recv().await;
            early.is_shutdown()
        });
        stop.stop();
        assert!(waiter.await.unwrap());
        let mut late = stop.subscribe();
        assert!(late.is_shutdown());
        late.recv().await;
    }

    #[tokio::test]
    async fn a_dropped_stop_counts_as_a_stop() {
        let stop = Stop::new();
        let mut s = stop.subscribe();
        drop(stop);
        s.recv().await;
        assert!(s.is_shutdown());
    }
}
