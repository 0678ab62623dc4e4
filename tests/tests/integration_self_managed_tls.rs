//! TLS without cert-manager (`--tls-mode=self-managed`) against a real API
//! server, installed from `tests/kustomize/self-managed-tls` (`manifests/`
//! with the `tls-self-managed` component) and run as the webhook's own
//! ServiceAccount, so the component's RBAC is what the webhook gets:
//! - two replicas started at once make one CA, the `caBundle` carries it
//!   and admission through the API server works;
//! - with short validities the serving certificate and the CA rotate while
//!   listener pods are created continuously, and not one admission fails
//!   (with failurePolicy Ignore a failed call shows as a pod without the
//!   watchdog);
//! - both replicas restarted keep the CA and the `caBundle`;
//! - without the rights on the Secret the webhook stays unready and names
//!   the right it lacks.
//!
//! The tests share the Secret and the configuration, so they run one at a
//! time, each from a Secret deleted first.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arc_watchdog_tests::control_plane::{
    ControlPlane, LISTENER_NAMESPACE, ListenerLoad, TLS_SECRET_NAME, WEBHOOK_CONFIG_NAME,
    WEBHOOK_NAMESPACE, Webhook, eventually, served_cert, watchdog_container,
};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use tokio::sync::{Mutex, MutexGuard, OnceCell};

static SERIAL: LazyLock<Mutex<()>> = LazyLock::new(|| Mutex::new(()));
static PREPARED: OnceCell<()> = OnceCell::const_new();

/// The shared control plane with the self-managed install, no TLS Secret
/// left from another test, and the lock that keeps the tests apart.
async fn setup() -> (&'static ControlPlane, MutexGuard<'static, ()>) {
    let guard = SERIAL.lock().await;
    let cp = ControlPlane::shared().await.unwrap();
    PREPARED
        .get_or_try_init(|| cp.prepare_self_managed_tls())
        .await
        .unwrap();
    let delays: Api<ValidatingWebhookConfiguration> = Api::all(cp.admin_client().await.unwrap());
    if delays.get_opt(DELAY).await.unwrap().is_some() {
        delays
            .delete(DELAY, &DeleteParams::default())
            .await
            .unwrap();
    }
    let secrets = secrets(cp).await;
    if secrets.get_opt(TLS_SECRET_NAME).await.unwrap().is_some() {
        secrets
            .delete(TLS_SECRET_NAME, &DeleteParams::default())
            .await
            .unwrap();
    }
    eventually(
        Duration::from_secs(10),
        "the old TLS Secret to go",
        || async {
            secrets
                .get_opt(TLS_SECRET_NAME)
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await
    .unwrap();
    (cp, guard)
}

/// The validating webhook of [`delay_secret_creates`].
const DELAY: &str = "test-delay-secret-creates";

/// Holds every Secret CREATE in the webhook's namespace for 2 s: a
/// validating webhook at an address that accepts connections and never
/// answers, which failurePolicy Ignore lets through after its timeout. Two
/// replicas started together then both find no Secret and both create it,
/// whatever their start-up times: a real race, every time. Returns the
/// listener, to keep open while the delay is wanted.
async fn delay_secret_creates(cp: &ControlPlane) -> tokio::net::TcpListener {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config: ValidatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
        "metadata": {"name": DELAY},
        "webhooks": [{
            "name": "delay.test.arc-watchdog.dev",
            "admissionReviewVersions": ["v1"],
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/")},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["secrets"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": WEBHOOK_NAMESPACE}},
            "failurePolicy": "Ignore",
            "sideEffects": "None",
            "timeoutSeconds": 2
        }]
    }))
    .unwrap();
    let api: Api<ValidatingWebhookConfiguration> = Api::all(cp.admin_client().await.unwrap());
    api.create(&PostParams::default(), &config).await.unwrap();
    // In effect once a probe Secret's create is held.
    let secrets = secrets(cp).await;
    eventually(
        Duration::from_secs(20),
        "Secret creates to be held",
        || async {
            let probe: Secret =
                serde_json::from_value(serde_json::json!({"metadata": {"name": "delay-probe"}}))
                    .unwrap();
            let started = std::time::Instant::now();
            secrets.create(&PostParams::default(), &probe).await.ok()?;
            let held = started.elapsed() >= Duration::from_millis(1500);
            secrets
                .delete("delay-probe", &DeleteParams::default())
                .await
                .ok()?;
            held.then_some(())
        },
    )
    .await
    .unwrap();
    listener
}

async fn secrets(cp: &ControlPlane) -> Api<Secret> {
    Api::namespaced(cp.admin_client().await.unwrap(), WEBHOOK_NAMESPACE)
}

/// The TLS Secret's entry `key` (PEM text); empty when absent.
async fn secret_entry(cp: &ControlPlane, key: &str) -> String {
    let secret = secrets(cp).await.get(TLS_SECRET_NAME).await.unwrap();
    secret
        .data
        .unwrap_or_default()
        .get(key)
        .map(|b| String::from_utf8(b.0.clone()).unwrap())
        .unwrap_or_default()
}

/// Every CA the Secret says clients should trust (PEM).
async fn trusted(cp: &ControlPlane) -> String {
    let mut pem = String::new();
    for key in ["ca.crt", "next-ca.crt", "previous-ca.crt"] {
        pem.push_str(&secret_entry(cp, key).await);
    }
    pem
}

/// notAfter of a certificate (DER), Unix seconds.
fn not_after(der: &[u8]) -> i64 {
    x509_parser::parse_x509_certificate(der)
        .unwrap()
        .1
        .validity()
        .not_after
        .timestamp()
}

fn certs(pem: &str) -> Vec<Vec<u8>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .map(|c| c.unwrap().as_ref().to_vec())
        .collect()
}

/// The `caBundle` of every webhook of the configuration.
async fn ca_bundles(cp: &ControlPlane) -> Vec<Option<Vec<u8>>> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(cp.admin_client().await.unwrap());
    api.get(WEBHOOK_CONFIG_NAME)
        .await
        .unwrap()
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .map(|h| h.client_config.ca_bundle.map(|b| b.0))
        .collect()
}

/// Waits until every webhook's `caBundle` is exactly `pem`.
async fn await_ca_bundle(cp: &ControlPlane, pem: &str) {
    eventually(
        Duration::from_secs(20),
        "the caBundle to be the Secret's CA",
        || async {
            let bundles = ca_bundles(cp).await;
            (!bundles.is_empty() && bundles.iter().all(|b| b.as_deref() == Some(pem.as_bytes())))
                .then_some(())
        },
    )
    .await
    .unwrap();
}

/// Two replicas, started at once, as the Deployment's rollout starts them.
async fn start_two(cp: &ControlPlane, prefix: &str, args: &[&str]) -> (Webhook, Webhook) {
    let kubeconfig = cp.webhook_kubeconfig().await.unwrap();
    let (name_a, name_b) = (format!("{prefix}-a"), format!("{prefix}-b"));
    let (a, b) = tokio::join!(
        Webhook::start_self_managed(cp, &name_a, &kubeconfig, args),
        Webhook::start_self_managed(cp, &name_b, &kubeconfig, args),
    );
    (a.unwrap(), b.unwrap())
}

async fn assert_injected(cp: &ControlPlane, name: &str) {
    let pod = cp.create_listener(LISTENER_NAMESPACE, name).await.unwrap();
    assert!(
        watchdog_container(&pod).is_some(),
        "{name}: admitted without the watchdog"
    );
}

#[tokio::test]
async fn two_replicas_started_at_once_make_one_ca_and_admission_works() {
    let (cp, _serial) = setup().await;
    let delay = delay_secret_creates(cp).await;
    let (a, b) = start_two(cp, "tls-install", &[]).await;
    drop(delay);
    let delays: Api<ValidatingWebhookConfiguration> = Api::all(cp.admin_client().await.unwrap());
    delays
        .delete(DELAY, &DeleteParams::default())
        .await
        .unwrap();

    let ca = secret_entry(cp, "ca.crt").await;
    assert_eq!(certs(&ca).len(), 1, "one CA: {ca}");
    assert_eq!(trusted(cp).await, ca, "no next or previous CA");
    // Ready means serving: each replica serves a certificate of that one CA.
    for w in [&a, &b] {
        assert!(
            served_cert(w.port, &ca).await.is_some(),
            "the replica on port {} serves a certificate the Secret's CA does not verify",
            w.port
        );
    }

    // Both created it; one lost the race and said so.
    let lost: Vec<bool> = ["tls-install-a", "tls-install-b"]
        .iter()
        .map(|name| {
            std::fs::read_to_string(cp.dir().join(format!("{name}.log")))
                .unwrap()
                .contains("another replica created the TLS Secret first")
        })
        .collect();
    assert_eq!(lost.iter().filter(|l| **l).count(), 1, "the race: {lost:?}");

    a.register_url(cp).await.unwrap();
    await_ca_bundle(cp, &ca).await;
    assert_injected(cp, "tls-install-0").await;
    b.register_url(cp).await.unwrap();
    assert_injected(cp, "tls-install-1").await;
    assert_eq!(secret_entry(cp, "ca.crt").await, ca);
}

#[tokio::test]
async fn serving_certificate_and_ca_rotate_without_a_failed_admission() {
    let (cp, _serial) = setup().await;
    // A CA renewed after some 30 s and signing from some 37 s, serving
    // certificates renewed every 11 s or so (a third of their lifetime left).
    let (a, b) = start_two(
        cp,
        "tls-rotate",
        &["--tls-ca-validity=45s", "--tls-serving-validity=15s"],
    )
    .await;
    let first_ca = secret_entry(cp, "ca.crt").await;
    a.register_url(cp).await.unwrap();
    await_ca_bundle(cp, &first_ca).await;

    // Creates listeners without pause until the rotation is over.
    let load = ListenerLoad::start(cp, LISTENER_NAMESPACE, "tls-rotate");

    // What a new connection from the API server would find, all along (it
    // keeps its connections to a webhook open and checks a certificate only
    // on a new one, so admissions alone can miss a moment of distrust):
    // - each replica's certificate verifies against the caBundle; a failure
    //   counts only if the caBundle was the same before and after it, so a
    //   change in between is not mistaken for one;
    // - a CA leaves the caBundle only once it has expired, so a replica
    //   that has not yet picked up a new pair is still trusted.
    let rotating = Arc::new(AtomicBool::new(true));
    let probe = tokio::spawn({
        let rotating = rotating.clone();
        let ports = [a.port, b.port];
        async move {
            let mut untrusted = Vec::new();
            let mut dropped_early = Vec::new();
            let mut last: Option<String> = None;
            while rotating.load(Ordering::SeqCst) {
                let bundle = ca_bundles(cp).await.remove(0).unwrap_or_default();
                let pem = String::from_utf8(bundle).unwrap();
                let now = jiff::Timestamp::now().as_second();
                if let Some(last) = &last {
                    let kept = certs(&pem);
                    for ca in certs(last).into_iter().filter(|c| !kept.contains(c)) {
                        if now < not_after(&ca) {
                            dropped_early.push(not_after(&ca) - now);
                        }
                    }
                }
                for port in ports {
                    if served_cert(port, &pem).await.is_none()
                        && ca_bundles(cp).await.remove(0).unwrap_or_default() == pem.as_bytes()
                    {
                        untrusted.push(port);
                    }
                }
                last = Some(pem);
            }
            (untrusted, dropped_early)
        }
    });

    // Until a new CA signs and the old one has left the caBundle; every
    // certificate either replica serves meanwhile verifies against what the
    // Secret says to trust.
    let served = std::sync::Mutex::new(BTreeSet::new());
    let new_ca = eventually(Duration::from_secs(120), "the CA to rotate", || async {
        let trusted = trusted(cp).await;
        for w in [&a, &b] {
            let cert = served_cert(w.port, &trusted).await?;
            served.lock().unwrap().insert(cert);
        }
        let ca = secret_entry(cp, "ca.crt").await;
        let bundles = ca_bundles(cp).await;
        (ca != first_ca
            && trusted == ca
            && bundles.iter().all(|b| b.as_deref() == Some(ca.as_bytes())))
        .then_some(ca)
    })
    .await
    .unwrap();
    rotating.store(false, Ordering::SeqCst);
    let load = load.stop().await.unwrap();
    let (untrusted, dropped_early) = probe.await.unwrap();
    assert!(
        dropped_early.is_empty(),
        "CAs left the caBundle this many seconds before they expired: {dropped_early:?}"
    );
    assert!(
        untrusted.is_empty(),
        "replicas (by port) served a certificate the caBundle did not trust: {untrusted:?}"
    );
    assert!(
        load.without_watchdog.is_empty(),
        "admissions lost during rotation: {:?}",
        load.without_watchdog
    );
    let served = served.into_inner().unwrap();
    eprintln!(
        "{} listener pods created during the rotation; {} serving certificates seen",
        load.made,
        served.len()
    );
    assert!(
        served.len() >= 3,
        "serving certificates seen: {}",
        served.len()
    );
    // Both replicas now serve a certificate of the new CA alone.
    for w in [&a, &b] {
        let port = w.port;
        eventually(
            Duration::from_secs(10),
            "the new CA's certificate to be served",
            || {
                let new_ca = new_ca.clone();
                async move { served_cert(port, &new_ca).await }
            },
        )
        .await
        .unwrap();
    }
    let metrics = a.metrics().await.unwrap() + &b.metrics().await.unwrap();
    for change in [
        "add_next_ca",
        "promote_next_ca",
        "drop_previous_ca",
        "issue_serving",
    ] {
        assert!(
            metrics.contains(&format!(
                "arc_watchdog_webhook_self_managed_tls_changes_total{{change=\"{change}\"}}"
            )),
            "no {change} counted:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn both_replicas_restarted_keep_the_ca_and_the_ca_bundle() {
    let (cp, _serial) = setup().await;
    let (a, b) = start_two(cp, "tls-restart", &[]).await;
    let ca = secret_entry(cp, "ca.crt").await;
    a.register_url(cp).await.unwrap();
    await_ca_bundle(cp, &ca).await;
    assert_injected(cp, "tls-restart-0").await;
    let secret_version = secrets(cp)
        .await
        .get(TLS_SECRET_NAME)
        .await
        .unwrap()
        .metadata
        .resource_version;
    let bundles = ca_bundles(cp).await;

    a.stop();
    b.stop();
    let (ra, rb) = tokio::join!(a.restart("tls-restart-a"), b.restart("tls-restart-b"));
    ra.unwrap();
    rb.unwrap();

    // Ready again: each has read the Secret, served it and checked the
    // caBundle; none wrote anything.
    let after = secrets(cp).await.get(TLS_SECRET_NAME).await.unwrap();
    assert_eq!(
        after.metadata.resource_version, secret_version,
        "the Secret was rewritten"
    );
    assert_eq!(secret_entry(cp, "ca.crt").await, ca, "a new CA");
    assert_eq!(ca_bundles(cp).await, bundles, "the caBundle changed");
    for w in [&a, &b] {
        assert!(served_cert(w.port, &ca).await.is_some());
    }
    assert_injected(cp, "tls-restart-1").await;
}

#[tokio::test]
async fn without_rights_on_the_secret_the_webhook_is_unready_and_names_the_right() {
    let (cp, _serial) = setup().await;
    // Another ServiceAccount of the namespace: none of the webhook's rights.
    cp.create_service_account(WEBHOOK_NAMESPACE, "no-tls-rights")
        .await
        .unwrap();
    let token = cp
        .service_account_token(WEBHOOK_NAMESPACE, "no-tls-rights", None)
        .await
        .unwrap();
    let kubeconfig = cp.write_token_kubeconfig("no-tls-rights", &token).unwrap();
    let name = "tls-no-rights";
    let w = Webhook::spawn_self_managed(cp, name, &kubeconfig, &[]).unwrap();
    let log = cp.dir().join(format!("{name}.log"));
    eventually(
        Duration::from_secs(30),
        "the missing right in the log",
        || async {
            let text = std::fs::read_to_string(&log).ok()?;
            text.contains(
                "needs `get` on secrets `arc-watchdog-webhook-tls` in namespace arc-watchdog",
            )
            .then_some(())
        },
    )
    .await
    .unwrap();
    assert!(!w.is_ready().await, "ready without a certificate");
    assert!(
        secrets(cp)
            .await
            .get_opt(TLS_SECRET_NAME)
            .await
            .unwrap()
            .is_none(),
        "a Secret was created without the right to"
    );
}
