//! Exponential backoff with jitter for every retry loop (ports, brokers, the buffer file).
//!
//! Time is tokio's ([`tokio::time::Instant`]), so the delays and the [`STABLE`] rule follow a
//! paused test clock (`tokio::time::pause`, `advance`). Outside a runtime (or without tokio's
//! `test-util`) it is the ordinary monotonic clock.

use std::time::Duration;
use tokio::time::Instant;

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

    /// The base delay of `d` (jitter is at most ±20%).
    fn within(d: Duration, base: Duration) -> bool {
        d >= base * 4 / 5 && d <= base * 6 / 5
    }

    #[tokio::test(start_paused = true)]
    async fn delays_grow_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let mut base = Duration::from_millis(100);
        for i in 0..12 {
            let d = b.next_delay();
            assert!(within(d, base), "delay {i}: {d:?} is not {base:?} ±20%");
            base = (base * 2).min(Duration::from_secs(30));
        }
        // Capped: it stays at max.
        assert!(within(b.next_delay(), Duration::from_secs(30)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_jitter_differs_between_delays() {
        let mut b = Backoff::new(Duration::from_secs(30), Duration::from_secs(30));
        let delays: std::collections::HashSet<Duration> = (0..20).map(|_| b.next_delay()).collect();
        assert!(delays.len() > 1, "20 delays, all {delays:?}: no jitter");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_dropped_at_once_keeps_backing_off() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        for _ in 0..4 {
            b.next_delay();
        }
        // Up, and dropped 9.9 s later: the delays keep growing (base 8 s).
        b.up();
        tokio::time::advance(STABLE - Duration::from_millis(100)).await;
        let d = b.next_delay();
        assert!(within(d, Duration::from_secs(8)), "{d:?}");
        // A failure without `up()` in between never resets, however long it took.
        tokio::time::advance(Duration::from_secs(3600)).await;
        let d = b.next_delay();
        assert!(within(d, Duration::from_secs(16)), "{d:?}");
    }

    /// Fails with std time: under a paused clock, `advance` moves tokio's clock only.
    #[tokio::test(start_paused = true)]
    async fn a_connection_that_stayed_up_10_s_starts_the_delays_over() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        for _ in 0..6 {
            b.next_delay();
        }
        b.up();
        let real = std::time::Instant::now();
        tokio::time::advance(Duration::from_secs(10)).await;
        let d = b.next_delay();
        assert!(within(d, Duration::from_millis(500)), "{d:?} after 10 s up");
        assert!(
            real.elapsed() < Duration::from_secs(5),
            "the test waited for real"
        );
        // And it grows again from there.
        assert!(within(b.next_delay(), Duration::from_secs(1)));
    }

    /// The delays it hands out are tokio time: a loop sleeping them runs under a paused clock
    /// and reconnects from `min` after a stable connection, as upstream's and the sources' do.
    #[tokio::test(start_paused = true)]
    async fn a_retry_loop_under_a_paused_clock() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let start = Instant::now();
        for _ in 0..3 {
            tokio::time::sleep(b.next_delay()).await;
        }
        // 0.5 + 1 + 2 s, ±20%.
        let slept = start.elapsed();
        assert!(within(slept, Duration::from_millis(3500)), "{slept:?}");
        b.up();
        tokio::time::sleep(STABLE).await;
        assert!(within(b.next_delay(), Duration::from_millis(500)));
    }
}
