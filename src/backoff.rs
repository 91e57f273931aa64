//! Waiting before a reconnection (to a camera or the broker): doubling, and jittered, so that
//! boxes or cameras that lost the same thing at the same moment (a broker node, a switch) do
//! not all come back in lockstep.

use std::time::Duration;

/// The wait before reconnecting a camera: doubling from one second to half a minute, and back
/// to one second once a session has delivered frames.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Backoff::MIN }
    }
}

impl Backoff {
    const MIN: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);

    /// The wait before the next attempt; `worked`: whether the last session delivered frames.
    pub fn next(&mut self, worked: bool) -> Duration {
        if worked {
            self.next = Backoff::MIN;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(Backoff::MAX);
        wait
    }
}

/// `wait` shortened by a random part of up to half (never longer): spread out, still backing off.
pub fn jitter(wait: Duration) -> Duration {
    let mut b = [0u8; 4];
    let r = getrandom::fill(&mut b).map_or(u32::MAX, |()| u32::from_le_bytes(b));
    wait.mul_f64(0.5 + 0.5 * (f64::from(r) / f64::from(u32::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets_after_a_working_session() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..7).map(|_| b.next(false).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.next(true).as_secs(), 1);
        assert_eq!(b.next(false).as_secs(), 2);
    }

    #[test]
    fn jitter_spreads_waits_between_half_and_whole() {
        let waits: Vec<Duration> = (0..200).map(|_| jitter(Duration::from_secs(8))).collect();
        assert!(waits.iter().all(|w| (Duration::from_secs(4)..=Duration::from_secs(8)).contains(w)));
        let (lo, hi) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
        assert!(*hi - *lo > Duration::from_secs(2), "not spread: {lo:?}..{hi:?}");
    }
}
