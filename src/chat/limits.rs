//! Per-user send rate: a token bucket per user, shared by all of the user's connections on
//! this instance.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;

use crate::domain::UserId;

pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<UserId, (f64, Instant)>>,
}

impl RateLimiter {
    /// `per_sec == 0` disables the limit.
    pub fn new(per_sec: u32, burst: u32) -> Self {
        Self {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token; false when the user is over the limit.
    pub fn allow(&self, user: &UserId) -> bool {
        if self.per_sec == 0.0 {
            return true;
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let (tokens, last) = buckets.entry(user.clone()).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.per_sec).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets a user who has no connection left here.
    pub fn forget(&self, user: &UserId) {
        self.buckets.lock().remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse() {
        let rl = RateLimiter::new(1, 3);
        let u = UserId::parse("u").unwrap();
        assert!(rl.allow(&u) && rl.allow(&u) && rl.allow(&u));
        assert!(!rl.allow(&u));
        let other = UserId::parse("v").unwrap();
        assert!(rl.allow(&other));
    }

    #[test]
    fn zero_disables() {
        let rl = RateLimiter::new(0, 0);
        let u = UserId::parse("u").unwrap();
        assert!((0..1000).all(|_| rl.allow(&u)));
    }
}
