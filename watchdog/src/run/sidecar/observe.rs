//! What the sidecar sees, handed to the detector: the own pod's changes
//! (runs started and ended), the listener's log lines, and the shutdown
//! drain that reads what a lagging log stream had not delivered yet.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use tracing::{debug, info, warn};

use super::{DRAIN_TAIL_LINES, END_WAITS_FOR_LOG, Sidecar};
use crate::detector::Input;
use crate::run::gate;
use crate::run::logs::{FollowConfig, FollowerMsg, LogError, follow_run, read_log_once};
use crate::run::pod::{ListenerState, PodView, Transition};

impl Sidecar {
    /// On shutdown: reads the listener's log once (what the follow stream
    /// had not delivered yet) and its end (from the last pod status, or one
    /// fresh look), so that the run's conflict and failed start reach the
    /// last save. Any failure ends the drain: the exit is never held.
    pub(super) async fn drain(&mut self) {
        self.draining = true;
        let ended = |v: &PodView| {
            v.listener
                .as_ref()
                .is_some_and(|l| matches!(l.state, ListenerState::Terminated { .. }))
        };
        if !ended(&self.view) {
            match self.pods.get(&self.args.identity.pod_name).await {
                Ok(pod) => self.on_pod(&pod),
                Err(e) => {
                    self.shared.metrics.api_error(gate::OP_POD_GET);
                    warn!(error = %crate::run::logs::error_text(&e), "shutdown: re-reading the pod failed; saving what is known");
                    return;
                }
            }
        }
        let Some(container_id) = self
            .view
            .listener
            .as_ref()
            .and_then(|l| l.container_id.clone())
        else {
            return;
        };
        let since = self
            .detector
            .history()
            .run
            .as_ref()
            .filter(|r| r.id == container_id)
            .and_then(|r| r.high_water);
        let lines = match read_log_once(
            &self.pods,
            &self.args.identity.pod_name,
            &self.args.listener_container,
            &container_id,
            since,
            DRAIN_TAIL_LINES,
        )
        .await
        {
            Ok(lines) => lines,
            Err(e) => {
                warn!(error = %e, "shutdown: reading the listener's log failed; saving what is known");
                return;
            }
        };
        for line in lines {
            self.on_follower(FollowerMsg::Line(line));
        }
        // The log is read to its end now: the run's end follows its lines.
        let ids: Vec<String> = self.pending_ends.keys().cloned().collect();
        for id in ids {
            self.flush_end(&id);
        }
    }

    pub(super) fn on_pod_event(&mut self, ev: watcher::Event<Pod>) {
        match ev {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => self.on_pod(&pod),
            watcher::Event::Delete(_) => {
                info!("the own pod was deleted");
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }

    pub(super) fn on_pod(&mut self, pod: &Pod) {
        let now = Timestamp::now();
        self.shared.with_gate(|g| {
            g.record_ok(gate::OP_POD_WATCH);
            g.set_pod_seen();
        });
        let view = PodView::from_pod(pod, &self.args.listener_container);
        if view.listener.is_none() {
            warn!(container = %self.args.listener_container, "the own pod has no such listener container");
        }
        self.view = view.clone();
        self.pod_tx.send_replace(view.clone());
        self.version_warning(&view);
        self.check_plain_init(now);

        for t in self.tracker.observe(&view) {
            match t {
                Transition::RunStarted { container_id, at } => {
                    // An earlier run's end goes first.
                    let ids: Vec<String> = self.pending_ends.keys().cloned().collect();
                    for id in ids {
                        self.flush_end(&id);
                    }
                    // The earlier runs' followers stop: the log the API
                    // serves now is the new run's, and what they still
                    // deliver would be counted for the new run.
                    let old: Vec<String> = self
                        .followers
                        .keys()
                        .filter(|id| **id != container_id)
                        .cloned()
                        .collect();
                    for id in old {
                        if let Some(task) = self.followers.remove(&id) {
                            task.abort();
                            info!(container_id = %id, "a new listener run started: stopped following the earlier run's log");
                        }
                    }
                    self.current_run = Some(container_id.clone());
                    let in_place = view.listener.as_ref().is_some_and(|l| l.restart_count > 0);
                    info!(container_id = %container_id, in_place, "listener run started");
                    self.feed(Input::RunStarted {
                        at: at.unwrap_or(now),
                        run_id: container_id.clone(),
                        in_place,
                    });
                    self.start_follower(container_id);
                }
                Transition::RunEnded {
                    container_id,
                    exit_code,
                    reason,
                    at,
                    pod_alive,
                } => {
                    self.shared.metrics.listener_restarts.inc();
                    info!(container_id = %container_id, exit_code, reason = reason.as_deref().unwrap_or(""),
                        pod_alive, "listener run ended");
                    let input = Input::RunEnded {
                        at: at.unwrap_or(now),
                        exit_code: Some(exit_code),
                        pod_lives_on: pod_alive,
                    };
                    if self.followers.contains_key(&container_id) || self.draining {
                        let deadline = now.saturating_add(END_WAITS_FOR_LOG).unwrap_or(now);
                        self.pending_ends.insert(container_id, (deadline, input));
                    } else {
                        self.feed(input);
                    }
                }
                Transition::PodTerminating => info!("the own pod is terminating"),
            }
        }
    }

    pub(super) fn flush_end(&mut self, container_id: &str) {
        if let Some((_, input)) = self.pending_ends.remove(container_id) {
            self.feed(input);
        }
    }

    pub(super) fn start_follower(&mut self, container_id: String) {
        if self.followers.contains_key(&container_id) || self.cancel.is_cancelled() {
            return;
        }
        let cfg = FollowConfig {
            pod: self.args.identity.pod_name.clone(),
            container: self.args.listener_container.clone(),
            container_id: container_id.clone(),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        };
        let task = tokio::spawn(follow_run(
            self.pods.clone(),
            cfg,
            self.pod_tx.subscribe(),
            self.follow_tx.clone(),
            self.cancel.child_token(),
        ));
        self.followers.insert(container_id, task);
    }

    pub(super) fn on_follower(&mut self, msg: FollowerMsg) {
        match msg {
            FollowerMsg::Line(line) => {
                if self
                    .current_run
                    .as_ref()
                    .is_some_and(|cur| *cur != line.container_id)
                {
                    // Delivered after a new run started (its follower was
                    // stopped then): not the current run's line.
                    debug!(container_id = %line.container_id, event = ?line.event,
                        "a line of an earlier listener run came after a new run started; not counted");
                    return;
                }
                let at = line.ts.unwrap_or_else(Timestamp::now);
                if line.event.is_conflict() || line.event.is_fatal() {
                    info!(container_id = %line.container_id, event = ?line.event,
                        line = %String::from_utf8_lossy(&line.text), "listener line");
                }
                self.feed(Input::Entry {
                    at,
                    event: line.event,
                    key: line.key,
                });
            }
            FollowerMsg::Connected => self.shared.with_gate(|g| g.record_ok(gate::OP_LOG)),
            // The container is not running yet (or any more): not an API
            // failure.
            FollowerMsg::Error(LogError::NotRunning(_)) => {}
            FollowerMsg::Error(e) => {
                warn!(error = %e, "following the listener's log failed; retrying with backoff");
                self.shared.metrics.api_error(gate::OP_LOG);
                let now = Timestamp::now();
                self.shared
                    .with_gate(|g| g.record_error(gate::OP_LOG, e.to_string(), now));
            }
            FollowerMsg::Ended { container_id } => {
                if let Some(task) = self.followers.remove(&container_id) {
                    task.abort();
                }
                self.flush_end(&container_id);
            }
        }
    }
}
