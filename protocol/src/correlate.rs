//! Weight-to-unit correlation (docs/events.md, `shipment.weight.sscc`): a weight carries the
//! last SSCC scanned at the same station within the correlation window before it settled.
//!
//! One entry per station (the latest scan replaces the previous one), so memory is bounded by
//! the configured stations. A scan is not consumed by the weight that used it: two weighings
//! inside one window after one scan both carry it, as the contract words it.

use std::collections::HashMap;

/// The last SSCC scanned at each station, with when.
#[derive(Debug, Clone, Default)]
pub struct Correlator {
    last: HashMap<String, (String, u64)>,
}

impl Correlator {
    /// An empty correlator.
    pub fn new() -> Self {
        Correlator::default()
    }

    /// Records that `sscc` was scanned at `station` at `at_ms` (the same clock as the weights').
    pub fn record_scan(&mut self, station: &str, sscc: &str, at_ms: u64) {
        match self.last.get_mut(station) {
            Some((s, at)) => {
                s.clear();
                s.push_str(sscc);
                *at = at_ms;
            }
            None => {
                self.last
                    .insert(station.to_owned(), (sscc.to_owned(), at_ms));
            }
        }
    }

    /// The SSCC for a weight that settled at `settled_at_ms` at `station`: the last one scanned
    /// there no more than `window_ms` before (a scan at the same instant counts; one after the
    /// weight settled does not).
    pub fn sscc_for_weight(
        &self,
        station: &str,
        settled_at_ms: u64,
        window_ms: u64,
    ) -> Option<String> {
        let (sscc, at) = self.last.get(station)?;
        (*at <= settled_at_ms && settled_at_ms - at <= window_ms).then(|| sscc.clone())
    }

    /// How many stations have a scan recorded.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// True when no scan was recorded.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSCC: &str = "106141412345678908";

    #[test]
    fn the_last_scan_at_the_same_station_within_the_window() {
        let mut c = Correlator::new();
        c.record_scan("pack-01", "000000000000000017", 1_000);
        c.record_scan("pack-01", SSCC, 2_000);
        c.record_scan("pack-02", "000000000000000024", 2_500);
        assert_eq!(
            c.sscc_for_weight("pack-01", 5_000, 10_000).as_deref(),
            Some(SSCC)
        );
        assert_eq!(
            c.sscc_for_weight("pack-01", 12_000, 10_000).as_deref(),
            Some(SSCC)
        );
        assert_eq!(
            c.sscc_for_weight("pack-01", 12_001, 10_000),
            None,
            "window passed"
        );
        assert_eq!(
            c.sscc_for_weight("pack-01", 1_999, 10_000),
            None,
            "scanned after the weight"
        );
        assert_eq!(
            c.sscc_for_weight("pack-03", 5_000, 10_000),
            None,
            "other station"
        );
        assert_eq!(c.len(), 2, "one entry per station");
    }
}
