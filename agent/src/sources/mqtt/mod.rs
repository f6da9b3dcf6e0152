//! MQTT devices on the site's broker. MQTT 5, subscribed with QoS 1, a stable client id and a
//! persistent session (kept by the broker for `SESSION_EXPIRY` while the agent is away); a
//! message is acknowledged (PUBACK) only after its reading is committed, so whatever the agent
//! has not stored the broker still holds and redelivers.
//!
//! A broker that refuses MQTT 5 (legacy gateways, PLC-embedded brokers, aedes in Node-RED) is
//! read in MQTT 3.1.1 with the same guarantees: clean_session false and the same client id,
//! PUBACK after the commit, the same window. `link` decides and remembers the version and hands
//! on 3.1.1 packets as their MQTT 5 equivalents, so nothing here depends on it but the status
//! detail and one thing: 3.1.1 has no retain handling, so a resumed 3.1.1 session is not
//! subscribed again to filters it already has (each SUBSCRIBE would bring every retained
//! message again, stored as new readings).
//!
//! Flow control is ours, not the broker's: while `receive_maximum` messages wait for their
//! commit and PUBACK, the source reads nothing more (the rest waits in the socket and then in
//! the broker). That bounds memory, and bounds what a crash can make the broker redeliver
//! although it was already stored (committed, PUBACK not yet out) to `receive_maximum`, even
//! with brokers that send past the Receive Maximum we announce. The connection is in `crate::link`.

mod redelivery;
mod subscriptions;

use std::collections::VecDeque;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::oneshot;

use super::SourceContext;
use crate::backoff::Backoff;
use crate::buffer::{Appended, Digest};
use crate::config::{parse_mqtt_url, MqttSource};
use crate::link::{Link, LinkError, Settings, Version};
use crate::normalize::Normalizer;
use crate::status::SourceState;
use crate::tls::Access;
use redelivery::{Redeliveries, Verdict};

/// How long the site broker keeps our session (subscriptions and undelivered messages) while
/// the agent is away.
const SESSION_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Messages waiting for their commit, oldest first, with the packet id to acknowledge after
/// and what their receipt is.
type Unacked = VecDeque<(oneshot::Receiver<Appended>, u16, Track)>;

/// What a QoS 1 message leaves in the buffer's receipts (see `redelivery`).
#[derive(Debug, Clone, Copy)]
enum Track {
    /// Stored with its receipt.
    Stored(Digest),
    /// A redelivery of a stored message, whose receipt is there already.
    Redelivered(Digest),
    /// No receipt (a message that made no reading).
    Untracked,
}

impl MqttSource {
    /// Connection settings, with TLS settings and credentials read from their files now.
    /// `key` names this source's keys in messages (`sources.mqtt[N]`).
    fn settings(&self, site: &str, key: &str) -> Result<Settings, String> {
        let what = format!("site broker {} (source {})", self.url, self.id);
        let addr = parse_mqtt_url(&self.url).map_err(|e| format!("{what}: {e}"))?;
        let mut access =
            Access::prepare(&self.access(key), addr.tls).map_err(|e| format!("{what}: {e}"))?;
        Ok(Settings {
            host: addr.host,
            port: addr.port,
            tls: access.tls.take(),
            client_id: self.effective_client_id(site),
            login: access.credentials(),
            keep_alive: Duration::from_secs(30),
            session_expiry: SESSION_EXPIRY,
            receive_maximum: self.receive_maximum,
            // A device message larger than max_frame becomes an exception, not a dropped
            // connection: accept generously up to 1 MiB.
            max_packet: (self.decoder.max_frame().max(1 << 20) + 1024) as u32,
            announce_max_packet: true,
            clean_start: false,
            will: None,
        })
    }

    /// The running source: reads until shutdown.
    pub async fn build(self, ctx: SourceContext) {
        let site = ctx.config.site.id.clone();
        let key = self.key(&ctx);
        let mut norm = Normalizer::new(
            &ctx.config,
            &self.id,
            self.station.as_deref(),
            &self.decoder,
            ctx.correlator.clone(),
        );
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        // While the buffer refuses readings, look again soon: room comes back as upstream drains.
        let mut full_backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
        // After a refusal the source shows open again only once a reading is stored, not at
        // every reconnect while the buffer is still full.
        let mut refused = false;
        // The version this broker answered in, kept while the agent runs (MQTT 5 is tried
        // again after a restart).
        let mut version = None;
        // Receipts of stored messages not yet confirmed, loaded at the first session.
        let mut receipts: Option<Redeliveries> = None;
        // Messages handed to the writer: kept across a reconnection until their commit is
        // decided, so that what was stored is known when the broker sends it again.
        let mut unacked = Unacked::new();
        loop {
            let delay = match self.settings(&site, &key) {
                Err(why) => {
                    ctx.status.source_retrying(&self.id, why);
                    backoff.next_delay()
                }
                Ok(settings) => {
                    let mut state = Session {
                        version: &mut version,
                        receipts: &mut receipts,
                        unacked: &mut unacked,
                        backoff: &mut backoff,
                    };
                    let outcome = self
                        .session(&settings, &mut state, &mut norm, &ctx, refused)
                        .await;
                    refused = matches!(outcome, Ok(Exit::Refused));
                    match outcome {
                        Ok(Exit::Shutdown) => return,
                        Ok(Exit::Refused) => {
                            let why = format!(
                            "buffer full (storage.on_full = \"reject_new\"): not taking readings from {}; the site broker keeps them until there is room",
                            self.url
                        );
                            ctx.status.source_retrying(&self.id, why);
                            full_backoff.next_delay()
                        }
                        Err(e) => {
                            ctx.status
                                .source_retrying(&self.id, self.describe(&e, &key));
                            backoff.next_delay()
                        }
                    }
                }
            };
            // After status says why: while the disk is full this waits for the writer.
            if !self.settle(&mut unacked, &mut receipts, &ctx).await {
                return;
            }
            tokio::select! {
                // Cancel-safe: sleeping holds no state.
                _ = tokio::time::sleep(delay) => {}
                _ = ctx.shutdown.cancelled() => return,
            }
        }
    }

    /// One MQTT session: runs until shutdown, until the buffer refuses a reading (then we
    /// reconnect, so that the broker redelivers what we did not acknowledge), or until the
    /// connection fails.
    async fn session(
        &self,
        settings: &Settings,
        state: &mut Session<'_>,
        norm: &mut Normalizer,
        ctx: &SourceContext,
        after_refusal: bool,
    ) -> Result<Exit, LinkError> {
        let Session {
            version,
            receipts,
            unacked,
            backoff,
        } = state;
        let (mut link, ack) = tokio::select! {
            // Cancel-safe enough: an abandoned connection attempt is simply closed (and the
            // version is learnt only from a finished one).
            r = Link::open(settings, version) => r?,
            _ = ctx.shutdown.cancelled() => return Ok(Exit::Shutdown),
        };
        let protocol = match link.version() {
            Version::V5 => "MQTT 5".to_string(),
            v @ Version::V311 => format!("{v}: the broker refused MQTT 5"),
        };
        tracing::debug!(source = %self.id, "connected to site broker {} ({protocol}, session present: {})", self.url, ack.session_present);
        // Filters an earlier configuration subscribed to: the broker's session still has them.
        let memory = subscriptions::path_for(&ctx.config.storage.resolved_path());
        let session = subscriptions::session_key(&self.url, &settings.client_id);
        let receipts = match receipts {
            Some(r) if r.session().as_ref() == session => r,
            _ => {
                let stored = ctx.writer.receipts(&session).await.unwrap_or_else(|e| {
                    tracing::warn!(source = %self.id, "reading the receipts of stored messages: {e}; redeliveries of messages stored before are stored again");
                    Default::default()
                });
                receipts.insert(Redeliveries::new(session.as_str().into(), stored))
            }
        };
        if !ack.session_present && receipts.len() > 0 {
            // The broker kept nothing for us: none of the stored messages comes again.
            let _ = ctx.writer.forget(vec![receipts.clean_session()]);
        }
        let remembered = {
            let (path, key) = (memory.clone(), session.clone());
            // Shares a lock with the fsync'd writes: off the async workers.
            tokio::task::spawn_blocking(move || subscriptions::load(&path, &key))
                .await
                .unwrap_or_default()
        };
        let stale: Vec<String> = remembered
            .iter()
            .filter(|t| !self.topics.contains(t))
            .cloned()
            .collect();
        if !stale.is_empty() {
            tracing::info!(source = %self.id, "unsubscribing from {}, no longer in topics", stale.join(", "));
            link.unsubscribe(&stale).await?;
        }
        let wanted = to_subscribe(
            &self.topics,
            &remembered,
            link.version(),
            ack.session_present,
        );
        let subscribing = !wanted.is_empty();
        if subscribing {
            link.subscribe(&wanted).await?;
        }
        let opened = format!(
            "connected to {} ({protocol}, session present: {})",
            self.url, ack.session_present
        );
        // What status shows while open: the connection, and why redeliveries are stored again
        // if they are.
        let opened_with = |r: &Redeliveries| match &r.note {
            Some(note) => format!("{opened}; {note}"),
            None => opened.clone(),
        };
        // Shown open once the broker accepted the subscriptions (after a refusal: once a
        // reading is stored again).
        let mut shown_open = false;
        if !subscribing {
            // A resumed 3.1.1 session that has every filter already: nothing to wait for.
            backoff.up();
            if !after_refusal {
                shown_open = true;
                ctx.status
                    .set_source(&self.id, SourceState::Open, opened_with(receipts));
                tracing::info!(source = %self.id, "resumed the session at site broker {} ({protocol})", self.url);
            }
        }
        // Topics whose messages were ignored (logged once each per session).
        let mut ignored = std::collections::HashSet::new();
        let window = u64::from(self.receive_maximum);
        let mut read = Received::default();
        let mut flow = Flow::default();
        let mut keep_alive = tokio::time::interval_at(
            tokio::time::Instant::now() + link.keep_alive_every,
            link.keep_alive_every,
        );
        let exit = loop {
            // Decode what was read, up to what we hold in memory.
            while read.bytes < HELD_BYTES {
                match link.try_next()? {
                    None => break,
                    Some(Packet::Publish(p)) if self.wants(&p.topic) => read.push(p),
                    // A filter this source no longer has, kept by the broker's session: the
                    // message is not ours to store.
                    Some(Packet::Publish(p)) => {
                        if ignored.insert(p.topic.clone()) {
                            tracing::info!(source = %self.id, "ignoring messages on {:?}, which is not in topics", String::from_utf8_lossy(&p.topic));
                        }
                        if p.qos != QoS::AtMostOnce {
                            // Its id counts in the broker's sequence all the same.
                            receipts.arrive(p.pkid, p.dup, &[0; 16]);
                            link.ack(p.pkid)?;
                            link.flush().await?;
                        }
                    }
                    Some(Packet::PingResp(_)) => {
                        let forget = flow
                            .pong()
                            .into_iter()
                            .filter_map(|(pkid, d)| receipts.confirmed(pkid, d?))
                            .collect();
                        if ctx.writer.forget(forget).is_err() {
                            return Ok(Exit::Shutdown);
                        }
                    }
                    Some(Packet::SubAck(_)) if after_refusal => {
                        backoff.up();
                        self.remember(&memory, &session).await
                    }
                    Some(Packet::SubAck(_)) if !after_refusal => {
                        backoff.up();
                        self.remember(&memory, &session).await;
                        shown_open = true;
                        ctx.status
                            .set_source(&self.id, SourceState::Open, opened_with(receipts));
                        tracing::info!(source = %self.id, "subscribed at site broker {} ({protocol})", self.url);
                    }
                    // Filters removed without a SUBSCRIBE after them: recorded now.
                    Some(Packet::UnsubAck(_)) if !subscribing => {
                        self.remember(&memory, &session).await
                    }
                    Some(other) => {
                        tracing::debug!(source = %self.id, "ignoring {other:?} from the site broker")
                    }
                }
            }
            // Store what the window allows.
            while let Some(p) = read.queue.front() {
                if p.qos != QoS::AtMostOnce && !flow.room(window) {
                    break;
                }
                let Some(p) = read.pop() else { break };
                if !self.take(p, norm, ctx, unacked, receipts, &mut flow).await {
                    return Ok(Exit::Shutdown);
                }
            }
            if std::mem::take(&mut receipts.noted) && shown_open {
                ctx.status
                    .set_source(&self.id, SourceState::Open, opened_with(receipts));
            }
            tokio::select! {
                // PUBACKs first: each leaves as soon as its reading is committed.
                biased;
                // Cancel-safe: awaiting `&mut Receiver` leaves it in place if not ready.
                outcome = oldest(unacked), if !unacked.is_empty() => {
                    let (acked, refused) =
                        self.ack_committed(Some(&mut link), unacked, receipts, outcome, &mut flow)?;
                    if acked > 0 && !shown_open {
                        shown_open = true;
                        ctx.status.set_source(&self.id, SourceState::Open, opened_with(receipts));
                    }
                    if acked > 0 {
                        // Confirms them once the broker answers.
                        flow.pinged();
                        link.ping()?;
                    }
                    link.flush().await?;
                    if refused {
                        break Exit::Refused;
                    }
                }
                // Cancel-safe: see `Link::fill`.
                r = link.fill(), if read.bytes < HELD_BYTES => r?,
                // Cancel-safe: an interval tick that loses the race is taken next time.
                _ = keep_alive.tick() => {
                    if link.keep_alive()? {
                        flow.pinged();
                        link.ping()?;
                        link.flush().await?;
                    }
                }
                _ = ctx.shutdown.cancelled() => break Exit::Shutdown,
            }
        };
        if let Exit::Shutdown = exit {
            self.finish(&mut link, unacked, receipts).await;
        }
        Ok(exit)
    }

    /// Hands one message to the writer, or acknowledges it as a redelivery of a stored one;
    /// false if the writer has stopped.
    async fn take(
        &self,
        p: Publish,
        norm: &mut Normalizer,
        ctx: &SourceContext,
        unacked: &mut Unacked,
        receipts: &mut Redeliveries,
        flow: &mut Flow,
    ) -> bool {
        let mut track = Track::Untracked;
        if p.qos != QoS::AtMostOnce {
            let d = redelivery::digest(&p.topic, &p.payload);
            let (verdict, broke) = receipts.arrive(p.pkid, p.dup, &d);

            if let Some(b) = broke {
                receipts.breaks += 1;
                let cause = match b.skipped() {
                    Some(n) => format!(
                        "; {n} ids were skipped, as mosquitto does when it drops messages it queued for this client: check the site broker's log, and raise its max_queued_messages (default 1000)"
                    ),
                    None => String::new(),
                };
                let why = format!(
                    "site broker {} does not give out packet identifiers in sequence (expected {}, got {}{cause}), so a message it sends again cannot be told from an equal new one: redelivered messages are stored again (after a crash up to receive_maximum = {} readings may be stored twice, with new ids)",
                    self.url, b.expected, b.got, self.receive_maximum
                );
                if receipts.breaks == 1 {
                    tracing::warn!(source = %self.id, "{why}");
                } else {
                    // Once is enough in the log; status keeps the latest, with the count.
                    tracing::debug!(source = %self.id, "{why}");
                }
                receipts.note = Some(match receipts.breaks {
                    1 => why,
                    n => format!("{why} ({n} times since start)"),
                });
                receipts.noted = true;
            }
            if !p.dup && flow.redelivered > flow.redelivered_told {
                // The broker is through with what it sent again.
                tracing::info!(source = %self.id, "the site broker sent {} messages again that were already stored; acknowledged without storing them twice", flow.redelivered - flow.redelivered_told);
                flow.redelivered_told = flow.redelivered;
            }
            if verdict == Verdict::Redelivery {
                // Stored already (its receipt says so): acknowledged in its turn, not stored.
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(Appended::Committed(0));
                unacked.push_back((rx, p.pkid, Track::Redelivered(d)));
                flow.stored += 1;
                flow.redelivered += 1;
                return true;
            }
            track = Track::Stored(d);
        }
        let mut readings = norm.message(&p.payload);
        // A message is one reading with every decoder an MQTT source may have; should a
        // decoder make more, the last one's commit confirms all (commits keep queue order),
        // and one that makes none is acknowledged as stored.
        let last = readings.pop();
        for reading in readings {
            ctx.status.source_reading(&self.id, reading.observed_ms);
            if ctx.writer.append(reading).await.is_err() {
                return false;
            }
        }
        let confirmed = match last {
            Some(mut reading) => {
                ctx.status.source_reading(&self.id, reading.observed_ms);
                if let Track::Stored(d) = track {
                    reading.receipt = receipts.receipt(p.pkid, d);
                }
                // Waits only when the writer's queue is full: back-pressure on the broker.
                ctx.writer.append_confirmed(reading).await
            }
            None => {
                track = Track::Untracked;
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(Appended::Committed(0));
                Ok(rx)
            }
        };
        match confirmed {
            // QoS 0 is never acknowledged (nor redelivered).
            Ok(confirmed) => {
                if p.qos != QoS::AtMostOnce {
                    unacked.push_back((confirmed, p.pkid, track));
                    flow.stored += 1;
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Queues the PUBACK of the oldest message (whose fate is `outcome`) and of every one after
    /// it that is already committed (a commit group confirms many at once), stopping at the first
    /// that is not decided. Returns how many it acknowledged and whether the buffer refused any
    /// (no PUBACK: the broker redelivers). Without a link (the connection is gone) it only
    /// records what was stored.
    fn ack_committed(
        &self,
        mut link: Option<&mut Link>,
        unacked: &mut Unacked,
        receipts: &mut Redeliveries,
        mut outcome: Option<Appended>,
        flow: &mut Flow,
    ) -> Result<(u64, bool), LinkError> {
        let mut refused = false;
        let mut acked = 0;
        while let Some((_, pkid, track)) = unacked.pop_front() {
            match outcome {
                Some(Appended::Committed(_)) => {
                    let digest = match track {
                        Track::Stored(d) => {
                            receipts.stored(pkid, d);
                            Some(d)
                        }
                        Track::Redelivered(d) => Some(d),
                        Track::Untracked => None,
                    };
                    if let Some(link) = link.as_deref_mut() {
                        link.ack(pkid)?;
                        flow.acked(pkid, digest);
                        acked += 1;
                    }
                }
                Some(Appended::Refused) => refused = true,
                // Not stored (the writer is stopping): the broker redelivers it.
                None => {}
            }
            let Some((rx, _, _)) = unacked.front_mut() else {
                break;
            };
            outcome = match rx.try_recv() {
                Ok(a) => Some(a),
                Err(oneshot::error::TryRecvError::Closed) => None,
                Err(oneshot::error::TryRecvError::Empty) => break,
            };
        }
        Ok((acked, refused))
    }

    /// After a session ended: waits until the commits of what it handed to the writer are
    /// decided and records the receipts of what was stored, so that the next session knows them
    /// when the broker sends those messages again. False on shutdown.
    async fn settle(
        &self,
        unacked: &mut Unacked,
        receipts: &mut Option<Redeliveries>,
        ctx: &SourceContext,
    ) -> bool {
        let Some(receipts) = receipts.as_mut() else {
            unacked.clear();
            return true;
        };
        let mut flow = Flow::default();
        while !unacked.is_empty() {
            tokio::select! {
                // Cancel-safe: awaiting `&mut Receiver` leaves it in place if not ready.
                outcome = oldest(unacked) => {
                    let _ = self.ack_committed(None, unacked, receipts, outcome, &mut flow);
                }
                _ = ctx.shutdown.cancelled() => return false,
            }
        }
        true
    }

    /// At shutdown: acknowledge what the writer commits, then disconnect cleanly.
    async fn finish(&self, link: &mut Link, unacked: &mut Unacked, receipts: &mut Redeliveries) {
        let mut flow = Flow::default();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while !unacked.is_empty() {
                let outcome = oldest(unacked).await;
                self.ack_committed(Some(link), unacked, receipts, outcome, &mut flow)?;
                link.flush().await?;
            }
            link.disconnect().await
        })
        .await;
    }

    /// Records the filters the broker accepted, for the next session's UNSUBSCRIBE.
    async fn remember(&self, memory: &std::path::Path, session: &str) {
        let (path, key, topics) = (
            memory.to_path_buf(),
            session.to_string(),
            self.topics.clone(),
        );
        // A small file, but fsync'd: off the async workers.
        let saved = tokio::task::spawn_blocking(move || subscriptions::save(&path, &key, &topics))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        if let Err(e) = saved {
            tracing::warn!(source = %self.id, "recording subscriptions in {}: {e}", memory.display());
        }
    }

    /// Whether a message on `topic` is for this source: it matches one of `topics` (a shared
    /// subscription `$share/GROUP/FILTER` matches as FILTER).
    fn wants(&self, topic: &[u8]) -> bool {
        let Ok(topic) = std::str::from_utf8(topic) else {
            return false;
        };
        self.topics.iter().any(|f| {
            let filter = f
                .strip_prefix("$share/")
                .and_then(|rest| rest.split_once('/'))
                .map_or(f.as_str(), |(_, filter)| filter);
            rumqttc::v5::mqttbytes::matches(topic, filter)
        })
    }

    /// `sources.mqtt[N]`: how this source's keys are named in messages.
    fn key(&self, ctx: &SourceContext) -> String {
        match ctx.config.sources.mqtt.iter().position(|s| s.id == self.id) {
            Some(i) => format!("sources.mqtt[{i}]"),
            None => format!("source {}", self.id),
        }
    }

    fn describe(&self, e: &LinkError, key: &str) -> String {
        let what = format!("site broker {} (source {})", self.url, self.id);
        e.explain(&what, key, &format!("{key}.topics"))
    }
}

/// The filters to SUBSCRIBE to now: all of `topics`, except on a resumed MQTT 3.1.1 session,
/// which keeps the filters it was subscribed to (`remembered`): there only the new ones, since
/// 3.1.1 sends every retained message again at each SUBSCRIBE. MQTT 5 subscribes again every
/// time (retain handling 1 keeps retained messages to new subscriptions).
fn to_subscribe(
    topics: &[String],
    remembered: &[String],
    version: Version,
    session_present: bool,
) -> Vec<String> {
    match version {
        Version::V311 if session_present => topics
            .iter()
            .filter(|t| !remembered.contains(t))
            .cloned()
            .collect(),
        _ => topics.to_vec(),
    }
}

/// Resolves when the oldest queued reading's fate is decided (None: the writer stopped).
async fn oldest(unacked: &mut Unacked) -> Option<Appended> {
    match unacked.front_mut() {
        Some((rx, _, _)) => rx.await.ok(),
        None => std::future::pending().await,
    }
}

/// How much decoded input the source holds in memory, waiting for the window to open, before
/// it stops reading from the broker. Only a broker that floods past Receive Maximum fills it;
/// if a PINGRESP is then stuck behind more than this, the keep-alive times out and the session
/// starts over (the broker redelivers; nothing is lost).
const HELD_BYTES: usize = 8 << 20;

/// Messages read from the broker and not yet handed to the writer. Losing them (a dropped
/// connection, a stop) loses nothing at QoS 1: the broker redelivers what we never
/// acknowledged. QoS 0 messages have no redelivery, as QoS 0 allows.
#[derive(Default)]
struct Received {
    queue: VecDeque<Publish>,
    bytes: usize,
}

impl Received {
    fn push(&mut self, p: Publish) {
        self.bytes += p.topic.len() + p.payload.len();
        self.queue.push_back(p);
    }

    fn pop(&mut self) -> Option<Publish> {
        let p = self.queue.pop_front()?;
        self.bytes -= p.topic.len() + p.payload.len();
        Some(p)
    }
}

/// The window, counted from what the broker has confirmed rather than from what we wrote: a
/// broker may read our PUBACKs long after we send them (mosquitto 2.0.11 reads one packet from
/// us per loop and sends twenty more for each), and a PUBACK not yet read when the agent dies
/// is lost with the connection. A PINGRESP follows everything the broker read before our
/// PINGREQ, so a PINGREQ follows each batch of PUBACKs, and we store at most `window`
/// messages beyond what the broker confirmed: that bounds what a crash can make the broker
/// redeliver although it was already stored.
#[derive(Default)]
struct Flow {
    /// QoS 1 messages handed to the writer (or recognised as redeliveries).
    stored: u64,
    /// Of those, redeliveries of stored messages, acknowledged without storing.
    redelivered: u64,
    /// `redelivered` when last logged.
    redelivered_told: u64,
    /// PUBACKs written.
    acked: u64,
    /// PUBACKs the broker has read (confirmed by a PINGRESP).
    confirmed: u64,
    /// `acked` when each PINGREQ still unanswered was sent, oldest first.
    marks: VecDeque<u64>,
    /// The PUBACKs written and not yet confirmed, oldest first, with their message's digest
    /// when it has a receipt.
    written: VecDeque<(u16, Option<Digest>)>,
}

impl Flow {
    /// Whether one more QoS 1 message may be stored.
    fn room(&self, window: u64) -> bool {
        self.stored - self.confirmed < window
    }

    /// One more PUBACK is queued.
    fn acked(&mut self, pkid: u16, digest: Option<Digest>) {
        self.acked += 1;
        self.written.push_back((pkid, digest));
    }

    /// A PINGREQ is queued after every PUBACK so far: its PINGRESP confirms them.
    fn pinged(&mut self) {
        self.marks.push_back(self.acked);
    }

    /// A PINGRESP came: the PUBACKs before its PINGREQ are confirmed. Returns them.
    fn pong(&mut self) -> Vec<(u16, Option<Digest>)> {
        let Some(mark) = self.marks.pop_front() else {
            return Vec::new();
        };
        let n = mark.saturating_sub(self.confirmed) as usize;
        self.confirmed = mark;
        self.written.drain(..n.min(self.written.len())).collect()
    }
}

/// What a source keeps across its sessions, lent to each.
struct Session<'a> {
    /// The MQTT version the broker answered in.
    version: &'a mut Option<Version>,
    receipts: &'a mut Option<Redeliveries>,
    unacked: &'a mut Unacked,
    backoff: &'a mut Backoff,
}

/// Why a session ended.
enum Exit {
    Shutdown,
    Refused,
}

#[cfg(test)]
mod tests {
    use super::{to_subscribe, Flow, Version};

    #[test]
    fn a_resumed_311_session_subscribes_only_to_new_filters() {
        let topics: Vec<String> = vec!["site/a".into(), "site/b/#".into()];
        let all = |v, present, remembered: &[String]| to_subscribe(&topics, remembered, v, present);
        let known: Vec<String> = vec!["site/a".into(), "site/b/#".into(), "site/old".into()];
        assert!(
            all(Version::V311, true, &known).is_empty(),
            "resumed with every filter: no SUBSCRIBE, no retained messages again"
        );
        assert_eq!(
            all(Version::V311, true, &["site/a".into()]),
            ["site/b/#"],
            "a filter added to topics"
        );
        assert_eq!(
            all(Version::V311, true, &[]),
            topics,
            "nothing remembered: everything"
        );
        assert_eq!(
            all(Version::V311, false, &known),
            topics,
            "a new session has no subscriptions"
        );
        assert_eq!(
            all(Version::V5, true, &known),
            topics,
            "MQTT 5 subscribes again (retain handling 1)"
        );
    }

    #[test]
    fn a_message_is_ours_when_its_topic_matches_a_filter_shared_or_not() {
        let config = crate::config::load_str(
            r#"
[site]
id = "dc-test-01"
[upstream]
url = "mqtt://central:1883"
[[stations]]
id = "sort-01"
role = "sorting"
[[sources.mqtt]]
id = "sorter"
url = "mqtt://site:1883"
topics = ["site/sorter/+/telegram", "$share/edge/site/plc/#"]
decoder = "barcode"
station = "sort-01"
"#,
            "test",
        )
        .unwrap();
        let source = &config.sources.mqtt[0];
        assert!(source.wants(b"site/sorter/7/telegram"));
        assert!(source.wants(b"site/plc/line-2/state"));
        assert!(!source.wants(b"site/sorter/7/other"));
        assert!(!source.wants(b"site/old"));
        assert!(!source.wants(b"\xff\xfe"));
    }

    #[test]
    fn the_window_opens_on_what_the_broker_confirmed_not_on_what_was_written() {
        let mut flow = Flow::default();
        for _ in 0..10 {
            assert!(flow.room(10));
            flow.stored += 1;
        }
        assert!(!flow.room(10), "ten stored, none confirmed");
        for id in 1..=6 {
            flow.acked(id, None);
        }
        flow.pinged();
        assert!(
            !flow.room(10),
            "PUBACKs written but not yet read by the broker"
        );
        for id in 7..=10 {
            flow.acked(id, Some([id as u8; 16]));
        }
        flow.pinged();
        let first: Vec<u16> = flow.pong().into_iter().map(|(id, _)| id).collect();
        assert_eq!(first, [1, 2, 3, 4, 5, 6], "the first batch, in order");
        assert_eq!(flow.stored - flow.confirmed, 4);
        assert!(flow.room(10));
        let second = flow.pong();
        assert_eq!(second.len(), 4);
        assert_eq!(second[0], (7, Some([7; 16])), "with their digests");
        assert_eq!(
            flow.confirmed, 10,
            "the second PINGRESP confirms the second batch"
        );
        flow.pong();
        assert_eq!(
            flow.confirmed, 10,
            "a PINGRESP nobody asked for confirms nothing more"
        );
    }

    #[test]
    fn a_keep_alive_ping_confirms_what_was_acknowledged_before_it() {
        let mut flow = Flow {
            stored: 3,
            ..Flow::default()
        };
        for id in 1..=3 {
            flow.acked(id, None);
        }
        flow.pinged(); // keep-alive, with PUBACKs already out
        flow.pong();
        assert_eq!(flow.confirmed, 3);
        assert!(flow.room(1));
    }
}
