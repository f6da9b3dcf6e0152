//! Sources: devices the agent reads. Each source is a config type with a `build(ctx)` that
//! returns its running future; the future ends when `ctx.shutdown` is cancelled.

pub mod mqtt;
pub mod serial;
mod set;

pub use set::SourceSet;

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

/// The ids of every configured source.
pub fn ids(config: &Config) -> Vec<String> {
    let serial = config.sources.serial.iter().map(|s| s.id.clone());
    serial
        .chain(config.sources.mqtt.iter().map(|s| s.id.clone()))
        .collect()
}

/// The source `id` of `ctx.config`, built and ready to spawn; it ends when `ctx.shutdown` is
/// cancelled.
pub fn build(ctx: &SourceContext, id: &str) -> Option<SourceTask> {
    if let Some(s) = ctx.config.sources.serial.iter().find(|s| s.id == id) {
        return Some(Box::pin(s.clone().build(ctx.clone())));
    }
    let s = ctx.config.sources.mqtt.iter().find(|s| s.id == id)?;
    Some(Box::pin(s.clone().build(ctx.clone())))
}
