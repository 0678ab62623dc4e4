//! A small certificate authority for the arc-watchdog webhook.
//!
//! Clusters without cert-manager, the integration tests and the demo all
//! need the same thing: a CA (its certificate goes into the webhook
//! configuration's `caBundle`) and a serving certificate signed by it for
//! the webhook's Service name or loopback address. The binary
//! `arc-watchdog-certs` is a thin wrapper around [`generate`] and
//! [`write_bundle`]; tests call them in-process.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData as _, SanType,
};
use time::{Duration, OffsetDateTime};

/// File name of the CA certificate in the output directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the serving certificate in the output directory.
pub const TLS_CERT_FILE: &str = "tls.crt";
/// File name of the serving certificate's private key in the output directory.
pub const TLS_KEY_FILE: &str = "tls.key";

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither a DNS name nor an IP address was given.
    #[error("at least one --dns name or --ip address is needed for the serving certificate")]
    NoSubjectAltNames,
    /// A validity of zero days.
    #[error("--days must be at least 1")]
    ZeroDays,
    /// rcgen refused the parameters (for example an invalid DNS name).
    #[error("generating certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A validity too short to be a certificate's lifetime.
    #[error("a certificate must be valid for at least one second")]
    ZeroValidity,
    /// A stored CA certificate or key could not be read back.
    #[error("stored CA: {0}")]
    StoredCa(String),
    /// Writing a file failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file that could not be written.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
}

/// What the serving certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// DNS subject alternative names, e.g. `arc-watchdog-webhook.arc-watchdog.svc`.
    pub dns: Vec<String>,
    /// IP subject alternative names, e.g. `127.0.0.1` for a webhook outside the cluster.
    pub ips: Vec<IpAddr>,
    /// Validity of the CA and the serving certificate, in days from now.
    pub days: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            dns: Vec::new(),
            ips: Vec::new(),
            days: 365,
        }
    }
}

/// A CA that can sign further serving certificates (tests use this to
/// rotate a webhook's certificate without changing the trusted CA).
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for Ca {
    // The signing key never goes into logs or debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// A serving certificate and its key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct ServingCert {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The private key (PKCS#8 PEM).
    pub key_pem: String,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// What `arc-watchdog-certs` writes: the CA certificate and a serving pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The CA certificate (PEM), for `caBundle`.
    pub ca_cert_pem: String,
    /// The serving certificate and key signed by the CA.
    pub serving: ServingCert,
}

fn validity(days: u32) -> Result<(OffsetDateTime, OffsetDateTime), Error> {
    if days == 0 {
        return Err(Error::ZeroDays);
    }
    // Backdated a little so that clocks that lag behind still accept it.
    let now = OffsetDateTime::now_utc();
    Ok((
        now - Duration::minutes(5),
        now + Duration::days(i64::from(days)),
    ))
}

/// The longest a certificate is backdated: clocks that lag behind the
/// issuer's by up to this much still accept it.
const MAX_BACKDATE: Duration = Duration::minutes(5);

/// notBefore and notAfter of a certificate issued at `now` for `validity`:
/// backdated by a tenth of the validity, at most five minutes, so that a
/// short-lived certificate is not mostly spent before it is issued.
pub fn validity_window(
    now: OffsetDateTime,
    validity: std::time::Duration,
) -> Result<(OffsetDateTime, OffsetDateTime), Error> {
    let secs = i64::try_from(validity.as_secs()).unwrap_or(i64::MAX / 2);
    if secs == 0 {
        return Err(Error::ZeroValidity);
    }
    let backdate = Duration::seconds(secs / 10).min(MAX_BACKDATE);
    Ok((now - backdate, now + Duration::seconds(secs)))
}

impl Ca {
    /// A new self-signed CA valid for `days` days.
    pub fn new(days: u32) -> Result<Self, Error> {
        let (not_before, not_after) = validity(days)?;
        Self::self_signed("arc-watchdog webhook CA", not_before, not_after)
    }

    /// A new self-signed CA named `common_name`, valid for `validity` from
    /// `now` (see [`validity_window`]).
    pub fn generate(
        common_name: &str,
        now: OffsetDateTime,
        validity: std::time::Duration,
    ) -> Result<Self, Error> {
        let (not_before, not_after) = validity_window(now, validity)?;
        Self::self_signed(common_name, not_before, not_after)
    }

    /// A CA read back from its certificate and private key (both PEM), as
    /// [`Self::cert_pem`] and [`Self::key_pem`] wrote them. Fails when the key
    /// is not the certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let key =
            KeyPair::from_pem(key_pem).map_err(|e| Error::StoredCa(format!("private key: {e}")))?;
        let der = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| Error::StoredCa(format!("certificate PEM: {e}")))?
            .1;
        let cert = der
            .parse_x509()
            .map_err(|e| Error::StoredCa(format!("certificate: {e}")))?;
        if cert.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
            return Err(Error::StoredCa(
                "the private key does not belong to the certificate".to_owned(),
            ));
        }
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| Error::StoredCa(format!("certificate: {e}")))?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
        })
    }

    /// The CA's private key (PKCS#8 PEM). Secret: it signs serving
    /// certificates every client of the webhook trusts.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    fn self_signed(
        common_name: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Self, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "arc-watchdog");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        })
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A serving certificate for the names in `opts`, signed by this CA.
    pub fn issue(&self, opts: &Options) -> Result<ServingCert, Error> {
        let (not_before, not_after) = validity(opts.days)?;
        self.issue_between(opts, not_before, not_after)
    }

    /// A serving certificate for the names in `opts` (its `days` unused),
    /// valid for `validity` from `now` (see [`validity_window`]) but never
    /// beyond `not_after_cap`: a certificate outliving its CA would not
    /// verify anyway.
    pub fn issue_at(
        &self,
        opts: &Options,
        now: OffsetDateTime,
        validity: std::time::Duration,
        not_after_cap: Option<OffsetDateTime>,
    ) -> Result<ServingCert, Error> {
        let (not_before, mut not_after) = validity_window(now, validity)?;
        if let Some(cap) = not_after_cap {
            not_after = not_after.min(cap);
        }
        self.issue_between(opts, not_before, not_after)
    }

    fn issue_between(
        &self,
        opts: &Options,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<ServingCert, Error> {
        if opts.dns.is_empty() && opts.ips.is_empty() {
            return Err(Error::NoSubjectAltNames);
        }
        let mut params = CertificateParams::new(opts.dns.clone())?;
        params
            .subject_alt_names
            .extend(opts.ips.iter().copied().map(SanType::IpAddress));
        let common_name = opts
            .dns
            .first()
            .cloned()
            .or_else(|| opts.ips.first().map(ToString::to_string))
            .unwrap_or_default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServingCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A new CA and a serving certificate signed by it.
pub fn generate(opts: &Options) -> Result<Bundle, Error> {
    if opts.dns.is_empty() && opts.ips.is_empty() {
        return Err(Error::NoSubjectAltNames);
    }
    let ca = Ca::new(opts.days)?;
    let serving = ca.issue(opts)?;
    Ok(Bundle {
        ca_cert_pem: ca.cert_pem,
        serving,
    })
}

/// Writes `content` to `path` through a temporary file and a rename, so a
/// reader (the webhook polling its certificate) never sees half a file.
/// `mode` applies on Unix.
pub fn write_file_atomic(path: &Path, content: &[u8], mode: u32) -> Result<(), Error> {
    let err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp"));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp).map_err(err)?;
    // `mode` on open is filtered by the umask and ignored for an existing
    // file: set it explicitly.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(err)?;
    }
    file.write_all(content).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(err)
}

/// Writes `ca.crt`, `tls.crt` (both 0644) and `tls.key` (0600) into `dir`,
/// creating it if needed. Returns the paths written.
pub fn write_bundle(dir: &Path, bundle: &Bundle) -> Result<Vec<PathBuf>, Error> {
    fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let files = [
        (CA_CERT_FILE, bundle.ca_cert_pem.as_bytes(), 0o644),
        (TLS_CERT_FILE, bundle.serving.cert_pem.as_bytes(), 0o644),
        (TLS_KEY_FILE, bundle.serving.key_pem.as_bytes(), 0o600),
    ];
    let mut written = Vec::with_capacity(files.len());
    for (name, content, mode) in files {
        let path = dir.join(name);
        write_file_atomic(&path, content, mode)?;
        written.push(path);
    }
    Ok(written)
}
