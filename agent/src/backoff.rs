//! Exponential backoff with jitter for every retry loop (ports, brokers, the buffer file).

use std::time::{Duration, Instant};

/// A connection that stays up this long has earned a fresh start: the next failure retries
/// from `min` again. One that fails sooner (a broker that accepts and then drops us, a port
/// that opens and then errors) keeps backing off, so it is not hammered every `min`.
const STABLE: Duration = Duration::from_secs(10);

/// Doubles from `min` to `max`, each delay jittered by up to ±20% so that many agents (or many
/// sources) do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    seed: u64,
    /// When the current connection came up, if one is up.
    up_since: Option<Instant>,
    stable: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15)
            | 1;
        Backoff {
            min,
            max,
            next: min,
            seed,
            up_since: None,
            stable: STABLE,
        }
    }

    /// The next delay, after a failure.
    pub fn next_delay(&mut self) -> Duration {
        if self
            .up_since
            .take()
            .is_some_and(|t| t.elapsed() >= self.stable)
        {
            self.next = self.min;
        }
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        // xorshift64: plenty for jitter.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let permille = (self.seed % 401) as i64 - 200; // -200..=200
        let ms = base.as_millis() as i64;
        Duration::from_millis((ms + ms * permille / 1000).max(1) as u64)
    }

    /// A connection (or an open port) is up; see [`STABLE`] for what that earns.
    pub fn up(&mut self) {
        self.up_since = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_bounded_jitter_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let mut bases = vec![];
        for _ in 0..12 {
            let d = b.next_delay();
            bases.push(d);
        }
        assert!(bases[0] >= Duration::from_millis(80) && bases[0] <= Duration::from_millis(120));
        assert!(bases[11] >= Duration::from_secs(24) && bases[11] <= Duration::from_secs(36));
    }

    #[test]
    fn only_a_connection_that_stayed_up_starts_the_delays_over() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        b.stable = Duration::from_millis(30);
        for _ in 0..4 {
            b.next_delay();
        }
        // Up, and dropped at once: the delays keep growing (base 1.6 s).
        b.up();
        assert!(b.next_delay() >= Duration::from_millis(1280));
        // Up long enough: back to min.
        b.up();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && b.up_since.is_some_and(|t| t.elapsed() < b.stable) {
            std::thread::yield_now();
        }
        assert!(b.next_delay() <= Duration::from_millis(120));
    }
}
