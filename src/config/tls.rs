//! The HTTPS listener's certificate and key (`server.tls.cert`, `server.tls.key`), read from PEM
//! files and checked when the config is loaded:
//! - `sluice check` and `sluice run` reject a missing, unreadable, non-PEM or mismatched
//!   certificate or key as a config error naming the file and the field;
//! - `sluice run` serves exactly what it validated: the files are not read a second time;
//! - a reload reads them again, so new handshakes use the new certificate while established
//!   connections keep the session they have; a bad new file fails the reload and the running
//!   certificate stays.
//!
//! Data only: the TLS settings that serve it (versions, ALPN, tickets) are built from it with
//! each runtime (`crate::runtime::tls`).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, InconsistentKeys};

/// A certificate chain and the private key of its leaf, checked to match. Cheap to clone.
#[derive(Clone)]
pub(crate) struct TlsIdentity {
    /// The chain and the signing key, as rustls serves them.
    pub(crate) certified: Arc<CertifiedKey>,
    /// The certificate file, for logs.
    pub(crate) cert: PathBuf,
}

/// Why a certificate or key file cannot be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    /// The file could not be read (missing, permissions).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// `cert` or `key`: the field of `server.tls` that named the file.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A PEM block of the file is malformed (bad base64, missing END line).
    #[error("{} is not valid PEM: {source}", path.display())]
    Pem {
        /// `cert` or `key`.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        source: PemError,
    },
    /// The certificate file holds no `CERTIFICATE` block.
    #[error("{} holds no PEM certificate; expected a PEM certificate chain (-----BEGIN CERTIFICATE-----), leaf first", path.display())]
    NoCertificate {
        /// `cert` or `ca`.
        field: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no private key block sluice can read.
    #[error("{} holds no PEM private key; expected an unencrypted PKCS#8 (BEGIN PRIVATE KEY), PKCS#1 (BEGIN RSA PRIVATE KEY) or SEC1 (BEGIN EC PRIVATE KEY) key", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The key was found but cannot sign (unsupported algorithm, corrupt DER).
    #[error("{}: the private key cannot be used: {source}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The leaf certificate cannot be parsed.
    #[error("{}: the certificate cannot be used: {source}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The key is not the one of the leaf certificate.
    #[error("{} does not match the certificate in {} (the first certificate of the chain must be the key's)", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

/// A PEM syntax error, told in words: the parser's own `Display` prints the offending line or
/// marker as a list of byte values.
#[derive(Debug)]
pub(crate) struct PemError(pem::Error);

// === impl TlsError ===

impl TlsError {
    /// The field of `server.tls` the error is about: `cert` or `key`.
    pub(crate) fn field(&self) -> &'static str {
        match self {
            TlsError::Read { field, .. }
            | TlsError::Pem { field, .. }
            | TlsError::NoCertificate { field, .. } => field,
            TlsError::BadCertificate { .. } => "cert",
            TlsError::NoKey { .. } | TlsError::BadKey { .. } | TlsError::Mismatch { .. } => "key",
        }
    }
}

// === impl TlsIdentity ===

impl TlsIdentity {
    /// Reads the PEM certificate chain at `cert` and the PEM private key at `key`, and checks
    /// that they belong together. Blocking file I/O.
    ///
    /// # Errors
    /// Every problem found, at most one per file: unreadable, not PEM, no certificate or key in
    /// it, unusable key or certificate, key not matching the leaf certificate.
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<TlsIdentity, Vec<TlsError>> {
        let provider: Arc<CryptoProvider> = Arc::new(ring::default_provider());
        let chain = read_chain(cert, "cert");
        let signing_key = read_key(key).and_then(|der| {
            provider
                .key_provider
                .load_private_key(der)
                .map_err(|source| TlsError::BadKey {
                    path: key.to_path_buf(),
                    source,
                })
        });
        let (chain, signing_key) = match (chain, signing_key) {
            (Ok(chain), Ok(signing_key)) => (chain, signing_key),
            (chain, signing_key) => {
                return Err([chain.err(), signing_key.err()]
                    .into_iter()
                    .flatten()
                    .collect())
            }
        };
        let certified = CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            // `Unknown`: the key type cannot tell its public key; rustls accepts it too.
            Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                return Err(vec![TlsError::Mismatch {
                    cert: cert.to_path_buf(),
                    key: key.to_path_buf(),
                }]);
            }
            Err(source) => {
                return Err(vec![TlsError::BadCertificate {
                    path: cert.to_path_buf(),
                    source,
                }]);
            }
        }
        Ok(TlsIdentity {
            certified: Arc::new(certified),
            cert: cert.to_path_buf(),
        })
    }
}

/// The certificates of the PEM file at `path` (an upstream's `tls.ca`), each checked to be
/// usable as a trust anchor. Blocking file I/O.
///
/// # Errors
/// The file is unreadable, not PEM, holds no certificate, or one cannot be parsed.
pub(crate) fn load_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = read_chain(path, "ca")?;
    let mut store = rustls::RootCertStore::empty();
    for cert in &certs {
        store
            .add(cert.clone())
            .map_err(|source| TlsError::BadCertificate {
                path: path.to_path_buf(),
                source,
            })?;
    }
    Ok(certs)
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

// === impl PemError ===

impl fmt::Display for PemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            pem::Error::MissingSectionEnd { end_marker } => {
                // Documented as the END line, but pki-types 1.16 puts the bare label there.
                let marker = String::from_utf8_lossy(end_marker);
                if marker.starts_with("-----") {
                    write!(f, "a section has no {marker:?} line")
                } else {
                    write!(f, "a section has no \"-----END {marker}-----\" line")
                }
            }
            pem::Error::IllegalSectionStart { line } => write!(
                f,
                "malformed BEGIN line {:?}",
                String::from_utf8_lossy(line)
            ),
            pem::Error::Base64Decode(err) => write!(f, "bad base64 in a section ({err})"),
            // I/O does not happen (the file is read whole first); newer variants say themselves.
            other => write!(f, "{other}"),
        }
    }
}

impl std::error::Error for PemError {}

/// The certificates of the PEM file at `path`, in file order (leaf first). Blocks of other
/// types (a key in the same file) are skipped.
fn read_chain(path: &Path, field: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, field)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            field,
            path: path.to_path_buf(),
            source: PemError(source),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            field,
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of the PEM file at `path`.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path, "key")?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => Err(TlsError::NoKey {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(TlsError::Pem {
            field: "key",
            path: path.to_path_buf(),
            source: PemError(source),
        }),
    }
}

fn read(path: &Path, field: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        field,
        path: path.to_path_buf(),
        source,
    })
}

/// `host` as a TLS server name (a DNS name, or an IP address with or without brackets), if
/// it is one: what an upstream's `tls.server_name` or endpoint host must be.
pub(crate) fn server_name(host: &str) -> Option<rustls_pki_types::ServerName<'static>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    rustls_pki_types::ServerName::try_from(host.to_owned()).ok()
}
