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

impl Upstream {
    /// The MQTT broker of the control channels with an HTTP upstream (`control.broker`):
    /// upstream's TLS and credential keys, at `broker`.
    pub fn control_access(&self, broker: &str) -> BrokerAccess {
        BrokerAccess {
            url: broker.to_string(),
            ..self.access("upstream")
        }
    }
}

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

/// An HTTP endpoint from `https://host[:port][/path][?query]` or `http://…` (loopback only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAddr {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// What the `Host` header carries: the host, and the port when it is not the default.
    pub authority: String,
    /// Path and query, at least `/`.
    pub path: String,
}

/// Why an HTTP upstream URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpUrlError {
    #[error("{url:?} is not an HTTP URL; write https://host/path")]
    Scheme { url: String },
    #[error(
        "{url:?}: credentials do not go in the URL; put the bearer token in upstream.token_file"
    )]
    Credentials { url: String },
    #[error("{url:?}: a fragment (#…) is never sent; remove it")]
    Fragment { url: String },
    #[error("{url:?}: port {port:?} is not a number from 1 to 65535")]
    Port { url: String, port: String },
    #[error("{url:?}: needs a host")]
    NoHost { url: String },
    #[error("{url:?}: http:// would send events unencrypted over the network; use https://, or http:// only to a loopback address (127.0.0.1, ::1, localhost)")]
    Plain { url: String },
}

pub fn parse_http_url(url: &str) -> Result<HttpAddr, HttpUrlError> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(HttpUrlError::Scheme { url: url.into() });
    };
    if rest.contains('#') {
        return Err(HttpUrlError::Fragment { url: url.into() });
    }
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.contains('@') {
        return Err(HttpUrlError::Credentials { url: url.into() });
    }
    let default_port = if tls { 443 } else { 80 };
    let (host, port) =
        split_authority(authority, default_port).map_err(|p| HttpUrlError::Port {
            url: url.into(),
            port: p.into(),
        })?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.is_empty() || port == 0 {
        return Err(HttpUrlError::NoHost { url: url.into() });
    }
    let loopback = bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !tls && !loopback {
        return Err(HttpUrlError::Plain { url: url.into() });
    }
    let path = match path {
        "" => "/".to_string(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_string(),
    };
    Ok(HttpAddr {
        host: bare.to_string(),
        port,
        tls,
        authority: if port == default_port {
            host.to_string()
        } else {
            format!("{host}:{port}")
        },
        path,
    })
}

/// `host[:port]` (an IPv6 address in brackets): the host as written and the port, else
/// `default_port`; the error is the port's text when it is not a number.
fn split_authority(authority: &str, default_port: u16) -> Result<(&str, u16), &str> {
    match authority.rsplit_once(':') {
        // A colon inside brackets is the address's, not a port's.
        Some((h, p)) if !h.starts_with('[') || h.ends_with(']') => {
            p.parse().map(|port| (h, port)).map_err(|_| p)
        }
        _ => Ok((authority, default_port)),
    }
}

/// Whether `url` (any URL a broker or endpoint key takes) uses TLS; None if it is not one.
fn uses_tls(url: &str) -> Option<bool> {
    if let Ok(addr) = parse_mqtt_url(url) {
        return Some(addr.tls);
    }
    parse_http_url(url).map(|addr| addr.tls).ok()
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
    let (host, port) =
        split_authority(rest, if tls { 8883 } else { 1883 }).map_err(|p| UrlError::Port {
            url: url.into(),
            port: p.into(),
        })?;
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

/// `mqtt://` of `mqtt://host`.
fn scheme_of(url: &str) -> &str {
    url.find("://").map_or(url, |i| &url[..i + 3])
}

/// A TLS URL of the same kind as `url`, for a message.
fn tls_example(url: &str) -> &'static str {
    if url.starts_with("http") {
        "https://host/path"
    } else {
        "mqtts://host:8883"
    }
}

/// The TLS and credential keys of one broker: errors in `c`, warnings in `w`.
pub(super) fn check_access(c: &mut Collector, w: &mut Collector, a: &BrokerAccess) {
    let k = &a.key;
    // An invalid URL is reported on its own; the TLS keys are checked once it says which.
    let tls = uses_tls(&a.url);
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
                    format!(
                        "only used with TLS, but {k}.url is {}; write {} or remove it",
                        scheme_of(&a.url),
                        tls_example(&a.url)
                    ),
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
