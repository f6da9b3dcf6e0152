//! The configuration's types: one a section or list entry, each key with its meaning and
//! default (docs/configuration.md).

use std::path::PathBuf;

use edge_protocol::Role;
use serde::Deserialize;

use super::defaults;
use super::{ByteSize, DecoderConfig, Problem, Span};

/// The whole agent configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub site: Site,
    pub storage: Storage,
    pub upstream: Upstream,
    pub stations: Vec<Station>,
    pub sources: Sources,
    pub control: Control,
    /// `[[routes]]`, in order: the first whose `when` matches an event decides its topic and
    /// priority (compiled by `upstream::routes`).
    pub routes: Vec<RouteConfig>,
    /// What is allowed but unwise (a private key readable by others, ...), each naming its key:
    /// `check-config` prints them, `run` logs them once at start.
    pub warnings: Vec<Problem>,
    /// The document this was built from (file and environment overrides): a pushed
    /// configuration replaces its operational sections (see `remote`).
    pub tree: serde_json::Value,
}

/// `[site]`: who this agent is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// `[a-z0-9-]{1,64}`; part of every topic and event.
    pub id: String,
}

/// What to do when the buffer reaches `storage.max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Delete the oldest undelivered events to make room (each counted as dropped).
    DropOldest,
    /// Stop taking readings: MQTT devices are not acknowledged, serial readings are counted as dropped.
    RejectNew,
}

/// `[storage]`: the redb buffer file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// The buffer file; default `$STATE_DIRECTORY/buffer.redb`, else `./data/buffer.redb`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Capacity of the buffer file.
    #[serde(default = "defaults::max_bytes")]
    pub max_bytes: ByteSize,
    /// `drop_oldest` or `reject_new`.
    #[serde(default = "defaults::on_full")]
    pub on_full: OnFull,
    /// How long delivered events are kept for replay.
    #[serde(default = "defaults::retain_delivered")]
    pub retain_delivered: Span,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            path: None,
            max_bytes: defaults::max_bytes(),
            on_full: defaults::on_full(),
            retain_delivered: defaults::retain_delivered(),
        }
    }
}

impl Storage {
    /// The buffer file path with the documented default applied.
    pub fn resolved_path(&self) -> PathBuf {
        if let Some(p) = &self.path {
            return p.clone();
        }
        match std::env::var_os("STATE_DIRECTORY") {
            // systemd may pass several directories separated by ':'; the first is ours.
            Some(dirs) if !dirs.is_empty() => {
                let first = dirs
                    .to_string_lossy()
                    .split(':')
                    .next()
                    .unwrap_or("")
                    .to_string();
                PathBuf::from(first).join("buffer.redb")
            }
            _ => PathBuf::from("./data/buffer.redb"),
        }
    }
}

/// Upstream event encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Cbor,
    Json,
    /// CloudEvents 1.0 structured-mode JSON; `data` is the `json` event.
    #[serde(rename = "cloudevents")]
    CloudEvents,
}

/// `[upstream]`: where events go, the central ERP integration broker or HTTP endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `mqtt://host[:port]` (default port 1883), `mqtts://host[:port]` (TLS, default 8883),
    /// `https://host[:port]/path` (events POSTed in batches) or `http://` to a loopback address.
    pub url: String,
    /// First topic level of everything the agent publishes.
    #[serde(default = "defaults::topic_prefix")]
    pub topic_prefix: String,
    /// `cbor` (default for MQTT), `json` (default for HTTP) or `cloudevents`; see
    /// [`Upstream::format`].
    #[serde(default, rename = "format")]
    pub format_key: Option<Format>,
    /// Events published and not yet acknowledged (PUBACK) at most.
    #[serde(default = "defaults::max_inflight")]
    pub max_inflight: u16,
    /// Events per second at most while draining a backlog.
    #[serde(default = "defaults::replay_rate")]
    pub replay_rate: u32,
    /// Up to this many consecutive events of one topic in one MQTT message (a JSON or CBOR
    /// array), or events in one HTTP request; see [`Upstream::batch_size`].
    #[serde(default)]
    pub batch: Option<u16>,
    /// MQTT client id; default `edge-agent-{site.id}`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// MQTT keep-alive interval.
    #[serde(default = "defaults::keep_alive")]
    pub keep_alive: Span,
    /// `mqtts://`: PEM file with the CA certificate(s) the broker's certificate chains to;
    /// required for mqtts:// (the system bundle, e.g. /etc/ssl/certs/ca-certificates.crt,
    /// for a broker with a public certificate).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `mqtts://`: PEM client certificate (chain) for mutual TLS; needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// `mqtts://`: PEM private key of `cert_file` (PKCS#8, PKCS#1 or SEC1); mode 0600.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// MQTT user name.
    #[serde(default)]
    pub username: Option<String>,
    /// File whose first line is the MQTT password (read at each connection, never logged);
    /// needs `username`; mode 0600.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// HTTP: file whose first line is the bearer token sent with every request (read at each
    /// connection, never logged); mode 0600.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl Upstream {
    /// Events go to an HTTP endpoint (`http://` or `https://`), not an MQTT broker.
    pub fn is_http(&self) -> bool {
        self.url.starts_with("https://") || self.url.starts_with("http://")
    }

    /// The event encoding: `format`, else CBOR over MQTT and JSON over HTTP.
    pub fn format(&self) -> Format {
        self.format_key.unwrap_or(if self.is_http() {
            Format::Json
        } else {
            defaults::format()
        })
    }

    /// Events per message (MQTT) or request (HTTP) at most: `batch`, else 1 over MQTT and
    /// 100 over HTTP.
    pub fn batch_size(&self) -> usize {
        let default = if self.is_http() { 100 } else { 1 };
        usize::from(self.batch.unwrap_or(default).max(1))
    }
}

/// `[[stations]]`: a place where devices are read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Station {
    pub id: String,
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    None,
    Even,
    Odd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowControl {
    None,
    Software,
    Hardware,
}

/// `[[sources.serial]]`: a device on a serial port. The keys of its table that are not these
/// are its decoder's (`decoder` and that decoder's settings, read by `decoders::read`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialSource {
    pub id: String,
    /// Device path; `/dev/serial/by-id/…` names survive re-plugging.
    pub path: PathBuf,
    pub baud: u32,
    #[serde(default = "defaults::data_bits")]
    pub data_bits: u8,
    #[serde(default = "defaults::parity")]
    pub parity: Parity,
    #[serde(default = "defaults::stop_bits")]
    pub stop_bits: u8,
    #[serde(default = "defaults::flow_control")]
    pub flow_control: FlowControl,
    /// The station this device belongs to.
    #[serde(default)]
    pub station: Option<String>,
    /// `decoder = "NAME"` and that decoder's keys, read from the same table by
    /// `decoders::read` (the loader sets it).
    #[serde(skip)]
    pub decoder: DecoderConfig,
}

/// `[[sources.mqtt]]`: devices that publish to the site's own broker. As for serial sources,
/// the keys of its table that are not these are its decoder's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSource {
    pub id: String,
    /// The site broker, `mqtt://host[:port]` or `mqtts://host[:port]` (TLS).
    pub url: String,
    /// Topic filters subscribed with QoS 1.
    pub topics: Vec<String>,
    #[serde(default)]
    pub station: Option<String>,
    /// MQTT client id, stable so the broker keeps the session; default `edge-agent-{site.id}-{id}`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// MQTT 5 Receive Maximum: messages the broker may have unacknowledged with us at once.
    #[serde(default = "defaults::receive_maximum")]
    pub receive_maximum: u16,
    /// `mqtts://`: PEM file with the CA certificate(s) the broker's certificate chains to;
    /// required for mqtts:// (the system bundle, e.g. /etc/ssl/certs/ca-certificates.crt,
    /// for a broker with a public certificate).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `mqtts://`: PEM client certificate (chain) for mutual TLS; needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// `mqtts://`: PEM private key of `cert_file` (PKCS#8, PKCS#1 or SEC1); mode 0600.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// MQTT user name.
    #[serde(default)]
    pub username: Option<String>,
    /// File whose first line is the MQTT password (read at each connection, never logged);
    /// needs `username`; mode 0600.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// `decoder = "NAME"` and that decoder's keys, read from the same table by
    /// `decoders::read` (the loader sets it).
    #[serde(skip)]
    pub decoder: DecoderConfig,
}

/// `[[sources.*.rules]]`: maps a JSON message or a delimited telegram to a canonical event.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Field = value, all must match: a JSON pointer ("/type") or a column index ("0").
    #[serde(default)]
    pub when: std::collections::BTreeMap<String, serde_json::Value>,
    /// shipment.sort, equipment.state, shipment.scan or inventory.scan.
    pub kind: String,
    /// Body field → JSON pointer or column index.
    #[serde(default)]
    pub fields: std::collections::BTreeMap<String, String>,
    /// Body field → { raw value → canonical value }.
    #[serde(default)]
    pub values: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

impl RuleConfig {
    /// The protocol rule, or every problem (keys relative to the rule).
    pub fn build(&self) -> Result<edge_protocol::rules::Rule, Vec<String>> {
        let when: Vec<(String, String)> = self
            .when
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect();
        edge_protocol::rules::Rule::from_config(
            when.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            &self.kind,
            self.fields.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            self.values.clone(),
        )
    }
}

/// How soon an event goes out of a backlog.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// In seq order, after every pending `high` event.
    #[default]
    Normal,
    /// Before every pending `normal` event.
    High,
}

/// A string or a list of strings (`kind = "exception"`, `kind = ["exception", "shipment.sort"]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Strings {
    pub items: Vec<String>,
    /// Written as a list (problems then name the element: `when.kind[1]`).
    pub list: bool,
}

impl<'de> Deserialize<'de> for Strings {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Strings;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Strings, E> {
                Ok(Strings {
                    items: vec![v.to_string()],
                    list: false,
                })
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Strings, A::Error> {
                let mut items = Vec::new();
                while let Some(s) = a.next_element::<String>()? {
                    items.push(s);
                }
                Ok(Strings { items, list: true })
            }
        }
        d.deserialize_any(V)
    }
}

/// `[[routes]]` `when`: every key given must match (a key takes one value or a list of them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    /// Event kinds (`shipment.scan`, …, `exception`).
    #[serde(default)]
    pub kind: Option<Strings>,
    /// An exception's reason (`no_read`, `scale_error`, …); other kinds have none and do not match.
    #[serde(default)]
    pub reason: Option<Strings>,
    /// Source ids (`edge-agent` for the agent's own events).
    #[serde(default)]
    pub source: Option<Strings>,
    /// Station ids; an event without a station does not match.
    #[serde(default)]
    pub station: Option<Strings>,
    /// Station roles; an event without a station does not match.
    #[serde(default)]
    pub role: Option<Strings>,
}

/// `[[routes]]`: where matching events go and how soon.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Which events; empty or left out: every event.
    #[serde(default)]
    pub when: When,
    /// Topic under `{prefix}/{site}/`, with placeholders {kind} {reason} {source} {station}
    /// {role} (`none` when the event has no value).
    pub topic: String,
    /// `high` or `normal` (default).
    #[serde(default)]
    pub priority: Priority,
}

/// `[sources]`.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub serial: Vec<SerialSource>,
    pub mqtt: Vec<MqttSource>,
}

/// `[control]`: the local control socket and remote configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// Unix socket for `edge-agent status` and `replay`; default
    /// `$RUNTIME_DIRECTORY/control.sock`, else `/run/edge-agent/control.sock`.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Public keys allowed to sign pushed configuration (`ed25519:BASE64`).
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// How long new sources have to open after a push before it is rolled back.
    #[serde(default = "defaults::confirm_timeout")]
    pub confirm_timeout: Span,
    /// How often the retained status is published.
    #[serde(default = "defaults::status_interval")]
    pub status_interval: Span,
    /// `IP:PORT` of the local HTTP server (`/metrics`, `/healthz`, `/status.json`, the status
    /// page); `""` turns it off.
    #[serde(default = "defaults::http")]
    pub http: String,
    /// A file whose first line is the bearer token every HTTP request must carry; required
    /// when `http` is not a loopback address.
    #[serde(default)]
    pub http_token_file: Option<PathBuf>,
    /// How long upstream may be unreachable before `/healthz` says unhealthy.
    #[serde(default = "defaults::health_grace")]
    pub health_grace: Span,
    /// With an HTTP upstream: the MQTT broker (`mqtt://` or `mqtts://`) that carries status,
    /// replay requests and pushed configuration, with upstream's TLS and credential keys.
    #[serde(default)]
    pub broker: Option<String>,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            socket: None,
            trusted_keys: Vec::new(),
            confirm_timeout: defaults::confirm_timeout(),
            status_interval: defaults::status_interval(),
            http: defaults::http(),
            http_token_file: None,
            health_grace: defaults::health_grace(),
            broker: None,
        }
    }
}

impl Control {
    /// The control socket path with the documented default applied.
    pub fn resolved_socket(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(default_socket)
    }

    /// The HTTP server's address; None: turned off (`http = ""`). Validation refuses an
    /// address that does not parse.
    pub fn http_addr(&self) -> Option<Result<std::net::SocketAddr, std::net::AddrParseError>> {
        let text = self.http.trim();
        (!text.is_empty()).then(|| text.parse())
    }
}

/// The control socket used when none is configured.
pub fn default_socket() -> PathBuf {
    match std::env::var_os("RUNTIME_DIRECTORY") {
        Some(dirs) if !dirs.is_empty() => {
            let first = dirs
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or("")
                .to_string();
            PathBuf::from(first).join("control.sock")
        }
        _ => PathBuf::from("/run/edge-agent/control.sock"),
    }
}

impl MqttSource {
    /// The MQTT client id: `client_id`, else `edge-agent-{site}-{id}` (stable, so the broker
    /// keeps the session).
    pub fn effective_client_id(&self, site: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("edge-agent-{site}-{}", self.id))
    }
}

impl Config {
    /// The station a source belongs to.
    pub fn station(&self, id: Option<&str>) -> Option<&Station> {
        id.and_then(|id| self.stations.iter().find(|s| s.id == id))
    }

    /// The upstream MQTT client id.
    pub fn upstream_client_id(&self) -> String {
        self.upstream
            .client_id
            .clone()
            .unwrap_or_else(|| format!("edge-agent-{}", self.site.id))
    }
}
