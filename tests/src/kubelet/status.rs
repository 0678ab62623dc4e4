//! What the kubelet reports: each container's state, the pod phase and
//! conditions derived from them as a kubelet derives them, and the
//! `pods/status` writes, retried until they land (the API server may be
//! away for a while).

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::PodRun;

/// Runtime state of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    /// Not started (yet).
    Waiting(String),
    /// Running since.
    Running(Timestamp),
    /// Exited.
    Terminated {
        /// Exit code (128 + signal when killed).
        exit_code: i32,
        /// Started at.
        started: Timestamp,
        /// Finished at.
        finished: Timestamp,
    },
}

/// What the kubelet reports about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRun {
    /// Container name.
    pub name: String,
    /// Image.
    pub image: String,
    /// An init container (native sidecar or not).
    pub init: bool,
    /// A native sidecar (init container with `restartPolicy: Always`).
    pub sidecar: bool,
    /// Current state.
    pub state: ContainerState,
    /// The previous run's termination, if it restarted.
    pub last: Option<ContainerState>,
    /// Restarts so far.
    pub restart_count: i32,
    /// Startup probe passed (or none).
    pub started: bool,
}

/// The pod phase a kubelet reports for these container runs.
pub fn pod_phase(runs: &[ContainerRun], restart_policy: &str) -> &'static str {
    let inits_done = runs
        .iter()
        .filter(|r| r.init && !r.sidecar)
        .all(|r| matches!(r.state, ContainerState::Terminated { exit_code: 0, .. }));
    let init_failed = runs.iter().any(|r| {
        r.init
            && !r.sidecar
            && matches!(r.state, ContainerState::Terminated { exit_code, .. } if exit_code != 0)
    });
    if init_failed && restart_policy == "Never" {
        return "Failed";
    }
    let regular: Vec<&ContainerRun> = runs.iter().filter(|r| !r.init).collect();
    if !inits_done
        || regular
            .iter()
            .all(|r| matches!(r.state, ContainerState::Waiting(_)) && r.restart_count == 0)
    {
        return "Pending";
    }
    let all_done = regular
        .iter()
        .all(|r| matches!(r.state, ContainerState::Terminated { .. }));
    if !all_done {
        return "Running";
    }
    let all_ok = regular
        .iter()
        .all(|r| matches!(r.state, ContainerState::Terminated { exit_code: 0, .. }));
    match restart_policy {
        "Always" => "Running",
        "OnFailure" if !all_ok => "Running",
        _ if all_ok => "Succeeded",
        _ => "Failed",
    }
}

fn state_json(s: &ContainerState) -> serde_json::Value {
    match s {
        ContainerState::Waiting(reason) => json!({"waiting": {"reason": reason}}),
        ContainerState::Running(at) => json!({"running": {"startedAt": at.to_string()}}),
        ContainerState::Terminated {
            exit_code,
            started,
            finished,
        } => json!({"terminated": {
            "exitCode": exit_code,
            "reason": if *exit_code == 0 { "Completed" } else { "Error" },
            "startedAt": started.to_string(),
            "finishedAt": finished.to_string(),
        }}),
    }
}

/// The `status` a kubelet writes for these runs of the pod `pod_uid`.
pub fn pod_status(
    pod_uid: &str,
    runs: &[ContainerRun],
    restart_policy: &str,
    start: Timestamp,
) -> serde_json::Value {
    let phase = pod_phase(runs, restart_policy);
    let status_of = |r: &ContainerRun| {
        let running = matches!(r.state, ContainerState::Running(_));
        let mut v = json!({
            "name": r.name, "image": r.image, "imageID": "",
            // Unique per pod and run, as a container runtime's ids are: the
            // watchdog tells a new run (and a new pod generation) by it.
            "containerID": format!("process://{pod_uid}/{}/{}", r.name, r.restart_count),
            "ready": running && r.started,
            "started": running && r.started,
            "restartCount": r.restart_count,
            "state": state_json(&r.state),
        });
        if let Some(last) = &r.last {
            v["lastState"] = state_json(last);
        }
        v
    };
    let regular: Vec<_> = runs.iter().filter(|r| !r.init).map(status_of).collect();
    let inits: Vec<_> = runs.iter().filter(|r| r.init).map(status_of).collect();
    let all_ready = runs
        .iter()
        .filter(|r| !r.init || r.sidecar)
        .all(|r| matches!(r.state, ContainerState::Running(_)) && r.started);
    let inits_done = runs
        .iter()
        .filter(|r| r.init && !r.sidecar)
        .all(|r| matches!(r.state, ContainerState::Terminated { exit_code: 0, .. }));
    let b = |x: bool| if x { "True" } else { "False" };
    let now = Timestamp::now().to_string();
    json!({
        "phase": phase,
        "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
        "startTime": start.to_string(),
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": b(inits_done), "lastTransitionTime": now},
            {"type": "ContainersReady", "status": b(all_ready && phase == "Running"), "lastTransitionTime": now},
            {"type": "Ready", "status": b(all_ready && phase == "Running"), "lastTransitionTime": now},
        ],
        "containerStatuses": regular,
        "initContainerStatuses": inits,
    })
}

/// How soon a failed status write is tried again.
pub(super) const STATUS_RETRY: Duration = Duration::from_secs(1);

impl PodRun {
    pub(super) async fn write_status(&mut self) {
        let status = pod_status(&self.uid, &self.runs, &self.restart_policy, self.start);
        if self
            .last_status
            .as_ref()
            .is_some_and(|s| strip_times(s) == strip_times(&status))
        {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        // The uid makes the patch fail on a newer pod of the same name.
        let patch = json!({"metadata": {"uid": self.uid}, "status": status});
        match api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                self.last_status = Some(status);
                self.status_pending = false;
            }
            Err(e) => {
                // Retried until it lands, as the kubelet's status manager
                // does: the API server may be away for a while.
                self.status_pending = true;
                tracing::debug!(error = %e, pod = %self.name, "kubelet: status write failed");
            }
        }
    }
}

fn strip_times(v: &serde_json::Value) -> serde_json::Value {
    let mut v = v.clone();
    if let Some(conds) = v.get_mut("conditions").and_then(|c| c.as_array_mut()) {
        for c in conds {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastTransitionTime");
            }
        }
    }
    v
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn run(name: &str, init: bool, sidecar: bool, state: ContainerState) -> ContainerRun {
        ContainerRun {
            name: name.into(),
            image: "i".into(),
            init,
            sidecar,
            state,
            last: None,
            restart_count: 0,
            started: true,
        }
    }

    fn term(code: i32) -> ContainerState {
        ContainerState::Terminated {
            exit_code: code,
            started: Timestamp::UNIX_EPOCH,
            finished: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn phase_follows_regular_containers_not_native_sidecars() {
        let running = ContainerState::Running(Timestamp::UNIX_EPOCH);
        // Listener died, native sidecar still running, restartPolicy Never: Failed.
        let runs = [
            run("arc-watchdog", true, true, running.clone()),
            run("listener", false, false, term(1)),
        ];
        assert_eq!(pod_phase(&runs, "Never"), "Failed");
        // Same with a classic sidecar: the pod keeps Running (ARC 0.9.2 never notices).
        let runs = [
            run("listener", false, false, term(1)),
            run("arc-watchdog", false, false, running.clone()),
        ];
        assert_eq!(pod_phase(&runs, "Never"), "Running");
        // restartPolicy Always: Running even with the only container exited.
        let runs = [run("listener", false, false, term(1))];
        assert_eq!(pod_phase(&runs, "Always"), "Running");
        let runs = [run("listener", false, false, term(0))];
        assert_eq!(pod_phase(&runs, "Never"), "Succeeded");
        // Not started yet.
        let runs = [
            run("arc-watchdog", true, true, running),
            run(
                "listener",
                false,
                false,
                ContainerState::Waiting("PodInitializing".into()),
            ),
        ];
        assert_eq!(pod_phase(&runs, "Never"), "Pending");
    }

    #[test]
    fn status_reports_states_and_readiness() {
        let runs = [
            run(
                "arc-watchdog",
                true,
                true,
                ContainerState::Running(Timestamp::UNIX_EPOCH),
            ),
            run("listener", false, false, term(1)),
        ];
        let s = pod_status("uid-1", &runs, "Never", Timestamp::UNIX_EPOCH);
        assert_eq!(s["phase"], "Failed");
        assert_eq!(
            s["containerStatuses"][0]["state"]["terminated"]["exitCode"],
            1
        );
        assert_eq!(
            s["containerStatuses"][0]["state"]["terminated"]["reason"],
            "Error"
        );
        assert_eq!(s["initContainerStatuses"][0]["ready"], true);
        assert_eq!(s["conditions"][3]["status"], "False");
        // Runtime ids differ per pod and per run, as a real runtime's do.
        assert_eq!(
            s["containerStatuses"][0]["containerID"],
            "process://uid-1/listener/0"
        );
        let other = pod_status("uid-2", &runs, "Never", Timestamp::UNIX_EPOCH);
        assert_ne!(
            other["containerStatuses"][0]["containerID"],
            s["containerStatuses"][0]["containerID"]
        );
    }
}
