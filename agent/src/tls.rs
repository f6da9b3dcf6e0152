//! TLS and credentials for the MQTT brokers: `[upstream]` and every `[[sources.mqtt]]`.
//!
//! The rustls client configuration is built from the PEM files the configuration names, with
//! the ring provider (no aws-lc, no cmake: it cross-compiles with gcc alone). `check-config`
//! builds exactly what a connection builds, so a file that would fail at connect time fails
//! validation first. The CA is always a file (`ca_file`): gateways carry no dependable system
//! store; a broker with a public certificate takes the system bundle as that file.
//!
//! Secrets (the password, the private key) are read when a connection is set up and reach no
//! message: every error names the key and the file, never its contents, and [`Password`] does
//! not print its value.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};

use crate::config::BrokerAccess;

/// Why the TLS settings or credentials of a broker cannot be used. Each names its key.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("required for mqtts://: the PEM file of the CA that signed the broker's certificate (for a public CA: /etc/ssl/certs/ca-certificates.crt)")]
    MissingCa { key: String },
    #[error(
        "required with {other}: give both the client certificate and its private key, or neither"
    )]
    MissingPair { key: String, other: String },
    #[error("{}: {}", .path.display(), read_hint(.source))]
    Read {
        key: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{}: holds no PEM certificate (-----BEGIN CERTIFICATE-----); convert a DER file with `openssl x509 -inform der -in FILE -out FILE.pem`", .path.display())]
    NoCertificate { key: String, path: PathBuf },
    #[error("{}: is not a valid PEM certificate file ({detail}); replace it with the PEM file you were given", .path.display())]
    BadCertificate {
        key: String,
        path: PathBuf,
        detail: String,
    },
    #[error("{}: none of its {count} certificate(s) can be used as a CA (not a parsable X.509 certificate); replace it with the CA's PEM file", .path.display())]
    UnusableCa {
        key: String,
        path: PathBuf,
        count: usize,
    },
    #[error("{}: {}", .path.display(), key_fault(*.empty))]
    BadKey {
        key: String,
        path: PathBuf,
        /// No key section at all (rather than a broken one).
        empty: bool,
    },
    #[error("{}: is not the private key of {}; give the key that belongs to the certificate", .path.display(), .cert.display())]
    KeyMismatch {
        key: String,
        path: PathBuf,
        cert: PathBuf,
    },
    #[error("{}: cannot be used with {}: {source}; check that the key belongs to the certificate", .path.display(), .cert.display())]
    ClientAuth {
        key: String,
        path: PathBuf,
        cert: PathBuf,
        source: Box<rustls::Error>,
    },
    #[error("{}: the first line is empty; write the password on the first line", .path.display())]
    EmptyPassword { key: String, path: PathBuf },
    #[error("the TLS library refused its own defaults: {0}")]
    Provider(Box<rustls::Error>, String),
}

impl SetupError {
    /// The configuration key this is about, e.g. `upstream.ca_file`.
    pub fn key(&self) -> &str {
        match self {
            SetupError::MissingCa { key }
            | SetupError::MissingPair { key, .. }
            | SetupError::Read { key, .. }
            | SetupError::NoCertificate { key, .. }
            | SetupError::BadCertificate { key, .. }
            | SetupError::UnusableCa { key, .. }
            | SetupError::BadKey { key, .. }
            | SetupError::KeyMismatch { key, .. }
            | SetupError::ClientAuth { key, .. }
            | SetupError::EmptyPassword { key, .. }
            | SetupError::Provider(_, key) => key,
        }
    }
}

fn read_hint(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "does not exist; check the path".into(),
        io::ErrorKind::PermissionDenied => {
            "cannot be read by the agent's user (permission denied); chown it to that user and chmod 600 it".into()
        }
        io::ErrorKind::InvalidData => "is not UTF-8 text; write the password as text".into(),
        _ => format!("cannot be read ({e}); check that it is a regular file"),
    }
}

fn key_fault(empty: bool) -> &'static str {
    if empty {
        "holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)"
    } else {
        "is not a valid PEM private key (broken base64 or a missing END line); replace it with the key that belongs to cert_file"
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, SetupError> {
    std::fs::read(path).map_err(|source| SetupError::Read {
        key: key.to_string(),
        path: path.to_path_buf(),
        source,
    })
}

fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, SetupError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SetupError::BadCertificate {
            key: key.to_string(),
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(SetupError::NoCertificate {
            key: key.to_string(),
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn roots(key: &str, path: &Path) -> Result<RootCertStore, SetupError> {
    let certs = certificates(key, path)?;
    let count = certs.len();
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(SetupError::UnusableCa {
            key: key.to_string(),
            path: path.to_path_buf(),
            count,
        });
    }
    Ok(store)
}

fn private_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, SetupError> {
    let pem = read(key, path)?;
    // The parser's own message may quote the file; say only what kind of fault it is.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| SetupError::BadKey {
        key: key.to_string(),
        path: path.to_path_buf(),
        empty: matches!(e, rustls::pki_types::pem::Error::NoItemsFound),
    })
}

/// The rustls client configuration for a `mqtts://` broker, or every problem with its files.
pub fn client_config(a: &BrokerAccess) -> Result<ClientConfig, Vec<SetupError>> {
    let k = |name: &str| format!("{}.{name}", a.key);
    let mut errors = Vec::new();
    let roots = match &a.ca_file {
        None => {
            errors.push(SetupError::MissingCa { key: k("ca_file") });
            None
        }
        Some(path) => roots(&k("ca_file"), path).map_err(|e| errors.push(e)).ok(),
    };
    let identity = match (&a.cert_file, &a.key_file) {
        (None, None) => None,
        (Some(_), None) => {
            errors.push(SetupError::MissingPair {
                key: k("key_file"),
                other: k("cert_file"),
            });
            None
        }
        (None, Some(_)) => {
            errors.push(SetupError::MissingPair {
                key: k("cert_file"),
                other: k("key_file"),
            });
            None
        }
        (Some(cert), Some(key)) => {
            let chain = certificates(&k("cert_file"), cert).map_err(|e| errors.push(e));
            let der = private_key(&k("key_file"), key).map_err(|e| errors.push(e));
            match (chain, der) {
                (Ok(chain), Ok(der)) => Some((chain, der, cert, key)),
                _ => None,
            }
        }
    };
    let Some(roots) = roots else {
        return Err(errors);
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| vec![SetupError::Provider(Box::new(e), a.key.clone())])?
            .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((chain, der, cert, key)) => {
            builder.with_client_auth_cert(chain, der).map_err(|source| {
                let (key, path, cert) = (k("key_file"), key.clone(), cert.clone());
                vec![match source {
                    rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                        SetupError::KeyMismatch { key, path, cert }
                    }
                    source => SetupError::ClientAuth {
                        key,
                        path,
                        cert,
                        source: Box::new(source),
                    },
                }]
            })
        }
    }
}

/// An MQTT password. Its `Debug` does not show it, and it has no `Display`.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// The password itself, to hand to the MQTT client and nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Reads the first line of `password_file` (its line ending trimmed).
pub fn read_password(key: &str, path: &Path) -> Result<Password, SetupError> {
    let text = std::fs::read_to_string(path).map_err(|source| SetupError::Read {
        key: key.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    match text.lines().next() {
        Some(line) if !line.is_empty() => Ok(Password(line.to_string())),
        _ => Err(SetupError::EmptyPassword {
            key: key.to_string(),
            path: path.to_path_buf(),
        }),
    }
}

/// A warning if a secret file is readable by anyone but its owner.
pub fn exposure(path: &Path) -> Option<String> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    let who = if mode & 0o004 != 0 {
        "others"
    } else if mode & 0o040 != 0 {
        "its group"
    } else {
        return None;
    };
    Some(format!(
        "{} is readable by {who} (mode {mode:04o}); chmod 600 it",
        path.display()
    ))
}

/// What an MQTT client needs besides host and port, read fresh for one connection.
#[derive(Debug)]
pub struct Access {
    /// TLS for `mqtts://`; None: plain TCP.
    pub tls: Option<ClientConfig>,
    pub username: Option<String>,
    pub password: Option<Password>,
}

impl Access {
    /// Reads the files `a` names; the error names each key and file at fault.
    pub fn prepare(a: &BrokerAccess, tls: bool) -> Result<Access, String> {
        let mut errors = Vec::new();
        let config = if tls {
            client_config(a).map_err(|e| errors.extend(e)).ok()
        } else {
            None
        };
        let password = match &a.password_file {
            Some(p) => read_password(&format!("{}.password_file", a.key), p)
                .map_err(|e| errors.push(e))
                .ok(),
            None => None,
        };
        if !errors.is_empty() {
            let all: Vec<String> = errors.iter().map(|e| format!("{}: {e}", e.key())).collect();
            return Err(all.join("; "));
        }
        Ok(Access {
            tls: config,
            username: a.username.clone(),
            password,
        })
    }

    /// The transport for rumqttc (v4 and v5 share it), if TLS.
    pub fn transport(&mut self) -> Option<rumqttc::Transport> {
        self.tls.take().map(|c| {
            rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::new(c)))
        })
    }

    /// User name and password for `set_credentials` (an empty password is not sent).
    pub fn credentials(&self) -> Option<(String, String)> {
        self.username.as_ref().map(|u| {
            (
                u.clone(),
                self.password
                    .as_ref()
                    .map(|p| p.expose().to_string())
                    .unwrap_or_default(),
            )
        })
    }
}

/// The TLS library's error somewhere in `e`'s chain (rumqttc wraps it in I/O errors).
fn find_rustls<'a>(mut e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    loop {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            e = inner;
            continue;
        }
        e = e.source()?;
    }
}

/// A person's reading of a connection failure that happened in TLS, naming the key to check;
/// None if TLS was not the cause. `key` is `upstream` or `sources.mqtt[N]`.
pub fn explain(e: &(dyn StdError + 'static), key: &str) -> Option<String> {
    let r = find_rustls(e)?;
    let hint = match r {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("the broker's certificate does not name the host in {key}.url; connect by a name it carries or reissue it")
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => {
                "check the broker's certificate dates and this gateway's clock".to_string()
            }
            _ => format!("check {key}.ca_file"),
        },
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => format!(
            "the broker requires a client certificate; set {key}.cert_file and {key}.key_file"
        ),
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::AccessDenied,
        ) => format!(
            "the broker did not accept the client certificate; check {key}.cert_file and {key}.key_file"
        ),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            format!("the broker did not answer in TLS; is the port in {key}.url a TLS listener?")
        }
        _ => format!("check {key}.ca_file, {key}.cert_file and the broker's TLS settings"),
    };
    Some(format!("TLS: {r}; {hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_never_shows_in_debug_output() {
        let p = Password("hunter2".into());
        assert!(!format!("{p:?}").contains("hunter2"));
        let a = Access {
            tls: None,
            username: Some("u".into()),
            password: Some(p),
        };
        assert!(!format!("{a:?}").contains("hunter2"));
    }

    #[test]
    fn the_password_is_the_first_line_without_its_line_ending() -> Result<(), SetupError> {
        let dir = tempfile::tempdir().map_err(|source| SetupError::Read {
            key: String::new(),
            path: PathBuf::new(),
            source,
        })?;
        let path = dir.path().join("pw");
        for (text, want) in [
            ("s3cret\n", Some("s3cret")),
            ("s3cret\r\nsecond line\n", Some("s3cret")),
            ("s3cret", Some("s3cret")),
            (" spaced \n", Some(" spaced ")),
            ("\nlater\n", None),
            ("", None),
        ] {
            std::fs::write(&path, text).map_err(|source| SetupError::Read {
                key: String::new(),
                path: path.clone(),
                source,
            })?;
            let got = read_password("k", &path).ok();
            assert_eq!(got.as_ref().map(|p| p.expose()), want, "{text:?}");
        }
        Ok(())
    }

    #[test]
    fn a_tls_failure_deep_in_io_errors_is_explained_with_its_key() {
        let inner = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let io = io::Error::new(io::ErrorKind::InvalidData, inner);
        let outer = rumqttc::ConnectionError::Io(io);
        assert_eq!(
            explain(&outer, "upstream").as_deref(),
            Some("TLS: invalid peer certificate: UnknownIssuer; check upstream.ca_file")
        );
        let plain = rumqttc::ConnectionError::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(explain(&plain, "upstream"), None);
    }
}
