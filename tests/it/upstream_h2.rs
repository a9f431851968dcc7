//! HTTP/2 to the upstream (`protocol: http1 | http2 | auto`): what the upstream saw over TLS
//! (ALPN) and over cleartext (h2c with prior knowledge), `TE: trailers` passed on, the
//! protocol in `/stats`, and how few connections concurrent requests open.

use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::Full;

use crate::support::protocols::{
    proto_upstream, proto_upstream_with, server_tls, Ca, ProtoUpstream, SERVER_NAME,
};
use crate::support::*;

/// A config with upstream `api` at `scheme://127.0.0.1:<port>`, `protocol` (or none), the
/// private CA as `tls.ca` when `ca` is given, and one route to it.
fn config(scheme: &str, upstream: &ProtoUpstream, protocol: &str, ca: Option<&Ca>) -> String {
    let protocol = if protocol.is_empty() {
        String::new()
    } else {
        format!(", protocol: {protocol}")
    };
    let tls = ca.map_or(String::new(), |ca| {
        format!(
            ", tls: {{ ca: '{}', server_name: {SERVER_NAME} }}",
            ca.write_pem("ca.pem").display()
        )
    });
    format!(
        "server: {{ listen: 127.0.0.1:0 }}\nadmin: {{ listen: 127.0.0.1:0 }}\n\
         upstreams:\n  api: {{ endpoints: ['{scheme}://127.0.0.1:{}']{protocol}{tls} }}\n\
         routes: [{{ name: all, upstream: api }}]\n",
        upstream.addr.port()
    )
}

/// An upstream over TLS with `api.test`'s certificate, offering `alpn`.
async fn tls_upstream(ca: &Ca, alpn: &[&str]) -> ProtoUpstream {
    proto_upstream(Some(server_tls(&ca.issue(&[SERVER_NAME]), alpn, None))).await
}

/// What the upstream saw for one GET through `proxy`.
async fn seen(proxy: &Proxy) -> String {
    let got = get(&proxy.url("/")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    got.text()
}

/// Over TLS: `http2` speaks HTTP/2; `auto` speaks HTTP/2 when the server offers h2 and
/// HTTP/1.1 when it offers only http/1.1; `http1` speaks HTTP/1.1 to a server that prefers h2.
#[tokio::test]
async fn over_tls_alpn_decides() {
    let ca = Ca::new("upstream CA");
    let both = tls_upstream(&ca, &["h2", "http/1.1"]).await;
    let only_h1 = tls_upstream(&ca, &["http/1.1"]).await;
    let cases = [
        (&both, "http2", "HTTP/2.0"),
        (&both, "auto", "HTTP/2.0"),
        (&both, "", "HTTP/2.0"),
        (&only_h1, "auto", "HTTP/1.1"),
        (&both, "http1", "HTTP/1.1"),
    ];
    for (upstream, protocol, want) in cases {
        let proxy = start_proxy(&config("https", upstream, protocol, Some(&ca))).await;
        assert_eq!(seen(&proxy).await, want, "protocol {protocol:?}");
        proxy.stop().await;
    }
}

/// `http2` to a TLS server that offers only http/1.1: no common ALPN protocol, the handshake
/// fails, 502.
#[tokio::test]
async fn http2_to_a_server_without_h2_is_502() {
    let ca = Ca::new("upstream CA");
    let only_h1 = tls_upstream(&ca, &["http/1.1"]).await;
    let proxy = start_proxy(&config("https", &only_h1, "http2", Some(&ca))).await;
    get(&proxy.url("/"))
        .await
        .assert_problem(StatusCode::BAD_GATEWAY, "upstream-unavailable");
    proxy.stop().await;
}

/// Over `http://`: `http2` is h2c with prior knowledge; `auto` and `http1` are HTTP/1.1.
#[tokio::test]
async fn over_cleartext_http2_is_h2c() {
    let upstream = proto_upstream(None).await;
    for (protocol, want) in [
        ("http2", "HTTP/2.0"),
        ("auto", "HTTP/1.1"),
        ("http1", "HTTP/1.1"),
    ] {
        let proxy = start_proxy(&config("http", &upstream, protocol, None)).await;
        assert_eq!(seen(&proxy).await, want, "protocol {protocol:?}");
        proxy.stop().await;
    }
}

/// `TE: trailers` from the client reaches an HTTP/2 upstream (gRPC servers require it); any
/// other `TE` does not.
#[tokio::test]
async fn te_trailers_reaches_an_h2_upstream() {
    let upstream = proto_upstream(None).await;
    let proxy = start_proxy(&config("http", &upstream, "http2", None)).await;
    for (te, want) in [
        ("trailers", "trailers"),
        ("gzip", ""),
        ("gzip, trailers", "trailers"),
    ] {
        let got = send(
            &client(),
            Request::get(proxy.url("/"))
                .header("te", te)
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text());
        assert_eq!(got.header("x-te"), Some(want), "TE: {te}");
    }
    proxy.stop().await;
}

/// `/stats` shows each upstream's configured protocol and TLS, and what each endpoint's
/// connection spoke once it has one.
#[tokio::test]
async fn stats_show_the_protocol() {
    let ca = Ca::new("upstream CA");
    let upstream = tls_upstream(&ca, &["h2", "http/1.1"]).await;
    let proxy = start_proxy(&config("https", &upstream, "auto", Some(&ca))).await;
    assert_eq!(seen(&proxy).await, "HTTP/2.0");
    let stats = get(&proxy.admin_url("/stats")).await.json();
    let api = &stats["upstreams"][0];
    assert_eq!(api["protocol"], "auto", "{api}");
    assert_eq!(api["tls"], true, "{api}");
    assert_eq!(api["endpoints"][0]["protocol"], "http2", "{api}");
    proxy.stop().await;
}

/// Requests share HTTP/2 connections: 200 requests (or `SLUICE_H2_REQUESTS`), 20 at a time,
/// open a handful of connections at most (one is enough below the server's stream limit;
/// HTTP/1.1 would need about 20). Prints the figure: connections per 10,000 requests.
#[tokio::test]
async fn h2_connections_stay_few_under_concurrency() {
    let requests: usize = std::env::var("SLUICE_H2_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let ca = Ca::new("upstream CA");
    let upstream = tls_upstream(&ca, &["h2", "http/1.1"]).await;
    let proxy = start_proxy(&config("https", &upstream, "auto", Some(&ca))).await;
    let client = client();
    let url = proxy.url("/");
    let per_worker = requests / 20;
    let workers: Vec<_> = (0..20)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                for _ in 0..per_worker {
                    let got =
                        send(&client, Request::get(&url).body(Full::default()).unwrap()).await;
                    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
                    assert_eq!(got.text(), "HTTP/2.0");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let connections = upstream.connections();
    println!(
        "{} requests, 20 concurrent: {connections} upstream connections ({:.1} per 10,000 requests)",
        per_worker * 20,
        connections as f64 * 10_000.0 / (per_worker * 20) as f64
    );
    assert!(
        (1..=4).contains(&connections),
        "{connections} connections for {} requests",
        per_worker * 20
    );
    proxy.stop().await;
}

/// A new HTTP/2 connection is opened when the streams the server allows are in use: with 2
/// streams a connection (the server's SETTINGS), 10 requests held at once take 5 connections
/// — not fewer (the limit ignored: the upstream would never see all 10 at once, and they
/// would be answered only after 10 s) and not 10. The upstream also counts the requests.
#[tokio::test]
async fn a_new_connection_when_the_servers_streams_are_used_up() {
    let upstream = proto_upstream_with(None, Some(2), Duration::ZERO).await;
    let proxy = start_proxy(&config("http", &upstream, "http2", None)).await;
    assert_eq!(seen(&proxy).await, "HTTP/2.0");
    assert_eq!(upstream.connections(), 1);
    let client = client();
    let url = proxy.url("/");
    let requests: Vec<_> = (0..10)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                // Answered once all 10 are at the upstream: they overlap.
                let req = Request::get(&url).header("x-hold", "10");
                send(&client, req.body(Full::default()).unwrap()).await
            })
        })
        .collect();
    for request in requests {
        let got = request.await.unwrap();
        assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    }
    assert_eq!(upstream.requests(), 11);
    let connections = upstream.connections();
    assert!(
        (5..=6).contains(&connections),
        "{connections} connections for 10 requests at 2 streams each"
    );
    proxy.stop().await;
}

/// The access line records the protocol spoken to the upstream: `upstream_protocol=http2` for
/// a request forwarded over h2c, `http1` over HTTP/1.1 (the binary's own log, read from its
/// stderr).
#[test]
fn access_line_has_the_upstream_protocol() {
    use std::io::{Read, Write};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let upstream = rt.block_on(proto_upstream(None));
    for (protocol, want) in [("http2", "http2"), ("http1", "http1")] {
        let config = ConfigFile::new(&format!(
            "server:\n  listen: 127.0.0.1:0\n  access_log: true\nupstreams:\n  a:\n    endpoints: ['http://{}']\n    protocol: {protocol}\nroutes: [{{ name: r, upstream: a }}]\n",
            upstream.addr
        ));
        let mut sluice = bin::Sluice::start(bin::command().args(["run", "-c"]).arg(&config.path))
            .unwrap_or_else(|stderr| panic!("sluice run did not start:\n{stderr}"));
        let mut tcp = std::net::TcpStream::connect(sluice.http).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            tcp,
            "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut got = String::new();
        let _ = tcp.read_to_string(&mut got);
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        let line = sluice.wait_for_log("upstream_protocol=").unwrap();
        assert!(
            line.contains(&format!("upstream_protocol=\"{want}\"")),
            "protocol {protocol}: {line}"
        );
        sluice.signal("TERM");
        assert_eq!(sluice.wait_exit(), Some(0), "{}", sluice.stderr(true));
    }
}

/// Pins: a WebSocket handshake to an upstream that speaks HTTP/2 to sluice reaches it as a
/// plain GET (HTTP/2 has no `Upgrade`), and its answer is relayed as a normal response: never a
/// 101 the upstream did not give, never a hang, and the connection stays HTTP.
#[tokio::test]
async fn an_upgrade_to_an_http2_upstream_is_a_plain_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = proto_upstream(None).await;
    let proxy = start_proxy(&config("http", &upstream, "http2", None)).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let upgrade = b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
          Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n";
    let mut answers = String::new();
    for _ in 0..2 {
        tcp.write_all(upgrade).await.expect("write");
        let mut head = vec![0u8; 1024];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read(&mut head))
            .await
            .expect("an answer within 10 s")
            .expect("read");
        answers.push_str(&String::from_utf8_lossy(&head[..n]));
    }
    assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), 2, "{answers}");
    assert!(!answers.contains(" 101 "), "{answers}");
    assert!(
        answers.contains("HTTP/2.0"),
        "the upstream saw HTTP/2: {answers}"
    );
    proxy.stop().await;
}
