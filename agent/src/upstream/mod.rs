//! Upstream: publishes buffered events to the central broker and deletes them from the
//! backlog only after their PUBACK.
//!
//! Every connection is a fresh rumqttc client, so the only record of what is in flight is ours:
//! `awaiting` holds the seqs handed to the client in publish order until the event loop names
//! their packet id, `inflight` maps packet ids to seqs until the PUBACK. When the connection
//! drops, both are forgotten and the next connection starts again from the oldest pending
//! event: at least once, in seq order, with the same envelope (and `id`) every time.
//!
//! Replays (control socket, `{prefix}/{site}/cmd/replay`) send delivered events again with
//! `"replayed": true`, within the same window and rate cap, after the backlog.
//!
//! The control plane (`control::plane`: status, replay requests, config/set, config/status)
//! rides this connection: upstream subscribes to its topics at every connection, hands it what
//! arrives there and publishes what it asks; it keeps nothing of it.

mod rate;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use edge_protocol::Envelope;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions,
    Outgoing, Packet, QoS,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::buffer::{PendingRow, Store, WriterHandle};
use crate::config::{parse_mqtt_url, Config, Format};
use crate::control::plane::{Heard, UpstreamLink};
use crate::control::replay::ReplayRequest;
use crate::status::StatusBoard;
use crate::tls::Access;
use rate::TokenBucket;

/// The upstream task proves it is alive at least this often (for the systemd watchdog).
const HEARTBEAT: Duration = Duration::from_secs(1);

/// The largest message read from the upstream broker.
const INCOMING_MAX: usize = 4 << 20;

/// How long a stopping agent waits for PUBACKs of what is already in flight.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// The upstream stage.
pub struct Upstream {
    pub config: Arc<Config>,
    pub store: Store,
    pub writer: WriterHandle,
    pub status: Arc<StatusBoard>,
    pub shutdown: CancellationToken,
    /// Replay requests (control socket, `cmd/replay`): delivered events sent again.
    pub replays: mpsc::Receiver<ReplayRequest>,
    /// `max_inflight` and `replay_rate`, which a pushed configuration may change.
    pub limits: watch::Receiver<Limits>,
    /// The control plane's topics on this connection (see `control::plane`).
    pub link: UpstreamLink,
    /// The last connection ended on a message too large to read (bytes): the broker would send
    /// it again at every subscription, so the next connection first removes the retained copy
    /// on the link's retained topic.
    pub oversized: std::sync::atomic::AtomicUsize,
}

/// Why a connection to the upstream broker cannot even be tried: its URL, or its TLS and
/// credential files (read again at each connection, so a fix is picked up at the next retry).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("upstream broker {url}: {source}")]
    Url {
        url: String,
        source: crate::config::UrlError,
    },
    #[error("upstream broker {url}: {source}")]
    Access {
        url: String,
        source: crate::tls::AccessError,
    },
}

/// The upstream settings a pushed configuration may change while running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_inflight: u16,
    pub replay_rate: u32,
}

impl Limits {
    pub fn of(config: &Config) -> Limits {
        Limits {
            max_inflight: config.upstream.max_inflight,
            replay_rate: config.upstream.replay_rate,
        }
    }
}

/// The client's own in-flight table is sized at connect for at least this many publishes, so
/// that a pushed `max_inflight` up to it applies without reconnecting.
const CLIENT_INFLIGHT: u16 = 1024;

enum Ended {
    Shutdown,
    Dropped(String),
}

/// Per-connection bookkeeping.
struct Conn {
    connected: bool,
    /// What was handed to the client, oldest first, without packet id yet.
    awaiting: VecDeque<Sent>,
    /// Packet id → what it carries, until PUBACK.
    inflight: HashMap<u16, Sent>,
    /// Highest seq handed to the client on this connection.
    cursor: u64,
    /// The last fetch found nothing more; wait for a commit.
    caught_up: bool,
    /// The most publishes the client takes in flight on this connection.
    client_inflight: usize,
}

impl Conn {
    fn events_in_flight(&self) -> usize {
        self.awaiting
            .iter()
            .filter(|s| **s != Sent::Control)
            .count()
            + self
                .inflight
                .values()
                .filter(|s| **s != Sent::Control)
                .count()
    }
}

/// What one publish carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// A buffered event: its PUBACK removes it from the backlog.
    Event(u64),
    /// An event sent again by a replay.
    Replay,
    /// A control plane message (status, config/status).
    Control,
}

/// A replay in progress.
struct ReplayJob {
    next_seq: u64,
    since_ms: u64,
    until_ms: u64,
}

impl Upstream {
    fn topic_prefix(&self) -> String {
        format!(
            "{}/{}",
            self.config.upstream.topic_prefix, self.config.site.id
        )
    }

    fn client_inflight(&self) -> u16 {
        self.limits.borrow().max_inflight.max(CLIENT_INFLIGHT)
    }

    /// The upstream window now: `max_inflight`, within what this connection's client takes.
    fn window(&self, conn: &Conn) -> usize {
        usize::from(self.limits.borrow().max_inflight).min(conn.client_inflight)
    }

    /// Client options, with TLS settings and credentials read from their files now: a rotated
    /// certificate or password is picked up at the next connection.
    fn options(&self) -> Result<MqttOptions, SetupError> {
        let up = &self.config.upstream;
        let url = || up.url.clone();
        let addr =
            parse_mqtt_url(&up.url).map_err(|source| SetupError::Url { url: url(), source })?;
        let mut access = Access::prepare(&up.access("upstream"), addr.tls)
            .map_err(|source| SetupError::Access { url: url(), source })?;
        let mut o = MqttOptions::new(self.config.upstream_client_id(), addr.host, addr.port);
        if let Some(t) = access.transport() {
            o.set_transport(t);
        }
        if let Some((user, password)) = access.credentials() {
            o.set_credentials(user, password);
        }
        o.set_keep_alive(up.keep_alive.0);
        // We track delivery ourselves and resend from the buffer on every connection.
        o.set_clean_session(true);
        o.set_inflight(self.client_inflight().saturating_add(4));
        // Incoming: a pushed document is rejected above `remote::MAX_DOCUMENT` with a reason on
        // config/status, so the client must read one well above that; a message above even
        // this ends the connection (see `oversized`).
        o.set_max_packet_size(INCOMING_MAX, 16 << 20);
        o.set_last_will(LastWill::new(
            format!("{}/status", self.topic_prefix()),
            r#"{"state":"offline"}"#,
            QoS::AtLeastOnce,
            true,
        ));
        Ok(o)
    }

    /// Runs until shutdown.
    pub async fn run(mut self) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut last_why = String::new();
        let mut bucket = TokenBucket::new(self.limits.borrow_and_update().replay_rate);
        let mut jobs = VecDeque::new();
        loop {
            let ended = match self.options() {
                Ok(opts) => {
                    self.connection(opts, &mut backoff, &mut bucket, &mut jobs)
                        .await
                }
                Err(why) => Ended::Dropped(why.to_string()),
            };
            match ended {
                Ended::Shutdown => return,
                Ended::Dropped(why) => {
                    // The plane never waits on upstream, so this wait is short.
                    let _ = self.link.heard.send(Heard::Disconnected).await;
                    if why != last_why {
                        tracing::warn!("{why}; events stay buffered, retrying");
                        last_why = why.clone();
                    }
                    self.status.set_upstream(false, why);
                }
            }
            let until = tokio::time::Instant::now() + backoff.next_delay();
            let mut beat = tokio::time::interval(HEARTBEAT);
            loop {
                self.status.upstream_beat();
                tokio::select! {
                    // Cancel-safe: sleeping holds no state.
                    _ = tokio::time::sleep_until(until) => break,
                    // Cancel-safe: interval ticks are not lost.
                    _ = beat.tick() => {}
                    _ = self.shutdown.cancelled() => return,
                }
            }
        }
    }

    async fn connection(
        &mut self,
        opts: MqttOptions,
        backoff: &mut Backoff,
        bucket: &mut TokenBucket,
        jobs: &mut VecDeque<ReplayJob>,
    ) -> Ended {
        let cap = usize::from(self.client_inflight()) + 64;
        let (client, eventloop) = AsyncClient::new(opts, cap);
        let (ev_tx, mut events) = mpsc::channel(1024);
        let poller = tokio::spawn(poll(eventloop, ev_tx));
        let mut conn = Conn {
            connected: false,
            awaiting: VecDeque::new(),
            inflight: HashMap::new(),
            cursor: 0,
            caught_up: false,
            client_inflight: usize::from(self.client_inflight()),
        };
        let mut committed = self.writer.committed();
        let mut beat = tokio::time::interval(HEARTBEAT);
        let ended = loop {
            self.status.upstream_beat();
            if self.limits.has_changed().unwrap_or(false) {
                bucket.set_rate(self.limits.borrow_and_update().replay_rate);
            }
            let wait_tokens = bucket.wait();
            tokio::select! {
                // Cancel-safe: a cancelled token stays cancelled.
                _ = self.shutdown.cancelled() => {
                    self.drain(&client, &mut conn, &mut events).await;
                    break Ended::Shutdown;
                }
                // Cancel-safe: mpsc::Receiver::recv loses nothing when dropped.
                ev = events.recv() => match ev {
                    Some(Ok(ev)) => {
                        self.hear(&ev).await;
                        if let Some(why) = self.on_event(ev, &mut conn, backoff, &client).await {
                            break Ended::Dropped(why);
                        }
                    }
                    Some(Err(e)) => {
                        if let ConnectionError::MqttState(rumqttc::StateError::Deserialization(
                            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(n),
                        )) = &e
                        {
                            self.oversized
                                .store(*n, std::sync::atomic::Ordering::Relaxed);
                        }
                        break Ended::Dropped(self.describe(&e));
                    }
                    None => break Ended::Dropped(format!("upstream broker {}: connection closed", self.config.upstream.url)),
                },
                // Cancel-safe: watch::Receiver::changed only marks the value seen on return.
                r = committed.changed(), if conn.caught_up => {
                    if r.is_err() { break Ended::Shutdown; }
                    conn.caught_up = false;
                }
                // Cancel-safe: sleeping holds no state.
                _ = tokio::time::sleep_until(wait_tokens.unwrap_or_else(tokio::time::Instant::now)), if wait_tokens.is_some() && conn.connected && (!conn.caught_up || !jobs.is_empty()) => {}
                // Cancel-safe: interval ticks are not lost. Only beats the heartbeat (above).
                _ = beat.tick() => {}
                // Cancel-safe: mpsc::Receiver::recv loses nothing when dropped.
                Some(req) = self.replays.recv() => self.start_replay(req, jobs),
                // Cancel-safe: mpsc::Receiver::recv loses nothing when dropped. Waits in the
                // channel while disconnected.
                Some(say) = self.link.say.recv(), if conn.connected => {
                    if client
                        .try_publish(say.topic, QoS::AtLeastOnce, say.retain, say.payload)
                        .is_ok()
                    {
                        conn.awaiting.push_back(Sent::Control);
                    }
                }
            }
            if conn.connected && !conn.caught_up {
                if let Err(why) = self.fill(&client, &mut conn, bucket, &mut committed).await {
                    break Ended::Dropped(why);
                }
            }
            // Replays go after the backlog, in the room the backlog leaves.
            if conn.connected && conn.caught_up && !jobs.is_empty() {
                if let Err(why) = self.fill_replay(&client, &mut conn, bucket, jobs).await {
                    break Ended::Dropped(why);
                }
            }
        };
        poller.abort();
        ended
    }

    /// Handles one event; Some(reason) if the connection is unusable.
    async fn on_event(
        &self,
        ev: Event,
        conn: &mut Conn,
        backoff: &mut Backoff,
        client: &AsyncClient,
    ) -> Option<String> {
        match ev {
            Event::Incoming(Packet::ConnAck(ack)) => {
                if ack.code != ConnectReturnCode::Success {
                    return Some(format!(
                        "upstream broker {}: connection refused ({:?}); check credentials and client id",
                        self.config.upstream.url, ack.code
                    ));
                }
                backoff.up();
                conn.connected = true;
                tracing::info!("connected to upstream broker {}", self.config.upstream.url);
                self.status
                    .set_upstream(true, format!("connected to {}", self.config.upstream.url));
                let n = self.oversized.swap(0, std::sync::atomic::Ordering::Relaxed);
                if n > 0 {
                    self.clear_oversized(client, conn, n).await;
                }
                for topic in &self.link.topics {
                    if let Err(e) = client.try_subscribe(topic.clone(), QoS::AtLeastOnce) {
                        tracing::warn!("subscribing to {topic}: {e}");
                    }
                }
                let _ = self.link.heard.send(Heard::Connected).await;
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(seq) = conn.awaiting.pop_front() {
                    conn.inflight.insert(pkid, seq);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(Sent::Event(seq)) = conn.inflight.remove(&ack.pkid) {
                    self.status.add_delivered(1);
                    if self.writer.ack(vec![seq]).await.is_err() {
                        return Some("the buffer writer stopped".into());
                    }
                }
            }
            _ => {}
        }
        None
    }

    /// Publishes pending events while the window and the rate allow.
    async fn fill(
        &self,
        client: &AsyncClient,
        conn: &mut Conn,
        bucket: &mut TokenBucket,
        committed: &mut tokio::sync::watch::Receiver<u64>,
    ) -> Result<(), String> {
        let max = self.window(conn);
        let room = max.saturating_sub(conn.events_in_flight());
        let allowed = bucket.take(room);
        if allowed == 0 {
            return Ok(());
        }
        // Mark the committed seq seen before reading: a commit after this read wakes us.
        committed.borrow_and_update();
        let store = self.store.clone();
        let after = conn.cursor;
        let rows =
            match tokio::task::spawn_blocking(move || store.pending_after(after, allowed)).await {
                Ok(Ok(rows)) => rows,
                // The buffer is being reopened after a write error (the writer reports it): keep
                // the connection and look again after the next commit.
                Ok(Err(e)) => {
                    tracing::debug!("reading the buffer: {e}");
                    bucket.give_back(allowed);
                    conn.caught_up = true;
                    return Ok(());
                }
                Err(e) => return Err(format!("reading the buffer: {e}")),
            };
        bucket.give_back(allowed - rows.len());
        if rows.len() < allowed {
            conn.caught_up = true;
        }
        for row in rows {
            let seq = row.seq;
            let (topic, payload) = match self.encode(row) {
                Ok(encoded) => encoded,
                Err((e, cbor)) => {
                    // One unreadable row must not stop everything stored after it.
                    self.writer
                        .set_aside(seq, e.to_string(), &cbor)
                        .map_err(|e| e.to_string())?;
                    conn.cursor = seq;
                    continue;
                }
            };
            client
                .try_publish(topic, QoS::AtLeastOnce, false, payload)
                .map_err(|e| format!("upstream client: {e}"))?;
            conn.awaiting.push_back(Sent::Event(seq));
            conn.cursor = seq;
        }
        Ok(())
    }

    /// The topic and payload of a pending row; a row that does not read back as an envelope
    /// is returned with its bytes.
    #[allow(clippy::result_large_err)]
    fn encode(
        &self,
        row: PendingRow,
    ) -> Result<(String, Vec<u8>), (edge_protocol::event::DecodeError, Vec<u8>)> {
        let env = match Envelope::from_cbor(&row.cbor) {
            Ok(env) => env,
            Err(e) => return Err((e, row.cbor)),
        };
        let topic = format!("{}/events/{}", self.topic_prefix(), env.kind());
        let payload = match self.config.upstream.format {
            Format::Cbor => row.cbor,
            Format::Json => env.to_json(),
        };
        Ok((topic, payload))
    }

    /// Hands a message on a control plane topic to the control plane.
    async fn hear(&self, ev: &Event) {
        let Event::Incoming(Packet::Publish(p)) = ev else {
            return;
        };
        if self.link.topics.contains(&p.topic) {
            let heard = Heard::Message {
                topic: p.topic.clone(),
                payload: p.payload.to_vec(),
                retain: p.retain,
            };
            // Waits only while the control plane's queue is full.
            let _ = self.link.heard.send(heard).await;
        }
    }

    /// Removes the retained message that was too large to read (an empty retained message
    /// does that) before subscribing again, so that one message cannot keep the uplink down,
    /// and tells the control plane (which reports it rejected).
    async fn clear_oversized(&self, client: &AsyncClient, conn: &mut Conn, bytes: usize) {
        if client
            .try_publish(
                self.link.retained_topic.clone(),
                QoS::AtLeastOnce,
                true,
                Vec::new(),
            )
            .is_ok()
        {
            conn.awaiting.push_back(Sent::Control);
        }
        let _ = self
            .link
            .heard
            .send(Heard::Oversized {
                bytes,
                limit: INCOMING_MAX,
            })
            .await;
    }

    fn start_replay(&self, req: ReplayRequest, jobs: &mut VecDeque<ReplayJob>) {
        tracing::info!(
            "replaying delivered events observed from {} to {}",
            crate::time::format_rfc3339_ms(req.since_ms),
            crate::time::format_rfc3339_ms(req.until_ms)
        );
        jobs.push_back(ReplayJob {
            next_seq: 0,
            since_ms: req.since_ms,
            until_ms: req.until_ms,
        });
    }

    /// Publishes the next events of the oldest replay while the window and the rate allow.
    async fn fill_replay(
        &self,
        client: &AsyncClient,
        conn: &mut Conn,
        bucket: &mut TokenBucket,
        jobs: &mut VecDeque<ReplayJob>,
    ) -> Result<(), String> {
        let Some(job) = jobs.front_mut() else {
            return Ok(());
        };
        let max = self.window(conn);
        let room = max.saturating_sub(conn.events_in_flight());
        let allowed = bucket.take(room);
        if allowed == 0 {
            return Ok(());
        }
        let store = self.store.clone();
        let (from, since, until) = (job.next_seq, job.since_ms, job.until_ms);
        let (rows, next) = tokio::task::spawn_blocking(move || {
            store.delivered_in_window(from, since, until, allowed, 50_000)
        })
        .await
        .map_err(|e| format!("reading the buffer: {e}"))?
        .map_err(|e| e.to_string())?;
        bucket.give_back(allowed - rows.len());
        for row in rows {
            let Ok(mut env) = Envelope::from_cbor(&row.cbor) else {
                // Not sent when it was pending either (set aside): nothing to send again.
                tracing::warn!(
                    "replay: buffer row {} cannot be read back; skipped",
                    row.seq
                );
                continue;
            };
            env.replayed = true;
            let topic = format!("{}/events/{}", self.topic_prefix(), env.kind());
            let payload = match self.config.upstream.format {
                Format::Cbor => env.to_cbor(),
                Format::Json => env.to_json(),
            };
            client
                .try_publish(topic, QoS::AtLeastOnce, false, payload)
                .map_err(|e| format!("upstream client: {e}"))?;
            conn.awaiting.push_back(Sent::Replay);
        }
        match next {
            Some(seq) => job.next_seq = seq,
            None => {
                jobs.pop_front();
                tracing::info!("replay finished");
            }
        }
        Ok(())
    }

    /// At shutdown: wait (bounded) for the PUBACKs of what is in flight, then disconnect.
    async fn drain(
        &self,
        client: &AsyncClient,
        conn: &mut Conn,
        events: &mut mpsc::Receiver<Result<Event, ConnectionError>>,
    ) {
        let deadline = tokio::time::Instant::now() + DRAIN_DEADLINE;
        let mut dummy = Backoff::new(Duration::from_millis(1), Duration::from_millis(1));
        while conn.connected && conn.events_in_flight() > 0 {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Ok(ev))) => {
                    if self.on_event(ev, conn, &mut dummy, client).await.is_some() {
                        break;
                    }
                }
                Ok(_) => break,
                Err(_) => {
                    tracing::warn!(
                        "upstream: {} events still unacknowledged at shutdown; they stay buffered and are sent after restart",
                        conn.events_in_flight()
                    );
                    break;
                }
            }
        }
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Some(Ok(ev)) = events.recv().await {
                if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }

    fn describe(&self, e: &ConnectionError) -> String {
        let what = format!("upstream broker {}", self.config.upstream.url);
        if let Some(why) = crate::tls::explain(e, "upstream") {
            return format!("{what}: {why}");
        }
        match e {
            ConnectionError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                format!("{what}: connection refused; is it reachable and listening?")
            }
            ConnectionError::ConnectionRefused(
                code @ (ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized),
            ) => {
                format!(
                    "{what}: refused the connection ({code:?}); check upstream.username and upstream.password_file"
                )
            }
            ConnectionError::ConnectionRefused(code) => {
                format!(
                    "{what}: refused the connection ({code:?}); check credentials and client id"
                )
            }
            ConnectionError::Tls(t) => {
                format!("{what}: TLS: {t}; check upstream.url and upstream.ca_file")
            }
            other => format!("{what}: {other}"),
        }
    }
}

/// Owns the rumqttc event loop: polls it and forwards every event; ends on the first error.
async fn poll(mut eventloop: EventLoop, tx: mpsc::Sender<Result<Event, ConnectionError>>) {
    loop {
        let ev = eventloop.poll().await;
        if ev.is_err() {
            // PUBACKs read in the same batch as the error (a broker that shuts down answers
            // what it received, then closes): the broker has those events, so they count as
            // delivered instead of going out again as duplicates.
            let late: Vec<Event> = eventloop.state.events.drain(..).collect();
            for e in late {
                if matches!(e, Event::Incoming(Packet::PubAck(_))) && tx.send(Ok(e)).await.is_err()
                {
                    return;
                }
            }
        }
        let failed = ev.is_err();
        if tx.send(ev).await.is_err() || failed {
            return;
        }
    }
}
