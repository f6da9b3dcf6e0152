//! Exponential backoff with jitter for every retry loop (ports, brokers, the buffer file).

use std::time::Duration;

/// Doubles from `min` to `max`, each delay jittered by up to ±20% so that many agents (or many
/// sources) do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    seed: u64,
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
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
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

    /// After a success: start again from `min`.
    pub fn reset(&mut self) {
        self.next = self.min;
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
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }
}
