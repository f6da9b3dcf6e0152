//! edge-agent: device readings in, stored durably, canonical events out.
//!
//! The pipeline, one module a stage: `sources` read devices, `normalize` turns readings into
//! canonical bodies, `buffer` commits them to redb, `upstream` publishes and deletes on PUBACK,
//! `control` answers operators. `app` wires them, `shutdown` stops them within one deadline;
//! `main.rs` only parses the command line.

pub mod app;
pub mod backoff;
pub mod buffer;
pub mod config;
pub mod control;
pub mod demo;
pub mod link;
pub mod normalize;
pub mod remote;
pub mod shutdown;
pub mod sources;
pub mod state_file;
pub mod status;
pub mod systemd;
pub mod time;
pub mod tls;
pub mod upstream;

/// `edge-agent --version`: version, git revision and target triple.
pub fn version_line() -> String {
    format!(
        "edge-agent {} (git {}, {})",
        env!("CARGO_PKG_VERSION"),
        env!("EDGE_AGENT_GIT_REV"),
        env!("EDGE_AGENT_TARGET")
    )
}
