//! The topic filters each MQTT source last subscribed to, remembered beside the buffer
//! (`{storage.path}.subscriptions.json`). A broker keeps a persistent session's subscriptions
//! for as long as the session lives, and MQTT has no way to list them: when a source's
//! `topics` change, this is how the agent knows what to UNSUBSCRIBE. Without it, a chatty topic
//! taken out of the configuration would keep filling the session's queue while the agent is
//! away, and a broker with a queue limit would then drop messages on the topics that matter.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Sources share the file: one writer at a time.
static FILE: Mutex<()> = Mutex::new(());

/// The file beside the buffer at `storage`.
pub fn path_for(storage: &Path) -> PathBuf {
    let mut name = storage.file_name().unwrap_or_default().to_os_string();
    name.push(".subscriptions.json");
    storage.with_file_name(name)
}

/// One session: the broker and the client id.
pub fn session_key(url: &str, client_id: &str) -> String {
    format!("{url} {client_id}")
}

fn read(path: &Path) -> BTreeMap<String, Vec<String>> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The filters `session` last subscribed to (none if unknown).
pub fn load(path: &Path, session: &str) -> Vec<String> {
    let _one = FILE.lock().unwrap_or_else(|p| p.into_inner());
    read(path).remove(session).unwrap_or_default()
}

/// Records that `session` is subscribed to `topics` (atomic replace).
pub fn save(path: &Path, session: &str, topics: &[String]) -> std::io::Result<()> {
    let _one = FILE.lock().unwrap_or_else(|p| p.into_inner());
    let mut all = read(path);
    if all.get(session).map(Vec::as_slice) == Some(topics) {
        return Ok(());
    }
    all.insert(session.to_string(), topics.to_vec());
    let bytes = serde_json::to_vec_pretty(&all).map_err(std::io::Error::other)?;
    crate::state_file::replace(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_session_keeps_its_own_filters() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("buffer.redb"));
        let a = session_key("mqtt://site:1883", "edge-agent-x-a");
        let b = session_key("mqtt://site:1883", "edge-agent-x-b");
        assert!(load(&path, &a).is_empty());
        save(&path, &a, &["site/a".into()]).unwrap();
        save(&path, &b, &["site/b/#".into(), "site/c".into()]).unwrap();
        save(&path, &a, &["site/a2".into()]).unwrap();
        assert_eq!(load(&path, &a), ["site/a2"]);
        assert_eq!(load(&path, &b), ["site/b/#", "site/c"]);
    }
}
