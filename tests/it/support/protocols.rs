//! Upstreams that speak TLS and HTTP/2, for the upstream-protocol tests: a private CA made with
//! rcgen (a server certificate for `api.test`, a client certificate), and a server that
//! answers every request with the HTTP version it saw and counts the connections it accepted.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use super::TestBody;

/// The name the test server's certificate is for; it is reached at 127.0.0.1 through
/// `tls.server_name`.
pub(crate) const SERVER_NAME: &str = "api.test";

/// A private CA and the directory its PEM files go to (removed at drop).
pub(crate) struct Ca {
    pub(crate) dir: PathBuf,
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate signed by a [`Ca`], and its key.
pub(crate) struct Issued {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let dir = super::temp_dir("upstream-tls");
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca { dir, cert, key }
    }

    /// A certificate for `names`.
    pub(crate) fn issue(&self, names: &[&str]) -> Issued {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names).unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Issued { cert, key }
    }

    /// The CA certificate written to `file` in its directory; the path.
    pub(crate) fn write_pem(&self, file: &str) -> PathBuf {
        let path = self.dir.join(file);
        std::fs::write(&path, self.cert.pem()).unwrap();
        path
    }

    /// The CA as the only root of a store.
    pub(crate) fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        roots
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Issued {
    /// The certificate and key written as `<stem>.pem` and `<stem>.key` in `dir`.
    pub(crate) fn write(&self, dir: &std::path::Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, self.cert.pem()).unwrap();
        std::fs::write(&key, self.key.serialize_pem()).unwrap();
        (cert, key)
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.der().clone()]
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key.serialize_der()).into()
    }
}

/// The server's TLS settings: its certificate, the ALPN protocols it accepts (in its order of
/// preference), and the CA a client certificate must come from (mTLS) if any.
pub(crate) fn server_tls(cert: &Issued, alpn: &[&str], clients: Option<&Ca>) -> TlsAcceptor {
    let provider = Arc::new(ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match clients {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()), provider)
                .build()
                .unwrap(),
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(cert.chain(), cert.key()).unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    TlsAcceptor::from(Arc::new(config))
}

/// An upstream answering each request with the version it saw as its body (`HTTP/2.0`,
/// `HTTP/1.1`) and the request's `te` field in `x-te`; it counts the connections it accepted
/// and the handshakes that failed.
pub(crate) struct ProtoUpstream {
    pub(crate) addr: SocketAddr,
    pub(crate) connections: Arc<AtomicUsize>,
    pub(crate) requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl ProtoUpstream {
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
    pub(crate) fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for ProtoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Requests that asked (`x-hold: N`) to be answered only once N such requests are in flight
/// at once (or after 10 s): a test's concurrent requests then overlap for sure, however
/// slowly a loaded machine starts them.
#[derive(Default)]
struct Held {
    count: AtomicUsize,
    changed: tokio::sync::Notify,
}

impl Held {
    async fn until(&self, n: usize) {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.count.load(Ordering::SeqCst) >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return;
            }
        }
    }
}

/// Starts a [`ProtoUpstream`]: over TLS with `tls`, else cleartext (HTTP/1.1, or h2c with
/// prior knowledge: hyper's auto server tells them apart by the preface).
pub(crate) async fn proto_upstream(tls: Option<TlsAcceptor>) -> ProtoUpstream {
    proto_upstream_with(tls, None, Duration::from_millis(5)).await
}

/// A [`ProtoUpstream`] whose HTTP/2 connections allow `max_streams` streams (hyper's default
/// when `None`), answering each request after `delay`.
pub(crate) async fn proto_upstream_with(
    tls: Option<TlsAcceptor>,
    max_streams: Option<u32>,
    delay: Duration,
) -> ProtoUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (counted, asked) = (connections.clone(), requests.clone());
    let held = Arc::new(Held::default());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            let tls = tls.clone();
            let asked = asked.clone();
            let held = held.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    asked.fetch_add(1, Ordering::SeqCst);
                    let held = held.clone();
                    async move {
                        let hold = req
                            .headers()
                            .get("x-hold")
                            .and_then(|v| v.to_str().ok()?.parse().ok());
                        if let Some(n) = hold {
                            held.until(n).await;
                        }
                        let te = req
                            .headers()
                            .get("te")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        let version = format!("{:?}", req.version());
                        // A little work, so that requests overlap.
                        tokio::time::sleep(delay).await;
                        let res = Response::builder()
                            .header("x-te", te)
                            .body(TestBody::text(version))
                            .unwrap();
                        Ok::<_, Infallible>(res)
                    }
                });
                let mut builder = auto::Builder::new(TokioExecutor::new());
                if let Some(max) = max_streams {
                    builder.http2().max_concurrent_streams(max);
                }
                match tls {
                    Some(tls) => {
                        // A failed handshake (the client refused the certificate, or gave
                        // none where one is required) just ends the connection.
                        if let Ok(stream) = tls.accept(tcp).await {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                    }
                }
            });
        }
    });
    ProtoUpstream {
        addr,
        connections,
        requests,
        task,
    }
}
