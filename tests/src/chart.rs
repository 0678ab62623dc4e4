//! The Helm chart (`charts/arc-watchdog`) beside the kustomize install
//! (`manifests/`): the real `helm` built from its Go module
//! (`tests/go/helm`, by `tests/scripts/build-go-tools.sh`), rendering both
//! installs, comparing them object by object, and the README's values table
//! made from `values.yaml`'s `# --` comments and `values.schema.json`.
//! Used by `tests/tests/chart.rs` and `tests/tests/integration_chart.rs`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use serde::Deserialize as _;
use serde_json::Value;

use crate::control_plane::{go_tool, workspace_root};

/// Release name the tests and the README use.
pub const RELEASE: &str = "arc-watchdog";
/// Namespace of the kustomize install, and of the chart's release in the tests.
pub const NAMESPACE: &str = "arc-watchdog";

/// Labels Helm's conventions add to every object of the chart (and the
/// kustomize install has not): dropped before comparing the two.
pub const HELM_LABELS: [&str; 4] = [
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
];

/// `charts/arc-watchdog`.
pub fn chart_dir() -> PathBuf {
    workspace_root().join("charts/arc-watchdog")
}

/// helm to use, found once: `$HELM`, else the one pinned in `tests/go/helm`
/// (`make go-tools` builds it; built here if missing and Go is available).
/// A helm on PATH is not used: another version may render differently.
pub fn helm() -> Result<PathBuf> {
    static HELM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    HELM.get_or_init(|| {
        let h = match std::env::var_os("HELM") {
            Some(h) => PathBuf::from(h),
            None => go_tool("helm")
                .map_err(|e| format!("no helm (set HELM or run `make go-tools`): {e:#}"))?,
        };
        let runs = Command::new(&h)
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if runs {
            Ok(h)
        } else {
            Err(format!("{} version fails", h.display()))
        }
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// A helm command whose own state (repository cache, registry config,
/// plugins) lives in a directory of its own, never in the user's home.
pub fn helm_command() -> Result<Command> {
    let helm = helm()?;
    static HOME: OnceLock<Result<tempfile::TempDir, String>> = OnceLock::new();
    let home = HOME
        .get_or_init(|| tempfile::tempdir().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| anyhow!("helm's state directory: {e}"))?;
    let mut cmd = Command::new(helm);
    for (var, sub) in [
        ("HELM_CACHE_HOME", "cache"),
        ("HELM_CONFIG_HOME", "config"),
        ("HELM_DATA_HOME", "data"),
    ] {
        cmd.env(var, home.path().join(sub));
    }
    cmd.env_remove("KUBECONFIG").env_remove("HELM_NAMESPACE");
    Ok(cmd)
}

/// Runs helm with `args`: its stdout, or an error with its stderr.
pub fn helm_run(args: &[&str]) -> Result<String> {
    let out = helm_command()?
        .args(args)
        .output()
        .with_context(|| format!("running helm {}", args.join(" ")))?;
    ensure!(
        out.status.success(),
        "helm {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).context("helm's output is not UTF-8")
}

/// `helm template arc-watchdog charts/arc-watchdog --namespace arc-watchdog
/// ARGS...`: the rendered text.
pub fn helm_template(args: &[&str]) -> Result<String> {
    let chart = chart_dir();
    let chart = chart.to_string_lossy();
    let mut all = vec!["template", RELEASE, &chart, "--namespace", NAMESPACE];
    all.extend_from_slice(args);
    helm_run(&all)
}

/// The objects of a multi-document YAML stream (empty documents skipped).
pub fn parse_objects(text: &str) -> Result<Vec<Value>> {
    let mut objects = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).context("parsing rendered YAML")?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

/// `kubectl kustomize DIR` with the kubectl pinned with the control plane
/// (`$KUBECTL` if set), parsed.
pub fn kustomize(dir: &Path) -> Result<Vec<Value>> {
    let kubectl = match std::env::var_os("KUBECTL") {
        Some(k) => PathBuf::from(k),
        None => go_tool("kubectl")?,
    };
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .with_context(|| format!("running {} kustomize {}", kubectl.display(), dir.display()))?;
    ensure!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_objects(&String::from_utf8(out.stdout).context("kustomize output is not UTF-8")?)
}

/// `apiVersion kind namespace/name` of an object.
pub fn object_id(o: &Value) -> String {
    format!(
        "{} {} {}/{}",
        o["apiVersion"].as_str().unwrap_or("?"),
        o["kind"].as_str().unwrap_or("?"),
        o["metadata"]["namespace"].as_str().unwrap_or(""),
        o["metadata"]["name"].as_str().unwrap_or("?"),
    )
}

/// An object without what only Helm adds: [`HELM_LABELS`] and `meta.helm.sh/*`
/// annotations (an emptied map goes too).
pub fn normalise(o: &Value) -> Value {
    let mut o = o.clone();
    if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(labels) = meta.get_mut("labels").and_then(Value::as_object_mut) {
            for l in HELM_LABELS {
                labels.remove(l);
            }
        }
        if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            annotations.retain(|k, _| !k.starts_with("meta.helm.sh/"));
        }
        for field in ["labels", "annotations"] {
            if meta
                .get(field)
                .and_then(Value::as_object)
                .is_some_and(serde_json::Map::is_empty)
            {
                meta.remove(field);
            }
        }
    }
    o
}

/// Compares the kustomize install with the chart's rendering, object by
/// object after [`normalise`]: an error listing every object only one side
/// has and, for each object both have but differently, a line diff of the
/// two as YAML (`-` kustomize, `+` chart).
pub fn compare(kustomize: &[Value], chart: &[Value]) -> Result<()> {
    fn by_id(objects: &[Value]) -> Result<BTreeMap<String, Value>> {
        let mut map = BTreeMap::new();
        for o in objects {
            let id = object_id(o);
            ensure!(
                map.insert(id.clone(), normalise(o)).is_none(),
                "{id} rendered twice"
            );
        }
        Ok(map)
    }
    let k = by_id(kustomize).context("the kustomize install")?;
    let c = by_id(chart).context("the chart")?;
    let mut report = String::new();
    for id in k.keys().filter(|id| !c.contains_key(*id)) {
        let _ = writeln!(report, "only in the kustomize install: {id}");
    }
    for id in c.keys().filter(|id| !k.contains_key(*id)) {
        let _ = writeln!(report, "only in the chart: {id}");
    }
    for (id, ko) in &k {
        if let Some(co) = c.get(id)
            && ko != co
        {
            let _ = writeln!(
                report,
                "{id} differs (- kustomize, + chart):\n{}",
                line_diff(
                    &serde_yaml_ng::to_string(ko)?,
                    &serde_yaml_ng::to_string(co)?
                )
            );
        }
    }
    if report.is_empty() {
        Ok(())
    } else {
        bail!("the chart and the kustomize install differ:\n{report}")
    }
}

/// A unified-style line diff (longest common subsequence; objects here are a
/// few hundred lines at most), with two lines of context around changes.
pub fn line_diff(a: &str, b: &str) -> String {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut lines: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            lines.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            lines.push(('+', b[j]));
            j += 1;
        } else {
            lines.push(('-', a[i]));
            i += 1;
        }
    }
    let near_change = |n: usize| {
        lines[n.saturating_sub(2)..(n + 3).min(lines.len())]
            .iter()
            .any(|(c, _)| *c != ' ')
    };
    let mut out = String::new();
    let mut skipped = false;
    for (n, (c, line)) in lines.iter().enumerate() {
        if near_change(n) {
            if skipped {
                out.push_str("  ...\n");
                skipped = false;
            }
            let _ = writeln!(out, "{c} {line}");
        } else {
            skipped = true;
        }
    }
    out
}

/// One documented value of `values.yaml`.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueDoc {
    /// Dotted path, e.g. `image.repository`.
    pub key: String,
    /// The `# --` comment, joined into one line.
    pub description: String,
    /// Default, from `values.yaml`.
    pub default: serde_yaml_ng::Value,
}

/// The values `values.yaml` documents with a `# --` comment (continued by
/// the `#` lines under it) right above the key, in file order. A documented
/// map (e.g. `resources`) is one entry: its keys are its default. Errors name
/// every leaf value that no comment documents, itself or through a parent.
pub fn documented_values(values_yaml: &str) -> Result<Vec<ValueDoc>> {
    let root: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(values_yaml).context("parsing values.yaml")?;
    let mut docs = Vec::new();
    // (indent, key) of the keys enclosing the current line
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut pending: Option<String> = None;
    for line in values_yaml.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(comment) = trimmed.strip_prefix('#') {
            let text = comment.trim();
            if let Some(start) =
                text.strip_prefix("-- ")
                    .or(if text == "--" { Some("") } else { None })
            {
                pending = Some(start.to_owned());
            } else if let Some(p) = pending.as_mut()
                && !text.is_empty()
            {
                p.push(' ');
                p.push_str(text);
            }
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('-') {
            if trimmed.is_empty() {
                pending = None;
            }
            continue;
        }
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        stack.push((indent, key.trim().to_owned()));
        if let Some(description) = pending.take() {
            let path: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).collect();
            let default = lookup(&root, &path)
                .cloned()
                .ok_or_else(|| anyhow!("{} not found in values.yaml", path.join(".")))?;
            docs.push(ValueDoc {
                key: path.join("."),
                description,
                default,
            });
        }
    }
    let mut undocumented = Vec::new();
    leaves(&root, &mut Vec::new(), &mut |path| {
        let key = path.join(".");
        let covered = docs
            .iter()
            .any(|d| key == d.key || key.starts_with(&format!("{}.", d.key)));
        if !covered {
            undocumented.push(key);
        }
    });
    ensure!(
        undocumented.is_empty(),
        "values.yaml: no `# --` comment documents {}",
        undocumented.join(", ")
    );
    Ok(docs)
}

fn lookup<'a>(v: &'a serde_yaml_ng::Value, path: &[&str]) -> Option<&'a serde_yaml_ng::Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn leaves(v: &serde_yaml_ng::Value, path: &mut Vec<String>, f: &mut impl FnMut(&[String])) {
    match v.as_mapping() {
        Some(m) if !m.is_empty() => {
            for (k, child) in m {
                path.push(k.as_str().unwrap_or("?").to_owned());
                leaves(child, path, f);
                path.pop();
            }
        }
        _ => f(path),
    }
}

/// The JSON schema type of `key` (`a.b.c`) in `values.schema.json`, e.g.
/// `string`, `integer or null`.
pub fn schema_type(schema: &Value, key: &str) -> Result<String> {
    let node = key.split('.').try_fold(schema, |node, k| {
        node["properties"]
            .get(k)
            .ok_or_else(|| anyhow!("values.schema.json has no property {key}"))
    })?;
    Ok(match &node["type"] {
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" or "),
        _ => bail!("values.schema.json: {key} has no type"),
    })
}

/// The README's values table: key, type (from the schema), default (from
/// `values.yaml`, as JSON) and description (its `# --` comment).
pub fn values_table(values_yaml: &str, schema: &Value) -> Result<String> {
    let mut out =
        String::from("| key | type | default | description |\n| --- | --- | --- | --- |\n");
    for d in documented_values(values_yaml)? {
        let default = serde_json::to_string(&d.default)?.replace('|', "\\|");
        let _ = writeln!(
            out,
            "| `{}` | {} | `{}` | {} |",
            d.key,
            schema_type(schema, &d.key)?,
            default,
            d.description.replace('|', "\\|")
        );
    }
    Ok(out)
}

/// Markers around the generated values table in README.md.
pub const TABLE_START: &str = "<!-- values-table:start (generated from charts/arc-watchdog/values.yaml: UPDATE_README=1 cargo test -p arc-watchdog-tests --test chart) -->";
/// See [`TABLE_START`].
pub const TABLE_END: &str = "<!-- values-table:end -->";

/// `readme` with the text between [`TABLE_START`] and [`TABLE_END`] replaced
/// by `table`.
pub fn with_values_table(readme: &str, table: &str) -> Result<String> {
    let start = readme
        .find(TABLE_START)
        .ok_or_else(|| anyhow!("README.md has no line {TABLE_START}"))?
        + TABLE_START.len();
    let end = readme[start..]
        .find(TABLE_END)
        .ok_or_else(|| anyhow!("README.md has no line {TABLE_END} after the start marker"))?
        + start;
    Ok(format!("{}\n{table}{}", &readme[..start], &readme[end..]))
}
