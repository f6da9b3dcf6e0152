//! MQTT devices on the site's broker. Subscribed with QoS 1, a stable client id and a
//! persistent session; a message is acknowledged (PUBACK) only after its reading is committed,
//! so whatever the agent has not stored the broker still holds and redelivers.

use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{mpsc, oneshot};

use super::SourceContext;
use crate::backoff::Backoff;
use crate::buffer::Appended;
use crate::config::{parse_mqtt_url, MqttSource};
use crate::normalize::Normalizer;
use crate::status::SourceState;

/// Acks waiting for their commit, at most.
const ACK_QUEUE: usize = 4096;

impl MqttSource {
    fn client_id(&self, site: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("edge-agent-{site}-{}", self.id))
    }

    fn options(&self, site: &str) -> Result<MqttOptions, String> {
        let addr = parse_mqtt_url(&self.url)?;
        let mut o = MqttOptions::new(self.client_id(site), addr.host, addr.port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_clean_session(false);
        o.set_manual_acks(true);
        // A device message larger than max_frame becomes an exception, not a dropped
        // connection: accept generously up to 1 MiB (mosquitto's own default allows more).
        o.set_max_packet_size(self.max_frame.max(1 << 20) + 1024, 1 << 20);
        Ok(o)
    }

    /// The running source: reads until shutdown.
    pub async fn build(self, ctx: SourceContext) {
        let site = ctx.config.site.id.clone();
        let opts = match self.options(&site) {
            Ok(o) => o,
            Err(e) => {
                ctx.status.set_source(&self.id, SourceState::Retrying, e);
                return;
            }
        };
        let mut norm = Normalizer::new(
            &ctx.config,
            &self.id,
            self.station.as_deref(),
            self.decoder,
            &self.no_read,
            self.max_frame,
        );
        let (client, mut eventloop) = AsyncClient::new(opts, 256);
        let (ack_tx, ack_rx) = mpsc::channel(ACK_QUEUE);
        let acker = tokio::spawn(ack_after_commit(client.clone(), ack_rx));
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            let event = tokio::select! {
                // Cancel-safe enough: we only cancel poll() at shutdown, and then drop the
                // connection; an unacknowledged message is redelivered by the broker.
                e = eventloop.poll() => e,
                _ = ctx.shutdown.cancelled() => break,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff.reset();
                    ctx.status.set_source(
                        &self.id,
                        SourceState::Open,
                        format!(
                            "subscribed at {} (session present: {})",
                            self.url, ack.session_present
                        ),
                    );
                    tracing::info!(source = %self.id, "connected to site broker {}", self.url);
                    for t in &self.topics {
                        if let Err(e) = client.try_subscribe(t.clone(), QoS::AtLeastOnce) {
                            tracing::error!(source = %self.id, "subscribing to {t}: {e}");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if !self.store(&mut norm, &ctx, p, &ack_tx).await {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let why = self.describe(&e);
                    let first = ctx
                        .status
                        .sources()
                        .get(&self.id)
                        .map(|s| s.detail != why)
                        .unwrap_or(true);
                    if first {
                        tracing::warn!(source = %self.id, "{why}; retrying");
                    }
                    ctx.status.set_source(&self.id, SourceState::Retrying, why);
                    tokio::select! {
                        // Cancel-safe: sleeping holds no state.
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = ctx.shutdown.cancelled() => break,
                    }
                }
            }
        }
        drop(ack_tx);
        finish(client, eventloop, acker).await;
    }

    /// Queues the reading and its ack; false if the agent is stopping.
    async fn store(
        &self,
        norm: &mut Normalizer,
        ctx: &SourceContext,
        p: Publish,
        acks: &mpsc::Sender<(oneshot::Receiver<Appended>, Publish)>,
    ) -> bool {
        let reading = norm.message(&p.payload);
        ctx.status.source_reading(&self.id, reading.observed_ms);
        match ctx.writer.append_confirmed(reading).await {
            Ok(confirmed) => acks.send((confirmed, p)).await.is_ok(),
            Err(_) => false,
        }
    }

    fn describe(&self, e: &ConnectionError) -> String {
        let what = format!("site broker {} (source {})", self.url, self.id);
        match e {
            ConnectionError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                format!("{what}: connection refused; is the broker running and listening there?")
            }
            ConnectionError::ConnectionRefused(code) => {
                format!("{what}: the broker refused the connection ({code:?}); check credentials and client id")
            }
            other => format!("{what}: {other}"),
        }
    }
}

/// Sends each PUBACK once its reading is committed, in arrival order.
async fn ack_after_commit(
    client: AsyncClient,
    mut rx: mpsc::Receiver<(oneshot::Receiver<Appended>, Publish)>,
) {
    while let Some((confirmed, publish)) = rx.recv().await {
        if confirmed.await.is_err() {
            // Not committed (agent stopping): no ack, the broker redelivers it.
            continue;
        }
        if client.ack(&publish).await.is_err() {
            return;
        }
    }
}

/// At shutdown: let the acks of committed readings go out, then disconnect cleanly.
async fn finish(
    client: AsyncClient,
    mut eventloop: EventLoop,
    mut acker: tokio::task::JoinHandle<()>,
) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            tokio::select! {
                // Cancel-safe: the other branch only wins when the acker finished.
                _ = &mut acker => break,
                r = eventloop.poll() => if r.is_err() { return },
            }
        }
        let _ = client.try_disconnect();
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}
