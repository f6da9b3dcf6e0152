//! What the agent remembers of pushed configuration, in one small JSON file beside the buffer
//! (`{storage.path}.remote.json`), replaced atomically (write, fsync, rename, fsync the
//! directory): the last known good document, and the last one received with its fate.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::StateError;
use super::SignedDoc;

/// What became of a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    /// Applied; its sources have `control.confirm_timeout` to open.
    Confirming,
    Applied,
    Rejected,
    RolledBack,
}

impl Fate {
    pub fn as_str(self) -> &'static str {
        match self {
            Fate::Confirming => "confirming",
            Fate::Applied => "applied",
            Fate::Rejected => "rejected",
            Fate::RolledBack => "rolled_back",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Last {
    pub doc: SignedDoc,
    pub fate: Fate,
    #[serde(default)]
    pub reason: String,
    /// Starts that found it `Confirming` (a stop or crash during confirmation).
    #[serde(default)]
    pub resumed: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The last document that was applied and whose sources all opened.
    pub good: Option<SignedDoc>,
    /// The last document received (possibly the same as `good`).
    pub last: Option<Last>,
}

impl State {
    /// The version applied (0: none): a new document must be above it.
    pub fn applied_version(&self) -> u64 {
        self.good.as_ref().map_or(0, |d| d.version)
    }
}

/// The state file of the buffer at `storage`.
pub fn path_for(storage: &Path) -> PathBuf {
    let mut name = storage.file_name().unwrap_or_default().to_os_string();
    name.push(".remote.json");
    storage.with_file_name(name)
}

/// Reads the state; a missing file is the empty state.
pub fn load(path: &Path) -> Result<State, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Unreadable {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(source) => Err(StateError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Replaces the state file atomically and durably.
pub fn save(path: &Path, state: &State) -> Result<(), StateError> {
    let bytes = serde_json::to_vec_pretty(state).map_err(StateError::Encode)?;
    crate::state_file::replace(path, &bytes).map_err(|source| StateError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_survives_a_round_trip_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("buffer.redb"));
        assert!(path.ends_with("buffer.redb.remote.json"));
        assert_eq!(load(&path).unwrap(), State::default());
        let doc = SignedDoc {
            version: 3,
            toml: "x".into(),
            key: "ed25519:k".into(),
            signature: "s".into(),
        };
        let state = State {
            good: Some(doc.clone()),
            last: Some(Last {
                doc: SignedDoc { version: 4, ..doc },
                fate: Fate::RolledBack,
                reason: "scanner-b did not open".into(),
                resumed: 0,
            }),
        };
        save(&path, &state).unwrap();
        assert_eq!(load(&path).unwrap(), state);
        assert_eq!(state.applied_version(), 3);
    }
}
