//! `arc-watchdog doctor`: checks, with the sidecar's own identity, every
//! API call `run` makes, without changing anything (writes are sent with
//! `dryRun=All`), and prints one line per check.

use std::fmt::Write as _;
use std::time::Duration;

use clap::Args;
use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{ListParams, LogParams, PostParams, WatchParams};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use super::args::Identity;
use super::evict::{EvictOutcome, EvictRetry, evict_pod};
use super::lease::{ANNOTATION_HISTORY, with_history};
use super::logs::{LogError, error_text};
use super::pod::{ListenerState, PodView};
use crate::detector::History;
use crate::names;

/// Flags of `arc-watchdog doctor`.
#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// The own pod.
    #[command(flatten)]
    pub identity: Identity,

    /// Name of the listener container.
    #[arg(long, env = "ARC_WATCHDOG_LISTENER_CONTAINER", default_value = names::LISTENER_CONTAINER)]
    pub listener_container: String,

    /// Lease holding the history [default: arc-watchdog-$POD_NAME].
    #[arg(long, env = "ARC_WATCHDOG_LEASE_NAME")]
    pub lease_name: Option<String>,
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// Passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
}

fn check(name: &'static str, res: Result<String, String>) -> Check {
    match res {
        Ok(detail) => Check {
            name,
            ok: true,
            detail,
        },
        Err(detail) => Check {
            name,
            ok: false,
            detail,
        },
    }
}

const STEP_TIMEOUT: Duration = Duration::from_secs(10);

async fn timed<T>(
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(STEP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error_text(&e)),
        Err(_) => Err(format!("no answer within {STEP_TIMEOUT:?}")),
    }
}

/// Runs every check with `client` as the sidecar would.
pub async fn checks(client: &Client, args: &DoctorArgs) -> Vec<Check> {
    let id = &args.identity;
    let ns = &id.pod_namespace;
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let leases = Api::<Lease>::namespaced(client.clone(), ns);
    let lease_name = args
        .lease_name
        .clone()
        .unwrap_or_else(|| names::lease_name(&id.pod_name));
    let mut out = Vec::new();

    let pod = timed(pods.get(&id.pod_name)).await;
    out.push(check(
        "get own pod",
        pod.as_ref().map_err(Clone::clone).and_then(|p| {
            let v = PodView::from_pod(p, &args.listener_container);
            if id.pod_uid.is_some() && v.uid != id.pod_uid {
                return Err(format!(
                    "UID {:?} differs from POD_UID {:?}",
                    v.uid, id.pod_uid
                ));
            }
            let listener = match &v.listener {
                None => return Err(format!("no container named {:?}", args.listener_container)),
                Some(l) => match &l.state {
                    ListenerState::Running { .. } => "running".to_owned(),
                    ListenerState::Terminated { exit_code, .. } => {
                        format!("terminated ({exit_code})")
                    }
                    ListenerState::Waiting(r) => {
                        format!("waiting ({})", r.as_deref().unwrap_or("not started"))
                    }
                },
            };
            let mut d = format!(
                "{ns}/{} phase {}, listener {listener}",
                id.pod_name,
                v.phase.as_deref().unwrap_or("unknown")
            );
            match &v.owner {
                Some(o) => {
                    let _ = write!(
                        d,
                        ", owned by AutoscalingListener {}",
                        o.name.as_deref().unwrap_or("")
                    );
                }
                None => d.push_str(", no AutoscalingListener owner (Events go to the pod only)"),
            }
            if let Some(w) = v
                .version_label
                .as_deref()
                .and_then(crate::detector::version_warning)
            {
                let _ = write!(d, "; version warning: {}", w.message);
            }
            Ok(d)
        }),
    ));

    let fields = format!("metadata.name={}", id.pod_name);
    out.push(check(
        "list own pod by field selector",
        timed(pods.list(&ListParams::default().fields(&fields)))
            .await
            .and_then(|l| {
                if l.items.len() == 1 {
                    Ok("1 pod".to_owned())
                } else {
                    Err(format!("{} pods", l.items.len()))
                }
            }),
    ));

    let watch = async {
        let wp = WatchParams::default().fields(&fields).timeout(1);
        let stream = pods.watch(&wp, "0").await?;
        let mut stream = stream.boxed();
        // The first event or the end of the 1 s watch: either proves it.
        match tokio::time::timeout(Duration::from_secs(3), stream.next()).await {
            Ok(Some(Err(e))) => Err(e),
            _ => Ok("watch opened".to_owned()),
        }
    };
    out.push(check("watch own pod", timed(watch).await));

    let log = async {
        let lp = LogParams {
            container: Some(args.listener_container.clone()),
            limit_bytes: Some(1),
            timestamps: true,
            ..LogParams::default()
        };
        let mut stream = pods
            .log_stream(&id.pod_name, &lp)
            .await
            .map_err(|e| LogError::from_kube(&e))?;
        let mut buf = Vec::new();
        let _ = stream.read_until(b'\n', &mut buf).await;
        Ok::<_, LogError>("log readable".to_owned())
    };
    let log = match tokio::time::timeout(STEP_TIMEOUT, log).await {
        Ok(Ok(v)) => Ok(v),
        // The container has not started (the start gate, image pull): the
        // permission is there.
        Ok(Err(LogError::NotRunning(e))) => Ok(format!("permitted; container not started: {e}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {STEP_TIMEOUT:?}")),
    };
    out.push(check("read listener log", log));

    let lease = timed(leases.get(&lease_name)).await;
    out.push(check(
        "get Lease",
        lease.as_ref().map_err(Clone::clone).map(|l| {
            match l
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_HISTORY))
            {
                None => format!("{lease_name}: no history yet"),
                Some(h) => match History::from_json(h) {
                    Ok(h) => format!(
                        "{lease_name}: history with {} conflicts, {} evictions, loop {}",
                        h.conflicts.len(),
                        h.evictions.len(),
                        if h.loop_state.is_some() {
                            "active"
                        } else {
                            "inactive"
                        }
                    ),
                    Err(e) => format!("{lease_name}: unreadable history ({e}); run starts afresh"),
                },
            }
        }),
    ));
    if let Ok(l) = lease {
        let history = l
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_HISTORY).cloned())
            .unwrap_or_else(|| History::default().to_json());
        let updated = with_history(l, &history, &id.pod_name, jiff::Timestamp::now());
        let pp = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        out.push(check(
            "update Lease (dry run)",
            timed(leases.replace(&lease_name, &pp, &updated))
                .await
                .map(|_| "permitted".to_owned()),
        ));
    }

    let never = CancellationToken::new();
    let retry = EvictRetry {
        attempts: 1,
        ..EvictRetry::default()
    };
    let evict = evict_pod(
        client,
        ns,
        &id.pod_name,
        id.pod_uid.as_deref(),
        true,
        &retry,
        &never,
    );
    let evict = match tokio::time::timeout(STEP_TIMEOUT, evict).await {
        Ok(EvictOutcome::DryRunAccepted) => Ok("permitted (dry run, nothing evicted)".to_owned()),
        Ok(EvictOutcome::Blocked { last, .. }) => Ok(format!(
            "permitted, but a PodDisruptionBudget blocks it now: {last}"
        )),
        Ok(other) => Err(format!("{other:?}")),
        Err(_) => Err(format!("no answer within {STEP_TIMEOUT:?}")),
    };
    out.push(check("evict own pod (dry run)", evict));

    let events = Api::<K8sEvent>::namespaced(client.clone(), ns);
    let ev: K8sEvent = serde_json::from_value(serde_json::json!({
        "metadata": { "generateName": "arc-watchdog-doctor-", "namespace": ns },
        "eventTime": jiff::Timestamp::now().to_string(),
        "reportingController": super::events::REPORTING_CONTROLLER,
        "reportingInstance": id.pod_name,
        "action": "Doctor",
        "reason": "Doctor",
        "type": "Normal",
        "note": "arc-watchdog doctor dry run",
        "regarding": { "apiVersion": "v1", "kind": "Pod", "name": id.pod_name, "namespace": ns },
    }))
    .unwrap_or_default();
    let pp = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    out.push(check(
        "create Event (dry run)",
        timed(events.create(&pp, &ev))
            .await
            .map(|_| "permitted".to_owned()),
    ));
    out
}

/// Formats the checks, one line each.
pub fn format_report(checks: &[Check]) -> String {
    let mut s = String::new();
    for c in checks {
        let _ = writeln!(
            s,
            "{:4}  {:32}  {}",
            if c.ok { "ok" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    s
}

/// `arc-watchdog doctor`: prints the report on stdout; fails when a check
/// failed.
pub async fn doctor(args: DoctorArgs) -> anyhow::Result<()> {
    if args.identity.pod_name.is_empty() || args.identity.pod_namespace.is_empty() {
        anyhow::bail!(
            "identity incomplete: set --pod-name/{} and --pod-namespace/{}",
            names::ENV_POD_NAME,
            names::ENV_POD_NAMESPACE
        );
    }
    let client = super::default_client().await?;
    let results = checks(&client, &args).await;
    print!("{}", format_report(&results));
    let failed = results.iter().filter(|c| !c.ok).count();
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} checks failed: the sidecar fails open without these permissions",
            results.len()
        );
    }
    println!("all {} checks passed", results.len());
    Ok(())
}
