//! The install manifests, as `kubectl kustomize manifests/` renders them.
//! (One concern, the install contract, over 800 lines: each check needs the
//! same rendering, done once per binary.)
//!
//! Every point of the install contract is checked on the rendered objects:
//! the webhook configuration can never block ARC (failurePolicy Ignore, CREATE
//! of listener pods only, short timeout, no caBundle for cainjector to fight
//! over), TLS comes from cert-manager for the Service's names, the Deployment
//! is hardened and highly available, RBAC is least privilege (no wildcard, no
//! group, the webhook holds exactly what it grants per listener), one image tag
//! pins both the webhook and the watchdog it injects, the listener namespace is
//! one knob, and the optional monitoring component scrapes the webhook and the
//! watchdogs and alerts on every failure. Prometheus's own checks of the alerts
//! (and that they read metrics the binaries export) are in
//! `integration_monitoring.rs`.
//!
//! Applying them to a real API server is the control-plane tests' job. They
//! render with the kubectl pinned with the control plane (`make go-tools`),
//! or `$KUBECTL`: without one they fail, a check not made is not a pass.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail, ensure};
use arc_watchdog::detector::Reason;
use arc_watchdog::names;
use arc_watchdog_tests::control_plane;
use arc_watchdog_webhook::config::{Cli, TlsMode};
use arc_watchdog_webhook::rbac;
use clap::{CommandFactory, Parser};
use serde::Deserialize;
use serde_json::{Value, json};

const NAMESPACE: &str = "arc-watchdog";
const LISTENER_NAMESPACE: &str = "arc-systems";
const WEBHOOK: &str = "arc-watchdog-webhook";
const WEBHOOK_CONFIG: &str = "arc-watchdog";
const IMAGE_ENV: &str = "ARC_WATCHDOG_WATCHDOG_IMAGE";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// kubectl to use, found once: `$KUBECTL`, else the one pinned with the
/// control plane (`make go-tools` builds it; built here if missing and Go is
/// available). Another kubectl on PATH is not used: its kustomize may render
/// differently. An error when none runs.
fn kubectl() -> Result<PathBuf> {
    static KUBECTL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = KUBECTL.get_or_init(|| {
        let runs = |k: &Path| {
            Command::new(k)
                .args(["version", "--client"])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        let k = match std::env::var_os("KUBECTL") {
            Some(k) => PathBuf::from(k),
            None => control_plane::go_tool("kubectl").map_err(|e| {
                format!("no kubectl to render the manifests with (set KUBECTL or run `make go-tools`): {e:#}")
            })?,
        };
        if runs(&k) {
            Ok(k)
        } else {
            Err(format!("{} version --client fails", k.display()))
        }
    });
    found.clone().map_err(|e| anyhow::anyhow!(e))
}

/// Rendered objects of one kustomization.
#[derive(Debug)]
struct Rendered(Vec<Value>);

impl Rendered {
    /// `kubectl kustomize DIR`, parsed.
    fn of(dir: &Path) -> Result<Self> {
        let kubectl = kubectl()?;
        let out = Command::new(&kubectl)
            .arg("kustomize")
            .arg(dir)
            .output()
            .with_context(|| {
                format!("running {} kustomize {}", kubectl.display(), dir.display())
            })?;
        ensure!(
            out.status.success(),
            "kubectl kustomize {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).context("kustomize output is not UTF-8")?;
        let mut objects = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).context("parsing kustomize output")?;
            if !value.is_null() {
                objects.push(value);
            }
        }
        ensure!(!objects.is_empty(), "kustomize rendered nothing");
        Ok(Self(objects))
    }

    fn base() -> Result<Self> {
        Self::of(&repo_root().join("manifests"))
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.0.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn get(&self, kind: &str, namespace: Option<&str>, name: &str) -> Result<&Value> {
        let found: Vec<&Value> = self
            .all(kind)
            .into_iter()
            .filter(|o| {
                o["metadata"]["name"] == name && o["metadata"]["namespace"].as_str() == namespace
            })
            .collect();
        match found.as_slice() {
            [one] => Ok(one),
            [] => bail!("no {kind} {namespace:?}/{name} in the rendered manifests"),
            _ => bail!("{} objects {kind} {namespace:?}/{name}", found.len()),
        }
    }

    fn deployment(&self) -> Result<&Value> {
        self.get("Deployment", Some(NAMESPACE), WEBHOOK)
    }

    fn webhook_container(&self) -> Result<&Value> {
        let deployment = self.deployment()?;
        deployment["spec"]["template"]["spec"]["containers"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == "webhook"))
            .context("the Deployment has no container named webhook")
    }
}

/// A copy of manifests/ in a fresh temporary directory, to render with one
/// knob changed.
fn copy_of_manifests() -> Result<tempfile::TempDir> {
    fn copy(from: &Path, to: &Path) -> Result<()> {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            let target = to.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                copy(&entry.path(), &target)?;
            } else {
                std::fs::copy(entry.path(), &target)?;
            }
        }
        Ok(())
    }
    let dir = tempfile::tempdir()?;
    copy(
        &repo_root().join("manifests"),
        &dir.path().join("manifests"),
    )?;
    Ok(dir)
}

/// Reads, edits and writes back one kustomization.yaml.
fn edit_kustomization(path: &Path, edit: impl FnOnce(&mut Value) -> Result<()>) -> Result<()> {
    let text = std::fs::read_to_string(path)?;
    let mut value: Value = serde_yaml_ng::from_str(&text)?;
    edit(&mut value)?;
    std::fs::write(path, serde_yaml_ng::to_string(&value)?)?;
    Ok(())
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

/// `--flag=value` from a container's args.
fn arg_value<'a>(container: &'a Value, flag: &str) -> Option<&'a str> {
    let prefix = format!("{flag}=");
    strings(&container["args"])
        .into_iter()
        .find_map(|a| a.strip_prefix(prefix.as_str()))
}

/// `720h`, `43800h`, `90m`: the Go durations used by cert-manager fields here.
fn go_duration_secs(s: &str) -> Result<u64> {
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = num.parse().with_context(|| format!("duration {s:?}"))?;
    Ok(match unit {
        "h" => n * 3600,
        "m" => n * 60,
        "s" => n,
        _ => bail!("unsupported duration {s:?}"),
    })
}

/// `selector` is a non-empty label map whose every pair is in `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels[k] == *v))
}

#[test]
fn webhook_configuration_never_blocks_arc_and_targets_only_listener_pods() {
    let r = Rendered::base().unwrap();
    let mwc = r
        .get("MutatingWebhookConfiguration", None, WEBHOOK_CONFIG)
        .unwrap();
    let hooks = mwc["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 1, "one webhook: {hooks:?}");
    let hook = &hooks[0];

    assert_eq!(hook["failurePolicy"], "Ignore");
    let timeout = hook["timeoutSeconds"].as_u64().unwrap();
    assert!((1..=5).contains(&timeout), "timeoutSeconds {timeout}");
    // Admission writes nothing (the per-listener objects come from a
    // controller), so the API server may call it for dry runs too.
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
    assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));

    let rules = hook["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0]["operations"], json!(["CREATE"]));
    assert_eq!(rules[0]["resources"], json!(["pods"]));
    assert_eq!(rules[0]["apiGroups"], json!([""]));
    assert_eq!(rules[0]["apiVersions"], json!(["v1"]));

    assert_eq!(
        hook["objectSelector"],
        json!({"matchLabels": {names::LISTENER_COMPONENT_LABEL: names::LISTENER_COMPONENT_VALUE}})
    );
    let exprs = hook["namespaceSelector"]["matchExpressions"]
        .as_array()
        .unwrap();
    let excluded: BTreeSet<&str> = exprs
        .iter()
        .filter(|e| e["key"] == "kubernetes.io/metadata.name" && e["operator"] == "NotIn")
        .flat_map(|e| strings(&e["values"]))
        .collect();
    assert!(
        excluded.contains("kube-system") && excluded.contains(NAMESPACE),
        "namespaceSelector must exclude kube-system and {NAMESPACE}: {exprs:?}"
    );
    assert!(
        !excluded.contains(LISTENER_NAMESPACE),
        "the listener namespace must not be excluded"
    );

    // No caBundle anywhere: cainjector owns it, and re-applying must not wipe it.
    assert!(
        hook["clientConfig"].get("caBundle").is_none(),
        "caBundle must not be in the manifest"
    );
    assert!(hook["clientConfig"].get("url").is_none());
    let inject = mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        .as_str()
        .unwrap();
    let (cert_ns, cert_name) = inject.split_once('/').unwrap();
    let serving = r.get("Certificate", Some(cert_ns), cert_name).unwrap();
    assert!(
        serving["spec"]["isCA"] != true,
        "inject from the serving cert"
    );

    // The service reference reaches the webhook's https port.
    let svc_ref = &hook["clientConfig"]["service"];
    assert_eq!(svc_ref["path"], "/mutate");
    assert_eq!(svc_ref["namespace"], NAMESPACE);
    let service = r
        .get(
            "Service",
            Some(NAMESPACE),
            svc_ref["name"].as_str().unwrap(),
        )
        .unwrap();
    let port = svc_ref["port"].as_u64().unwrap_or(443);
    let svc_port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == port)
        .expect("service port of the webhook reference");
    assert_eq!(port, 443);
    let container = r.webhook_container().unwrap();
    let target = &svc_port["targetPort"];
    let container_port = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == *target || p["containerPort"] == *target)
        .expect("the Service's targetPort is a port of the webhook container");
    assert_eq!(container_port["containerPort"], 8443);
    assert_eq!(arg_value(container, "--listen"), Some("0.0.0.0:8443"));
    assert!(selects(
        &service["spec"]["selector"],
        &r.deployment().unwrap()["spec"]["template"]["metadata"]["labels"]
    ));

    // The webhook owns per-listener objects by this very configuration's name.
    assert_eq!(
        arg_value(container, "--webhook-config-name"),
        mwc["metadata"]["name"].as_str()
    );
}

#[test]
fn cert_manager_issues_a_rotating_serving_certificate_for_the_service() {
    let r = Rendered::base().unwrap();
    let serving = r
        .get("Certificate", Some(NAMESPACE), "arc-watchdog-serving")
        .unwrap();
    let dns: BTreeSet<&str> = strings(&serving["spec"]["dnsNames"]).into_iter().collect();
    let svc = format!("{WEBHOOK}.{NAMESPACE}.svc");
    assert!(dns.contains(svc.as_str()), "{dns:?}");
    assert!(
        dns.contains(format!("{svc}.cluster.local").as_str()),
        "{dns:?}"
    );
    assert!(strings(&serving["spec"]["usages"]).contains(&"server auth"));

    // Renewed well before expiry, and well before the 7-day alert.
    for cert in r.all("Certificate") {
        let spec = &cert["spec"];
        let duration = go_duration_secs(spec["duration"].as_str().unwrap()).unwrap();
        let renew = go_duration_secs(spec["renewBefore"].as_str().unwrap()).unwrap();
        assert!(
            renew < duration,
            "{}: renewBefore >= duration",
            cert["metadata"]["name"]
        );
        assert!(
            renew > 7 * 24 * 3600,
            "{}: renews too late",
            cert["metadata"]["name"]
        );
    }

    // serving <- CA Issuer <- CA Certificate <- self-signed Issuer
    assert_eq!(serving["spec"]["issuerRef"]["kind"], "Issuer");
    let ca_issuer = r
        .get(
            "Issuer",
            Some(NAMESPACE),
            serving["spec"]["issuerRef"]["name"].as_str().unwrap(),
        )
        .unwrap();
    let ca_secret = ca_issuer["spec"]["ca"]["secretName"].as_str().unwrap();
    let ca_cert = r
        .all("Certificate")
        .into_iter()
        .find(|c| c["spec"]["secretName"] == ca_secret)
        .expect("a Certificate writes the CA Issuer's secret");
    assert_eq!(ca_cert["spec"]["isCA"], true);
    assert_eq!(ca_cert["spec"]["issuerRef"]["kind"], "Issuer");
    let bootstrap = r
        .get(
            "Issuer",
            Some(NAMESPACE),
            ca_cert["spec"]["issuerRef"]["name"].as_str().unwrap(),
        )
        .unwrap();
    assert_eq!(bootstrap["spec"]["selfSigned"], json!({}));

    // The webhook serves what cert-manager writes, from a read-only directory
    // mount (no subPath, so renewals reach the running pod).
    let pod = &r.deployment().unwrap()["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["secret"]["secretName"] == serving["spec"]["secretName"])
        .expect("the serving Secret is a volume");
    let container = r.webhook_container().unwrap();
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the serving Secret is mounted");
    assert_eq!(mount["readOnly"], true);
    assert!(mount.get("subPath").is_none());
    let dir = mount["mountPath"].as_str().unwrap();
    assert_eq!(
        arg_value(container, "--tls-cert"),
        Some(format!("{dir}/tls.crt").as_str())
    );
    assert_eq!(
        arg_value(container, "--tls-key"),
        Some(format!("{dir}/tls.key").as_str())
    );
}

#[test]
fn webhook_deployment_is_hardened_and_highly_available() {
    let r = Rendered::base().unwrap();
    let deployment = r.deployment().unwrap();
    assert_eq!(deployment["spec"]["replicas"], 2);
    let template = &deployment["spec"]["template"];
    let pod_labels = &template["metadata"]["labels"];
    assert!(selects(
        &deployment["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    let pod = &template["spec"];

    // Spread over nodes.
    let spread = pod["topologySpreadConstraints"].as_array();
    let anti = pod["affinity"].get("podAntiAffinity");
    assert!(
        spread.is_some_and(|s| s
            .iter()
            .any(|c| c["topologyKey"] == "kubernetes.io/hostname"
                && selects(&c["labelSelector"]["matchLabels"], pod_labels)))
            || anti.is_some(),
        "replicas must be spread over nodes"
    );
    let pdb = r
        .get("PodDisruptionBudget", Some(NAMESPACE), WEBHOOK)
        .unwrap();
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], pod_labels));

    // Pod securityContext.
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert_eq!(psc["runAsUser"], 65532);
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
    for forbidden in ["hostNetwork", "hostPID", "hostIPC"] {
        assert!(pod[forbidden] != true, "{forbidden}");
    }
    for volume in pod["volumes"].as_array().unwrap() {
        assert!(volume.get("hostPath").is_none(), "{volume}");
    }

    // The token only where needed: the ServiceAccount does not automount, the
    // webhook pod (which calls the API) opts in.
    let sa_name = pod["serviceAccountName"].as_str().unwrap();
    assert_eq!(sa_name, WEBHOOK);
    let sa = r.get("ServiceAccount", Some(NAMESPACE), sa_name).unwrap();
    assert_eq!(sa["automountServiceAccountToken"], false);
    assert_eq!(pod["automountServiceAccountToken"], true);

    let containers: Vec<&Value> = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(pod["initContainers"].as_array().into_iter().flatten())
        .collect();
    assert!(!containers.is_empty());
    for c in containers {
        let name = &c["name"];
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{name}");
        assert!(sc["capabilities"].get("add").is_none(), "{name}");
        assert!(sc["privileged"] != true, "{name}");
        assert!(
            sc["runAsNonRoot"] != false && sc["runAsUser"] != 0,
            "{name}"
        );
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        for kind in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    c["resources"][kind][resource].is_string(),
                    "{name}: resources.{kind}.{resource}"
                );
            }
        }
    }

    // Probes on the admin port.
    let c = r.webhook_container().unwrap();
    let admin = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "admin")
        .expect("admin port");
    assert_eq!(admin["containerPort"], 8080);
    assert_eq!(arg_value(c, "--admin-listen"), Some("0.0.0.0:8080"));
    for (probe, path) in [
        ("readinessProbe", names::PATH_READYZ),
        ("livenessProbe", names::PATH_HEALTHZ),
    ] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        let port = &c[probe]["httpGet"]["port"];
        assert!(*port == "admin" || *port == 8080, "{probe} port {port}");
    }
}

#[test]
fn one_image_tag_pins_the_webhook_and_the_injected_watchdog() {
    let r = Rendered::base().unwrap();
    let c = r.webhook_container().unwrap();
    let image = c["image"].as_str().unwrap();
    assert!(image.contains(':'), "pinned tag: {image}");
    assert_eq!(env_value(c, IMAGE_ENV), Some(image));
    assert_eq!(c["command"], json!(["/arc-watchdog-webhook"]));

    // Changing only the `images` entry moves both, so the copy is real.
    let dir = copy_of_manifests().unwrap();
    let manifests = dir.path().join("manifests");
    edit_kustomization(&manifests.join("kustomization.yaml"), |k| {
        let images = k["images"].as_array_mut().context("images")?;
        ensure!(images.len() == 1, "one images entry: {images:?}");
        images[0]["newName"] = json!("registry.test/team/arc-watchdog");
        images[0]["newTag"] = json!("9.8.7");
        Ok(())
    })
    .unwrap();
    let changed = Rendered::of(&manifests).unwrap();
    let c = changed.webhook_container().unwrap();
    assert_eq!(c["image"], "registry.test/team/arc-watchdog:9.8.7");
    assert_eq!(
        env_value(c, IMAGE_ENV),
        Some("registry.test/team/arc-watchdog:9.8.7")
    );
}

/// The rules of the per-listener Role the webhook creates, as
/// (group, resource, verbs): taken from the webhook itself, so the manifests
/// follow any change there.
fn per_listener_rules() -> Vec<(String, String, Vec<String>)> {
    let rules =
        serde_json::to_value(rbac::role_rules("scale-set-abcd1234-listener")).unwrap_or_default();
    let mut out = Vec::new();
    for rule in rules.as_array().into_iter().flatten() {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                let verbs = strings(&rule["verbs"])
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                out.push((group.to_owned(), resource.to_owned(), verbs));
            }
        }
    }
    out
}

/// Does some rule of `role` allow `verb` on `group`/`resource` (any name)?
fn allows(role: &Value, group: &str, resource: &str, verb: &str) -> bool {
    role["rules"].as_array().is_some_and(|rules| {
        rules.iter().any(|rule| {
            strings(&rule["apiGroups"]).contains(&group)
                && strings(&rule["resources"]).contains(&resource)
                && strings(&rule["verbs"]).contains(&verb)
                && rule.get("resourceNames").is_none()
        })
    })
}

#[test]
fn rbac_is_least_privilege() {
    let r = Rendered::base().unwrap();
    // No wildcard anywhere, no escalation verbs.
    for role in r.all("Role").into_iter().chain(r.all("ClusterRole")) {
        let name = &role["metadata"]["name"];
        for rule in role["rules"].as_array().unwrap() {
            for field in [
                "verbs",
                "resources",
                "apiGroups",
                "resourceNames",
                "nonResourceURLs",
            ] {
                for s in strings(&rule[field]) {
                    assert!(!s.contains('*'), "{name}: wildcard in {field}: {rule}");
                }
            }
            for verb in strings(&rule["verbs"]) {
                assert!(
                    ![
                        "escalate",
                        "bind",
                        "impersonate",
                        "delete",
                        "deletecollection"
                    ]
                    .contains(&verb),
                    "{name}: verb {verb}"
                );
            }
            assert!(
                !strings(&rule["resources"]).contains(&"secrets"),
                "{name}: no access to Secrets (the serving cert is a volume)"
            );
        }
    }
    // Bindings name only the webhook's ServiceAccount: no groups, no users.
    for binding in r
        .all("RoleBinding")
        .into_iter()
        .chain(r.all("ClusterRoleBinding"))
    {
        let subjects = binding["subjects"].as_array().unwrap();
        assert_eq!(
            subjects,
            &vec![json!({"kind": "ServiceAccount", "name": WEBHOOK, "namespace": NAMESPACE})],
            "{}",
            binding["metadata"]["name"]
        );
    }

    // Cluster-wide: its own MutatingWebhookConfiguration, /version, the
    // nodes (kubelet versions, Ready) and ARC's scale sets (read only), and
    // creating Events (a missing listener's, on its scale set, in the scale
    // set's namespace), nothing else.
    let cluster = r.get("ClusterRole", None, WEBHOOK).unwrap();
    assert_eq!(
        cluster["rules"],
        json!([
            {"apiGroups": ["admissionregistration.k8s.io"],
             "resources": ["mutatingwebhookconfigurations"],
             "resourceNames": [WEBHOOK_CONFIG],
             "verbs": ["get"]},
            {"nonResourceURLs": ["/version"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]},
            {"apiGroups": ["actions.github.com"], "resources": ["autoscalingrunnersets"],
             "verbs": ["list", "watch"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]}
        ])
    );
    assert_eq!(
        r.get("ClusterRoleBinding", None, WEBHOOK).unwrap()["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": WEBHOOK})
    );

    // In the listener namespace: read ARC's AutoscalingListeners, keep the
    // per-listener objects (never delete them: the garbage collector does),
    // and hold exactly what it grants (RBAC's escalation check).
    let role = r.get("Role", Some(LISTENER_NAMESPACE), WEBHOOK).unwrap();
    for (group, resource) in [
        ("rbac.authorization.k8s.io", "roles"),
        ("rbac.authorization.k8s.io", "rolebindings"),
        ("coordination.k8s.io", "leases"),
    ] {
        for verb in ["get", "list", "watch", "create", "update"] {
            assert!(allows(role, group, resource, verb), "{verb} {resource}");
        }
        assert!(
            !allows(role, group, resource, "delete"),
            "delete {resource}"
        );
    }
    for verb in ["get", "list", "watch"] {
        assert!(allows(
            role,
            "actions.github.com",
            "autoscalinglisteners",
            verb
        ));
    }
    let mut granted = BTreeSet::new();
    let per_listener = per_listener_rules();
    assert!(per_listener.len() >= 5, "{per_listener:?}");
    for (group, resource, verbs) in &per_listener {
        for verb in verbs {
            assert!(
                allows(role, group, resource, verb),
                "the webhook must hold {verb} {group}/{resource} to grant it"
            );
            granted.insert((group.clone(), resource.clone(), verb.clone()));
        }
    }
    // ...and nothing beyond management + what it grants.
    for rule in role["rules"].as_array().unwrap() {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    let manage = (matches!(resource, "roles" | "rolebindings" | "leases")
                        && matches!(verb, "get" | "list" | "watch" | "create" | "update"))
                        || (resource == "autoscalinglisteners"
                            && matches!(verb, "get" | "list" | "watch"));
                    assert!(
                        manage
                            || granted.contains(&(
                                group.to_owned(),
                                resource.to_owned(),
                                verb.to_owned()
                            )),
                        "unneeded permission {verb} {group}/{resource}"
                    );
                }
            }
        }
    }
    // What the webhook itself uses there (--report-uninjected): list and
    // watch the listener pods, create their Warning Events. Already held for
    // granting: the report adds no right.
    for (group, resource, verb) in [
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("events.k8s.io", "events", "create"),
    ] {
        assert!(
            allows(role, group, resource, verb),
            "{verb} {group}/{resource}"
        );
        assert!(
            granted.contains(&(group.to_owned(), resource.to_owned(), verb.to_owned())),
            "{verb} {group}/{resource} is also what each watchdog is granted"
        );
    }
    let binding = r
        .get("RoleBinding", Some(LISTENER_NAMESPACE), WEBHOOK)
        .unwrap();
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": WEBHOOK})
    );
}

#[test]
fn objects_live_where_they_belong_and_uninstall_spares_arc() {
    let r = Rendered::base().unwrap();
    // Deleting the manifests deletes these Namespaces: never ARC's.
    let namespaces: Vec<&str> = r
        .all("Namespace")
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str())
        .collect();
    assert_eq!(namespaces, vec![NAMESPACE]);

    let cluster_scoped = [
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
    ];
    for o in &r.0 {
        let kind = o["kind"].as_str().unwrap();
        let ns = o["metadata"]["namespace"].as_str();
        let name = o["metadata"]["name"].as_str().unwrap();
        if cluster_scoped.contains(&kind) {
            assert_eq!(ns, None, "{kind} {name} is cluster-scoped");
        } else if matches!(kind, "Role" | "RoleBinding") && ns == Some(LISTENER_NAMESPACE) {
            assert_eq!(name, WEBHOOK);
        } else {
            assert_eq!(ns, Some(NAMESPACE), "{kind} {name}");
        }
        // Only run-time objects carry managed-by arc-watchdog.
        assert!(
            o["metadata"]["labels"][names::MANAGED_BY_LABEL] != names::MANAGED_BY_VALUE,
            "{kind} {name}"
        );
        assert_eq!(
            o["metadata"]["labels"]["app.kubernetes.io/part-of"], "arc-watchdog",
            "{kind} {name}: `kubectl get -l app.kubernetes.io/part-of=arc-watchdog` lists everything"
        );
        assert!(
            !o["apiVersion"]
                .as_str()
                .unwrap()
                .starts_with("monitoring.coreos.com"),
            "monitoring is an optional component, not in the base"
        );
    }
}

#[test]
fn listener_namespace_is_one_knob() {
    let dir = copy_of_manifests().unwrap();
    let manifests = dir.path().join("manifests");
    edit_kustomization(
        &manifests
            .join("listener-namespace")
            .join("kustomization.yaml"),
        |k| {
            ensure!(
                k["namespace"] == LISTENER_NAMESPACE,
                "default {LISTENER_NAMESPACE}"
            );
            k["namespace"] = json!("ci-arc-controller");
            Ok(())
        },
    )
    .unwrap();
    let r = Rendered::of(&manifests).unwrap();
    r.get("Role", Some("ci-arc-controller"), WEBHOOK).unwrap();
    let binding = r
        .get("RoleBinding", Some("ci-arc-controller"), WEBHOOK)
        .unwrap();
    assert_eq!(binding["subjects"][0]["namespace"], NAMESPACE);
    assert!(r.get("Role", Some(LISTENER_NAMESPACE), WEBHOOK).is_err());
    // The webhook watches the new namespace for uninjected listeners.
    let line = webhook_command_line(r.webhook_container().unwrap()).unwrap();
    let cli = Cli::try_parse_from(&line).unwrap();
    assert_eq!(cli.listener_namespaces, vec!["ci-arc-controller"]);
    // Nothing else moved.
    r.deployment().unwrap();
    r.get("MutatingWebhookConfiguration", None, WEBHOOK_CONFIG)
        .unwrap();
}

/// The base plus the monitoring component, rendered from an overlay the way a
/// user enables it.
fn with_monitoring() -> Result<(Rendered, Rendered)> {
    let base = Rendered::base()?;
    let dir = copy_of_manifests()?;
    let overlay = dir.path().join("overlay");
    std::fs::create_dir_all(&overlay)?;
    std::fs::write(
        overlay.join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         resources: [../manifests]\ncomponents: [../manifests/monitoring]\n",
    )?;
    let full = Rendered::of(&overlay)?;
    Ok((base, full))
}

#[test]
fn monitoring_component_scrapes_webhook_and_watchdogs() {
    let (base, r) = with_monitoring().unwrap();
    assert_eq!(
        r.0.len(),
        base.0.len()
            + r.all("PodMonitor").len()
            + r.all("ServiceMonitor").len()
            + r.all("PrometheusRule").len()
            + r.all("ConfigMap").len()
            - base.all("ConfigMap").len()
    );

    let monitors = r.all("PodMonitor");
    let webhook_labels = &base.deployment().unwrap()["spec"]["template"]["metadata"]["labels"];
    let webhook_monitor = monitors
        .iter()
        .find(|m| selects(&m["spec"]["selector"]["matchLabels"], webhook_labels))
        .expect("a PodMonitor selects the webhook pods");
    let endpoints = webhook_monitor["spec"]["podMetricsEndpoints"]
        .as_array()
        .unwrap();
    assert!(
        endpoints.iter().any(|e| e["port"] == "admin"
            && e["path"].as_str().unwrap_or("/metrics") == names::PATH_METRICS)
    );

    let listener_labels = json!({
        names::LISTENER_COMPONENT_LABEL: names::LISTENER_COMPONENT_VALUE,
        names::PART_OF_LABEL: names::PART_OF_VALUE,
    });
    let sidecar_monitor = monitors
        .iter()
        .find(|m| selects(&m["spec"]["selector"]["matchLabels"], &listener_labels))
        .expect("a PodMonitor selects ARC listener pods");
    assert_eq!(sidecar_monitor["spec"]["namespaceSelector"]["any"], true);
    let endpoints = sidecar_monitor["spec"]["podMetricsEndpoints"]
        .as_array()
        .unwrap();
    assert!(
        endpoints
            .iter()
            .any(|e| e["port"] == arc_watchdog_webhook::mutation::PORT_NAME
                && e["path"].as_str().unwrap_or("/metrics") == names::PATH_METRICS)
    );
    // The alerts use the Prometheus Operator's default job names.
    for m in &monitors {
        assert!(m["spec"].get("jobLabel").is_none());
    }
}

fn alerts(r: &Rendered) -> Vec<(String, String)> {
    r.all("PrometheusRule")
        .iter()
        .flat_map(|p| p["spec"]["groups"].as_array().cloned().unwrap_or_default())
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|rule| {
            Some((
                rule["alert"].as_str()?.to_owned(),
                rule["expr"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

#[test]
fn monitoring_component_alerts_on_every_failure_the_issue_names() {
    let (_, r) = with_monitoring().unwrap();
    let alerts = alerts(&r);
    let expr_of = |name: &str| {
        alerts
            .iter()
            .find(|(a, _)| a == name)
            .map(|(_, e)| e.as_str())
            .unwrap_or_else(|| panic!("alert {name} missing; have {alerts:?}"))
    };
    assert!(expr_of("ArcWatchdogConflictLoopActive").contains("arc_watchdog_loop_active"));
    // Decisions are counted by their Event reason: the watchdog's own names.
    for (alert, reason) in [
        (
            "ArcWatchdogEvictionBudgetExhausted",
            Reason::EvictionBudgetExhausted,
        ),
        (
            "ArcWatchdogDuplicateScaleSetSuspected",
            Reason::DuplicateScaleSetSuspected,
        ),
    ] {
        let expr = expr_of(alert);
        assert!(expr.contains("arc_watchdog_decisions_total"), "{alert}");
        assert!(
            expr.contains(&format!("reason=\"{}\"", reason.as_str())),
            "{alert}: {expr}"
        );
    }
    assert!(expr_of("ArcWatchdogWebhookCertificateExpiring").contains("arc_watchdog_webhook_"));
    assert!(expr_of("ArcWatchdogWebhookCertificateExpiring").contains("7 * 24 * 3600"));
    assert!(
        expr_of("ArcWatchdogWebhookUnavailable")
            .contains("up{job=\"arc-watchdog/arc-watchdog-webhook\"}")
    );
    // Uninjected listeners, from the webhook's own watch (no kube-state-metrics).
    assert!(
        expr_of("ArcWatchdogUninjectedListeners")
            .contains("arc_watchdog_webhook_uninjected_listeners")
    );
    assert!(
        expr_of("ArcWatchdogWebhookCannotWatchListeners")
            .contains("arc_watchdog_webhook_coverage_watch_errors_total")
    );
    // A watchdog that cannot start: the listeners released without it, and
    // those the webhook fails to release.
    assert!(
        expr_of("ArcWatchdogInjectionSuspended")
            .contains("arc_watchdog_webhook_suspended_listeners")
    );
    assert!(
        expr_of("ArcWatchdogListenerHeldByWatchdog")
            .contains("arc_watchdog_webhook_blocked_listeners")
    );
    // Scale sets without a running listener, by reason, from the webhook's
    // own watch; and that watch failing.
    let missing = expr_of("ArcWatchdogListenerMissing");
    assert!(
        missing.contains("arc_watchdog_webhook_missing_listeners"),
        "{missing}"
    );
    assert!(missing.contains("by (reason)"), "{missing}");
    assert!(
        expr_of("ArcWatchdogWebhookCannotWatchScaleSets")
            .contains("arc_watchdog_webhook_missing_watch_errors_total")
    );
    let without = expr_of("ArcWatchdogListenerWithoutWatchdog");
    assert!(without.contains("kube_pod_labels"));
    assert!(without.contains(&format!("container=\"{}\"", names::CONTAINER_NAME)));
    for (name, expr) in &alerts {
        let open = expr.matches('(').count();
        assert_eq!(open, expr.matches(')').count(), "{name}: unbalanced ()");
        assert_eq!(
            expr.matches('{').count(),
            expr.matches('}').count(),
            "{name}: unbalanced {{}}"
        );
    }
}

/// Whether `expr` reads `metric` (a selector of that exact name, not a longer
/// one it is the start of).
fn reads(expr: &str, metric: &str) -> bool {
    expr.match_indices(metric).any(|(at, _)| {
        let before = expr[..at].chars().next_back();
        let after = expr[at + metric.len()..].chars().next();
        let ident = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        !ident(before) && !ident(after)
    })
}

#[test]
fn monitoring_component_ships_the_dashboard_for_the_grafana_sidecar() {
    let (_, r) = with_monitoring().unwrap();
    let cm = r
        .get("ConfigMap", Some(NAMESPACE), "arc-watchdog-dashboard")
        .unwrap();
    assert_eq!(
        cm["metadata"]["labels"]["grafana_dashboard"], "1",
        "the Grafana sidecar's default label"
    );
    let data = cm["data"].as_object().unwrap();
    assert_eq!(data.len(), 1, "one dashboard: {:?}", data.keys());
    let (file, text) = data.iter().next().unwrap();
    assert!(file.ends_with(".json"), "{file}");
    let source = std::fs::read_to_string(
        repo_root()
            .join("manifests/monitoring/dashboard")
            .join(file),
    )
    .unwrap();
    assert_eq!(text.as_str().unwrap(), source);
    let dash: Value = serde_json::from_str(&source).unwrap();

    assert_eq!(dash["uid"], "arc-watchdog");
    assert!(
        dash["schemaVersion"].as_u64().unwrap() >= 36,
        "datasource variables by uid"
    );
    let variables = dash["templating"]["list"].as_array().unwrap();
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    let ds = variable("datasource");
    assert_eq!(
        (&ds["type"], &ds["query"]),
        (&json!("datasource"), &json!("prometheus"))
    );
    // Scale sets as the sidecars' PodMonitor labels their series.
    for name in ["namespace", "scale_set"] {
        let v = variable(name);
        assert_eq!(v["type"], "query", "{name}");
        assert!(
            v["definition"]
                .as_str()
                .unwrap()
                .contains(&format!(", {name})")),
            "{name}: {}",
            v["definition"]
        );
    }
    let relabel = &r
        .all("PodMonitor")
        .into_iter()
        .find(|m| m["spec"]["namespaceSelector"]["any"] == true)
        .unwrap()["spec"]["podMetricsEndpoints"][0]["relabelings"];
    assert!(
        relabel
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["targetLabel"] == "scale_set"),
        "{relabel}"
    );

    let mut panels: Vec<&Value> = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        panels.push(p);
        panels.extend(p["panels"].as_array().into_iter().flatten());
    }
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    let titles: BTreeSet<&str> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles.len(), panels.len(), "panel titles are unique");
    let mut exprs = Vec::new();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        for key in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][key].is_u64(), "{}: gridPos.{key}", p["title"]);
        }
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            exprs.push((p["title"].as_str().unwrap(), t["expr"].as_str().unwrap()));
        }
    }
    // What an operator needs during an incident (issue #12), each read by a
    // panel; that these are metrics the binaries export, and that Prometheus
    // parses every query, is integration_monitoring's check.
    for metric in [
        "arc_watchdog_session_conflicts_total",
        "arc_watchdog_loop_active",
        "arc_watchdog_start_delay_seconds",
        "arc_watchdog_evictions_total",
        "arc_watchdog_evictions_not_accepted_total",
        "arc_watchdog_fail_open",
        "arc_watchdog_decisions_total",
        "arc_watchdog_webhook_uninjected_listeners",
        "arc_watchdog_webhook_blocked_listeners",
        "arc_watchdog_webhook_suspended_listeners",
        "arc_watchdog_webhook_reviews_total",
        "arc_watchdog_webhook_review_duration_seconds_bucket",
        "arc_watchdog_webhook_certificate_expiry_timestamp_seconds",
        "arc_watchdog_webhook_rbac_ensures_total",
        "arc_watchdog_webhook_coverage_watch_errors_total",
        "arc_watchdog_webhook_connections_refused_total",
        "arc_watchdog_webhook_connection_timeouts_total",
    ] {
        assert!(
            exprs.iter().any(|(_, e)| reads(e, metric)),
            "no panel reads {metric}"
        );
    }
    let by = |metric: &str, label: &str| {
        exprs
            .iter()
            .any(|(_, e)| reads(e, metric) && e.contains(label))
    };
    assert!(by("arc_watchdog_evictions_total", "reason"));
    assert!(by("arc_watchdog_evictions_not_accepted_total", "outcome"));
    assert!(by("arc_watchdog_decisions_total", "reason"));
    assert!(by("arc_watchdog_webhook_reviews_total", "outcome, reason"));
    assert!(by("arc_watchdog_webhook_rbac_ensures_total", "by (result)"));
    assert!(by(
        "arc_watchdog_webhook_review_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le)"
    ));
    // Per scale set: every watchdog query follows the variables.
    for (title, e) in &exprs {
        if e.contains("arc_watchdog_webhook_") || !e.contains("arc_watchdog_") {
            continue;
        }
        assert!(
            e.contains("namespace=~\"$namespace\", scale_set=~\"$scale_set\""),
            "{title}: {e}"
        );
    }
    assert!(reads("rate(x_total[5m])", "x_total"));
    assert!(!reads("x_total_more", "x_total"));
}

/// The webhook container's args and env, as the command line the webhook
/// parses: each env var must be one of its flags' `ARC_WATCHDOG_*` fallbacks.
fn webhook_command_line(container: &Value) -> Result<Vec<String>> {
    let command = Cli::command();
    let mut line = vec!["arc-watchdog-webhook".to_owned()];
    line.extend(strings(&container["args"]).into_iter().map(str::to_owned));
    for env in container["env"].as_array().into_iter().flatten() {
        let name = env["name"].as_str().context("env name")?;
        // The downward API's namespace is the Deployment's own.
        let value = match env["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.namespace") => NAMESPACE,
            _ => env["value"]
                .as_str()
                .with_context(|| format!("env {name} has no literal value"))?,
        };
        let arg = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == name))
            .with_context(|| format!("env {name} is not a flag of arc-watchdog-webhook"))?;
        let long = arg
            .get_long()
            .with_context(|| format!("{name}: no long flag"))?;
        line.push(format!("--{long}={value}"));
    }
    Ok(line)
}

#[test]
fn deployment_speaks_the_webhook_flags() {
    let r = Rendered::base().unwrap();
    let container = r.webhook_container().unwrap();
    let line = webhook_command_line(container).unwrap();
    let cli = Cli::try_parse_from(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    cli.thresholds.validate().unwrap();

    // One image: the webhook injects the image it runs.
    assert_eq!(cli.watchdog_image, container["image"].as_str().unwrap());
    assert_eq!(
        cli.webhook_config_name,
        r.get("MutatingWebhookConfiguration", None, WEBHOOK_CONFIG)
            .unwrap()["metadata"]["name"]
    );
    assert!(
        cli.manage_rbac,
        "the manifests grant what RBAC management needs"
    );
    // Uninjected listeners are reported in exactly the namespaces where the
    // manifests give the webhook its Role.
    assert!(cli.report_uninjected);
    let role_namespaces: Vec<&str> = r
        .all("Role")
        .into_iter()
        .filter(|role| role["metadata"]["name"] == WEBHOOK)
        .filter_map(|role| role["metadata"]["namespace"].as_str())
        .collect();
    assert_eq!(cli.listener_namespaces, role_namespaces);
    // Missing listeners are reported for the scale sets of every namespace,
    // which is where the ClusterRole lets the webhook read them; acting on
    // them is opt-in.
    assert!(!cli.report_missing_after.is_zero());
    assert!(cli.runner_namespaces.is_empty());
    assert!(cli.delete_stuck_terminating_after.is_zero());
    assert!(cli.missing_actions_dry_run);
    cli.validate().unwrap();

    let port = |name: &str| {
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("port {name}"))
    };
    assert_eq!(u64::from(cli.listen.port()), port("https"));
    assert_eq!(u64::from(cli.admin_listen.port()), port("admin"));

    // The per-listener RBAC is reconciled in the namespaces the listener
    // namespace component grants rights in.
    assert!(cli.manage_rbac);
    assert_eq!(cli.listener_namespaces, vec![LISTENER_NAMESPACE.to_owned()]);

    // The certificate files are where the Secret is mounted.
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "serving-cert")
        .expect("serving-cert mount");
    let dir = Path::new(mount["mountPath"].as_str().unwrap());
    assert_eq!(cli.tls_cert, dir.join("tls.crt"));
    assert_eq!(cli.tls_key, dir.join("tls.key"));
}

/// README "Install": an overlay that sets `images` again and repeats the
/// base's `replacements` entry moves both images too.
#[test]
fn overlay_repeating_the_replacement_pins_both_images() {
    let dir = copy_of_manifests().unwrap();
    let base: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(dir.path().join("manifests/kustomization.yaml")).unwrap(),
    )
    .unwrap();
    let overlay = dir.path().join("overlay");
    std::fs::create_dir_all(&overlay).unwrap();
    let kustomization = json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["../manifests"],
        "images": [{"name": base["images"][0]["newName"], "newName": "mirror.test/arc-watchdog", "newTag": "1.2.3"}],
        "replacements": base["replacements"],
    });
    std::fs::write(
        overlay.join("kustomization.yaml"),
        serde_yaml_ng::to_string(&kustomization).unwrap(),
    )
    .unwrap();
    let r = Rendered::of(&overlay).unwrap();
    let c = r.webhook_container().unwrap();
    assert_eq!(c["image"], "mirror.test/arc-watchdog:1.2.3");
    assert_eq!(
        env_value(c, IMAGE_ENV),
        Some("mirror.test/arc-watchdog:1.2.3")
    );
}

/// TLS without cert-manager (`manifests/tls-self-managed`, as an overlay
/// enables it): no cert-manager object, annotation or volume; the webhook
/// runs `--tls-mode=self-managed` with its Secret in its own namespace; its
/// rights grow by exactly its Secret (by name, but for `create`) and `patch`
/// on its own configuration (by name). The base install is unchanged (the
/// tests above).
#[test]
fn tls_self_managed_component_needs_no_cert_manager_and_grants_only_its_secret() {
    let r = Rendered::of(&repo_root().join("tests/kustomize/self-managed-tls")).unwrap();
    let base = Rendered::base().unwrap();
    for o in &r.0 {
        let api = o["apiVersion"].as_str().unwrap();
        assert!(
            !api.starts_with("cert-manager.io/"),
            "{api} {}",
            o["metadata"]["name"]
        );
    }
    let config = r
        .get("MutatingWebhookConfiguration", None, WEBHOOK_CONFIG)
        .unwrap();
    assert_eq!(config["metadata"]["annotations"], Value::Null);
    assert_eq!(
        config["webhooks"],
        base.get("MutatingWebhookConfiguration", None, WEBHOOK_CONFIG)
            .unwrap()["webhooks"],
        "only the annotation differs"
    );

    let container = r.webhook_container().unwrap();
    let line = webhook_command_line(container).unwrap();
    let cli = Cli::try_parse_from(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    cli.validate().unwrap();
    assert_eq!(cli.tls_mode, TlsMode::SelfManaged);
    assert_eq!(cli.tls_namespace().unwrap(), NAMESPACE);
    assert_eq!(cli.tls_service_name, WEBHOOK, "the Service's name");
    r.get("Service", Some(NAMESPACE), &cli.tls_service_name)
        .unwrap();
    assert_eq!(container["volumeMounts"], Value::Null);
    assert_eq!(
        r.deployment().unwrap()["spec"]["template"]["spec"]["volumes"],
        Value::Null
    );

    // Cluster-wide: the base's rules, the first one with `patch` too.
    let cluster = r.get("ClusterRole", None, WEBHOOK).unwrap();
    let mut want = base.get("ClusterRole", None, WEBHOOK).unwrap()["rules"].clone();
    want[0]["verbs"] = json!(["get", "patch"]);
    assert_eq!(cluster["rules"], want);
    assert_eq!(
        cluster["rules"][0]["resourceNames"],
        json!([cli.webhook_config_name])
    );

    // Its Secret, in its namespace: get and update by name, create.
    let role = r
        .get("Role", Some(NAMESPACE), "arc-watchdog-webhook-tls")
        .unwrap();
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": [""], "resources": ["secrets"],
             "resourceNames": [cli.tls_secret_name], "verbs": ["get", "update"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}
        ])
    );
    let binding = r
        .get("RoleBinding", Some(NAMESPACE), "arc-watchdog-webhook-tls")
        .unwrap();
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": WEBHOOK, "namespace": NAMESPACE}])
    );
    assert_eq!(binding["roleRef"]["name"], "arc-watchdog-webhook-tls");
    // No other rule anywhere touches Secrets.
    for role in r.all("Role").into_iter().chain(r.all("ClusterRole")) {
        if role["metadata"]["name"] == "arc-watchdog-webhook-tls" {
            continue;
        }
        for rule in role["rules"].as_array().unwrap() {
            assert!(!strings(&rule["resources"]).contains(&"secrets"), "{rule}");
        }
    }
}
