//! What a container sees of its pod besides its volumes: its environment
//! (its own `env`, with downward-API, Secret and ConfigMap references
//! resolved, plus the in-cluster API server's address and nothing
//! inherited), the downward-API fields, and its hostname.

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::{Container, EnvVar, Secret};
use kube::ResourceExt as _;
use kube::api::Api;

use super::PodRun;

impl PodRun {
    pub(super) fn field(&self, path: &str) -> String {
        let spec = self.pod.spec.clone().unwrap_or_default();
        match path {
            "metadata.name" => self.name.clone(),
            "metadata.namespace" => self.ns.clone(),
            "metadata.uid" => self.uid.clone(),
            "spec.nodeName" => spec.node_name.unwrap_or_default(),
            "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
            "status.podIP" | "status.hostIP" => "127.0.0.1".into(),
            p => {
                if let Some(k) = p
                    .strip_prefix("metadata.labels['")
                    .and_then(|k| k.strip_suffix("']"))
                {
                    return self.pod.labels().get(k).cloned().unwrap_or_default();
                }
                if let Some(k) = p
                    .strip_prefix("metadata.annotations['")
                    .and_then(|k| k.strip_suffix("']"))
                {
                    return self.pod.annotations().get(k).cloned().unwrap_or_default();
                }
                String::new()
            }
        }
    }

    pub(super) async fn env(&self, c: &Container) -> Result<Vec<(String, String)>> {
        let mut env = vec![
            (
                "PATH".to_owned(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            ),
            ("HOSTNAME".to_owned(), self.hostname()),
            (
                "KUBERNETES_SERVICE_HOST".to_owned(),
                self.ctx.config.api_host.clone(),
            ),
            (
                "KUBERNETES_SERVICE_PORT".to_owned(),
                self.ctx.config.api_port.to_string(),
            ),
            (
                "KUBERNETES_SERVICE_PORT_HTTPS".to_owned(),
                self.ctx.config.api_port.to_string(),
            ),
        ];
        for e in c.env.iter().flatten() {
            env.push((e.name.clone(), self.env_value(e).await?));
        }
        Ok(env)
    }

    async fn env_value(&self, e: &EnvVar) -> Result<String> {
        if let Some(v) = &e.value {
            return Ok(v.clone());
        }
        let Some(from) = &e.value_from else {
            return Ok(String::new());
        };
        if let Some(f) = &from.field_ref {
            return Ok(self.field(&f.field_path));
        }
        if let Some(s) = &from.secret_key_ref {
            let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.ns);
            let sec = api.get_opt(&s.name).await?;
            let v = sec.and_then(|x| x.data).and_then(|d| {
                d.get(&s.key)
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            });
            return match v {
                Some(v) => Ok(v),
                None if s.optional == Some(true) => Ok(String::new()),
                None => bail!("env {}: secret {}/{} missing", e.name, s.name, s.key),
            };
        }
        if let Some(c) = &from.config_map_key_ref {
            let v = self.config_map_data(&c.name).await?.and_then(|d| {
                d.get(&c.key)
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            });
            return match v {
                Some(v) => Ok(v),
                None if c.optional == Some(true) => Ok(String::new()),
                None => bail!("env {}: configmap {}/{} missing", e.name, c.name, c.key),
            };
        }
        Ok(String::new())
    }

    pub(super) fn hostname(&self) -> String {
        let h = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| self.name.clone());
        h.chars().take(63).collect()
    }
}
