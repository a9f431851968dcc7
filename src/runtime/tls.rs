//! The TLS settings of the HTTPS listener, built from the config's certificate and key with each
//! runtime: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`, no client certificates, session tickets.
//!
//! Where it sits: the listener (`crate::net::listener`) accepts a TCP connection and runs the
//! handshake with the [`Acceptor`] of the current runtime, bounded by `header_read_timeout`; the
//! negotiated ALPN protocol then tells the server whether to speak HTTP/2 or HTTP/1.1.

use std::fmt;
use std::sync::Arc;

use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::sign::SingleCertAndKey;
use tokio_rustls::rustls::{version, ServerConfig};

use crate::config::TlsIdentity;

/// ALPN protocols offered, in server preference order: HTTP/2 first.
pub(crate) const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The TLS settings of one certificate, ready to accept handshakes. Cheap to clone; every
/// accepted connection takes the one of the runtime current at accept time.
#[derive(Clone)]
pub(crate) struct Acceptor {
    /// The rustls settings: versions, ALPN, the certificate. Shared by every handshake.
    config: Arc<ServerConfig>,
    /// The certificate file, for logs.
    cert: std::path::PathBuf,
}

// === impl Acceptor ===

impl Acceptor {
    /// The settings serving `identity`.
    pub(crate) fn new(identity: &TlsIdentity) -> Acceptor {
        // ring's provider, named here rather than taken from a process-wide default, so that no
        // other crate's feature choice can change what the listener offers.
        let provider: Arc<CryptoProvider> = Arc::new(ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&version::TLS13, &version::TLS12])
            .expect("ring provides cipher suites for TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(
                identity.certified.as_ref().clone(),
            )));
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        // Stateless resumption: a returning client skips the key exchange and signature.
        // The ticket keys are random per process (and per reload) and rotate every 6 hours.
        // It fails only when the system RNG does; then stay without tickets (full handshakes).
        if let Ok(ticketer) = ring::Ticketer::new() {
            config.ticketer = ticketer;
        }
        Acceptor {
            config: Arc::new(config),
            cert: identity.cert.clone(),
        }
    }

    /// A handshake driver for one connection.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }
}

impl fmt::Debug for Acceptor {
    /// Short: rustls' own `Debug` lists every cipher suite.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acceptor")
            .field("cert", &self.cert)
            .field("alpn", &["h2", "http/1.1"])
            .finish_non_exhaustive()
    }
}
