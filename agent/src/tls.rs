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
//!
//! A broker's keys come as a [`BrokerAccess`] (paths, never secrets), defined here: `config`
//! builds it from its sections and validates with [`check_files`]; this module depends on
//! nothing of `config`.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::{CertifiedKey, SigningKey, SingleCertAndKey};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};

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
    #[error("{}: {what}, which the agent cannot sign with; use an RSA key of 2048 to 4096 bits, an ECDSA key on P-256 or P-384, or an Ed25519 key", .path.display())]
    UnsupportedKey {
        key: String,
        path: PathBuf,
        /// What the key is, e.g. "is an RSA key of 1024 bits"; never its contents.
        what: String,
    },
    #[error("{}: its first certificate is not an X.509 certificate (its DER does not parse); put the client certificate first, in PEM", .path.display())]
    UnparsableCertificate { key: String, path: PathBuf },
    #[error("{}: certificate {index} of {count} is the one of {}; put the client certificate first, then the CA certificates that issued it", .path.display(), .key_path.display())]
    CertificateOrder {
        key: String,
        path: PathBuf,
        key_path: PathBuf,
        /// 1-based.
        index: usize,
        count: usize,
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
            | SetupError::UnsupportedKey { key, .. }
            | SetupError::UnparsableCertificate { key, .. }
            | SetupError::CertificateOrder { key, .. }
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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let identity = match identity {
        None => None,
        Some((chain, der, cert, key)) => {
            Some(certified_key(&provider, &a.key, chain, der, cert, key).map_err(|e| vec![e])?)
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| vec![SetupError::Provider(Box::new(e), a.key.clone())])?
        .with_root_certificates(roots);
    Ok(match identity {
        None => builder.with_no_client_auth(),
        Some(certified) => {
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)))
        }
    })
}

/// The client certificate chain with its key, once the key is known to be the certificate's.
///
/// Not `with_client_auth_cert`: rustls checks the pair by parsing the certificate with webpki,
/// which takes X.509 version 3 only, and `openssl x509 -req` without an extension file (as
/// mosquitto's TLS manual makes client certificates) gives version 1. The agent only presents
/// its certificate (the broker verifies it), so any version will do: the key is matched by its
/// public key against the certificate's SubjectPublicKeyInfo, found by a DER walk that does
/// not care about the version.
fn certified_key(
    provider: &CryptoProvider,
    access_key: &str,
    chain: Vec<CertificateDer<'static>>,
    der: PrivateKeyDer<'static>,
    cert: &Path,
    key: &Path,
) -> Result<CertifiedKey, SetupError> {
    let k = |name: &str| format!("{access_key}.{name}");
    let what = key_description(&der);
    let signer =
        provider
            .key_provider
            .load_private_key(der)
            .map_err(|_| SetupError::UnsupportedKey {
                key: k("key_file"),
                path: key.to_path_buf(),
                what,
            })?;
    let Some(first) = chain.first() else {
        return Err(SetupError::NoCertificate {
            key: k("cert_file"),
            path: cert.to_path_buf(),
        });
    };
    let Some(cert_key) = der::certificate_public_key(first) else {
        return Err(SetupError::UnparsableCertificate {
            key: k("cert_file"),
            path: cert.to_path_buf(),
        });
    };
    // A provider that cannot tell its public key cannot be checked (rustls accepts it too).
    if let Some(own) = public_key(signer.as_ref()) {
        if own != cert_key {
            let later = chain
                .iter()
                .skip(1)
                .position(|c| der::certificate_public_key(c).is_some_and(|other| other == own));
            return Err(match later {
                Some(i) => SetupError::CertificateOrder {
                    key: k("cert_file"),
                    path: cert.to_path_buf(),
                    key_path: key.to_path_buf(),
                    index: i + 2,
                    count: chain.len(),
                },
                None => SetupError::KeyMismatch {
                    key: k("key_file"),
                    path: key.to_path_buf(),
                    cert: cert.to_path_buf(),
                },
            });
        }
    }
    Ok(CertifiedKey::new(chain, signer))
}

/// The algorithm and public key bits of a signing key, as in a SubjectPublicKeyInfo.
fn public_key(signer: &dyn SigningKey) -> Option<der::PublicKey> {
    let spki = signer.public_key()?;
    der::spki(spki.as_ref())
}

/// What a private key is, for a message about why it cannot be used ("is an RSA key of 1024
/// bits"); it says nothing of the key's secret parts.
fn key_description(der: &PrivateKeyDer<'_>) -> String {
    let rsa = |rsa_key: &[u8], refusal: Option<ring::error::KeyRejected>| match (
        der::rsa_modulus_bits(rsa_key),
        refusal,
    ) {
        (Some(bits), _) if !(2048..=4096).contains(&bits) => {
            format!("is an RSA key of {bits} bits")
        }
        (Some(bits), Some(why)) => {
            format!("is an RSA key of {bits} bits that the TLS library refuses ({why})")
        }
        (_, Some(why)) => format!("is an RSA key that the TLS library refuses ({why})"),
        (_, None) => "is an RSA key that the TLS library refuses".to_string(),
    };
    let unreadable =
        || "is not a private key the TLS library can read (its DER does not parse)".to_string();
    let ecdsa = |curve: &[u8]| match der::curve_name(curve) {
        (name, true) => format!("is an ECDSA key on {name} that the TLS library refuses"),
        (name, false) => format!("is an ECDSA key on {name}"),
    };
    match der {
        PrivateKeyDer::Pkcs1(k) => {
            let der = k.secret_pkcs1_der();
            rsa(der, ring::signature::RsaKeyPair::from_der(der).err())
        }
        PrivateKeyDer::Sec1(k) => match der::sec1_curve(k.secret_sec1_der()) {
            Some(curve) => ecdsa(curve),
            None => unreadable(),
        },
        PrivateKeyDer::Pkcs8(k) => {
            let der = k.secret_pkcs8_der();
            match der::pkcs8(der) {
                Some(der::Pkcs8 {
                    algorithm: der::RSA_ENCRYPTION,
                    key: Some(inner),
                    ..
                }) => rsa(inner, ring::signature::RsaKeyPair::from_pkcs8(der).err()),
                Some(der::Pkcs8 {
                    algorithm: der::EC_PUBLIC_KEY,
                    curve: Some(curve),
                    ..
                }) => ecdsa(curve),
                Some(der::Pkcs8 {
                    algorithm: der::ED25519,
                    ..
                }) => "is an Ed25519 key that the TLS library refuses".to_string(),
                Some(der::Pkcs8 { algorithm, .. }) => match der::algorithm_name(algorithm) {
                    Some(name) => format!("is {name} key"),
                    None => "is a key of an algorithm the agent does not know".to_string(),
                },
                None => unreadable(),
            }
        }
        _ => "is a private key of a kind the agent does not know".to_string(),
    }
}

/// Just enough DER to find a certificate's public key (in any X.509 version) and to say what
/// a private key is. Lengths are read leniently: this only compares and describes.
mod der {
    const SEQUENCE: u8 = 0x30;
    const INTEGER: u8 = 0x02;
    const BIT_STRING: u8 = 0x03;
    const OCTET_STRING: u8 = 0x04;
    const OID: u8 = 0x06;
    /// `[0] EXPLICIT`: a certificate's version, an EC key's curve.
    const CONTEXT_0: u8 = 0xa0;

    /// 1.2.840.113549.1.1.1
    pub(super) const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 1, 1];
    /// 1.2.840.10045.2.1
    pub(super) const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 2, 1];
    /// 1.3.101.112
    pub(super) const ED25519: &[u8] = &[0x2b, 0x65, 0x70];

    /// A public key as a SubjectPublicKeyInfo has it: the algorithm's OID and the key's bits.
    /// The algorithm's parameters are left out: RSA's NULL may be missing, and the bits
    /// alone tell one key from another.
    #[derive(Debug, PartialEq, Eq)]
    pub(super) struct PublicKey {
        algorithm: Vec<u8>,
        bits: Vec<u8>,
    }

    /// The tag, the contents and what follows of the first TLV in `input`.
    fn next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        if tag & 0x1f == 0x1f {
            return None; // multi-byte tags occur in none of these structures
        }
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let (bytes, rest) = rest.split_at(n);
            let len = bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, rest)
        };
        if rest.len() < len {
            return None;
        }
        let (contents, rest) = rest.split_at(len);
        Some((tag, contents, rest))
    }

    /// The contents of the first TLV if it has tag `tag`, and what follows it.
    fn take(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let (t, contents, rest) = next(input)?;
        (t == tag).then_some((contents, rest))
    }

    /// From the contents of a SubjectPublicKeyInfo SEQUENCE.
    fn spki_contents(spki: &[u8]) -> Option<PublicKey> {
        let (algorithm, rest) = take(spki, SEQUENCE)?;
        let (oid, _) = take(algorithm, OID)?;
        let (bits, _) = take(rest, BIT_STRING)?;
        Some(PublicKey {
            algorithm: oid.to_vec(),
            bits: bits.to_vec(),
        })
    }

    /// From a whole SubjectPublicKeyInfo.
    pub(super) fn spki(der: &[u8]) -> Option<PublicKey> {
        spki_contents(take(der, SEQUENCE)?.0)
    }

    /// The subject's public key of an X.509 certificate of any version:
    /// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL (absent in
    /// v1), serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, ... }`.
    pub(super) fn certificate_public_key(der: &[u8]) -> Option<PublicKey> {
        let (certificate, _) = take(der, SEQUENCE)?;
        let (tbs, _) = take(certificate, SEQUENCE)?;
        let mut rest = take(tbs, CONTEXT_0).map_or(tbs, |(_, rest)| rest);
        rest = take(rest, INTEGER)?.1;
        for _ in ["signature", "issuer", "validity", "subject"] {
            rest = take(rest, SEQUENCE)?.1;
        }
        spki_contents(take(rest, SEQUENCE)?.0)
    }

    /// The modulus size of an RSAPrivateKey (PKCS#1): `SEQUENCE { version, modulus, ... }`.
    pub(super) fn rsa_modulus_bits(der: &[u8]) -> Option<usize> {
        let (key, _) = take(der, SEQUENCE)?;
        let rest = take(key, INTEGER)?.1;
        let (modulus, _) = take(rest, INTEGER)?;
        let start = modulus.iter().position(|&b| b != 0)?;
        let top = modulus[start];
        Some((modulus.len() - start - 1) * 8 + (8 - top.leading_zeros() as usize))
    }

    /// What a PKCS#8 PrivateKeyInfo says of its key.
    pub(super) struct Pkcs8<'a> {
        pub(super) algorithm: &'a [u8],
        /// The OID in the algorithm's parameters: an EC key's curve.
        pub(super) curve: Option<&'a [u8]>,
        /// The inner private key, e.g. an RSAPrivateKey.
        pub(super) key: Option<&'a [u8]>,
    }

    /// `PrivateKeyInfo ::= SEQUENCE { version, AlgorithmIdentifier, privateKey OCTET STRING,
    /// ... }`.
    pub(super) fn pkcs8(der: &[u8]) -> Option<Pkcs8<'_>> {
        let (info, _) = take(der, SEQUENCE)?;
        let rest = take(info, INTEGER)?.1;
        let (algorithm, rest) = take(rest, SEQUENCE)?;
        let (oid, params) = take(algorithm, OID)?;
        Some(Pkcs8 {
            algorithm: oid,
            curve: take(params, OID).map(|(p, _)| p),
            key: take(rest, OCTET_STRING).map(|(k, _)| k),
        })
    }

    /// The curve OID of a SEC1 ECPrivateKey: `SEQUENCE { version, privateKey, [0] curve, ... }`.
    pub(super) fn sec1_curve(der: &[u8]) -> Option<&[u8]> {
        let (key, _) = take(der, SEQUENCE)?;
        let rest = take(key, INTEGER)?.1;
        let rest = take(rest, OCTET_STRING)?.1;
        let (params, _) = take(rest, CONTEXT_0)?;
        take(params, OID).map(|(oid, _)| oid)
    }

    /// The curve's name, and whether the agent signs with keys on it.
    pub(super) fn curve_name(oid: &[u8]) -> (&'static str, bool) {
        match oid {
            [0x2a, 0x86, 0x48, 0xce, 0x3d, 3, 1, 7] => ("P-256 (prime256v1)", true),
            [0x2b, 0x81, 0x04, 0x00, 0x22] => ("P-384 (secp384r1)", true),
            [0x2b, 0x81, 0x04, 0x00, 0x23] => ("P-521 (secp521r1)", false),
            [0x2b, 0x81, 0x04, 0x00, 0x0a] => ("secp256k1", false),
            _ => ("a curve other than P-256 and P-384", false),
        }
    }

    /// "an Ed448" and the like, for PKCS#8 algorithms other than RSA, EC and Ed25519.
    pub(super) fn algorithm_name(oid: &[u8]) -> Option<&'static str> {
        Some(match oid {
            [0x2b, 0x65, 0x71] => "an Ed448",
            [0x2b, 0x65, 0x6e] => "an X25519 (key agreement only)",
            [0x2b, 0x65, 0x6f] => "an X448 (key agreement only)",
            [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 1, 10] => "an RSA-PSS",
            [0x2a, 0x86, 0x48, 0xce, 0x38, 4, 1] => "a DSA",
            _ => return None,
        })
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

/// What [`check_files`] found in the files one broker's keys name, each as (key, message).
#[derive(Debug, Default)]
pub struct FileChecks {
    /// `ca_file`, `cert_file`, `key_file`: missing, unreadable, not PEM, not a pair, ...
    pub tls: Vec<(String, String)>,
    /// `password_file`: unreadable, or its first line empty.
    pub password: Option<(String, String)>,
    /// A key or password file readable by others than its owner.
    pub warnings: Vec<(String, String)>,
}

/// Reads and parses every file `a` names, as a connection would: the TLS files only if `tls`
/// (a `mqtts://` URL whose TLS keys all read), the password file if set; and warns about a
/// `key_file` or `password_file` that others can read.
pub fn check_files(a: &BrokerAccess, tls: bool) -> FileChecks {
    let mut checks = FileChecks::default();
    if tls {
        if let Err(errors) = client_config(a) {
            checks.tls = errors
                .iter()
                .map(|e| (e.key().to_string(), e.to_string()))
                .collect();
        }
    }
    if let Some(p) = &a.password_file {
        let key = format!("{}.password_file", a.key);
        if let Err(e) = read_password(&key, p) {
            checks.password = Some((key, e.to_string()));
        }
    }
    for (name, path) in [
        ("key_file", &a.key_file),
        ("password_file", &a.password_file),
    ] {
        if let Some(warning) = path.as_deref().and_then(exposure) {
            checks.warnings.push((format!("{}.{name}", a.key), warning));
        }
    }
    checks
}

/// What an MQTT client needs besides host and port, read fresh for one connection.
#[derive(Debug)]
pub struct Access {
    /// TLS for `mqtts://`; None: plain TCP.
    pub tls: Option<ClientConfig>,
    pub username: Option<String>,
    pub password: Option<Password>,
}

/// Why the TLS files or the password file of a broker cannot be used: every problem, each
/// with its key.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|e| format!("{}: {e}", e.key())).collect::<Vec<_>>().join("; "))]
pub struct AccessError(pub Vec<SetupError>);

impl Access {
    /// Reads the files `a` names; the error names each key and file at fault.
    pub fn prepare(a: &BrokerAccess, tls: bool) -> Result<Access, AccessError> {
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
            return Err(AccessError(errors));
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
    explain_for(e, key, "broker")
}

/// [`explain`] for a server that is not a broker (`peer`: "endpoint").
pub fn explain_for(e: &(dyn StdError + 'static), key: &str, peer: &str) -> Option<String> {
    let r = find_rustls(e)?;
    let hint = match r {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("the {peer}'s certificate does not name the host in {key}.url; connect by a name it carries or reissue it")
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => {
                format!("check the {peer}'s certificate dates and this gateway's clock")
            }
            _ => format!("check {key}.ca_file"),
        },
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => format!(
            "the {peer} requires a client certificate; set {key}.cert_file and {key}.key_file"
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
            "the {peer} did not accept the client certificate; check {key}.cert_file and {key}.key_file"
        ),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            format!("the {peer} did not answer in TLS; is the port in {key}.url a TLS listener?")
        }
        _ => format!("check {key}.ca_file, {key}.cert_file and the {peer}'s TLS settings"),
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

    /// A v1 certificate's TBS has no `[0]` version; a v3 one has. Both give the same key.
    #[test]
    fn the_public_key_is_found_in_certificates_of_either_version() {
        let spki = [
            0x30, 0x0b, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x02, 0x00, 0x07,
        ];
        let tbs = |version: &[u8]| {
            let mut body = version.to_vec();
            body.extend_from_slice(&[0x02, 0x01, 0x01]); // serialNumber
            for _ in 0..4 {
                body.extend_from_slice(&[0x30, 0x00]); // signature, issuer, validity, subject
            }
            body.extend_from_slice(&spki);
            let mut tbs = vec![0x30, body.len() as u8];
            tbs.extend(body);
            let mut cert = vec![0x30, tbs.len() as u8];
            cert.extend(tbs);
            cert
        };
        let v1 = der::certificate_public_key(&tbs(&[]));
        let v3 = der::certificate_public_key(&tbs(&[0xa0, 0x03, 0x02, 0x01, 0x02]));
        assert!(v1.is_some());
        assert_eq!(v1, v3);
        assert_eq!(v1, der::spki(&spki));
        let whole = tbs(&[]);
        for end in 0..whole.len() {
            assert_eq!(der::certificate_public_key(&whole[..end]), None, "{end}");
        }
    }

    proptest::proptest! {
        #[test]
        fn walking_any_bytes_as_der_does_not_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = der::certificate_public_key(&bytes);
            let _ = der::spki(&bytes);
            let _ = der::rsa_modulus_bits(&bytes);
            let _ = der::pkcs8(&bytes);
            let _ = der::sec1_curve(&bytes);
        }
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
