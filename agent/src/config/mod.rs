//! The configuration file (docs/configuration.md): types, loading and validation.
//!
//! Loading layers the TOML file and `EDGE_AGENT__SECTION__KEY` environment variables (the
//! `config` crate), then reads each section and each source on its own so that one bad key does
//! not hide the others: every problem is collected and reported at once, each naming its key.
//!
//! - `model`: the types, one a section or list entry (`defaults`: their defaults; `units`:
//!   durations and sizes; `decoders`: a source's decoder settings).
//! - `load`: the file, the environment overrides and the reading of each section and entry
//!   (`read`: key by key, so that every problem is found).
//! - `validate`: the checks of what did read, across keys and entries.
//! - `access`: the keys that reach a broker (URL, TLS and credentials) and their checks; the
//!   files they name are read by `crate::tls`, which does not depend on this module.

mod access;
mod decoders;
mod defaults;
mod load;
mod model;
mod read;
mod units;
mod validate;

use std::fmt;

/// Defined beside the TLS code that reads its files (so `tls` needs nothing from here).
pub use crate::tls::BrokerAccess;
pub use access::{
    check_mqtt_url, parse_http_url, parse_mqtt_url, BrokerAddr, HttpAddr, HttpUrlError, UrlError,
};
pub use decoders::DecoderConfig;
pub use load::{from_value, load, load_str, toml_tree};
pub use model::{
    default_socket, Config, Control, FlowControl, Format, MqttSource, OnFull, Parity, Priority,
    RouteConfig, RuleConfig, SerialSource, Site, Sources, Station, Storage, Strings, Upstream,
    When,
};
pub use units::{ByteSize, Span};
pub use validate::{valid_public_key, PUBLIC_KEY_PREFIX};

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

#[cfg(test)]
mod tests;
