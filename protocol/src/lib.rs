//! The pure core of edge-agent: bytes in, typed readings and canonical events out.
//!
//! Nothing here performs I/O, spawns tasks or reads the clock: the agent passes in what it read
//! and when. That keeps every decoder fuzzable and lets the central side reuse the model.
#![forbid(unsafe_code)]

pub mod barcode;
pub mod cloudevents;
pub mod correlate;
pub mod decimal;
pub mod decoder;
pub mod event;
pub mod framing;
pub mod gs1;
pub mod rules;
pub mod scale;
pub mod schema;

pub use event::{Body, Envelope, Kind, Role, SCHEMA};
