//! The control plane on the upstream connection: what the agent says and hears there besides
//! its events.
//!
//! - `{prefix}/{site}/status`, retained: the status document every `control.status_interval`,
//!   at every change of a source's state, and after every (re)connection.
//! - `{prefix}/{site}/cmd/replay`: replay requests, handed to upstream (which sends the events
//!   again within its window and rate).
//! - `{prefix}/{site}/config/set`: pushed documents, handed to the remote configuration task.
//! - `{prefix}/{site}/config/status`, retained: each outcome of a pushed document, and the
//!   latest again after every (re)connection (a PUBACK a dropped connection took is not lost).
//!
//! Upstream owns the connection and delivery. It tells this task when it connected and what
//! arrived on the topics of [`UpstreamLink::topics`] ([`Heard`]), and publishes what this task
//! asks, with QoS 1 ([`Say`]).

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::replay::{parse_replay, ReplayRequest};
use crate::buffer::Store;
use crate::config::Config;
use crate::remote::Pushed;
use crate::status::StatusBoard;

/// Something upstream heard on its connection.
#[derive(Debug)]
pub enum Heard {
    /// A (re)connection, subscribed to the topics.
    Connected,
    /// The connection ended; what is said now waits for the next one.
    Disconnected,
    /// A message on one of the topics.
    Message {
        topic: String,
        payload: Vec<u8>,
        /// Sent because of the subscription (a retained copy), not just published.
        retain: bool,
    },
    /// The last connection ended on a message of `bytes`, above the `limit` upstream reads;
    /// upstream removed the retained copy on `config/set` before subscribing again.
    Oversized { bytes: usize, limit: usize },
}

/// A message for upstream to publish, QoS 1.
#[derive(Debug)]
pub struct Say {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// Upstream's end of the control plane.
pub struct UpstreamLink {
    /// Subscribed at every connection.
    pub topics: Vec<String>,
    /// The retained topic a message too large to read is removed from (`config/set`).
    pub retained_topic: String,
    pub heard: mpsc::Sender<Heard>,
    pub say: mpsc::Receiver<Say>,
}

/// The control plane's task.
pub struct Plane {
    pub config: Arc<Config>,
    pub store: Store,
    pub status: Arc<StatusBoard>,
    pub heard: mpsc::Receiver<Heard>,
    pub say: mpsc::Sender<Say>,
    /// To upstream.
    pub replays: mpsc::Sender<ReplayRequest>,
    /// To the remote configuration task: the latest document (a newer one replaces one it has
    /// not read yet).
    pub config_set: watch::Sender<Option<Pushed>>,
    /// From the remote configuration task: outcomes to publish.
    pub config_status: mpsc::Receiver<Vec<u8>>,
    pub shutdown: CancellationToken,
}

/// Messages waiting for upstream while it is disconnected, at most; the status is refreshed
/// and the last configuration outcome republished at the next connection anyway.
pub const SAY_QUEUE: usize = 64;

/// The upstream link and the plane's ends of its channels.
pub fn channels(config: &Config) -> (UpstreamLink, mpsc::Receiver<Heard>, mpsc::Sender<Say>) {
    let (heard_tx, heard_rx) = mpsc::channel(64);
    let (say_tx, say_rx) = mpsc::channel(SAY_QUEUE);
    let topics = Topics::of(config);
    (
        UpstreamLink {
            topics: vec![topics.replay.clone(), topics.config_set.clone()],
            retained_topic: topics.config_set,
            heard: heard_tx,
            say: say_rx,
        },
        heard_rx,
        say_tx,
    )
}

/// The control plane's topics of this site.
struct Topics {
    status: String,
    replay: String,
    config_set: String,
    config_status: String,
}

impl Topics {
    fn of(config: &Config) -> Topics {
        let p = format!("{}/{}", config.upstream.topic_prefix, config.site.id);
        Topics {
            status: format!("{p}/status"),
            replay: format!("{p}/cmd/replay"),
            config_set: format!("{p}/config/set"),
            config_status: format!("{p}/config/status"),
        }
    }
}

impl Plane {
    pub async fn run(mut self) {
        let topics = Topics::of(&self.config);
        let every = self.config.control.status_interval.0;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        // Ticks missed while disconnected are not made up in a burst at the next connection.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut changes = self.status.changes();
        // The latest configuration outcome: published again after every connection.
        let mut last_config_status: Option<Vec<u8>> = None;
        // The latest outcome is not yet handed to upstream on this connection.
        let mut config_status_unsent = false;
        let mut connected = false;
        loop {
            tokio::select! {
                // Cancel-safe: a cancelled token stays cancelled.
                _ = self.shutdown.cancelled() => return,
                // Cancel-safe: mpsc::Receiver::recv loses nothing when dropped.
                heard = self.heard.recv() => match heard {
                    None => return,
                    Some(Heard::Disconnected) => connected = false,
                    Some(Heard::Connected) => {
                        connected = true;
                        tick.reset();
                        config_status_unsent = last_config_status.is_some();
                        self.publish_status(&topics).await;
                    }
                    Some(Heard::Message { topic, payload, retain }) => {
                        if topic == topics.replay {
                            self.replay(&topics, &payload);
                        } else if topic == topics.config_set {
                            self.config_set.send_replace(Some(Pushed { bytes: payload, retained: retain }));
                        }
                    }
                    Some(Heard::Oversized { bytes, limit }) => {
                        let why = format!(
                            "a message of {bytes} bytes arrived on {}, above the {limit} bytes the agent reads; the retained document was removed from that topic (documents may have {} bytes at most)",
                            topics.config_set,
                            crate::remote::MAX_DOCUMENT
                        );
                        tracing::error!("pushed configuration rejected: {why}");
                        let body = serde_json::json!({"version": null, "state": "rejected", "reason": why});
                        last_config_status = Some(body.to_string().into_bytes());
                    }
                },
                // Cancel-safe: mpsc::Receiver::recv loses nothing when dropped.
                Some(body) = self.config_status.recv() => {
                    last_config_status = Some(body);
                    config_status_unsent = true;
                }
                // Cancel-safe: interval ticks are not lost.
                _ = tick.tick(), if connected => self.publish_status(&topics).await,
                // Cancel-safe: watch::Receiver::changed only marks the value seen on return.
                r = changes.changed() => {
                    if r.is_err() {
                        return;
                    }
                    if connected {
                        self.publish_status(&topics).await;
                    }
                }
            }
            // The latest outcome goes out once per connection; should upstream's queue be full,
            // it is tried again after the next event (each tick at the latest).
            if connected && config_status_unsent {
                if let Some(body) = &last_config_status {
                    config_status_unsent = !self.publish(&topics.config_status, body.clone(), true);
                }
            }
        }
    }

    fn replay(&self, topics: &Topics, payload: &[u8]) {
        match parse_replay(payload) {
            Ok(req) => {
                // Never waits on upstream: upstream may itself be waiting to hand this task the
                // next message, and a flood of requests must not wedge both.
                if self.replays.try_send(req).is_err() {
                    tracing::warn!(
                        "{}: ignored: replay requests arrive faster than they start; send it again later",
                        topics.replay
                    );
                }
            }
            Err(e) => tracing::warn!("{}: ignored: {e}", topics.replay),
        }
    }

    async fn publish_status(&self, topics: &Topics) {
        let body = super::current_status(&self.store, &self.status).await;
        // A status dropped for a full queue is refreshed at the next tick or change.
        let _ = self.publish(&topics.status, body.to_string().into_bytes(), true);
    }

    /// Hands a message to upstream. Should its queue be full (the connection dropped a moment
    /// ago), the message is dropped: the status is refreshed and the last outcome republished
    /// at the next connection.
    /// Whether upstream took it.
    fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) -> bool {
        self.say
            .try_send(Say {
                topic: topic.to_string(),
                payload,
                retain,
            })
            .is_ok()
    }
}
