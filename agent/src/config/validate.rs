//! Validation: the checks of a configuration that did read, within and across sections and
//! entries (ids, stations, serial settings, topic filters, trusted keys); the keys that reach
//! a broker are checked by `access`.

use std::collections::HashSet;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::access::{check_access, check_mqtt_url, parse_http_url};
use super::load::Positions;
use super::model::Config;
use super::read::Collector;
use super::DecoderConfig;

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

pub(super) fn validate(cfg: &Config, at: &Positions, c: &mut Collector, w: &mut Collector) {
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
    if up.is_http() {
        check_http_upstream(cfg, c, w);
    } else {
        if let Err(e) = check_mqtt_url(&up.url) {
            c.push("upstream.url", e);
        }
        for (key, set) in [
            ("upstream.token_file", up.token_file.is_some()),
            ("control.broker", cfg.control.broker.is_some()),
        ] {
            if set {
                c.push(
                    key,
                    format!(
                        "only used with an HTTP upstream, but upstream.url is {}; remove it",
                        up.url
                    ),
                );
            }
        }
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
    if up.batch == Some(0) {
        c.push(
            "upstream.batch",
            "0 would never send; use 1 (each event alone) up to 65535",
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
        if !valid_public_key(k.trim()) {
            c.push(
                format!("control.trusted_keys[{i}]"),
                "must be \"ed25519:BASE64\" as written by `edge-agent config keygen`",
            );
        }
    }
    check_http(cfg, c, w);
    for (i, key, message) in crate::upstream::routes::compile(cfg).1 {
        c.push(
            format!("routes[{}].{key}", Positions::of(&at.routes, i)),
            message,
        );
    }
}

/// An HTTP upstream: its URL, its format, its token, and the control broker if any.
fn check_http_upstream(cfg: &Config, c: &mut Collector, w: &mut Collector) {
    let up = &cfg.upstream;
    if let Err(e) = parse_http_url(&up.url) {
        c.push("upstream.url", e.to_string());
    }
    if up.format_key == Some(super::Format::Cbor) {
        c.push(
            "upstream.format",
            "cbor is for MQTT; an HTTP upstream sends a JSON array: use json (the default) or cloudevents",
        );
    }
    if let Some(path) = &up.token_file {
        if let Err(e) = crate::tls::read_password("upstream.token_file", path) {
            c.push("upstream.token_file", e.to_string());
        } else if let Some(warning) = crate::tls::exposure(path) {
            w.push("upstream.token_file", warning);
        }
    }
    match &cfg.control.broker {
        Some(broker) => {
            if let Err(e) = check_mqtt_url(broker) {
                c.push("control.broker", e);
            }
        }
        None => {
            for (key, set) in [
                ("upstream.username", up.username.is_some()),
                ("upstream.password_file", up.password_file.is_some()),
            ] {
                if set {
                    c.push(
                        key,
                        "only used for the MQTT control broker, and control.broker is not set; use upstream.token_file for the HTTP endpoint, or set control.broker",
                    );
                }
            }
        }
    }
}

/// `control.http` and its token: an address that parses, a token file that reads, and no
/// address beyond loopback without a token.
fn check_http(cfg: &Config, c: &mut Collector, w: &mut Collector) {
    let ctl = &cfg.control;
    let token = ctl.http_token_file.as_deref();
    if let Some(path) = token {
        if let Err(e) = crate::tls::read_password("control.http_token_file", path) {
            c.push("control.http_token_file", e.to_string());
        } else if let Some(warning) = crate::tls::exposure(path) {
            w.push("control.http_token_file", warning);
        }
    }
    match ctl.http_addr() {
        None => {}
        Some(Err(_)) => c.push(
            "control.http",
            format!(
                "{:?} is not an address; write IP:PORT, e.g. \"127.0.0.1:9180\" or \"[::1]:9180\", or \"\" to turn the HTTP server off",
                ctl.http
            ),
        ),
        Some(Ok(addr)) if !addr.ip().is_loopback() && token.is_none() => c.push(
            "control.http",
            format!(
                "{addr} is not a loopback address, so anyone on the network could read it: set control.http_token_file to a file whose first line is a bearer token (chmod 600 it), or listen on 127.0.0.1"
            ),
        ),
        Some(Ok(_)) => {}
    }
    if ctl.health_grace.0.is_zero() {
        c.push(
            "control.health_grace",
            "0s would call every reconnection unhealthy; use at least \"1s\" (default \"5m\")",
        );
    }
}

/// How a public key of `control.trusted_keys` begins (`edge-agent config keygen` writes it).
pub const PUBLIC_KEY_PREFIX: &str = "ed25519:";

/// Whether `key` is written as `ed25519:BASE64` of 32 bytes.
pub fn valid_public_key(key: &str) -> bool {
    key.strip_prefix(PUBLIC_KEY_PREFIX)
        .and_then(|b| B64.decode(b).ok())
        .is_some_and(|k| k.len() == 32)
}
