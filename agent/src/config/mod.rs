//! The configuration file (docs/configuration.md): types, loading and validation.
//!
//! Loading layers the TOML file and `EDGE_AGENT__SECTION__KEY` environment variables (the
//! `config` crate), then reads each section and each source on its own so that one bad key does
//! not hide the others: every problem is collected and reported at once, each naming its key.

mod decoders;
mod read;
mod units;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_protocol::Role;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use read::Collector;

pub use decoders::DecoderConfig;
pub use units::{ByteSize, Span};

/// The whole agent configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub site: Site,
    pub storage: Storage,
    pub upstream: Upstream,
    pub stations: Vec<Station>,
    pub sources: Sources,
    pub control: Control,
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
}

/// `[upstream]`: the central ERP integration broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `mqtt://host[:port]` (default port 1883) or `mqtts://host[:port]` (TLS, default 8883).
    pub url: String,
    /// First topic level of everything the agent publishes.
    #[serde(default = "defaults::topic_prefix")]
    pub topic_prefix: String,
    /// `cbor` (default) or `json`.
    #[serde(default = "defaults::format")]
    pub format: Format,
    /// Events published and not yet acknowledged (PUBACK) at most.
    #[serde(default = "defaults::max_inflight")]
    pub max_inflight: u16,
    /// Events per second at most while draining a backlog.
    #[serde(default = "defaults::replay_rate")]
    pub replay_rate: u32,
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

/// How to reach one broker (`[upstream]` or a `[[sources.mqtt]]`): its URL and the TLS and
/// credential keys, with the key that names them in messages. Holds paths, never secrets.
#[derive(Debug, Clone)]
pub struct BrokerAccess {
    /// `upstream` or `sources.mqtt[N]`.
    pub key: String,
    pub url: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
}

macro_rules! access_of {
    ($t:ty) => {
        impl $t {
            /// This broker's address, TLS and credential keys, named under `key`.
            pub fn access(&self, key: impl Into<String>) -> BrokerAccess {
                BrokerAccess {
                    key: key.into(),
                    url: self.url.clone(),
                    ca_file: self.ca_file.clone(),
                    cert_file: self.cert_file.clone(),
                    key_file: self.key_file.clone(),
                    username: self.username.clone(),
                    password_file: self.password_file.clone(),
                }
            }
        }
    };
}
access_of!(Upstream);
access_of!(MqttSource);

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
}

impl Default for Control {
    fn default() -> Self {
        Control {
            socket: None,
            trusted_keys: Vec::new(),
            confirm_timeout: defaults::confirm_timeout(),
            status_interval: defaults::status_interval(),
        }
    }
}

impl Control {
    /// The control socket path with the documented default applied.
    pub fn resolved_socket(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(default_socket)
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

mod defaults {
    use super::*;
    pub fn max_bytes() -> ByteSize {
        ByteSize(2 << 30)
    }
    pub fn on_full() -> OnFull {
        OnFull::DropOldest
    }
    pub fn retain_delivered() -> Span {
        Span(Duration::from_secs(24 * 3600))
    }
    pub fn topic_prefix() -> String {
        "edge".into()
    }
    pub fn format() -> Format {
        Format::Cbor
    }
    pub fn max_inflight() -> u16 {
        100
    }
    pub fn replay_rate() -> u32 {
        2000
    }
    pub fn keep_alive() -> Span {
        Span(Duration::from_secs(30))
    }
    pub fn receive_maximum() -> u16 {
        20
    }
    pub fn data_bits() -> u8 {
        8
    }
    pub fn parity() -> Parity {
        Parity::None
    }
    pub fn stop_bits() -> u8 {
        1
    }
    pub fn flow_control() -> FlowControl {
        FlowControl::None
    }
    pub fn confirm_timeout() -> Span {
        Span(Duration::from_secs(30))
    }
    pub fn status_interval() -> Span {
        Span(Duration::from_secs(30))
    }
}

/// One problem in a configuration, naming its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Loads `path` with environment overrides and validates it.
pub fn load(path: &Path) -> Result<Config, Problems> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Problems(vec![Problem {
            key: String::new(),
            message: format!(
                "configuration file {}: {e}; pass an existing file with --config",
                path.display()
            ),
        }])
    })?;
    load_str(&text, &path.display().to_string())
}

/// Parses configuration text (`origin` names it in messages), with environment overrides.
pub fn load_str(text: &str, origin: &str) -> Result<Config, Problems> {
    let layered = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("EDGE_AGENT")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .and_then(|c| c.try_deserialize::<serde_json::Value>())
        .map_err(|e| {
            Problems(vec![Problem {
                key: String::new(),
                message: format!("{origin}: {e}"),
            }])
        })?;
    from_value(layered)
}

/// The document tree of TOML text alone (no environment overrides): a pushed configuration.
pub fn toml_tree(text: &str, origin: &str) -> Result<serde_json::Value, String> {
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize::<serde_json::Value>())
        .map_err(|e| format!("{origin}: {e}"))
}

/// The top-level sections.
const SECTIONS: [&str; 6] = [
    "site", "storage", "upstream", "stations", "sources", "control",
];

/// Builds and validates a configuration from its document tree.
///
/// Every section and every list entry is read on its own, and within one every failing key is
/// reported and set aside (see `read`), so one mistake hides no other: the semantic checks
/// (`validate`) then run on everything that did read.
pub fn from_value(doc: Value) -> Result<Config, Problems> {
    let tree = doc.clone();
    let mut c = Collector::default();
    let Value::Object(mut top) = doc else {
        return Err(Problems(vec![Problem {
            key: String::new(),
            message: "the configuration must be a TOML table".into(),
        }]));
    };
    let mut take = |name: &str| top.remove(name);

    let site: Option<Site> = match take("site") {
        Some(v) => c.read("site", v, "[site]"),
        None => {
            c.push(
                "site.id",
                "required key is missing; set [site] id = \"dc-xxx-01\"",
            );
            c.poison("site");
            c.read("site", Value::Object(Map::new()), "[site]")
        }
    };
    let storage: Option<Storage> = match take("storage") {
        Some(v) => c.read("storage", v, "[storage]"),
        None => Some(Storage::default()),
    };
    let upstream: Option<Upstream> = match take("upstream") {
        Some(v) => c.read("upstream", v, "[upstream]"),
        None => {
            c.push(
                "upstream.url",
                "required key is missing; set [upstream] url = \"mqtt://host:1883\"",
            );
            c.poison("upstream");
            c.read("upstream", Value::Object(Map::new()), "[upstream]")
        }
    };
    let control: Option<Control> = match take("control") {
        Some(v) => c.read("control", v, "[control]"),
        None => Some(Control::default()),
    };
    let stations = read_list::<Station>(&mut c, "stations", take("stations"));
    let mut serial = Entries::default();
    let mut mqtt = Entries::default();
    if let Some(v) = take("sources") {
        match v {
            Value::Object(mut m) => {
                serial = read_sources(&mut c, "sources.serial", m.remove("serial"));
                mqtt = read_sources(&mut c, "sources.mqtt", m.remove("mqtt"));
                for k in m.keys() {
                    c.push(
                        format!("sources.{k}"),
                        "unknown source type; use [[sources.serial]] or [[sources.mqtt]]",
                    );
                }
            }
            _ => c.push(
                "sources",
                "must be a table of [[sources.serial]] / [[sources.mqtt]]",
            ),
        }
    }
    for k in top.keys() {
        c.push(
            k.clone(),
            format!(
                "unknown section; known sections are {}",
                SECTIONS.join(", ")
            ),
        );
    }

    let (Some(site), Some(storage), Some(upstream), Some(control)) =
        (site, storage, upstream, control)
    else {
        return Err(in_file_order(c.problems));
    };
    let at = Positions {
        stations: stations.at,
        serial: serial.at,
        mqtt: mqtt.at,
    };
    let mut config = Config {
        site,
        storage,
        upstream,
        stations: stations.items,
        sources: Sources {
            serial: serial.items,
            mqtt: mqtt.items,
        },
        control,
        warnings: Vec::new(),
        tree,
    };
    let mut warnings = Collector::default();
    validate(&config, &at, &mut c, &mut warnings);
    config.warnings = warnings.problems;
    if c.problems.is_empty() {
        Ok(config)
    } else {
        Err(in_file_order(c.problems))
    }
}

/// Problems grouped by section and list entry, in the order of the example file; within one
/// entry, what did not read comes before what is wrong.
fn in_file_order(mut problems: Vec<Problem>) -> Problems {
    fn place(key: &str) -> (usize, usize) {
        let lists = ["stations", "sources.serial", "sources.mqtt"];
        for (n, list) in lists.iter().enumerate() {
            if let Some(rest) = key.strip_prefix(list).and_then(|r| r.strip_prefix('[')) {
                let i = rest
                    .split(']')
                    .next()
                    .and_then(|i| i.parse().ok())
                    .unwrap_or(0);
                return (10 + n, i);
            }
        }
        let section = key.split(['.', '[']).next().unwrap_or(key);
        let rank = match section {
            "site" => 1,
            "storage" => 2,
            "upstream" => 3,
            "stations" => 10,
            "sources" => 11,
            "control" => 20,
            "" => 0,
            _ => 30,
        };
        (rank, 0)
    }
    problems.sort_by_key(|p| place(&p.key));
    Problems(problems)
}

/// The entries of one list that could be read, with their positions in the file.
struct Entries<T> {
    items: Vec<T>,
    at: Vec<usize>,
}

impl<T> Default for Entries<T> {
    fn default() -> Self {
        Entries {
            items: Vec::new(),
            at: Vec::new(),
        }
    }
}

/// Where each read entry of the lists is in the file: an entry that could not be read at all
/// is left out of the configuration, and the keys of the ones after it keep their numbers.
struct Positions {
    stations: Vec<usize>,
    serial: Vec<usize>,
    mqtt: Vec<usize>,
}

impl Positions {
    fn of(list: &[usize], i: usize) -> usize {
        list.get(i).copied().unwrap_or(i)
    }
}

fn read_list<T: DeserializeOwned>(
    c: &mut Collector,
    key: &str,
    value: Option<Value>,
) -> Entries<T> {
    let mut list = Entries::default();
    match value {
        None => {}
        Some(Value::Array(items)) => {
            let table = format!("[[{key}]]");
            for (i, v) in items.into_iter().enumerate() {
                if let Some(item) = c.read(&format!("{key}[{i}]"), v, &table) {
                    list.items.push(item);
                    list.at.push(i);
                }
            }
        }
        Some(_) => c.push(key, format!("must be an array of tables: [[{key}]]")),
    }
    list
}

/// A source's own keys (the rest of its table is its decoder's).
trait Source: DeserializeOwned {
    const OWN_KEYS: &'static [&'static str];
    fn set_decoder(&mut self, d: DecoderConfig);
}

impl Source for SerialSource {
    const OWN_KEYS: &'static [&'static str] = &[
        "id",
        "path",
        "baud",
        "data_bits",
        "parity",
        "stop_bits",
        "flow_control",
        "station",
    ];
    fn set_decoder(&mut self, d: DecoderConfig) {
        self.decoder = d;
    }
}

impl Source for MqttSource {
    const OWN_KEYS: &'static [&'static str] = &[
        "id",
        "url",
        "topics",
        "station",
        "client_id",
        "receive_maximum",
        "ca_file",
        "cert_file",
        "key_file",
        "username",
        "password_file",
    ];
    fn set_decoder(&mut self, d: DecoderConfig) {
        self.decoder = d;
    }
}

/// `[[sources.serial]]` or `[[sources.mqtt]]`: each entry's own keys read as the source, the
/// others as its decoder, every problem of both recorded.
fn read_sources<T: Source>(c: &mut Collector, key: &str, value: Option<Value>) -> Entries<T> {
    let mut list = Entries::default();
    match value {
        None => {}
        Some(Value::Array(items)) => {
            let table = format!("[[{key}]]");
            for (i, v) in items.into_iter().enumerate() {
                let entry = format!("{key}[{i}]");
                let Value::Object(all) = v else {
                    // Reported as "not a table" by the reader.
                    let _ = c.read::<T>(&entry, v, &table);
                    continue;
                };
                let (own, rest): (Map<String, Value>, Map<String, Value>) = all
                    .into_iter()
                    .partition(|(k, _)| T::OWN_KEYS.contains(&k.as_str()));
                let source = c.read::<T>(&entry, Value::Object(own), &table);
                let decoder = decoders::read(c, &entry, rest, T::OWN_KEYS);
                if let Some(mut source) = source {
                    source.set_decoder(decoder.unwrap_or_default());
                    list.items.push(source);
                    list.at.push(i);
                }
            }
        }
        Some(_) => c.push(key, format!("must be an array of tables: [[{key}]]")),
    }
    list
}

const STANDARD_BAUD: [u32; 22] = [
    50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800, 9600, 19200, 38400, 57600,
    115200, 230400, 460800, 921600, 1_000_000, 2_000_000,
];

fn valid_site_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn valid_name(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Checks an `mqtt://` or `mqtts://` URL; returns the problem, if any.
pub fn check_mqtt_url(url: &str) -> Result<(), String> {
    parse_mqtt_url(url).map(|_| ())
}

/// A broker address from `mqtt://host[:port]` or `mqtts://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

pub fn parse_mqtt_url(url: &str) -> Result<BrokerAddr, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else {
        return Err(format!(
            "{url:?} is not an MQTT URL; write mqtt://host:1883 or mqtts://host:8883"
        ));
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') || rest.contains('@') {
        return Err(format!(
            "{url:?}: only scheme, host and port are allowed (credentials go in their own keys)"
        ));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            let port: u16 = p
                .parse()
                .map_err(|_| format!("{url:?}: port {p:?} is not a number from 1 to 65535"))?;
            (h, port)
        }
        _ => (rest, if tls { 8883 } else { 1883 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(format!("{url:?}: needs a host and a port from 1 to 65535"));
    }
    Ok(BrokerAddr {
        host: host.to_string(),
        port,
        tls,
    })
}

fn check_topic_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("an empty topic filter matches nothing".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return Err(format!("{filter:?}: '#' must be a whole last level"));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("{filter:?}: '+' must be a whole level"));
        }
    }
    Ok(())
}

/// The TLS and credential keys of one broker: errors in `c`, warnings in `w`.
fn check_access(c: &mut Collector, w: &mut Collector, a: &BrokerAccess) {
    let k = &a.key;
    // An invalid URL is reported on its own; the TLS keys are checked once it says which.
    let tls = parse_mqtt_url(&a.url).map(|addr| addr.tls).ok();
    // A TLS key that failed to read is reported already; the others are checked with it.
    let tls_keys_read = ["ca_file", "cert_file", "key_file"]
        .iter()
        .all(|name| !c.is_poisoned(&format!("{k}.{name}")));
    if tls == Some(false) {
        for (name, set) in [
            ("ca_file", a.ca_file.is_some()),
            ("cert_file", a.cert_file.is_some()),
            ("key_file", a.key_file.is_some()),
        ] {
            if set {
                c.push(
                    format!("{k}.{name}"),
                    format!("only used with TLS, but {k}.url is mqtt://; write mqtts://host:8883 or remove it"),
                );
            }
        }
    } else if tls == Some(true) && tls_keys_read {
        if let Err(errors) = crate::tls::client_config(a) {
            for e in errors {
                c.push(e.key().to_string(), e.to_string());
            }
        }
    }
    match &a.username {
        Some(u) if u.is_empty() || u.len() > 65535 => c.push(
            format!("{k}.username"),
            "must be 1 to 65535 characters; remove it to connect without one",
        ),
        Some(_) => {}
        None if a.password_file.is_some() && !c.is_poisoned(&format!("{k}.username")) => c.push(
            format!("{k}.username"),
            "required with password_file: MQTT sends a password only with a user name",
        ),
        None => {}
    }
    if let Some(p) = &a.password_file {
        let key = format!("{k}.password_file");
        if let Err(e) = crate::tls::read_password(&key, p) {
            c.push(key, e.to_string());
        }
    }
    for (name, path) in [
        ("key_file", &a.key_file),
        ("password_file", &a.password_file),
    ] {
        if let Some(warning) = path.as_deref().and_then(crate::tls::exposure) {
            w.push(format!("{k}.{name}"), warning);
        }
    }
}

fn validate(cfg: &Config, at: &Positions, c: &mut Collector, w: &mut Collector) {
    if !valid_site_id(&cfg.site.id) {
        c.push(
            "site.id",
            format!(
                "{:?} must be 1-64 characters of a-z, 0-9 and '-'",
                cfg.site.id
            ),
        );
    }
    if cfg.storage.max_bytes.0 < 256 * 1024 {
        c.push(
            "storage.max_bytes",
            format!(
                "{} is too small; the buffer needs at least 256KiB",
                cfg.storage.max_bytes
            ),
        );
    }
    let up = &cfg.upstream;
    if let Err(e) = check_mqtt_url(&up.url) {
        c.push("upstream.url", e);
    }
    if up.topic_prefix.is_empty()
        || up.topic_prefix.starts_with('/')
        || up.topic_prefix.ends_with('/')
        || up.topic_prefix.contains(['+', '#'])
    {
        c.push(
            "upstream.topic_prefix",
            format!(
                "{:?} must be non-empty, without wildcards or a leading/trailing '/'",
                up.topic_prefix
            ),
        );
    }
    if up.max_inflight == 0 {
        c.push(
            "upstream.max_inflight",
            "0 would never send; use 1 to 65535",
        );
    }
    if up.replay_rate == 0 {
        c.push(
            "upstream.replay_rate",
            "0 would never drain a backlog; use at least 1",
        );
    }
    if let Some(id) = &up.client_id {
        if id.is_empty() || id.len() > 128 {
            c.push("upstream.client_id", "must be 1 to 128 characters");
        }
    }
    if up.keep_alive.0 < Duration::from_secs(5) {
        c.push(
            "upstream.keep_alive",
            format!("{} is below the minimum 5s", up.keep_alive),
        );
    }
    check_access(c, w, &up.access("upstream"));

    let mut station_ids = HashSet::new();
    for (i, s) in cfg.stations.iter().enumerate() {
        let i = Positions::of(&at.stations, i);
        if !valid_name(&s.id) {
            c.push(
                format!("stations[{i}].id"),
                format!(
                    "{:?} must be 1-64 characters of A-Z, a-z, 0-9, '-', '_' or '.'",
                    s.id
                ),
            );
        }
        if !station_ids.insert(s.id.as_str()) {
            c.push(
                format!("stations[{i}].id"),
                format!("{:?} is used twice", s.id),
            );
        }
    }

    let mut source_ids = HashSet::new();
    let mut check_common = |c: &mut Collector,
                            key: &str,
                            id: &str,
                            station: &Option<String>,
                            d: &DecoderConfig,
                            serial: bool| {
        if !valid_name(id) {
            c.push(
                format!("{key}.id"),
                format!("{id:?} must be 1-64 characters of A-Z, a-z, 0-9, '-', '_' or '.'"),
            );
        }
        if !source_ids.insert(id.to_string()) {
            c.push(
                format!("{key}.id"),
                format!("{id:?} is used by another source"),
            );
        }
        if let Some(st) = station {
            if !station_ids.contains(st.as_str()) {
                c.push(
                    format!("{key}.station"),
                    format!("{st:?} is not a station; add [[stations]] id = {st:?}"),
                );
            }
        }
        if !c.is_poisoned(&format!("{key}.decoder")) {
            d.check(c, key, serial);
        }
    };

    for (i, s) in cfg.sources.serial.iter().enumerate() {
        let key = format!("sources.serial[{}]", Positions::of(&at.serial, i));
        check_common(c, &key, &s.id, &s.station, &s.decoder, true);
        if !STANDARD_BAUD.contains(&s.baud) {
            c.push(
                format!("{key}.baud"),
                format!(
                    "{} is not a standard rate (e.g. 9600, 19200, 38400, 115200)",
                    s.baud
                ),
            );
        }
        if !(5..=8).contains(&s.data_bits) {
            c.push(
                format!("{key}.data_bits"),
                format!("{} must be 5, 6, 7 or 8", s.data_bits),
            );
        }
        if !(1..=2).contains(&s.stop_bits) {
            c.push(
                format!("{key}.stop_bits"),
                format!("{} must be 1 or 2", s.stop_bits),
            );
        }
        if s.path.as_os_str().is_empty() {
            c.push(
                format!("{key}.path"),
                "must name a device, e.g. /dev/ttyUSB0",
            );
        }
    }
    let mut client_ids: std::collections::HashMap<(String, String), usize> = Default::default();
    for (i, s) in cfg.sources.mqtt.iter().enumerate() {
        let i = Positions::of(&at.mqtt, i);
        let key = format!("sources.mqtt[{i}]");
        check_common(c, &key, &s.id, &s.station, &s.decoder, false);
        let id = s.effective_client_id(&cfg.site.id);
        if let Some(j) = client_ids.insert((s.url.clone(), id.clone()), i) {
            c.push(
                format!("{key}.client_id"),
                format!("{id:?} is also the client id of sources.mqtt[{j}] on the same broker; the broker would disconnect one for the other (session taken over): give each its own"),
            );
        }
        if let Err(e) = check_mqtt_url(&s.url) {
            c.push(format!("{key}.url"), e);
        }
        check_access(c, w, &s.access(key.clone()));
        if s.receive_maximum == 0 {
            c.push(
                format!("{key}.receive_maximum"),
                "0 would receive nothing; use 1 to 65535",
            );
        }
        if s.topics.is_empty() {
            c.push(format!("{key}.topics"), "list at least one topic filter");
        }
        for (j, t) in s.topics.iter().enumerate() {
            if let Err(e) = check_topic_filter(t) {
                c.push(format!("{key}.topics[{j}]"), e);
            }
        }
    }
    for (i, k) in cfg.control.trusted_keys.iter().enumerate() {
        if !crate::remote::valid_public_key(k.trim()) {
            c.push(
                format!("control.trusted_keys[{i}]"),
                "must be \"ed25519:BASE64\" as written by `edge-agent config keygen`",
            );
        }
    }
}

/// The problems `RuleConfig::build` found ("kind: ..."), under the rule's key.
fn push_rule_problems(c: &mut Collector, rule_key: &str, problems: Vec<String>) {
    for p in problems {
        match p.split_once(": ") {
            Some((k, m)) => c.push(format!("{rule_key}.{k}"), m),
            None => c.push(rule_key, p),
        }
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

#[cfg(test)]
mod tests;
