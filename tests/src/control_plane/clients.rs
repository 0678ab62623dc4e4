//! Who talks to a [`ControlPlane`]: the admin client, real TokenRequest
//! tokens for ServiceAccounts and pods (what RBAC tests must use), clients
//! and kubeconfig files built from them, and the pinned `kubectl`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, anyhow, ensure};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Client;
use kube::api::{Api, PostParams};

use super::ControlPlane;
use super::fixtures::PodIdentity;
use super::kubeconfig::{
    Credentials, client_from_kubeconfig, client_from_kubeconfig_with, kubeconfig_yaml,
};
use super::tools::go_tool;

impl ControlPlane {
    /// An admin client (client certificate in `system:masters`: bypasses
    /// RBAC; never use it to test permissions). Create one per tokio runtime
    /// (per test): a kube client's background task lives on the runtime that
    /// created it.
    pub async fn admin_client(&self) -> Result<Client> {
        client_from_kubeconfig(&self.admin_kubeconfig_yaml).await
    }

    /// A real token for a ServiceAccount (TokenRequest), valid for an hour,
    /// optionally bound to a pod (as the kubelet does for projected tokens:
    /// the token dies with the pod).
    pub async fn service_account_token(
        &self,
        namespace: &str,
        service_account: &str,
        bound_pod: Option<(&str, &str)>,
    ) -> Result<String> {
        let client = self.admin_client().await?;
        let sas: Api<ServiceAccount> = Api::namespaced(client, namespace);
        let tr = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![self.server.clone()],
                expiration_seconds: Some(3600),
                bound_object_ref: bound_pod.map(|(name, uid)| BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(name.into()),
                    uid: Some(uid.into()),
                }),
            },
            ..Default::default()
        };
        let out = sas
            .create_token_request(service_account, &PostParams::default(), &tr)
            .await
            .with_context(|| format!("TokenRequest for {namespace}/{service_account}"))?;
        out.status.map(|s| s.token).ok_or_else(|| {
            anyhow!("TokenRequest for {namespace}/{service_account} returned no token")
        })
    }

    /// A kubeconfig file authenticating with `token` (for processes such as
    /// `arc-watchdog run`, via `KUBECONFIG`). Written into the control
    /// plane's directory under `name`.
    pub fn write_token_kubeconfig(&self, name: &str, token: &str) -> Result<PathBuf> {
        let path = self.dir.join(format!("{name}.kubeconfig"));
        let yaml = self.token_kubeconfig_yaml(token);
        arc_watchdog_certs::write_file_atomic(&path, yaml.as_bytes(), 0o600)?;
        Ok(path)
    }

    fn token_kubeconfig_yaml(&self, token: &str) -> String {
        kubeconfig_yaml(&self.server, &self.ca_pem, &Credentials::Token(token))
    }

    /// A client authenticating with `token`.
    pub async fn token_client(&self, token: &str) -> Result<Client> {
        client_from_kubeconfig(&self.token_kubeconfig_yaml(token)).await
    }

    /// A client for a ServiceAccount with a fresh TokenRequest token: what
    /// RBAC tests must use.
    pub async fn service_account_client(
        &self,
        namespace: &str,
        service_account: &str,
        bound_pod: Option<(&str, &str)>,
    ) -> Result<Client> {
        let token = self
            .service_account_token(namespace, service_account, bound_pod)
            .await?;
        self.token_client(&token).await
    }

    /// The token the kubelet would mount into `pod`'s containers: for the
    /// pod's ServiceAccount, bound to the pod (it dies with the pod).
    pub async fn pod_token(&self, pod: &Pod) -> Result<String> {
        let id = PodIdentity::of(pod)?;
        self.service_account_token(
            &id.namespace,
            &id.service_account,
            Some((&id.name, &id.uid)),
        )
        .await
    }

    /// A client with `pod`'s identity ([`Self::pod_token`]): what its
    /// injected watchdog may do, for RBAC tests.
    pub async fn pod_client(&self, pod: &Pod) -> Result<Client> {
        self.token_client(&self.pod_token(pod).await?).await
    }

    /// [`Self::pod_client`] configured like `arc-watchdog run`'s: no
    /// kube-level retries, so that the watchdog's own eviction retries are
    /// what is tested.
    pub async fn pod_watchdog_client(&self, pod: &Pod) -> Result<Client> {
        client_from_kubeconfig_with(
            &self.token_kubeconfig_yaml(&self.pod_token(pod).await?),
            false,
        )
        .await
    }

    /// A `kubectl` command (the 1.34 one built with the control plane:
    /// /usr/bin/kubectl may be outside the supported version skew) pointed
    /// at this control plane as admin.
    pub fn kubectl(&self) -> Result<Command> {
        let mut cmd = Command::new(go_tool("kubectl")?);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST");
        Ok(cmd)
    }

    /// Runs kubectl with `args`, failing with its stderr when it fails.
    pub fn kubectl_run(&self, args: &[&str]) -> Result<String> {
        let out = self
            .kubectl()?
            .args(args)
            .output()
            .with_context(|| format!("running kubectl {}", args.join(" ")))?;
        ensure!(
            out.status.success(),
            "kubectl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
