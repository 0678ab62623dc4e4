//! The Helm chart `charts/arc-watchdog`, with the real helm (`tests/go/helm`,
//! built and cached by `make go-tools`):
//! - with default values it renders the kustomize install's objects
//!   (`kubectl kustomize manifests/`), Helm's own labels aside, so the two
//!   cannot drift; the same with the monitoring component;
//! - `helm lint --strict` and `helm template` of every values file under
//!   `tests/chart/`, against golden output (`UPDATE_GOLDEN=1` rewrites it);
//! - each value reaches the objects it is meant to;
//! - `values.schema.json` rejects wrong types with a message naming the value;
//! - the README's values table is the one `values.yaml` makes
//!   (`UPDATE_README=1` rewrites it), and the README shows the Helm install;
//! - `helm package` (what `make chart` runs) packages it.
//!
//! Installing, upgrading and uninstalling on a real API server:
//! `integration_chart.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

use std::collections::BTreeSet;
use std::path::PathBuf;

use arc_watchdog_tests::chart::{
    self, NAMESPACE, TABLE_END, TABLE_START, chart_dir, compare, helm_run, helm_template,
    kustomize, normalise, object_id, parse_objects,
};
use arc_watchdog_tests::control_plane::workspace_root;
use serde_json::{Value, json};

fn cases_dir() -> PathBuf {
    workspace_root().join("tests/chart")
}

/// Every `tests/chart/<case>.values.yaml`, by case name.
fn cases() -> Vec<(String, PathBuf)> {
    let mut cases: Vec<(String, PathBuf)> = std::fs::read_dir(cases_dir())
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let case = name.strip_suffix(".values.yaml")?.to_owned();
            Some((case, e.path()))
        })
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 4,
        "values files under tests/chart: {cases:?}"
    );
    cases
}

fn render(args: &[&str]) -> Vec<Value> {
    parse_objects(&helm_template(args).unwrap()).unwrap()
}

fn render_case(case: &str) -> Vec<Value> {
    let values = cases_dir().join(format!("{case}.values.yaml"));
    render(&["-f", &values.to_string_lossy()])
}

fn find<'a>(objects: &'a [Value], kind: &str, namespace: Option<&str>, name: &str) -> &'a Value {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|o| {
            o["kind"] == kind
                && o["metadata"]["name"] == name
                && o["metadata"]["namespace"].as_str() == namespace
        })
        .collect();
    assert_eq!(found.len(), 1, "{kind} {namespace:?}/{name}: {found:?}");
    found[0]
}

fn webhook_container(objects: &[Value]) -> &Value {
    let d = find(
        objects,
        "Deployment",
        Some(NAMESPACE),
        "arc-watchdog-webhook",
    );
    &d["spec"]["template"]["spec"]["containers"][0]
}

fn env(container: &Value) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                // A value from the downward API shows as its valueFrom.
                e["value"]
                    .as_str()
                    .map_or_else(|| format!("valueFrom: {}", e["valueFrom"]), str::to_owned),
            )
        })
        .collect()
}

fn env_value(container: &Value, name: &str) -> Option<String> {
    env(container)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

fn kustomize_base() -> Vec<Value> {
    kustomize(&workspace_root().join("manifests")).unwrap()
}

#[test]
fn default_values_render_the_kustomize_install_but_its_namespace() {
    let k = kustomize_base();
    let c = render(&[]);
    // The release's namespace comes from `helm install --create-namespace`
    // (the chart renders it only with createNamespace=true, next test).
    let k_without_ns: Vec<Value> = k
        .iter()
        .filter(|o| o["kind"] != "Namespace")
        .cloned()
        .collect();
    assert_eq!(
        k.len(),
        k_without_ns.len() + 1,
        "one Namespace in manifests/"
    );
    if let Err(e) = compare(&k_without_ns, &c) {
        panic!("{e:#}");
    }
    // Every object carries Helm's labels, which the comparison ignores.
    for o in &c {
        let labels = &o["metadata"]["labels"];
        assert_eq!(
            labels["app.kubernetes.io/managed-by"],
            "Helm",
            "{}",
            object_id(o)
        );
        assert_eq!(labels["app.kubernetes.io/instance"], chart::RELEASE);
    }
}

#[test]
fn create_namespace_renders_exactly_the_kustomize_install() {
    let c = render(&["--set", "createNamespace=true"]);
    if let Err(e) = compare(&kustomize_base(), &c) {
        panic!("{e:#}");
    }
}

#[test]
fn monitoring_values_render_the_kustomize_monitoring_component() {
    let k = kustomize(&workspace_root().join("tests/kustomize/with-monitoring")).unwrap();
    let mut k: Vec<Value> = k.into_iter().filter(|o| o["kind"] != "Namespace").collect();
    // The only known difference: manifests/kustomization.yaml's `labels`
    // (part-of) does not reach the objects a component adds; the chart labels
    // every object alike.
    for o in &mut k {
        if matches!(
            o["kind"].as_str(),
            Some("PodMonitor" | "PrometheusRule" | "ConfigMap")
        ) {
            assert_eq!(
                o["metadata"]["labels"]["app.kubernetes.io/part-of"],
                Value::Null
            );
            o["metadata"]["labels"]["app.kubernetes.io/part-of"] = json!("arc-watchdog");
        }
    }
    let c = render(&[
        "--set",
        "monitoring.podMonitors=true",
        "--set",
        "monitoring.prometheusRule=true",
        "--set",
        "monitoring.dashboard=true",
    ]);
    assert!(c.iter().any(|o| o["kind"] == "PrometheusRule"));
    assert!(c.iter().any(|o| o["kind"] == "ConfigMap"));
    if let Err(e) = compare(&k, &c) {
        panic!("{e:#}");
    }
}

#[test]
fn self_managed_tls_renders_the_kustomize_tls_component() {
    let k = kustomize(&workspace_root().join("tests/kustomize/self-managed-tls")).unwrap();
    let k: Vec<Value> = k.into_iter().filter(|o| o["kind"] != "Namespace").collect();
    let c = render(&["--set", "tls.mode=selfManaged"]);
    if let Err(e) = compare(&k, &c) {
        panic!("{e:#}");
    }
    // No cert-manager object, no cainjector annotation, no certificate volume.
    assert!(
        c.iter().all(|o| !o["apiVersion"]
            .as_str()
            .unwrap()
            .starts_with("cert-manager.io/")),
        "cert-manager objects rendered"
    );
    let config = find(&c, "MutatingWebhookConfiguration", None, "arc-watchdog");
    assert_eq!(config["metadata"]["annotations"], Value::Null);
    let container = webhook_container(&c);
    assert!(
        container["args"]
            .as_array()
            .unwrap()
            .contains(&json!("--tls-mode=self-managed"))
    );
    assert_eq!(container["volumeMounts"], Value::Null);
    // The validities reach the webhook only when set.
    assert_eq!(env_value(container, "ARC_WATCHDOG_TLS_CA_VALIDITY"), None);
    let set = render_case("tls-self-managed");
    let container = webhook_container(&set);
    assert_eq!(
        env_value(container, "ARC_WATCHDOG_TLS_CA_VALIDITY").as_deref(),
        Some("8760h")
    );
    assert_eq!(
        env_value(container, "ARC_WATCHDOG_TLS_SERVING_VALIDITY").as_deref(),
        Some("720h")
    );
    // The Secret's rights follow the release's namespace.
    let moved = helm_run(&[
        "template",
        chart::RELEASE,
        &chart_dir().to_string_lossy(),
        "--namespace",
        "elsewhere",
        "--set",
        "tls.mode=selfManaged",
    ])
    .unwrap();
    let moved = parse_objects(&moved).unwrap();
    let binding = find(
        &moved,
        "RoleBinding",
        Some("elsewhere"),
        "arc-watchdog-webhook-tls",
    );
    assert_eq!(binding["subjects"][0]["namespace"], "elsewhere");
}

/// The comparison itself: a Role rule, an env value or a missing object on
/// one side each make it fail, naming the object and showing the line.
#[test]
fn comparison_fails_on_any_difference_and_shows_it() {
    let k: Vec<Value> = kustomize_base()
        .into_iter()
        .filter(|o| o["kind"] != "Namespace")
        .collect();
    let c = render(&[]);

    let mut fewer_verbs = c.clone();
    let role = fewer_verbs
        .iter_mut()
        .find(|o| o["kind"] == "Role")
        .unwrap();
    role["rules"][0]["verbs"] = json!(["get", "list"]);
    let err = format!("{:#}", compare(&k, &fewer_verbs).unwrap_err());
    assert!(
        err.contains("Role arc-systems/arc-watchdog-webhook differs"),
        "{err}"
    );
    assert!(
        err.contains("-   - watch") && !err.contains("+   - watch"),
        "{err}"
    );

    let mut other_env = c.clone();
    let d = other_env
        .iter_mut()
        .find(|o| o["kind"] == "Deployment")
        .unwrap();
    d["spec"]["template"]["spec"]["containers"][0]["env"][1]["value"] = json!("arc-other");
    let err = format!("{:#}", compare(&k, &other_env).unwrap_err());
    assert!(err.contains("+ ") && err.contains("arc-other"), "{err}");

    let missing: Vec<Value> = c
        .iter()
        .filter(|o| o["kind"] != "PodDisruptionBudget")
        .cloned()
        .collect();
    let err = format!("{:#}", compare(&k, &missing).unwrap_err());
    assert!(
        err.contains("only in the kustomize install: policy/v1 PodDisruptionBudget"),
        "{err}"
    );

    // Helm's labels alone are no difference; any other label is.
    let mut labelled = c.clone();
    labelled[0]["metadata"]["labels"]["team"] = json!("x");
    assert!(compare(&k, &labelled).is_err());
    assert_eq!(
        normalise(&c[0])["metadata"]["labels"]["helm.sh/chart"],
        Value::Null
    );
}

#[test]
fn golden_renders_of_every_values_file() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for (case, values) in cases() {
        let got = helm_template(&["-f", &values.to_string_lossy()]).unwrap();
        let golden = cases_dir().join(format!("{case}.golden.yaml"));
        if update {
            std::fs::write(&golden, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&golden)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", golden.display()));
        if want != got {
            stale.push(format!("{case}:\n{}", chart::line_diff(&want, &got)));
        }
    }
    assert!(
        stale.is_empty(),
        "helm template differs from tests/chart/*.golden.yaml (- golden, + now; \
         UPDATE_GOLDEN=1 cargo test -p arc-watchdog-tests --test chart rewrites them):\n{}",
        stale.join("\n")
    );
}

#[test]
fn helm_lint_strict_passes_for_every_values_file() {
    let chart = chart_dir();
    let chart = chart.to_string_lossy();
    let out = helm_run(&["lint", "--strict", &chart]).unwrap();
    assert!(out.contains("0 chart(s) failed"), "{out}");
    for (case, values) in cases() {
        let out = helm_run(&["lint", "--strict", &chart, "-f", &values.to_string_lossy()])
            .unwrap_or_else(|e| panic!("{case}: {e:#}"));
        assert!(out.contains("0 chart(s) failed"), "{case}: {out}");
    }
}

#[test]
fn image_sets_the_webhook_and_the_injected_image() {
    let c = render(&[
        "--set",
        "image.repository=ghcr.io/example/arc-watchdog",
        "--set",
        "image.tag=9.9.9",
    ]);
    let w = webhook_container(&c);
    assert_eq!(w["image"], "ghcr.io/example/arc-watchdog:9.9.9");
    assert_eq!(
        env_value(w, "ARC_WATCHDOG_WATCHDOG_IMAGE").as_deref(),
        Some("ghcr.io/example/arc-watchdog:9.9.9")
    );
    let c = render_case("native-labels");
    let w = webhook_container(&c);
    let image = w["image"].as_str().unwrap();
    assert!(
        image.starts_with("registry.example.invalid/arc-watchdog@sha256:"),
        "{image}"
    );
    assert_eq!(
        env_value(w, "ARC_WATCHDOG_WATCHDOG_IMAGE").as_deref(),
        Some(image)
    );
}

#[test]
fn listener_namespaces_and_thresholds_reach_the_webhook() {
    let c = render_case("listeners-thresholds");
    for ns in ["arc-systems", "arc-runners-gpu"] {
        let role = find(&c, "Role", Some(ns), "arc-watchdog-webhook");
        let binding = find(&c, "RoleBinding", Some(ns), "arc-watchdog-webhook");
        assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
        assert_eq!(binding["subjects"][0]["namespace"], NAMESPACE);
    }
    let w = webhook_container(&c);
    let env = env(w);
    let want = [
        (
            "ARC_WATCHDOG_LISTENER_NAMESPACES",
            "arc-systems,arc-runners-gpu",
        ),
        ("ARC_WATCHDOG_CONFLICT_THRESHOLD", "4"),
        ("ARC_WATCHDOG_CONFLICT_WINDOW", "15m"),
        ("ARC_WATCHDOG_BACKOFF_INITIAL", "45s"),
        ("ARC_WATCHDOG_BACKOFF_STEADY_FOR", "6m"),
        ("ARC_WATCHDOG_BACKOFF_MAX", "20m"),
        ("ARC_WATCHDOG_DUPLICATE_AFTER_CAPS", "5"),
        ("ARC_WATCHDOG_EVICTION_BUDGET", "2"),
        ("ARC_WATCHDOG_EVICTION_WINDOW", "2h"),
        ("ARC_WATCHDOG_ESTABLISHED_AFTER", "12m"),
        ("ARC_WATCHDOG_HUNG_AFTER", "30m"),
        ("ARC_WATCHDOG_DRY_RUN", "true"),
    ];
    for (name, value) in want {
        assert!(
            env.contains(&(name.to_owned(), value.to_owned())),
            "{name}={value} in {env:?}"
        );
    }
    // Each env name is a threshold the webhook really reads (clap's env).
    let webhook_envs: BTreeSet<String> =
        <arc_watchdog_core::settings::Thresholds as clap::Args>::augment_args(clap::Command::new(
            "t",
        ))
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    for (name, _) in want.iter().skip(1) {
        assert!(
            webhook_envs.contains(*name),
            "{name} is no threshold flag's env: {webhook_envs:?}"
        );
    }
    assert_eq!(
        webhook_envs.len(),
        want.len() - 1,
        "every threshold has a value"
    );
    // The defaults the values table quotes are the binary's.
    let values = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    let docs = chart::documented_values(&values).unwrap();
    let defaults = <arc_watchdog_core::settings::Thresholds as clap::Args>::augment_args(
        clap::Command::new("t"),
    );
    for arg in defaults.get_arguments() {
        let Some(default) = arg.get_default_values().first() else {
            continue;
        };
        let default = default.to_string_lossy();
        if default == "false" {
            continue;
        }
        let key = format!("watchdog.{}", to_camel(arg.get_id().as_str()));
        let doc = docs
            .iter()
            .find(|d| d.key == key)
            .unwrap_or_else(|| panic!("{key} undocumented"));
        assert!(
            doc.description.contains(&format!("default `{default}`"))
                || doc.description.contains(&format!("default {default})")),
            "{key}: the binary's default is {default}: {}",
            doc.description
        );
    }
    // Nothing set: none rendered, the binary's defaults apply.
    let names: Vec<String> = env_names(&render(&[]));
    assert_eq!(
        names,
        [
            "ARC_WATCHDOG_WATCHDOG_IMAGE",
            "ARC_WATCHDOG_LISTENER_NAMESPACES"
        ]
    );
    let d = find(&c, "Deployment", Some(NAMESPACE), "arc-watchdog-webhook");
    assert_eq!(d["spec"]["replicas"], 3);
}

/// `conflict_threshold` -> `conflictThreshold`.
fn to_camel(id: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in id.chars() {
        if c == '_' || c == '-' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn env_names(objects: &[Value]) -> Vec<String> {
    env(webhook_container(objects))
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}

#[test]
fn scheduling_mode_labels_and_annotations_reach_the_objects() {
    let c = render_case("native-labels");
    let d = find(&c, "Deployment", Some(NAMESPACE), "arc-watchdog-webhook");
    let pod = &d["spec"]["template"];
    let spec = &pod["spec"];
    assert!(
        spec["containers"][0]["args"]
            .as_array()
            .unwrap()
            .contains(&json!("--sidecar-mode=native"))
    );
    assert_eq!(spec["priorityClassName"], "system-cluster-critical");
    assert_eq!(spec["nodeSelector"]["node-role.example.com/infra"], "true");
    assert_eq!(spec["tolerations"][0]["key"], "infra");
    assert!(spec["affinity"]["nodeAffinity"].is_object());
    assert_eq!(spec["imagePullSecrets"][0]["name"], "registry-credentials");
    // `cpu: null` in the values file drops the default's CPU limit.
    assert_eq!(
        spec["containers"][0]["resources"]["limits"],
        json!({"memory": "256Mi"})
    );
    assert_eq!(pod["metadata"]["labels"]["team"], "ci-platform");
    assert_eq!(
        pod["metadata"]["labels"]["app.kubernetes.io/component"],
        "webhook"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["example.com/scrape"],
        "false"
    );
    // The selector stays the kustomize install's: podLabels never enter it.
    assert_eq!(
        d["spec"]["selector"]["matchLabels"],
        json!({"app.kubernetes.io/name": "arc-watchdog", "app.kubernetes.io/component": "webhook"})
    );
    assert_eq!(d["spec"]["replicas"], 1);
    assert!(
        !c.iter().any(|o| o["kind"] == "PodDisruptionBudget"),
        "one replica: no PodDisruptionBudget to block a drain"
    );
    let ns = find(&c, "Namespace", None, NAMESPACE);
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    for o in &c {
        let meta = &o["metadata"];
        assert_eq!(meta["labels"]["team"], "ci-platform", "{}", object_id(o));
        assert_eq!(meta["labels"]["cost-center"], "1234", "{}", object_id(o));
        assert_eq!(
            meta["annotations"]["example.com/owner"],
            "ci-platform@example.com",
            "{}",
            object_id(o)
        );
    }
    // commonAnnotations never replace the CA injection annotation.
    let mwc = find(&c, "MutatingWebhookConfiguration", None, "arc-watchdog");
    assert_eq!(
        mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "arc-watchdog/arc-watchdog-serving"
    );
}

#[test]
fn monitoring_toggles_and_labels() {
    let kinds = |objects: &[Value]| -> BTreeSet<String> {
        objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap().to_owned())
            .collect()
    };
    let none = render(&[]);
    assert!(!kinds(&none).contains("PodMonitor") && !kinds(&none).contains("PrometheusRule"));
    let monitors = render(&["--set", "monitoring.podMonitors=true"]);
    assert!(
        kinds(&monitors).contains("PodMonitor") && !kinds(&monitors).contains("PrometheusRule")
    );
    let rule = render(&["--set", "monitoring.prometheusRule=true"]);
    assert!(!kinds(&rule).contains("PodMonitor") && kinds(&rule).contains("PrometheusRule"));
    let all = render_case("monitoring");
    let monitoring: Vec<&Value> = all
        .iter()
        .filter(|o| o["kind"] == "PodMonitor" || o["kind"] == "PrometheusRule")
        .collect();
    assert_eq!(monitoring.len(), 3);
    for o in monitoring {
        assert_eq!(o["metadata"]["labels"]["release"], "kube-prometheus-stack");
    }
    // The alerts' own templates survive Helm's templating.
    let rule = find(&all, "PrometheusRule", Some(NAMESPACE), "arc-watchdog");
    let text = serde_json::to_string(rule).unwrap();
    assert!(text.contains("{{ $labels.namespace }}"), "{text}");
}

#[test]
fn release_namespace_moves_every_namespaced_reference() {
    let chart = chart_dir();
    let out = helm_run(&[
        "template",
        chart::RELEASE,
        &chart.to_string_lossy(),
        "--namespace",
        "ci-tools",
        "--set",
        "monitoring.podMonitors=true",
        "--set",
        "monitoring.prometheusRule=true",
    ])
    .unwrap();
    for stale in [
        "namespace: arc-watchdog\n",
        "job=\"arc-watchdog/",
        "arc-watchdog/arc-watchdog-serving",
        "-n arc-watchdog ",
        ".arc-watchdog.svc",
    ] {
        assert!(
            !out.contains(stale),
            "{stale:?} left in a release in ci-tools"
        );
    }
    assert!(out.contains("job=\"ci-tools/arc-watchdog-sidecars\""));
    assert!(out.contains("arc-watchdog-webhook.ci-tools.svc"));
    assert!(
        out.contains(r#"values: ["kube-system", "ci-tools"]"#),
        "{out}"
    );
    assert!(out.contains("cert-manager.io/inject-ca-from: ci-tools/arc-watchdog-serving"));
}

/// `helm template` with `file` as values: its error text.
fn rejected(values: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, values).unwrap();
    let err = helm_template(&["-f", &file.to_string_lossy()])
        .expect_err("helm template accepted the values");
    format!("{err:#}")
}

#[test]
fn schema_rejects_wrong_values_with_clear_messages() {
    for (values, want) in [
        (
            "replicas: \"two\"\n",
            "at '/replicas': got string, want integer",
        ),
        (
            "sidecarMode: sidecar\n",
            "at '/sidecarMode': value must be one of 'auto', 'native', 'classic'",
        ),
        (
            "listenerNamespaces: arc-systems\n",
            "at '/listenerNamespaces': got string, want array",
        ),
        ("listenerNamespaces: []\n", "at '/listenerNamespaces'"),
        (
            "watchdog:\n  conflictWindow: 10\n",
            "at '/watchdog/conflictWindow': got number, want null or string",
        ),
        (
            "watchdog:\n  conflictThreshold: 0\n",
            "at '/watchdog/conflictThreshold'",
        ),
        (
            "watchdog:\n  dryrun: true\n",
            "additional properties 'dryrun' not allowed",
        ),
        (
            "monitoring:\n  podMonitors: \"yes\"\n",
            "at '/monitoring/podMonitors': got string, want boolean",
        ),
        (
            "replica: 3\n",
            "additional properties 'replica' not allowed",
        ),
    ] {
        let err = rejected(values);
        assert!(
            err.contains("values don't meet the specifications of the schema")
                && err.contains(want),
            "{values:?}: want {want:?} in:\n{err}"
        );
    }
}

#[test]
fn readme_values_table_is_current_and_shows_the_helm_install() {
    let chart = chart_dir();
    let values = std::fs::read_to_string(chart.join("values.yaml")).unwrap();
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(chart.join("values.schema.json")).unwrap())
            .unwrap();
    let table = chart::values_table(&values, &schema).unwrap();
    let readme_path = workspace_root().join("README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let want = chart::with_values_table(&readme, &table).unwrap();
    if std::env::var_os("UPDATE_README").is_some_and(|v| v == "1") {
        std::fs::write(&readme_path, &want).unwrap();
    } else {
        assert!(
            readme == want,
            "README.md's values table is stale (UPDATE_README=1 cargo test -p \
             arc-watchdog-tests --test chart rewrites it):\n{}",
            chart::line_diff(&readme, &want)
        );
    }
    // Every value in the schema is in the table (the table reads the schema's
    // type for each, so a documented value the schema lacks fails above).
    for key in schema["properties"].as_object().unwrap().keys() {
        assert!(
            table.contains(&format!("| `{key}")),
            "{key} is not in the values table"
        );
    }
    for shown in [
        "helm install arc-watchdog oci://",
        "--namespace arc-watchdog --create-namespace",
        "helm uninstall arc-watchdog --namespace arc-watchdog",
        "kind: Application",
        "kind: HelmRelease",
        "kubectl apply -k manifests/",
        TABLE_START,
        TABLE_END,
    ] {
        assert!(readme.contains(shown), "the README shows {shown:?}");
    }
    let install = readme.find("## Install\n").unwrap();
    let helm_at = readme[install..].find("### With Helm\n").unwrap();
    let kustomize_at = readme[install..].find("### With kustomize\n").unwrap();
    assert!(
        helm_at < kustomize_at,
        "the README shows the Helm install first"
    );
}

#[test]
fn undocumented_values_fail_the_table() {
    let err = chart::documented_values("# -- documented\na: 1\nb:\n  c: 2\n").unwrap_err();
    assert!(format!("{err:#}").contains("documents b.c"), "{err:#}");
    let docs = chart::documented_values(
        "# -- the map\nm:\n  x: 1\nn:\n  # -- n's y,\n  # continued\n  y: \"s\"\n",
    )
    .unwrap();
    let keys: Vec<(&str, &str)> = docs
        .iter()
        .map(|d| (d.key.as_str(), d.description.as_str()))
        .collect();
    assert_eq!(keys, [("m", "the map"), ("n.y", "n's y, continued")]);
}

#[test]
fn helm_package_makes_the_chart_archive_and_make_chart_runs_it() {
    let out = tempfile::tempdir().unwrap();
    let chart = chart_dir();
    let msg = helm_run(&[
        "package",
        &chart.to_string_lossy(),
        "-d",
        &out.path().to_string_lossy(),
    ])
    .unwrap();
    let meta: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(chart.join("Chart.yaml")).unwrap())
            .unwrap();
    let archive = out.path().join(format!(
        "arc-watchdog-{}.tgz",
        meta["version"].as_str().unwrap()
    ));
    assert!(archive.is_file(), "{msg}");
    // The archive renders like the directory (nothing needed was left out).
    let from_archive = parse_objects(
        &helm_run(&[
            "template",
            chart::RELEASE,
            &archive.to_string_lossy(),
            "--namespace",
            NAMESPACE,
        ])
        .unwrap(),
    )
    .unwrap();
    assert_eq!(from_archive, render(&[]));
    // The chart's appVersion is the workspace's version (the image tag the
    // kustomize install pins, compared above).
    assert_eq!(meta["appVersion"].as_str(), Some(env!("CARGO_PKG_VERSION")));
    let makefile = std::fs::read_to_string(workspace_root().join("Makefile")).unwrap();
    assert!(
        makefile.contains("package charts/arc-watchdog -d target/chart"),
        "make chart runs helm package"
    );
}

#[test]
fn the_chart_ships_the_dashboard_of_the_kustomize_install() {
    // Helm reads files inside the chart only: the chart keeps a copy.
    let chart =
        std::fs::read(workspace_root().join("charts/arc-watchdog/dashboards/arc-watchdog.json"))
            .unwrap();
    let manifests =
        std::fs::read(workspace_root().join("manifests/monitoring/dashboard/arc-watchdog.json"))
            .unwrap();
    assert!(
        chart == manifests,
        "charts/arc-watchdog/dashboards/arc-watchdog.json differs from manifests/monitoring/dashboard/arc-watchdog.json: copy it"
    );
}
