//! The documented default of every optional key (`#[serde(default = "defaults::…")]`).

use std::time::Duration;

use super::model::{FlowControl, Format, OnFull, Parity};
use super::{ByteSize, Span};

pub fn max_bytes() -> ByteSize {
    ByteSize(2 << 30)
}
pub fn on_full() -> OnFull {
    OnFull::DropOldest
}
pub fn retain_delivered() -> Span {
    Span(Duration::from_secs(24 * 3600))
}
pub fn topic_prefix() -> String {
    "edge".into()
}
pub fn format() -> Format {
    Format::Cbor
}
pub fn max_inflight() -> u16 {
    100
}
pub fn replay_rate() -> u32 {
    2000
}
pub fn keep_alive() -> Span {
    Span(Duration::from_secs(30))
}
pub fn receive_maximum() -> u16 {
    1000
}
pub fn data_bits() -> u8 {
    8
}
pub fn parity() -> Parity {
    Parity::None
}
pub fn stop_bits() -> u8 {
    1
}
pub fn flow_control() -> FlowControl {
    FlowControl::None
}
pub fn confirm_timeout() -> Span {
    Span(Duration::from_secs(30))
}
pub fn status_interval() -> Span {
    Span(Duration::from_secs(30))
}
pub fn http() -> String {
    "127.0.0.1:9180".into()
}
pub fn health_grace() -> Span {
    Span(Duration::from_secs(300))
}

// A source's decoder settings (`decoders`).
pub fn no_read() -> String {
    "NOREAD".into()
}
pub fn max_frame() -> usize {
    4096
}
pub fn separator() -> String {
    "|".into()
}
pub fn settle() -> Span {
    Span(Duration::from_millis(300))
}
pub fn min_kg() -> String {
    "0.05".into()
}
pub fn settle_timeout() -> Span {
    Span(Duration::from_secs(10))
}
pub fn correlation_window() -> Span {
    Span(Duration::from_secs(10))
}
