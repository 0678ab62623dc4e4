//! The per-listener Lease `arc-watchdog.<pod>` that carries the detector's
//! history across pod generations.
//!
//! The webhook's controller creates the Lease for the pod's
//! AutoscalingListener; the watchdog only reads and updates it (RBAC grants
//! get/update on that one name). A Lease that is missing, forbidden or
//! still belongs to an earlier AutoscalingListener of the same name is read
//! again until it is the pod's own: the controller may be a moment behind
//! the pod. The history is the
//! detector's JSON in the annotation [`ANNOTATION_HISTORY`]: this is the
//! one place it is serialised; everything else handles [`History`] values.
//! Updates use optimistic concurrency: a 409 re-reads the Lease, merges the
//! stored history with ours ([`History::merge`]) and retries.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::backoff::Backoff;
use super::gate;
use super::http::Shared;

pub use crate::detector::ANNOTATION_HISTORY;
use crate::detector::History;

/// Default of `--bookkeeping-save-interval`: the longest time a change of
/// mere bookkeeping (a run's latest output and its dedupe high-water mark,
/// which move with every log line) waits before it is saved. A listener
/// that holds its session logs a poll line every minute or faster; saving
/// each would mean a Lease write per line (and, as the webhook's
/// controller owns the Lease, a reconcile of the listener's objects per
/// write), for fields no other pod generation acts on. What is lost to a
/// crash is re-read from the log on the next start (the follow resumes at
/// the saved high-water mark, and the lines after it are bookkeeping only),
/// a graceful stop saves it, and everything a generation acts on is saved at
/// once (see [`needs_prompt_save`]). So an idle listener's Lease is written
/// at most once per this interval.
pub const BOOKKEEPING_SAVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// Whether `new` differs from the `saved` history in anything but
/// bookkeeping: conflicts, failed starts, evictions, the loop and its
/// backoff (the start gate), duplicate suspicion, a pending eviction, a run
/// started, established or ended. Such a change is saved at once; a change
/// of bookkeeping only (the run's `last_output`, `high_water`, `seen`) waits
/// for the bookkeeping interval ([`BOOKKEEPING_SAVE_INTERVAL`]).
pub fn needs_prompt_save(saved: &History, new: &History) -> bool {
    substance(saved) != substance(new)
}

/// `h` without the fields every log line moves.
fn substance(h: &History) -> History {
    let mut h = h.clone();
    if let Some(run) = &mut h.run {
        run.last_output = None;
        run.high_water = None;
        run.seen.clear();
    }
    h
}

/// How often a conflicting update is re-read, merged and retried.
pub const MAX_CONFLICT_RETRIES: usize = 5;

/// The history stored in a Lease could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable history: {0}")]
pub struct UnreadableHistory(pub String);

/// The history a Lease holds: none yet, a readable one, or an unreadable one.
pub type StoredHistory = Option<Result<History, UnreadableHistory>>;

/// Result of reading the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "one value per read, moved once: a box buys nothing"
)]
pub enum LeaseLoad {
    /// The Lease exists; the stored history, if any.
    Found(StoredHistory),
    /// No such Lease (the webhook did not create it): history stays in
    /// memory only.
    Missing,
    /// RBAC forbids it: history stays in memory only.
    Forbidden(String),
    /// It belongs to another AutoscalingListener (an earlier scale set of
    /// the same name): its history is not this listener's.
    NotOurs(String),
}

/// Result of saving the history.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "one value per save, moved once: a box buys nothing"
)]
pub enum LeaseSave {
    /// Stored. When another writer had changed the Lease, the stored
    /// history is the merge of theirs and ours, and is returned.
    Saved {
        /// The history now stored (ours, or the merge).
        stored: History,
        /// How many 409 conflicts were resolved on the way.
        conflicts: usize,
    },
    /// The Lease is missing: nothing stored.
    Missing,
    /// RBAC forbids the update: nothing stored.
    Forbidden(String),
    /// The Lease belongs to another AutoscalingListener: nothing stored.
    NotOurs(String),
}

/// Errors of the Lease store (anything but 404/403, which are outcomes).
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The API call failed.
    #[error("{op} lease {name}: {source}")]
    Api {
        /// `get` or `update`.
        op: &'static str,
        /// Lease name.
        name: String,
        /// The kube error.
        #[source]
        source: kube::Error,
    },
    /// Still conflicting after [`MAX_CONFLICT_RETRIES`] merges.
    #[error("lease {0}: still conflicting after {MAX_CONFLICT_RETRIES} retries")]
    Conflicts(String),
}

impl LeaseError {
    /// The operation label for metrics (`lease_get`, `lease_update`).
    pub fn op(&self) -> &'static str {
        match self {
            LeaseError::Api { op: "get", .. } => super::gate::OP_LEASE_GET,
            _ => super::gate::OP_LEASE_UPDATE,
        }
    }
}

/// Reads and writes the history in one Lease.
#[derive(Debug, Clone)]
pub struct LeaseStore {
    api: Api<Lease>,
    name: String,
    holder: String,
    listener_uid: Option<String>,
    current: Option<Lease>,
}

fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

impl LeaseStore {
    /// A store for Lease `name`, held by `holder` (the pod name).
    pub fn new(api: Api<Lease>, name: String, holder: String) -> Self {
        Self {
            api,
            name,
            holder,
            listener_uid: None,
            current: None,
        }
    }

    /// Only a Lease owned by the AutoscalingListener with `uid` (or by no
    /// AutoscalingListener at all) is this watchdog's.
    #[must_use]
    pub fn for_listener(mut self, uid: Option<String>) -> Self {
        self.listener_uid = uid.filter(|u| !u.is_empty());
        self
    }

    /// The Lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads the Lease and the history in it.
    pub async fn load(&mut self) -> Result<LeaseLoad, LeaseError> {
        match self.api.get(&self.name).await {
            Ok(lease) => {
                if let Some(why) = self.foreign_owner(&lease) {
                    self.current = None;
                    return Ok(LeaseLoad::NotOurs(why));
                }
                let history = stored_history(&lease);
                self.current = Some(lease);
                Ok(LeaseLoad::Found(history))
            }
            Err(e) if code(&e) == Some(404) => Ok(LeaseLoad::Missing),
            Err(e) if code(&e) == Some(403) => {
                Ok(LeaseLoad::Forbidden(super::logs::error_text(&e)))
            }
            Err(source) => Err(LeaseError::Api {
                op: "get",
                name: self.name.clone(),
                source,
            }),
        }
    }

    /// Why `lease` is not this listener's, if it is not.
    fn foreign_owner(&self, lease: &Lease) -> Option<String> {
        let want = self.listener_uid.as_deref()?;
        let owners: Vec<&str> = lease
            .metadata
            .owner_references
            .iter()
            .flatten()
            .filter(|r| r.kind == crate::names::AUTOSCALING_LISTENER_KIND)
            .map(|r| r.uid.as_str())
            .collect();
        (!owners.is_empty() && !owners.contains(&want)).then(|| {
            format!(
                "Lease {} belongs to AutoscalingListener {}, this pod's is {want}",
                self.name,
                owners.join(",")
            )
        })
    }

    /// Stores `history`. On a 409 the Lease is re-read and the merge of
    /// what it holds and ours ([`merge_stored`]) is stored instead, up to
    /// [`MAX_CONFLICT_RETRIES`] times.
    pub async fn save(
        &mut self,
        history: &History,
        now: Timestamp,
    ) -> Result<LeaseSave, LeaseError> {
        let mut ours = history.clone();
        let mut conflicts = 0;
        if self.current.is_none() {
            match self.load().await? {
                LeaseLoad::Found(stored) => ours = merge_stored(stored, &ours),
                LeaseLoad::Missing => return Ok(LeaseSave::Missing),
                LeaseLoad::Forbidden(why) => return Ok(LeaseSave::Forbidden(why)),
                LeaseLoad::NotOurs(why) => return Ok(LeaseSave::NotOurs(why)),
            }
        }
        loop {
            let Some(base) = self.current.clone() else {
                return Ok(LeaseSave::Missing);
            };
            let updated = with_history(base, &ours.to_json(), &self.holder, now);
            match self
                .api
                .replace(&self.name, &PostParams::default(), &updated)
                .await
            {
                Ok(stored) => {
                    self.current = Some(stored);
                    return Ok(LeaseSave::Saved {
                        stored: ours,
                        conflicts,
                    });
                }
                Err(e) if code(&e) == Some(409) => {
                    conflicts += 1;
                    if conflicts > MAX_CONFLICT_RETRIES {
                        self.current = None;
                        return Err(LeaseError::Conflicts(self.name.clone()));
                    }
                    match self.load().await? {
                        LeaseLoad::Found(stored) => ours = merge_stored(stored, &ours),
                        LeaseLoad::Missing => return Ok(LeaseSave::Missing),
                        LeaseLoad::Forbidden(why) => return Ok(LeaseSave::Forbidden(why)),
                        LeaseLoad::NotOurs(why) => return Ok(LeaseSave::NotOurs(why)),
                    }
                }
                Err(e) if code(&e) == Some(404) => {
                    self.current = None;
                    return Ok(LeaseSave::Missing);
                }
                Err(e) if code(&e) == Some(403) => {
                    return Ok(LeaseSave::Forbidden(super::logs::error_text(&e)));
                }
                Err(source) => {
                    return Err(LeaseError::Api {
                        op: "update",
                        name: self.name.clone(),
                        source,
                    });
                }
            }
        }
    }
}

/// The history stored in `lease`, if any.
pub fn stored_history(lease: &Lease) -> StoredHistory {
    lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_HISTORY))
        .map(|json| History::from_json(json).map_err(|e| UnreadableHistory(e.to_string())))
}

/// What to store after reading `stored`: its merge with `ours`. A stored
/// history that cannot be read is replaced by ours (the sidecar reports it
/// when loading).
pub fn merge_stored(stored: StoredHistory, ours: &History) -> History {
    match stored {
        Some(Ok(stored)) => History::merge(&stored, ours),
        Some(Err(_)) | None => ours.clone(),
    }
}

/// `lease` with `history` stored, held by `holder`, renewed at `now`. The
/// resourceVersion of `lease` is kept: the update is conditional on it.
pub fn with_history(mut lease: Lease, history: &str, holder: &str, now: Timestamp) -> Lease {
    lease
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(ANNOTATION_HISTORY.to_owned(), history.to_owned());
    let spec = lease.spec.get_or_insert_with(Default::default);
    spec.holder_identity = Some(holder.to_owned());
    spec.renew_time = Some(MicroTime(now));
    lease
}

/// Messages from the Lease task.
#[derive(Debug)]
pub(crate) enum LeaseMsg {
    /// First read done: the stored history (if any).
    Loaded(StoredHistory),
    /// The Lease cannot be used (missing, forbidden): memory only.
    Unavailable(String),
    /// A save met another writer; this is the merged history now stored.
    Merged(History),
}

/// When the history is handed to the Lease task: at once when it matters
/// for another pod generation, a bookkeeping-only change at most once per
/// interval (`--bookkeeping-save-interval`). The Lease task saves only the latest
/// history, one save at a time; the latest contains every earlier change,
/// so coalescing never loses one.
#[derive(Debug)]
pub(crate) struct SaveSchedule {
    tx: watch::Sender<Option<History>>,
    /// How long a bookkeeping-only change waits.
    interval: std::time::Duration,
    /// The history last handed to the Lease task (or found stored).
    last_saved: Option<History>,
    /// A bookkeeping-only change waits for this time to be saved.
    due: Option<tokio::time::Instant>,
}

impl SaveSchedule {
    /// A schedule handing histories to `tx`, bookkeeping-only changes
    /// after `interval`.
    pub(crate) fn new(tx: watch::Sender<Option<History>>, interval: std::time::Duration) -> Self {
        Self {
            tx,
            interval,
            last_saved: None,
            due: None,
        }
    }

    /// When a coalesced change is due, if one waits.
    pub(crate) fn due(&self) -> Option<tokio::time::Instant> {
        self.due
    }

    /// The Lease was read: the history it holds is what was saved (a
    /// history published before the load was dropped by the Lease task, so
    /// the next save is compared with what is stored).
    pub(crate) fn loaded(&mut self, stored: Option<History>) {
        self.last_saved = stored;
    }

    /// Hands `history` on now or schedules it (see the type).
    pub(crate) fn offer(&mut self, history: History) {
        let prompt = match &self.last_saved {
            None => true,
            Some(saved) if *saved == history => {
                self.due = None;
                return;
            }
            Some(saved) => needs_prompt_save(saved, &history),
        };
        let now = tokio::time::Instant::now();
        if prompt || self.due.is_some_and(|due| due <= now) {
            self.publish(history);
        } else if self.due.is_none() {
            self.due = Some(now + self.interval);
        }
    }

    /// Hands `history` on now.
    pub(crate) fn publish(&mut self, history: History) {
        self.due = None;
        if self.last_saved.as_ref() != Some(&history) {
            self.tx.send_replace(Some(history.clone()));
        }
        self.last_saved = Some(history);
    }

    /// Closes the queue: the Lease task finishes the save it holds, then ends.
    pub(crate) fn close(&mut self) {
        drop(std::mem::replace(&mut self.tx, watch::channel(None).0));
    }
}

/// The Lease task: reads the Lease once (retried until it answers), then
/// saves the latest history handed to it, one save at a time, until `rx`
/// closes or `cancel` fires.
pub(crate) async fn lease_loop(
    mut store: LeaseStore,
    mut rx: watch::Receiver<Option<History>>,
    tx: mpsc::Sender<LeaseMsg>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    // First read, retried until it answers with the pod's own Lease. Until
    // then the history lives in memory (the main loop is told once), and
    // the Lease is read again: the webhook's controller may create it, or
    // start it over for this listener, a moment after the pod.
    let mut unavailable_told = false;
    loop {
        let res = tokio::select! {
            () = cancel.cancelled() => return,
            r = store.load() => r,
        };
        let why = match res {
            Ok(LeaseLoad::Found(h)) => {
                shared.with_gate(|g| g.record_ok(gate::OP_LEASE_GET));
                // Whatever was published before the load is merged by the
                // main loop and published again.
                rx.borrow_and_update();
                if tx.send(LeaseMsg::Loaded(h)).await.is_err() {
                    return;
                }
                break;
            }
            Ok(LeaseLoad::Missing) => {
                shared.with_gate(|g| g.record_ok(gate::OP_LEASE_GET));
                format!("Lease {} not found", store.name())
            }
            Ok(LeaseLoad::NotOurs(why)) => {
                shared.with_gate(|g| g.record_ok(gate::OP_LEASE_GET));
                why
            }
            Ok(LeaseLoad::Forbidden(why)) => {
                shared.metrics.api_error(gate::OP_LEASE_GET);
                format!("Lease {} forbidden: {why}", store.name())
            }
            Err(e) => {
                warn!(error = %e, "reading the Lease failed; retrying with backoff");
                shared.metrics.api_error(e.op());
                let now = Timestamp::now();
                shared.with_gate(|g| g.record_error(e.op(), e.to_string(), now));
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
                continue;
            }
        };
        if !unavailable_told {
            unavailable_told = true;
            if tx.send(LeaseMsg::Unavailable(why)).await.is_err() {
                return;
            }
        } else {
            info!(reason = %why, "the Lease is still not this listener's; reading it again later");
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
    backoff.reset();
    let mut retry_pending = false;
    loop {
        if !retry_pending {
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = rx.changed() => if changed.is_err() { return },
            }
        }
        let Some(history) = rx.borrow_and_update().clone() else {
            retry_pending = false;
            continue;
        };
        let now = Timestamp::now();
        let res = tokio::select! {
            () = cancel.cancelled() => return,
            r = store.save(&history, now) => r,
        };
        retry_pending = false;
        match res {
            Ok(LeaseSave::Saved { stored, conflicts }) => {
                backoff.reset();
                shared.with_gate(|g| g.record_ok(gate::OP_LEASE_UPDATE));
                if conflicts > 0 {
                    info!(
                        conflicts,
                        "Lease update conflicted; merged with the stored history"
                    );
                    if tx.send(LeaseMsg::Merged(stored)).await.is_err() {
                        return;
                    }
                }
            }
            Ok(LeaseSave::Missing) => {
                warn!(
                    lease = store.name(),
                    "the Lease is gone; the history stays in memory"
                );
            }
            Ok(LeaseSave::NotOurs(why)) => {
                warn!(lease = store.name(), reason = %why, "the Lease now belongs to another listener; the history stays in memory");
            }
            Ok(LeaseSave::Forbidden(why)) => {
                warn!(lease = store.name(), reason = %why, "updating the Lease is forbidden; the history stays in memory");
                shared.metrics.api_error(gate::OP_LEASE_UPDATE);
                shared.with_gate(|g| g.record_error(gate::OP_LEASE_UPDATE, why, now));
            }
            Err(e) => {
                warn!(error = %e, "saving the history failed; retrying with backoff");
                shared.metrics.api_error(e.op());
                shared.with_gate(|g| g.record_error(e.op(), e.to_string(), now));
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
                retry_pending = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_stored_history_is_replaced() {
        let ours = History {
            conflicts: vec![Timestamp::from_second(1_800_000_000).unwrap()],
            ..History::default()
        };
        let stored = Some(Err(UnreadableHistory("{not json".to_owned())));
        assert_eq!(merge_stored(stored, &ours), ours);
        assert_eq!(merge_stored(None, &ours), ours);
    }
}
