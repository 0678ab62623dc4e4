//! TLS for `/mutate`: rustls (ring), TLS 1.2 and 1.3, and a serving
//! certificate that is re-read when its files change.
//!
//! The Secret volume Kubernetes mounts swaps a `..data` symlink when the
//! Secret changes; polling the *content* of both files catches that (and
//! any other way of replacing them) without inotify. Handshakes read the
//! current pair through [`CertStore`], which swaps an `Arc`: connections in
//! flight keep the pair they started with, new ones get the new pair, and
//! no request fails during a rotation. A new pair that does not load (bad
//! PEM, key not matching the certificate, or a half-written update) leaves
//! the old one in service.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::metrics::Metrics;

/// Why a certificate pair could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No certificate in the certificate file.
    #[error("no certificate found in the certificate PEM: {0}")]
    NoCertificate(String),
    /// No private key in the key file.
    #[error("no private key found in the key PEM: {0}")]
    NoKey(String),
    /// rustls refused the pair (unsupported key, or key and certificate do not match).
    #[error("certificate and key are not a usable pair: {0}")]
    Pair(rustls::Error),
    /// The certificate could not be parsed for its expiry.
    #[error("certificate cannot be parsed: {0}")]
    Parse(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
}

/// The ring provider: the only one compiled in (no aws-lc, no OpenSSL).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A loaded pair and its certificate's notAfter.
#[derive(Debug)]
pub struct LoadedPair {
    /// What rustls serves.
    pub key: Arc<CertifiedKey>,
    /// notAfter of the leaf certificate, Unix seconds.
    pub not_after: i64,
}

/// Parses a PEM certificate chain and PEM private key into a pair rustls
/// can serve, checking that the key belongs to the leaf certificate.
pub fn load_pair(cert_pem: &[u8], key_pem: &[u8]) -> Result<LoadedPair, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::NoCertificate(e.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate("empty".to_owned()));
    };
    let not_after = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| TlsError::Parse(e.to_string()))?
        .1
        .validity()
        .not_after
        .timestamp();
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::NoKey(e.to_string()))?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(TlsError::Pair)?;
    Ok(LoadedPair {
        key: Arc::new(certified),
        not_after,
    })
}

/// Holds the pair in service; rustls asks it on every handshake.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    /// A store serving `key`.
    pub fn new(key: Arc<CertifiedKey>) -> Self {
        Self {
            current: RwLock::new(key),
        }
    }

    /// Puts `key` in service for new handshakes.
    pub fn replace(&self, key: Arc<CertifiedKey>) {
        // A poisoned lock only means a panic elsewhere while swapping an
        // Arc; the value is still whole.
        let mut guard = self.current.write().unwrap_or_else(|e| e.into_inner());
        *guard = key;
    }

    /// The pair in service.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The rustls server configuration: TLS 1.2+, ALPN h2 and http/1.1.
pub fn server_config(store: Arc<CertStore>) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Watches the certificate and key files and keeps a [`CertStore`] current.
#[derive(Debug)]
pub struct CertReloader {
    cert_path: PathBuf,
    key_path: PathBuf,
    store: Arc<CertStore>,
    // Content of the last pair tried (loaded or refused), so a broken pair
    // is reported once, not on every poll, and tried again once it changes.
    last: (Vec<u8>, Vec<u8>),
}

/// What one poll found.
#[derive(Debug, PartialEq, Eq)]
pub enum PollResult {
    /// Same content as last time.
    Unchanged,
    /// A new pair is in service.
    Reloaded,
    /// The files changed but the new pair was refused; the old one stays.
    Refused(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl CertReloader {
    /// Loads the pair for the first time; fails if it cannot be served.
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        metrics: &Metrics,
    ) -> Result<(Self, Arc<CertStore>), TlsError> {
        let cert = read(cert_path)?;
        let key = read(key_path)?;
        let pair = load_pair(&cert, &key)?;
        metrics.set_cert_expiry(pair.not_after);
        let store = Arc::new(CertStore::new(pair.key));
        Ok((
            Self {
                cert_path: cert_path.to_path_buf(),
                key_path: key_path.to_path_buf(),
                store: Arc::clone(&store),
                last: (cert, key),
            },
            store,
        ))
    }

    /// Reads both files and swaps the pair in service if they changed.
    pub fn poll(&mut self, metrics: &Metrics) -> PollResult {
        let (cert, key) = match (read(&self.cert_path), read(&self.key_path)) {
            (Ok(c), Ok(k)) => (c, k),
            // During a swap a file can be briefly missing; the next poll
            // sees the finished state. Not counted as a refused pair.
            (Err(err), _) | (_, Err(err)) => {
                tracing::debug!(error = %err, "certificate files not readable right now");
                return PollResult::Unchanged;
            }
        };
        if (&cert, &key) == (&self.last.0, &self.last.1) {
            return PollResult::Unchanged;
        }
        let result = match load_pair(&cert, &key) {
            Ok(pair) => {
                self.store.replace(pair.key);
                metrics.set_cert_expiry(pair.not_after);
                metrics.cert_reload("ok");
                tracing::info!(
                    cert = %self.cert_path.display(),
                    not_after = pair.not_after,
                    "serving certificate reloaded"
                );
                PollResult::Reloaded
            }
            Err(err) => {
                metrics.cert_reload("error");
                tracing::error!(
                    cert = %self.cert_path.display(),
                    key = %self.key_path.display(),
                    error = %err,
                    "new certificate or key refused; still serving the previous certificate"
                );
                PollResult::Refused(err.to_string())
            }
        };
        self.last = (cert, key);
        result
    }

    /// Polls every `interval` until the task is dropped.
    pub async fn run(mut self, interval: Duration, metrics: Arc<Metrics>) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            self.poll(&metrics);
        }
    }
}
