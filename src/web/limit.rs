//! How often the login form may be tried: a token bucket per client address and one for all
//! of them together, so that guessing the token is slow from one machine and from many.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Attempts one address may make at once, and how often it earns another.
const PER_ADDRESS: Rate = Rate { burst: 5.0, every: Duration::from_secs(20) };
/// Attempts all addresses together may make at once (many machines, or one that changes its
/// IPv6 address), and how often they earn another.
const GLOBAL: Rate = Rate { burst: 20.0, every: Duration::from_secs(5) };
/// Addresses remembered at most; beyond it only the global bucket applies to new ones.
const MAX_ADDRESSES: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Rate {
    burst: f64,
    every: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Bucket {
        Bucket { tokens: rate.burst, at: now }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() / rate.every.as_secs_f64();
        self.tokens = (self.tokens + earned).min(rate.burst);
        self.at = now;
    }

    /// How long until one attempt is allowed (zero: now).
    fn wait(&self, rate: Rate) -> Duration {
        if self.tokens >= 1.0 { Duration::ZERO } else { rate.every.mul_f64(1.0 - self.tokens) }
    }
}

/// Login attempts: one is taken before the form's body is read, and given back when the
/// token was right, so only failed (or abandoned) attempts count, and attempts sent at once
/// cannot all slip through before the first fails.
#[derive(Debug)]
pub struct LoginLimiter {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    global: Bucket,
    addresses: HashMap<IpAddr, Bucket>,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        let now = Instant::now();
        LoginLimiter { state: Mutex::new(State { global: Bucket::full(GLOBAL, now), addresses: HashMap::new() }) }
    }
}

impl LoginLimiter {
    /// Takes an attempt for `from`, or says how long to wait (for `Retry-After`).
    pub fn take(&self, from: IpAddr) -> Result<(), Duration> {
        self.take_at(from, Instant::now())
    }

    /// Gives back the attempt of a login that succeeded.
    pub fn give_back(&self, from: IpAddr) {
        let mut s = self.state.lock().expect("login limiter");
        s.global.tokens = (s.global.tokens + 1.0).min(GLOBAL.burst);
        if let Some(b) = s.addresses.get_mut(&from) {
            b.tokens = (b.tokens + 1.0).min(PER_ADDRESS.burst);
        }
    }

    fn take_at(&self, from: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut s = self.state.lock().expect("login limiter");
        s.global.refill(GLOBAL, now);
        if s.addresses.len() >= MAX_ADDRESSES && !s.addresses.contains_key(&from) {
            // Forget the addresses that are back to a full bucket: they owe nothing.
            s.addresses.retain(|_, b| {
                b.refill(PER_ADDRESS, now);
                b.tokens < PER_ADDRESS.burst
            });
        }
        let room = s.addresses.len() < MAX_ADDRESSES;
        let mut mine = s.addresses.get(&from).copied().unwrap_or_else(|| Bucket::full(PER_ADDRESS, now));
        mine.refill(PER_ADDRESS, now);
        let wait = mine.wait(PER_ADDRESS).max(s.global.wait(GLOBAL));
        if !wait.is_zero() {
            return Err(wait);
        }
        mine.tokens -= 1.0;
        s.global.tokens -= 1.0;
        if room || s.addresses.contains_key(&from) {
            s.addresses.insert(from, mine);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn each_address_gets_its_burst_then_waits_and_all_together_get_the_global_one() {
        let l = LoginLimiter::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(l.take_at(ip(1), t0).is_ok());
        }
        let wait = l.take_at(ip(1), t0).unwrap_err();
        assert_eq!(wait, PER_ADDRESS.every, "one attempt is earned back after {wait:?}");
        assert!(l.take_at(ip(1), t0 + PER_ADDRESS.every).is_ok(), "and then allowed");
        // A success costs nothing.
        l.give_back(ip(1));
        assert!(l.take_at(ip(1), t0 + PER_ADDRESS.every).is_ok());
        assert!(l.take_at(ip(1), t0 + PER_ADDRESS.every).is_err());
        // Other addresses are not held back by this one, until the global bucket is empty.
        let later = t0 + PER_ADDRESS.every;
        let mut allowed = 0;
        for a in 2..=10 {
            while l.take_at(ip(a), later).is_ok() {
                allowed += 1;
            }
        }
        assert!(allowed < 20 && allowed > 10, "{allowed}");
        let wait = l.take_at(ip(11), later).unwrap_err();
        assert!(wait <= GLOBAL.every && !wait.is_zero(), "{wait:?}");
    }

    #[test]
    fn the_address_table_stays_bounded() {
        let l = LoginLimiter::default();
        let t0 = Instant::now();
        for i in 0..(MAX_ADDRESSES as u32 + 100) {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            // Give each back so the global bucket never runs dry.
            let _ = l.take_at(a, t0);
            l.give_back(a);
        }
        assert!(l.state.lock().unwrap().addresses.len() <= MAX_ADDRESSES);
    }
}
