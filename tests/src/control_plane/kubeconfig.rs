//! Kubeconfig text for the local API server (a client certificate or a
//! bearer token) and kube clients built from it: the same path a process
//! given `KUBECONFIG` takes, so the tests' clients and the processes they
//! start authenticate alike.

use anyhow::{Context as _, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub(super) fn b64(data: &str) -> String {
    // Base64 without another dependency: kubeconfig *-data fields need it.
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = data.as_bytes();
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for chunk in b.chunks(3) {
        let n = match chunk.len() {
            3 => (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]),
            2 => (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8),
            _ => u32::from(chunk[0]) << 16,
        };
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Who a kubeconfig authenticates as.
pub(super) enum Credentials<'a> {
    Cert { cert_pem: &'a str, key_pem: &'a str },
    Token(&'a str),
}

pub(super) fn kubeconfig_yaml(server: &str, ca_pem: &str, creds: &Credentials<'_>) -> String {
    let user = match creds {
        Credentials::Cert { cert_pem, key_pem } => format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(cert_pem),
            b64(key_pem)
        ),
        Credentials::Token(t) => format!("    token: {t}\n"),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: user\n  user:\n{user}contexts:\n- name: local\n  context:\n    cluster: local\n    user: user\ncurrent-context: local\n",
        b64(ca_pem)
    )
}

pub(super) async fn client_from_kubeconfig(yaml: &str) -> Result<Client> {
    client_from_kubeconfig_with(yaml, true).await
}

/// `default_retry: false` is how `arc-watchdog run` builds its client (its
/// own bounded retries instead of kube's: a PDB's 429 would otherwise be
/// retried inside kube).
pub(super) async fn client_from_kubeconfig_with(yaml: &str, default_retry: bool) -> Result<Client> {
    let kc = Kubeconfig::from_yaml(yaml).context("parsing kubeconfig")?;
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("kubeconfig to client config")?;
    config.default_retry = default_retry;
    Client::try_from(config).context("building kube client")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(b64(""), "");
        assert_eq!(b64("f"), "Zg==");
        assert_eq!(b64("fo"), "Zm8=");
        assert_eq!(b64("foo"), "Zm9v");
        assert_eq!(b64("foobar"), "Zm9vYmFy");
    }
}
