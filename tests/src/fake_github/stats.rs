//! What the fake counts: every answer per endpoint and status, the injected
//! ones apart, and every session create/refresh/delete with its time.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One call to a session endpoint, for timing measurements.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionEvent {
    /// Milliseconds since the fake started.
    pub at_ms: u64,
    /// `create`, `refresh` or `delete`.
    pub op: String,
    /// Scale set id.
    pub scale_set_id: i64,
    /// Owner sent (create) or owning the session.
    pub owner: String,
    /// HTTP status answered.
    pub status: u16,
}

/// What `GET /_fake/stats` answers.
///
/// Endpoint names: `registration_token`, `runner_registration`,
/// `runner_groups`, `scale_set_list`, `scale_set_create`, `scale_set_get`,
/// `scale_set_update`, `scale_set_delete`, `session_create`,
/// `session_refresh`, `session_delete`, `message_get`, `message_delete`,
/// `acquire_jobs`, `acquirable_jobs`, `generate_jit_config`, `agents_get`,
/// `agent_get`, `agent_delete` ([`super::ENDPOINTS`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    /// Calls per endpoint name (e.g. `session_create`).
    pub calls: BTreeMap<String, u64>,
    /// Calls per endpoint and status, `"session_create 409"`, injected
    /// failures included.
    pub responses: BTreeMap<String, u64>,
    /// The answers of `responses` that a [`super::Control`] fault made
    /// (`"registration_token 401"`), as opposed to the service's own state.
    #[serde(default)]
    pub injected: BTreeMap<String, u64>,
    /// Every session create/refresh/delete, in order.
    pub session_events: Vec<SessionEvent>,
    /// Milliseconds since the fake started, when the stats were taken.
    pub now_ms: u64,
}

impl Stats {
    /// Calls of one endpoint.
    pub fn calls(&self, endpoint: &str) -> u64 {
        self.calls.get(endpoint).copied().unwrap_or(0)
    }

    /// Answers of one endpoint with one status.
    pub fn responses(&self, endpoint: &str, status: u16) -> u64 {
        self.responses
            .get(&format!("{endpoint} {status}"))
            .copied()
            .unwrap_or(0)
    }

    /// Injected answers of one endpoint with one status.
    pub fn injected(&self, endpoint: &str, status: u16) -> u64 {
        self.injected
            .get(&format!("{endpoint} {status}"))
            .copied()
            .unwrap_or(0)
    }

    /// Session events of one operation (`create`, `refresh`, `delete`) with
    /// one status.
    pub fn session_ops(&self, op: &str, status: u16) -> usize {
        self.session_events
            .iter()
            .filter(|e| e.op == op && e.status == status)
            .count()
    }
}
