//! Self-managed TLS (`--tls-mode=self-managed`): the webhook keeps its own
//! CA and serving certificate in a Secret of its namespace and fills its
//! MutatingWebhookConfiguration's `caBundle` itself, with no cert-manager.
//!
//! This module is the pure part: what the Secret holds ([`Material`]), what
//! its certificates say ([`observe`]), what to change at `now` ([`plan`]),
//! how to change it ([`apply`]), which `caBundle` the configuration carries
//! ([`Material::ca_bundle`]) and the patch that puts it there
//! ([`ca_bundle_patch`]). [`run`] is the thin kube I/O around it.
//!
//! Renewal keeps every admission working:
//! - the serving certificate is renewed, by the same CA, once less than a
//!   third of its lifetime is left; the `caBundle` does not change;
//! - the CA is renewed with an overlap. Once less than a third of its
//!   lifetime is left a next CA is created and published in the `caBundle`
//!   beside the current one, but signs nothing yet. Once less than a sixth
//!   is left, and only when the configuration's `caBundle` is seen to carry
//!   the next CA, it becomes the signing CA and a new serving certificate is
//!   issued by it; the old CA stays in the `caBundle` as the previous one
//!   until it expires, so a replica still serving the old pair is trusted
//!   until it has picked up the new one.
//!
//! Renewal points are fractions of each certificate's own lifetime, not
//! durations: a "renew before" longer than a validity would renew on every
//! check, and a serving certificate cut short by its CA's expiry still gets
//! renewed at the right moment.

pub mod run;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use arc_watchdog_certs::{Ca, Options};
use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};

/// Secret key of the CA certificate that signs the serving certificate.
pub const CA_CERT: &str = "ca.crt";
/// Secret key of that CA's private key.
pub const CA_KEY: &str = "ca.key";
/// Secret key of the next CA's certificate (published, not yet signing).
pub const NEXT_CA_CERT: &str = "next-ca.crt";
/// Secret key of the next CA's private key.
pub const NEXT_CA_KEY: &str = "next-ca.key";
/// Secret key of the previous CA's certificate (still trusted until it
/// expires; its key is gone).
pub const PREVIOUS_CA_CERT: &str = "previous-ca.crt";
/// Secret key of the serving certificate (the `kubernetes.io/tls` key).
pub const TLS_CERT: &str = "tls.crt";
/// Secret key of the serving certificate's private key.
pub const TLS_KEY: &str = "tls.key";

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Pair {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The private key (PEM). Secret.
    pub key_pem: String,
}

impl std::fmt::Debug for Pair {
    // Keys never reach logs or debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pair")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// What the Secret holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Material {
    /// The CA that signs the serving certificate.
    pub ca: Option<Pair>,
    /// During a CA rotation: the CA that will sign next, already trusted.
    pub next_ca: Option<Pair>,
    /// After a CA rotation: the CA that signed before, trusted until it
    /// expires.
    pub previous_ca: Option<String>,
    /// The serving certificate and key.
    pub serving: Option<Pair>,
}

fn text(data: &BTreeMap<String, Vec<u8>>, key: &str) -> Option<String> {
    data.get(key)
        .and_then(|b| String::from_utf8(b.clone()).ok())
        .filter(|s| !s.trim().is_empty())
}

fn pair(data: &BTreeMap<String, Vec<u8>>, cert: &str, key: &str) -> Option<Pair> {
    Some(Pair {
        cert_pem: text(data, cert)?,
        key_pem: text(data, key)?,
    })
}

impl Material {
    /// Reads the Secret's data; a missing, empty or non-UTF-8 entry is absent.
    pub fn from_data(data: &BTreeMap<String, Vec<u8>>) -> Self {
        Self {
            ca: pair(data, CA_CERT, CA_KEY),
            next_ca: pair(data, NEXT_CA_CERT, NEXT_CA_KEY),
            previous_ca: text(data, PREVIOUS_CA_CERT),
            serving: pair(data, TLS_CERT, TLS_KEY),
        }
    }

    /// The Secret's data. `tls.crt` and `tls.key` are always there (empty
    /// when absent) since a `kubernetes.io/tls` Secret needs both.
    pub fn to_data(&self) -> BTreeMap<String, Vec<u8>> {
        let mut data = BTreeMap::new();
        let mut put = |k: &str, v: &str| {
            data.insert(k.to_owned(), v.as_bytes().to_vec());
        };
        if let Some(ca) = &self.ca {
            put(CA_CERT, &ca.cert_pem);
            put(CA_KEY, &ca.key_pem);
        }
        if let Some(next) = &self.next_ca {
            put(NEXT_CA_CERT, &next.cert_pem);
            put(NEXT_CA_KEY, &next.key_pem);
        }
        if let Some(previous) = &self.previous_ca {
            put(PREVIOUS_CA_CERT, previous);
        }
        let (cert, key) = self
            .serving
            .as_ref()
            .map_or(("", ""), |s| (s.cert_pem.as_str(), s.key_pem.as_str()));
        put(TLS_CERT, cert);
        put(TLS_KEY, key);
        data
    }

    /// The `caBundle` the configuration must carry: the signing CA, the next
    /// one and the previous one, those present, in that order. A function of
    /// the Secret alone, so every replica agrees on it.
    pub fn ca_bundle(&self) -> String {
        let mut bundle = String::new();
        let certs = [
            self.ca.as_ref().map(|p| p.cert_pem.as_str()),
            self.next_ca.as_ref().map(|p| p.cert_pem.as_str()),
            self.previous_ca.as_deref(),
        ];
        for pem in certs.into_iter().flatten() {
            bundle.push_str(pem.trim_end());
            bundle.push('\n');
        }
        bundle
    }
}

/// The names the serving certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// DNS names, sorted, without duplicates.
    pub dns: Vec<String>,
    /// IP addresses, sorted, without duplicates.
    pub ips: Vec<IpAddr>,
}

impl Names {
    /// The Service's names (`<service>.<namespace>.svc` and
    /// `....svc.cluster.local`) and `extra` ones (DNS names or IP addresses).
    pub fn for_service(service: &str, namespace: &str, extra: &[String]) -> Self {
        let mut dns = vec![
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
        ];
        let mut ips = Vec::new();
        for e in extra {
            let e = e.trim();
            match e.parse::<IpAddr>() {
                Ok(ip) => ips.push(ip),
                Err(_) if !e.is_empty() => dns.push(e.to_owned()),
                Err(_) => {}
            }
        }
        Self::new(dns, ips)
    }

    /// Sorted and deduplicated, so that two lists of the same names compare
    /// equal.
    pub fn new(mut dns: Vec<String>, mut ips: Vec<IpAddr>) -> Self {
        dns.sort();
        dns.dedup();
        ips.sort();
        ips.dedup();
        Self { dns, ips }
    }
}

/// What certificates to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The serving certificate's names.
    pub names: Names,
    /// Lifetime of a new CA.
    pub ca_validity: Duration,
    /// Lifetime of a new serving certificate (never beyond its CA's).
    pub serving_validity: Duration,
}

/// The dates of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// Its DER.
    pub der: Vec<u8>,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
}

impl CertFacts {
    fn lifetime(&self) -> i64 {
        (self.not_after - self.not_before).max(0)
    }

    /// Expired at `now`.
    pub fn expired(&self, now: i64) -> bool {
        now >= self.not_after
    }

    /// At most `1/divisor` of its lifetime is left at `now`.
    pub fn at_most_left(&self, now: i64, divisor: i64) -> bool {
        (self.not_after - now).saturating_mul(divisor) <= self.lifetime()
    }
}

/// What the serving certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingFacts {
    /// Its dates.
    pub cert: CertFacts,
    /// Its subject alternative names.
    pub names: Names,
    /// Its signature verifies with the signing CA's key.
    pub signed_by_ca: bool,
}

/// What the Secret's certificates say, each only if it is usable (parses,
/// its key is its own, a CA is a CA).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The signing CA.
    pub ca: Option<CertFacts>,
    /// The next CA.
    pub next_ca: Option<CertFacts>,
    /// The previous CA; `Some(None)` for one that does not parse.
    pub previous_ca: Option<Option<CertFacts>>,
    /// The serving pair.
    pub serving: Option<ServingFacts>,
}

fn pem_der(pem: &str) -> Option<Vec<u8>> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    (p.label == "CERTIFICATE").then_some(p.contents)
}

/// Every certificate of a PEM bundle, as DER (what does not parse is left
/// out).
pub fn bundle_ders(pem: &[u8]) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem)
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}

fn facts(der: &[u8]) -> Option<(CertFacts, X509Certificate<'_>)> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let validity = cert.validity();
    Some((
        CertFacts {
            der: der.to_vec(),
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
        },
        cert,
    ))
}

fn ca_facts(p: &Pair) -> Option<CertFacts> {
    // Reading it back as a CA checks that the key is the certificate's.
    Ca::from_pem(&p.cert_pem, &p.key_pem).ok()?;
    let der = pem_der(&p.cert_pem)?;
    let (f, cert) = facts(&der)?;
    cert.is_ca().then_some(f)
}

fn serving_facts(p: &Pair, ca_der: Option<&[u8]>) -> Option<ServingFacts> {
    // rustls checks that the key belongs to the certificate.
    crate::tls::load_pair(p.cert_pem.as_bytes(), p.key_pem.as_bytes()).ok()?;
    let der = pem_der(&p.cert_pem)?;
    let (f, cert) = facts(&der)?;
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?)),
                    16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?)),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    let signed_by_ca = ca_der
        .and_then(|d| X509Certificate::from_der(d).ok())
        .is_some_and(|(_, ca)| {
            cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok()
        });
    Some(ServingFacts {
        cert: f,
        names: Names::new(dns, ips),
        signed_by_ca,
    })
}

/// Reads the dates, names and signatures of what the Secret holds.
pub fn observe(material: &Material) -> Observed {
    let ca = material.ca.as_ref().and_then(ca_facts);
    Observed {
        next_ca: material.next_ca.as_ref().and_then(ca_facts),
        previous_ca: material
            .previous_ca
            .as_ref()
            .map(|pem| pem_der(pem).and_then(|d| facts(&d).map(|(f, _)| f))),
        serving: material
            .serving
            .as_ref()
            .and_then(|s| serving_facts(s, ca.as_ref().map(|c| c.der.as_slice()))),
        ca,
    }
}

/// One change to the Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// No usable CA (none, broken or expired): a new CA and serving
    /// certificate, nothing else kept.
    Fresh,
    /// The CA has a third of its lifetime left: create the next CA (and
    /// publish it).
    AddNextCa,
    /// The CA has a sixth of its lifetime left and the configuration trusts
    /// the next one: the next CA signs from now on, with a new serving
    /// certificate; the old one becomes the previous CA.
    PromoteNextCa,
    /// The previous CA expired (or does not parse): drop it.
    DropPreviousCa,
    /// The serving certificate is missing, broken, for other names, not the
    /// CA's, or has a third of its lifetime left: issue a new one.
    IssueServing,
}

impl Change {
    /// For logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::AddNextCa => "add_next_ca",
            Self::PromoteNextCa => "promote_next_ca",
            Self::DropPreviousCa => "drop_previous_ca",
            Self::IssueServing => "issue_serving",
        }
    }
}

/// The next change the Secret needs at `now` (Unix seconds), or `None`.
/// `published` holds the CAs (DER) that every webhook of the configuration
/// trusts right now: a next CA signs only once it is among them.
pub fn plan(observed: &Observed, names: &Names, published: &[Vec<u8>], now: i64) -> Option<Change> {
    let Some(ca) = observed.ca.as_ref().filter(|ca| !ca.expired(now)) else {
        return Some(Change::Fresh);
    };
    if ca.at_most_left(now, 3) {
        match &observed.next_ca {
            None => return Some(Change::AddNextCa),
            Some(next) if next.expired(now) => return Some(Change::AddNextCa),
            Some(next) if ca.at_most_left(now, 6) && published.contains(&next.der) => {
                return Some(Change::PromoteNextCa);
            }
            // Waiting: for the time, or for the caBundle to carry it.
            Some(_) => {}
        }
    }
    if let Some(previous) = &observed.previous_ca
        && previous.as_ref().is_none_or(|p| p.expired(now))
    {
        return Some(Change::DropPreviousCa);
    }
    match &observed.serving {
        Some(s)
            if s.signed_by_ca
                && s.names == *names
                && !s.cert.expired(now)
                && !s.cert.at_most_left(now, 3) =>
        {
            None
        }
        _ => Some(Change::IssueServing),
    }
}

fn ca_name(now: OffsetDateTime) -> String {
    // A distinct subject per CA, so that old and new in one caBundle are
    // told apart by name too.
    format!("arc-watchdog webhook CA {}", now.unix_timestamp())
}

fn new_ca(policy: &Policy, now: OffsetDateTime) -> Result<Pair, arc_watchdog_certs::Error> {
    let ca = Ca::generate(&ca_name(now), now, policy.ca_validity)?;
    Ok(Pair {
        cert_pem: ca.cert_pem().to_owned(),
        key_pem: ca.key_pem(),
    })
}

fn issue(
    ca: &Pair,
    policy: &Policy,
    now: OffsetDateTime,
) -> Result<Pair, arc_watchdog_certs::Error> {
    let signer = Ca::from_pem(&ca.cert_pem, &ca.key_pem)?;
    let cap = pem_der(&ca.cert_pem)
        .and_then(|d| facts(&d).map(|(f, _)| f.not_after))
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok());
    let opts = Options {
        dns: policy.names.dns.clone(),
        ips: policy.names.ips.clone(),
        days: 1,
    };
    let serving = signer.issue_at(&opts, now, policy.serving_validity, cap)?;
    Ok(Pair {
        cert_pem: serving.cert_pem,
        key_pem: serving.key_pem,
    })
}

/// `material` with `change` made at `now` (new keys are random).
pub fn apply(
    change: Change,
    material: &Material,
    policy: &Policy,
    now: OffsetDateTime,
) -> Result<Material, arc_watchdog_certs::Error> {
    let mut m = material.clone();
    match change {
        Change::Fresh => {
            let ca = new_ca(policy, now)?;
            m = Material {
                serving: Some(issue(&ca, policy, now)?),
                ca: Some(ca),
                ..Material::default()
            };
        }
        Change::AddNextCa => m.next_ca = Some(new_ca(policy, now)?),
        Change::PromoteNextCa => {
            if let Some(next) = m.next_ca.take() {
                m.serving = Some(issue(&next, policy, now)?);
                m.previous_ca = m.ca.take().map(|p| p.cert_pem);
                m.ca = Some(next);
            }
        }
        Change::DropPreviousCa => m.previous_ca = None,
        Change::IssueServing => {
            if let Some(ca) = &m.ca {
                m.serving = Some(issue(ca, policy, now)?);
            }
        }
    }
    Ok(m)
}

/// The CAs (DER) every webhook of `config` trusts: those in each one's
/// `caBundle`. Empty when a webhook has none, or there are no webhooks.
pub fn published_cas(config: &MutatingWebhookConfiguration) -> Vec<Vec<u8>> {
    let hooks = config.webhooks.as_deref().unwrap_or_default();
    let mut sets = hooks.iter().map(|h| {
        h.client_config
            .ca_bundle
            .as_ref()
            .map(|b| bundle_ders(&b.0))
            .unwrap_or_default()
    });
    let Some(first) = sets.next() else {
        return Vec::new();
    };
    sets.fold(first, |acc, set| {
        acc.into_iter().filter(|d| set.contains(d)).collect()
    })
}

/// The JSON patch (RFC 6902) that sets `bundle` as the `caBundle` of every
/// webhook of `config`, and nothing else; `None` when each carries it
/// already. Each change is guarded by a `test` of that webhook's name at
/// that index, so a configuration edited in between makes the patch fail
/// instead of touching another webhook.
pub fn ca_bundle_patch(
    config: &MutatingWebhookConfiguration,
    bundle: &str,
) -> Option<serde_json::Value> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(bundle.as_bytes());
    let mut ops = Vec::new();
    for (i, hook) in config
        .webhooks
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let current = hook
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.as_slice());
        if current == Some(bundle.as_bytes()) {
            continue;
        }
        ops.push(serde_json::json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": hook.name}));
        ops.push(serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": encoded}));
    }
    (!ops.is_empty()).then_some(serde_json::Value::Array(ops))
}

#[cfg(test)]
mod tests;
