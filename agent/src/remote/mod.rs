//! Remote configuration (docs/remote-config.md): central signs a document of the site's
//! operational sections and pushes it retained to `{prefix}/{site}/config/set`; the agent
//! checks, persists and applies it, and reports on `{prefix}/{site}/config/status`.
//!
//! - `signed`: keys, signing and verification (ed25519).
//! - `merge`: what a document may change, and the configuration it makes.
//! - `push`: `edge-agent config push`.
//! - `state`: what the agent remembers (last known good, last received), beside the buffer.
//! - `manager`: the running task: check, switch, confirm, roll back, report.

mod manager;
mod merge;
mod push;
mod signed;
mod state;

pub use manager::{startup, Manager, Start, Switch};
pub use merge::merge;
pub use push::{push, set_topic, Target};
pub use signed::{keygen, sign, valid_public_key, SignedDoc};
pub use state::path_for as state_path;
