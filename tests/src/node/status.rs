//! What the fake node reports about its pods, on a test's request: a pod
//! running and ready, a container terminated or restarted in place, each
//! with its log stream ended or started afresh as the kubelet's would be.

use anyhow::{Context as _, Result};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};

use super::FakeNode;

impl FakeNode {
    /// Writes a pod's status (what a kubelet reports) by a merge patch of
    /// `status`, e.g. from [`running_status`].
    pub async fn set_pod_status(
        &self,
        ns: &str,
        pod: &str,
        status: serde_json::Value,
    ) -> Result<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        pods.patch_status(
            pod,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": status})),
        )
        .await
        .with_context(|| format!("writing status of {ns}/{pod}"))
    }

    /// Marks every container of the pod running and ready, phase Running.
    pub async fn set_running(&self, ns: &str, pod: &str) -> Result<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let p = pods
            .get(pod)
            .await
            .with_context(|| format!("reading {ns}/{pod}"))?;
        self.set_pod_status(ns, pod, running_status(&p)).await
    }

    /// Binds the pod to this node and reports it running and ready (the
    /// scheduler's and the kubelet's part of starting a pod, without running
    /// anything). Returns the pod with that status.
    pub async fn run_pod(&self, ns: &str, pod: &str) -> Result<Pod> {
        self.bind(ns, pod).await?;
        self.set_running(ns, pod).await
    }

    /// Reports a container's current run as terminated with `exit_code`
    /// (what the kubelet reports when the process exits) and ends its log
    /// stream. `phase`, when given, is written too (e.g. `Failed` when the
    /// only regular container of a `restartPolicy: Never` pod failed).
    pub async fn terminate_container(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        exit_code: i32,
        phase: Option<&str>,
    ) -> Result<Pod> {
        self.logs.end(ns, pod, container);
        let now = Timestamp::now().to_string();
        self.edit_container_status(ns, pod, container, phase, |st| {
            let started = st["state"]["running"]["startedAt"].clone();
            st["state"] = serde_json::json!({"terminated": {
                "exitCode": exit_code, "reason": if exit_code == 0 { "Completed" } else { "Error" },
                "startedAt": started, "finishedAt": now, "containerID": st["containerID"].clone(),
            }});
            st["ready"] = false.into();
            st["started"] = false.into();
        })
        .await
    }

    /// Reports that a container restarted in place (new container ID,
    /// restartCount + 1, the old run as `lastState`); its log starts afresh
    /// (the old one becomes `previous`).
    pub async fn restart_container(&self, ns: &str, pod: &str, container: &str) -> Result<Pod> {
        self.logs.restart(ns, pod, container);
        let now = Timestamp::now().to_string();
        let p: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let uid = p.get(pod).await?.metadata.uid.unwrap_or_default();
        self.edit_container_status(ns, pod, container, None, |st| {
            let count = st["restartCount"].as_i64().unwrap_or(0) + 1;
            let last = st["state"].clone();
            st["lastState"] = last;
            st["restartCount"] = count.into();
            st["containerID"] =
                container_id(&uid, container, i32::try_from(count).unwrap_or(i32::MAX)).into();
            st["state"] = serde_json::json!({"running": {"startedAt": now}});
            st["ready"] = true.into();
            st["started"] = true.into();
        })
        .await
    }

    async fn edit_container_status(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        phase: Option<&str>,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> Result<Pod> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let current = api
            .get(pod)
            .await
            .with_context(|| format!("reading {ns}/{pod}"))?;
        let mut status = serde_json::to_value(current.status.unwrap_or_default())?;
        let mut edit = Some(edit);
        for list in ["containerStatuses", "initContainerStatuses"] {
            if let Some(items) = status[list].as_array_mut() {
                for st in items.iter_mut().filter(|st| st["name"] == container) {
                    if let Some(f) = edit.take() {
                        f(st);
                    }
                }
            }
        }
        anyhow::ensure!(
            edit.is_none(),
            "{ns}/{pod} has no status for container {container}"
        );
        if let Some(phase) = phase {
            status["phase"] = phase.into();
        }
        // A merge patch replaces lists whole: send both complete lists.
        let patch = serde_json::json!({"status": {
            "phase": status["phase"].clone(),
            "containerStatuses": status["containerStatuses"].clone(),
            "initContainerStatuses": status["initContainerStatuses"].clone(),
        }});
        api.patch_status(pod, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .with_context(|| format!("writing status of {ns}/{pod}"))
    }
}

/// The container ID the fake kubelet reports: unique per pod, container
/// and run (the watchdog tells runs apart by it).
pub fn container_id(pod_uid: &str, container: &str, restart_count: i32) -> String {
    format!("fake://{pod_uid}/{container}/{restart_count}")
}

/// A `status` for [`FakeNode::set_pod_status`]: phase Running, Ready, every
/// container (and restartable init container) running and ready.
pub fn running_status(pod: &Pod) -> serde_json::Value {
    let now = Timestamp::now().to_string();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let state = |name: &str, image: &str| {
        serde_json::json!({
            "name": name, "image": image, "imageID": "", "ready": true, "started": true, "restartCount": 0,
            "containerID": container_id(&uid, name, 0),
            "state": {"running": {"startedAt": now}},
        })
    };
    let containers: Vec<_> = spec
        .containers
        .iter()
        .map(|c| state(&c.name, c.image.as_deref().unwrap_or("")))
        .collect();
    let inits: Vec<_> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| state(&c.name, c.image.as_deref().unwrap_or("")))
        .collect();
    serde_json::json!({
        "phase": "Running",
        "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
        "startTime": now,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
        ],
        "containerStatuses": containers,
        "initContainerStatuses": inits,
    })
}
