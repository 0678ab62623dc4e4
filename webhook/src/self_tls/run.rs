//! The kube I/O of self-managed TLS: read the Secret, make the change
//! [`super::plan`] asks for (create, or update with the resourceVersion
//! precondition), fill the configuration's `caBundle`, serve the Secret's
//! pair. Every replica runs it; the API server's optimistic concurrency
//! makes them agree on one CA: a replica that loses a create (409
//! AlreadyExists) or an update (409 Conflict) reads the Secret again and
//! uses what the winner wrote.
//!
//! Nothing here logs or reports key material: only dates, names and what
//! changed.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{Change, Material, Policy, apply, ca_bundle_patch, observe, plan, published_cas};
use crate::metrics::Metrics;
use crate::owner::ConfigOwner;
use crate::tls::{CertStore, load_pair};

/// Rounds of read-plan-write in one reconcile before giving up until the
/// next tick: each round makes one change or loses one race.
const MAX_ROUNDS: usize = 8;

/// Where the Secret and the configuration are, and what to put in them.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The webhook's own namespace, the Secret's.
    pub namespace: String,
    /// The Secret's name.
    pub secret_name: String,
    /// The MutatingWebhookConfiguration whose `caBundle` is filled.
    pub config_name: String,
    /// Certificate names and validities.
    pub policy: Policy,
    /// How often the Secret is read again (renewal, another replica's
    /// change, a `caBundle` that drifted).
    pub interval: Duration,
}

/// Why the pair could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// RBAC refused a request: names the right that is missing.
    #[error(
        "forbidden: the webhook's ServiceAccount needs `{verb}` on {resource}; \
         see README \"TLS without cert-manager\" for the rights self-managed TLS needs: {message}"
    )]
    Forbidden {
        /// The verb.
        verb: &'static str,
        /// The resource, with its namespace and name where they apply.
        resource: String,
        /// The API server's message.
        message: String,
    },
    /// Any other failed request.
    #[error("{verb} {resource}: {source}")]
    Api {
        /// The verb.
        verb: &'static str,
        /// The resource.
        resource: String,
        /// The error.
        source: kube::Error,
    },
    /// Making a certificate failed.
    #[error("making certificates: {0}")]
    Certs(#[from] arc_watchdog_certs::Error),
    /// The Secret's pair does not load (should not happen: it was planned
    /// as usable).
    #[error("the Secret's serving pair cannot be served: {0}")]
    Pair(#[from] crate::tls::TlsError),
    /// Other replicas kept changing the Secret.
    #[error("the Secret changed {MAX_ROUNDS} times while being reconciled; trying again")]
    Contended,
}

fn api_error(verb: &'static str, resource: &str, err: kube::Error) -> Error {
    match err {
        kube::Error::Api(status) if status.code == 403 => Error::Forbidden {
            verb,
            resource: resource.to_owned(),
            message: status.message.clone(),
        },
        source => Error::Api {
            verb,
            resource: resource.to_owned(),
            source,
        },
    }
}

fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 409)
}

/// Keeps the Secret, the `caBundle` and the served pair current.
pub struct Manager {
    secrets: Api<Secret>,
    configs: Api<MutatingWebhookConfiguration>,
    owner: Arc<ConfigOwner>,
    metrics: Arc<Metrics>,
    settings: Settings,
    store: Option<Arc<CertStore>>,
    served: Option<super::Pair>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// A manager with `client` (the webhook's own rights).
    pub fn new(
        client: kube::Client,
        owner: Arc<ConfigOwner>,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Self {
        Self {
            secrets: Api::namespaced(client.clone(), &settings.namespace),
            configs: Api::all(client),
            owner,
            metrics,
            settings,
            store: None,
            served: None,
        }
    }

    fn secret_resource(&self) -> String {
        format!(
            "secrets `{}` in namespace {}",
            self.settings.secret_name, self.settings.namespace
        )
    }

    fn config_resource(&self) -> String {
        format!(
            "mutatingwebhookconfigurations `{}`",
            self.settings.config_name
        )
    }

    /// Reconciles until a pair is served, every `interval`, logging each
    /// failure (the webhook is not ready meanwhile). Returns the store the
    /// TLS server resolves from.
    pub async fn first_pair(&mut self) -> Arc<CertStore> {
        loop {
            if let Err(err) = self.reconcile().await {
                tracing::error!(
                    error = %err,
                    secret = %self.settings.secret_name,
                    namespace = %self.settings.namespace,
                    serving = self.store.is_some(),
                    "self-managed TLS: reconcile failed"
                );
            }
            if let Some(store) = &self.store {
                return Arc::clone(store);
            }
            tokio::time::sleep(self.settings.interval).await;
        }
    }

    /// Reconciles every `interval` until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(self.settings.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = cancel.cancelled() => return,
            }
            if let Err(err) = self.reconcile().await {
                tracing::error!(
                    error = %err,
                    secret = %self.settings.secret_name,
                    namespace = %self.settings.namespace,
                    "self-managed TLS: cannot keep the serving certificate current; still serving the current one"
                );
            }
        }
    }

    /// One pass: read the Secret, make the changes it needs (one per round,
    /// reading again after each write), fill the `caBundle`, serve the pair.
    pub async fn reconcile(&mut self) -> Result<(), Error> {
        for _ in 0..MAX_ROUNDS {
            let now = OffsetDateTime::now_utc();
            let existing = self
                .secrets
                .get_opt(&self.settings.secret_name)
                .await
                .map_err(|e| api_error("get", &self.secret_resource(), e))?;
            let Some(secret) = existing else {
                self.create(now).await?;
                continue;
            };
            let material = Material::from_data(
                &secret
                    .data
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect(),
            );
            let config = self
                .configs
                .get_opt(&self.settings.config_name)
                .await
                .map_err(|e| api_error("get", &self.config_resource(), e))?;
            let published = config.as_ref().map(published_cas).unwrap_or_default();
            let observed = observe(&material);
            match plan(
                &observed,
                &self.settings.policy.names,
                &published,
                now.unix_timestamp(),
            ) {
                None => {
                    // Serving first is safe: a new pair is signed by the CA
                    // or by a next CA the caBundle already carries (the
                    // plan's rule), and the old CA stays in it. So a
                    // configuration that cannot be patched never keeps a
                    // replica from serving.
                    self.serve(&material)?;
                    return self.publish(&material, config.as_ref()).await;
                }
                Some(change) => {
                    let changed = apply(change, &material, &self.settings.policy, now)?;
                    self.update(secret, &changed, change).await?;
                }
            }
        }
        Err(Error::Contended)
    }

    async fn create(&self, now: OffsetDateTime) -> Result<(), Error> {
        let material = apply(
            Change::Fresh,
            &Material::default(),
            &self.settings.policy,
            now,
        )?;
        let owner = self.owner.reference_within(Duration::from_secs(2)).await;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.settings.secret_name.clone()),
                namespace: Some(self.settings.namespace.clone()),
                labels: Some(
                    [
                        ("app.kubernetes.io/name", "arc-watchdog"),
                        ("app.kubernetes.io/component", "webhook"),
                        ("app.kubernetes.io/managed-by", "arc-watchdog"),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                ),
                // Owned by the configuration, so uninstalling removes it.
                owner_references: owner.map(|o| vec![o]),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".to_owned()),
            data: Some(to_secret_data(&material)),
            ..Secret::default()
        };
        match self.secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(
                    secret = %self.settings.secret_name,
                    namespace = %self.settings.namespace,
                    "created the TLS Secret with a new CA and serving certificate"
                );
                self.metrics.self_tls_change(Change::Fresh.as_str());
                Ok(())
            }
            Err(e) if is_conflict(&e) => {
                tracing::info!(
                    secret = %self.settings.secret_name,
                    "another replica created the TLS Secret first; using its CA"
                );
                Ok(())
            }
            Err(e) => Err(api_error(
                "create",
                &format!("secrets in namespace {}", self.settings.namespace),
                e,
            )),
        }
    }

    async fn update(
        &self,
        mut secret: Secret,
        changed: &Material,
        change: Change,
    ) -> Result<(), Error> {
        // The resourceVersion read stays in the object: the API server
        // refuses the update (409) if another replica wrote in between.
        secret.data = Some(to_secret_data(changed));
        match self
            .secrets
            .replace(&self.settings.secret_name, &PostParams::default(), &secret)
            .await
        {
            Ok(_) => {
                tracing::info!(
                    secret = %self.settings.secret_name,
                    change = change.as_str(),
                    "TLS Secret updated"
                );
                self.metrics.self_tls_change(change.as_str());
                Ok(())
            }
            Err(e) if is_conflict(&e) => {
                tracing::debug!(
                    change = change.as_str(),
                    "the TLS Secret changed meanwhile; reading it again"
                );
                Ok(())
            }
            Err(e) => Err(api_error("update", &self.secret_resource(), e)),
        }
    }

    async fn publish(
        &self,
        material: &Material,
        config: Option<&MutatingWebhookConfiguration>,
    ) -> Result<(), Error> {
        let Some(config) = config else {
            tracing::warn!(
                webhook_config = %self.settings.config_name,
                "the MutatingWebhookConfiguration does not exist (yet): its caBundle cannot be filled"
            );
            return Ok(());
        };
        let Some(patch) = ca_bundle_patch(config, &material.ca_bundle()) else {
            return Ok(());
        };
        let patch: json_patch::Patch = serde_json::from_value(patch).map_err(|e| Error::Api {
            verb: "patch",
            resource: self.config_resource(),
            source: kube::Error::SerdeError(e),
        })?;
        self.configs
            .patch(
                &self.settings.config_name,
                &PatchParams::default(),
                &Patch::Json::<()>(patch),
            )
            .await
            .map_err(|e| api_error("patch", &self.config_resource(), e))?;
        tracing::info!(
            webhook_config = %self.settings.config_name,
            cas = super::bundle_ders(material.ca_bundle().as_bytes()).len(),
            "caBundle updated"
        );
        Ok(())
    }

    fn serve(&mut self, material: &Material) -> Result<(), Error> {
        let Some(serving) = &material.serving else {
            return Ok(());
        };
        if self.served.as_ref() == Some(serving) {
            return Ok(());
        }
        let pair = match load_pair(serving.cert_pem.as_bytes(), serving.key_pem.as_bytes()) {
            Ok(pair) => pair,
            Err(err) => {
                self.metrics.cert_reload("error");
                return Err(err.into());
            }
        };
        self.metrics.set_cert_expiry(pair.not_after);
        match &self.store {
            Some(store) => {
                store.replace(pair.key);
                self.metrics.cert_reload("ok");
            }
            None => self.store = Some(Arc::new(CertStore::new(pair.key))),
        }
        tracing::info!(
            not_after = pair.not_after,
            secret = %self.settings.secret_name,
            "serving the TLS Secret's certificate"
        );
        self.served = Some(serving.clone());
        Ok(())
    }
}

fn to_secret_data(material: &Material) -> std::collections::BTreeMap<String, ByteString> {
    material
        .to_data()
        .into_iter()
        .map(|(k, v)| (k, ByteString(v)))
        .collect()
}
