//! The optional monitoring component (`manifests/monitoring`) as its two
//! consumers take it:
//! - Prometheus: its own rule loader (strict YAML, PromQL, templates, through
//!   `promrules`, built from `tests/go/promrules`) accepts the alert rules;
//! - the Prometheus Operator: a real API server stores the PodMonitors and
//!   the PrometheusRule under the operator's own CRD schemas, with strict
//!   field validation, next to the rest of the install;
//! - and every `arc_watchdog_*` series an alert reads (as Prometheus's PromQL
//!   parser finds them) is one the running watchdog or webhook exports on
//!   `/metrics`;
//! - Grafana: every query of the dashboard (panels and variables) is PromQL
//!   that Prometheus's parser accepts and reads only series the binaries'
//!   registries export (and Prometheus's own `up`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

use std::collections::BTreeSet;
use std::process::Command;

use std::time::Duration;

use arc_watchdog::run::metrics::{Metrics as WatchdogMetrics, ReasonLabel, VersionWarningLabel};
use arc_watchdog_tests::control_plane::{
    ControlPlane, LISTENER_NAMESPACE, Options, WEBHOOK_NAMESPACE, WatchdogProcess, crd_pins,
    eventually, go_tool, metric_value, workspace_root,
};
use arc_watchdog_tests::node::FakeNode;
use arc_watchdog_tests::per_listener;
use arc_watchdog_webhook::mutation::SidecarMode;
use arc_watchdog_webhook::review::Outcome;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

const OPERATOR_MODULE: &str = "github.com/prometheus-operator/prometheus-operator";
const DEADLINE: Duration = Duration::from_secs(60);
/// A listener meeting a stale session (ARC's 409, as the listener writes it).
const CONFLICT: &str = "2026/03/02 04:10:02 Application returned an error: createSession failed: failed to create session: actions error: StatusCode 409, AcivityId \"3f5c9a2e\": GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi: The actions runner scaleset monitoring already has an active session.";

/// The PrometheusRule of the monitoring component.
fn prometheus_rule() -> Value {
    let path = workspace_root().join("manifests/monitoring/prometheusrule.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml_ng::from_str(&text).unwrap()
}

/// What `promrules` says of `rules` (a Prometheus rule file's content):
/// the rules it loaded, or everything it rejected.
fn promrules(rules: &Value) -> Result<Vec<Value>, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    std::fs::write(&file, serde_yaml_ng::to_string(rules).unwrap()).unwrap();
    let out = Command::new(go_tool("promrules").unwrap())
        .arg(&file)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn alert_names(spec: &Value) -> BTreeSet<String> {
    spec["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn prometheus_loads_every_alert_rule() {
    let spec = prometheus_rule()["spec"].clone();
    let loaded = promrules(&spec).unwrap_or_else(|e| panic!("Prometheus rejects the rules:\n{e}"));
    let names: BTreeSet<String> = loaded
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    let expected = alert_names(&spec);
    assert!(expected.len() >= 5, "{expected:?}");
    assert_eq!(names, expected);
    for rule in &loaded {
        assert_eq!(rule["kind"], "alert", "{rule}");
        assert!(
            !rule["metrics"].as_array().unwrap().is_empty(),
            "{} reads no metric",
            rule["name"]
        );
    }
}

/// The check above can fail: Prometheus refuses what it could not load.
#[test]
fn prometheus_rejects_broken_rules() {
    let spec = prometheus_rule()["spec"].clone();
    for (what, edit, says) in [
        (
            "PromQL",
            (
                "expr",
                Value::from("sum(rate(arc_watchdog_session_conflicts_total[5m])"),
            ),
            "parse error",
        ),
        ("duration", ("for", Value::from("15 minutes")), "duration"),
        (
            "template",
            (
                "annotations",
                serde_json::json!({"summary": "{{ $labels.pod "}),
            ),
            "annotation",
        ),
        (
            "unknown field",
            ("expression", Value::from("up")),
            "expression",
        ),
    ] {
        let mut broken = spec.clone();
        broken["groups"][0]["rules"][0][edit.0] = edit.1.clone();
        let err = promrules(&broken).expect_err(what);
        assert!(err.contains(says), "{what}: {err}");
    }
}

/// The Grafana dashboard of the monitoring component.
fn dashboard() -> Value {
    let path = workspace_root().join("manifests/monitoring/dashboard/arc-watchdog.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Series a dashboard may read besides the binaries' own: Prometheus's
/// scrape health of the webhook.
const PROMETHEUS_SERIES: &[&str] = &["up"];

/// Grafana's interval variables, replaced by a duration a range selector
/// takes; any other `$__` variable is refused.
const INTERVAL_VARIABLES: &[&str] = &["__rate_interval", "__interval", "__range"];

/// `expr` as Grafana hands it to Prometheus: each `$var` / `${var}` of a
/// declared template variable or an interval variable replaced by a value
/// of its kind. Errs on a variable the dashboard does not declare.
fn substitute(expr: &str, declared: &BTreeSet<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {expr}"))?;
            (&braced[..end], end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        if INTERVAL_VARIABLES.contains(&name) {
            out.push_str("5m");
        } else if declared.contains(name) {
            out.push_str("any");
        } else {
            return Err(format!(
                "${name} is not a variable of the dashboard: {expr}"
            ));
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Every PromQL query of `dash`, named by where it is: each panel target's
/// `expr` (rows' nested panels included) and the series selector of each
/// `label_values(SELECTOR, label)` variable.
fn dashboard_queries(dash: &Value) -> Vec<(String, String)> {
    fn panels<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            panels(&p["panels"], out);
        }
    }
    let mut all = Vec::new();
    panels(&dash["panels"], &mut all);
    let mut queries = Vec::new();
    for p in all {
        for t in p["targets"].as_array().into_iter().flatten() {
            let name = format!(
                "panel {:?} {}",
                p["title"].as_str().unwrap_or_default(),
                t["refId"].as_str().unwrap_or_default()
            );
            queries.push((name, t["expr"].as_str().unwrap_or_default().to_owned()));
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if v["type"] != "query" {
            continue;
        }
        let query = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap();
        let selector = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
            .map_or(query, |(selector, _label)| selector);
        queries.push((
            format!("variable {}", v["name"].as_str().unwrap_or_default()),
            selector.to_owned(),
        ));
    }
    queries
}

/// What `promrules -exprs` says of `queries`: the metrics each reads, or
/// everything it could not parse.
fn promexprs(queries: &[(String, String)]) -> Result<Vec<Value>, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("exprs.json");
    let json: Vec<Value> = queries
        .iter()
        .map(|(name, expr)| serde_json::json!({"name": name, "expr": expr}))
        .collect();
    std::fs::write(&file, serde_json::to_vec(&json).unwrap()).unwrap();
    let out = Command::new(go_tool("promrules").unwrap())
        .arg("-exprs")
        .arg(&file)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Checks every query of `dash` with Prometheus's parser against the
/// series the binaries export: the number of queries checked, or every
/// problem found.
fn check_dashboard(dash: &Value) -> Result<usize, String> {
    let declared: BTreeSet<String> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    let mut problems = Vec::new();
    let mut queries = Vec::new();
    for (name, expr) in dashboard_queries(dash) {
        match substitute(&expr, &declared) {
            Ok(expr) if !expr.trim().is_empty() => queries.push((name, expr)),
            Ok(_) => problems.push(format!("{name}: no expr")),
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    let parsed = promexprs(&queries).map_err(|e| {
        problems.push(format!("Prometheus's parser refuses:\n{e}"));
        problems.join("\n")
    })?;
    let exported: BTreeSet<String> = watchdog_series()
        .into_iter()
        .chain(webhook_series())
        .chain(PROMETHEUS_SERIES.iter().map(|s| (*s).to_owned()))
        .collect();
    for query in &parsed {
        let name = &query["name"];
        let metrics = query["metrics"].as_array().unwrap();
        if metrics.is_empty() {
            problems.push(format!("{name} reads no metric by name"));
        }
        for metric in metrics {
            let metric = metric.as_str().unwrap();
            if !exported.contains(metric) {
                problems.push(format!("{name} reads {metric}, which no binary exports"));
            }
        }
    }
    if problems.is_empty() {
        Ok(parsed.len())
    } else {
        Err(problems.join("\n"))
    }
}

#[test]
fn dashboard_queries_parse_and_read_metrics_the_binaries_export() {
    let dash = dashboard();
    let checked = check_dashboard(&dash).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(checked, dashboard_queries(&dash).len());
    assert!(checked >= 25, "{checked} queries");
}

/// The check above can fail: on an unknown metric, PromQL that does not
/// parse, a variable the dashboard does not declare.
#[test]
fn dashboard_check_refuses_what_grafana_or_prometheus_would_not_show() {
    let text = serde_json::to_string(&dashboard()).unwrap();
    for (what, from, to, says) in [
        (
            "unknown metric",
            "arc_watchdog_session_conflicts_total",
            "arc_watchdog_session_conflict_total",
            "arc_watchdog_session_conflict_total, which no binary exports",
        ),
        (
            "another system's metric",
            "arc_watchdog_webhook_uninjected_listeners",
            "kube_pod_info",
            "kube_pod_info, which no binary exports",
        ),
        (
            "PromQL",
            "histogram_quantile(0.99, sum by (le) (",
            "histogram_quantile(0.99, sum by (le) ((",
            "parse error",
        ),
        (
            "undeclared variable",
            "=~\\\"$scale_set\\\"",
            "=~\\\"$scaleset\\\"",
            "$scaleset is not a variable",
        ),
    ] {
        assert!(text.contains(from), "{what}: the dashboard has {from}");
        let broken: Value = serde_json::from_str(&text.replace(from, to)).unwrap();
        let err = check_dashboard(&broken).expect_err(what);
        assert!(err.contains(says), "{what}: {err}");
    }
}

/// The series the running binaries export on `/metrics`: the webhook
/// installed as [`ControlPlane::install_arc_watchdog`] runs it, a listener
/// created through it (so it managed the listener's RBAC) and that
/// listener's injected watchdog, run as a process, after its listener met a
/// session conflict (so it decided and reported something). Families
/// appear only once they hold a series: these are what the alerts can see
/// in such a cluster.
async fn scraped_series(cp: &ControlPlane) -> (BTreeSet<String>, BTreeSet<String>) {
    let webhook = cp.install_arc_watchdog(&[]).await.unwrap();
    let client = cp.admin_client().await.unwrap();
    let node = FakeNode::start(client.clone(), "monitoring-node")
        .await
        .unwrap();
    let pod = cp
        .create_listener(LISTENER_NAMESPACE, "monitoring")
        .await
        .unwrap();
    per_listener::wait_for_pod(&client, &pod).await.unwrap();
    let name = pod.metadata.name.clone().unwrap();
    node.run_pod(LISTENER_NAMESPACE, &name).await.unwrap();
    let wd = WatchdogProcess::start(cp, &pod, &[]).await.unwrap();
    node.log(LISTENER_NAMESPACE, &name, "listener", CONFLICT);
    let watchdog = eventually(DEADLINE, "the watchdog's decision in /metrics", || async {
        let text = wd.metrics().await.ok()?;
        metric_value(&text, "arc_watchdog_decisions_total", &[]).map(|_| text)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nwatchdog log:\n{}", wd.log_text()));
    let webhook_text = eventually(
        DEADLINE,
        "the webhook's RBAC ensure in /metrics",
        || async {
            let text = webhook.metrics().await.ok()?;
            metric_value(&text, "arc_watchdog_webhook_rbac_ensures_total", &[]).map(|_| text)
        },
    )
    .await
    .unwrap();
    wd.stop();
    webhook.stop();
    (series_names(&watchdog), series_names(&webhook_text))
}

/// Every `arc_watchdog_*` / `arc_watchdog_webhook_*` series an alert reads
/// is one the running watchdog / webhook exports on `/metrics`.
#[tokio::test]
async fn alerts_read_metrics_the_binaries_export() {
    let loaded = promrules(&prometheus_rule()["spec"]).unwrap();
    // A control plane of its own: the webhook is registered at its local
    // URL, which the operator test's `kubectl apply` of the manifests (a
    // `service` clientConfig) would collide with.
    let cp = ControlPlane::start_with(Options {
        controller_manager: false,
    })
    .await
    .unwrap();
    let (watchdog, webhook) = scraped_series(&cp).await;
    // The registries the README test reads know every scraped series.
    let registered: BTreeSet<String> = watchdog_series()
        .into_iter()
        .chain(webhook_series())
        .collect();
    let unknown: Vec<&String> = watchdog
        .iter()
        .chain(&webhook)
        .filter(|s| !registered.contains(*s))
        .collect();
    assert!(
        unknown.is_empty(),
        "exported but not registered: {unknown:?}"
    );
    let (mut checked_watchdog, mut checked_webhook) = (0, 0);
    for rule in &loaded {
        let alert = &rule["name"];
        for metric in rule["metrics"].as_array().unwrap() {
            let metric = metric.as_str().unwrap();
            if metric.starts_with("arc_watchdog_webhook_") {
                assert!(
                    webhook.contains(metric),
                    "{alert} reads {metric}, which the webhook does not export: {webhook:?}"
                );
                checked_webhook += 1;
            } else if metric.starts_with("arc_watchdog_") {
                assert!(
                    watchdog.contains(metric),
                    "{alert} reads {metric}, which the watchdog does not export: {watchdog:?}"
                );
                checked_watchdog += 1;
            }
        }
    }
    assert!(
        checked_watchdog >= 3,
        "the watchdog alerts read arc_watchdog_* metrics"
    );
    assert!(
        checked_webhook >= 1,
        "the webhook alerts read arc_watchdog_webhook_* metrics"
    );
}

/// One name for one thing: the README names every metric family the
/// binaries export (histograms by their base name).
#[test]
fn readme_names_every_exported_metric() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let families: BTreeSet<String> = watchdog_series()
        .into_iter()
        .chain(webhook_series())
        .map(|s| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| s.strip_suffix(suffix))
                .map_or_else(|| s.clone(), str::to_owned)
        })
        .collect();
    assert!(families.len() >= 15, "{families:?}");
    let missing: Vec<&String> = families
        .iter()
        .filter(|f| !readme.contains(&format!("`{f}`")) && !readme.contains(&format!("`{f}{{")))
        .collect();
    assert!(missing.is_empty(), "README.md does not name {missing:?}");
}

/// Series names the watchdog's registry exposes, every family made to hold
/// a series.
fn watchdog_series() -> BTreeSet<String> {
    let metrics = WatchdogMetrics::default();
    // Families appear in the output only once they hold a series.
    let reason = ReasonLabel {
        reason: "Any".to_owned(),
    };
    metrics.evictions.get_or_create(&reason).inc();
    metrics.decisions.get_or_create(&reason).inc();
    metrics.api_error("any");
    metrics.eviction_not_accepted("any");
    metrics.drop_events("any", 1);
    metrics
        .version_warning
        .get_or_create(&VersionWarningLabel {
            version: "any".to_owned(),
            warning: "any".to_owned(),
        })
        .set(1);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &metrics.registry()).unwrap();
    series_names(&text)
}

/// Series names the webhook's registry exposes, every family made to hold
/// a series.
fn webhook_series() -> BTreeSet<String> {
    let metrics = arc_watchdog_webhook::metrics::Metrics::new();
    // Families appear in the output only once they hold a series.
    metrics.cert_reload("ok");
    metrics.rbac_ensure("ok");
    metrics.uninjected_report("created");
    metrics.connection_timeout("idle");
    metrics.observe_review(&Outcome::Injected(SidecarMode::Native), Duration::ZERO);
    series_names(&metrics.encode().unwrap())
}

/// Series names in an OpenMetrics text exposition: counters get `_total`,
/// histograms `_bucket`, `_sum` and `_count`.
fn series_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut parts = line.split_whitespace().skip(2);
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                out.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                out.insert(name.to_owned());
            }
        }
    }
    out
}

fn monitoring_api(client: kube::Client, kind: &str, plural: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", kind),
        plural,
    );
    Api::namespaced_with(client, WEBHOOK_NAMESPACE, &resource)
}

#[tokio::test]
async fn the_operator_stores_the_monitoring_objects() {
    let cp = ControlPlane::shared().await.unwrap();
    cp.create_namespace(LISTENER_NAMESPACE).await.unwrap();
    cp.install_cert_manager_crds().await.unwrap();
    // PodMonitor and PrometheusRule only: the operator's other CRDs are
    // large and unused here.
    let crds = cp
        .install_module_crds(
            OPERATOR_MODULE,
            &crd_pins(),
            "example/prometheus-operator-crd",
            |name| {
                ["podmonitors", "prometheusrules"]
                    .iter()
                    .any(|kind| name == format!("monitoring.coreos.com_{kind}.yaml"))
            },
        )
        .await
        .unwrap();
    assert_eq!(crds.len(), 2, "{crds:?}");

    let overlay = workspace_root().join("tests/kustomize/with-monitoring");
    let out = cp
        .kubectl_run(&[
            "apply",
            "--server-side",
            "--field-manager=kubectl",
            "--validate=strict",
            "-k",
            &overlay.display().to_string(),
        ])
        .unwrap();
    assert!(out.contains("prometheusrule"), "{out}");

    let client = cp.admin_client().await.unwrap();
    let rules = monitoring_api(client.clone(), "PrometheusRule", "prometheusrules")
        .get("arc-watchdog")
        .await
        .unwrap();
    let stored = serde_json::to_value(&rules.data["spec"]).unwrap();
    assert_eq!(
        alert_names(&stored),
        alert_names(&prometheus_rule()["spec"])
    );
    let monitors = monitoring_api(client, "PodMonitor", "podmonitors")
        .list(&Default::default())
        .await
        .unwrap();
    assert_eq!(monitors.items.len(), 2, "{:?}", monitors.items);

    // The schema is enforced: a field the operator does not know is refused.
    let bad = workspace_root().join("manifests/monitoring/podmonitors.yaml");
    let text = std::fs::read_to_string(&bad).unwrap();
    let broken = text.replacen("podMetricsEndpoints:", "podMetricEndpoints:", 1);
    assert_ne!(broken, text, "podmonitors.yaml has podMetricsEndpoints");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("podmonitors.yaml");
    std::fs::write(&file, broken).unwrap();
    let err = cp
        .kubectl_run(&[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--validate=strict",
            "-f",
            &file.display().to_string(),
        ])
        .expect_err("an unknown field is refused");
    assert!(format!("{err:#}").contains("podMetricEndpoints"), "{err:#}");
}
