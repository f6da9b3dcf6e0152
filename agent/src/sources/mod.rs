//! Sources: devices the agent reads. Each source is a config type with a `build(ctx)` that
//! returns its running future; the future ends when `ctx.shutdown` is cancelled.

pub mod mqtt;
pub mod serial;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::buffer::WriterHandle;
use crate::config::Config;
use crate::status::StatusBoard;

/// What every source gets from the agent.
#[derive(Clone)]
pub struct SourceContext {
    pub config: Arc<Config>,
    /// Scans seen at each station, for the scales there.
    pub correlator: crate::normalize::SharedCorrelator,
    pub writer: WriterHandle,
    pub status: Arc<StatusBoard>,
    pub shutdown: CancellationToken,
}

/// A running source.
pub type SourceTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Every configured source, built and ready to spawn.
pub fn build_all(ctx: &SourceContext) -> Vec<(String, SourceTask)> {
    let mut out: Vec<(String, SourceTask)> = Vec::new();
    for s in &ctx.config.sources.serial {
        out.push((s.id.clone(), Box::pin(s.clone().build(ctx.clone()))));
    }
    for s in &ctx.config.sources.mqtt {
        out.push((s.id.clone(), Box::pin(s.clone().build(ctx.clone()))));
    }
    out
}
