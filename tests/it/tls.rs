//! The HTTPS listener with a real TLS client (tokio-rustls + hyper's connection API):
//! HTTP/1.1 and HTTP/2 by ALPN, X-Forwarded-Proto, rejections on one HTTP/2 stream, stream and
//! flow-control limits, handshake deadlines and failures, certificate reload, and the errors of
//! bad certificate and key files. Certificates are generated per test with rcgen (a test CA and
//! leaf certificates signed by it) and written to a temporary directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SignatureAlgorithm};
use sluice::config::{ConfigError, FieldError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, SupportedProtocolVersion};
use tokio_rustls::TlsConnector;

/// A 2048-bit RSA key (PKCS#8) for tests only: ring cannot generate RSA keys, and PKCS#1 needs
/// one. Its certificates are still generated per test. Never used outside this file.
const TEST_ONLY_RSA_KEY: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDHBB08bJYiETZq
H0G+siXLaOx34wds2lioRgx56qP5upQks0si/LoXQD6Y6LX0YVo8hWUBh9Dt9z0K
LfS5gZxat1pUhYnmwI7r97sZ/9dto+JE1EJ0D91z/BJKvSyyJfdD9Zgs9gtBfc55
4ijXUJSVorkCQ+n8aSla6MhnI9rMff/et4KZD8XZtXSP69u8qq371K7MhiNBHpRx
s++xEEtcDgPGVNaXxqzvuKFYfsV4JhyZrb20uuyids3WaGU9/7modHGBGoefZU4I
nz9ppxZAutx7HrfejxRLmOvl/VI0pb1O7hpMFZtFED4QoAwC1/5J0HIGdYuniQHi
K1E7o2m9AgMBAAECggEAKq5IMtg6zm2QlOvFJsd/8YK8C+4FfqPJFbWIIXFf30PT
V5eYCpXWtvvRMOvfcdybBJW7Frvw48f9MDyw2kPgq1fdKHlHHNS5EgQb/TRwGBRo
h0haRBfO73vk1GCDwGUCBXIbQ7E0ssPvTxZgmeSvKPQv5zt3Z+mJs/RuXihDWU1f
VDsCXBfEmKAV44/0HTWUNPW3qogJ/6l9gOMFB5no6rK7NN1ODp7tSSSGEGw/jEi9
3LvvjsjGwOsM01XhCkb/lP5iP4KkvY+9d0krxvyrelVKYwPYzkL/2iavTSmzmMg5
mQA/uUPPLA8yCc19uskwG0nhKSgag9YHaxC3rjoZ4QKBgQDxeqZKy9xr+t69ESnD
yl/Ffr0eAuKtklAbZqw5m24HYX/56Ham+Y4YZqidvfoovZfIZ0CqvvChXLjqbh6r
VsNCKhxaq81kAS2CrCY7j1C22jfBzcK6UcqmSBYW+fyRf5FmQuwHXv1AlbaIBrXZ
2KeBQAURjjUzbgXQVSRoLkG86QKBgQDS+8j4SXSLkdpw+fGCyamT6RXOPNkzNOPo
anHPbWQJWsAObXWCuwk+SkN7yBWK9dHPR5OOJcdHZfwA1Z1ggV0b7lyev8rZQ5yp
9LtCQHAVJCmDjHqAnfJhyg3HgDYkkRdt9MmwGuA10mfvP9sDjLrBCo9Ht03PlUih
YlSd2NZxtQKBgFK3UZkTZcizIXMgGu9PNikfdcZ+9IjCMqCANgRxomny0vSW1XXy
y+K934pRFgy4jPJ/s94JE8IiUdEzsVu9l5rlc9r3OJ7F7IHzWBFU0TAhZbIEOmy6
MbFtxetO7F4mlXay+8i2mAd0gRbtPYOGvDIA7PuLe9vHF0S6tYLePXRpAoGBAMkA
HwKL2IBvP9CKDlAvl2LWmHOW/MYQCWCOqEaZTMissHQOS/lz/uZdEdWHVR7B+lSj
OCwgSa33txGEcR5ToETP3WVQCwzZoRM5mH0RrrY1cWdmGf8Weqg3OtFpkCteHxge
MVeZAynDfkksaJcFJ5ZpXP9R3st4yW0WpM6MmiBRAoGAZH76Ndd/3ldNnxuP1tpZ
YOOBST45Hr+eGfmVn3CVfcBgQwTh2Qikm6KGMaT0yLxYEUntLIN+EtrAwaYE7n9a
dWmL8GXflqJUy6nQo6zrr1wugKgHEzVVC2v3UQlXkV5zgBXSaPoKXH0ehyeh6u1P
oEnUNyoWg29JU6H08GsNiCY=
-----END PRIVATE KEY-----
";

// === certificates ===

/// A test CA, the leaf certificates it signs, and the directory the PEM files go to.
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

/// A leaf certificate for `localhost` and its key, as PEM and DER.
struct Leaf {
    /// Leaf then CA: a real chain.
    chain_pem: String,
    /// PKCS#8.
    key_pem: String,
    key_pkcs8_der: Vec<u8>,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let dir = temp_dir("tls");
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "sluice test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        Pki { dir, ca, ca_key }
    }

    /// A leaf with a new P-256 key.
    fn leaf(&self) -> Leaf {
        self.leaf_for(KeyPair::generate().unwrap())
    }

    fn leaf_for(&self, key: KeyPair) -> Leaf {
        let params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.ca.pem()),
            key_pem: key.serialize_pem(),
            key_pkcs8_der: key.serialize_der(),
            der: cert.der().clone(),
        }
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key_path(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    /// Writes `contents` to `name` in the directory, atomically (as deployment tools do).
    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }

    /// Makes `leaf` the one at cert.pem / key.pem.
    fn install(&self, leaf: &Leaf) {
        self.write("cert.pem", &leaf.chain_pem);
        self.write("key.pem", &leaf.key_pem);
    }

    /// A client trusting this CA, offering `alpn`, TLS 1.2 and 1.3.
    fn client(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        self.client_with(alpn, rustls::DEFAULT_VERSIONS)
    }

    fn client_with(
        &self,
        alpn: &[&[u8]],
        versions: &[&'static SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The key inside a PKCS#8 `PrivateKeyInfo`: SEC1 `ECPrivateKey` for an EC key, PKCS#1
/// `RSAPrivateKey` for RSA (the content of its `privateKey` OCTET STRING).
fn pkcs8_inner(der: &[u8]) -> Vec<u8> {
    let (_, info, _) = tlv(der);
    let (_, _, rest) = tlv(info); // version
    let (_, _, rest) = tlv(rest); // algorithm
    let (tag, key, _) = tlv(rest);
    assert_eq!(tag, 0x04, "privateKey is an OCTET STRING");
    key.to_vec()
}

/// One DER element: (tag, content, what follows).
fn tlv(der: &[u8]) -> (u8, &[u8], &[u8]) {
    let (len, start) = match der[1] {
        n if n < 0x80 => (usize::from(n), 2),
        n => {
            let k = usize::from(n & 0x7f);
            let len = der[2..2 + k]
                .iter()
                .fold(0, |acc, b| acc << 8 | usize::from(*b));
            (len, 2 + k)
        }
    };
    (der[0], &der[start..start + len], &der[start + len..])
}

/// `der` as a PEM block labelled `label`.
fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

// === sluice and its upstreams ===

/// A config with the HTTPS listener using cert.pem / key.pem of `pki`, an admin listener, the
/// upstream `api` at `endpoint`, and `routes` (default: one route to `api`).
/// `header_read_timeout` bounds each whole handshake: 5 s, so that a loaded 2-core debug build
/// completes every test's handshakes in time.
fn config(pki: &Pki, endpoint: &str, server_extra: &str, routes: Option<&str>) -> String {
    let routes = routes.unwrap_or("  - name: all\n    upstream: api\n");
    format!(
        "\
server:
  listen: 127.0.0.1:0
  header_read_timeout: 5s
{server_extra}  tls:
    listen: 127.0.0.1:0
    cert: {}
    key: {}
admin:
  listen: 127.0.0.1:0
upstreams:
  api:
    endpoints: [{endpoint}]
routes:
{routes}",
        pki.cert_path().display(),
        pki.key_path().display()
    )
}

/// A [`Pki`] with a fresh leaf installed as the server's certificate and key.
fn installed_pki() -> Pki {
    let pki = Pki::new();
    pki.install(&pki.leaf());
    pki
}

/// Sluice on `pki` in front of `up`, with `header_read_timeout` set to `timeout`.
async fn start_with_header_read_timeout(pki: &Pki, up: &Upstream, timeout: &str) -> Proxy {
    let yaml = config(pki, &up.endpoint(), "", None).replace(
        "header_read_timeout: 5s",
        &format!("header_read_timeout: {timeout}"),
    );
    start_proxy(&yaml).await
}

/// Sluice started from a config file on `pki` (for reloads), in front of an `ok` upstream.
async fn start_reloadable(pki: &Pki) -> (Upstream, ConfigFile, Proxy) {
    let up = ok_upstream().await;
    let file = ConfigFile::new(&config(pki, &up.endpoint(), "", None));
    let proxy = start_proxy_file(&file).await;
    (up, file, proxy)
}

/// An upstream answering with what it received, as JSON: method, path, version, headers and
/// the body as text.
async fn echo_body_upstream() -> Upstream {
    upstream(|req: Request<Incoming>| async move {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let headers: serde_json::Map<String, serde_json::Value> = parts
            .headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or_default().into()))
            .collect();
        let seen = serde_json::json!({
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "version": format!("{:?}", parts.version),
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        });
        Response::new(TestBody::text(seen.to_string()))
    })
    .await
}

/// The HTTPS address of `proxy`.
fn https(proxy: &Proxy) -> SocketAddr {
    proxy.tls.expect("the test config has server.tls")
}

// === the client ===

/// TCP + TLS handshake to `addr` as `localhost`.
async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("handshake within 10 s")
    .expect("TLS handshake")
}

/// The certificate the server presented on `tls`.
fn peer_cert(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref()
        .1
        .peer_certificates()
        .expect("server certificate")[0]
        .clone()
}

/// The ALPN protocol negotiated on `tls`.
fn alpn(tls: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// HTTP/1.1 over `tls`; the connection runs in a task.
async fn h1(tls: TlsStream<TcpStream>) -> http1::SendRequest<Full<Bytes>> {
    let (send, conn) = http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    send
}

/// HTTP/2 over `tls`; the connection runs in a task.
async fn h2(tls: TlsStream<TcpStream>) -> http2::SendRequest<Full<Bytes>> {
    let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

fn get_req(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("https://localhost{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Reads a whole response; returns it with its HTTP version.
async fn read(res: hyper::Result<Response<Incoming>>) -> (Version, Got) {
    let res = res.expect("request failed");
    let version = res.version();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (
        version,
        Got {
            status: parts.status,
            headers: parts.headers,
            body,
        },
    )
}

/// Sends `req` over HTTP/1.1 (origin-form, with Host) and reads the response.
async fn send_h1(send: &mut http1::SendRequest<Full<Bytes>>, req: Request<Full<Bytes>>) -> Got {
    let (mut parts, body) = req.into_parts();
    parts.headers.insert("host", "localhost".parse().unwrap());
    parts.uri = parts
        .uri
        .path_and_query()
        .unwrap()
        .as_str()
        .parse()
        .unwrap();
    let exchange = async {
        send.ready().await.unwrap();
        read(send.send_request(Request::from_parts(parts, body)).await).await
    };
    let (version, got) = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("response within 30 s");
    assert_eq!(version, Version::HTTP_11);
    got
}

/// Sends `req` over HTTP/2 and reads the response.
async fn send_h2(send: &mut http2::SendRequest<Full<Bytes>>, req: Request<Full<Bytes>>) -> Got {
    let exchange = async {
        send.ready().await.unwrap();
        read(send.send_request(req).await).await
    };
    let (version, got) = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("response within 30 s");
    assert_eq!(version, Version::HTTP_2);
    got
}

/// A fresh HTTP/1.1 connection and one GET.
async fn https_get(addr: SocketAddr, pki: &Pki, path: &str) -> Got {
    let mut send = h1(connect(addr, pki.client(&[b"http/1.1"])).await).await;
    send_h1(&mut send, get_req(path)).await
}

// === HTTP/1.1 and HTTP/2 ===

/// GET and POST over HTTPS reach the upstream; the POST body arrives whole and the upstream
/// sees `X-Forwarded-Proto: https`.
#[tokio::test]
async fn https_get_and_post_over_http1() {
    let pki = installed_pki();
    let up = echo_body_upstream().await;
    let proxy = start_proxy(&config(&pki, &up.endpoint(), "", None)).await;
    let tls = connect(https(&proxy), pki.client(&[b"http/1.1"])).await;
    assert_eq!(alpn(&tls).as_deref(), Some(&b"http/1.1"[..]));
    let mut send = h1(tls).await;

    let got = send_h1(&mut send, get_req("/orders/1")).await;
    assert_eq!(got.status, StatusCode::OK);
    let seen = got.json();
    assert_eq!(
        (seen["method"].as_str(), seen["path"].as_str()),
        (Some("GET"), Some("/orders/1"))
    );
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");

    // Same connection (keep-alive): a POST with a body.
    let body = "x".repeat(100_000);
    let req = Request::post("https://localhost/orders")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let got = send_h1(&mut send, req).await;
    assert_eq!(got.status, StatusCode::OK);
    let seen = got.json();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["body"].as_str().map(str::len), Some(body.len()));
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    proxy.stop().await;
}

/// A client offering `h2` gets HTTP/2 (ALPN prefers it) and requests work over it; the
/// upstream still gets HTTP/1.1 with `X-Forwarded-Proto: https` and the `:authority` as Host.
#[tokio::test]
async fn alpn_negotiates_h2_and_requests_work_over_it() {
    let pki = installed_pki();
    let up = echo_body_upstream().await;
    let proxy = start_proxy(&config(&pki, &up.endpoint(), "", None)).await;
    let tls = connect(https(&proxy), pki.client(&[b"http/1.1", b"h2"])).await;
    assert_eq!(
        alpn(&tls).as_deref(),
        Some(&b"h2"[..]),
        "the server's preference wins"
    );
    let mut send = h2(tls).await;

    let got = send_h2(&mut send, get_req("/a")).await;
    assert_eq!(got.status, StatusCode::OK);
    let seen = got.json();
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    assert_eq!(seen["headers"]["host"], "localhost");

    let req = Request::post("https://localhost/b")
        .body(Full::new(Bytes::from_static(b"posted over h2")))
        .unwrap();
    let got = send_h2(&mut send, req).await;
    assert_eq!(got.json()["body"], "posted over h2");
    proxy.stop().await;
}

/// A client offering only `http/1.1` gets HTTP/1.1; one offering no ALPN at all is served too.
#[tokio::test]
async fn http1_only_and_no_alpn_clients_are_served() {
    let pki = installed_pki();
    let up = echo_body_upstream().await;
    let proxy = start_proxy(&config(&pki, &up.endpoint(), "", None)).await;

    let tls = connect(https(&proxy), pki.client(&[b"http/1.1"])).await;
    assert_eq!(alpn(&tls).as_deref(), Some(&b"http/1.1"[..]));
    let got = send_h1(&mut h1(tls).await, get_req("/x")).await;
    assert_eq!(got.status, StatusCode::OK);

    let tls = connect(https(&proxy), pki.client(&[])).await;
    assert_eq!(alpn(&tls), None);
    let got = send_h1(&mut h1(tls).await, get_req("/y")).await;
    assert_eq!(got.json()["headers"]["x-forwarded-proto"], "https");
    proxy.stop().await;
}

/// A WebSocket over the HTTPS listener with ALPN `http/1.1` (hyper-util's upgradeable
/// connection there): upgraded, and 100 messages echoed through TLS both ways.
#[tokio::test]
async fn websocket_over_tls_with_alpn_http1() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let pki = installed_pki();
    let up = crate::websocket::ws_upstream(None).await;
    let proxy = start_proxy(&config(&pki, &up.endpoint(), "", None)).await;
    let tls = connect(https(&proxy), pki.client(&[b"http/1.1"])).await;
    assert_eq!(alpn(&tls).as_deref(), Some(&b"http/1.1"[..]));
    let (mut ws, res) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async("wss://localhost/ws", tls),
    )
    .await
    .expect("handshake within 10 s")
    .expect("upgraded over TLS");
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..100 {
        let text = format!("over tls {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), text);
    }
    drop(ws);
    proxy.stop().await;
}

/// TLS 1.2 and TLS 1.3 are both accepted.
#[tokio::test]
async fn tls12_and_tls13_are_accepted() {
    let pki = installed_pki();
    let up = ok_upstream().await;
    let proxy = start_proxy(&config(&pki, &up.endpoint(), "", None)).await;
    for (version, expected) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let tls = connect(https(&proxy), pki.client_with(&[b"h2"], &[version])).await;
        assert_eq!(tls.get_ref().1.protocol_version(), Some(expected));
        let got = send_h2(&mut h2(tls).await, get_req("/")).await;
        assert_eq!(got.status, StatusCode::OK, "{expected:?}");
    }
    proxy.stop().await;
}

/// Keys in every accepted PEM form work end to end: PKCS#8 (P-256, P-384, Ed25519, RSA),
/// SEC1 (P-256) and PKCS#1 (RSA).
#[tokio::test]
async fn pkcs8_sec1_and_pkcs1_keys_are_accepted() {
    let up = ok_upstream().await;
    let rsa = || {
        KeyPair::from_pkcs8_pem_and_sign_algo(TEST_ONLY_RSA_KEY, &rcgen::PKCS_RSA_SHA256).unwrap()
    };
    let gen = |alg: &'static SignatureAlgorithm| KeyPair::generate_for(alg).unwrap();
    let cases: Vec<(&str, KeyPair, Option<&str>)> = vec![
        ("P-256 PKCS#8", gen(&rcgen::PKCS_ECDSA_P256_SHA256), None),
        ("P-384 PKCS#8", gen(&rcgen::PKCS_ECDSA_P384_SHA384), None),
        ("Ed25519 PKCS#8", gen(&rcgen::PKCS_ED25519), None),
        ("RSA PKCS#8", rsa(), None),
        (
            "P-256 SEC1",
            gen(&rcgen::PKCS_ECDSA_P256_SHA256),
            Some("EC PRIVATE KEY"),
        ),
        ("RSA PKCS#1", rsa(), Some("RSA PRIVATE KEY")),
    ];
    for (name, key, inner_label) in cases {
        let pki = Pki::new();
        let leaf = pki.leaf_for(key);
        pki.write("cert.pem", &leaf.chain_pem);
        match inner_label {
            None => pki.write("key.pem", &leaf.key_pem),
            Some(label) => pki.write("key.pem", &pem(label, &pkcs8_inner(&leaf.key_pkcs8_der))),
        };
        let key_text = std::fs::read_to_string(pki.key_path()).unwrap();
        assert!(
            key_text.starts_with(&format!(
                "-----BEGIN {}-----",
                inner_label.unwrap_or("PRIVATE KEY")
            )),
            "{name}"
        );
        let proxy = start_proxy(&config(&pki, &up.endpoint(), "", None)).await;
        let tls = connect(https(&proxy), pki.client(&[b"h2"])).await;
        assert_eq!(peer_cert(&tls), leaf.der, "{name}");
        let got = send_h2(&mut h2(tls).await, get_req("/")).await;
        assert_eq!(got.status, StatusCode::OK, "{name}");
        proxy.stop().await;
    }
}

// === HTTP/2 and backpressure ===

/// Config routes: `/limited` allows one request an hour; everything else goes to `held`.
const LIMITED_AND_HELD: &str = concat!(
    "  - name: limited\n",
    "    match: {path_prefix: /limited}\n",
    "    upstream: api\n",
    "    rate_limits: [{key: global, rate: 1/h}]\n",
    "  - name: held\n",
    "    upstream: api\n",
);

/// An upstream that holds requests to `/held*` until `gate` has permits (announcing each
/// arrival on the channel) and answers everything else at once.
async fn gated_upstream() -> (Upstream, Arc<Semaphore>, mpsc::UnboundedReceiver<()>) {
    let gate = Arc::new(Semaphore::new(0));
    let (arrived, arrivals) = mpsc::unbounded_channel();
    let g = gate.clone();
    let up = upstream(move |req: Request<Incoming>| {
        let (gate, arrived) = (g.clone(), arrived.clone());
        async move {
            if req.uri().path().starts_with("/held") {
                let _ = arrived.send(());
                gate.acquire().await.unwrap().forget();
            }
            Response::new(TestBody::text("ok"))
        }
    })
    .await;
    (up, gate, arrivals)
}

/// Waits for `n` arrivals at the gated upstream.
async fn arrivals(rx: &mut mpsc::UnboundedReceiver<()>, n: usize) {
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("request reached the upstream within 10 s");
    }
}

/// On one HTTP/2 connection, 429s on some streams neither reset the connection nor disturb
/// sibling streams in flight: those complete with 200 afterwards, and the connection takes
/// new requests.
#[tokio::test]
async fn h2_rate_limited_streams_leave_siblings_intact() {
    let pki = installed_pki();
    let (up, gate, mut arrived) = gated_upstream().await;
    let proxy = start_proxy(&config(&pki, &up.endpoint(), "", Some(LIMITED_AND_HELD))).await;
    let send = h2(connect(https(&proxy), pki.client(&[b"h2"])).await).await;

    // Five streams held in flight at the upstream.
    let held: Vec<_> = (0..5)
        .map(|i| {
            let mut send = send.clone();
            tokio::spawn(async move { send_h2(&mut send, get_req(&format!("/held/{i}"))).await })
        })
        .collect();
    arrivals(&mut arrived, 5).await;

    // Six more streams on the same connection to the rate-limited route: one admitted.
    let limited: Vec<_> = (0..6)
        .map(|_| {
            let mut send = send.clone();
            tokio::spawn(async move { send_h2(&mut send, get_req("/limited")).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in limited {
        let got = task.await.unwrap();
        if got.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(got.header("retry-after").is_some());
        }
        statuses.push(got.status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 429, 429, 429, 429, 429]);

    gate.add_permits(5);
    for task in held {
        assert_eq!(task.await.unwrap().status, StatusCode::OK);
    }
    let mut send = send;
    let got = send_h2(&mut send, get_req("/limited")).await;
    assert_eq!(
        got.status,
        StatusCode::TOO_MANY_REQUESTS,
        "still limited, still connected"
    );
    gate.add_permits(1);
    assert_eq!(
        send_h2(&mut send, get_req("/held/after")).await.status,
        StatusCode::OK
    );
    proxy.stop().await;
}

/// `server.max_concurrent_streams` bounds the streams of one connection: with 2, six
/// concurrent requests on one connection reach the upstream two at a time, and all complete.
#[tokio::test]
async fn max_concurrent_streams_bounds_one_connection() {
    let pki = installed_pki();
    let (up, gate, mut arrived) = gated_upstream().await;
    let proxy = start_proxy(&config(
        &pki,
        &up.endpoint(),
        "  max_concurrent_streams: 2\n",
        None,
    ))
    .await;
    let mut send = h2(connect(https(&proxy), pki.client(&[b"h2"])).await).await;
    // One exchange first, so the client has the server's SETTINGS before it opens streams.
    assert_eq!(
        send_h2(&mut send, get_req("/warm-up")).await.status,
        StatusCode::OK
    );

    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let mut send = send.clone();
            tokio::spawn(async move { send_h2(&mut send, get_req(&format!("/held/{i}"))).await })
        })
        .collect();
    arrivals(&mut arrived, 2).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), arrived.recv())
            .await
            .is_err(),
        "a third stream was opened while two were in flight"
    );
    assert_eq!(up.max_inflight(), 2);
    gate.add_permits(6);
    for task in tasks {
        assert_eq!(task.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(up.max_inflight(), 2);
    assert_eq!(up.requests(), 7);
    proxy.stop().await;
}

/// An upstream that answers every request with `total` bytes, counting what it has written
/// to the socket (a write only completes when the kernel takes it, so the count is what the
/// reader side has let through, plus socket buffers).
async fn counting_upstream(
    total: u64,
) -> (SocketAddr, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let w = written.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let w = w.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!("HTTP/1.1 200 OK\r\ncontent-length: {total}\r\n\r\n");
                if tcp.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                let mut left = total;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    if tcp.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    left -= n as u64;
                    w.fetch_add(n as u64, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, written, task)
}

/// Returns `counter` once it has stopped moving for `still` (sampled every 50 ms), or after
/// `limit`. This waits for the pipeline to fill, not for an event: the assertion that
/// follows is a bound that holds however long one waits.
async fn settled(counter: &AtomicU64, still: Duration, limit: Duration) -> u64 {
    let start = Instant::now();
    let mut last = counter.load(Ordering::SeqCst);
    let mut since = Instant::now();
    while start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = counter.load(Ordering::SeqCst);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= still {
            break;
        }
    }
    last
}

/// HTTP/2 flow control pushes back through sluice: a client that stops reading a 1 GiB
/// response (64 KiB windows) stops the upstream after a few MiB (windows, sluice's bounded
/// send buffer, socket buffers), instead of sluice buffering the response; reading resumes it.
#[tokio::test]
async fn slow_h2_reader_pushes_back_to_the_upstream() {
    const TOTAL: u64 = 1 << 30;
    let pki = installed_pki();
    let (addr, written, task) = counting_upstream(TOTAL).await;
    let proxy = start_proxy(&config(&pki, &format!("http://{addr}"), "", None)).await;
    let tls = connect(https(&proxy), pki.client(&[b"h2"])).await;
    let (mut send, conn) = http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let head_and_first = async {
        send.ready().await.unwrap();
        let res = send.send_request(get_req("/big")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let mut body = res.into_body();
        let first = body.frame().await.unwrap().unwrap();
        (body, first)
    };
    let (mut body, first) = tokio::time::timeout(Duration::from_secs(30), head_and_first)
        .await
        .expect("response head and first data within 30 s");
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));

    // The client reads nothing more: the upstream must stall far below the total.
    let stalled = settled(
        &written,
        Duration::from_millis(500),
        Duration::from_secs(20),
    )
    .await;
    assert!(
        stalled < 64 << 20,
        "upstream wrote {stalled} bytes to a client that stopped reading"
    );

    // Reading again lets it go on.
    let mut read = 0u64;
    while read < 16 << 20 {
        let frame = tokio::time::timeout(Duration::from_secs(30), body.frame())
            .await
            .expect("data keeps coming")
            .unwrap()
            .unwrap();
        read += frame.data_ref().map_or(0, |d| d.len() as u64);
    }
    assert!(
        written.load(Ordering::SeqCst) > stalled,
        "reading resumed the upstream"
    );
    drop(body);
    task.abort();
    proxy.stop().await;
}

// === handshakes ===

/// A client that connects and sends nothing, and one that sends part of a ClientHello, are
/// both closed after header_read_timeout and counted as failed handshakes; meanwhile other
/// clients are served (handshakes do not block the accept loop).
#[tokio::test]
async fn stalled_handshakes_are_cut_at_header_read_timeout_and_counted() {
    let pki = installed_pki();
    let up = ok_upstream().await;
    // Long enough for the full handshake of the client served meanwhile on a loaded machine.
    let proxy = start_with_header_read_timeout(&pki, &up, "3s").await;
    let addr = https(&proxy);

    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut partial = TcpStream::connect(addr).await.unwrap();
    // A TLS record header announcing 512 bytes of handshake, then 3 of them.
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01])
        .await
        .unwrap();

    // Served while both hang in their handshake.
    assert_eq!(https_get(addr, &pki, "/").await.status, StatusCode::OK);

    for (name, tcp) in [("silent", &mut silent), ("partial", &mut partial)] {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|_| panic!("{name} connection still open after 20 s"));
        assert!(read.is_ok() || rest.is_empty(), "{name}: {read:?}");
        assert!(
            started.elapsed() >= Duration::from_millis(2500),
            "{name} closed before header_read_timeout: {:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        proxy.metric("sluice_tls_handshake_failures_total").await,
        2.0
    );
    proxy.stop().await;
}

/// Garbage instead of a ClientHello is refused at once, closed and counted, and the listener
/// keeps serving; a connection closed without a byte (a TCP health check) is not counted.
#[tokio::test]
async fn garbage_handshakes_are_closed_counted_and_harmless() {
    let pki = installed_pki();
    let up = ok_upstream().await;
    let proxy = start_with_header_read_timeout(&pki, &up, "30s").await;
    let addr = https(&proxy);

    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let garbage: Vec<u8> = std::iter::once(b'G')
        .chain((0..1023).map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        }))
        .collect();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let garbage = garbage.clone();
            tokio::spawn(async move {
                let mut tcp = TcpStream::connect(addr).await.unwrap();
                // The server may close (and reset) before reading all of it.
                let _ = tcp.write_all(&garbage).await;
                let mut rest = Vec::new();
                // Closed long before header_read_timeout (30 s): refused, not timed out.
                tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest))
                    .await
                    .expect("closed within 10 s")
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await.unwrap();
    }
    drop(TcpStream::connect(addr).await.unwrap());

    assert_eq!(https_get(addr, &pki, "/").await.status, StatusCode::OK);
    assert_eq!(
        proxy.metric("sluice_tls_handshake_failures_total").await,
        10.0
    );
    proxy.stop().await;
}

// === reload ===

/// A reload (POST /reload) after new certificate and key files were written: new
/// connections get the new certificate; a connection opened before keeps its session and
/// goes on serving requests.
#[tokio::test]
async fn reload_serves_the_new_certificate_to_new_connections() {
    let pki = Pki::new();
    let (a, b) = (pki.leaf(), pki.leaf());
    pki.install(&a);
    let (_up, _file, proxy) = start_reloadable(&pki).await;
    let addr = https(&proxy);

    let before = connect(addr, pki.client(&[b"h2"])).await;
    assert_eq!(peer_cert(&before), a.der);
    let mut before = h2(before).await;
    assert_eq!(
        send_h2(&mut before, get_req("/")).await.status,
        StatusCode::OK
    );

    pki.install(&b);
    let reload = proxy.reload().await;
    assert_eq!(reload.status, StatusCode::OK, "{}", reload.text());

    let after = connect(addr, pki.client(&[b"h2"])).await;
    assert_eq!(
        peer_cert(&after),
        b.der,
        "a new connection sees the new certificate"
    );
    assert_eq!(
        send_h2(&mut h2(after).await, get_req("/")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send_h2(&mut before, get_req("/")).await.status,
        StatusCode::OK,
        "the old connection goes on"
    );
    proxy.stop().await;
}

/// A reload with a bad certificate (not PEM) or a key that does not match fails with 422
/// naming the file and field, and the running certificate stays.
#[tokio::test]
async fn reload_with_a_bad_certificate_keeps_the_old_one() {
    let pki = Pki::new();
    let (a, b) = (pki.leaf(), pki.leaf());
    pki.install(&a);
    let (_up, _file, proxy) = start_reloadable(&pki).await;
    let addr = https(&proxy);

    pki.write("cert.pem", "not a certificate\n");
    let got = proxy.reload().await;
    assert_eq!(got.status, StatusCode::UNPROCESSABLE_ENTITY);
    let errors = got.json()["errors"].to_string();
    assert!(errors.contains("server.tls.cert"), "{errors}");
    assert!(
        errors.contains(&pki.cert_path().display().to_string()),
        "{errors}"
    );

    // B's certificate with A's key.
    pki.write("cert.pem", &b.chain_pem);
    let got = proxy.reload().await;
    assert_eq!(got.status, StatusCode::UNPROCESSABLE_ENTITY);
    let errors = got.json()["errors"].to_string();
    assert!(
        errors.contains("server.tls.key") && errors.contains("does not match"),
        "{errors}"
    );

    let tls = connect(addr, pki.client(&[b"http/1.1"])).await;
    assert_eq!(
        peer_cert(&tls),
        a.der,
        "the old certificate is still served"
    );
    assert_eq!(
        send_h1(&mut h1(tls).await, get_req("/")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        proxy
            .metric("sluice_config_reloads_total{result=\"failure\"}")
            .await,
        2.0
    );
    proxy.stop().await;
}

// === config errors ===

/// A config whose tls section points at the given files (cert on line 5, key on line 6).
fn tls_yaml(cert: &Path, key: &Path) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  tls:\n    listen: 127.0.0.1:0\n    cert: {}\n    key: {}\nupstreams:\n  a:\n    endpoints: [http://127.0.0.1:1]\nroutes:\n  - name: r\n    upstream: a\n",
        cert.display(),
        key.display()
    )
}

/// The errors of a config whose tls section points at the given files.
fn tls_errors(cert: &Path, key: &Path) -> Vec<FieldError> {
    let yaml = tls_yaml(cert, key);
    match sluice::config::from_yaml(&yaml, Path::new("t.yaml")) {
        Ok(_) => panic!("expected an invalid config:\n{yaml}"),
        Err(ConfigError::Invalid { errors, .. }) => errors,
        Err(e) => panic!("{e:?}"),
    }
}

/// Asserts `errors` is one error at `field` (line and column of that field) whose message
/// names `file` and contains `says`.
fn assert_one(errors: &[FieldError], field: &str, file: &Path, says: &str) {
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = &errors[0];
    assert_eq!(e.path, field, "{e}");
    let line = if field.ends_with("cert") { 5 } else { 6 };
    assert_eq!((e.line, e.column.is_some()), (Some(line), true), "{e}");
    assert!(e.message.contains(&file.display().to_string()), "{e}");
    assert!(e.message.contains(says), "{e}");
}

/// Missing, non-PEM, malformed and mismatched files are config errors at `server.tls.cert`
/// or `server.tls.key`, placed at the field and naming the file.
#[test]
fn bad_certificate_and_key_files_are_config_errors() {
    let pki = Pki::new();
    let (a, b) = (pki.leaf(), pki.leaf());
    let cert = pki.write("a.crt", &a.chain_pem);
    let key = pki.write("a.key", &a.key_pem);
    let b_key = pki.write("b.key", &b.key_pem);
    let garbage = pki.write("garbage", "this is not PEM at all\n");
    let missing = pki.dir.join("missing.pem");
    let broken = pki.write(
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
    );
    let only_ca = pki.write("ca.crt", &pki.ca.pem());
    // The parser reports the missing marker as bytes; the message must show it as text.
    let unterminated = pki.write("unterminated.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");
    let broken_key = pki.write(
        "broken.key",
        "-----BEGIN PRIVATE KEY-----\n!!!not base64!!!\n-----END PRIVATE KEY-----\n",
    );

    // (cert file, key file, the field in error, the file it names, what it says)
    let cases: [(&Path, &Path, &str, &Path, &str); 9] = [
        (&missing, &key, "server.tls.cert", &missing, "cannot read"),
        (&cert, &missing, "server.tls.key", &missing, "cannot read"),
        (
            &garbage,
            &key,
            "server.tls.cert",
            &garbage,
            "no PEM certificate",
        ),
        (
            &cert,
            &garbage,
            "server.tls.key",
            &garbage,
            "no PEM private key",
        ),
        (&broken, &key, "server.tls.cert", &broken, "not valid PEM"),
        (
            &unterminated,
            &key,
            "server.tls.cert",
            &unterminated,
            "not valid PEM: a section has no \"-----END CERTIFICATE-----\" line",
        ),
        (
            &cert,
            &broken_key,
            "server.tls.key",
            &broken_key,
            "not valid PEM: bad base64",
        ),
        (
            &cert,
            &b_key,
            "server.tls.key",
            &b_key,
            "does not match the certificate",
        ),
        (&only_ca, &key, "server.tls.key", &key, "does not match"),
    ];
    for (cert_file, key_file, field, named, says) in cases {
        assert_one(&tls_errors(cert_file, key_file), field, named, says);
    }
    // Swapped: both files are wrong, and both are reported.
    let swapped = tls_errors(&key, &cert);
    let fields: Vec<&str> = swapped.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        fields,
        ["server.tls.cert", "server.tls.key"],
        "{swapped:#?}"
    );

    // And the good pair loads, with its files in `sluice check`'s summary.
    let yaml = tls_yaml(&cert, &key);
    let config = sluice::config::from_yaml(&yaml, Path::new("t.yaml")).unwrap();
    assert!(config
        .to_string()
        .contains(&format!("(cert {})", cert.display())));
}

/// `sluice check` and `sluice run` exit 2 on a bad certificate or key, with the file and
/// field on stderr; `check` accepts a good pair.
#[test]
fn binary_exits_2_on_bad_tls_files() {
    let pki = Pki::new();
    let (a, b) = (pki.leaf(), pki.leaf());
    pki.write("cert.pem", &a.chain_pem);
    pki.write("key.pem", &b.key_pem);
    let yaml = config(&pki, "http://127.0.0.1:1", "", None);
    let path = pki.write("sluice.yaml", &yaml);
    let sluice = |command: &str| {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([command, "-c"])
            .arg(&path)
            .env("RUST_LOG", "error")
            .output()
            .unwrap()
    };
    for command in ["check", "run"] {
        let out = sluice(command);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(stderr.contains("server.tls.key"), "{command}: {stderr}");
        assert!(
            stderr.contains(&pki.key_path().display().to_string()),
            "{command}: {stderr}"
        );
    }
    std::fs::remove_file(pki.cert_path()).unwrap();
    let out = sluice("check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("server.tls.cert") && stderr.contains("cannot read"),
        "{stderr}"
    );

    pki.install(&a);
    let out = sluice("check");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("https"));
}
