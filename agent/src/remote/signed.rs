//! Signed configuration documents: ed25519 (ring, the crypto library rustls already brings in)
//! over a fixed layout of the version and the TOML text.
//!
//! The document is JSON: `{"version": N, "toml": "...", "key": "ed25519:BASE64", "signature":
//! "BASE64"}`. The signature covers `edge-agent config\n{version}\n{toml}`, so neither the
//! version nor a byte of the text can change without breaking it.

use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use super::error::DocumentError;

use crate::config::PUBLIC_KEY_PREFIX as KEY_PREFIX;

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// A configuration document as central pushes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedDoc {
    pub version: u64,
    /// The operational sections, as TOML.
    pub toml: String,
    /// The signing public key, `ed25519:BASE64`.
    pub key: String,
    /// The ed25519 signature, base64.
    pub signature: String,
}

/// The bytes a signature covers.
fn message(version: u64, toml: &str) -> Vec<u8> {
    format!("edge-agent config\n{version}\n{toml}").into_bytes()
}

/// Writes a new secret key to `out` (PKCS#8 PEM, mode 0600) and its public key to
/// `out.pub`; returns the public key.
pub fn keygen(out: &Path) -> Result<String, String> {
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| "the system's random number generator failed".to_string())?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|e| format!("the generated key does not load: {e}"))?;
    let public = format!("{KEY_PREFIX}{}", B64.encode(pair.public_key().as_ref()));
    let body = B64.encode(pkcs8.as_ref());
    let mut pem = format!("{PEM_BEGIN}\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(PEM_END);
    pem.push('\n');
    write_new(out, pem.as_bytes(), 0o600)?;
    let pub_path = out.with_file_name(format!(
        "{}.pub",
        out.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    write_new(&pub_path, format!("{public}\n").as_bytes(), 0o644)?;
    Ok(public)
}

/// Creates `path` with `mode`; refuses to overwrite (a key is not replaced by accident).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            format!(
                "{}: {e}; choose a path that does not exist yet",
                path.display()
            )
        })?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Loads a secret key written by [`keygen`].
fn load_key(path: &Path) -> Result<Ed25519KeyPair, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let body: String = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != PEM_BEGIN && *l != PEM_END)
        .collect();
    let der = B64.decode(body).map_err(|_| {
        format!(
            "{}: not a PEM private key; use a key from `edge-agent config keygen`",
            path.display()
        )
    })?;
    Ed25519KeyPair::from_pkcs8(&der).map_err(|e| {
        format!(
            "{}: not an ed25519 PKCS#8 key ({e}); use a key from `edge-agent config keygen`",
            path.display()
        )
    })
}

/// Signs `toml` as `version` with the secret key at `key_path`.
pub fn sign(key_path: &Path, version: u64, toml: &str) -> Result<SignedDoc, String> {
    let pair = load_key(key_path)?;
    let signature = pair.sign(&message(version, toml));
    Ok(SignedDoc {
        version,
        toml: toml.to_string(),
        key: format!("{KEY_PREFIX}{}", B64.encode(pair.public_key().as_ref())),
        signature: B64.encode(signature.as_ref()),
    })
}

impl SignedDoc {
    /// Parses a pushed document.
    pub fn parse(bytes: &[u8]) -> Result<SignedDoc, DocumentError> {
        serde_json::from_slice(bytes).map_err(DocumentError::NotADocument)
    }

    /// Checks that a key in `trusted` signed this document.
    pub fn verify(&self, trusted: &[String]) -> Result<(), DocumentError> {
        if !trusted.iter().any(|k| k.trim() == self.key) {
            return Err(DocumentError::Untrusted {
                key: self.key.clone(),
            });
        }
        let public = self
            .key
            .strip_prefix(KEY_PREFIX)
            .and_then(|b| B64.decode(b).ok())
            .ok_or_else(|| DocumentError::BadKey {
                key: self.key.clone(),
            })?;
        let signature = B64
            .decode(&self.signature)
            .map_err(|_| DocumentError::SignatureNotBase64)?;
        UnparsedPublicKey::new(&ED25519, public)
            .verify(&message(self.version, &self.toml), &signature)
            .map_err(|_| DocumentError::SignatureMismatch {
                version: self.version,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> (tempfile::TempDir, std::path::PathBuf, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("central.key");
        let public = keygen(&path).unwrap();
        (dir, path, public)
    }

    #[test]
    fn keygen_writes_a_private_secret_and_the_public_key_beside_it() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, path, public) = key();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let pub_text = std::fs::read_to_string(path.with_file_name("central.key.pub")).unwrap();
        assert_eq!(pub_text.trim(), public);
        assert!(crate::config::valid_public_key(&public), "{public}");
        assert!(
            keygen(&path).is_err(),
            "an existing key is never overwritten"
        );
    }

    #[test]
    fn a_signed_document_verifies_only_unchanged_and_only_with_a_trusted_key() {
        let (_dir, path, public) = key();
        let doc = sign(&path, 7, "[[stations]]\nid = \"a\"\nrole = \"packing\"\n").unwrap();
        assert_eq!(doc.key, public);
        let trusted = vec![public.clone()];
        doc.verify(&trusted).unwrap();
        let json = serde_json::to_vec(&doc).unwrap();
        assert_eq!(SignedDoc::parse(&json).unwrap(), doc);

        let mut text = doc.clone();
        text.toml.push(' ');
        assert!(matches!(
            text.verify(&trusted),
            Err(DocumentError::SignatureMismatch { version: 7 })
        ));
        let mut version = doc.clone();
        version.version = 8;
        assert!(version.verify(&trusted).is_err());
        let err = doc.verify(&["ed25519:AAAA".into()]).unwrap_err();
        assert!(
            err.to_string().contains("not in control.trusted_keys"),
            "{err}"
        );

        // Another key, claiming to be the trusted one.
        let (_d2, other, _) = key();
        let mut forged = sign(&other, 7, &doc.toml).unwrap();
        forged.key = public;
        assert!(forged.verify(&trusted).is_err());
    }
}
