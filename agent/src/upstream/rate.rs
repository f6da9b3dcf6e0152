//! `upstream.replay_rate`: a token bucket that caps events per second.

use tokio::time::{Duration, Instant};

pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` events per second, bursts of up to a tenth of a second's worth (at least 1).
    pub fn new(rate: u32) -> TokenBucket {
        let rate = f64::from(rate.max(1));
        let capacity = (rate / 10.0).max(1.0);
        TokenBucket {
            rate,
            capacity,
            tokens: capacity,
            last: Instant::now(),
        }
    }

    /// A new rate (a pushed `upstream.replay_rate`), from now on.
    pub fn set_rate(&mut self, rate: u32) {
        self.refill();
        *self = TokenBucket {
            tokens: self.tokens,
            ..TokenBucket::new(rate)
        };
        self.tokens = self.tokens.min(self.capacity);
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
    }

    /// Takes up to `want` whole tokens; returns how many were taken.
    pub fn take(&mut self, want: usize) -> usize {
        self.refill();
        let n = (self.tokens.floor() as usize).min(want);
        self.tokens -= n as f64;
        n
    }

    /// Returns tokens taken but not used.
    pub fn give_back(&mut self, n: usize) {
        self.tokens = (self.tokens + n as f64).min(self.capacity);
    }

    /// When the next whole token is available, if none is now.
    pub fn wait(&mut self) -> Option<Instant> {
        self.refill();
        if self.tokens >= 1.0 {
            return None;
        }
        let secs = (1.0 - self.tokens) / self.rate;
        Some(self.last + Duration::from_secs_f64(secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_rate_per_second_and_no_more() {
        let mut b = TokenBucket::new(100);
        let mut sent = b.take(1000);
        assert_eq!(sent, 10, "a burst is a tenth of a second's worth");
        for _ in 0..100 {
            if let Some(at) = b.wait() {
                tokio::time::sleep_until(at).await;
            }
            sent += b.take(1000);
        }
        // 100 more tokens arrive over about one second of (paused) time.
        assert!((100..=111).contains(&sent), "sent {sent}");
        let elapsed = b.last.elapsed();
        assert!(elapsed < Duration::from_millis(1));
    }
}
