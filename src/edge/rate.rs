//! Per-socket message budget: a token bucket that may run into debt.
//!
//! Each message costs one token; tokens refill at `rate` per second up to `burst`.
//! A message that finds the bucket empty is refused (`rate_limited`) but still
//! costs a token, so a client that keeps sending runs the balance down; when the
//! debt passes another `burst` the socket is closed with 1008.

use std::time::Instant;

#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Refuse,
    Close,
}

impl RateLimiter {
    pub fn new(rate: u32, burst: u32, now: Instant) -> RateLimiter {
        RateLimiter {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
        }
    }

    pub fn check(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Verdict::Allow
        } else if self.tokens >= -self.burst {
            Verdict::Refuse
        } else {
            Verdict::Close
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refuse_then_close() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(10, 5, t0);
        for _ in 0..5 {
            assert_eq!(r.check(t0), Verdict::Allow);
        }
        for _ in 0..5 {
            assert_eq!(r.check(t0), Verdict::Refuse);
        }
        assert_eq!(r.check(t0), Verdict::Close);
    }

    #[test]
    fn refills_over_time() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(10, 2, t0);
        assert_eq!(r.check(t0), Verdict::Allow);
        assert_eq!(r.check(t0), Verdict::Allow);
        assert_eq!(r.check(t0), Verdict::Refuse);
        // 1 s at 10/s refills the bucket to its burst (2) from -1.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(r.check(t1), Verdict::Allow);
        assert_eq!(r.check(t1), Verdict::Allow);
    }

    #[test]
    fn steady_rate_is_never_refused() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(20, 40, t0);
        for i in 0..1000u64 {
            let t = t0 + Duration::from_millis(50 * i);
            assert_eq!(r.check(t), Verdict::Allow);
        }
    }
}
