//! What every adapter shares: capped, jittered backoff, `Retry-After`, and a
//! client-side request budget so the bot normally never sees a 429.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
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

/// Evenly spaced requests at a budget per minute (no bursts, so a sliding
/// one-minute window on the server never sees more than the budget).
#[derive(Debug, Clone)]
pub struct RateBudget {
    interval: Duration,
    next: Arc<Mutex<Instant>>,
}

impl RateBudget {
    pub fn per_minute(n: u32) -> RateBudget {
        RateBudget {
            interval: Duration::from_secs_f64(60.0 / n.max(1) as f64),
            next: Arc::new(Mutex::new(Instant::now())),
        }
    }

    /// Wait for this request's slot.
    pub async fn acquire(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }

    /// After a 429, nobody sends before `wait` is over.
    pub async fn pause(&self, wait: Duration) {
        let mut next = self.next.lock().await;
        let until = Instant::now() + wait;
        if *next < until {
            *next = until;
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

    #[tokio::test(start_paused = true)]
    async fn budget_spaces_requests() {
        let b = RateBudget::per_minute(600); // one per 100 ms
        let t = Instant::now();
        for _ in 0..11 {
            b.acquire().await;
        }
        let e = t.elapsed();
        assert!(
            e >= Duration::from_millis(1000) && e < Duration::from_millis(1100),
            "{e:?}"
        );
    }
}
