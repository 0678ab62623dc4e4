//! Objects in a [`ControlPlane`]: namespaces and service accounts,
//! server-side apply of any YAML, and CRDs (ARC's and cert-manager's, from
//! their Go modules or an ARC source tree), each waited for until it is
//! Established.

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, ensure};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::{Client, ResourceExt as _};
use serde::Deserialize as _;

use super::ControlPlane;
use super::tools::{ARC_MODULE, CERT_MANAGER_MODULE, crd_pins, go_module_dir_in, sorted_files};

/// [`ControlPlane::create_service_account`] with `client` (one client for
/// many objects: each [`ControlPlane::admin_client`] is a new connection).
pub async fn create_service_account(client: &Client, namespace: &str, name: &str) -> Result<()> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let sa = serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}});
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&sa),
    )
    .await
    .with_context(|| format!("creating service account {namespace}/{name}"))?;
    Ok(())
}

/// Field manager used for server-side apply from tests.
pub const FIELD_MANAGER: &str = "arc-watchdog-tests";

/// Where ARC keeps its CRDs, in its module and its source tree.
const ARC_CRD_DIR: &str = "config/crd/bases";

fn is_arc_crd(file_name: &str) -> bool {
    file_name.starts_with("actions.github.com_") && file_name.ends_with(".yaml")
}

impl ControlPlane {
    /// Creates a namespace (idempotent, server-side apply).
    pub async fn create_namespace(&self, name: &str) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.admin_client().await?);
        let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&ns),
        )
        .await
        .with_context(|| format!("creating namespace {name}"))?;
        Ok(())
    }

    /// Creates a ServiceAccount (idempotent). The ServiceAccount admission
    /// plugin is on: a pod naming a missing ServiceAccount is refused.
    pub async fn create_service_account(&self, namespace: &str, name: &str) -> Result<()> {
        create_service_account(&self.admin_client().await?, namespace, name).await
    }

    /// Server-side applies every document of a (multi-document) YAML text.
    /// Namespaced objects without a namespace go to `default_namespace`.
    /// Returns the applied objects as the server stored them.
    pub async fn apply_yaml(
        &self,
        yaml: &str,
        default_namespace: Option<&str>,
    ) -> Result<Vec<DynamicObject>> {
        let client = self.admin_client().await?;
        let mut applied = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
            let value = serde_json::Value::deserialize(doc).context("parsing YAML")?;
            if value.is_null() {
                continue;
            }
            let obj: DynamicObject = serde_json::from_value(value.clone())
                .context("YAML document is not a Kubernetes object")?;
            let types = obj
                .types
                .clone()
                .ok_or_else(|| anyhow!("object without apiVersion/kind: {value}"))?;
            let gvk = GroupVersionKind::try_from(&types).map_err(|e| anyhow!("{e}"))?;
            let (ar, caps) = kube::discovery::pinned_kind(&client, &gvk)
                .await
                .with_context(|| format!("discovering {gvk:?}"))?;
            let name = obj.name_any();
            let api: Api<DynamicObject> = if caps.scope == kube::discovery::Scope::Namespaced {
                let ns = obj
                    .namespace()
                    .or_else(|| default_namespace.map(str::to_owned))
                    .ok_or_else(|| anyhow!("{} {name} needs a namespace", types.kind))?;
                Api::namespaced_with(client.clone(), &ns, &ar)
            } else {
                Api::all_with(client.clone(), &ar)
            };
            let out = api
                .patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&value),
                )
                .await
                .with_context(|| format!("applying {} {name}", types.kind))?;
            applied.push(out);
        }
        Ok(applied)
    }

    /// Applies CRDs and waits until each is Established.
    pub async fn apply_crds(&self, yaml: &str) -> Result<Vec<String>> {
        let applied = self.apply_yaml(yaml, None).await?;
        let api: Api<CustomResourceDefinition> = Api::all(self.admin_client().await?);
        let mut names = Vec::new();
        for obj in applied {
            let name = obj.name_any();
            let cond = kube::runtime::wait::conditions::is_crd_established();
            tokio::time::timeout(
                Duration::from_secs(30),
                kube::runtime::wait::await_condition(api.clone(), &name, cond),
            )
            .await
            .with_context(|| format!("CRD {name} not established after 30s"))??;
            names.push(name);
        }
        Ok(names)
    }

    /// Installs the CRDs a Go module ships: the files of `subdir` whose name
    /// `keep` accepts, in name order, from `module` at the version the
    /// wrapper module `pins` requires (in the module cache; downloaded when
    /// missing, see [`go_module_dir_in`]). Waits until each is Established
    /// and returns their names.
    pub async fn install_module_crds(
        &self,
        module: &str,
        pins: &Path,
        subdir: &str,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>> {
        let dir = go_module_dir_in(module, pins)?.join(subdir);
        self.install_crds_in(&dir, keep).await
    }

    /// Installs the CRD files of `dir` whose name `keep` accepts, in name
    /// order; waits until each is Established and returns their names.
    pub async fn install_crds_in(
        &self,
        dir: &Path,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>> {
        let mut yaml = String::new();
        for f in sorted_files(dir)? {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if keep(name) {
                yaml.push_str("\n---\n");
                yaml.push_str(
                    &fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?,
                );
            }
        }
        ensure!(!yaml.is_empty(), "no CRDs in {}", dir.display());
        self.apply_crds(&yaml).await
    }

    /// Installs ARC's CRDs (`config/crd/bases/actions.github.com_*.yaml`)
    /// from the ARC module the wrapper `pins` requires (`tests/go/crds`).
    /// Returns the CRD names.
    pub async fn install_arc_crds_from(&self, pins: &Path) -> Result<Vec<String>> {
        self.install_module_crds(ARC_MODULE, pins, ARC_CRD_DIR, is_arc_crd)
            .await
    }

    /// Installs the CRDs of an ARC release source tree (`src` of a
    /// `tests/scripts/build-arc.sh` build). Returns the CRD names.
    pub async fn install_arc_crds_from_source(&self, src: &Path) -> Result<Vec<String>> {
        self.install_crds_in(&src.join(ARC_CRD_DIR), is_arc_crd)
            .await
    }

    /// Installs ARC's CRDs pinned in `tests/go/crds` (see
    /// [`Self::install_arc_crds_from`]).
    pub async fn install_arc_crds(&self) -> Result<Vec<String>> {
        self.install_arc_crds_from(&crd_pins()).await
    }

    /// Installs cert-manager's CRDs (`deploy/crds/*.yaml` of the cert-manager
    /// Go module: plain CRDs, no Helm templating). Returns the CRD names.
    pub async fn install_cert_manager_crds(&self) -> Result<Vec<String>> {
        self.install_module_crds(CERT_MANAGER_MODULE, &crd_pins(), "deploy/crds", |name| {
            name.ends_with(".yaml")
        })
        .await
    }
}
