//! The certificates `arc-watchdog-certs` makes are a real CA and a serving
//! certificate that chains to it, with the names asked for.

// Test helpers outside #[test] functions may unwrap too.
#![allow(clippy::unwrap_used)]
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use arc_watchdog_certs::{Ca, Error, Options, generate, write_bundle};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::parse_x509_pem;

fn der(pem: &str) -> Vec<u8> {
    let (_, pem) = parse_x509_pem(pem.as_bytes()).unwrap();
    pem.contents
}

#[test]
fn serving_cert_chains_to_ca_with_requested_names() {
    let opts = Options {
        dns: vec!["arc-watchdog-webhook.arc-watchdog.svc".into()],
        ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        days: 30,
    };
    let bundle = generate(&opts).unwrap();
    let ca_der = der(&bundle.ca_cert_pem);
    let leaf_der = der(&bundle.serving.cert_pem);
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();

    assert!(ca.is_ca());
    assert!(!leaf.is_ca());
    assert_eq!(leaf.issuer(), ca.subject());
    leaf.verify_signature(Some(ca.public_key())).unwrap();
    ca.verify_signature(None).unwrap();

    let san = leaf.subject_alternative_name().unwrap().unwrap();
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => format!("dns:{d}"),
            GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
            other => format!("other:{other:?}"),
        })
        .collect();
    assert_eq!(
        names,
        vec![
            "dns:arc-watchdog-webhook.arc-watchdog.svc".to_owned(),
            "ip:[127, 0, 0, 1]".to_owned()
        ]
    );
    let eku = leaf.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth);

    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    // 30 days plus the five minutes of backdating.
    assert_eq!(lifetime, 30 * 86_400 + 300);
    assert!(
        bundle
            .serving
            .key_pem
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
}

#[test]
fn one_ca_issues_several_serving_certs() {
    let ca = Ca::new(1).unwrap();
    let opts = Options {
        dns: vec!["localhost".into()],
        ..Options::default()
    };
    let a = ca.issue(&opts).unwrap();
    let b = ca.issue(&opts).unwrap();
    assert_ne!(a.key_pem, b.key_pem);
    let ca_der = der(ca.cert_pem());
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    for serving in [a, b] {
        let d = der(&serving.cert_pem);
        let (_, leaf) = x509_parser::parse_x509_certificate(&d).unwrap();
        leaf.verify_signature(Some(ca_cert.public_key())).unwrap();
    }
    // The key never shows up in debug output.
    assert!(!format!("{ca:?}").contains("PRIVATE"));
}

#[test]
fn refuses_no_names_and_zero_days() {
    assert!(matches!(
        generate(&Options::default()),
        Err(Error::NoSubjectAltNames)
    ));
    let opts = Options {
        dns: vec!["x".into()],
        days: 0,
        ..Options::default()
    };
    assert!(matches!(generate(&opts), Err(Error::ZeroDays)));
}

#[cfg(unix)]
#[test]
fn writes_files_with_private_key_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nested/out");
    let bundle = generate(&Options {
        dns: vec!["localhost".into()],
        ..Options::default()
    })
    .unwrap();
    write_bundle(&out, &bundle).unwrap();
    let mode = |f: &str| std::fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("tls.key"), 0o600);
    assert_eq!(mode("tls.crt"), 0o644);
    assert_eq!(mode("ca.crt"), 0o644);
    assert_eq!(
        std::fs::read_to_string(out.join("tls.key")).unwrap(),
        bundle.serving.key_pem
    );
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn binary_writes_bundle_and_rejects_missing_names() {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_arc-watchdog-certs"))
        .args(["--out"])
        .arg(dir.path())
        .args([
            "--dns",
            "a.example",
            "--dns",
            "b.example",
            "--ip",
            "127.0.0.1",
            "--days",
            "2",
        ])
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    for f in ["ca.crt", "tls.crt", "tls.key"] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    let pem = std::fs::read_to_string(dir.path().join("tls.crt")).unwrap();
    let d = der(&pem);
    let (_, leaf) = x509_parser::parse_x509_certificate(&d).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names.len(), 3);

    let out = Command::new(env!("CARGO_BIN_EXE_arc-watchdog-certs"))
        .arg("--out")
        .arg(dir.path().join("x"))
        .env_remove("ARC_WATCHDOG_CERTS_DNS")
        .env_remove("ARC_WATCHDOG_CERTS_IP")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dns"));
}

#[test]
fn a_ca_read_back_from_its_pem_signs_certificates_that_chain_to_it() {
    let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let ca = Ca::generate("test CA", now, std::time::Duration::from_secs(3600)).unwrap();
    let ca_der = der(ca.cert_pem());
    let (_, parsed) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    // Backdated a tenth of its validity (six minutes here, so at most five).
    assert_eq!(
        parsed.validity().not_before.timestamp(),
        1_800_000_000 - 300
    );
    assert_eq!(
        parsed.validity().not_after.timestamp(),
        1_800_000_000 + 3600
    );

    let again = Ca::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
    let opts = Options {
        dns: vec!["svc.ns.svc".into()],
        ips: vec![],
        days: 1,
    };
    let cap = now + time::Duration::seconds(100);
    let leaf = again
        .issue_at(&opts, now, std::time::Duration::from_secs(600), Some(cap))
        .unwrap();
    let leaf_der = der(&leaf.cert_pem);
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
    leaf.verify_signature(Some(parsed.public_key())).unwrap();
    assert_eq!(leaf.issuer(), parsed.subject());
    assert_eq!(leaf.validity().not_before.timestamp(), 1_800_000_000 - 60);
    assert_eq!(
        leaf.validity().not_after.timestamp(),
        1_800_000_100,
        "capped"
    );

    // Another CA's key is refused.
    let other = Ca::new(1).unwrap();
    assert!(matches!(
        Ca::from_pem(ca.cert_pem(), &other.key_pem()),
        Err(Error::StoredCa(_))
    ));
    assert!(matches!(
        Ca::generate("x", now, std::time::Duration::ZERO),
        Err(Error::ZeroValidity)
    ));
}
