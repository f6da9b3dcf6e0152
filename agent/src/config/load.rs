//! Loading: the file, the `EDGE_AGENT__SECTION__KEY` environment overrides (the `config`
//! crate), and the reading of each section and list entry on its own (see `read`), then
//! `validate` on everything that did read.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::decoders;
use super::model::{
    Config, Control, MqttSource, RouteConfig, SerialSource, Site, Sources, Station, Storage,
    Upstream,
};
use super::read::Collector;
use super::validate::validate;
use super::{DecoderConfig, Problem, Problems};

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
const SECTIONS: [&str; 7] = [
    "site", "storage", "upstream", "stations", "sources", "routes", "control",
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

    let site: Option<Site> = required(
        &mut c,
        "site",
        take("site"),
        ("site.id", "set [site] id = \"dc-xxx-01\""),
    );
    let storage: Option<Storage> = match take("storage") {
        Some(v) => c.read("storage", v, "[storage]"),
        None => Some(Storage::default()),
    };
    let upstream: Option<Upstream> = required(
        &mut c,
        "upstream",
        take("upstream"),
        ("upstream.url", "set [upstream] url = \"mqtt://host:1883\""),
    );
    let control: Option<Control> = match take("control") {
        Some(v) => c.read("control", v, "[control]"),
        None => Some(Control::default()),
    };
    let stations = read_list::<Station>(&mut c, "stations", take("stations"));
    let routes = read_list::<RouteConfig>(&mut c, "routes", take("routes"));
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
        routes: routes.at,
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
        routes: routes.items,
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
        let lists = ["stations", "sources.serial", "sources.mqtt", "routes"];
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
            "routes" => 13,
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
pub(super) struct Positions {
    pub(super) stations: Vec<usize>,
    pub(super) serial: Vec<usize>,
    pub(super) mqtt: Vec<usize>,
    pub(super) routes: Vec<usize>,
}

impl Positions {
    pub(super) fn of(list: &[usize], i: usize) -> usize {
        list.get(i).copied().unwrap_or(i)
    }
}

/// A section the file must have: read as it is, or, when missing, reported under its required
/// key (`hint` says what to write) and read empty, so that its other keys take their defaults
/// and the rest of the file is still checked.
fn required<T: DeserializeOwned>(
    c: &mut Collector,
    name: &str,
    value: Option<Value>,
    (key, hint): (&str, &str),
) -> Option<T> {
    let table = format!("[{name}]");
    match value {
        Some(v) => c.read(name, v, &table),
        None => {
            c.push(key, format!("required key is missing; {hint}"));
            c.poison(name);
            c.read(name, Value::Object(Map::new()), &table)
        }
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
