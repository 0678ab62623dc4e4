//! `--sidecar-mode auto`: native sidecars only where every part of the
//! cluster that runs a listener pod has them on by default.
//!
//! Native sidecars (init containers with `restartPolicy: Always`) are beta
//! and on by default from Kubernetes 1.29. An older API server silently
//! drops `restartPolicy` from init containers; an older kubelet (a node may
//! run up to three minors behind the API server, and upgrades do the control
//! plane first) runs the watchdog as an ordinary init container that never
//! exits, as does a 1.28 kubelet without the `SidecarContainers` gate. Either
//! way the listener would never start. So `auto` is native only when the API
//! server says 1.29 or newer **and** every Linux node (listener pods run on
//! Linux) has a kubelet of 1.29 or newer, re-evaluated as nodes join, leave
//! or are upgraded; classic whenever any of it is unknown. A pod that still
//! lands on an old kubelet (a node that joined after its admission) is
//! covered by the watchdog itself, which steps aside when it finds itself
//! run as a plain init container.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::version::Info;
use kube::api::Api;
use kube::runtime::{WatchStreamExt as _, watcher};

use crate::mutation::SidecarMode;

/// First Kubernetes minor version (of major 1) with native sidecars on by default.
pub const NATIVE_SIDECARS_SINCE_MINOR: u32 = 29;

/// A Kubernetes major and minor version.
pub type Version = (u32, u32);

/// What `--sidecar-mode` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SidecarModeFlag {
    /// Native where the API server and every Linux node's kubelet are 1.29
    /// or newer, classic otherwise.
    Auto,
    /// Always native (init container with `restartPolicy: Always`).
    Native,
    /// Always classic (a regular container).
    Classic,
}

fn leading_number(s: &str) -> Option<u32> {
    let digits: String = s.trim().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Major and minor version of a `v1.29.3-eks-...` string (a `gitVersion`, a
/// node's `kubeletVersion`).
pub fn git_version(s: &str) -> Option<Version> {
    let git = s.trim().strip_prefix('v')?;
    let mut parts = git.splitn(3, '.');
    let major = leading_number(parts.next()?)?;
    let minor = leading_number(parts.next()?)?;
    Some((major, minor))
}

/// Major and minor version from `/version`. Managed clusters report minors
/// such as `29+`; when `major`/`minor` are empty, `gitVersion`
/// (`v1.29.3-eks-...`) is used.
pub fn server_version(info: &Info) -> Option<Version> {
    if let (Some(major), Some(minor)) = (leading_number(&info.major), leading_number(&info.minor)) {
        return Some((major, minor));
    }
    git_version(&info.git_version)
}

fn has_native_sidecars(v: Version) -> bool {
    v.0 > 1 || (v.0 == 1 && v.1 >= NATIVE_SIDECARS_SINCE_MINOR)
}

/// The mode `auto` uses for a server that reported `info` (`None`: the
/// server could not be asked), kubelets aside.
pub fn mode_for_version(info: Option<&Info>) -> SidecarMode {
    match info.and_then(server_version) {
        Some(v) if has_native_sidecars(v) => SidecarMode::Native,
        _ => SidecarMode::Classic,
    }
}

/// What `auto` decides from: the API server's version and the kubelet
/// version of every Linux node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cluster {
    /// The API server's version; `None` while unknown.
    pub apiserver: Option<Version>,
    /// Kubelet version by Linux node name (`None` in the map: a node whose
    /// version cannot be read); `None` until the nodes were listed.
    pub kubelets: Option<BTreeMap<String, Option<Version>>>,
}

impl Cluster {
    /// The mode for this cluster, and when it is classic, why (for the log).
    pub fn auto_mode(&self) -> (SidecarMode, Option<String>) {
        let classic = |why: String| (SidecarMode::Classic, Some(why));
        match self.apiserver {
            None => return classic("the API server's version is unknown".to_owned()),
            Some(v) if !has_native_sidecars(v) => {
                return classic(format!("the API server is {}.{}", v.0, v.1));
            }
            Some(_) => {}
        }
        let Some(kubelets) = &self.kubelets else {
            return classic(
                "the nodes' kubelet versions are unknown (cannot list nodes)".to_owned(),
            );
        };
        if kubelets.is_empty() {
            return classic("no Linux node has registered yet".to_owned());
        }
        let old: Vec<String> = kubelets
            .iter()
            .filter(|(_, v)| !v.is_some_and(has_native_sidecars))
            .map(|(node, v)| match v {
                Some((major, minor)) => format!("{node} ({major}.{minor})"),
                None => format!("{node} (unknown)"),
            })
            .collect();
        if old.is_empty() {
            (SidecarMode::Native, None)
        } else {
            classic(format!(
                "kubelets older than 1.{NATIVE_SIDECARS_SINCE_MINOR} run native sidecars as init containers that never end: {}",
                old.join(", ")
            ))
        }
    }
}

/// The kubelet version of a node that can run listener pods; `None` for a
/// node that cannot (not Linux), `Some(None)` for one whose version cannot
/// be read.
pub fn linux_kubelet(node: &Node) -> Option<Option<Version>> {
    let os_label = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubernetes.io/os"))
        .map(String::as_str);
    let info = node.status.as_ref().and_then(|s| s.node_info.as_ref());
    let os = os_label.or(info.map(|i| i.operating_system.as_str()));
    // A node that says nothing about its OS may run a listener.
    if os.is_some_and(|os| !os.is_empty() && os != "linux") {
        return None;
    }
    Some(info.and_then(|i| git_version(&i.kubelet_version)))
}

/// The mode in force, shared between the refreshers and the request
/// handlers; with `auto`, recomputed whenever what it depends on changes.
#[derive(Debug)]
pub struct ModeCell {
    mode: AtomicU8,
    cluster: Mutex<Cluster>,
}

impl ModeCell {
    /// A cell holding `mode`.
    pub fn new(mode: SidecarMode) -> Self {
        Self {
            mode: AtomicU8::new(Self::encode(mode)),
            cluster: Mutex::new(Cluster::default()),
        }
    }

    fn encode(mode: SidecarMode) -> u8 {
        match mode {
            SidecarMode::Native => 1,
            SidecarMode::Classic => 0,
        }
    }

    /// The mode to use now.
    pub fn get(&self) -> SidecarMode {
        if self.mode.load(Ordering::Relaxed) == 1 {
            SidecarMode::Native
        } else {
            SidecarMode::Classic
        }
    }

    /// Sets the mode; returns the previous one.
    pub fn set(&self, mode: SidecarMode) -> SidecarMode {
        if self.mode.swap(Self::encode(mode), Ordering::Relaxed) == 1 {
            SidecarMode::Native
        } else {
            SidecarMode::Classic
        }
    }

    /// Changes what `auto` knows of the cluster with `change` and sets the
    /// mode it gives, logging a change.
    pub fn update(&self, change: impl FnOnce(&mut Cluster)) -> SidecarMode {
        // A panic while holding the lock leaves a plain value behind:
        // still usable.
        let mut cluster = self
            .cluster
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut cluster);
        let (mode, why) = cluster.auto_mode();
        drop(cluster);
        let previous = self.set(mode);
        if previous != mode {
            match why {
                None => tracing::info!(
                    mode = mode.as_str(),
                    "sidecar mode: the API server and every Linux node's kubelet have native sidecars"
                ),
                Some(why) => tracing::warn!(mode = mode.as_str(), reason = %why, "sidecar mode"),
            }
        }
        mode
    }
}

/// How often `auto` asks the API server again after a success (an upgrade
/// of the control plane switches the mode without a webhook restart).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(600);
/// How soon `auto` asks again after a failure.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(30);

/// Asks the API server for its version once and updates `cell`. Returns the
/// delay until the next check.
pub async fn refresh_once(client: &kube::Client, cell: &ModeCell) -> Duration {
    match client.apiserver_version().await {
        Ok(info) => {
            let version = server_version(&info);
            cell.update(|c| c.apiserver = version);
            REFRESH_INTERVAL
        }
        Err(err) => {
            // Never known: the cell still holds classic, the safe choice
            // (see the module doc). Known before: a failed request does not
            // change the server's version, so the last answer stands.
            tracing::warn!(
                error = %err,
                mode = cell.get().as_str(),
                "could not read the API server's version; keeping the current sidecar mode"
            );
            RETRY_INTERVAL
        }
    }
}

/// Keeps `cell` in line with the API server's version until cancelled.
pub async fn refresh_loop(client: kube::Client, cell: Arc<ModeCell>) {
    loop {
        let delay = refresh_once(&client, &cell).await;
        tokio::time::sleep(delay).await;
    }
}

/// Keeps `cell` in line with the nodes' kubelet versions until cancelled:
/// a watch of every Node. While the watch fails (no rights, API server
/// away), the last complete list stands; before the first one, `auto` is
/// classic.
/// `listed` is told when the first complete list is in.
pub async fn watch_kubelets(
    client: kube::Client,
    cell: Arc<ModeCell>,
    listed: tokio::sync::oneshot::Sender<()>,
) {
    let mut listed = Some(listed);
    let nodes: Api<Node> = Api::all(client);
    let mut stream = watcher(nodes, watcher::Config::default())
        .default_backoff()
        .boxed();
    // Nodes seen since the last (re)list began; swapped in at InitDone.
    let mut listing: BTreeMap<String, Option<Version>> = BTreeMap::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => listing.clear(),
            Ok(watcher::Event::InitApply(node)) => {
                if let Some(v) = linux_kubelet(&node) {
                    listing.insert(node.metadata.name.unwrap_or_default(), v);
                }
            }
            Ok(watcher::Event::InitDone) => {
                let complete = std::mem::take(&mut listing);
                cell.update(|c| c.kubelets = Some(complete));
                if let Some(listed) = listed.take() {
                    let _ = listed.send(());
                }
            }
            Ok(watcher::Event::Apply(node)) => {
                let name = node.metadata.name.clone().unwrap_or_default();
                let version = linux_kubelet(&node);
                cell.update(|c| {
                    let map = c.kubelets.get_or_insert_with(BTreeMap::new);
                    match version {
                        Some(v) => map.insert(name, v),
                        None => map.remove(&name),
                    };
                });
            }
            Ok(watcher::Event::Delete(node)) => {
                let name = node.metadata.name.unwrap_or_default();
                cell.update(|c| {
                    if let Some(map) = c.kubelets.as_mut() {
                        map.remove(&name);
                    }
                });
            }
            Err(err) => tracing::warn!(
                error = %err,
                mode = cell.get().as_str(),
                "cannot list or watch nodes (retrying with backoff); the sidecar mode stays as it is"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(major: &str, minor: &str, git: &str) -> Info {
        Info {
            major: major.to_owned(),
            minor: minor.to_owned(),
            git_version: git.to_owned(),
            ..Info::default()
        }
    }

    #[test]
    fn native_from_1_29() {
        let cases = [
            (info("1", "28", "v1.28.9"), SidecarMode::Classic),
            (info("1", "29", "v1.29.0"), SidecarMode::Native),
            (info("1", "34", "v1.34.1"), SidecarMode::Native),
            (
                info("1", "27+", "v1.27.16-eks-2f46c53"),
                SidecarMode::Classic,
            ),
            (info("1", "30+", "v1.30.2-gke.1"), SidecarMode::Native),
            (info("", "", "v1.29.3-eks-1"), SidecarMode::Native),
            (info("", "", "v1.28.3"), SidecarMode::Classic),
            (info("2", "0", "v2.0.0"), SidecarMode::Native),
            (
                info("0", "0", "v0.0.0-master+$Format:%H$"),
                SidecarMode::Classic,
            ),
        ];
        for (i, want) in cases {
            assert_eq!(mode_for_version(Some(&i)), want, "{i:?}");
        }
    }

    #[test]
    fn unknown_is_classic() {
        assert_eq!(mode_for_version(None), SidecarMode::Classic);
        assert_eq!(
            mode_for_version(Some(&info("", "", ""))),
            SidecarMode::Classic
        );
        assert_eq!(
            mode_for_version(Some(&info("x", "y", "garbage"))),
            SidecarMode::Classic
        );
        assert_eq!(server_version(&info("", "", "v1")), None);
    }

    fn node(name: &str, os: Option<&str>, kubelet: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": os.map(|os| serde_json::json!({"kubernetes.io/os": os}))},
            "status": {"nodeInfo": {
                "kubeletVersion": kubelet, "operatingSystem": os.unwrap_or(""),
                "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "", "kernelVersion": "",
                "kubeProxyVersion": "", "machineID": "", "osImage": "", "systemUUID": "",
            }},
        }))
        .unwrap()
    }

    fn cluster(apiserver: Option<Version>, nodes: &[Node]) -> Cluster {
        Cluster {
            apiserver,
            kubelets: Some(
                nodes
                    .iter()
                    .filter_map(|n| Some((n.metadata.name.clone().unwrap(), linux_kubelet(n)?)))
                    .collect(),
            ),
        }
    }

    #[test]
    fn native_only_when_every_linux_kubelet_has_native_sidecars() {
        let new = node("new", Some("linux"), "v1.30.2-eks-1");
        let old = node("old", Some("linux"), "v1.28.9");
        let windows = node("win", Some("windows"), "v1.27.1");
        let unlabelled = node("bare", None, "v1.29.0");
        let unreadable = node("odd", Some("linux"), "garbage");
        let native = |c: &Cluster| c.auto_mode().0 == SidecarMode::Native;
        assert!(native(&cluster(
            Some((1, 34)),
            &[new.clone(), unlabelled.clone()]
        )));
        assert!(
            native(&cluster(Some((1, 34)), &[new.clone(), windows.clone()])),
            "Windows nodes never run a listener"
        );
        let (mode, why) = cluster(Some((1, 34)), &[new.clone(), old.clone()]).auto_mode();
        assert_eq!(mode, SidecarMode::Classic);
        assert!(why.unwrap().contains("old (1.28)"));
        assert!(
            !native(&cluster(Some((1, 34)), &[new.clone(), unreadable])),
            "an unreadable kubelet version is not trusted"
        );
        assert!(
            !native(&cluster(Some((1, 28)), std::slice::from_ref(&new))),
            "an old API server"
        );
        assert!(
            !native(&cluster(None, std::slice::from_ref(&new))),
            "an unknown API server"
        );
        assert!(!native(&cluster(Some((1, 34)), &[])), "no node yet");
        let unlisted = Cluster {
            apiserver: Some((1, 34)),
            kubelets: None,
        };
        assert!(
            unlisted
                .auto_mode()
                .1
                .unwrap()
                .contains("cannot list nodes")
        );
    }

    #[test]
    fn the_cell_follows_nodes_joining_and_leaving() {
        let cell = ModeCell::new(SidecarMode::Classic);
        cell.update(|c| c.apiserver = Some((1, 34)));
        assert_eq!(cell.get(), SidecarMode::Classic, "nodes not listed yet");
        cell.update(|c| c.kubelets = Some([("a".to_owned(), Some((1, 34)))].into()));
        assert_eq!(cell.get(), SidecarMode::Native);
        cell.update(|c| {
            c.kubelets
                .as_mut()
                .unwrap()
                .insert("b".into(), Some((1, 27)));
        });
        assert_eq!(cell.get(), SidecarMode::Classic, "an old node joined");
        cell.update(|c| {
            c.kubelets.as_mut().unwrap().remove("b");
        });
        assert_eq!(cell.get(), SidecarMode::Native, "and left");
    }

    #[test]
    fn cell_round_trips() {
        let cell = ModeCell::new(SidecarMode::Classic);
        assert_eq!(cell.set(SidecarMode::Native), SidecarMode::Classic);
        assert_eq!(cell.get(), SidecarMode::Native);
    }
}
