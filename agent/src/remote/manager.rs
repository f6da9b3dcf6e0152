//! The remote configuration task: takes documents from `{prefix}/{site}/config/set` one at a
//! time, checks them, has the agent switch to the configuration they make, confirms that every
//! source opens, and rolls back to the last known good one otherwise. Each outcome goes to
//! `{prefix}/{site}/config/status` (retained) and to the log.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::state::{self, Fate, Last, State};
use super::{merge, Rejection, SignedDoc};
use crate::config::Config;
use crate::status::{SourceState, StatusBoard};

/// A request to the agent: run these sources from now on; `started` gets the ids of the
/// sources it started (those that are new or changed) once they are starting.
pub struct Switch {
    pub config: Arc<Config>,
    pub started: oneshot::Sender<Vec<String>>,
}

/// How often confirmation looks at the sources.
const CONFIRM_POLL: Duration = Duration::from_millis(100);

pub struct Manager {
    /// The file's configuration: what a document's sections replace, and the trusted keys.
    pub file: Arc<Config>,
    pub state_path: PathBuf,
    pub state: State,
    pub status: Arc<StatusBoard>,
    pub switch: mpsc::Sender<Switch>,
    /// The latest document published to config/set (a newer one replaces one not yet read).
    pub inbox: watch::Receiver<Option<super::Pushed>>,
    pub outbox: mpsc::Sender<Vec<u8>>,
    pub shutdown: CancellationToken,
}

/// What the agent starts with.
pub struct Start {
    /// The file's configuration with the last good pushed document over it, if that still
    /// verifies and validates.
    pub config: Config,
    /// The version of that document (None: the file's configuration as it is).
    pub version: Option<u64>,
    pub state: State,
    /// A document whose confirmation a stop interrupted: confirmed again.
    pub resume: Option<SignedDoc>,
}

pub fn startup(file: &Config, state_path: &std::path::Path) -> Start {
    let state = state::load(state_path).unwrap_or_else(|why| {
        tracing::warn!("pushed configuration state: {why}; starting from the file's configuration");
        State::default()
    });
    let mut config = file.clone();
    let mut version = None;
    if let Some(good) = &state.good {
        let checked = good
            .verify(&file.control.trusted_keys)
            .map_err(Rejection::from)
            .and_then(|()| merge(file, &good.toml).map_err(Rejection::from));
        match checked {
            Ok(c) => {
                tracing::info!("running pushed configuration version {}", good.version);
                config = c;
                version = Some(good.version);
            }
            Err(why) => tracing::warn!(
                "pushed configuration version {} no longer applies ({why}); running the file's configuration",
                good.version
            ),
        }
    }
    let resume = state
        .last
        .as_ref()
        .filter(|l| l.fate == Fate::Confirming)
        .map(|l| l.doc.clone());
    Start {
        config,
        version,
        state,
        resume,
    }
}

enum Confirmed {
    Yes,
    No(String),
    Stopping,
}

impl Manager {
    pub async fn run(mut self, resume: Option<SignedDoc>) {
        if let Some(doc) = resume {
            self.resume(doc).await;
        }
        loop {
            tokio::select! {
                // Cancel-safe: a cancelled token stays cancelled.
                _ = self.shutdown.cancelled() => return,
                // Cancel-safe: watch::Receiver::changed only marks the value seen on return.
                r = self.inbox.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let latest = self.inbox.borrow_and_update().clone();
                    if let Some(pushed) = latest {
                        self.receive(&pushed).await;
                    }
                }
            }
        }
    }

    /// A document whose confirmation a stop interrupted: confirmed once more (checked again
    /// first); interrupted twice, it counts as failed, in case it is what stops the agent.
    async fn resume(&mut self, doc: SignedDoc) {
        let resumed = self.state.last.as_ref().map_or(0, |l| l.resumed);
        if resumed >= 1 {
            let why = format!(
                "the agent stopped twice while confirming it; kept {}",
                self.good_name()
            );
            self.record(doc.clone(), Fate::RolledBack, &why, 0).await;
            return self.report(Some(doc.version), Fate::RolledBack, &why);
        }
        if let Err(why) = doc.verify(&self.file.control.trusted_keys) {
            let why = why.to_string();
            self.record(doc.clone(), Fate::Rejected, &why, 0).await;
            return self.report(Some(doc.version), Fate::Rejected, &why);
        }
        match merge(&self.file, &doc.toml) {
            Ok(config) => self.apply(doc, config, resumed + 1).await,
            Err(why) => self.reject(doc, why.into()).await,
        }
    }

    async fn receive(&mut self, pushed: &super::Pushed) {
        if pushed.bytes.len() > super::MAX_DOCUMENT {
            let why = Rejection::TooLarge {
                bytes: pushed.bytes.len(),
                limit: super::MAX_DOCUMENT,
            };
            return self.report(None, Fate::Rejected, &why.to_string());
        }
        let doc = match SignedDoc::parse(&pushed.bytes) {
            Ok(d) => d,
            Err(why) => return self.report(None, Fate::Rejected, &why.to_string()),
        };
        let seen = self.state.last.as_ref().is_some_and(|l| l.doc == doc)
            || self.state.good.as_ref() == Some(&doc);
        if seen && pushed.retained {
            // The retained copy comes again at every connection: already handled. Said once
            // per connection, so an operator sees the agent read it and left it alone.
            tracing::info!(
                "pushed configuration version {}: retained copy already handled; nothing to do",
                doc.version
            );
            return;
        }
        if seen && self.state.good.as_ref() == Some(&doc) {
            // Published again: it is not above the version applied, so it is rejected, and
            // the version applied stays in effect (nothing is recorded).
            let why = Rejection::AlreadyApplied {
                version: doc.version,
            };
            return self.report(Some(doc.version), Fate::Rejected, &why.to_string());
        }
        if seen {
            tracing::debug!("configuration version {} already handled", doc.version);
            return;
        }
        // Not recorded: an unverified document must not move the version forward.
        if let Err(why) = doc.verify(&self.file.control.trusted_keys) {
            return self.report(Some(doc.version), Fate::Rejected, &why.to_string());
        }
        let applied = self.state.applied_version();
        if doc.version <= applied {
            let why = Rejection::NotAbove {
                version: doc.version,
                applied,
            };
            return self.reject(doc, why).await;
        }
        match merge(&self.file, &doc.toml) {
            Ok(config) => self.apply(doc, config, 0).await,
            Err(why) => self.reject(doc, why.into()).await,
        }
    }

    /// `resumed`: how many starts found it confirming before (0 for a new push).
    async fn apply(&mut self, doc: SignedDoc, config: Config, resumed: u32) {
        let version = doc.version;
        self.record(doc.clone(), Fate::Confirming, "", resumed)
            .await;
        let config = Arc::new(config);
        tracing::info!("applying pushed configuration version {version}");
        let Some(started) = self.switch_to(config).await else {
            return;
        };
        match self.confirm(&started).await {
            Confirmed::Yes => {
                self.status.set_config_version(Some(version));
                self.state.good = Some(doc.clone());
                self.record(doc, Fate::Applied, "", 0).await;
                tracing::info!("pushed configuration version {version} applied");
                self.report(Some(version), Fate::Applied, "");
            }
            Confirmed::No(why) => {
                let fallback = self.last_good();
                if self.switch_to(fallback).await.is_none() {
                    return;
                }
                let why = format!("{why}; rolled back to {}", self.good_name());
                self.record(doc, Fate::RolledBack, &why, 0).await;
                self.report(Some(version), Fate::RolledBack, &why);
            }
            // Stays "confirming": confirmed again at the next start.
            Confirmed::Stopping => {}
        }
    }

    /// The last known good configuration: the good document over the file, or the file.
    fn last_good(&self) -> Arc<Config> {
        let merged = self
            .state
            .good
            .as_ref()
            .and_then(|g| merge(&self.file, &g.toml).ok());
        Arc::new(merged.unwrap_or_else(|| (*self.file).clone()))
    }

    fn good_name(&self) -> String {
        match &self.state.good {
            Some(g) => format!("version {}", g.version),
            None => "the configuration file".into(),
        }
    }

    /// Has the agent run `config`'s sources; the ids it started, None if it is stopping.
    async fn switch_to(&self, config: Arc<Config>) -> Option<Vec<String>> {
        let (started, done) = oneshot::channel();
        self.switch.send(Switch { config, started }).await.ok()?;
        done.await.ok()
    }

    /// Waits until every source the switch started (new or changed) is open, up to
    /// `control.confirm_timeout`; sources it left running are not its concern.
    async fn confirm(&self, ids: &[String]) -> Confirmed {
        let timeout = self.file.control.confirm_timeout.0;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let sources = self.status.sources();
            let closed: Vec<String> = ids
                .iter()
                .filter_map(|id| match sources.get(id) {
                    Some(s) if s.state == SourceState::Open => None,
                    Some(s) => Some(format!("{id} ({})", s.detail)),
                    None => Some(format!("{id} (not started)")),
                })
                .collect();
            if closed.is_empty() {
                return Confirmed::Yes;
            }
            if tokio::time::Instant::now() >= deadline {
                return Confirmed::No(format!(
                    "not open within {} (control.confirm_timeout): {}",
                    humantime::format_duration(timeout),
                    closed.join("; ")
                ));
            }
            tokio::select! {
                // Cancel-safe: sleeping holds no state.
                _ = tokio::time::sleep(CONFIRM_POLL) => {}
                _ = self.shutdown.cancelled() => return Confirmed::Stopping,
            }
        }
    }

    async fn reject(&mut self, doc: SignedDoc, why: Rejection) {
        let version = doc.version;
        let why = why.to_string();
        self.record(doc, Fate::Rejected, &why, 0).await;
        self.report(Some(version), Fate::Rejected, &why);
    }

    async fn record(&mut self, doc: SignedDoc, fate: Fate, reason: &str, resumed: u32) {
        self.state.last = Some(Last {
            doc,
            fate,
            reason: reason.to_string(),
            resumed,
        });
        let (path, state) = (self.state_path.clone(), self.state.clone());
        // fsync'd: off the async workers.
        let saved = tokio::task::spawn_blocking(move || state::save(&path, &state))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(why) = saved {
            tracing::error!(
                "saving pushed configuration state: {why}; check the storage directory"
            );
        }
    }

    fn report(&self, version: Option<u64>, fate: Fate, reason: &str) {
        if fate != Fate::Applied {
            let v = version.map_or("?".into(), |v| v.to_string());
            tracing::warn!(
                "pushed configuration version {v} {}: {reason}",
                fate.as_str()
            );
        }
        let body = json!({"version": version, "state": fate.as_str(), "reason": reason});
        if self.outbox.try_send(body.to_string().into_bytes()).is_err() {
            tracing::warn!("configuration status not published (queue full)");
        }
    }
}
