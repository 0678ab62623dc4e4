#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, WebhookClientConfig};

use super::*;

fn policy() -> Policy {
    Policy {
        names: Names::for_service("svc", "ns", &["127.0.0.1".to_owned()]),
        ca_validity: Duration::from_secs(90 * 86400),
        serving_validity: Duration::from_secs(30 * 86400),
    }
}

fn at(t: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t).unwrap()
}

const T0: i64 = 1_800_000_000;

/// Plans and applies until nothing is left to change at `now`; the changes made.
fn settle(m: &mut Material, published: &[Vec<u8>], now: i64) -> Vec<Change> {
    let mut changes = Vec::new();
    for _ in 0..10 {
        let Some(change) = plan(&observe(m), &policy().names, published, now) else {
            return changes;
        };
        *m = apply(change, m, &policy(), at(now)).unwrap();
        changes.push(change);
    }
    panic!("no fixed point: {changes:?}");
}

fn fresh() -> Material {
    let mut m = Material::default();
    assert_eq!(settle(&mut m, &[], T0), vec![Change::Fresh]);
    m
}

fn ca(m: &Material) -> CertFacts {
    observe(m).ca.unwrap()
}

#[test]
fn a_fresh_secret_holds_one_ca_and_a_serving_pair_for_the_names() {
    let m = fresh();
    let o = observe(&m);
    let serving = o.serving.unwrap();
    assert!(serving.signed_by_ca);
    assert_eq!(serving.names, policy().names);
    assert!(o.next_ca.is_none() && o.previous_ca.is_none());
    assert_eq!(
        m.ca_bundle(),
        format!("{}\n", m.ca.as_ref().unwrap().cert_pem.trim_end())
    );
    assert_eq!(
        bundle_ders(m.ca_bundle().as_bytes()),
        vec![o.ca.unwrap().der]
    );
    // Read back from the Secret's data: the same.
    assert_eq!(Material::from_data(&m.to_data()), m);
}

#[test]
fn keys_stay_out_of_debug_output() {
    let m = fresh();
    let key = &m.ca.as_ref().unwrap().key_pem;
    let shown = format!("{m:?}");
    assert!(!shown.contains(key.lines().nth(1).unwrap()));
    assert!(!shown.contains(m.serving.as_ref().unwrap().key_pem.lines().nth(1).unwrap()));
    assert!(!shown.contains("PRIVATE KEY"));
}

#[test]
fn the_serving_certificate_is_renewed_by_the_same_ca_with_a_third_of_its_lifetime_left() {
    let mut m = fresh();
    let s = observe(&m).serving.unwrap().cert;
    let due = s.not_after - (s.not_after - s.not_before) / 3;
    assert_eq!(settle(&mut m.clone(), &[], due - 60), vec![]);
    let bundle = m.ca_bundle();
    assert_eq!(settle(&mut m, &[], due), vec![Change::IssueServing]);
    let renewed = observe(&m).serving.unwrap();
    assert!(renewed.signed_by_ca);
    assert!(renewed.cert.not_after > s.not_after);
    assert_eq!(m.ca_bundle(), bundle, "the caBundle does not change");
}

#[test]
fn other_names_or_another_signer_get_a_new_serving_certificate() {
    let mut m = fresh();
    let other = Policy {
        names: Names::for_service("other", "ns", &[]),
        ..policy()
    };
    m.serving = apply(Change::IssueServing, &m, &other, at(T0))
        .unwrap()
        .serving;
    assert_eq!(settle(&mut m, &[], T0), vec![Change::IssueServing]);

    let foreign = fresh();
    m.serving = foreign.serving.clone();
    assert!(!observe(&m).serving.unwrap().signed_by_ca);
    assert_eq!(settle(&mut m, &[], T0), vec![Change::IssueServing]);
    assert!(observe(&m).serving.unwrap().signed_by_ca);

    m.serving.as_mut().unwrap().key_pem = foreign.serving.unwrap().key_pem;
    assert!(observe(&m).serving.is_none(), "a key not its own");
    assert_eq!(settle(&mut m, &[], T0), vec![Change::IssueServing]);
}

#[test]
fn no_usable_ca_starts_afresh() {
    let m = fresh();
    let expiry = ca(&m).not_after;
    assert_eq!(settle(&mut m.clone(), &[], expiry), vec![Change::Fresh]);

    let mut mismatched = m.clone();
    mismatched.ca.as_mut().unwrap().key_pem = fresh().ca.unwrap().key_pem;
    assert_eq!(settle(&mut mismatched, &[], T0), vec![Change::Fresh]);

    let mut garbage = m;
    garbage.ca.as_mut().unwrap().cert_pem = "not a certificate".to_owned();
    assert_eq!(settle(&mut garbage, &[], T0), vec![Change::Fresh]);
}

#[test]
fn the_ca_rotates_with_an_overlap_and_only_once_the_next_one_is_published() {
    let mut m = fresh();
    let old = ca(&m);
    let old_pem = m.ca.as_ref().unwrap().cert_pem.clone();
    let third = old.not_after - (old.not_after - old.not_before) / 3;
    let sixth = old.not_after - (old.not_after - old.not_before) / 6;

    // A third left: the next CA is made and trusted, the old one still signs.
    let changes = settle(&mut m, &[], third);
    assert_eq!(changes[0], Change::AddNextCa, "{changes:?}");
    assert_eq!(ca(&m).der, old.der);
    let next = observe(&m).next_ca.unwrap();
    assert_eq!(
        bundle_ders(m.ca_bundle().as_bytes()),
        vec![old.der.clone(), next.der.clone()]
    );

    // A sixth left, but the caBundle does not carry the next CA yet: wait.
    let only_old = vec![old.der.clone()];
    let changes = settle(&mut m, &only_old, sixth);
    assert!(!changes.contains(&Change::PromoteNextCa), "{changes:?}");
    assert_eq!(ca(&m).der, old.der);

    // Published: the next CA signs, with a new serving certificate; the old
    // one stays trusted.
    let published = bundle_ders(m.ca_bundle().as_bytes());
    let changes = settle(&mut m, &published, sixth);
    assert_eq!(changes, vec![Change::PromoteNextCa]);
    assert_eq!(ca(&m).der, next.der);
    assert!(observe(&m).next_ca.is_none());
    assert_eq!(m.previous_ca.as_deref(), Some(old_pem.as_str()));
    assert!(observe(&m).serving.unwrap().signed_by_ca);
    assert_eq!(
        bundle_ders(m.ca_bundle().as_bytes()),
        vec![next.der.clone(), old.der.clone()]
    );

    // Until the old CA expires; then only the new one is trusted.
    assert_eq!(settle(&mut m, &published, old.not_after - 1), vec![]);
    assert_eq!(
        settle(&mut m, &published, old.not_after),
        vec![Change::DropPreviousCa]
    );
    assert_eq!(bundle_ders(m.ca_bundle().as_bytes()), vec![next.der]);
}

#[test]
fn a_broken_next_ca_is_made_again_and_a_broken_previous_one_dropped() {
    let mut m = fresh();
    let old = ca(&m);
    let third = old.not_after - (old.not_after - old.not_before) / 3;
    m.next_ca = Some(Pair {
        cert_pem: "x".to_owned(),
        key_pem: "y".to_owned(),
    });
    assert_eq!(settle(&mut m, &[], third)[0], Change::AddNextCa);
    assert!(observe(&m).next_ca.is_some());

    let mut m = fresh();
    m.previous_ca = Some("garbage".to_owned());
    assert_eq!(settle(&mut m, &[], T0), vec![Change::DropPreviousCa]);
}

#[test]
fn a_serving_certificate_never_outlives_its_ca() {
    let m = fresh();
    let expiry = ca(&m).not_after;
    let late = apply(Change::IssueServing, &m, &policy(), at(expiry - 3600)).unwrap();
    assert_eq!(observe(&late).serving.unwrap().cert.not_after, expiry);
}

fn config(bundles: &[Option<&str>]) -> MutatingWebhookConfiguration {
    MutatingWebhookConfiguration {
        webhooks: Some(
            bundles
                .iter()
                .enumerate()
                .map(|(i, b)| MutatingWebhook {
                    name: format!("hook{i}.arc-watchdog.dev"),
                    client_config: WebhookClientConfig {
                        ca_bundle: b.map(|b| ByteString(b.as_bytes().to_vec())),
                        ..WebhookClientConfig::default()
                    },
                    ..MutatingWebhook::default()
                })
                .collect(),
        ),
        ..MutatingWebhookConfiguration::default()
    }
}

#[test]
fn the_ca_bundle_patch_touches_only_the_ca_bundles_that_differ_guarded_by_name() {
    let m = fresh();
    let bundle = m.ca_bundle();
    assert_eq!(ca_bundle_patch(&config(&[Some(&bundle)]), &bundle), None);
    let patch = ca_bundle_patch(&config(&[Some(&bundle), None]), &bundle).unwrap();
    let encoded = base64::engine::general_purpose::STANDARD.encode(bundle.as_bytes());
    assert_eq!(
        patch,
        serde_json::json!([
            {"op": "test", "path": "/webhooks/1/name", "value": "hook1.arc-watchdog.dev"},
            {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": encoded},
        ])
    );
    // It applies as the API server would apply it.
    let mut doc = serde_json::to_value(config(&[Some(&bundle), None])).unwrap();
    json_patch::patch(
        &mut doc,
        &serde_json::from_value::<json_patch::Patch>(patch).unwrap(),
    )
    .unwrap();
    let patched: MutatingWebhookConfiguration = serde_json::from_value(doc).unwrap();
    assert_eq!(ca_bundle_patch(&patched, &bundle), None);
    assert_eq!(
        ca_bundle_patch(&MutatingWebhookConfiguration::default(), &bundle),
        None
    );
}

#[test]
fn published_cas_are_those_every_webhook_trusts() {
    let a = fresh();
    let b = fresh();
    let a_der = ca(&a).der;
    let b_der = ca(&b).der;
    let both = format!("{}{}", a.ca_bundle(), b.ca_bundle());
    assert_eq!(
        published_cas(&config(&[Some(&both)])),
        vec![a_der.clone(), b_der]
    );
    assert_eq!(
        published_cas(&config(&[Some(&both), Some(&a.ca_bundle())])),
        vec![a_der]
    );
    assert!(published_cas(&config(&[Some(&both), None])).is_empty());
    assert!(published_cas(&config(&[])).is_empty());
}

#[test]
fn names_are_sorted_and_split_into_dns_and_ip() {
    let n = Names::for_service(
        "s",
        "n",
        &[
            " 10.0.0.1".to_owned(),
            "a.example".to_owned(),
            String::new(),
        ],
    );
    assert_eq!(n.dns, vec!["a.example", "s.n.svc", "s.n.svc.cluster.local"]);
    assert_eq!(n.ips, vec![IpAddr::from([10, 0, 0, 1])]);
}
