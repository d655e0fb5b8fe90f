//! What every adapter shares: capped, jittered backoff, `Retry-After`, and a
//! client-side request budget so the bot normally never sees a 429.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::Clock;
use tokio::time::Instant;

/// Retry policy: attempts and the backoff between them.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            attempts: 5,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// Full jitter: a random delay up to min(cap, base * 2^attempt).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.min(16));
        let max = exp.min(self.cap);
        let ms = max.as_millis().max(1) as u64;
        Duration::from_millis(ms / 2 + rand::random_range(0..=ms / 2))
    }
}

/// `Retry-After` in seconds (the only form these APIs send), capped at 10 minutes.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|s| Duration::from_secs_f64(s.clamp(0.0, 600.0)))
}

/// A token bucket (GCRA, the `governor` crate) of the plan's per-minute budget:
/// a burst up to the whole budget goes out at once, then requests refill at the
/// budget's rate. Bursts can outrun a server's sliding minute; the server's
/// `ratelimit-remaining` (see `pause`) and 429s with `Retry-After` hold every
/// caller when that happens, so the bucket only has to be right on average.
#[derive(Debug, Clone)]
pub struct RateBudget {
    limiter: Arc<governor::DefaultDirectRateLimiter>,
    clock: governor::clock::DefaultClock,
    /// Nobody sends before this instant (a 429 or an empty server bucket).
    hold: Arc<Mutex<Option<Instant>>>,
}

impl RateBudget {
    pub fn per_minute(n: u32) -> RateBudget {
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let clock = governor::clock::DefaultClock::default();
        RateBudget {
            limiter: Arc::new(governor::RateLimiter::direct_with_clock(
                governor::Quota::per_minute(n).allow_burst(n),
                clock.clone(),
            )),
            clock,
            hold: Arc::new(Mutex::new(None)),
        }
    }

    /// Wait for this request's token.
    pub async fn acquire(&self) {
        loop {
            let held = *self.hold.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(until) = held
                && until > Instant::now()
            {
                tokio::time::sleep_until(until).await;
                continue;
            }
            match self.limiter.check() {
                Ok(()) => return,
                Err(not_until) => {
                    tokio::time::sleep(not_until.wait_time_from(self.clock.now())).await;
                }
            }
        }
    }

    /// After a 429 (or an empty bucket on the server), nobody sends before
    /// `wait` is over.
    pub async fn pause(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut hold = self.hold.lock().unwrap_or_else(|p| p.into_inner());
        if hold.is_none_or(|h| h < until) {
            *hold = Some(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let b = Backoff {
            attempts: 10,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        for a in 0..10 {
            let d = b.delay(a);
            assert!(d <= Duration::from_secs(1), "{a}: {d:?}");
        }
        assert!(b.delay(0) <= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn budget_allows_a_burst_then_refills_at_its_rate() {
        // The bucket runs on the real clock: count what it lets through, not time.
        let b = RateBudget::per_minute(600); // burst 600, then one per 100 ms
        for _ in 0..600 {
            assert!(b.limiter.check().is_ok(), "the whole budget goes at once");
        }
        assert!(b.limiter.check().is_err(), "then the bucket is empty");
        let t = std::time::Instant::now();
        b.acquire().await;
        assert!(
            t.elapsed() >= Duration::from_millis(50),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pause_holds_every_caller() {
        let b = RateBudget::per_minute(600);
        b.pause(Duration::from_secs(5)).await;
        let t = Instant::now();
        b.acquire().await;
        assert!(t.elapsed() >= Duration::from_secs(5), "{:?}", t.elapsed());
    }
}
