//! The per-listener Lease `arc-watchdog-<pod>` that carries the detector's
//! history across pod generations.
//!
//! The webhook creates the Lease; the watchdog only reads and updates it
//! (RBAC grants get/update on that one name). The history is the
//! detector's JSON in the annotation [`HISTORY_ANNOTATION`]. Updates use
//! optimistic concurrency: a 409 re-reads the Lease, merges the stored
//! history with ours and retries.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::PostParams;

pub use crate::detector::HISTORY_ANNOTATION;
use crate::detector::History;

/// Longest time a change of mere bookkeeping (a run's latest output and its
/// dedupe high-water mark, which move with every log line) waits before it
/// is saved. A busy listener writes many lines a second; saving each would
/// mean as many Lease updates, hundreds a second. Another
/// pod generation does not act on these fields, so losing up to this much
/// of them to a crash costs at most a few re-read lines (deduplicated or
/// harmless) and an earlier hung check; everything it does act on is saved
/// at once (see [`needs_prompt_save`]).
pub const BOOKKEEPING_SAVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether `new` differs from the `saved` history in anything but
/// bookkeeping: conflicts, failed starts, evictions, the loop and its
/// backoff (the start gate), duplicate suspicion, a pending eviction, a run
/// started, established or ended. Such a change is saved at once; a change
/// of bookkeeping only (the run's `last_output`, `high_water`, `seen`) waits
/// for [`BOOKKEEPING_SAVE_INTERVAL`].
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

/// Result of reading the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseLoad {
    /// The Lease exists; the stored history, if any.
    Found(Option<String>),
    /// No such Lease (the webhook did not create it): history stays in
    /// memory only.
    Missing,
    /// RBAC forbids it: history stays in memory only.
    Forbidden(String),
}

/// Result of saving the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseSave {
    /// Stored. When another writer had changed the Lease, the stored
    /// history is the merge of theirs and ours, and is returned.
    Saved {
        /// The history now stored (ours, or the merge).
        stored: String,
        /// How many 409 conflicts were resolved on the way.
        conflicts: usize,
    },
    /// The Lease is missing: nothing stored.
    Missing,
    /// RBAC forbids the update: nothing stored.
    Forbidden(String),
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
            current: None,
        }
    }

    /// The Lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads the Lease and the history in it.
    pub async fn load(&mut self) -> Result<LeaseLoad, LeaseError> {
        match self.api.get(&self.name).await {
            Ok(lease) => {
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

    /// Stores `history`. On a 409 the Lease is re-read and
    /// `merge(stored, ours)` is stored instead, up to
    /// [`MAX_CONFLICT_RETRIES`] times.
    pub async fn save(
        &mut self,
        history: &str,
        merge: &(dyn Fn(&str, &str) -> String + Send + Sync),
        now: Timestamp,
    ) -> Result<LeaseSave, LeaseError> {
        let mut ours = history.to_owned();
        let mut conflicts = 0;
        if self.current.is_none() {
            match self.load().await? {
                LeaseLoad::Found(Some(stored)) => ours = merge(&stored, &ours),
                LeaseLoad::Found(None) => {}
                LeaseLoad::Missing => return Ok(LeaseSave::Missing),
                LeaseLoad::Forbidden(why) => return Ok(LeaseSave::Forbidden(why)),
            }
        }
        loop {
            let Some(base) = self.current.clone() else {
                return Ok(LeaseSave::Missing);
            };
            let updated = with_history(base, &ours, &self.holder, now);
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
                        LeaseLoad::Found(Some(stored)) => ours = merge(&stored, &ours),
                        LeaseLoad::Found(None) => {}
                        LeaseLoad::Missing => return Ok(LeaseSave::Missing),
                        LeaseLoad::Forbidden(why) => return Ok(LeaseSave::Forbidden(why)),
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
pub fn stored_history(lease: &Lease) -> Option<String> {
    lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(HISTORY_ANNOTATION).cloned())
}

/// `lease` with `history` stored, held by `holder`, renewed at `now`. The
/// resourceVersion of `lease` is kept: the update is conditional on it.
pub fn with_history(mut lease: Lease, history: &str, holder: &str, now: Timestamp) -> Lease {
    lease
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(HISTORY_ANNOTATION.to_owned(), history.to_owned());
    let spec = lease.spec.get_or_insert_with(Default::default);
    spec.holder_identity = Some(holder.to_owned());
    spec.renew_time = Some(MicroTime(now));
    lease
}
