//! `edge-agent demo`: the real pipeline (`app::run`, buffer, sources, upstream) on a machine
//! with no broker and no devices. An embedded MQTT broker (rumqttd) stands in for both the site
//! broker and central; a barcode scanner is simulated on a real pseudo-terminal and another one
//! publishes to the site broker; a "central" subscriber prints every event it receives.
//!
//! Everything lives in a fresh temporary directory that is removed at the end. Built only with
//! the `demo` cargo feature (on by default), which is what pulls in rumqttd.

use std::process::ExitCode;
use std::time::Duration;

#[cfg(feature = "demo")]
mod broker;
#[cfg(feature = "demo")]
mod central;
#[cfg(feature = "demo")]
mod devices;
#[cfg(feature = "demo")]
mod session;

/// Runs the demo until Ctrl-C (or for `duration`); exit 0 after an orderly stop, else 1.
#[cfg(feature = "demo")]
pub fn run(duration: Option<Duration>) -> ExitCode {
    // The stand-in broker is quiet: it logs benign errors when clients disconnect, and a broker
    // that fails to listen shows as central failing to subscribe. RUST_LOG overrides this.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let dir = match session::TempDir::create() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("edge-agent demo: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("edge-agent-demo")
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(session::run(dir.path(), duration)));
    drop(dir);
    match outcome {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("edge-agent demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// This build has no embedded broker to run the demo with.
#[cfg(not(feature = "demo"))]
pub fn run(_duration: Option<Duration>) -> ExitCode {
    eprintln!("edge-agent: this build has no demo (built without the demo feature)");
    ExitCode::FAILURE
}
