//! Shutdown: one value passed to every stage, one task tracker, one deadline.
//!
//! A stage races [`Shutdown::cancelled`] (or a token derived from [`Shutdown::token`]) in each
//! `select!`. Every task is spawned with a name ("upstream", "buffer writer", "control
//! socket", "source scanner-dock-3") through [`Shutdown::spawn`], on one `TaskTracker`, so that
//! when the stop deadline passes the agent can say which stage or source did not finish:
//! `shutdown: upstream, source scanner-dock-3 did not stop within 15s`.
//!
//! The order of the stop is the caller's (`app`): sources first, then upstream waits for the
//! PUBACKs of what is in flight, then the buffer writer commits what is queued. Each step waits
//! at most until the same [`Deadline`], [`STOP_DEADLINE`] after the signal, which stays under
//! the unit's `TimeoutStopSec=20s` with room for [`REPORT_GRACE`].

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

/// From the shutdown signal until every stage has stopped, or is named as having missed it.
pub const STOP_DEADLINE: Duration = Duration::from_secs(15);
/// After the deadline, what is left is cancelled or aborted and gets this long to report what
/// it abandoned (the buffer writer: the readings it could not store) before the agent exits:
/// 17 s at most in all, under the unit's `TimeoutStopSec=20s`.
pub const REPORT_GRACE: Duration = Duration::from_secs(2);

/// The shutdown signal and the tasks that must end before the agent exits. Cloning is cheap;
/// every clone shares the same token, tracker and names.
#[derive(Clone)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
    live: Arc<Mutex<Live>>,
}

/// The names of the tasks still running, by spawn order.
#[derive(Default)]
struct Live {
    next: u64,
    names: BTreeMap<u64, Arc<str>>,
}

/// Takes a task's name out of the live set when its future ends or is dropped (aborted).
struct Alive {
    live: Arc<Mutex<Live>>,
    id: u64,
}

impl Drop for Alive {
    fn drop(&mut self) {
        lock(&self.live).names.remove(&self.id);
    }
}

fn lock(live: &Mutex<Live>) -> MutexGuard<'_, Live> {
    // A panic while holding this lock leaves the map as it was: still usable.
    live.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shutdown {
    /// Shutdown begins when `token` is cancelled (SIGTERM/SIGINT).
    pub fn new(token: CancellationToken) -> Shutdown {
        Shutdown {
            token,
            tracker: TaskTracker::new(),
            live: Default::default(),
        }
    }

    /// The signal, for a stage that takes a token (or a child token for one that may also be
    /// stopped on its own, as a source is when a pushed configuration removes it).
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Resolves once shutdown has begun. Cancel-safe: a cancelled token stays cancelled.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Spawns `task` on the tracker under `name`, which the stop report uses if it is still
    /// running at the deadline.
    pub fn spawn<F>(&self, name: impl Into<Arc<str>>, task: F) -> Task<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let name = name.into();
        let alive = {
            let mut live = lock(&self.live);
            let id = live.next;
            live.next += 1;
            live.names.insert(id, name.clone());
            Alive {
                live: self.live.clone(),
                id,
            }
        };
        let handle = self.tracker.spawn(async move {
            let _alive = alive;
            task.await
        });
        Task {
            name,
            handle: Some(handle),
        }
    }

    /// The names of the tasks still running, in the order they were spawned.
    pub fn running(&self) -> Vec<Arc<str>> {
        lock(&self.live).names.values().cloned().collect()
    }

    /// Waits until every task spawned here has ended, or `deadline`; then names those still
    /// running. No task can be spawned here afterwards.
    pub async fn wait_by(&self, deadline: &Deadline) -> Result<(), Missed> {
        self.tracker.close();
        if tokio::time::timeout_at(deadline.at, self.tracker.wait())
            .await
            .is_ok()
        {
            return Ok(());
        }
        let names = self.running();
        if names.is_empty() {
            // The last one ended just as the deadline passed.
            return Ok(());
        }
        Err(Missed {
            names,
            within: deadline.within,
        })
    }
}

/// The instant by which the whole stop must be done.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
    within: Duration,
}

impl Deadline {
    /// `within` from now.
    pub fn after(within: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + within,
            within,
        }
    }

    pub fn at(&self) -> Instant {
        self.at
    }

    pub fn passed(&self) -> bool {
        Instant::now() >= self.at
    }
}

/// A task spawned by [`Shutdown::spawn`].
pub struct Task<T> {
    name: Arc<str>,
    /// None once joined.
    handle: Option<JoinHandle<T>>,
}

/// What became of a task waited for until a deadline.
#[derive(Debug, PartialEq, Eq)]
pub enum Joined<T> {
    Done(T),
    /// It panicked or was aborted (logged), or was joined before.
    Failed,
    /// Still running at the deadline; it goes on until aborted.
    Running,
}

impl<T> Task<T> {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits for the task until `deadline`.
    pub async fn join_by(&mut self, deadline: &Deadline) -> Joined<T> {
        let Some(handle) = self.handle.as_mut() else {
            return Joined::Failed;
        };
        let joined = match tokio::time::timeout_at(deadline.at, handle).await {
            Err(_) => return Joined::Running,
            Ok(Ok(v)) => Joined::Done(v),
            Ok(Err(e)) if e.is_cancelled() => Joined::Failed,
            Ok(Err(e)) => {
                tracing::error!("{} failed: {e}", self.name);
                Joined::Failed
            }
        };
        self.handle = None;
        joined
    }

    /// Stops it at its next await point (its name leaves the running set then).
    pub fn abort(&self) {
        if let Some(h) = &self.handle {
            h.abort();
        }
    }
}

/// The stages and sources that did not stop by the deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missed {
    /// In spawn order; a name may repeat (several control socket clients).
    pub names: Vec<Arc<str>>,
    pub within: Duration,
}

impl fmt::Display for Missed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // "control socket client (3)" rather than the same name three times.
        let mut counted: Vec<(&str, usize)> = Vec::new();
        for n in &self.names {
            match counted.iter_mut().find(|(m, _)| *m == &**n) {
                Some((_, c)) => *c += 1,
                None => counted.push((n, 1)),
            }
        }
        for (i, (name, count)) in counted.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(name)?;
            if *count > 1 {
                write!(f, " ({count})")?;
            }
        }
        write!(f, " did not stop within {:?}", self.within)
    }
}

/// Why a stop was not clean: `run` returns it as an error, and the process exits 1.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Unclean {
    pub missed: Option<Missed>,
    /// Stages that panicked while stopping.
    pub failed: Vec<String>,
    /// Readings queued for the buffer that the writer could not store (the disk was full or
    /// failing until the deadline).
    pub abandoned: u64,
}

impl Unclean {
    /// Nothing was abandoned and everything stopped in time.
    pub fn is_clean(&self) -> bool {
        self.missed.is_none() && self.failed.is_empty() && self.abandoned == 0
    }
}

impl fmt::Display for Unclean {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("shutdown: ")?;
        let mut parts = Vec::new();
        if let Some(m) = &self.missed {
            parts.push(m.to_string());
        }
        if !self.failed.is_empty() {
            parts.push(format!("{} failed while stopping", self.failed.join(", ")));
        }
        if self.abandoned > 0 {
            parts.push(format!(
                "{} readings were not stored because the buffer could not be written (MQTT devices' messages stay unacknowledged at the site broker, which sends them again; serial readings among them are lost)",
                self.abandoned
            ));
        }
        if parts.is_empty() {
            parts.push("clean".into());
        }
        f.write_str(&parts.join("; "))
    }
}

impl std::error::Error for Unclean {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stage that stops `after` once shutdown began.
    fn stage(s: &Shutdown, after: Duration) -> impl Future<Output = ()> + Send + 'static {
        let s = s.clone();
        async move {
            s.cancelled().await;
            tokio::time::sleep(after).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_names_every_stage_and_source_that_missed_it() {
        let shutdown = Shutdown::new(CancellationToken::new());
        let mut writer = shutdown.spawn("buffer writer", {
            let s = shutdown.clone();
            async move {
                s.cancelled().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                7u64
            }
        });
        let _upstream = shutdown.spawn("upstream", std::future::pending::<()>());
        let _slow = shutdown.spawn(
            "source scanner-dock-3",
            stage(&shutdown, Duration::from_secs(60)),
        );
        let _quick = shutdown.spawn("source scale-1", stage(&shutdown, Duration::ZERO));
        for _ in 0..3 {
            let _ = shutdown.spawn("control socket client", std::future::pending::<()>());
        }
        shutdown.token().cancel();
        let start = Instant::now();
        let deadline = Deadline::after(STOP_DEADLINE);
        assert_eq!(writer.join_by(&deadline).await, Joined::Done(7));
        let missed = shutdown
            .wait_by(&deadline)
            .await
            .err()
            .unwrap_or_else(|| panic!("everything stopped"));
        // Exactly at the deadline, not a moment later.
        assert_eq!(start.elapsed(), STOP_DEADLINE);
        assert_eq!(
            missed.to_string(),
            "upstream, source scanner-dock-3, control socket client (3) did not stop within 15s"
        );
        let unclean = Unclean {
            missed: Some(missed),
            ..Default::default()
        };
        assert!(!unclean.is_clean());
        assert!(
            unclean
                .to_string()
                .starts_with("shutdown: upstream, source scanner-dock-3, "),
            "{unclean}"
        );
        // The writer's report waits until the deadline; it is not part of the list.
        assert_eq!(writer.join_by(&deadline).await, Joined::Failed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_clean_stop_returns_as_soon_as_the_last_task_ends() {
        let shutdown = Shutdown::new(CancellationToken::new());
        let mut a = shutdown.spawn("upstream", stage(&shutdown, Duration::from_secs(2)));
        let _b = shutdown.spawn("source scanner-1", stage(&shutdown, Duration::from_secs(1)));
        shutdown.token().cancel();
        let start = Instant::now();
        let deadline = Deadline::after(STOP_DEADLINE);
        assert_eq!(a.join_by(&deadline).await, Joined::Done(()));
        assert_eq!(shutdown.wait_by(&deadline).await, Ok(()));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert!(shutdown.running().is_empty());
        assert!(!deadline.passed());
    }

    #[tokio::test(start_paused = true)]
    async fn an_aborted_task_leaves_the_list_and_a_running_one_is_reported_running() {
        let shutdown = Shutdown::new(CancellationToken::new());
        let mut stuck = shutdown.spawn("source scanner-dock-3", std::future::pending::<()>());
        let deadline = Deadline::after(Duration::from_secs(1));
        assert_eq!(stuck.join_by(&deadline).await, Joined::Running);
        assert_eq!(shutdown.running(), vec![Arc::from("source scanner-dock-3")]);
        stuck.abort();
        let grace = Deadline::after(REPORT_GRACE);
        assert_eq!(stuck.join_by(&grace).await, Joined::Failed);
        assert!(shutdown.running().is_empty());
        assert_eq!(shutdown.wait_by(&grace).await, Ok(()));
    }

    #[test]
    fn the_report_names_what_was_abandoned() {
        let u = Unclean {
            missed: Some(Missed {
                names: vec!["buffer writer".into()],
                within: STOP_DEADLINE,
            }),
            failed: vec![],
            abandoned: 50,
        };
        let text = u.to_string();
        assert!(
            text.starts_with(
                "shutdown: buffer writer did not stop within 15s; 50 readings were not stored"
            ),
            "{text}"
        );
        assert!(Unclean::default().is_clean());
    }
}
