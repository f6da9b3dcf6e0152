//! One connection to a site broker as an MQTT 5 subscriber: connect (TCP or TLS), subscribe,
//! read packets, write PUBACKs. Packets are encoded and decoded by rumqttc's codec
//! (`mqttbytes`); the connection itself is ours so that the source decides when to read.
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

use bytes::{Buf, BytesMut};
use rumqttc::v5::mqttbytes::v5::{
    check, ConnAck, Connect, ConnectProperties, ConnectReturnCode, Disconnect,
    DisconnectReasonCode, Filter, Login, Packet, PingReq, PubAck, RetainForwardRule, Subscribe,
    SubscribeReasonCode, Unsubscribe,
};
use rumqttc::v5::mqttbytes::{Error as CodecError, QoS};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long connecting (TCP, TLS and CONNACK together) and any single write may take.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(10);

/// What a connection is made with.
pub struct Settings {
    pub host: String,
    pub port: u16,
    /// TLS for `mqtts://`; None: plain TCP.
    pub tls: Option<ClientConfig>,
    pub client_id: String,
    pub login: Option<(String, String)>,
    pub keep_alive: Duration,
    /// How long the broker keeps the session while we are away.
    pub session_expiry: Duration,
    pub receive_maximum: u16,
    /// The largest packet we accept; the broker must not send larger.
    pub max_packet: u32,
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
        LinkError::Protocol(e.to_string())
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open, accepted MQTT 5 connection.
pub struct Link {
    stream: Box<dyn Io>,
    /// Bytes read and not yet decoded.
    input: BytesMut,
    /// Packets encoded and not yet written.
    output: BytesMut,
    max_packet: u32,
    /// How often we must send something; the broker may set it in CONNACK.
    pub keep_alive_every: Duration,
    /// When each PINGREQ still waiting for its PINGRESP was sent, oldest first.
    pings: VecDeque<tokio::time::Instant>,
    /// The SUBSCRIBE waiting for its SUBACK, with its topics.
    subscribing: Option<(u16, Vec<String>)>,
}

impl Link {
    /// Connects and waits for the broker to accept: the CONNACK, whose `session_present`
    /// tells whether the broker kept our session. Each step (TCP, TLS, CONNACK) has
    /// `NETWORK_TIMEOUT` and is named if it runs out.
    pub async fn connect(s: &Settings) -> Result<(Link, ConnAck), LinkError> {
        let step = |what: &'static str| move |_| LinkError::Timeout(what, NETWORK_TIMEOUT);
        let tcp = tokio::time::timeout(
            NETWORK_TIMEOUT,
            TcpStream::connect((s.host.as_str(), s.port)),
        )
        .await
        .map_err(step("TCP connection (a firewall or a wrong host?)"))??;
        tcp.set_nodelay(true)?;
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
        tokio::time::timeout(NETWORK_TIMEOUT, Link::handshake(s, stream))
            .await
            .map_err(step("CONNACK"))?
    }

    async fn handshake(s: &Settings, stream: Box<dyn Io>) -> Result<(Link, ConnAck), LinkError> {
        let mut link = Link {
            stream,
            input: BytesMut::with_capacity(16 * 1024),
            output: BytesMut::with_capacity(4 * 1024),
            max_packet: s.max_packet,
            keep_alive_every: s.keep_alive,
            pings: VecDeque::new(),
            subscribing: None,
        };
        let mut properties = ConnectProperties::new();
        properties.session_expiry_interval =
            Some(s.session_expiry.as_secs().min(u32::MAX as u64) as u32);
        properties.receive_maximum = Some(s.receive_maximum);
        properties.max_packet_size = Some(s.max_packet);
        let connect = Connect {
            keep_alive: s.keep_alive.as_secs().min(u16::MAX as u64) as u16,
            client_id: s.client_id.clone(),
            clean_start: false,
            properties: Some(properties),
        };
        let login = s
            .login
            .as_ref()
            .map(|(u, p)| Login::new(u.as_str(), p.as_str()));
        link.send(Packet::Connect(connect, None, login)).await?;
        loop {
            if let Some(packet) = link.try_next()? {
                let Packet::ConnAck(ack) = packet else {
                    return Err(LinkError::Protocol(format!(
                        "expected CONNACK, got {packet:?}"
                    )));
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
                if let Some(k) = ack.properties.as_ref().and_then(|p| p.server_keep_alive) {
                    if k > 0 {
                        link.keep_alive_every = Duration::from_secs(u64::from(k));
                    }
                }
                return Ok((link, ack));
            }
            link.fill().await?;
        }
    }

    /// Subscribes to `topics` with QoS 1. The SUBACK comes back through [`Link::try_next`],
    /// which turns a refused filter into an error.
    pub async fn subscribe(&mut self, topics: &[String]) -> Result<(), LinkError> {
        // Retained messages only when the subscription is new, not again at every reconnect
        // (each copy would be stored as a new reading).
        let filters = topics.iter().map(|t| Filter {
            retain_forward_rule: RetainForwardRule::OnNewSubscribe,
            ..Filter::new(t.clone(), QoS::AtLeastOnce)
        });
        let mut subscribe = Subscribe::new_many(filters, None);
        subscribe.pkid = 1;
        self.subscribing = Some((subscribe.pkid, topics.to_vec()));
        self.send(Packet::Subscribe(subscribe)).await
    }

    /// Unsubscribes from `topics` (filters this client no longer wants that the broker's
    /// session may still hold). The UNSUBACK comes back through [`Link::try_next`].
    pub async fn unsubscribe(&mut self, topics: &[String]) -> Result<(), LinkError> {
        let unsubscribe = Unsubscribe {
            pkid: 2,
            filters: topics.to_vec(),
            properties: None,
        };
        self.send(Packet::Unsubscribe(unsubscribe)).await
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
            Packet::Disconnect(d) => {
                let reason = d.properties.as_ref().and_then(|p| p.reason_string.clone());
                return Err(LinkError::Disconnected(d.reason_code, reason));
            }
            _ => {}
        }
        Ok(Some(packet))
    }

    fn read_packet(&mut self) -> Result<Option<Packet>, LinkError> {
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
        Ok(())
    }

    /// Queues a PUBACK; [`Link::flush`] writes it.
    pub fn ack(&mut self, pkid: u16) -> Result<(), LinkError> {
        Packet::PubAck(PubAck::new(pkid, None)).write(&mut self.output, None)?;
        Ok(())
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
        Packet::PingReq(PingReq).write(&mut self.output, None)?;
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

    /// A clean goodbye; the broker keeps the session (its expiry was set at connect).
    pub async fn disconnect(&mut self) -> Result<(), LinkError> {
        self.send(Packet::Disconnect(Disconnect::new(
            DisconnectReasonCode::NormalDisconnection,
        )))
        .await
    }

    async fn send(&mut self, packet: Packet) -> Result<(), LinkError> {
        packet.write(&mut self.output, None)?;
        self.flush().await
    }
}

#[cfg(test)]
mod tests {
    //! The link against a scripted peer on a loopback socket: each test plays the broker's
    //! side of one exchange, byte-exact through the same codec.
    use super::*;
    use rumqttc::v5::mqttbytes::v5::{ConnAckProperties, PingResp, SubAck};
    use tokio::net::TcpListener;

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
        Link::connect(&s).await
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
}
