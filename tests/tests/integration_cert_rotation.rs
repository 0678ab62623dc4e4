//! The webhook's serving certificate is replaced on disk
//! (as a Secret update does) while listener pods are created continuously:
//! the webhook serves the new certificate without a restart, and not one
//! admission fails or is skipped (with failurePolicy Ignore, a failed call
//! would show as a pod without the watchdog).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

use std::time::Duration;

use arc_watchdog_tests::control_plane::{
    ControlPlane, LISTENER_NAMESPACE, ListenerLoad, Webhook, eventually, served_cert,
};

/// The DER of the certificate the webhook serves right now.
async fn served(webhook: &Webhook) -> Option<Vec<u8>> {
    served_cert(webhook.port, webhook.ca_pem()).await
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
    let before = served(&webhook).await.expect("the webhook serves TLS");

    // Creates listeners without pause until every rotation has been served.
    let load = ListenerLoad::start(cp, LISTENER_NAMESPACE, "rotate");
    let mut last = before.clone();
    for round in 1..=3 {
        let new_pem = webhook.rotate_cert().unwrap();
        let want = der(&new_pem);
        assert_ne!(want, last);
        eventually(
            Duration::from_secs(20),
            &format!("rotation {round} to be served"),
            || async { (served(&webhook).await? == want).then_some(()) },
        )
        .await
        .unwrap();
        last = want;
    }
    let load = load.stop().await.unwrap();
    assert!(
        load.without_watchdog.is_empty(),
        "admissions lost during rotation: {:?}",
        load.without_watchdog
    );
    eprintln!("{} listener pods created during 3 rotations", load.made);
    assert_ne!(last, before);
}
