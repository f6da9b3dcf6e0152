//! `edge-agent config push`: publishes a signed document retained with QoS 1 to
//! `{prefix}/{site}/config/set`, and returns once the broker has acknowledged it.

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

use super::SignedDoc;
use crate::config::{parse_mqtt_url, BrokerAccess};
use crate::tls::Access;

/// How long the broker has to accept the connection and acknowledge the document.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Where to push.
pub struct Target {
    pub url: String,
    pub topic_prefix: String,
    pub site: String,
    /// For `mqtts://`: the CA that signed the broker's certificate.
    pub ca_file: Option<PathBuf>,
    /// For mutual TLS: our certificate and its key (both or neither).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
}

/// How TLS messages name this command's settings; [`flags`] turns them into its flags.
const KEY: &str = "config push";

/// `config push.ca_file` becomes `--ca-file`, and so on.
fn flags(message: String) -> String {
    ["url", "ca_file", "cert_file", "key_file", "password_file"]
        .iter()
        .fold(message, |m, k| {
            m.replace(&format!("{KEY}.{k}"), &format!("--{}", k.replace('_', "-")))
        })
}

/// The topic a site reads pushed configuration from.
pub fn set_topic(prefix: &str, site: &str) -> String {
    format!("{prefix}/{site}/config/set")
}

/// Pushes `doc` (checked to parse first) and waits for the broker's PUBACK.
pub async fn push(target: &Target, doc: &[u8]) -> Result<String, String> {
    if doc.len() > super::MAX_DOCUMENT {
        return Err(format!(
            "the signed document is {} bytes, above the {} bytes an agent accepts; push only the operational sections ([[stations]], [[sources.*]], [[routes]], upstream.replay_rate/max_inflight)",
            doc.len(),
            super::MAX_DOCUMENT
        ));
    }
    let parsed = SignedDoc::parse(doc).map_err(|e| e.to_string())?;
    let addr = parse_mqtt_url(&target.url).map_err(|e| e.to_string())?;
    let access = BrokerAccess {
        key: KEY.into(),
        url: target.url.clone(),
        ca_file: target.ca_file.clone(),
        cert_file: target.cert_file.clone(),
        key_file: target.key_file.clone(),
        username: target.username.clone(),
        password_file: target.password_file.clone(),
    };
    // The keys named in messages are this command's flags.
    let mut access = Access::prepare(&access, addr.tls).map_err(|e| flags(e.to_string()))?;
    let mut opts = MqttOptions::new(
        format!("edge-agent-config-push-{}", std::process::id()),
        addr.host,
        addr.port,
    );
    if let Some(t) = access.transport() {
        opts.set_transport(t);
    }
    if let Some((u, p)) = access.credentials() {
        opts.set_credentials(u, p);
    }
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_max_packet_size(doc.len() + 1024, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    let topic = set_topic(&target.topic_prefix, &target.site);
    client
        .publish(&topic, QoS::AtLeastOnce, true, doc.to_vec())
        .await
        .map_err(|e| format!("queueing the publish: {e}"))?;
    let acked = async {
        let mut pkid = None;
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Publish(id))) => pkid = Some(id),
                Ok(Event::Incoming(Packet::PubAck(ack))) if Some(ack.pkid) == pkid => return Ok(()),
                Ok(_) => {}
                Err(rumqttc::ConnectionError::Io(e))
                    if e.kind() == std::io::ErrorKind::ConnectionRefused =>
                {
                    return Err(format!(
                        "broker {}: connection refused; is the broker running and listening there?",
                        target.url
                    ))
                }
                Err(e) => {
                    let why = crate::tls::explain(&e, KEY)
                        .map(flags)
                        .unwrap_or_else(|| e.to_string());
                    return Err(format!("broker {}: {why}", target.url));
                }
            }
        }
    };
    match tokio::time::timeout(TIMEOUT, acked).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(format!(
                "broker {}: no acknowledgement within {TIMEOUT:?}",
                target.url
            ))
        }
    }
    let _ = client.disconnect().await;
    Ok(format!(
        "pushed version {} to {topic} (retained); the agent reports on {}/{}/config/status",
        parsed.version, target.topic_prefix, target.site
    ))
}
