//! arc-watchdog's install on a [`ControlPlane`]: the CRDs and
//! `manifests/` as a user applies them, and [`Webhook`], the
//! `arc-watchdog-webhook` process standing in for the Deployment that
//! cannot run here, registered by the manifests' MutatingWebhookConfiguration
//! with its local URL and CA.

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, PostParams};
use serde::Deserialize as _;

use super::ControlPlane;
use super::fixtures::LISTENER_NAMESPACE;
use super::http::http_get;
use super::kubeconfig::b64;
use super::pki::loopback_serving;
use super::process::{Proc, ProcSlot, free_port, tail_logs};
use super::tools::{workspace_bin, workspace_root};

/// Image the webhook is told to inject (no image is pulled here: pods run,
/// if at all, as processes of the e2e kubelet).
pub const WATCHDOG_IMAGE: &str = "ghcr.io/arc-watchdog/arc-watchdog:dev";

/// Namespace of the webhook (manifests/namespace.yaml).
pub const WEBHOOK_NAMESPACE: &str = "arc-watchdog";
/// ServiceAccount of the webhook (manifests/webhook/serviceaccount.yaml).
pub const WEBHOOK_SERVICE_ACCOUNT: &str = "arc-watchdog-webhook";
/// Name of the MutatingWebhookConfiguration (manifests/webhook/).
pub const WEBHOOK_CONFIG_NAME: &str = "arc-watchdog";
/// The Secret of self-managed TLS (manifests/tls-self-managed/).
pub const TLS_SECRET_NAME: &str = "arc-watchdog-webhook-tls";

/// How the webhook injects its sidecar (`--sidecar-mode`): the webhook's
/// own type.
pub use arc_watchdog_core::SidecarMode;

impl ControlPlane {
    /// `kubectl apply --server-side -k manifests/` (needs cert-manager's
    /// CRDs: see [`Self::install_cert_manager_crds`]). Returns kubectl's
    /// output.
    pub fn apply_manifests(&self) -> Result<String> {
        let manifests = workspace_root().join("manifests");
        self.kubectl_run(&[
            "apply",
            "--server-side",
            "--field-manager=kubectl",
            "-k",
            &manifests.display().to_string(),
        ])
    }

    /// Installs arc-watchdog the way a user would, minus what cannot run
    /// here: cert-manager's and ARC's CRDs, `kubectl apply --server-side -k
    /// manifests/`, then the webhook as a local process authenticated as its
    /// own ServiceAccount (a TokenRequest token, so the manifests' RBAC is
    /// what it gets), registered at its local URL. `webhook_args` are extra
    /// webhook flags (e.g. `--sidecar-mode=classic`).
    pub async fn install_arc_watchdog(&self, webhook_args: &[&str]) -> Result<Webhook> {
        self.prepare_arc_watchdog().await?;
        let kubeconfig = self.webhook_kubeconfig().await?;
        let webhook = Webhook::start(self, "webhook", &kubeconfig, webhook_args).await?;
        webhook.register(self).await?;
        Ok(webhook)
    }

    /// Everything [`Self::install_arc_watchdog`] does before starting the
    /// webhook: cert-manager's and ARC's CRDs and `manifests/`.
    pub async fn prepare_arc_watchdog(&self) -> Result<()> {
        // ARC's namespace exists before arc-watchdog is installed (the
        // manifests put a Role there and do not create it).
        self.create_namespace(LISTENER_NAMESPACE).await?;
        self.install_cert_manager_crds().await?;
        self.install_arc_crds().await?;
        self.apply_manifests()?;
        Ok(())
    }

    /// The install with TLS without cert-manager, as far as it can run
    /// here: ARC's CRDs and `kubectl apply --server-side -k
    /// tests/kustomize/self-managed-tls` (`manifests/` with the
    /// `tls-self-managed` component; no cert-manager CRDs needed).
    pub async fn prepare_self_managed_tls(&self) -> Result<()> {
        self.create_namespace(LISTENER_NAMESPACE).await?;
        self.install_arc_crds().await?;
        let overlay = workspace_root().join("tests/kustomize/self-managed-tls");
        self.kubectl_run(&[
            "apply",
            "--server-side",
            "--field-manager=kubectl",
            "-k",
            &overlay.display().to_string(),
        ])?;
        Ok(())
    }

    /// UID of the MutatingWebhookConfiguration `arc-watchdog`: the owner of
    /// every object arc-watchdog creates at run time.
    pub async fn webhook_config_uid(&self) -> Result<String> {
        let configs: Api<MutatingWebhookConfiguration> = Api::all(self.admin_client().await?);
        configs
            .get(WEBHOOK_CONFIG_NAME)
            .await
            .with_context(|| format!("reading MutatingWebhookConfiguration {WEBHOOK_CONFIG_NAME}"))?
            .metadata
            .uid
            .ok_or_else(|| anyhow!("MutatingWebhookConfiguration {WEBHOOK_CONFIG_NAME} has no uid"))
    }

    /// A kubeconfig for the webhook's ServiceAccount (from the manifests).
    pub async fn webhook_kubeconfig(&self) -> Result<PathBuf> {
        let token = self
            .service_account_token(WEBHOOK_NAMESPACE, WEBHOOK_SERVICE_ACCOUNT, None)
            .await?;
        self.write_token_kubeconfig("webhook", &token)
    }
}

/// `arc-watchdog-webhook` running as a process on 127.0.0.1 with a serving
/// certificate from `arc-watchdog-certs`, and its registration.
#[derive(Debug)]
pub struct Webhook {
    proc: ProcSlot,
    dir: PathBuf,
    bin: PathBuf,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    /// The CA of the certificate files; none for a self-managed webhook.
    ca: Option<arc_watchdog_certs::Ca>,
    /// The HTTPS port serving `/mutate`.
    pub port: u16,
    /// The plain-HTTP admin port (`/healthz`, `/readyz`, `/metrics`).
    pub admin_port: u16,
    /// The directory holding `tls.crt` and `tls.key` (replace them to rotate).
    pub cert_dir: PathBuf,
}

impl Webhook {
    /// Builds (if needed) and starts the webhook with `extra_args` (flags not
    /// set here: `--listen`, `--admin-listen`, `--tls-cert`, `--tls-key`,
    /// `--tls-reload-interval` are, and `--watchdog-image` unless given), its certificate in
    /// a fresh directory, talking to the API server as whoever `kubeconfig`
    /// names (see [`ControlPlane::install_arc_watchdog`]: the webhook's own
    /// ServiceAccount). Waits until `/readyz` answers.
    pub async fn start(
        cp: &ControlPlane,
        name: &str,
        kubeconfig: &Path,
        extra_args: &[&str],
    ) -> Result<Self> {
        let bin = workspace_bin("arc-watchdog-webhook", "arc-watchdog-webhook")?;
        Self::start_binary(cp, name, &bin, kubeconfig, extra_args).await
    }

    /// [`Self::start`] with the webhook binary `bin` (a release build, say)
    /// instead of the one cargo builds for the tests.
    pub async fn start_binary(
        cp: &ControlPlane,
        name: &str,
        bin: &Path,
        kubeconfig: &Path,
        extra_args: &[&str],
    ) -> Result<Self> {
        let dir = cp.dir().join(name);
        let cert_dir = dir.join("certs");
        fs::create_dir_all(&cert_dir)?;
        let ca = arc_watchdog_certs::Ca::new(7)?;
        let serving = ca.issue(&loopback_serving())?;
        arc_watchdog_certs::write_bundle(
            &cert_dir,
            &arc_watchdog_certs::Bundle {
                ca_cert_pem: ca.cert_pem().to_owned(),
                serving,
            },
        )?;
        let tls_args = vec![
            format!(
                "--tls-cert={}",
                cert_dir.join(arc_watchdog_certs::TLS_CERT_FILE).display()
            ),
            format!(
                "--tls-key={}",
                cert_dir.join(arc_watchdog_certs::TLS_KEY_FILE).display()
            ),
        ];
        let wh = Self::new(
            cp,
            bin.to_path_buf(),
            kubeconfig,
            Some(ca),
            cert_dir,
            tls_args,
            extra_args,
        )?;
        wh.run(name)?;
        wh.wait_ready(Duration::from_secs(30)).await?;
        Ok(wh)
    }

    /// Starts the webhook with `--tls-mode=self-managed`: no certificate
    /// files; it keeps its CA and serving pair in the Secret
    /// [`TLS_SECRET_NAME`] of [`WEBHOOK_NAMESPACE`] and fills the
    /// configuration's `caBundle` itself. Its certificate also names
    /// 127.0.0.1, the address the API server calls here. Waits until
    /// `/readyz` answers, i.e. until it serves a pair.
    pub async fn start_self_managed(
        cp: &ControlPlane,
        name: &str,
        kubeconfig: &Path,
        extra_args: &[&str],
    ) -> Result<Self> {
        let wh = Self::spawn_self_managed(cp, name, kubeconfig, extra_args)?;
        wh.wait_ready(Duration::from_secs(30)).await?;
        Ok(wh)
    }

    /// [`Self::start_self_managed`] without waiting for `/readyz`.
    pub fn spawn_self_managed(
        cp: &ControlPlane,
        name: &str,
        kubeconfig: &Path,
        extra_args: &[&str],
    ) -> Result<Self> {
        let dir = cp.dir().join(name);
        fs::create_dir_all(&dir)?;
        let tls_args = vec![
            "--tls-mode=self-managed".to_owned(),
            format!("--tls-secret-namespace={WEBHOOK_NAMESPACE}"),
            "--tls-extra-sans=127.0.0.1".to_owned(),
        ];
        let bin = workspace_bin("arc-watchdog-webhook", "arc-watchdog-webhook")?;
        let wh = Self::new(cp, bin, kubeconfig, None, dir, tls_args, extra_args)?;
        wh.run(name)?;
        Ok(wh)
    }

    fn new(
        cp: &ControlPlane,
        bin: PathBuf,
        kubeconfig: &Path,
        ca: Option<arc_watchdog_certs::Ca>,
        cert_dir: PathBuf,
        tls_args: Vec<String>,
        extra_args: &[&str],
    ) -> Result<Self> {
        let port = free_port()?;
        let admin_port = free_port()?;
        let mut args = vec![
            format!("--listen=127.0.0.1:{port}"),
            format!("--admin-listen=127.0.0.1:{admin_port}"),
            // Re-read quickly so that the rotation tests do not wait long.
            "--tls-reload-interval=1s".to_owned(),
        ];
        args.extend(tls_args);
        // The image the process kubelets run, unless the caller names
        // another (one that cannot be pulled, say).
        if !extra_args
            .iter()
            .any(|a| a.starts_with("--watchdog-image="))
        {
            args.push(format!("--watchdog-image={WATCHDOG_IMAGE}"));
        }
        args.extend(extra_args.iter().map(|s| (*s).to_owned()));
        let mut env = BTreeMap::new();
        env.insert("KUBECONFIG".to_owned(), kubeconfig.display().to_string());
        env.insert("RUST_LOG".to_owned(), "info".to_owned());
        Ok(Self {
            proc: ProcSlot::default(),
            dir: cp.dir().to_path_buf(),
            bin,
            args,
            env,
            ca,
            port,
            admin_port,
            cert_dir,
        })
    }

    /// Stops the process and starts it again with the same flags and
    /// ports (its log goes on in `<name>.log`); waits until `/readyz`
    /// answers.
    pub async fn restart(&self, name: &str) -> Result<()> {
        self.stop();
        self.run(name)?;
        self.wait_ready(Duration::from_secs(30)).await
    }

    /// Whether `/readyz` answers 200 right now.
    pub async fn is_ready(&self) -> bool {
        matches!(
            http_get(
                SocketAddr::from((Ipv4Addr::LOCALHOST, self.admin_port)),
                arc_watchdog::names::PATH_READYZ
            )
            .await,
            Ok((200, _))
        )
    }

    fn run(&self, name: &str) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args).envs(&self.env);
        self.proc.set(Proc::start(&self.dir, name, cmd, true)?)
    }

    async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.admin_port));
        self.proc
            .await_http_ok(
                "arc-watchdog-webhook",
                addr,
                arc_watchdog::names::PATH_READYZ,
                timeout,
                || tail_logs(&self.dir, 30),
            )
            .await
    }

    /// The CA certificate (PEM) clients must trust: the `caBundle`. Empty
    /// for a self-managed webhook, whose CA is in its Secret.
    pub fn ca_pem(&self) -> &str {
        self.ca
            .as_ref()
            .map_or("", arc_watchdog_certs::Ca::cert_pem)
    }

    /// Sends `body` to `/mutate` as anyone on the network could (no client
    /// certificate: the endpoint authenticates nobody), trusting the
    /// webhook's CA. Returns the HTTP status and the body.
    pub async fn post_review(&self, body: Vec<u8>) -> Result<(u16, Vec<u8>)> {
        use http_body_util::BodyExt as _;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut self.ca_pem().as_bytes()) {
            roots.add(cert.context("reading the webhook's CA")?)?;
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let tcp = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))
            .await
            .with_context(|| format!("connecting to the webhook on port {}", self.port))?;
        let server = rustls_pki_types::ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
        let tls = connector
            .connect(server, tcp)
            .await
            .context("TLS handshake")?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let request = http::Request::post("/mutate")
            .header(http::header::HOST, "127.0.0.1")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
        let response = sender.send_request(request).await.context("POST /mutate")?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes().to_vec();
        Ok((status, body))
    }

    /// `https://127.0.0.1:PORT/mutate`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/mutate", self.port)
    }

    /// Replaces the serving certificate on disk (same CA, new key), the way
    /// a Secret update does: the webhook must pick it up without a restart.
    pub fn rotate_cert(&self) -> Result<String> {
        let ca = self
            .ca
            .as_ref()
            .ok_or_else(|| anyhow!("a self-managed webhook keeps its certificate in its Secret"))?;
        let serving = ca.issue(&loopback_serving())?;
        // Key first, then certificate, each atomically: the webhook must cope
        // with seeing a mismatched pair for a moment.
        arc_watchdog_certs::write_file_atomic(
            &self.cert_dir.join(arc_watchdog_certs::TLS_KEY_FILE),
            serving.key_pem.as_bytes(),
            0o600,
        )?;
        arc_watchdog_certs::write_file_atomic(
            &self.cert_dir.join(arc_watchdog_certs::TLS_CERT_FILE),
            serving.cert_pem.as_bytes(),
            0o644,
        )?;
        Ok(serving.cert_pem)
    }

    /// The webhook's `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        let (status, body) = http_get(
            SocketAddr::from((Ipv4Addr::LOCALHOST, self.admin_port)),
            "/metrics",
        )
        .await?;
        ensure!(status == 200, "webhook /metrics answered {status}");
        Ok(body)
    }

    /// Waits up to `within` until `/metrics` has `metric{labels}` == `want`;
    /// the error names the last value seen.
    pub async fn await_metric(
        &self,
        metric: &str,
        labels: &[(&str, &str)],
        want: f64,
        within: Duration,
    ) -> Result<()> {
        let last = std::sync::Mutex::new(None);
        let found =
            super::http::eventually(within, &format!("{metric}{labels:?} == {want}"), || async {
                let value = super::http::metric_value(&self.metrics().await.ok()?, metric, labels);
                *last
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = value;
                (value == Some(want)).then_some(())
            })
            .await;
        let last = *last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        found.with_context(|| format!("last value {last:?}"))
    }

    /// The pid of the running process (for `/proc/<pid>/status`).
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Stops the process (by pid).
    pub fn stop(&self) {
        self.proc.stop();
    }

    /// Registers this webhook: the MutatingWebhookConfiguration `arc-watchdog`
    /// as `kubectl apply -k manifests/` stored it (or, when the manifests are
    /// not applied, as `kubectl kustomize manifests/` renders it), with every
    /// `clientConfig` replaced by this process's URL and CA, since the
    /// Deployment cannot run here. Returns the stored object.
    pub async fn register(&self, cp: &ControlPlane) -> Result<MutatingWebhookConfiguration> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(cp.admin_client().await?);
        let existing = api.get_opt(WEBHOOK_CONFIG_NAME).await?;
        let mut config = match &existing {
            Some(c) => serde_json::to_value(c)?,
            None => manifest_webhook_configuration(cp)?,
        };
        set_client_config(&mut config, &self.url(), self.ca_pem())?;
        let config: MutatingWebhookConfiguration = serde_json::from_value(config)?;
        let stored = if existing.is_some() {
            api.replace(WEBHOOK_CONFIG_NAME, &PostParams::default(), &config)
                .await
        } else {
            api.create(&PostParams::default(), &config).await
        };
        stored.context("registering the webhook")
    }
}

impl Webhook {
    /// Points every webhook of the configuration at this process's URL,
    /// keeping the `caBundle` stored (a self-managed webhook's own): a
    /// replace with the resourceVersion read, read again when the webhook
    /// patched the configuration in between.
    pub async fn register_url(&self, cp: &ControlPlane) -> Result<MutatingWebhookConfiguration> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(cp.admin_client().await?);
        for _ in 0..20 {
            let mut config = serde_json::to_value(api.get(WEBHOOK_CONFIG_NAME).await?)?;
            let hooks = config["webhooks"]
                .as_array_mut()
                .ok_or_else(|| anyhow!("MutatingWebhookConfiguration has no webhooks"))?;
            for hook in hooks {
                let ca = hook["clientConfig"]["caBundle"].take();
                hook["clientConfig"] = serde_json::json!({"url": self.url()});
                if !ca.is_null() {
                    hook["clientConfig"]["caBundle"] = ca;
                }
            }
            let config: MutatingWebhookConfiguration = serde_json::from_value(config)?;
            match api
                .replace(WEBHOOK_CONFIG_NAME, &PostParams::default(), &config)
                .await
            {
                Ok(stored) => return Ok(stored),
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e).context("registering the webhook's URL"),
            }
        }
        bail!("the MutatingWebhookConfiguration kept changing while registering the URL")
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The MutatingWebhookConfiguration in `manifests/`, as JSON (via
/// `kubectl kustomize manifests/`).
pub fn manifest_webhook_configuration(cp: &ControlPlane) -> Result<serde_json::Value> {
    let manifests = workspace_root().join("manifests");
    let rendered = cp.kubectl_run(&["kustomize", &manifests.display().to_string()])?;
    for doc in serde_yaml_ng::Deserializer::from_str(&rendered) {
        let v = serde_json::Value::deserialize(doc)?;
        if v["kind"] == "MutatingWebhookConfiguration" {
            return Ok(v);
        }
    }
    bail!("no MutatingWebhookConfiguration in `kubectl kustomize manifests/`")
}

/// Points every webhook of a MutatingWebhookConfiguration at `url` with
/// `ca_pem` as `caBundle`, and drops cert-manager's CA-injection annotation
/// (no cainjector here).
pub fn set_client_config(config: &mut serde_json::Value, url: &str, ca_pem: &str) -> Result<()> {
    let hooks = config["webhooks"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("MutatingWebhookConfiguration has no webhooks"))?;
    for hook in hooks {
        hook["clientConfig"] = serde_json::json!({"url": url, "caBundle": b64(ca_pem)});
    }
    if let Some(ann) = config["metadata"]["annotations"].as_object_mut() {
        ann.retain(|k, _| !k.starts_with("cert-manager.io/"));
    }
    Ok(())
}

/// The DER of the certificate a webhook serves on `127.0.0.1:port`, when
/// it verifies for 127.0.0.1 against the CAs in `roots_pem` and nothing
/// else (a real TLS handshake, as the API server makes one).
pub async fn served_cert(port: u16, roots_pem: &str) -> Option<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut roots_pem.as_bytes()) {
        roots.add(c.ok()?).ok()?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .ok()?;
    let name = rustls_pki_types::ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let tls = connector.connect(name, tcp).await.ok()?;
    Some(
        tls.get_ref()
            .1
            .peer_certificates()?
            .first()?
            .as_ref()
            .to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_config_replaced_and_cert_manager_annotation_dropped() {
        let mut v = serde_json::json!({
            "metadata": {"name": "arc-watchdog", "annotations": {"cert-manager.io/inject-ca-from": "x/y", "keep": "1"}},
            "webhooks": [{"name": "a", "clientConfig": {"service": {"name": "s", "namespace": "n"}}}]
        });
        set_client_config(&mut v, "https://127.0.0.1:1/mutate", "PEM").unwrap();
        assert_eq!(
            v["webhooks"][0]["clientConfig"],
            serde_json::json!({"url": "https://127.0.0.1:1/mutate", "caBundle": "UEVN"})
        );
        assert_eq!(
            v["metadata"]["annotations"],
            serde_json::json!({"keep": "1"})
        );
    }
}
