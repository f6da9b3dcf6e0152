//! Why a pushed document is refused, one enum per step; each message says what is wrong and
//! what to do, and is what `config/status` publishes as `reason`.

use crate::config::Problems;

/// A document that is not a signed document, or whose signature does not hold.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("not a signed configuration document ({0}); make one with `edge-agent config sign`")]
    NotADocument(serde_json::Error),
    #[error("signed by {key}, which is not in control.trusted_keys")]
    Untrusted { key: String },
    #[error("key {key:?} is not ed25519:BASE64")]
    BadKey { key: String },
    #[error("the signature is not base64")]
    SignatureNotBase64,
    #[error(
        "the signature does not match version {version} and its text (altered after signing?)"
    )]
    SignatureMismatch { version: u64 },
}

/// A document whose content cannot become the site's configuration.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("{0}")]
    NotToml(String),
    #[error("the pushed configuration is not a TOML table")]
    NotATable,
    #[error("the local configuration is not a table")]
    LocalNotATable,
    #[error("upstream must be a table")]
    UpstreamNotATable,
    #[error("sets {}, which stay local to the site (a pushed configuration may set only [[stations]], [[sources.*]], [[routes]] and upstream.replay_rate / max_inflight)", .0.join(", "))]
    LocalKeys(Vec<String>),
    #[error("invalid configuration:\n{0}")]
    Invalid(Problems),
}

/// Why the agent rejected a pushed document.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("the document is {bytes} bytes, above the {limit} bytes a pushed configuration may have; push only the operational sections")]
    TooLarge { bytes: usize, limit: usize },
    #[error(transparent)]
    Document(#[from] DocumentError),
    #[error("version {version} is already applied and stays in effect; to change the configuration, sign it with a higher --version")]
    AlreadyApplied { version: u64 },
    #[error("version {version} is not above {applied}, the version applied; sign it with a higher --version")]
    NotAbove { version: u64, applied: u64 },
    #[error(transparent)]
    Merge(#[from] MergeError),
}

/// The state file beside the buffer could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}; remove it to forget pushed configuration", .path.display())]
    Unreadable {
        path: std::path::PathBuf,
        source: serde_json::Error,
    },
    #[error("encoding the state: {0}")]
    Encode(serde_json::Error),
}
