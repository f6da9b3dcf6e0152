//! The settle rule (docs/configuration.md, decoders): a scale streams many frames per item; this turns them
//! into at most one `shipment.weight` per item. Sans-IO: the caller passes the time of each
//! reading, and calls [`Settler::tick`] when no frame arrives, so timeouts fire anyway.
//!
//! An item's life:
//! - **armed**: the weight is below `min_kg` (or nothing was read yet);
//! - **settling**: a weight at or above `min_kg` arrived. A weight is emitted once the scale's
//!   stability flag has been held `settle_ms` with the same value (same kg, mode and tare); a
//!   change of value, motion or a fault restarts that clock. If nothing is emitted within
//!   `settle_timeout_ms` of the item's first frame, one `unstable_weight` exception is;
//! - **done**: emitted; waits until the weight falls below `min_kg` (or the scale reports
//!   underload), which re-arms.
//!
//! Faults are episodes, each reported once however many frames repeat it, so a scale flapping
//! at its limit does not flood central:
//! - overload ends when a weight below `min_kg` is read (the platform was cleared);
//! - underload ends with a stable weight of zero or more (the scale is back in range);
//! - a scale error, or weights in a unit with no kg conversion, end with the next weight in kg.
//!
//! An item that had a fault gets no `unstable_weight` on top (the fault was the reason), but
//! still yields its weight if it settles afterwards. `Busy`, `Tare` and `Ack` readings change
//! nothing.

use std::fmt::Write as _;

use crate::decimal::Decimal;
use crate::event::{Body, ExceptionReason, ShipmentWeight, WeightMode};

use super::ScaleReading;

/// The settle rule's parameters (docs/configuration.md, decoders defaults in [`SettleConfig::default`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettleConfig {
    /// How long the stability flag must hold one value: default 300 ms.
    pub settle_ms: u64,
    /// Weights below this are "nothing on the scale": default 0.05 kg.
    pub min_kg: Decimal,
    /// How long an item may stay unsettled before `unstable_weight`: default 10 s.
    pub settle_timeout_ms: u64,
}

impl Default for SettleConfig {
    fn default() -> Self {
        SettleConfig {
            settle_ms: 300,
            min_kg: Decimal::new(5, 2),
            settle_timeout_ms: 10_000,
        }
    }
}

/// What the settle rule decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleOutput {
    /// One settled weight: the body of a `shipment.weight` (the caller adds `sscc`).
    Weight {
        /// Exact canonical kg.
        weight_kg: String,
        /// Gross or net.
        mode: WeightMode,
        /// The tare in kg, if the scale sent one.
        tare_kg: Option<String>,
        /// The unit as the scale sent it.
        unit: String,
    },
    /// An `exception` body.
    Exception {
        /// `unstable_weight`, `overload`, `underload` or `scale_error`.
        reason: ExceptionReason,
        /// What happened, for a person.
        detail: String,
    },
}

impl SettleOutput {
    /// The canonical body: a `shipment.weight` carrying `sscc` (from
    /// [`crate::correlate::Correlator::sscc_for_weight`]), or the exception.
    pub fn into_body(self, sscc: Option<String>) -> Body {
        match self {
            SettleOutput::Weight {
                weight_kg,
                mode,
                tare_kg,
                unit,
            } => Body::ShipmentWeight(ShipmentWeight {
                weight_kg,
                mode,
                tare_kg,
                unit,
                sscc,
            }),
            SettleOutput::Exception { reason, detail } => Body::exception(reason, detail),
        }
    }
}

/// A settling weight: the value the stability clock runs for.
#[derive(Debug, Clone)]
struct Candidate {
    since_ms: u64,
    kg: Decimal,
    mode: WeightMode,
    tare_kg: Option<String>,
    weight_kg: String,
    unit: String,
}

impl Candidate {
    fn same_value(&self, kg: Decimal, mode: WeightMode, tare_kg: &Option<String>) -> bool {
        self.kg == kg && self.mode == mode && &self.tare_kg == tare_kg
    }
}

#[derive(Debug, Clone)]
enum Item {
    Armed,
    Settling {
        since_ms: u64,
        /// Set while the scale says stable; `None` while moving.
        stable: Option<Candidate>,
        /// The last weight seen, for the timeout's message.
        last: String,
        /// A fault exception was already emitted for this item.
        faulted: bool,
    },
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Overload,
    Underload,
    Error,
    Unit,
}

/// The settle state of one scale. Memory is constant: one candidate weight at most.
#[derive(Debug, Clone)]
pub struct Settler {
    cfg: SettleConfig,
    item: Item,
    episode: Option<Fault>,
}

impl Settler {
    /// A settler for one scale, armed.
    pub fn new(cfg: SettleConfig) -> Self {
        Settler {
            cfg,
            item: Item::Armed,
            episode: None,
        }
    }

    /// Takes one reading read at `now_ms` (any monotonic clock in ms); returns what to emit.
    pub fn feed(&mut self, now_ms: u64, reading: &ScaleReading) -> Option<SettleOutput> {
        match reading {
            ScaleReading::Weight {
                stable,
                mode,
                unit,
                weight_kg,
                tare_kg,
                weight,
            } => {
                let Some(kg) = weight_kg.as_deref().and_then(|k| Decimal::parse(k).ok()) else {
                    return self.fault(
                        now_ms,
                        Fault::Unit,
                        ExceptionReason::ScaleError,
                        || format!("the scale sends weights in {unit:?}, which is not a unit of mass the agent can convert to kg ({weight} {unit}); set the scale to kg, g, lb or oz"),
                    );
                };
                self.episode = match self.episode {
                    Some(Fault::Overload) if kg < self.cfg.min_kg => None,
                    Some(Fault::Underload) if *stable && !kg.is_negative() => None,
                    Some(Fault::Error | Fault::Unit) => None,
                    unchanged => unchanged,
                };
                self.weight(now_ms, *stable, kg, *mode, tare_kg, unit)
            }
            ScaleReading::Overload => {
                self.fault(now_ms, Fault::Overload, ExceptionReason::Overload, || {
                    "the scale reports overload: the load exceeds its capacity".into()
                })
            }
            ScaleReading::Underload => {
                // Below zero is below min_kg: whatever was on the scale is gone.
                self.item = Item::Armed;
                self.fault(now_ms, Fault::Underload, ExceptionReason::Underload, || {
                    "the scale reports underload: the reading is below zero beyond its range; check that the platform is empty and re-zero it".into()
                })
            }
            ScaleReading::Error(what) => {
                self.fault(now_ms, Fault::Error, ExceptionReason::ScaleError, || {
                    format!("the scale reports an error: {what}")
                })
            }
            ScaleReading::Busy | ScaleReading::Tare { .. } | ScaleReading::Ack(_) => {
                self.tick(now_ms)
            }
        }
    }

    /// Called when no frame arrived for a while: emits a weight that has now been stable long
    /// enough, or `unstable_weight` for an item past `settle_timeout_ms`.
    pub fn tick(&mut self, now_ms: u64) -> Option<SettleOutput> {
        let Item::Settling {
            since_ms,
            stable,
            last,
            faulted,
        } = &mut self.item
        else {
            return None;
        };
        if let Some(c) = stable {
            if now_ms.saturating_sub(c.since_ms) >= self.cfg.settle_ms {
                let out = SettleOutput::Weight {
                    weight_kg: std::mem::take(&mut c.weight_kg),
                    mode: c.mode,
                    tare_kg: c.tare_kg.take(),
                    unit: std::mem::take(&mut c.unit),
                };
                self.item = Item::Done;
                return Some(out);
            }
        }
        if now_ms.saturating_sub(*since_ms) >= self.cfg.settle_timeout_ms {
            let detail = format!(
                "the weight did not settle within {} ms (last reading {}); the item may be moving, touching something, or the scale needs attention",
                self.cfg.settle_timeout_ms, last
            );
            let emit = !*faulted;
            self.item = Item::Done;
            return emit.then_some(SettleOutput::Exception {
                reason: ExceptionReason::UnstableWeight,
                detail,
            });
        }
        None
    }

    fn weight(
        &mut self,
        now_ms: u64,
        stable: bool,
        kg: Decimal,
        mode: WeightMode,
        tare_kg: &Option<String>,
        unit: &str,
    ) -> Option<SettleOutput> {
        if kg < self.cfg.min_kg {
            self.item = Item::Armed;
            return None;
        }
        if let Item::Armed = self.item {
            self.item = Item::Settling {
                since_ms: now_ms,
                stable: None,
                last: String::new(),
                faulted: false,
            };
        }
        if let Item::Settling {
            stable: candidate,
            last,
            ..
        } = &mut self.item
        {
            last.clear();
            // Writing to a String cannot fail.
            let _ = write!(last, "{kg} kg");
            if !stable {
                last.push_str(", in motion");
                *candidate = None;
            } else if !candidate
                .as_ref()
                .is_some_and(|c| c.same_value(kg, mode, tare_kg))
            {
                *candidate = Some(Candidate {
                    since_ms: now_ms,
                    kg,
                    mode,
                    tare_kg: tare_kg.clone(),
                    weight_kg: kg.to_string(),
                    unit: unit.to_owned(),
                });
            }
        }
        self.tick(now_ms)
    }

    /// A fault reading: one exception per episode; it stops the stability clock.
    fn fault(
        &mut self,
        now_ms: u64,
        fault: Fault,
        reason: ExceptionReason,
        detail: impl FnOnce() -> String,
    ) -> Option<SettleOutput> {
        if let Item::Settling {
            stable, faulted, ..
        } = &mut self.item
        {
            *stable = None;
            *faulted = true;
        }
        if self.episode == Some(fault) {
            return self.tick(now_ms);
        }
        self.episode = Some(fault);
        Some(SettleOutput::Exception {
            reason,
            detail: detail(),
        })
    }
}

#[cfg(test)]
mod tests;
