//! The bot's one notion of now, read wherever it decides on time: an
//! expiry's date, a waiting request's age, the seat review's month, the
//! digest's day, the next time of a schedule. Tests move it forward instead of
//! waiting. Transport timers (retries, back-off, leases, caches) keep the
//! system's clocks: they measure real waits, not dates.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Duration, NaiveDate, Utc};

/// The system clock plus an offset that only moves when told to.
#[derive(Debug, Default)]
pub struct Clock {
    /// Milliseconds ahead of the system clock (negative: behind).
    offset_ms: AtomicI64,
}

impl Clock {
    /// The system's time, unshifted.
    pub fn system() -> Clock {
        Clock::default()
    }

    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.offset()
    }

    /// Today's date in UTC, the calendar of expiry dates.
    pub fn today(&self) -> NaiveDate {
        self.now().date_naive()
    }

    /// How far this clock is from the system's.
    pub fn offset(&self) -> Duration {
        Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Move time forward (or back, with a negative `by`).
    pub fn advance(&self, by: Duration) {
        self.offset_ms
            .fetch_add(by.num_milliseconds(), Ordering::Relaxed);
    }

    /// Put the clock `offset` away from the system's.
    pub fn set_offset(&self, offset: Duration) {
        self.offset_ms
            .store(offset.num_milliseconds(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_only_when_told() {
        let c = Clock::system();
        assert_eq!(c.offset(), Duration::zero());
        let before = Utc::now();
        c.advance(Duration::days(6));
        c.advance(Duration::hours(12));
        assert_eq!(c.offset(), Duration::hours(156));
        assert!(c.now() >= before + Duration::hours(156));
        c.set_offset(Duration::days(-1));
        assert_eq!(c.today(), (Utc::now() - Duration::days(1)).date_naive());
    }
}
