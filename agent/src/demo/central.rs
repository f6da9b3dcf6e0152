//! "Central": subscribes to the agent's events on the embedded broker and prints each one.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, Context};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long to wait for the broker to come up and accept the subscription.
const SUBSCRIBE_DEADLINE: Duration = Duration::from_secs(5);
/// After the agent stopped, events still in the broker arrive within this quiet period.
const QUIET: Duration = Duration::from_millis(300);
const LAST_CALL: Duration = Duration::from_secs(2);

/// Events received, by kind.
pub type Counts = BTreeMap<String, u64>;

pub struct Central {
    stop: CancellationToken,
    task: JoinHandle<Counts>,
}

impl Central {
    /// Connects and subscribes to `filter`; returns once the broker confirmed the subscription.
    pub async fn subscribe(port: u16, filter: &str) -> anyhow::Result<Central> {
        let mut options = MqttOptions::new("demo-central", "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, events) = AsyncClient::new(options, 16);
        let (subscribed, confirmed) = oneshot::channel();
        let stop = CancellationToken::new();
        let task = tokio::spawn(receive(
            client,
            events,
            filter.to_string(),
            subscribed,
            stop.clone(),
        ));
        match tokio::time::timeout(SUBSCRIBE_DEADLINE, confirmed).await {
            Ok(Ok(())) => Ok(Central { stop, task }),
            _ => {
                stop.cancel();
                Err(anyhow!(
                    "the embedded broker on 127.0.0.1:{port} did not accept a subscription within {SUBSCRIBE_DEADLINE:?}"
                ))
            }
        }
    }

    /// Waits until the broker has forwarded what it still holds, then returns the counts.
    pub async fn finish(self) -> anyhow::Result<Counts> {
        self.stop.cancel();
        self.task.await.context("the central subscriber failed")
    }
}

async fn receive(
    client: AsyncClient,
    mut events: EventLoop,
    filter: String,
    subscribed: oneshot::Sender<()>,
    stop: CancellationToken,
) -> Counts {
    let mut subscribed = Some(subscribed);
    let mut counts = Counts::new();
    let mut last_call: Option<Instant> = None;
    let mut last_event = Instant::now();
    loop {
        let quiet_until = last_call.map(|d| d.min(last_event + QUIET));
        tokio::select! {
            // Cancel-safe enough: dropped only after the agent stopped publishing.
            r = events.poll() => match r {
                // Subscribe on every (re)connection: the session is clean.
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Err(e) = client.try_subscribe(filter.as_str(), QoS::AtLeastOnce) {
                        tracing::error!("central: cannot subscribe: {e}");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = subscribed.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    last_event = Instant::now();
                    let kind = show(&p.topic, &p.payload);
                    *counts.entry(kind).or_default() += 1;
                }
                Ok(_) => {}
                Err(e) => {
                    if subscribed.is_none() {
                        tracing::warn!("central: {e}; reconnecting");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Cancel-safe: waiting on a token holds no state.
            _ = stop.cancelled(), if last_call.is_none() => {
                last_call = Some(Instant::now() + LAST_CALL);
                last_event = Instant::now();
            }
            // Cancel-safe: a sleep holds no state.
            _ = sleep_until(quiet_until) => return counts,
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Prints one event as central sees it; returns its kind.
fn show(topic: &str, payload: &[u8]) -> String {
    let kind = topic.rsplit('/').next().unwrap_or(topic).to_string();
    let line = match serde_json::from_slice::<Value>(payload) {
        Ok(ev) => {
            let body = &ev["body"];
            let what = if kind == "exception" {
                format!(
                    "reason={} detail={}",
                    body["reason"].as_str().unwrap_or("?"),
                    body["detail"]
                )
            } else {
                body.to_string()
            };
            format!(
                "central <- {topic}  seq={} source={} {what}",
                ev["seq"],
                ev["source"].as_str().unwrap_or("?")
            )
        }
        Err(_) => format!("central <- {topic}  {} bytes, not JSON", payload.len()),
    };
    // A closed stdout (e.g. piped into `head`) must not bring the demo down.
    let _ = writeln!(std::io::stdout().lock(), "{line}");
    kind
}
