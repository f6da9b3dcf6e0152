//! Remote configuration (docs/remote-config.md): central signs a document of the site's
//! operational sections and pushes it retained to `{prefix}/{site}/config/set`; the agent
//! checks, persists and applies it, and reports on `{prefix}/{site}/config/status`.
//!
//! - `signed`: keys, signing and verification (ed25519).
//! - `merge`: what a document may change, and the configuration it makes.
//! - `push`: `edge-agent config push`.
//! - `state`: what the agent remembers (last known good, last received), beside the buffer.
//! - `manager`: the running task: check, switch, confirm, roll back, report.

mod error;
mod manager;
mod merge;
mod push;
mod signed;
mod state;

pub use error::{DocumentError, MergeError, Rejection, StateError};
pub use manager::{startup, Manager, Start, Switch};

/// A signed document above this many bytes is refused by `config push` and rejected by the
/// agent unread (a site's operational configuration is a few KiB; this leaves ample room).
pub const MAX_DOCUMENT: usize = 1 << 20;

/// A message that arrived on `{prefix}/{site}/config/set`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub bytes: Vec<u8>,
    /// Sent by the broker because the agent (re)subscribed (the retained copy), not because it
    /// was just published (MQTT sets the flag only then).
    pub retained: bool,
}
pub use merge::merge;
pub use push::{push, set_topic, Target};
pub use signed::{keygen, sign, SignedDoc};
pub use state::path_for as state_path;
