//! The certificates of a local control plane: the API server's serving
//! certificate and service-account signing key, and a client CA whose
//! certificates the API server maps to users and groups (how the admin
//! client authenticates). Generated per control plane, never written
//! outside its directory.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context as _, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// What the local servers' certificates name (`localhost`, 127.0.0.1) and
/// how long they last: a week outlives any test run.
pub(super) fn loopback_serving() -> arc_watchdog_certs::Options {
    arc_watchdog_certs::Options {
        dns: vec!["localhost".into()],
        ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        days: 7,
    }
}

/// A client certificate authority and the API server's PKI.
pub(super) struct Pki {
    pub(super) serving_ca_pem: String,
    pub(super) serving_cert_pem: String,
    pub(super) serving_key_pem: String,
    pub(super) client_ca_pem: String,
    client_ca: Issuer<'static, KeyPair>,
    pub(super) sa_key_pem: String,
    pub(super) sa_pub_pem: String,
}

impl Pki {
    pub(super) fn new() -> Result<Self> {
        let serving = arc_watchdog_certs::generate(&loopback_serving())
            .context("API server serving certificate")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "arc-watchdog tests client CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let sa_key = KeyPair::generate()?;
        Ok(Self {
            serving_ca_pem: serving.ca_cert_pem,
            serving_cert_pem: serving.serving.cert_pem,
            serving_key_pem: serving.serving.key_pem,
            client_ca_pem: cert.pem(),
            client_ca: Issuer::new(params, key),
            sa_key_pem: sa_key.serialize_pem(),
            sa_pub_pem: sa_key.public_key_pem(),
        })
    }

    /// A client certificate: the API server maps CN to the user name and
    /// each O to a group.
    pub(super) fn client_cert(&self, user: &str, groups: &[&str]) -> Result<(String, String)> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, user);
        for g in groups {
            dn.push(DnType::OrganizationName, *g);
        }
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.client_ca)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}
