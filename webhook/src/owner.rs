//! The owner of what the webhook publishes at run time: Events about
//! listener pods without the watchdog are owned by the webhook's own
//! MutatingWebhookConfiguration, so that uninstalling arc-watchdog removes
//! them with it.

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::Api;
use tokio::sync::Mutex;

/// Default name of the webhook's MutatingWebhookConfiguration.
pub const DEFAULT_WEBHOOK_CONFIG_NAME: &str = "arc-watchdog";

/// An owner reference to the configuration `name` with `uid`.
pub fn owner_reference(webhook_config_name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "admissionregistration.k8s.io/v1".to_owned(),
        kind: "MutatingWebhookConfiguration".to_owned(),
        name: webhook_config_name.to_owned(),
        uid: uid.to_owned(),
        // No blockOwnerDeletion, which would need update rights on the
        // configuration's finalizers.
        controller: None,
        block_owner_deletion: None,
    }
}

/// The MutatingWebhookConfiguration that owns the Events the webhook
/// publishes.
/// Looked up until found, since it may be registered after the webhook
/// starts, then remembered; one for the whole webhook.
pub struct ConfigOwner {
    client: kube::Client,
    name: String,
    uid: Mutex<Option<String>>,
}

impl std::fmt::Debug for ConfigOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigOwner")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ConfigOwner {
    /// The configuration `name`, read with `client`.
    pub fn new(client: kube::Client, name: impl Into<String>) -> Self {
        Self {
            client,
            name: name.into(),
            uid: Mutex::new(None),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The owner reference, from memory or read now; `Ok(None)` only for a
    /// configuration without a uid. The caller decides how loudly a failed
    /// read is logged (the object is then created without an owner).
    pub async fn reference(&self) -> Result<Option<OwnerReference>, kube::Error> {
        let mut cached = self.uid.lock().await;
        if cached.is_none() {
            let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
            *cached = api.get(&self.name).await?.metadata.uid;
        }
        Ok(cached
            .as_deref()
            .map(|uid| owner_reference(&self.name, uid)))
    }

    /// [`Self::reference`] within `budget`; `None` when it cannot be read
    /// (logged at debug): the Event is then created unowned and expires
    /// with the API server's event TTL.
    pub async fn reference_within(&self, budget: std::time::Duration) -> Option<OwnerReference> {
        match tokio::time::timeout(budget, self.reference()).await {
            Ok(Ok(owner)) => owner,
            Ok(Err(err)) => {
                tracing::debug!(
                    error = %err,
                    webhook_config = %self.name,
                    "cannot read the webhook configuration; the Event gets no owner"
                );
                None
            }
            Err(_) => None,
        }
    }
}
