//! Making one connection to an endpoint speak HTTP: TLS for `https://` endpoints, then the
//! HTTP/1.1 or HTTP/2 handshake (`upstreams.<name>.protocol`).
//!
//! - TLS: rustls with ring, verification always on: the system's roots (read once per
//!   process) plus the upstream's `tls.ca`; the name sent as SNI and verified is
//!   `tls.server_name`, else the endpoint URL's host — never the address a name resolved to;
//!   `tls.client_cert` is offered when the server asks for one (mTLS). A failed handshake is a
//!   connect failure ([`ConnectError::Tls`]): the endpoint is skipped and the request goes to
//!   another one, or gets 502 `upstream-unavailable`.
//! - ALPN over TLS: `auto` offers `h2` and `http/1.1` and speaks what the server chose (HTTP/1.1
//!   when it chose nothing); `http2` offers `h2` only, `http1` `http/1.1` only. Over `http://`,
//!   `http2` is h2c with prior knowledge, the others HTTP/1.1.
//! - An HTTP/2 connection's task publishes the server's `SETTINGS_MAX_CONCURRENT_STREAMS` as
//!   it changes ([`StreamLimit`]), so the pool opens another connection only when the
//!   streams of those it has are used up. The request that opened a connection waits for the
//!   server's first SETTINGS (at most [`SETTINGS_WAIT`]) before others may share it: until
//!   then the limit is unknown, and requests piled onto a connection beyond it would wait in
//!   hyper instead of going to another connection.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::uri::Authority;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::sign::SingleCertAndKey;
use tokio_rustls::rustls::{version, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::config::{UpstreamConfig, UpstreamProtocol, UpstreamTlsConfig};
use crate::proxy::request_body::UpstreamBody;

/// How the connections of one upstream are made. Built with the upstream (at start and on each
/// reload, from the certificates the config read), shared by its endpoints.
#[derive(Debug)]
pub(crate) struct Connector {
    /// `protocol:` as configured.
    protocol: UpstreamProtocol,
    /// TLS settings for `https://` endpoints; `None` for `http://`.
    tls: Option<Tls>,
}

#[derive(Debug)]
struct Tls {
    /// Roots, client certificate, ALPN list.
    config: Arc<ClientConfig>,
    /// `tls.server_name`, when given; else each endpoint's host.
    server_name: Option<ServerName<'static>>,
}

/// What the handshake gave: a sender of the protocol the connection speaks.
pub(crate) enum Handshaken {
    /// HTTP/1.1: one request at a time.
    H1(http1::SendRequest<UpstreamBody>),
    /// HTTP/2: the sender (cloneable, multiplexed) and the server's stream limit, kept up to
    /// date by the connection's task.
    H2(http2::SendRequest<UpstreamBody>, Arc<StreamLimit>),
}

/// The number of streams the server of an HTTP/2 connection allows at once, as its SETTINGS
/// say; [`UNKNOWN`] until they have said it, 0 once the connection has ended.
#[derive(Debug)]
pub(crate) struct StreamLimit {
    max: AtomicUsize,
    /// Woken when `max` changes.
    changed: Notify,
}

/// The stream limit before the server's SETTINGS name one (RFC 9113: unlimited).
pub(crate) const UNKNOWN: usize = usize::MAX;

/// How long the request that opened an HTTP/2 connection waits for the server's SETTINGS
/// before the connection is shared (a server that names no limit in them is waited for this
/// long once per connection).
pub(crate) const SETTINGS_WAIT: Duration = Duration::from_millis(100);

/// The protocol spoken on a connection: what `/stats` and the access log show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Spoken {
    /// HTTP/1.1.
    Http1 = 1,
    /// HTTP/2.
    Http2 = 2,
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// TCP connect failed (refused, unreachable, name not resolved).
    #[error("connect to {0} failed: {1}")]
    Io(Authority, #[source] std::io::Error),
    /// `connect_timeout` expired.
    #[error("connect to {0} timed out after {1:?}")]
    Timeout(Authority, Duration),
    /// No name of the upstream resolved to an address (yet).
    #[error("no endpoint address (no name of the upstream resolved)")]
    NoAddress,
    /// The HTTP handshake failed (an HTTP/2 preface, for one).
    #[error("connection to {0} failed: {1}")]
    Handshake(Authority, #[source] hyper::Error),
    /// The TLS handshake failed: the certificate did not verify, the server wanted a client
    /// certificate, no common protocol or ALPN, or the connection closed.
    #[error("TLS handshake with {0} failed: {1}")]
    Tls(Authority, #[source] std::io::Error),
    /// The endpoint's host is not a name TLS can verify (and `tls.server_name` is not set).
    #[error("{0}: the host is not a TLS server name; set tls.server_name")]
    BadName(Authority),
}

// === impl StreamLimit ===

impl StreamLimit {
    fn new() -> Self {
        StreamLimit {
            max: AtomicUsize::new(UNKNOWN),
            changed: Notify::new(),
        }
    }

    /// Streams allowed at once now.
    pub(crate) fn get(&self) -> usize {
        self.max.load(Ordering::Acquire)
    }

    fn set(&self, max: usize) {
        if self.max.swap(max, Ordering::AcqRel) != max {
            self.changed.notify_waiters();
        }
    }

    /// Returns once the server's SETTINGS have named a limit (or the connection ended), or
    /// after `wait`.
    pub(crate) async fn settled(&self, wait: Duration) {
        let changed = self.changed.notified();
        let mut changed = pin!(changed);
        changed.as_mut().enable();
        if self.get() == UNKNOWN {
            let _ = tokio::time::timeout(wait, changed).await;
        }
    }
}

// === impl Spoken ===

impl Spoken {
    /// `http1` or `http2`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Spoken::Http1 => "http1",
            Spoken::Http2 => "http2",
        }
    }
}

// === impl Connector ===

impl Connector {
    /// The connector of `config`: TLS when its endpoints are `https://`.
    pub(crate) fn new(config: &UpstreamConfig) -> Connector {
        let tls = config.https.then(|| {
            let default = UpstreamTlsConfig::default();
            let tls = config.tls.as_ref().unwrap_or(&default);
            Tls {
                config: client_config(tls, config.protocol),
                server_name: tls
                    .server_name
                    .as_deref()
                    .and_then(crate::config::server_name),
            }
        });
        Connector {
            protocol: config.protocol,
            tls,
        }
    }

    /// Cleartext HTTP/1.1 (pool tests).
    #[cfg(test)]
    pub(crate) fn plain() -> Connector {
        Connector {
            protocol: UpstreamProtocol::Http1,
            tls: None,
        }
    }

    /// True when a connection may turn out to speak HTTP/2: `http2`, or `auto` over TLS.
    pub(crate) fn may_speak_h2(&self) -> bool {
        match self.protocol {
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Auto => self.tls.is_some(),
            UpstreamProtocol::Http1 => false,
        }
    }

    /// True for `https://` endpoints.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// TLS (for `https://`) and the HTTP handshake on `tcp`, a connection to `authority`.
    ///
    /// # Errors
    /// [`ConnectError::Tls`] when the TLS handshake fails (verification included),
    /// [`ConnectError::Handshake`] when the HTTP/2 one does.
    pub(crate) async fn handshake(
        &self,
        tcp: TcpStream,
        authority: &Authority,
    ) -> Result<Handshaken, ConnectError> {
        let Some(tls) = &self.tls else {
            let h2 = self.protocol == UpstreamProtocol::Http2;
            return http(tcp, h2, authority).await;
        };
        let name = match &tls.server_name {
            Some(name) => name.clone(),
            None => crate::config::server_name(authority.host())
                .ok_or_else(|| ConnectError::BadName(authority.clone()))?,
        };
        let stream = TlsConnector::from(tls.config.clone())
            .connect(name, tcp)
            .await
            .map_err(|err| ConnectError::Tls(authority.clone(), err))?;
        let h2 = match stream.get_ref().1.alpn_protocol() {
            Some(b"h2") => true,
            Some(_) => false,
            // No ALPN answer: `http2` was asked for, so prior knowledge.
            None => self.protocol == UpstreamProtocol::Http2,
        };
        http(stream, h2, authority).await
    }
}

/// The HTTP handshake on `io`, and its connection task spawned.
async fn http<T>(io: T, h2: bool, authority: &Authority) -> Result<Handshaken, ConnectError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let fail = |err| ConnectError::Handshake(authority.clone(), err);
    if !h2 {
        let (sender, connection) = http1::Builder::new().handshake(io).await.map_err(fail)?;
        // With upgrades: a 101 hands the connection to the response (`proxy::tunnel`).
        let connection = connection.with_upgrades();
        let authority = authority.clone();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(endpoint = %authority, error = %err, "upstream connection ended with an error");
            }
        });
        return Ok(Handshaken::H1(sender));
    }
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .initial_max_send_streams(UNKNOWN)
        .handshake(io)
        .await
        .map_err(fail)?;
    let max = Arc::new(StreamLimit::new());
    let published = max.clone();
    let authority = authority.clone();
    tokio::spawn(async move {
        let mut connection = pin!(connection);
        // Polls the connection as hyper's own task would, and after each poll publishes the
        // server's stream limit (its SETTINGS may change it at any time).
        let ended = std::future::poll_fn(|cx| {
            let poll = connection.as_mut().poll(cx);
            published.set(connection.as_ref().get_ref().current_max_send_streams());
            poll
        })
        .await;
        // Closed: no stream may be started on it any more.
        published.set(0);
        if let Err(err) = ended {
            tracing::debug!(endpoint = %authority, error = %err, "upstream HTTP/2 connection ended with an error");
        }
    });
    Ok(Handshaken::H2(sender, max))
}

/// The rustls settings of an upstream: the system's roots plus `tls.ca`, the client
/// certificate if any, ALPN by `protocol`.
fn client_config(tls: &UpstreamTlsConfig, protocol: UpstreamProtocol) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    // The system's roots are checked when read; `tls.ca`'s when the config was loaded.
    roots.add_parsable_certificates(system_roots().iter().cloned());
    roots.add_parsable_certificates(tls.loaded.ca.iter().cloned());
    // ring's provider, named here rather than taken from a process-wide default (as the
    // listener's), so that no other crate's feature choice can change it.
    let provider: Arc<CryptoProvider> = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])
        .expect("ring provides cipher suites for TLS 1.2 and 1.3")
        .with_root_certificates(roots);
    let mut config = match &tls.loaded.client {
        Some(identity) => builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(
            identity.certified.clone(),
        ))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = match protocol {
        UpstreamProtocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
        UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
    };
    Arc::new(config)
}

/// The system's root certificates (`SSL_CERT_FILE` / `SSL_CERT_DIR` when set, as
/// rustls-native-certs reads them), read once per process: a reload re-reads `tls.ca`, not
/// the system's store.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        if let Some(error) = found.errors.first() {
            tracing::warn!(%error, loaded = found.certs.len(), "some of the system's root certificates could not be read; https:// upstreams are verified against the others and their tls.ca");
        }
        found.certs
    })
}
