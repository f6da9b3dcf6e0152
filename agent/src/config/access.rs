//! Broker access: which keys of `[upstream]` and of each `[[sources.mqtt]]` reach a broker
//! (its URL, TLS and credential keys, as a [`BrokerAccess`]), the URL's parsing, and their
//! checks. The files those keys name are read and judged by [`crate::tls::check_files`].

use super::model::{MqttSource, Upstream};
use super::read::Collector;
use super::BrokerAccess;

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

/// Checks an `mqtt://` or `mqtts://` URL; returns the problem, if any.
pub fn check_mqtt_url(url: &str) -> Result<(), String> {
    parse_mqtt_url(url).map(|_| ()).map_err(|e| e.to_string())
}

/// Why a broker URL is not `mqtt://host[:port]` or `mqtts://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{url:?} is not an MQTT URL; write mqtt://host:1883 or mqtts://host:8883")]
    Scheme { url: String },
    #[error("{url:?}: only scheme, host and port are allowed (credentials go in their own keys)")]
    Extra { url: String },
    #[error("{url:?}: port {port:?} is not a number from 1 to 65535")]
    Port { url: String, port: String },
    #[error("{url:?}: needs a host and a port from 1 to 65535")]
    NoHost { url: String },
}

/// A broker address from `mqtt://host[:port]` or `mqtts://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

pub fn parse_mqtt_url(url: &str) -> Result<BrokerAddr, UrlError> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else {
        return Err(UrlError::Scheme { url: url.into() });
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') || rest.contains('@') {
        return Err(UrlError::Extra { url: url.into() });
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            let port: u16 = p.parse().map_err(|_| UrlError::Port {
                url: url.into(),
                port: p.into(),
            })?;
            (h, port)
        }
        _ => (rest, if tls { 8883 } else { 1883 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(UrlError::NoHost { url: url.into() });
    }
    Ok(BrokerAddr {
        host: host.to_string(),
        port,
        tls,
    })
}

/// The TLS and credential keys of one broker: errors in `c`, warnings in `w`.
pub(super) fn check_access(c: &mut Collector, w: &mut Collector, a: &BrokerAccess) {
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
    }
    let files = crate::tls::check_files(a, tls == Some(true) && tls_keys_read);
    for (key, message) in files.tls {
        c.push(key, message);
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
    if let Some((key, message)) = files.password {
        c.push(key, message);
    }
    for (key, warning) in files.warnings {
        w.push(key, warning);
    }
}
