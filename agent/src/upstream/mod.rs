//! Upstream: publishes buffered events to the central broker and deletes them from the
//! backlog only after their PUBACK.
//!
//! The connection is ours (`crate::link`, as the MQTT sources use): PUBLISH packets are encoded
//! straight into its output buffer and written in one go, up to `max_inflight` messages
//! unacknowledged (pipelined). The backlog is read from the buffer in large chunks (`READ_AHEAD`
//! rows per read; with `upstream.batch` above 1 decoded on the blocking pool and read one chunk
//! ahead while this one is sent, see `reader`); once caught up, what the writer has just committed comes in memory with its
//! envelopes, not read back from the file (`buffer::tail`). Every connection starts clean (the
//! broker keeps nothing for us), so the only record of what is in flight is ours: `inflight`
//! maps our packet ids to what they carry until the PUBACK. When the connection drops it is
//! forgotten and the next connection starts again from the oldest pending event: at least
//! once, in seq order, with the same envelope (and `id`) every time.
//!
//! `upstream.batch` above 1 sends up to that many consecutive events of one topic as one
//! message (a JSON array, or a CBOR array with `format = "cbor"`); its PUBACK delivers them
//! all.
//!
//! Routing (`routes`): each event's topic is rendered when it is sent, from the routes in
//! effect then (a push re-routes the backlog). High-priority events wait in their own pending
//! table (see `buffer`), read ahead and sent before any normal one whenever any are pending;
//! each table is sent in seq order, so order is kept per source within each priority.
//!
//! Replays (control socket, `{prefix}/{site}/cmd/replay`) send delivered events again with
//! `"replayed": true`, within the same window and rate cap, after the backlog.
//!
//! The control plane (`control::plane`: status, replay requests, config/set, config/status)
//! rides this connection: upstream subscribes to its topics at every connection, hands it what
//! arrives there and publishes what it asks; it keeps nothing of it.

mod encode;
pub mod http;
mod rate;
mod reader;
pub mod routes;

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use edge_protocol::Envelope;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::buffer::{PendingRow, ReadLimit, Store, WriterHandle};
use crate::config::{parse_mqtt_url, Config, Format, Priority};
use crate::control::plane::{Heard, UpstreamLink};
use crate::control::replay::ReplayRequest;
use crate::link::{Link, LinkError, Settings, Version, Will};
use crate::status::StatusBoard;
use crate::tls::Access;
use rate::TokenBucket;
use reader::{ReadError, Reader};

/// The upstream task proves it is alive at least this often (for the systemd watchdog).
const HEARTBEAT: Duration = Duration::from_secs(1);

/// The largest message read from the upstream broker.
const INCOMING_MAX: usize = 4 << 20;

/// How long a stopping agent waits for PUBACKs of what is already in flight.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// How long a new connection waits for the previous one's acknowledgements to be committed.
const SETTLED_WAIT: Duration = Duration::from_secs(2);

/// Pending rows read from the buffer at once, ahead of the window. 1024 rather than 2048
/// (measured, both benches, batch 100: drain 546k against 475k events/s, peak RSS 40 against
/// 44 MiB; one event per message no slower): smaller chunks keep reading ahead and sending
/// closer in step.
const READ_AHEAD: usize = 1024;

/// Bytes of PUBLISH packets queued before they are written (more wait for the next write).
const WRITE_CHUNK: usize = 256 << 10;

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
    /// Events and the control plane, or (with an HTTP upstream) only the control plane.
    pub role: Role,
}

/// What the MQTT connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Events and the control plane, to `upstream.url`.
    Events,
    /// Only the control plane, to `control.broker` (events go over HTTP, see [`http`]).
    ControlOnly,
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

enum Ended {
    Shutdown,
    Dropped(String),
}

/// What one publish carried.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sent {
    /// A buffered event: its PUBACK removes it from the backlog.
    Event(u64),
    /// Buffered events in one message (`upstream.batch`).
    Batch(Vec<u64>),
    /// Events sent again by a replay.
    Replay,
    /// A control plane message (status, config/status).
    Control,
}

/// Per-connection bookkeeping.
struct Conn {
    link: Link,
    /// Packet id → what it carries, until PUBACK.
    inflight: HashMap<u16, Sent>,
    /// Messages carrying events in `inflight` (the window counts these).
    events_in_flight: usize,
    /// The broker's Receive Maximum: messages it takes unacknowledged at most.
    broker_window: usize,
    /// The last packet id given out.
    last_pkid: u16,
    /// Pending normal-priority rows read ahead of the window, oldest first.
    ahead: VecDeque<PendingRow>,
    /// Highest normal-priority seq read from the buffer on this connection.
    cursor: u64,
    /// The last read of normal rows found nothing more; wait for a commit.
    caught_up: bool,
    /// The same for high-priority rows, which go first.
    ahead_high: VecDeque<PendingRow>,
    cursor_high: u64,
    caught_up_high: bool,
    /// Where each priority's rows come from (memory or the file, read ahead).
    reader: Reader,
    reader_high: Reader,
}

impl Conn {
    /// Nothing read ahead and nothing more in the buffer.
    fn idle(&self) -> bool {
        self.caught_up && self.caught_up_high && self.ahead.is_empty() && self.ahead_high.is_empty()
    }
}

impl Conn {
    /// A packet id not in flight.
    fn next_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = if self.last_pkid == u16::MAX {
                1
            } else {
                self.last_pkid + 1
            };
            if !self.inflight.contains_key(&self.last_pkid) {
                return self.last_pkid;
            }
        }
    }

    fn send(
        &mut self,
        topic: &str,
        payload: &[u8],
        retain: bool,
        what: Sent,
    ) -> Result<(), String> {
        let pkid = self.next_pkid();
        self.link
            .publish(topic, payload, retain, pkid)
            .map_err(|e| format!("upstream: {e}"))?;
        if !matches!(what, Sent::Control) {
            self.events_in_flight += 1;
        }
        self.inflight.insert(pkid, what);
        Ok(())
    }
}

/// A replay in progress.
struct ReplayJob {
    next_seq: u64,
    since_ms: u64,
    until_ms: u64,
}

impl ReplayJob {
    fn start(req: ReplayRequest) -> ReplayJob {
        tracing::info!(
            "replaying delivered events observed from {} to {}",
            crate::time::format_rfc3339_ms(req.since_ms),
            crate::time::format_rfc3339_ms(req.until_ms)
        );
        ReplayJob {
            next_seq: 0,
            since_ms: req.since_ms,
            until_ms: req.until_ms,
        }
    }
}

/// Topic names: rendered from the routes in effect into reused strings.
struct Topics {
    /// `{prefix}/{site}/`.
    prefix: String,
    routes: watch::Receiver<Arc<routes::Routes>>,
    current: Arc<routes::Routes>,
    /// The topic of the message being put together, and the next event's, to compare.
    topic: String,
    next: String,
}

impl Topics {
    fn new(prefix: String, mut routes: watch::Receiver<Arc<routes::Routes>>) -> Topics {
        let current = routes.borrow_and_update().clone();
        Topics {
            topic: String::with_capacity(prefix.len() + 64),
            next: String::with_capacity(prefix.len() + 64),
            prefix,
            routes,
            current,
        }
    }

    /// Picks up routes a push changed (once per change, not per event).
    fn refresh(&mut self) {
        if self.routes.has_changed().unwrap_or(false) {
            self.current = self.routes.borrow_and_update().clone();
        }
    }

    /// Renders `env`'s full topic into `topic` (`next`: false) or `next` (true).
    fn render(&mut self, env: &Envelope, next: bool) {
        let out = if next {
            &mut self.next
        } else {
            &mut self.topic
        };
        out.clear();
        out.push_str(&self.prefix);
        self.current.render(&routes::Event::of_envelope(env), out);
    }
}

impl Upstream {
    fn topic_prefix(&self) -> String {
        format!(
            "{}/{}",
            self.config.upstream.topic_prefix, self.config.site.id
        )
    }

    /// The upstream window now: `max_inflight` messages, and fewer than the broker's Receive
    /// Maximum (MQTT 5: a broker may disconnect a client that sends more), which keeps room
    /// for the control plane's few messages (status, config/status).
    fn window(&self, conn: &Conn) -> usize {
        event_window(self.limits.borrow().max_inflight, conn.broker_window)
    }

    fn batch(&self) -> usize {
        self.config.upstream.batch_size()
    }

    /// Where one priority's pending rows come from on a connection (working ahead only when
    /// batching, see `reader`).
    fn reader(&self, priority: Priority) -> Reader {
        let (store, writer) = (self.store.clone(), self.writer.clone());
        Reader::new(store, writer, priority, READ_AHEAD, self.batch() > 1)
    }

    fn format(&self) -> Format {
        self.config.upstream.format()
    }

    /// Connection settings, with TLS settings and credentials read from their files now: a
    /// rotated certificate or password is picked up at the next connection.
    fn settings(&self) -> Result<Settings, SetupError> {
        let up = &self.config.upstream;
        let url = || self.url().to_string();
        let addr =
            parse_mqtt_url(self.url()).map_err(|source| SetupError::Url { url: url(), source })?;
        let keys = match self.role {
            Role::Events => up.access("upstream"),
            Role::ControlOnly => up.control_access(self.url()),
        };
        let mut access = Access::prepare(&keys, addr.tls)
            .map_err(|source| SetupError::Access { url: url(), source })?;
        Ok(Settings {
            host: addr.host,
            port: addr.port,
            tls: access.tls.take(),
            client_id: self.config.upstream_client_id(),
            login: access.credentials(),
            keep_alive: up.keep_alive.0,
            // We track delivery ourselves and resend from the buffer on every connection.
            clean_start: true,
            session_expiry: Duration::ZERO,
            receive_maximum: 64,
            // Incoming: a pushed document is rejected above `remote::MAX_DOCUMENT` with a
            // reason on config/status, so the connection must read one well above that; a
            // message above even this ends the connection (see `oversized`).
            max_packet: INCOMING_MAX as u32,
            // Not announced: the broker would drop a larger message unseen, and central would
            // never hear why its document was not applied.
            announce_max_packet: false,
            will: Some(Will {
                topic: format!("{}/status", self.topic_prefix()),
                payload: br#"{"state":"offline"}"#.to_vec(),
            }),
        })
    }

    /// The broker this connection goes to.
    fn url(&self) -> &str {
        match self.role {
            Role::Events => &self.config.upstream.url,
            Role::ControlOnly => self.config.control.broker.as_deref().unwrap_or_default(),
        }
    }

    /// What a person calls it.
    fn what(&self) -> String {
        match self.role {
            Role::Events => format!("upstream broker {}", self.url()),
            Role::ControlOnly => format!("control broker {}", self.url()),
        }
    }

    /// The upstream task is alive (the control-only connection is not the upstream task).
    fn beat(&self) {
        if self.role == Role::Events {
            self.status.upstream_beat();
        }
    }

    /// Runs until shutdown.
    pub async fn run(mut self) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut last_why = String::new();
        let mut bucket = TokenBucket::new(self.limits.borrow_and_update().replay_rate);
        let mut jobs = VecDeque::new();
        // The version the broker answered in, kept while the agent runs.
        let mut version = None;
        loop {
            let ended = match self.settings() {
                Ok(settings) => {
                    self.connection(
                        &settings,
                        &mut version,
                        &mut backoff,
                        &mut bucket,
                        &mut jobs,
                    )
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
                        match self.role {
                            Role::Events => {
                                tracing::warn!("{why}; events stay buffered, retrying")
                            }
                            Role::ControlOnly => tracing::warn!(
                                "{why}; status, replay requests and pushed configuration wait for it, retrying"
                            ),
                        }
                        last_why = why.clone();
                    }
                    if self.role == Role::Events {
                        self.status.set_upstream(false, why);
                    }
                }
            }
            let until = tokio::time::Instant::now() + backoff.next_delay();
            let mut beat = tokio::time::interval(HEARTBEAT);
            loop {
                self.beat();
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
        settings: &Settings,
        version: &mut Option<Version>,
        backoff: &mut Backoff,
        bucket: &mut TokenBucket,
        jobs: &mut VecDeque<ReplayJob>,
    ) -> Ended {
        let opened = tokio::select! {
            // Cancel-safe enough: an abandoned connection attempt is simply closed.
            r = Link::open(settings, version) => r,
            _ = self.shutdown.cancelled() => return Ended::Shutdown,
        };
        let (link, ack) = match opened {
            Ok(opened) => opened,
            Err(e) => return Ended::Dropped(self.describe(&e)),
        };
        let broker_window = ack
            .properties
            .as_ref()
            .and_then(|p| p.receive_max)
            .map_or(usize::from(u16::MAX), usize::from);
        let max_inflight = self.limits.borrow().max_inflight;
        let window = event_window(max_inflight, broker_window);
        if self.role == Role::Events && window < usize::from(max_inflight) {
            tracing::info!(
                "{} takes at most {broker_window} unacknowledged messages (its Receive Maximum), fewer than upstream.max_inflight {max_inflight}: {window} events at a time, the rest for status",
                self.what(),
            );
        }
        let mut conn = Conn {
            link,
            broker_window,
            inflight: HashMap::new(),
            events_in_flight: 0,
            // 1 and 2 are the link's SUBSCRIBE and UNSUBSCRIBE ids (one id space per direction).
            last_pkid: 2,
            ahead: VecDeque::new(),
            cursor: 0,
            caught_up: false,
            ahead_high: VecDeque::new(),
            cursor_high: 0,
            caught_up_high: false,
            reader: self.reader(Priority::Normal),
            reader_high: self.reader(Priority::High),
        };
        match self.connected(&mut conn, backoff).await {
            Ok(()) => {}
            Err(e) => return Ended::Dropped(self.describe(&e)),
        }
        // PUBACKs of the last connection may still wait for their commit: the backlog is read
        // after it, or those events would go out again. Bounded, so that a writer retrying a
        // full disk does not hold upstream (sending again is only a duplicate).
        let _ = tokio::time::timeout(SETTLED_WAIT, self.writer.ping()).await;
        let mut topics = Topics::new(format!("{}/", self.topic_prefix()), self.writer.routes());
        let mut committed = self.writer.committed();
        let mut committed_high = self.writer.committed_high();
        let mut beat = tokio::time::interval(HEARTBEAT);
        let mut keep_alive = tokio::time::interval_at(
            tokio::time::Instant::now() + conn.link.keep_alive_every,
            conn.link.keep_alive_every,
        );
        loop {
            self.beat();
            if self.limits.has_changed().unwrap_or(false) {
                bucket.set_rate(self.limits.borrow_and_update().replay_rate);
            }
            let wait_tokens = bucket.wait();
            let sending = !conn.idle() || !jobs.is_empty();
            tokio::select! {
                // Cancel-safe: a cancelled token stays cancelled.
                _ = self.shutdown.cancelled() => {
                    self.drain(&mut conn).await;
                    return Ended::Shutdown;
                }
                // Cancel-safe: see `Link::fill`.
                r = conn.link.fill() => {
                    if let Err(e) = r {
                        return Ended::Dropped(self.describe(&e));
                    }
                    if let Err(e) = self.read(&mut conn).await {
                        return Ended::Dropped(e);
                    }
                }
                // Cancel-safe: watch::Receiver::changed only marks the value seen on return.
                r = committed.changed(), if conn.caught_up => {
                    if r.is_err() { return Ended::Shutdown; }
                    conn.caught_up = false;
                    // The writer moves `committed_high` before `committed`.
                    if committed_high.has_changed().unwrap_or(false) {
                        conn.caught_up_high = false;
                    }
                }
                // Cancel-safe: sleeping holds no state.
                _ = tokio::time::sleep_until(wait_tokens.unwrap_or_else(tokio::time::Instant::now)), if wait_tokens.is_some() && sending => {}
                // Cancel-safe: interval ticks are not lost. Only beats the heartbeat (above).
                _ = beat.tick() => {}
                // Cancel-safe: an interval tick that loses the race is taken next time.
                _ = keep_alive.tick() => {
                    match conn.link.keep_alive() {
                        Ok(true) => {
                            if let Err(e) = conn.link.ping() {
                                return Ended::Dropped(self.describe(&e));
                            }
                        }
                        Ok(false) => {}
                        Err(e) => return Ended::Dropped(self.describe(&e)),
                    }
                }
                // Cancel-safe: mpsc::Receiver::recv loses nothing when dropped.
                Some(req) = self.replays.recv() => self.start_replay(req, jobs),
                // Cancel-safe: mpsc::Receiver::recv loses nothing when dropped.
                Some(say) = self.link.say.recv() => {
                    if let Err(why) = conn.send(&say.topic, &say.payload, say.retain, Sent::Control) {
                        return Ended::Dropped(why);
                    }
                }
            }
            if let Err(why) = self
                .fill(
                    &mut conn,
                    bucket,
                    (&mut committed, &mut committed_high),
                    &mut topics,
                )
                .await
            {
                return Ended::Dropped(why);
            }
            // Replays go after the backlog, in the room the backlog leaves.
            if conn.idle() && !jobs.is_empty() {
                if let Err(why) = self.fill_replay(&mut conn, bucket, jobs, &mut topics).await {
                    return Ended::Dropped(why);
                }
            }
            if conn.link.queued() > 0 {
                if let Err(e) = conn.link.flush().await {
                    return Ended::Dropped(self.describe(&e));
                }
            }
        }
    }

    /// The broker accepted the connection: subscribe the control plane's topics, clear an
    /// oversized retained message, tell the plane.
    async fn connected(&mut self, conn: &mut Conn, backoff: &mut Backoff) -> Result<(), LinkError> {
        backoff.up();
        tracing::info!("connected to {} ({})", self.what(), conn.link.version());
        if self.role == Role::Events {
            self.status
                .set_upstream(true, format!("connected to {}", self.url()));
        }
        let n = self.oversized.swap(0, std::sync::atomic::Ordering::Relaxed);
        if n > 0 {
            self.clear_oversized(conn, n).await;
        }
        if !self.link.topics.is_empty() {
            conn.link.subscribe(&self.link.topics).await?;
        }
        let _ = self.link.heard.send(Heard::Connected).await;
        Ok(())
    }

    /// Handles every packet read so far.
    async fn read(&mut self, conn: &mut Conn) -> Result<(), String> {
        let mut delivered: Vec<u64> = Vec::new();
        loop {
            let packet = match conn.link.try_next() {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    // PUBACKs read before the error count: the broker has those events.
                    self.delivered(delivered).await?;
                    if let LinkError::TooLarge(n) = &e {
                        self.oversized
                            .store(*n, std::sync::atomic::Ordering::Relaxed);
                    }
                    return Err(self.describe(&e));
                }
            };
            match packet {
                Packet::PubAck(ack) => match conn.inflight.remove(&ack.pkid) {
                    Some(Sent::Event(seq)) => {
                        conn.events_in_flight -= 1;
                        delivered.push(seq);
                    }
                    Some(Sent::Batch(seqs)) => {
                        conn.events_in_flight -= 1;
                        delivered.extend(seqs);
                    }
                    Some(Sent::Replay) => conn.events_in_flight -= 1,
                    Some(Sent::Control) | None => {}
                },
                Packet::Publish(p) => {
                    if p.qos != QoS::AtMostOnce {
                        conn.link.ack(p.pkid).map_err(|e| self.describe(&e))?;
                    }
                    self.hear(p).await;
                }
                _ => {}
            }
        }
        self.delivered(delivered).await
    }

    async fn delivered(&self, seqs: Vec<u64>) -> Result<(), String> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.status.add_delivered(seqs.len() as u64);
        self.writer
            .ack(seqs)
            .await
            .map_err(|_| "the buffer writer stopped".to_string())
    }

    /// Publishes pending events while the window and the rate allow: high-priority ones first
    /// whenever any are pending.
    async fn fill(
        &self,
        conn: &mut Conn,
        bucket: &mut TokenBucket,
        (committed, committed_high): (&mut watch::Receiver<u64>, &mut watch::Receiver<u64>),
        topics: &mut Topics,
    ) -> Result<(), String> {
        if self.role == Role::ControlOnly {
            return Ok(());
        }
        let batch = self.batch();
        topics.refresh();
        while conn.events_in_flight < self.window(conn) && conn.link.queued() < WRITE_CHUNK {
            if committed_high.has_changed().unwrap_or(false) {
                conn.caught_up_high = false;
            }
            if conn.ahead_high.is_empty() && !conn.caught_up_high {
                self.read_ahead(conn, Priority::High, committed_high)
                    .await?;
            }
            let high = !conn.ahead_high.is_empty();
            if !high
                && conn.ahead.is_empty()
                && (conn.caught_up || !self.read_ahead(conn, Priority::Normal, committed).await?)
            {
                return Ok(());
            }
            let ahead = if high {
                &mut conn.ahead_high
            } else {
                &mut conn.ahead
            };
            let allowed = bucket.take(batch.min(ahead.len()));
            if allowed == 0 {
                return Ok(());
            }
            let mut rows: Vec<PendingRow> = Vec::with_capacity(allowed);
            // Each row's envelope, decoded once (for its topic, and its payload unless CBOR).
            let mut envs: Vec<Envelope> = Vec::with_capacity(allowed);
            while rows.len() < allowed {
                let Some(row) = ahead.front_mut() else { break };
                let env = match row.envelope() {
                    Ok(env) => env,
                    Err(e) => {
                        let Some(row) = ahead.pop_front() else {
                            break;
                        };
                        // One unreadable row must not stop everything stored after it.
                        self.writer
                            .set_aside(row.seq, e.to_string(), &row.cbor)
                            .map_err(|e| e.to_string())?;
                        continue;
                    }
                };
                // A batch is one topic.
                if rows.is_empty() {
                    topics.render(&env, false);
                } else {
                    topics.render(&env, true);
                    if topics.next != topics.topic {
                        // It starts the next batch: keep what was decoded.
                        if let Some(row) = ahead.front_mut() {
                            row.env = Some(Box::new(env));
                        }
                        break;
                    }
                }
                let Some(row) = ahead.pop_front() else {
                    break;
                };
                rows.push(row);
                envs.push(env);
                if batch == 1 {
                    break;
                }
            }
            bucket.give_back(allowed - rows.len());
            if rows.is_empty() {
                continue;
            }
            let topic = topics.topic.as_str();
            // A message larger than the broker takes is never sent (the broker would drop the
            // connection, again at every retry): a batch goes in halves, the rest back to the
            // front, and an event too large alone is set aside.
            loop {
                let single = rows.len() == 1 && batch == 1;
                let payload = if single {
                    encode::event(self.format(), &rows[0], &envs[0])
                } else {
                    Cow::Owned(encode::array(self.format(), &rows, &envs))
                };
                let max = conn.link.peer_max_packet();
                if conn.link.publish_size(topic, &payload) <= max {
                    let what = if single {
                        Sent::Event(rows[0].seq)
                    } else {
                        Sent::Batch(rows.iter().map(|r| r.seq).collect())
                    };
                    conn.send(topic, &payload, false, what)?;
                    break;
                }
                if rows.len() > 1 {
                    let keep = rows.len() / 2;
                    let ahead = if high {
                        &mut conn.ahead_high
                    } else {
                        &mut conn.ahead
                    };
                    bucket.give_back(rows.len() - keep);
                    for row in rows.drain(keep..).rev() {
                        ahead.push_front(row);
                    }
                    envs.truncate(keep);
                    continue;
                }
                let why = format!(
                    "{} bytes as one message on {topic}, more than {} takes (its Maximum Packet Size, {max} bytes)",
                    payload.len(),
                    self.what()
                );
                self.status.add_rejected();
                self.writer
                    .refused(rows[0].seq, why)
                    .map_err(|e| e.to_string())?;
                break;
            }
        }
        Ok(())
    }

    /// Reads the next pending rows of one priority into their `ahead`; false when there were
    /// none. `committed` is that priority's commit signal.
    async fn read_ahead(
        &self,
        conn: &mut Conn,
        priority: Priority,
        committed: &mut watch::Receiver<u64>,
    ) -> Result<bool, String> {
        // Mark the committed seq seen before reading: a commit after this read wakes us.
        committed.borrow_and_update();
        let (reader, cursor, caught_up, ahead) = match priority {
            Priority::High => (
                &mut conn.reader_high,
                &mut conn.cursor_high,
                &mut conn.caught_up_high,
                &mut conn.ahead_high,
            ),
            Priority::Normal => (
                &mut conn.reader,
                &mut conn.cursor,
                &mut conn.caught_up,
                &mut conn.ahead,
            ),
        };
        let (rows, full) = match reader.read(*cursor).await {
            Ok(read) => read,
            // High rows are looked for again at the next pass (at least every HEARTBEAT).
            Err(e @ ReadError::Store(_)) => {
                tracing::debug!("{e}");
                *caught_up = priority == Priority::Normal;
                return Ok(false);
            }
            Err(e @ ReadError::Task(_)) => return Err(e.to_string()),
        };
        if !full {
            *caught_up = true;
        }
        if let Some(last) = rows.last() {
            *cursor = last.seq;
        }
        let any = !rows.is_empty();
        ahead.extend(rows);
        Ok(any)
    }

    /// Hands a message on a control plane topic to the control plane.
    async fn hear(&self, p: rumqttc::v5::mqttbytes::v5::Publish) {
        let Ok(topic) = std::str::from_utf8(&p.topic) else {
            return;
        };
        if self.link.topics.iter().any(|t| t == topic) {
            let heard = Heard::Message {
                topic: topic.to_string(),
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
    async fn clear_oversized(&self, conn: &mut Conn, bytes: usize) {
        let topic = self.link.retained_topic.clone();
        let _ = conn.send(&topic, &[], true, Sent::Control);
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
        jobs.push_back(ReplayJob::start(req));
    }

    /// Publishes the next events of the oldest replay while the window and the rate allow.
    async fn fill_replay(
        &self,
        conn: &mut Conn,
        bucket: &mut TokenBucket,
        jobs: &mut VecDeque<ReplayJob>,
        topics: &mut Topics,
    ) -> Result<(), String> {
        let Some(job) = jobs.front_mut().filter(|_| self.role == Role::Events) else {
            return Ok(());
        };
        let room = self.window(conn).saturating_sub(conn.events_in_flight);
        let allowed = bucket.take(room);
        if allowed == 0 {
            return Ok(());
        }
        let store = self.store.clone();
        let (from, since, until) = (job.next_seq, job.since_ms, job.until_ms);
        let limit = ReadLimit {
            rows: allowed,
            bytes: reader::CHUNK_BYTES,
        };
        let (rows, next) = tokio::task::spawn_blocking(move || {
            store.delivered_in_window(from, since, until, limit, 50_000)
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
            let payload = encode::envelope(self.format(), &env);
            topics.render(&env, false);
            if conn.link.publish_size(&topics.topic, &payload) > conn.link.peer_max_packet() {
                tracing::warn!(
                    "replay: buffer row {} is larger than {} takes; skipped",
                    row.seq,
                    self.what()
                );
                continue;
            }
            conn.send(&topics.topic, &payload, false, Sent::Replay)?;
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

    /// At shutdown: say offline (retained, as the Last Will would), wait (bounded) for the
    /// PUBACKs of what is in flight, then disconnect.
    async fn drain(&mut self, conn: &mut Conn) {
        let status = format!("{}/status", self.topic_prefix());
        let _ = conn.send(&status, br#"{"state":"offline"}"#, true, Sent::Control);
        let deadline = tokio::time::Instant::now() + DRAIN_DEADLINE;
        let drained = tokio::time::timeout_at(deadline, async {
            conn.link.flush().await.map_err(|e| self.describe(&e))?;
            while !conn.inflight.is_empty() {
                conn.link.fill().await.map_err(|e| self.describe(&e))?;
                self.read(conn).await?;
                conn.link.flush().await.map_err(|e| self.describe(&e))?;
            }
            Ok::<(), String>(())
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                "upstream: {} events still unacknowledged at shutdown; they stay buffered and are sent after restart",
                conn.events_in_flight
            );
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), conn.link.disconnect()).await;
    }

    fn describe(&self, e: &LinkError) -> String {
        let what = self.what();
        let filters = format!("the control topics ({})", self.link.topics.join(", "));
        e.explain(&what, "upstream", &filters)
    }
}

/// Event messages unacknowledged at most: `max_inflight`, and two fewer than the broker's
/// Receive Maximum, which keeps room for the control plane's few messages (status,
/// config/status): a broker may disconnect a client that sends more than its maximum.
fn event_window(max_inflight: u16, broker_window: usize) -> usize {
    const CONTROL_ROOM: usize = 2;
    usize::from(max_inflight).min(broker_window.saturating_sub(CONTROL_ROOM).max(1))
}

#[cfg(test)]
mod tests {
    use super::event_window;

    #[test]
    fn the_window_stays_below_the_brokers_receive_maximum_with_room_for_status() {
        // No Receive Maximum in the CONNACK: 65,535.
        assert_eq!(event_window(200, 65_535), 200);
        // mosquitto's default max_inflight_messages 20.
        assert_eq!(event_window(200, 20), 18);
        assert_eq!(event_window(10, 20), 10);
        // A broker taking one or two at a time still gets events.
        assert_eq!(event_window(200, 2), 1);
        assert_eq!(event_window(200, 1), 1);
    }
}
