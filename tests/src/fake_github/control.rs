//! Controls: what a scenario changes in the fake service (stale sessions,
//! failures GitHub is known to produce), in process or over
//! `POST /_fake/control`.

use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::state::Shared;
use super::stats::Stats;

/// Every endpoint name the fake counts (the keys of [`Stats::calls`]) and
/// that [`Control::FailEndpoint`] accepts.
pub const ENDPOINTS: &[&str] = &[
    "registration_token",
    "runner_registration",
    "runner_groups",
    "scale_set_list",
    "scale_set_create",
    "scale_set_get",
    "scale_set_update",
    "scale_set_delete",
    "session_create",
    "session_refresh",
    "session_delete",
    "message_get",
    "message_delete",
    "acquire_jobs",
    "acquirable_jobs",
    "generate_jit_config",
    "agents_get",
    "agent_get",
    "agent_delete",
];

/// The two calls of the token bootstrap that a revoked credential fails.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TokenEndpoint {
    /// `POST /api/v3/.../actions/runners/registration-token` with the PAT: a
    /// revoked PAT. The clients take the 401 as final (one call per start).
    #[default]
    RegistrationToken,
    /// `POST /api/v3/actions/runner-registration` with the registration
    /// token. The clients retry a 401 here (4 retries, 1 s to 30 s apart)
    /// before giving up.
    RunnerRegistration,
}

impl TokenEndpoint {
    /// Its endpoint name in [`Stats`].
    pub fn endpoint(self) -> &'static str {
        match self {
            TokenEndpoint::RegistrationToken => "registration_token",
            TokenEndpoint::RunnerRegistration => "runner_registration",
        }
    }
}

/// Requests accepted by `POST /_fake/control` (JSON, `{"action": "<snake_case
/// variant>", ...fields}`). `count` fields: how many calls fail; absent: every
/// call until [`Control::ClearFaults`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Control {
    /// Plants a session held by `owner` that stays active for `ttl_ms` from
    /// now (as if its listener had been killed), or forever when `ttl_ms`
    /// is absent (another cluster holding the scale set: a permanent conflict).
    InjectSession {
        /// Scale set id.
        scale_set_id: i64,
        /// Owner name reported in the conflict.
        owner: String,
        /// Remaining lifetime; absent: permanent.
        ttl_ms: Option<u64>,
    },
    /// Drops any session of the scale set.
    ClearSessions {
        /// Scale set id.
        scale_set_id: i64,
    },
    /// Zeroes the counters and the session event list.
    ResetStats,
    /// Answers `status` on `endpoint` (a name of [`ENDPOINTS`]) with the body
    /// GitHub sends with it (REST `{"message"}` for the token endpoints,
    /// `RunnerScaleSetNotFoundException` for a 404 on scale-set endpoints,
    /// none for a 401 of the Actions service). A 5xx other than 501 is
    /// retried by the clients (4 retries, about 15 s in all): each retry is
    /// a call.
    FailEndpoint {
        /// Endpoint name.
        endpoint: String,
        /// HTTP status (100 to 599).
        status: u16,
        /// Calls to fail; absent: all.
        #[serde(default)]
        count: Option<u32>,
    },
    /// Message polls answer 200 with an empty body: the listener fails with
    /// `EOF` (actions/actions-runner-controller#4285, #4356).
    EmptyMessageBody {
        /// Polls to answer so; absent: all.
        #[serde(default)]
        count: Option<u32>,
    },
    /// Session refreshes answer 404 (`RunnerAdminException`, the session is
    /// unknown) and the session is forgotten, as when GitHub's broker evicts
    /// sessions: a listener dies at its next queue-token expiry, after its
    /// session was established, and its delete on the way out gets the 400
    /// `RunnerScaleSetSessionExpiredException`.
    FailRefresh {
        /// Refreshes to fail; absent: all.
        #[serde(default)]
        count: Option<u32>,
    },
    /// A revoked credential: `endpoint` answers 401 until
    /// [`Control::ClearFaults`]. Clients that already hold an admin token
    /// keep working until it expires; each new listener fails at start-up.
    RevokeToken {
        /// Which bootstrap call fails (default: the PAT's).
        #[serde(default)]
        endpoint: TokenEndpoint,
    },
    /// The scale set is deleted on GitHub's side (not through ARC): session
    /// creates answer 404 `RunnerScaleSetNotFoundException`
    /// (actions/actions-runner-controller#3935, #4656). Its session goes
    /// with it. Permanent.
    DeleteScaleSet {
        /// Scale set id.
        scale_set_id: i64,
    },
    /// The runner group does not exist: looking it up by name finds none
    /// (`count: 0`), as GitHub answers; ARC's controller then fails the
    /// AutoscalingRunnerSet (`no runner group found with name`).
    RemoveRunnerGroup {
        /// Group name as in `spec.runnerGroup`.
        name: String,
    },
    /// Ends every injected failure: endpoint faults, empty polls, refresh
    /// failures, revoked tokens, removed runner groups. Deleted scale sets
    /// stay deleted; sessions are untouched.
    ClearFaults,
}

/// What an injected failure answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FaultKind {
    /// This status with GitHub's body for it.
    Status(StatusCode),
    /// 200 with an empty body.
    EmptyBody,
}

/// An injected failure of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fault {
    pub(super) kind: FaultKind,
    /// Calls still to fail; `None`: all.
    pub(super) remaining: Option<u32>,
}

impl Fault {
    fn new(kind: FaultKind, count: Option<u32>) -> Self {
        Self {
            kind,
            remaining: count,
        }
    }

    /// Takes one call; `None` when the fault is spent (and should go).
    pub(super) fn take(&mut self) -> Option<FaultKind> {
        match &mut self.remaining {
            None => Some(self.kind),
            Some(0) => None,
            Some(n) => {
                *n -= 1;
                Some(self.kind)
            }
        }
    }

    /// Whether no call is left to fail.
    pub(super) fn spent(&self) -> bool {
        self.remaining == Some(0)
    }
}

fn known_endpoint(endpoint: &str) -> anyhow::Result<()> {
    if !ENDPOINTS.contains(&endpoint) {
        bail!(
            "unknown endpoint {endpoint:?} (known: {})",
            ENDPOINTS.join(", ")
        );
    }
    Ok(())
}

/// Applies a control request; an invalid one changes nothing.
pub(super) fn apply_control(sh: &Shared, control: Control) -> anyhow::Result<()> {
    {
        let mut st = sh.lock();
        let now = st.now();
        match control {
            Control::InjectSession {
                scale_set_id,
                owner,
                ttl_ms,
            } => {
                st.sessions.clear(scale_set_id);
                let ttl = ttl_ms.map(Duration::from_millis);
                // The slot was just cleared, so this cannot conflict.
                let _ = st.sessions.create(scale_set_id, &owner, ttl, now);
            }
            Control::ClearSessions { scale_set_id } => st.sessions.clear(scale_set_id),
            Control::ResetStats => st.stats = Stats::default(),
            Control::FailEndpoint {
                endpoint,
                status,
                count,
            } => {
                known_endpoint(&endpoint)?;
                let status = StatusCode::from_u16(status)
                    .ok()
                    .filter(|s| (100..600).contains(&s.as_u16()))
                    .with_context(|| format!("invalid HTTP status {status}"))?;
                st.faults
                    .insert(endpoint, Fault::new(FaultKind::Status(status), count));
            }
            Control::EmptyMessageBody { count } => {
                st.faults.insert(
                    "message_get".to_owned(),
                    Fault::new(FaultKind::EmptyBody, count),
                );
            }
            Control::FailRefresh { count } => {
                st.refresh_failure =
                    Some(Fault::new(FaultKind::Status(StatusCode::NOT_FOUND), count));
            }
            Control::RevokeToken { endpoint } => {
                st.faults.insert(
                    endpoint.endpoint().to_owned(),
                    Fault::new(FaultKind::Status(StatusCode::UNAUTHORIZED), None),
                );
            }
            Control::DeleteScaleSet { scale_set_id } => {
                st.scale_sets.remove(&scale_set_id);
                st.sessions.clear(scale_set_id);
            }
            Control::RemoveRunnerGroup { name } => {
                // Its id stays taken: a group created later gets another.
                st.removed_groups.insert(name);
            }
            Control::ClearFaults => {
                st.faults.clear();
                st.refresh_failure = None;
                st.removed_groups.clear();
            }
        }
    }
    // Held polls re-check their session (a deleted scale set ends them).
    sh.changed.notify_waiters();
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn controls_have_a_stable_json_form() {
        let c: Control = serde_json::from_str(
            r#"{"action":"fail_endpoint","endpoint":"session_create","status":503,"count":2}"#,
        )
        .unwrap();
        assert_eq!(
            c,
            Control::FailEndpoint {
                endpoint: "session_create".into(),
                status: 503,
                count: Some(2)
            }
        );
        let c: Control = serde_json::from_str(r#"{"action":"revoke_token"}"#).unwrap();
        assert_eq!(
            c,
            Control::RevokeToken {
                endpoint: TokenEndpoint::RegistrationToken
            }
        );
        let c: Control =
            serde_json::from_str(r#"{"action":"revoke_token","endpoint":"runner_registration"}"#)
                .unwrap();
        assert_eq!(
            c,
            Control::RevokeToken {
                endpoint: TokenEndpoint::RunnerRegistration
            }
        );
        for json in [
            r#"{"action":"empty_message_body"}"#,
            r#"{"action":"fail_refresh","count":1}"#,
            r#"{"action":"delete_scale_set","scale_set_id":1}"#,
            r#"{"action":"remove_runner_group","name":"ci"}"#,
            r#"{"action":"clear_faults"}"#,
        ] {
            let c: Control = serde_json::from_str(json).unwrap();
            let back: Control = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
            assert_eq!(c, back, "{json}");
        }
    }

    #[test]
    fn a_counted_fault_is_spent_after_its_calls() {
        let mut f = Fault::new(FaultKind::EmptyBody, Some(2));
        assert_eq!(f.take(), Some(FaultKind::EmptyBody));
        assert!(!f.spent());
        assert_eq!(f.take(), Some(FaultKind::EmptyBody));
        assert!(f.spent());
        assert_eq!(f.take(), None);
        let mut forever = Fault::new(FaultKind::EmptyBody, None);
        for _ in 0..100 {
            assert!(forever.take().is_some());
        }
    }

    #[test]
    fn every_endpoint_name_is_known_and_nothing_else() {
        assert!(known_endpoint("session_create").is_ok());
        assert!(known_endpoint("sessions").is_err());
        for e in ENDPOINTS {
            assert!(known_endpoint(e).is_ok());
        }
    }
}
