//! The volumes a pod's spec refers to, written under the pod's directory
//! before its containers start: Secret, ConfigMap, projected
//! (service-account token by TokenRequest bound to the pod, ConfigMap,
//! Secret, downward API) and downward-API volumes; anything else is an
//! empty directory.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, KeyToPath, Secret, ServiceAccount, Volume};
use kube::api::{Api, PostParams};

use super::PodRun;

impl PodRun {
    pub(super) async fn materialize(&mut self) -> Result<()> {
        let spec = self.pod.spec.clone().unwrap_or_default();
        for v in spec.volumes.iter().flatten() {
            let dir = self.dir.join("volumes").join(&v.name);
            tokio::fs::create_dir_all(&dir).await?;
            self.materialize_volume(v, &dir)
                .await
                .with_context(|| format!("volume {} of {}/{}", v.name, self.ns, self.name))?;
        }
        Ok(())
    }

    async fn materialize_volume(&self, v: &Volume, dir: &Path) -> Result<()> {
        if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            match self.secret_data(&name).await? {
                Some(data) => write_items(dir, &data, s.items.as_deref()).await?,
                None if s.optional == Some(true) => {}
                None => bail!("secret {name} not found"),
            }
        }
        if let Some(c) = &v.config_map {
            let data = self.config_map_data(&c.name).await?;
            match data {
                Some(d) => write_items(dir, &d, c.items.as_deref()).await?,
                None if c.optional == Some(true) => {}
                None => bail!("configmap {} not found", c.name),
            }
        }
        if let Some(p) = &v.projected {
            for src in p.sources.iter().flatten() {
                if let Some(t) = &src.service_account_token {
                    let token = self.token(t.expiration_seconds, t.audience.clone()).await?;
                    write_file(&dir.join(&t.path), token.as_bytes()).await?;
                }
                if let Some(c) = &src.config_map {
                    match self.config_map_data(&c.name).await? {
                        Some(d) => write_items(dir, &d, c.items.as_deref()).await?,
                        None if c.optional == Some(true) => {}
                        None => bail!("configmap {} not found", c.name),
                    }
                }
                if let Some(s) = &src.secret
                    && let Some(data) = self.secret_data(&s.name).await?
                {
                    write_items(dir, &data, s.items.as_deref()).await?;
                }
                if let Some(d) = &src.downward_api {
                    for item in d.items.iter().flatten() {
                        if let Some(f) = &item.field_ref {
                            let value = self.field(&f.field_path);
                            write_file(&dir.join(&item.path), value.as_bytes()).await?;
                        }
                    }
                }
            }
        }
        if let Some(d) = &v.downward_api {
            for item in d.items.iter().flatten() {
                if let Some(f) = &item.field_ref {
                    write_file(&dir.join(&item.path), self.field(&f.field_path).as_bytes()).await?;
                }
            }
        }
        Ok(())
    }

    /// The Secret `name`'s data, or `None` when there is no such Secret.
    async fn secret_data(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        Ok(api.get_opt(name).await?.map(|sec| {
            sec.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        }))
    }

    pub(super) async fn config_map_data(
        &self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
        let api: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        Ok(api.get_opt(name).await?.map(|cm| {
            let mut d: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            d.extend(
                cm.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            d
        }))
    }

    async fn token(&self, expiration: Option<i64>, audience: Option<String>) -> Result<String> {
        let sa = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let api: Api<ServiceAccount> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let tr = TokenRequest {
            spec: TokenRequestSpec {
                audiences: audience.into_iter().collect(),
                expiration_seconds: Some(expiration.unwrap_or(3607).max(600)),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(self.name.clone()),
                    uid: Some(self.uid.clone()),
                }),
            },
            ..Default::default()
        };
        let out = api
            .create_token_request(&sa, &PostParams::default(), &tr)
            .await
            .with_context(|| format!("TokenRequest for {}/{sa}", self.ns))?;
        out.status
            .map(|s| s.token)
            .ok_or_else(|| anyhow!("TokenRequest for {}/{sa} returned no token", self.ns))
    }
}

async fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    tokio::fs::write(path, data)
        .await
        .with_context(|| format!("writing {}", path.display()))
}

async fn write_items(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
) -> Result<()> {
    match items {
        Some(items) => {
            for item in items {
                if let Some(v) = data.get(&item.key) {
                    write_file(&dir.join(&item.path), v).await?;
                }
            }
        }
        None => {
            for (k, v) in data {
                write_file(&dir.join(k), v).await?;
            }
        }
    }
    Ok(())
}
