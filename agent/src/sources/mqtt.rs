//! MQTT devices on the site's broker. MQTT 5, subscribed with QoS 1, a stable client id and a
//! persistent session (kept by the broker for `SESSION_EXPIRY` while the agent is away); a
//! message is acknowledged (PUBACK) only after its reading is committed, so whatever the agent
//! has not stored the broker still holds and redelivers.
//!
//! MQTT 5's Receive Maximum (`receive_maximum`) is the flow control: the broker never has more
//! than that many messages unacknowledged with us, which bounds both memory and what a crash
//! can make the broker redeliver (committed, but the PUBACK not yet sent).

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use std::collections::VecDeque;

use tokio::sync::oneshot;

use super::SourceContext;
use crate::backoff::Backoff;
use crate::buffer::Appended;
use crate::config::{parse_mqtt_url, MqttSource};
use crate::normalize::Normalizer;
use crate::status::SourceState;
use crate::tls::Access;

/// How long the site broker keeps our session (subscriptions and undelivered messages) while
/// the agent is away.
const SESSION_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Requests (PUBACKs, subscriptions) queued for the event loop at most. Far above any broker's
/// in-flight window, which bounds how many PUBACKs can be outstanding.
const REQUESTS: usize = 10_000;

impl MqttSource {
    fn client_id(&self, site: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("edge-agent-{site}-{}", self.id))
    }

    /// Client options, with TLS settings and credentials read from their files now. `key`
    /// names this source's keys in messages (`sources.mqtt[N]`).
    fn options(&self, site: &str, key: &str) -> Result<MqttOptions, String> {
        let what = format!("site broker {} (source {})", self.url, self.id);
        let addr = parse_mqtt_url(&self.url).map_err(|e| format!("{what}: {e}"))?;
        let mut access =
            Access::prepare(&self.access(key), addr.tls).map_err(|e| format!("{what}: {e}"))?;
        let mut o = MqttOptions::new(self.client_id(site), addr.host, addr.port);
        if let Some(t) = access.transport() {
            o.set_transport(t);
        }
        if let Some((user, password)) = access.credentials() {
            o.set_credentials(user, password);
        }
        o.set_keep_alive(Duration::from_secs(30));
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(SESSION_EXPIRY.as_secs() as u32));
        o.set_receive_maximum(Some(self.receive_maximum));
        o.set_manual_acks(true);
        // A device message larger than max_frame becomes an exception, not a dropped
        // connection: accept generously up to 1 MiB.
        o.set_max_packet_size(Some((self.max_frame.max(1 << 20) + 1024) as u32));
        Ok(o)
    }

    /// The running source: reads until shutdown.
    pub async fn build(self, ctx: SourceContext) {
        let site = ctx.config.site.id.clone();
        let key = self.key(&ctx);
        let mut norm = Normalizer::new(
            &ctx.config,
            &self.id,
            self.station.as_deref(),
            self.decoding(),
            ctx.correlator.clone(),
        );
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        // While the buffer refuses readings, look again soon: room comes back as upstream drains.
        let mut full_backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
        loop {
            let opts = match self.options(&site, &key) {
                Ok(o) => o,
                Err(why) => {
                    ctx.status.source_retrying(&self.id, why);
                    tokio::select! {
                        // Cancel-safe: sleeping holds no state.
                        _ = tokio::time::sleep(backoff.next_delay()) => continue,
                        _ = ctx.shutdown.cancelled() => return,
                    }
                }
            };
            // A fresh session object each time: after refusing readings (buffer full under
            // reject_new) we reconnect so the broker redelivers what we did not acknowledge.
            let (client, eventloop) = AsyncClient::new(opts, REQUESTS);
            match self
                .session(&client, eventloop, &mut norm, &ctx, &mut backoff, &key)
                .await
            {
                Exit::Shutdown => return,
                Exit::Refused => {
                    let why = format!(
                        "buffer full (storage.on_full = \"reject_new\"): not taking readings from {}; the site broker keeps them until there is room",
                        self.url
                    );
                    ctx.status.source_retrying(&self.id, why);
                    tokio::select! {
                        // Cancel-safe: sleeping holds no state.
                        _ = tokio::time::sleep(full_backoff.next_delay()) => {}
                        _ = ctx.shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// One MQTT session: runs until shutdown, or until the buffer refuses a reading.
    async fn session(
        &self,
        client: &AsyncClient,
        mut eventloop: EventLoop,
        norm: &mut Normalizer,
        ctx: &SourceContext,
        backoff: &mut Backoff,
        key: &str,
    ) -> Exit {
        // Readings queued for commit, oldest first, with the message to acknowledge after it.
        let mut unacked: VecDeque<(oneshot::Receiver<Appended>, Publish)> = VecDeque::new();
        let exit = loop {
            let event = tokio::select! {
                // Acks first: every committed reading's PUBACK leaves before more is read, so
                // what a crash can make the broker redeliver stays as small as one commit group.
                biased;
                // Cancel-safe: awaiting `&mut Receiver` leaves it in place if not ready.
                outcome = oldest(&mut unacked), if !unacked.is_empty() => {
                    let mut refused = self.ack_oldest(client, &mut unacked, outcome);
                    refused |= self.ack_committed(client, &mut unacked);
                    if refused {
                        break Exit::Refused;
                    }
                    continue;
                }
                // Cancel-safe enough: rumqttc reads into a buffer it keeps; we only drop this
                // future when another branch won, and poll it again right after.
                e = eventloop.poll() => e,
                _ = ctx.shutdown.cancelled() => break Exit::Shutdown,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if ack.code != ConnectReturnCode::Success {
                        tracing::warn!(source = %self.id, "site broker {} refused: {:?}", self.url, ack.code);
                        continue;
                    }
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
                    let reading = norm.message(&p.payload);
                    ctx.status.source_reading(&self.id, reading.observed_ms);
                    // Waits only when the writer's queue is full: back-pressure on the broker.
                    match ctx.writer.append_confirmed(reading).await {
                        Ok(confirmed) => unacked.push_back((confirmed, p)),
                        Err(_) => break Exit::Shutdown,
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let why = self.describe(&e, key);
                    ctx.status.source_retrying(&self.id, why);
                    tokio::select! {
                        // Cancel-safe: sleeping holds no state.
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = ctx.shutdown.cancelled() => break Exit::Shutdown,
                    }
                }
            }
        };
        self.finish(client, eventloop, unacked).await;
        exit
    }

    /// Acknowledges the oldest queued message once its reading is committed; true if the
    /// buffer refused it.
    fn ack_oldest(
        &self,
        client: &AsyncClient,
        unacked: &mut VecDeque<(oneshot::Receiver<Appended>, Publish)>,
        outcome: Option<Appended>,
    ) -> bool {
        let Some((_, publish)) = unacked.pop_front() else {
            return false;
        };
        match outcome {
            Some(Appended::Committed(_)) => {}
            // Refused (buffer full) or not stored (stopping): no PUBACK, the broker redelivers.
            Some(Appended::Refused) => return true,
            None => return false,
        }
        // The request queue is far larger than the broker's in-flight window, so this only
        // fails if the connection is gone; then the broker redelivers the message.
        if let Err(e) = client.try_ack(&publish) {
            tracing::debug!(source = %self.id, "PUBACK not sent ({e}); the broker will redeliver");
        }
        false
    }

    /// Acknowledges every queued message whose reading is already committed (a commit group
    /// confirms many at once), stopping at the first that is not; true if any was refused.
    fn ack_committed(
        &self,
        client: &AsyncClient,
        unacked: &mut VecDeque<(oneshot::Receiver<Appended>, Publish)>,
    ) -> bool {
        let mut refused = false;
        while let Some((rx, _)) = unacked.front_mut() {
            let outcome = match rx.try_recv() {
                Ok(a) => Some(a),
                Err(oneshot::error::TryRecvError::Closed) => None,
                Err(oneshot::error::TryRecvError::Empty) => return refused,
            };
            refused |= self.ack_oldest(client, unacked, outcome);
        }
        refused
    }

    /// At shutdown: acknowledge what the writer commits, then disconnect cleanly.
    async fn finish(
        &self,
        client: &AsyncClient,
        mut eventloop: EventLoop,
        mut unacked: VecDeque<(oneshot::Receiver<Appended>, Publish)>,
    ) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while !unacked.is_empty() {
                tokio::select! {
                    // Cancel-safe: see the main loop.
                    outcome = oldest(&mut unacked) => { self.ack_oldest(client, &mut unacked, outcome); }
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

    /// `sources.mqtt[N]`: how this source's keys are named in messages.
    fn key(&self, ctx: &SourceContext) -> String {
        match ctx.config.sources.mqtt.iter().position(|s| s.id == self.id) {
            Some(i) => format!("sources.mqtt[{i}]"),
            None => format!("source {}", self.id),
        }
    }

    fn describe(&self, e: &ConnectionError, key: &str) -> String {
        let what = format!("site broker {} (source {})", self.url, self.id);
        if let Some(why) = crate::tls::explain(e, key) {
            return format!("{what}: {why}");
        }
        match e {
            ConnectionError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                format!("{what}: connection refused; is the broker running and listening there?")
            }
            ConnectionError::ConnectionRefused(
                code @ (ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized),
            ) => {
                format!("{what}: the broker refused the connection ({code:?}); check {key}.username and {key}.password_file")
            }
            ConnectionError::ConnectionRefused(code) => {
                format!("{what}: the broker refused the connection ({code:?}); check credentials and client id")
            }
            ConnectionError::Tls(t) => {
                format!("{what}: TLS: {t}; check {key}.url and {key}.ca_file")
            }
            other => format!("{what}: {other}"),
        }
    }
}

/// Resolves when the oldest queued reading's fate is decided (None: the writer stopped).
async fn oldest(
    unacked: &mut VecDeque<(oneshot::Receiver<Appended>, Publish)>,
) -> Option<Appended> {
    match unacked.front_mut() {
        Some((rx, _)) => rx.await.ok(),
        None => std::future::pending().await,
    }
}

/// Why a session ended.
enum Exit {
    Shutdown,
    Refused,
}
