//! One MQTT connection of ours: connect (TCP or TLS), subscribe, read packets, write PUBACKs
//! and QoS 1 PUBLISHes. The MQTT sources read site brokers through it, and upstream publishes
//! to central through it. Packets are decoded by rumqttc's codecs (`mqttbytes`: `v5` for MQTT 5,
//! `v4` for MQTT 3.1.1) and PUBLISH is encoded here straight into the output buffer; the
//! connection itself is ours so that its user decides when to read and when to write.
//!
//! MQTT 5 first; a broker that refuses it gets MQTT 3.1.1 (see [`Link::open`]). Whichever is
//! spoken, the user sees one packet model, MQTT 5's: a 3.1.1 packet is handed on as the MQTT 5
//! packet that means the same (3.1.1 is a subset), and writes go through the methods here,
//! which encode for the version in use.
//!
//! Why not rumqttc's event loop: it reads up to ten packets for each request (a PUBACK) it
//! writes, and some brokers (mosquitto 2.0.11 here) send far past the Receive Maximum we
//! announce. Under a flood, thousands of readings were committed whose PUBACK had not left;
//! a crash then made the broker redeliver all of them. Here the source stops reading while
//! `receive_maximum` messages wait for their PUBACK, whatever the broker does, so a crash can
//! make it redeliver at most that many stored readings.
//!
//! Every method that reads is cancel-safe (see [`Link::fill`]); writes are not, and are never
//! raced against anything but their own timeout.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5::{
    check, ConnAck, Connect, ConnectProperties, ConnectReturnCode, Disconnect,
    DisconnectReasonCode, Filter, Login, Packet, PingReq, PingResp, PubAck, Publish,
    RetainForwardRule, SubAck, Subscribe, SubscribeReasonCode, UnsubAck, Unsubscribe,
};
use rumqttc::v5::mqttbytes::{Error as CodecError, QoS};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long connecting (TCP, TLS and CONNACK together) and any single write may take.
pub(crate) const NETWORK_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest packet taken in MQTT 3.1.1: the protocol's own limit. 3.1.1 cannot tell the
/// broker a maximum packet size, so a larger message would come anyway, and refusing it would
/// end the connection at every redelivery; the broker's own limit (mosquitto:
/// `message_size_limit`) is what bounds it.
const V311_MAX_PACKET: usize = 268_435_455;

/// The MQTT version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V5,
    /// MQTT 3.1.1 (protocol level 4): used when the broker refused MQTT 5.
    V311,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::V5 => "MQTT 5",
            Version::V311 => "MQTT 3.1.1",
        })
    }
}

/// What a connection is made with.
pub struct Settings {
    pub host: String,
    pub port: u16,
    /// TLS for `mqtts://`; None: plain TCP.
    pub tls: Option<ClientConfig>,
    pub client_id: String,
    pub login: Option<(String, String)>,
    pub keep_alive: Duration,
    /// How long the broker keeps the session while we are away (MQTT 5; a 3.1.1 broker keeps
    /// it as long as its own settings say).
    pub session_expiry: Duration,
    /// Announced in MQTT 5 only: 3.1.1 has none, the broker's in-flight limit applies.
    pub receive_maximum: u16,
    /// The largest packet we accept; the broker must not send larger (MQTT 5; in 3.1.1 it
    /// cannot be told, see `V311_MAX_PACKET`).
    pub max_packet: u32,
    /// Tell an MQTT 5 broker `max_packet` (it then drops larger messages for us unseen), or
    /// only enforce it here (the connection ends on a larger one, which its user may want to
    /// know about).
    pub announce_max_packet: bool,
    /// Start without the broker's session (upstream: delivery is tracked in the buffer), or
    /// resume it (sources: the broker keeps what we did not acknowledge).
    pub clean_start: bool,
    /// The Last Will: published retained with QoS 1 by the broker if we vanish.
    pub will: Option<Will>,
}

/// A Last Will message.
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Why a connection ended or could not be made.
#[derive(Debug)]
pub enum LinkError {
    Io(io::Error),
    /// Nothing came back within the time allowed: `what` names the step.
    Timeout(&'static str, Duration),
    Refused(ConnectReturnCode, Option<String>),
    Disconnected(DisconnectReasonCode, Option<String>),
    Subscription(String, SubscribeReasonCode),
    Protocol(String),
    /// The broker closed the connection without answering our CONNECT in this version.
    ClosedAtConnect(Version),
    /// The broker sent a packet larger than we take (bytes).
    TooLarge(usize),
    /// The broker refused a message we published (MQTT 5 PUBACK reason code).
    PublishRefused(u16, rumqttc::v5::mqttbytes::v5::PubAckReason),
    /// What came back to our CONNECT in this version is not an MQTT CONNACK: the first bytes
    /// (escaped) and, if the codec said why, why.
    NotMqtt(Version, String),
}

impl LinkError {
    /// Whether this error of a CONNECT in MQTT 5 is the broker refusing MQTT 5: it said so
    /// (reason code 0x84 or a 3.1.1 CONNACK), closed the connection, or answered something the
    /// MQTT 5 codec cannot read. The next attempt is then MQTT 3.1.1. Not a refusal: TCP and TLS
    /// failures, timeouts and any other refusal (credentials, client id…), which 3.1.1 would
    /// meet as well.
    pub fn refuses_v5(&self) -> bool {
        matches!(
            self,
            LinkError::Refused(ConnectReturnCode::UnsupportedProtocolVersion, _)
                | LinkError::ClosedAtConnect(Version::V5)
                | LinkError::NotMqtt(Version::V5, _)
        )
    }
}

impl LinkError {
    /// The error as an operator reads it: `what` names the broker (and the source), `key` the
    /// configuration section whose keys fix it, `filters` what it subscribes to (for a refused
    /// subscription).
    pub fn explain(&self, what: &str, key: &str, filters: &str) -> String {
        use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;
        if let Some(why) = crate::tls::explain(self, key) {
            return format!("{what}: {why}");
        }
        let e = self;
        match e {
            LinkError::Io(io) if io.kind() == io::ErrorKind::ConnectionRefused => {
                format!("{what}: connection refused; is the broker running and listening there?")
            }
            LinkError::Refused(ConnectReturnCode::UnsupportedProtocolVersion, _) => {
                format!("{what}: the broker speaks neither MQTT 5 nor MQTT 3.1.1 ({e})")
            }
            LinkError::ClosedAtConnect(v) => {
                let also = match v {
                    Version::V311 => " (nor the MQTT 5 one)",
                    Version::V5 => "",
                };
                format!("{what}: {e}{also}; see the broker's log (it may refuse this client or address), and check that {key}.url is an MQTT listener (mqtts:// for a TLS one)")
            }
            LinkError::NotMqtt(..) => {
                format!("{what}: not an MQTT broker? {e}; check the port in {key}.url (mqtts:// for a TLS listener)")
            }
            LinkError::Refused(
                code @ (ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized),
                _,
            ) => {
                format!("{what}: the broker refused the connection ({code:?}); check {key}.username and {key}.password_file")
            }
            LinkError::Refused(..) => {
                format!("{what}: {e}; check credentials and {key}.client_id")
            }
            LinkError::Disconnected(DisconnectReasonCode::SessionTakenOver, _) => {
                format!("{what}: {e}: another client connected with the same client id; give each agent and source its own {key}.client_id")
            }
            LinkError::Subscription(..) => {
                format!(
                    "{what}: {e}; check {filters} and the broker's access rules for this client"
                )
            }
            other => format!("{what}: {other}"),
        }
    }
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Io(e) => write!(f, "{e}"),
            LinkError::Timeout(what, d) => {
                write!(f, "no {what} within {}", humantime::format_duration(*d))
            }
            LinkError::Refused(code, reason) => {
                write!(f, "the broker refused the connection ({code:?})")?;
                reason_suffix(f, reason)
            }
            LinkError::Disconnected(code, reason) => {
                write!(f, "the broker closed the session ({code:?})")?;
                reason_suffix(f, reason)
            }
            LinkError::Subscription(topic, code) => {
                write!(
                    f,
                    "the broker refused the subscription to {topic:?} ({code:?})"
                )
            }
            LinkError::Protocol(what) => write!(f, "protocol error: {what}"),
            LinkError::TooLarge(n) => write!(
                f,
                "the broker sent a message of {n} bytes, more than this connection takes"
            ),
            LinkError::PublishRefused(pkid, reason) => {
                write!(f, "the broker refused a published message (packet {pkid}: {reason:?}); check its access rules and limits for this client")
            }
            LinkError::ClosedAtConnect(v) => {
                write!(
                    f,
                    "the broker closed the connection without answering the {v} CONNECT"
                )
            }
            LinkError::NotMqtt(v, what) => {
                write!(f, "the answer to the {v} CONNECT is not MQTT: {what}")
            }
        }
    }
}

fn reason_suffix(f: &mut fmt::Formatter<'_>, reason: &Option<String>) -> fmt::Result {
    match reason {
        Some(r) => write!(f, ": {r}"),
        None => Ok(()),
    }
}

impl std::error::Error for LinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LinkError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for LinkError {
    fn from(e: io::Error) -> Self {
        LinkError::Io(e)
    }
}

impl From<CodecError> for LinkError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::PayloadSizeLimitExceeded { pkt_size, .. } => LinkError::TooLarge(pkt_size),
            e => LinkError::Protocol(e.to_string()),
        }
    }
}

pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open, accepted connection, in MQTT 5 or 3.1.1.
pub struct Link {
    version: Version,
    stream: Box<dyn Io>,
    /// Bytes read and not yet decoded.
    input: BytesMut,
    /// Packets encoded and not yet written.
    output: BytesMut,
    max_packet: u32,
    /// The largest packet the broker takes (MQTT 5 CONNACK Maximum Packet Size); None: no limit
    /// but MQTT's own.
    peer_max_packet: Option<u32>,
    /// How often we must send something; the broker may set it in CONNACK.
    pub keep_alive_every: Duration,
    /// When each PINGREQ still waiting for its PINGRESP was sent, oldest first.
    pings: VecDeque<tokio::time::Instant>,
    /// The SUBSCRIBE waiting for its SUBACK, with its topics.
    subscribing: Option<(u16, Vec<String>)>,
    /// The TCP socket under `stream`, to acknowledge at once what was read (see [`AckAtOnce`]).
    acks: AckAtOnce,
}

/// Asks the kernel, after each read, to acknowledge the TCP segments at once rather than up to
/// 40 ms later (`TCP_QUICKACK`, which the kernel drops again by itself, hence after each read).
///
/// Why: a broker, unlike the agent, leaves Nagle's algorithm on by default (mosquitto's
/// `set_tcp_nodelay false`): it holds a small packet back while one it sent before is not yet
/// acknowledged. After the agent's PUBACKs it sends a PINGREQ (see `sources::mqtt`), the
/// broker answers with a PINGRESP, and the agent has nothing to send back, so with delayed
/// acknowledgements the broker's next PUBLISH waited for the 40 ms timer: at 100 readings/s
/// they came in bursts every 44 ms, 22 ms late at the median, 44 ms at p99 (bridge bench,
/// `RATE=100`). A failure to set it only costs that latency, so it is ignored.
struct AckAtOnce(Option<socket2::Socket>);

impl AckAtOnce {
    fn of(tcp: &TcpStream) -> AckAtOnce {
        use std::os::fd::AsFd;
        AckAtOnce(
            tcp.as_fd()
                .try_clone_to_owned()
                .ok()
                .map(socket2::Socket::from),
        )
    }

    fn after_read(&self) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(s) = &self.0 {
            let _ = s.set_tcp_quickack(true);
        }
    }
}

impl Link {
    /// Connects in the version `known` holds, or if none is known yet (the first connection
    /// to this broker since the agent started) in MQTT 5 and then, if the broker refuses MQTT 5
    /// (see [`LinkError::refuses_v5`]), in MQTT 3.1.1. Records in `known` the version the broker
    /// answered in, for every later connection: a broker that once refused MQTT 5 is not asked
    /// again until the agent restarts, and a flaky MQTT 5 broker is not downgraded later. A
    /// 3.1.1 attempt that fails too returns its own error (the cause: credentials, not a broker…).
    pub async fn open(
        s: &Settings,
        known: &mut Option<Version>,
    ) -> Result<(Link, ConnAck), LinkError> {
        if let Some(v) = *known {
            return Link::connect(s, v).await;
        }
        let v5 = match Link::connect(s, Version::V5).await {
            Ok(r) => {
                *known = Some(Version::V5);
                return Ok(r);
            }
            Err(e) if e.refuses_v5() => e,
            Err(e) => return Err(e),
        };
        tracing::info!(
            "site broker {}:{}: {v5}; taken as refusing MQTT 5, connecting in MQTT 3.1.1",
            s.host,
            s.port
        );
        let r = Link::connect(s, Version::V311).await;
        // A CONNACK in 3.1.1, even one refusing (credentials…), shows the broker speaks it.
        if matches!(&r, Ok(_) | Err(LinkError::Refused(..))) {
            *known = Some(Version::V311);
        }
        r
    }

    /// The version this connection speaks.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Connects and waits for the broker to accept: the CONNACK, whose `session_present`
    /// tells whether the broker kept our session. Each step (TCP, TLS, CONNACK) has
    /// `NETWORK_TIMEOUT` and is named if it runs out.
    pub async fn connect(s: &Settings, version: Version) -> Result<(Link, ConnAck), LinkError> {
        let step = |what: &'static str| move |_| LinkError::Timeout(what, NETWORK_TIMEOUT);
        let tcp = tokio::time::timeout(
            NETWORK_TIMEOUT,
            TcpStream::connect((s.host.as_str(), s.port)),
        )
        .await
        .map_err(step("TCP connection (a firewall or a wrong host?)"))??;
        tcp.set_nodelay(true)?;
        let acks = AckAtOnce::of(&tcp);
        let stream: Box<dyn Io> = match &s.tls {
            None => Box::new(tcp),
            Some(config) => {
                let name = ServerName::try_from(s.host.clone()).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("host name: {e}"))
                })?;
                let connector = tokio_rustls::TlsConnector::from(Arc::new(config.clone()));
                let tls = tokio::time::timeout(NETWORK_TIMEOUT, connector.connect(name, tcp))
                    .await
                    .map_err(step("TLS handshake"))??;
                Box::new(tls)
            }
        };
        tokio::time::timeout(NETWORK_TIMEOUT, Link::handshake(s, version, stream, acks))
            .await
            .map_err(step("CONNACK"))?
    }

    async fn handshake(
        s: &Settings,
        version: Version,
        stream: Box<dyn Io>,
        acks: AckAtOnce,
    ) -> Result<(Link, ConnAck), LinkError> {
        let mut link = Link {
            version,
            stream,
            input: BytesMut::with_capacity(16 * 1024),
            output: BytesMut::with_capacity(4 * 1024),
            max_packet: s.max_packet,
            peer_max_packet: None,
            keep_alive_every: s.keep_alive,
            pings: VecDeque::new(),
            subscribing: None,
            acks,
        };
        let sent = match version {
            Version::V5 => link.send_connect_v5(s).await,
            Version::V311 => link.send_connect_v311(s).await,
        };
        // A broker that closes at once may make the write fail.
        sent.map_err(|e| link.at_connect(e))?;
        loop {
            let answer = match version {
                Version::V5 => link.connack_v5(),
                Version::V311 => link.connack_v311(),
            };
            if let Some(ack) = answer? {
                return Ok((link, ack));
            }
            link.fill().await.map_err(|e| link.at_connect(e))?;
        }
    }

    async fn send_connect_v5(&mut self, s: &Settings) -> Result<(), LinkError> {
        let mut properties = ConnectProperties::new();
        properties.session_expiry_interval =
            Some(s.session_expiry.as_secs().min(u32::MAX as u64) as u32);
        properties.receive_maximum = Some(s.receive_maximum);
        properties.max_packet_size = s.announce_max_packet.then_some(s.max_packet);
        let connect = Connect {
            keep_alive: s.keep_alive.as_secs().min(u16::MAX as u64) as u16,
            client_id: s.client_id.clone(),
            clean_start: s.clean_start,
            properties: Some(properties),
        };
        let login = s
            .login
            .as_ref()
            .map(|(u, p)| Login::new(u.as_str(), p.as_str()));
        let will = s.will.as_ref().map(|w| {
            rumqttc::v5::mqttbytes::v5::LastWill::new(
                w.topic.clone(),
                w.payload.clone(),
                QoS::AtLeastOnce,
                true,
                None,
            )
        });
        self.send(Packet::Connect(connect, will, login)).await
    }

    /// MQTT 3.1.1 has no session expiry (a persistent session lasts as long as the broker
    /// keeps it), no Receive Maximum (the broker's own in-flight limit applies, e.g.
    /// mosquitto's `max_inflight_messages`; the source's window still bounds what it stores)
    /// and no maximum packet size.
    async fn send_connect_v311(&mut self, s: &Settings) -> Result<(), LinkError> {
        let connect = v4::Connect {
            protocol: rumqttc::mqttbytes::Protocol::V4,
            keep_alive: s.keep_alive.as_secs().min(u16::MAX as u64) as u16,
            client_id: s.client_id.clone(),
            clean_session: s.clean_start,
            last_will: s.will.as_ref().map(|w| {
                v4::LastWill::new(
                    w.topic.clone(),
                    w.payload.clone(),
                    rumqttc::mqttbytes::QoS::AtLeastOnce,
                    true,
                )
            }),
            login: s.login.as_ref().map(|(u, p)| v4::Login::new(u, p)),
        };
        self.send_v311(v4::Packet::Connect(connect)).await
    }

    /// An I/O error while waiting for the CONNACK: the broker hanging up is
    /// [`LinkError::ClosedAtConnect`], or [`LinkError::NotMqtt`] if it sent something first;
    /// anything else (TLS alerts among them) stays as it is.
    fn at_connect(&self, e: LinkError) -> LinkError {
        let LinkError::Io(io) = &e else { return e };
        use io::ErrorKind::*;
        if !matches!(
            io.kind(),
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
        ) {
            return e;
        }
        if self.input.is_empty() {
            LinkError::ClosedAtConnect(self.version)
        } else {
            LinkError::NotMqtt(self.version, self.head())
        }
    }

    /// The first bytes read and not yet decoded, escaped and quoted.
    fn head(&self) -> String {
        let shown = &self.input[..self.input.len().min(24)];
        let more = if self.input.len() > shown.len() {
            "…"
        } else {
            ""
        };
        format!("\"{}{more}\"", shown.escape_ascii())
    }

    /// The CONNACK, if it is all here; what cannot be decoded is [`LinkError::NotMqtt`].
    fn read_connack(&mut self) -> Result<Option<Packet>, LinkError> {
        // Taken first: decoding consumes the frame it fails on.
        let head = self.head();
        match self.read_packet() {
            Err(LinkError::Protocol(why)) => {
                Err(LinkError::NotMqtt(self.version, format!("{head} ({why})")))
            }
            Ok(Some(Packet::ConnAck(ack))) => Ok(Some(Packet::ConnAck(ack))),
            Ok(Some(other)) => Err(LinkError::NotMqtt(
                self.version,
                format!("expected CONNACK, got {other:?}"),
            )),
            other => other,
        }
    }

    /// The CONNACK of an MQTT 5 CONNECT, if it is all here.
    fn connack_v5(&mut self) -> Result<Option<ConnAck>, LinkError> {
        // A CONNACK of two bytes is MQTT 3.1.1's (MQTT 5 adds at least a property length):
        // mosquitto-style brokers that do not speak MQTT 5 answer so, with return code 1
        // (unacceptable protocol version), and the MQTT 5 codec cannot read it.
        if let [0x20, 0x02, _, code, ..] = self.input[..] {
            return Err(LinkError::Refused(
                ConnectReturnCode::UnsupportedProtocolVersion,
                Some(format!("answered in MQTT 3.1.1, return code {code}")),
            ));
        }
        let Some(Packet::ConnAck(ack)) = self.read_connack()? else {
            return Ok(None);
        };
        if ack.code != ConnectReturnCode::Success {
            let reason = ack
                .properties
                .as_ref()
                .and_then(|p| p.reason_string.clone());
            return Err(LinkError::Refused(ack.code, reason));
        }
        // A broker may ask for a keep-alive of its own; 0 (none) leaves ours, which
        // the PINGREQs of the flow control need anyway.
        self.peer_max_packet = ack.properties.as_ref().and_then(|p| p.max_packet_size);
        if let Some(k) = ack.properties.as_ref().and_then(|p| p.server_keep_alive) {
            if k > 0 {
                self.keep_alive_every = Duration::from_secs(u64::from(k));
            }
        }
        Ok(Some(ack))
    }

    /// The CONNACK of an MQTT 3.1.1 CONNECT, if it is all here, as the MQTT 5 one it means.
    fn connack_v311(&mut self) -> Result<Option<ConnAck>, LinkError> {
        let Some(Packet::ConnAck(ack)) = self.read_connack()? else {
            return Ok(None);
        };
        if ack.code != ConnectReturnCode::Success {
            return Err(LinkError::Refused(ack.code, None));
        }
        Ok(Some(ack))
    }

    /// Subscribes to `topics` with QoS 1. The SUBACK comes back through [`Link::try_next`],
    /// which turns a refused filter into an error.
    ///
    /// In MQTT 5 retained messages come only when the subscription is new (retain handling
    /// 1). MQTT 3.1.1 has no such option: the broker sends them at every SUBSCRIBE, so the
    /// source does not subscribe again to what a resumed session already has.
    pub async fn subscribe(&mut self, topics: &[String]) -> Result<(), LinkError> {
        const PKID: u16 = 1;
        self.subscribing = Some((PKID, topics.to_vec()));
        match self.version {
            Version::V5 => {
                // Retained messages only when the subscription is new, not again at every
                // reconnect (each copy would be stored as a new reading).
                let filters = topics.iter().map(|t| Filter {
                    retain_forward_rule: RetainForwardRule::OnNewSubscribe,
                    ..Filter::new(t.clone(), QoS::AtLeastOnce)
                });
                let mut subscribe = Subscribe::new_many(filters, None);
                subscribe.pkid = PKID;
                self.send(Packet::Subscribe(subscribe)).await
            }
            Version::V311 => {
                let filters = topics.iter().map(|t| {
                    v4::SubscribeFilter::new(t.clone(), rumqttc::mqttbytes::QoS::AtLeastOnce)
                });
                let mut subscribe = v4::Subscribe::new_many(filters);
                subscribe.pkid = PKID;
                self.send_v311(v4::Packet::Subscribe(subscribe)).await
            }
        }
    }

    /// Unsubscribes from `topics` (filters this client no longer wants that the broker's
    /// session may still hold). The UNSUBACK comes back through [`Link::try_next`].
    pub async fn unsubscribe(&mut self, topics: &[String]) -> Result<(), LinkError> {
        const PKID: u16 = 2;
        match self.version {
            Version::V5 => {
                let unsubscribe = Unsubscribe {
                    pkid: PKID,
                    filters: topics.to_vec(),
                    properties: None,
                };
                self.send(Packet::Unsubscribe(unsubscribe)).await
            }
            Version::V311 => {
                let unsubscribe = v4::Unsubscribe {
                    pkid: PKID,
                    topics: topics.to_vec(),
                };
                self.send_v311(v4::Packet::Unsubscribe(unsubscribe)).await
            }
        }
    }

    /// The next complete packet already read, if any. A refused subscription and a
    /// DISCONNECT from the broker are errors; an accepted SUBACK is passed on.
    pub fn try_next(&mut self) -> Result<Option<Packet>, LinkError> {
        let Some(packet) = self.read_packet()? else {
            return Ok(None);
        };
        match &packet {
            Packet::PingResp(_) => {
                self.pings.pop_front();
            }
            Packet::SubAck(ack) => self.check_suback(ack.pkid, &ack.return_codes)?,
            // Success (0) and "no matching subscribers" (16) are both delivered.
            Packet::PubAck(ack) if ack.reason as u8 >= 0x80 => {
                return Err(LinkError::PublishRefused(ack.pkid, ack.reason));
            }
            Packet::Disconnect(d) => {
                let reason = d.properties.as_ref().and_then(|p| p.reason_string.clone());
                return Err(LinkError::Disconnected(d.reason_code, reason));
            }
            _ => {}
        }
        Ok(Some(packet))
    }

    fn read_packet(&mut self) -> Result<Option<Packet>, LinkError> {
        match self.version {
            Version::V5 => self.read_v5(),
            Version::V311 => self.read_v311(),
        }
    }

    fn read_v5(&mut self) -> Result<Option<Packet>, LinkError> {
        let header = match check(self.input.iter(), Some(self.max_packet)) {
            Ok(h) => h,
            Err(CodecError::InsufficientBytes(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // A DISCONNECT with nothing after its fixed header is a normal disconnection in MQTT 5,
        // and one with a reason code alone (mosquitto: "session taken over") is complete too;
        // the codec wants a reason code and a property length.
        if self.input.first() == Some(&0xE0) && header.frame_length() <= 3 {
            let reason = match self.input.get(2) {
                Some(code) => DisconnectReasonCode::try_from(*code)
                    .map_err(|e| LinkError::Protocol(e.to_string()))?,
                None => DisconnectReasonCode::NormalDisconnection,
            };
            self.input.advance(header.frame_length());
            return Ok(Some(Packet::Disconnect(Disconnect::new(reason))));
        }
        Ok(Some(Packet::read(&mut self.input, Some(self.max_packet))?))
    }

    /// The next MQTT 3.1.1 packet, as the MQTT 5 packet it means. Packets a QoS 1 subscriber
    /// has no use for (QoS 2 handshakes, which a QoS 1 subscription never gets) are skipped.
    fn read_v311(&mut self) -> Result<Option<Packet>, LinkError> {
        use rumqttc::mqttbytes::Error as Error311;
        loop {
            // The whole frame first: an error decoding a complete frame is an error, not a
            // wait for more bytes.
            match rumqttc::mqttbytes::check(self.input.iter(), V311_MAX_PACKET) {
                Ok(_) => {}
                Err(Error311::InsufficientBytes(_)) => return Ok(None),
                Err(e) => return Err(LinkError::Protocol(e.to_string())),
            }
            let packet = v4::Packet::read(&mut self.input, V311_MAX_PACKET)
                .map_err(|e| LinkError::Protocol(e.to_string()))?;
            return Ok(Some(match packet {
                v4::Packet::Publish(p) => Packet::Publish(Publish {
                    dup: p.dup,
                    qos: qos_v5(p.qos),
                    retain: p.retain,
                    topic: Bytes::from(p.topic),
                    pkid: p.pkid,
                    payload: p.payload,
                    properties: None,
                }),
                v4::Packet::PingResp => Packet::PingResp(PingResp),
                v4::Packet::PubAck(ack) => Packet::PubAck(PubAck::new(ack.pkid, None)),
                v4::Packet::SubAck(ack) => Packet::SubAck(SubAck {
                    pkid: ack.pkid,
                    return_codes: ack
                        .return_codes
                        .iter()
                        .map(|c| match c {
                            v4::SubscribeReasonCode::Success(q) => {
                                SubscribeReasonCode::Success(qos_v5(*q))
                            }
                            v4::SubscribeReasonCode::Failure => SubscribeReasonCode::Failure,
                        })
                        .collect(),
                    properties: None,
                }),
                v4::Packet::UnsubAck(ack) => Packet::UnsubAck(UnsubAck {
                    pkid: ack.pkid,
                    reasons: Vec::new(),
                    properties: None,
                }),
                v4::Packet::ConnAck(ack) => Packet::ConnAck(ConnAck {
                    session_present: ack.session_present,
                    code: connect_code_v5(ack.code),
                    properties: None,
                }),
                // Not sent by 3.1.1 brokers; some close so anyway.
                v4::Packet::Disconnect => {
                    Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection))
                }
                other => {
                    tracing::debug!("ignoring {other:?} from the site broker");
                    continue;
                }
            }));
        }
    }

    fn check_suback(&mut self, pkid: u16, codes: &[SubscribeReasonCode]) -> Result<(), LinkError> {
        let Some((expected, topics)) = self.subscribing.take() else {
            return Err(LinkError::Protocol(format!(
                "SUBACK {pkid} for no SUBSCRIBE"
            )));
        };
        if pkid != expected {
            return Err(LinkError::Protocol(format!(
                "SUBACK {pkid}, expected {expected}"
            )));
        }
        for (topic, code) in topics.into_iter().zip(codes) {
            if !matches!(code, SubscribeReasonCode::Success(_)) {
                return Err(LinkError::Subscription(topic, *code));
            }
        }
        Ok(())
    }

    /// Reads what the broker sent next into the input buffer. Cancel-safe: if it is dropped
    /// before it completes, nothing was read.
    pub async fn fill(&mut self) -> Result<(), LinkError> {
        let n = self.stream.read_buf(&mut self.input).await?;
        if n == 0 {
            return Err(LinkError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the broker closed the connection",
            )));
        }
        self.acks.after_read();
        Ok(())
    }

    /// Queues a PUBACK; [`Link::flush`] writes it.
    pub fn ack(&mut self, pkid: u16) -> Result<(), LinkError> {
        match self.version {
            Version::V5 => Packet::PubAck(PubAck::new(pkid, None)).write(&mut self.output, None)?,
            Version::V311 => self.queue_v311(v4::Packet::PubAck(v4::PubAck::new(pkid)))?,
        };
        Ok(())
    }

    /// Queues a QoS 1 PUBLISH with packet id `pkid` ([`Link::flush`] writes it), encoded
    /// straight into the output buffer. The topic must be a valid topic name (no wildcards).
    /// The size of the PUBLISH packet [`Link::publish`] would write.
    pub fn publish_size(&self, topic: &str, payload: &[u8]) -> usize {
        let remaining = self.publish_remaining(topic, payload);
        let head = match remaining {
            0..=127 => 2,
            128..=16_383 => 3,
            16_384..=2_097_151 => 4,
            _ => 5,
        };
        head + remaining
    }

    /// The largest packet the broker takes: its Maximum Packet Size, else MQTT's limit.
    pub fn peer_max_packet(&self) -> usize {
        self.peer_max_packet.map_or(268_435_460, |n| n as usize)
    }

    /// Topic (length-prefixed), packet id, in MQTT 5 an empty property list, payload.
    fn publish_remaining(&self, topic: &str, payload: &[u8]) -> usize {
        let props = usize::from(self.version == Version::V5);
        2 + topic.len() + 2 + props + payload.len()
    }

    pub fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        retain: bool,
        pkid: u16,
    ) -> Result<(), LinkError> {
        if topic.len() > usize::from(u16::MAX) {
            return Err(LinkError::Protocol(format!(
                "topic of {} bytes is longer than MQTT allows",
                topic.len()
            )));
        }
        let remaining = self.publish_remaining(topic, payload);
        if remaining > 268_435_455 || self.publish_size(topic, payload) > self.peer_max_packet() {
            // Never sent: a broker disconnects a client whose packet exceeds its maximum.
            return Err(LinkError::Protocol(format!(
                "a message of {} bytes on {topic} is larger than the broker takes ({} bytes)",
                payload.len(),
                self.peer_max_packet().min(268_435_460)
            )));
        }
        let props = usize::from(self.version == Version::V5);
        self.output.reserve(remaining + 5);
        self.output.extend_from_slice(&[0x32 | u8::from(retain)]);
        let mut n = remaining;
        loop {
            let mut byte = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                byte |= 0x80;
            }
            self.output.extend_from_slice(&[byte]);
            if n == 0 {
                break;
            }
        }
        self.output
            .extend_from_slice(&(topic.len() as u16).to_be_bytes());
        self.output.extend_from_slice(topic.as_bytes());
        self.output.extend_from_slice(&pkid.to_be_bytes());
        if props == 1 {
            self.output.extend_from_slice(&[0]);
        }
        self.output.extend_from_slice(payload);
        Ok(())
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.output.len()
    }

    /// Writes what is queued.
    pub async fn flush(&mut self) -> Result<(), LinkError> {
        let write = async {
            self.stream.write_all(&self.output).await?;
            self.stream.flush().await
        };
        tokio::time::timeout(NETWORK_TIMEOUT, write)
            .await
            .map_err(|_| LinkError::Timeout("room to write", NETWORK_TIMEOUT))??;
        self.output.clear();
        Ok(())
    }

    /// Queues a PINGREQ ([`Link::flush`] writes it). The broker answers once it has read
    /// everything we wrote before it, so its PINGRESP also confirms our earlier PUBACKs.
    /// PINGRESPs come back in the order of their PINGREQs.
    pub fn ping(&mut self) -> Result<(), LinkError> {
        match self.version {
            Version::V5 => Packet::PingReq(PingReq).write(&mut self.output, None)?,
            Version::V311 => self.queue_v311(v4::Packet::PingReq)?,
        };
        self.pings.push_back(tokio::time::Instant::now());
        Ok(())
    }

    /// Keep-alive, called every `keep_alive_every`: an error if a PINGREQ has waited that
    /// long for its answer; false if a PINGREQ is on its way anyway, true if one is needed
    /// (queue it with [`Link::ping`]).
    pub fn keep_alive(&self) -> Result<bool, LinkError> {
        match self.pings.front() {
            Some(at) if at.elapsed() >= self.keep_alive_every => {
                Err(LinkError::Timeout("PINGRESP", self.keep_alive_every))
            }
            Some(_) => Ok(false),
            None => Ok(true),
        }
    }

    /// A clean goodbye; the broker keeps the session (MQTT 5: its expiry was set at
    /// connect; 3.1.1: a session without clean_session lasts as long as the broker keeps it).
    pub async fn disconnect(&mut self) -> Result<(), LinkError> {
        match self.version {
            Version::V5 => {
                self.send(Packet::Disconnect(Disconnect::new(
                    DisconnectReasonCode::NormalDisconnection,
                )))
                .await
            }
            Version::V311 => self.send_v311(v4::Packet::Disconnect).await,
        }
    }

    async fn send(&mut self, packet: Packet) -> Result<(), LinkError> {
        packet.write(&mut self.output, None)?;
        self.flush().await
    }

    fn queue_v311(&mut self, packet: v4::Packet) -> Result<usize, LinkError> {
        packet
            .write(&mut self.output, V311_MAX_PACKET)
            .map_err(|e| LinkError::Protocol(e.to_string()))
    }

    async fn send_v311(&mut self, packet: v4::Packet) -> Result<(), LinkError> {
        self.queue_v311(packet)?;
        self.flush().await
    }
}

fn qos_v5(q: rumqttc::mqttbytes::QoS) -> QoS {
    match q {
        rumqttc::mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
        rumqttc::mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
        rumqttc::mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// A 3.1.1 CONNACK return code as the MQTT 5 reason code that means the same.
fn connect_code_v5(code: v4::ConnectReturnCode) -> ConnectReturnCode {
    match code {
        v4::ConnectReturnCode::Success => ConnectReturnCode::Success,
        v4::ConnectReturnCode::RefusedProtocolVersion => {
            ConnectReturnCode::UnsupportedProtocolVersion
        }
        v4::ConnectReturnCode::BadClientId => ConnectReturnCode::ClientIdentifierNotValid,
        v4::ConnectReturnCode::ServiceUnavailable => ConnectReturnCode::ServerUnavailable,
        v4::ConnectReturnCode::BadUserNamePassword => ConnectReturnCode::BadUserNamePassword,
        v4::ConnectReturnCode::NotAuthorized => ConnectReturnCode::NotAuthorized,
    }
}

#[cfg(test)]
mod tests {
    //! The link against a scripted peer on a loopback socket: each test plays the broker's
    //! side of one exchange, byte-exact through the same codec.
    use super::*;
    use rumqttc::v5::mqttbytes::v5::{ConnAckProperties, PingResp, SubAck};
    use tokio::net::TcpListener;

    /// What the broker's Nagle waits for: the agent's acknowledgement of what it read. After a
    /// read the link's socket is in quick-acknowledgement mode (the kernel's own flag, read
    /// back), so the acknowledgement goes at once instead of up to 40 ms later.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[tokio::test]
    async fn after_a_read_the_socket_acknowledges_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().map_or(0, |a| a.port());
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let acks = AckAtOnce::of(&tcp);
        let socket = acks.0.as_ref().unwrap_or_else(|| panic!("no socket"));
        socket
            .set_tcp_quickack(false)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(socket.tcp_quickack().ok(), Some(false));
        acks.after_read();
        assert_eq!(socket.tcp_quickack().ok(), Some(true));
    }

    fn settings(port: u16) -> Settings {
        Settings {
            host: "127.0.0.1".into(),
            port,
            tls: None,
            client_id: "edge-agent-test".into(),
            login: Some(("edge".into(), "secret".into())),
            keep_alive: Duration::from_secs(30),
            session_expiry: Duration::from_secs(7 * 24 * 3600),
            receive_maximum: 25,
            max_packet: 4096,
            announce_max_packet: true,
            clean_start: false,
            will: None,
        }
    }

    fn connack(code: ConnectReturnCode, keep_alive: Option<u16>, reason: Option<&str>) -> Packet {
        Packet::ConnAck(ConnAck {
            session_present: true,
            code,
            properties: Some(ConnAckProperties {
                session_expiry_interval: None,
                receive_max: None,
                max_qos: None,
                retain_available: None,
                max_packet_size: None,
                assigned_client_identifier: None,
                topic_alias_max: None,
                reason_string: reason.map(String::from),
                user_properties: Vec::new(),
                wildcard_subscription_available: None,
                subscription_identifiers_available: None,
                shared_subscription_available: None,
                server_keep_alive: keep_alive,
                response_information: None,
                server_reference: None,
                authentication_method: None,
                authentication_data: None,
            }),
        })
    }

    /// The broker's side of one connection.
    struct Peer {
        stream: TcpStream,
        input: BytesMut,
    }

    impl Peer {
        async fn next(&mut self) -> Packet {
            loop {
                match Packet::read(&mut self.input, None) {
                    Ok(p) => return p,
                    Err(CodecError::InsufficientBytes(_)) => {
                        let n = self.stream.read_buf(&mut self.input).await.unwrap();
                        assert!(n > 0, "the link closed the connection");
                    }
                    Err(e) => panic!("the link sent something undecodable: {e}"),
                }
            }
        }

        async fn send(&mut self, p: Packet) {
            let mut out = BytesMut::new();
            p.write(&mut out, None).unwrap();
            self.stream.write_all(&out).await.unwrap();
        }
    }

    /// Runs `broker` as the peer of a link connecting with `s`.
    async fn with_peer<F, Fut>(mut s: Settings, broker: F) -> Result<(Link, ConnAck), LinkError>
    where
        F: FnOnce(Peer) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        s.port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            broker(Peer {
                stream,
                input: BytesMut::new(),
            })
            .await
        });
        Link::connect(&s, Version::V5).await
    }

    /// The next packet from the peer.
    async fn next_packet(link: &mut Link) -> Packet {
        loop {
            if let Some(p) = link.try_next().unwrap() {
                return p;
            }
            link.fill().await.unwrap();
        }
    }

    /// Reads until the link reports an error; any packet before it fails the test.
    async fn first_error(link: &mut Link) -> LinkError {
        loop {
            match link.try_next() {
                Ok(None) => link.fill().await.unwrap(),
                Ok(Some(p)) => panic!("unexpected {p:?}"),
                Err(e) => return e,
            }
        }
    }

    #[tokio::test]
    async fn connect_keeps_the_session_announces_the_window_and_takes_the_brokers_keep_alive() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (link, ack) = with_peer(settings(0), |mut peer| async move {
            let first = peer.next().await;
            peer.send(connack(ConnectReturnCode::Success, Some(7), None))
                .await;
            let _ = tx.send(first);
        })
        .await
        .unwrap();
        assert!(ack.session_present);
        assert_eq!(link.keep_alive_every, Duration::from_secs(7));
        let Packet::Connect(connect, will, login) = rx.await.unwrap() else {
            panic!("the first packet was not CONNECT");
        };
        assert!(!connect.clean_start, "the session must survive restarts");
        assert_eq!(connect.client_id, "edge-agent-test");
        assert_eq!(connect.keep_alive, 30);
        let props = connect.properties.unwrap();
        assert_eq!(props.receive_maximum, Some(25));
        assert_eq!(props.session_expiry_interval, Some(7 * 24 * 3600));
        assert_eq!(props.max_packet_size, Some(4096));
        assert!(will.is_none());
        let login = login.unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("edge", "secret")
        );
    }

    #[tokio::test]
    async fn a_refused_connection_carries_the_code_and_the_brokers_reason() {
        let r = with_peer(settings(0), |mut peer| async move {
            peer.next().await;
            peer.send(connack(
                ConnectReturnCode::NotAuthorized,
                None,
                Some("client id not allowed"),
            ))
            .await;
        })
        .await;
        let Err(e) = r else { panic!("accepted") };
        assert!(matches!(
            &e,
            LinkError::Refused(ConnectReturnCode::NotAuthorized, Some(r)) if r == "client id not allowed"
        ));
        assert_eq!(
            e.to_string(),
            "the broker refused the connection (NotAuthorized): client id not allowed"
        );
    }

    #[tokio::test]
    async fn a_refused_subscription_names_its_topic() {
        let (mut link, _) = with_peer(settings(0), |mut peer| async move {
            peer.next().await;
            peer.send(connack(ConnectReturnCode::Success, None, None))
                .await;
            let Packet::Subscribe(sub) = peer.next().await else {
                panic!("expected SUBSCRIBE")
            };
            let paths: Vec<&str> = sub.filters.iter().map(|f| f.path.as_str()).collect();
            assert_eq!(paths, ["site/scan", "site/secret/#"]);
            assert!(sub.filters.iter().all(|f| f.qos == QoS::AtLeastOnce
                && f.retain_forward_rule == RetainForwardRule::OnNewSubscribe));
            peer.send(Packet::SubAck(SubAck {
                pkid: sub.pkid,
                return_codes: vec![
                    SubscribeReasonCode::Success(QoS::AtLeastOnce),
                    SubscribeReasonCode::NotAuthorized,
                ],
                properties: None,
            }))
            .await;
        })
        .await
        .unwrap();
        link.subscribe(&["site/scan".into(), "site/secret/#".into()])
            .await
            .unwrap();
        let e = first_error(&mut link).await;
        assert!(
            matches!(&e, LinkError::Subscription(t, SubscribeReasonCode::NotAuthorized) if t == "site/secret/#"),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn a_disconnect_from_the_broker_ends_the_link_with_its_reason() {
        let (mut link, _) = with_peer(settings(0), |mut peer| async move {
            peer.next().await;
            peer.send(connack(ConnectReturnCode::Success, None, None))
                .await;
            // Reason 0x8B (server shutting down), no properties: written by hand, the codec
            // drops a reason code that has no properties.
            peer.stream
                .write_all(&[0xE0, 0x02, 0x8B, 0x00])
                .await
                .unwrap();
        })
        .await
        .unwrap();
        let e = first_error(&mut link).await;
        assert!(
            matches!(
                e,
                LinkError::Disconnected(DisconnectReasonCode::ServerShuttingDown, None)
            ),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn a_disconnect_with_a_reason_code_alone_keeps_its_reason() {
        let (mut link, _) = with_peer(settings(0), |mut peer| async move {
            peer.next().await;
            peer.send(connack(ConnectReturnCode::Success, None, None))
                .await;
            // mosquitto's "session taken over": reason 0x8E, no property length.
            peer.stream.write_all(&[0xE0, 0x01, 0x8E]).await.unwrap();
        })
        .await
        .unwrap();
        let e = first_error(&mut link).await;
        assert!(
            matches!(
                e,
                LinkError::Disconnected(DisconnectReasonCode::SessionTakenOver, None)
            ),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn a_server_keep_alive_of_zero_leaves_ours() {
        let (link, _) = with_peer(settings(0), |mut peer| async move {
            peer.next().await;
            peer.send(connack(ConnectReturnCode::Success, Some(0), None))
                .await;
        })
        .await
        .unwrap();
        assert_eq!(link.keep_alive_every, Duration::from_secs(30));
    }

    #[tokio::test]
    async fn a_bare_disconnect_is_a_normal_disconnection() {
        let (mut link, _) = with_peer(settings(0), |mut peer| async move {
            peer.next().await;
            peer.send(connack(ConnectReturnCode::Success, None, None))
                .await;
            peer.stream.write_all(&[0xE0, 0x00]).await.unwrap();
        })
        .await
        .unwrap();
        let e = first_error(&mut link).await;
        assert!(
            matches!(
                e,
                LinkError::Disconnected(DisconnectReasonCode::NormalDisconnection, None)
            ),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn pings_are_answered_in_order_and_an_unanswered_one_times_out() {
        let (answer_tx, mut answer_rx) = tokio::sync::mpsc::channel::<()>(4);
        let mut s = settings(0);
        s.keep_alive = Duration::from_millis(300);
        let (mut link, _) = with_peer(s, |mut peer| async move {
            peer.next().await;
            peer.send(connack(ConnectReturnCode::Success, None, None))
                .await;
            // Answers the first PINGREQ only: then goes silent.
            assert!(matches!(peer.next().await, Packet::PingReq(_)));
            peer.send(Packet::PingResp(PingResp)).await;
            while answer_rx.recv().await.is_some() {}
        })
        .await
        .unwrap();
        assert!(
            link.keep_alive().unwrap(),
            "nothing outstanding: a PINGREQ is due"
        );
        link.ping().unwrap();
        link.flush().await.unwrap();
        assert!(!link.keep_alive().unwrap(), "one is on its way");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match link.try_next().unwrap() {
                Some(Packet::PingResp(_)) => break,
                Some(p) => panic!("unexpected {p:?}"),
                None => tokio::time::timeout_at(deadline, link.fill())
                    .await
                    .expect("no PINGRESP")
                    .unwrap(),
            }
        }
        assert!(link.keep_alive().unwrap(), "answered: the next one is due");
        link.ping().unwrap();
        link.flush().await.unwrap();
        let e = loop {
            match link.keep_alive() {
                Ok(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Ok(_) => panic!("an unanswered PINGREQ never timed out"),
                Err(e) => break e,
            }
        };
        assert_eq!(e.to_string(), "no PINGRESP within 300ms");
        drop(answer_tx);
    }

    /// A broker's side of one connection, in raw frames: it reads CONNECTs of either version
    /// and speaks 3.1.1 through the v4 codec.
    struct Raw {
        stream: TcpStream,
        input: BytesMut,
    }

    impl Raw {
        /// The next whole frame; None if the link closed the connection.
        async fn frame(&mut self) -> Option<BytesMut> {
            loop {
                match rumqttc::mqttbytes::check(self.input.iter(), 1 << 20) {
                    Ok(h) => return Some(self.input.split_to(h.frame_length())),
                    Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                        if self.stream.read_buf(&mut self.input).await.unwrap() == 0 {
                            return None;
                        }
                    }
                    Err(e) => panic!("the link sent something unframable: {e}"),
                }
            }
        }

        /// Reads a CONNECT and returns its protocol level (5: MQTT 5, 4: MQTT 3.1.1).
        async fn connect_level(&mut self) -> u8 {
            let f = self.frame().await.expect("no CONNECT");
            assert_eq!(f[0], 0x10, "not a CONNECT");
            let at = f.windows(4).position(|w| w == b"MQTT").unwrap();
            f[at + 4]
        }

        async fn next_v4(&mut self) -> v4::Packet {
            let mut f = self.frame().await.expect("the link closed the connection");
            v4::Packet::read(&mut f, 1 << 20).unwrap()
        }

        async fn send_v4(&mut self, p: v4::Packet) {
            let mut out = BytesMut::new();
            p.write(&mut out, 1 << 20).unwrap();
            self.stream.write_all(&out).await.unwrap();
        }

        async fn send_v5(&mut self, p: Packet) {
            let mut out = BytesMut::new();
            p.write(&mut out, None).unwrap();
            self.stream.write_all(&out).await.unwrap();
        }
    }

    /// Opens a link (with `known`) to a broker that plays `broker(n, connection)` on its n-th
    /// connection (from 0); returns the outcome and how many connections it got.
    async fn open_against<F, Fut>(
        known: &mut Option<Version>,
        broker: F,
    ) -> (Result<(Link, ConnAck), LinkError>, usize)
    where
        F: Fn(usize, Raw) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut s = settings(0);
        s.port = listener.local_addr().unwrap().port();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(broker(
                    n,
                    Raw {
                        stream,
                        input: BytesMut::new(),
                    },
                ));
            }
        });
        let r = Link::open(&s, known).await;
        (r, count.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// How brokers without MQTT 5 answer an MQTT 5 CONNECT.
    #[derive(Clone, Copy, Debug)]
    enum Refusal {
        /// mosquitto 1.4 and the like: a 3.1.1 CONNACK, return code 1, then close.
        Connack311,
        /// rumqttd's v4 listener and the like: close at once.
        Close,
        /// An MQTT 5 CONNACK with reason 0x84 (unsupported protocol version).
        Connack5,
        /// Something no MQTT 5 codec reads.
        Garbage,
    }

    async fn refuse(peer: &mut Raw, how: Refusal) {
        match how {
            Refusal::Connack311 => peer
                .stream
                .write_all(&[0x20, 0x02, 0x00, 0x01])
                .await
                .unwrap(),
            Refusal::Close => {}
            Refusal::Connack5 => {
                peer.send_v5(connack(
                    ConnectReturnCode::UnsupportedProtocolVersion,
                    None,
                    None,
                ))
                .await
            }
            Refusal::Garbage => peer.stream.write_all(&[0x20, 0x7f, 0xff]).await.unwrap(),
        }
    }

    #[tokio::test]
    async fn a_broker_refusing_mqtt5_in_any_of_the_usual_ways_is_spoken_to_in_311() {
        for how in [
            Refusal::Connack311,
            Refusal::Close,
            Refusal::Connack5,
            Refusal::Garbage,
        ] {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let tx = std::sync::Mutex::new(Some(tx));
            let mut known = None;
            let (r, connections) = open_against(&mut known, move |n, mut peer| {
                let tx = if n > 0 {
                    tx.lock().unwrap().take()
                } else {
                    None
                };
                async move {
                    match n {
                        0 => {
                            assert_eq!(peer.connect_level().await, 5, "MQTT 5 first");
                            refuse(&mut peer, how).await;
                        }
                        _ => {
                            let first = peer.next_v4().await;
                            peer.send_v4(v4::Packet::ConnAck(v4::ConnAck::new(
                                v4::ConnectReturnCode::Success,
                                true,
                            )))
                            .await;
                            if let Some(tx) = tx {
                                let _ = tx.send(first);
                            }
                            // Holds the connection until the test ends.
                            let _ = peer.frame().await;
                        }
                    }
                }
            })
            .await;
            let (link, ack) = r.unwrap_or_else(|e| panic!("{how:?}: {e}"));
            assert_eq!(connections, 2, "{how:?}");
            assert_eq!(link.version(), Version::V311, "{how:?}");
            assert_eq!(known, Some(Version::V311), "{how:?}: remembered");
            assert!(ack.session_present, "{how:?}");
            let v4::Packet::Connect(connect) = rx.await.unwrap() else {
                panic!("{how:?}: the 3.1.1 attempt did not start with CONNECT");
            };
            assert_eq!(connect.protocol, rumqttc::mqttbytes::Protocol::V4);
            assert!(!connect.clean_session, "the session must survive restarts");
            assert_eq!(connect.client_id, "edge-agent-test");
            assert_eq!(connect.keep_alive, 30);
            let login = connect.login.unwrap();
            assert_eq!(
                (login.username.as_str(), login.password.as_str()),
                ("edge", "secret")
            );
        }
    }

    #[tokio::test]
    async fn in_311_the_link_subscribes_reads_acknowledges_and_pings_as_in_mqtt5() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let done_tx = std::sync::Mutex::new(Some(done_tx));
        let mut known = Some(Version::V311);
        let (r, connections) = open_against(&mut known, move |_, mut peer| {
            let done_tx = done_tx.lock().unwrap().take();
            async move {
                assert!(matches!(peer.next_v4().await, v4::Packet::Connect(_)));
                peer.send_v4(v4::Packet::ConnAck(v4::ConnAck::new(
                    v4::ConnectReturnCode::Success,
                    false,
                )))
                .await;
                let v4::Packet::Unsubscribe(unsub) = peer.next_v4().await else {
                    panic!("expected UNSUBSCRIBE")
                };
                assert_eq!(unsub.topics, ["site/old"]);
                peer.send_v4(v4::Packet::UnsubAck(v4::UnsubAck::new(unsub.pkid)))
                    .await;
                let v4::Packet::Subscribe(sub) = peer.next_v4().await else {
                    panic!("expected SUBSCRIBE")
                };
                let filters: Vec<_> = sub
                    .filters
                    .iter()
                    .map(|f| (f.path.as_str(), f.qos))
                    .collect();
                assert_eq!(
                    filters,
                    [
                        ("site/scan", rumqttc::mqttbytes::QoS::AtLeastOnce),
                        ("site/plc/#", rumqttc::mqttbytes::QoS::AtLeastOnce)
                    ]
                );
                peer.send_v4(v4::Packet::SubAck(v4::SubAck::new(
                    sub.pkid,
                    vec![
                        v4::SubscribeReasonCode::Success(rumqttc::mqttbytes::QoS::AtLeastOnce),
                        v4::SubscribeReasonCode::Success(rumqttc::mqttbytes::QoS::AtLeastOnce),
                    ],
                )))
                .await;
                let mut publish =
                    v4::Publish::new("site/scan", rumqttc::mqttbytes::QoS::AtLeastOnce, "LPN1");
                publish.pkid = 7;
                peer.send_v4(v4::Packet::Publish(publish)).await;
                assert_eq!(peer.next_v4().await, v4::Packet::PubAck(v4::PubAck::new(7)));
                assert_eq!(peer.next_v4().await, v4::Packet::PingReq);
                peer.send_v4(v4::Packet::PingResp).await;
                assert_eq!(peer.next_v4().await, v4::Packet::Disconnect);
                if let Some(tx) = done_tx {
                    let _ = tx.send(());
                }
            }
        })
        .await;
        let (mut link, ack) = r.unwrap();
        assert_eq!(
            connections, 1,
            "a known 3.1.1 broker is not asked for MQTT 5 again"
        );
        assert!(!ack.session_present);
        link.unsubscribe(&["site/old".into()]).await.unwrap();
        link.subscribe(&["site/scan".into(), "site/plc/#".into()])
            .await
            .unwrap();
        assert!(matches!(next_packet(&mut link).await, Packet::UnsubAck(_)));
        assert!(matches!(next_packet(&mut link).await, Packet::SubAck(_)));
        let Packet::Publish(p) = next_packet(&mut link).await else {
            panic!("expected PUBLISH")
        };
        assert_eq!(
            (&p.topic[..], &p.payload[..], p.qos, p.pkid),
            (&b"site/scan"[..], &b"LPN1"[..], QoS::AtLeastOnce, 7)
        );
        link.ack(7).unwrap();
        link.ping().unwrap();
        link.flush().await.unwrap();
        assert!(matches!(next_packet(&mut link).await, Packet::PingResp(_)));
        assert!(
            link.keep_alive().unwrap(),
            "the PINGRESP answered the PINGREQ"
        );
        link.disconnect().await.unwrap();
        done_rx.await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_311_subscription_names_its_topic() {
        let mut known = Some(Version::V311);
        let (r, _) = open_against(&mut known, |_, mut peer| async move {
            peer.next_v4().await;
            peer.send_v4(v4::Packet::ConnAck(v4::ConnAck::new(
                v4::ConnectReturnCode::Success,
                false,
            )))
            .await;
            let v4::Packet::Subscribe(sub) = peer.next_v4().await else {
                panic!("expected SUBSCRIBE")
            };
            peer.send_v4(v4::Packet::SubAck(v4::SubAck::new(
                sub.pkid,
                vec![v4::SubscribeReasonCode::Failure],
            )))
            .await;
            let _ = peer.frame().await;
        })
        .await;
        let (mut link, _) = r.unwrap();
        link.subscribe(&["site/secret/#".into()]).await.unwrap();
        let e = first_error(&mut link).await;
        assert!(
            matches!(&e, LinkError::Subscription(t, SubscribeReasonCode::Failure) if t == "site/secret/#"),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn an_mqtt5_refusal_for_another_reason_is_not_a_reason_to_try_311() {
        let mut known = None;
        let (r, connections) = open_against(&mut known, |_, mut peer| async move {
            peer.connect_level().await;
            peer.send_v5(connack(ConnectReturnCode::NotAuthorized, None, None))
                .await;
        })
        .await;
        assert!(
            matches!(
                r,
                Err(LinkError::Refused(ConnectReturnCode::NotAuthorized, _))
            ),
            "{:?}",
            r.err()
        );
        assert_eq!(connections, 1);
        assert_eq!(known, None, "nothing learnt: MQTT 5 again next time");
    }

    #[tokio::test]
    async fn when_neither_version_works_the_error_is_the_311_attempts_cause() {
        // Bad credentials in 3.1.1: the broker speaks 3.1.1, so that is remembered.
        let mut known = None;
        let (r, connections) = open_against(&mut known, |n, mut peer| async move {
            if n == 0 {
                peer.connect_level().await;
            } else {
                peer.next_v4().await;
                peer.send_v4(v4::Packet::ConnAck(v4::ConnAck::new(
                    v4::ConnectReturnCode::BadUserNamePassword,
                    false,
                )))
                .await;
            }
        })
        .await;
        assert_eq!(connections, 2);
        let Err(e) = r else { panic!("accepted") };
        assert!(
            matches!(
                e,
                LinkError::Refused(ConnectReturnCode::BadUserNamePassword, None)
            ),
            "{e:?}"
        );
        assert_eq!(known, Some(Version::V311));

        // Not an MQTT broker at all: what it said, quoted.
        let mut known = None;
        let (r, connections) = open_against(&mut known, |_, mut peer| async move {
            peer.frame().await;
            peer.stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
        })
        .await;
        assert_eq!(connections, 2);
        let Err(e) = r else { panic!("accepted") };
        assert!(matches!(e, LinkError::NotMqtt(Version::V311, _)), "{e:?}");
        assert!(
            e.to_string().starts_with(
                "the answer to the MQTT 3.1.1 CONNECT is not MQTT: \"HTTP/1.1 400 Bad Request"
            ),
            "{e}"
        );
        assert_eq!(known, None);

        // Closed both times.
        let mut known = None;
        let (r, _) = open_against(&mut known, |_, mut peer| async move {
            peer.frame().await;
        })
        .await;
        let Err(e) = r else { panic!("accepted") };
        assert_eq!(
            e.to_string(),
            "the broker closed the connection without answering the MQTT 3.1.1 CONNECT"
        );
    }

    #[test]
    fn only_signs_of_a_broker_without_mqtt5_lead_to_311() {
        let refusals = [
            LinkError::ClosedAtConnect(Version::V5),
            LinkError::NotMqtt(Version::V5, "\"\\xff\"".into()),
            LinkError::Refused(ConnectReturnCode::UnsupportedProtocolVersion, None),
        ];
        for e in refusals {
            assert!(e.refuses_v5(), "{e:?}");
        }
        let others = [
            LinkError::Io(io::Error::from(io::ErrorKind::ConnectionRefused)),
            LinkError::Io(io::Error::new(io::ErrorKind::InvalidData, "TLS alert")),
            LinkError::Timeout("CONNACK", NETWORK_TIMEOUT),
            LinkError::Refused(ConnectReturnCode::BadUserNamePassword, None),
            LinkError::Refused(ConnectReturnCode::NotAuthorized, None),
            LinkError::Refused(ConnectReturnCode::ServerUnavailable, None),
            // The 3.1.1 attempt's own failures never lead anywhere else.
            LinkError::ClosedAtConnect(Version::V311),
            LinkError::NotMqtt(Version::V311, String::new()),
        ];
        for e in others {
            assert!(!e.refuses_v5(), "{e:?}");
        }
    }
}
