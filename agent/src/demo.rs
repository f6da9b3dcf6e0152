//! `edge-agent demo`: the real pipeline with simulated devices (being written).

use std::process::ExitCode;

/// Runs the demo until Ctrl-C (or for `duration`).
pub fn run(_duration: Option<std::time::Duration>) -> ExitCode {
    eprintln!("edge-agent demo: not available in this build yet");
    ExitCode::FAILURE
}
