//! The webhook's serving certificate is replaced on disk
//! (as a Secret update does) while listener pods are created continuously:
//! the webhook serves the new certificate without a restart, and not one
//! admission fails or is skipped (with failurePolicy Ignore, a failed call
//! would show as a pod without the watchdog).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_watchdog_tests::control_plane::{
    ControlPlane, LISTENER_NAMESPACE, Webhook, eventually, watchdog_container,
};

/// The DER of the certificate the webhook serves right now.
async fn served_cert(webhook: &Webhook) -> Option<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut webhook.ca_pem().as_bytes()) {
        roots.add(c.ok()?).ok()?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", webhook.port))
        .await
        .ok()?;
    let name = rustls_pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
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

fn der(pem: &str) -> Vec<u8> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .as_ref()
        .to_vec()
}

#[tokio::test]
async fn rotating_the_serving_certificate_loses_no_admission() {
    let cp = ControlPlane::shared().await.unwrap();
    let webhook = cp.install_arc_watchdog(&[]).await.unwrap();
    let before = served_cert(&webhook).await.expect("the webhook serves TLS");

    // Creates listeners without pause until every rotation has been served.
    let rotating = Arc::new(AtomicBool::new(true));
    let creator = tokio::spawn({
        let rotating = rotating.clone();
        async move {
            let mut made = Vec::new();
            let mut i = 0;
            while rotating.load(Ordering::SeqCst) || made.len() < 10 {
                let name = format!("rotate-{i}");
                made.push(cp.create_listener(LISTENER_NAMESPACE, &name).await.unwrap());
                i += 1;
            }
            made
        }
    });
    let mut last = before.clone();
    for round in 1..=3 {
        let new_pem = webhook.rotate_cert().unwrap();
        let want = der(&new_pem);
        assert_ne!(want, last);
        eventually(
            Duration::from_secs(20),
            &format!("rotation {round} to be served"),
            || async { (served_cert(&webhook).await? == want).then_some(()) },
        )
        .await
        .unwrap();
        last = want;
    }
    rotating.store(false, Ordering::SeqCst);
    let made = creator.await.unwrap();
    let missing: Vec<_> = made
        .iter()
        .filter(|p| watchdog_container(p).is_none())
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert!(
        missing.is_empty(),
        "admissions lost during rotation: {missing:?}"
    );
    eprintln!("{} listener pods created during 3 rotations", made.len());
    assert_ne!(last, before);
}
