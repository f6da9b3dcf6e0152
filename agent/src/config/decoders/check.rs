//! The checks of a decoder's settings, once read: frame sizes, what serial or MQTT allows,
//! the rules, and each scale's settle rule.

use std::time::Duration;

use edge_protocol::decimal::Decimal;
use edge_protocol::decoder::Framing;

use super::DecoderConfig;
use crate::config::read::Collector;
use crate::config::Span;

impl DecoderConfig {
    /// Every problem of the decoder's settings, under `key` (the source's), for a serial
    /// source or an MQTT one.
    pub(in crate::config) fn check(&self, c: &mut Collector, key: &str, serial: bool) {
        let max_frame = self.max_frame();
        if !(16..=1 << 20).contains(&max_frame) {
            c.push(
                format!("{key}.max_frame"),
                format!("{max_frame} must be from 16 to 1048576 bytes"),
            );
        }
        if self.correlation_window().is_some() && !serial {
            c.push(
                format!("{key}.decoder"),
                format!(
                    "{:?} reads a scale on a serial port; use it in [[sources.serial]]",
                    self.name()
                ),
            );
        }
        if self.framing() != Framing::Line && !serial {
            c.push(
                format!("{key}.framing"),
                "an MQTT message is one frame: stx_etx framing is for serial sources; remove it",
            );
        }
        if let Some((rules, kind)) = self.rules() {
            if rules.is_empty() {
                c.push(
                    format!("{key}.rules"),
                    format!(
                        "the {} decoder needs at least one [[...rules]] entry mapping messages to events",
                        self.name()
                    ),
                );
            }
            for (j, r) in rules.iter().enumerate() {
                match r.build() {
                    Ok(rule) => {
                        for p in edge_protocol::rules::check_rule_for(&rule, kind) {
                            c.push(format!("{key}.rules[{j}]"), p);
                        }
                    }
                    Err(problems) => push_rule_problems(c, &format!("{key}.rules[{j}]"), problems),
                }
            }
        }
        match self {
            DecoderConfig::Delimited(d) if d.separator.is_empty() => c.push(
                format!("{key}.separator"),
                "must not be empty, e.g. \"|\" or \";\"",
            ),
            DecoderConfig::ScaleMtSics(d) => {
                d.check(c, key);
                if let Some(p) = d.poll_interval {
                    if p.0 < Duration::from_millis(20) {
                        c.push(
                            format!("{key}.poll_interval"),
                            format!("{p} is too fast; use at least 20ms"),
                        );
                    }
                }
            }
            DecoderConfig::ScaleToledo(d) => d.check(c, key),
            DecoderConfig::ScaleAscii(d) => d.check(c, key),
            _ => {}
        }
    }
}

/// The settle rule's keys of a scale: `min_kg` a weight, `settle` within `settle_timeout`.
pub(super) fn check_scale(c: &mut Collector, key: &str, min_kg: &str, settle: Span, timeout: Span) {
    match Decimal::parse(min_kg) {
        Ok(v) if !v.is_negative() => {}
        _ => c.push(
            format!("{key}.min_kg"),
            format!("{min_kg:?} is not a weight in kg; write e.g. \"0.05\""),
        ),
    }
    let timings_read = !c.is_poisoned(&format!("{key}.settle"))
        && !c.is_poisoned(&format!("{key}.settle_timeout"));
    if timings_read && settle.0 > timeout.0 {
        c.push(
            format!("{key}.settle"),
            format!("{settle} is longer than settle_timeout {timeout}: nothing could settle"),
        );
    }
}

/// The problems `RuleConfig::build` found ("kind: ..."), under the rule's key.
fn push_rule_problems(c: &mut Collector, rule_key: &str, problems: Vec<String>) {
    for p in problems {
        match p.split_once(": ") {
            Some((k, m)) => c.push(format!("{rule_key}.{k}"), m),
            None => c.push(rule_key, p),
        }
    }
}
