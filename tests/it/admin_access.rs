//! The admin listener's gate (`Host`, `Origin`, bearer token), what every admin response
//! carries (`Cache-Control`, `HEAD`), and the bounds of its listener (header timeout, connection
//! cap), through real sockets. Requests whose `Host` or framing a normal client would not send
//! are written by hand ([`raw`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::*;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The admin listener's fixed bounds (docs/reference.md, "Admin listener").
const ADMIN_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
const ADMIN_MAX_CONNECTIONS: usize = 64;
const ADMIN_MAX_PER_ADDRESS: usize = 16;

/// A connection to `addr` from `127.0.0.<octet>` (all of 127/8 is loopback on Linux).
async fn connect_from(octet: u8, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from(([127, 0, 0, octet], 0)))
        .unwrap();
    socket.connect(addr).await.unwrap()
}

/// A config with an admin listener; `admin` is added to its `admin:` section.
fn config(endpoint: &str, admin: &str) -> String {
    format!(
        "server: {{ listen: 127.0.0.1:0 }}\nadmin:\n  listen: 127.0.0.1:0\n{admin}upstreams: {{ api: {{ endpoints: [{endpoint}] }} }}\nroutes:\n  - {{ name: all, upstream: api }}\n"
    )
}

/// A response read off a raw connection.
struct Raw {
    status: u16,
    /// The head's header lines, names lower-cased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `head` (request line and fields, without the blank line; `Connection: close` is added)
/// on a new connection to `addr` and reads the answer until the server closes. Bounded: 10 s.
async fn raw(addr: SocketAddr, head: &str) -> Raw {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let request = format!("{head}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut bytes = Vec::new();
        tcp.read_to_end(&mut bytes).await.unwrap();
        bytes
    };
    let bytes = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("an answer within 10 s");
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete head: {:?}", String::from_utf8_lossy(&bytes)));
    let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Raw {
        status,
        headers,
        body: bytes[split + 4..].to_vec(),
    }
}

/// `method path` with these fields, through the test client (which keeps a `Host` it is given).
async fn request(method: Method, url: &str, fields: &[(&str, &str)]) -> Got {
    let mut req = Request::builder().method(method).uri(url);
    for (name, value) in fields {
        req = req.header(*name, *value);
    }
    send(&client(), req.body(Full::new(Bytes::new())).unwrap()).await
}

/// Regression (issue 13: `GET /config` with `Host: attacker.example` answered 200, so a page
/// using DNS rebinding could read the config): a `Host` that is not an IP literal, `localhost`
/// or listed gets 403 on every path, health checks and reload included — the reload then does
/// not happen. A missing `Host`, and an absolute-form target naming a foreign host, too.
#[tokio::test]
async fn foreign_host_is_refused_on_every_path() {
    let up = ok_upstream().await;
    let file = ConfigFile::new(&config(&up.endpoint(), ""));
    let proxy = start_proxy_file(&file).await;
    let admin = proxy.admin.unwrap();
    let port = admin.port();
    for host in [
        "attacker.example".to_owned(),
        format!("attacker.example:{port}"),
        format!("localhost.attacker.example:{port}"),
        "127.0.0.1.nip.io".to_owned(),
    ] {
        for path in ["/config", "/metrics", "/healthz", "/readyz", "/nope"] {
            let got = request(Method::GET, &proxy.admin_url(path), &[("host", &host)]).await;
            assert_eq!(got.status, StatusCode::FORBIDDEN, "GET {path} Host: {host}");
        }
        let got = request(
            Method::POST,
            &proxy.admin_url("/reload"),
            &[("host", &host)],
        )
        .await;
        assert_eq!(
            got.status,
            StatusCode::FORBIDDEN,
            "POST /reload Host: {host}"
        );
    }
    assert_eq!(
        proxy
            .metric("sluice_config_reloads_total{result=\"success\"}")
            .await,
        0.0,
        "a refused reload happened"
    );
    // HTTP/1.0 without Host; an absolute-form target (whose authority wins over Host).
    assert_eq!(raw(admin, "GET /config HTTP/1.0").await.status, 403);
    let absolute = "GET http://attacker.example/config HTTP/1.1\r\nHost: 127.0.0.1";
    assert_eq!(raw(admin, absolute).await.status, 403);
    // IP literals and localhost, with or without a port.
    for host in [
        "127.0.0.1".to_owned(),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "localhost".to_owned(),
        format!("LocalHost:{port}"),
    ] {
        let got = request(Method::GET, &proxy.admin_url("/config"), &[("host", &host)]).await;
        assert_eq!(got.status, StatusCode::OK, "Host: {host}");
    }
    proxy.stop().await;
}

/// `admin.allowed_hosts` entries match a `Host` with or without a port, case-insensitively,
/// and nothing that merely contains them.
#[tokio::test]
async fn allowed_hosts_match_with_and_without_port() {
    let up = ok_upstream().await;
    let yaml = config(&up.endpoint(), "  allowed_hosts: [sluice.internal]\n");
    let proxy = start_proxy(&yaml).await;
    let url = proxy.admin_url("/config");
    for host in [
        "sluice.internal",
        "sluice.internal:9901",
        "SLUICE.internal",
        "sluice.internal.",
    ] {
        let got = request(Method::GET, &url, &[("host", host)]).await;
        assert_eq!(got.status, StatusCode::OK, "Host: {host}");
    }
    for host in [
        "evil.sluice.internal",
        "sluice.internal.evil.example:9901",
        "sluice",
    ] {
        let got = request(Method::GET, &url, &[("host", host)]).await;
        assert_eq!(got.status, StatusCode::FORBIDDEN, "Host: {host}");
    }
    proxy.stop().await;
}

/// Regression (issue 13: `POST /reload` with `Origin: http://evil.example` answered 200, so any
/// page an operator opened could reload the proxy; issue 22: any IP-literal `Origin` still
/// passed, so a page served from a bare IP such as `http://203.0.113.7` could): `POST` with an
/// `Origin` reloads only when the Origin's host and port are the request's `Host` (a `Host`
/// without a port is on 80) or its host is in `admin.allowed_hosts`; a foreign name, an IP
/// literal or `localhost` naming another host, the same host on another port, or `null` gets
/// 403 and nothing is reloaded. Without `Origin` (curl, scripts) nothing changes.
#[tokio::test]
async fn foreign_origin_cannot_reload() {
    let up = ok_upstream().await;
    let file = ConfigFile::new(&config(
        &up.endpoint(),
        "  allowed_hosts: [sluice.internal]\n",
    ));
    let proxy = start_proxy_file(&file).await;
    let url = proxy.admin_url("/reload");
    let port = proxy.admin.unwrap().port();
    let own = format!("127.0.0.1:{port}");
    let success = "sluice_config_reloads_total{result=\"success\"}";
    for (host, origin) in [
        (own.clone(), "http://evil.example".to_owned()),
        (own.clone(), "http://127.0.0.1.evil.example:9901".to_owned()),
        (own.clone(), "http://203.0.113.7".to_owned()),
        (own.clone(), format!("http://203.0.113.7:{port}")),
        (own.clone(), format!("http://10.0.0.1:{port}")),
        (own.clone(), format!("http://localhost:{port}")),
        (
            own.clone(),
            format!("http://127.0.0.1:{}", port.wrapping_add(1)),
        ),
        (own.clone(), "http://127.0.0.1".to_owned()),
        ("127.0.0.1".to_owned(), "https://127.0.0.1".to_owned()),
        (own.clone(), "null".to_owned()),
    ] {
        let got = request(Method::POST, &url, &[("host", &host), ("origin", &origin)]).await;
        assert_eq!(
            got.status,
            StatusCode::FORBIDDEN,
            "Host: {host}, Origin: {origin}"
        );
    }
    assert_eq!(
        proxy.metric(success).await,
        0.0,
        "a refused reload happened"
    );
    let mut reloads = 0.0;
    for (host, origin) in [
        (own.clone(), Some(format!("http://{own}"))),
        ("127.0.0.1".to_owned(), Some("http://127.0.0.1".to_owned())),
        (
            format!("localhost:{port}"),
            Some(format!("http://localhost:{port}")),
        ),
        (own.clone(), Some("https://sluice.internal:8443".to_owned())),
        (own.clone(), None),
    ] {
        let mut fields = vec![("host", host.as_str())];
        fields.extend(origin.as_deref().map(|o| ("origin", o)));
        let got = request(Method::POST, &url, &fields).await;
        assert_eq!(
            got.status,
            StatusCode::OK,
            "Host: {host}, Origin: {origin:?}: {}",
            got.text()
        );
        reloads += 1.0;
        assert_eq!(proxy.metric(success).await, reloads);
    }
    proxy.stop().await;
}

/// With `admin.token_file`, every path but `/healthz` and `/readyz` needs the bearer token:
/// 401 with `WWW-Authenticate: Bearer` without it or with another one, 200 with it.
#[tokio::test]
async fn bearer_token_guards_all_but_health() {
    let up = ok_upstream().await;
    let token = ConfigFile::new("  s3cret-token-1 \n");
    let yaml = config(
        &up.endpoint(),
        &format!("  token_file: {}\n", token.path.display()),
    );
    let file = ConfigFile::new(&yaml);
    let proxy = start_proxy_file(&file).await;
    let targets = [
        (Method::GET, "/metrics"),
        (Method::GET, "/config"),
        (Method::POST, "/reload"),
        (Method::GET, "/nope"),
        (Method::HEAD, "/metrics"),
    ];
    for auth in [
        None,
        Some("Bearer s3cret"),
        Some("Bearer s3cret-token-2"),
        Some("Basic czNjcmV0LXRva2VuLTE="),
    ] {
        for (method, path) in &targets {
            let fields: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
            let got = request(method.clone(), &proxy.admin_url(path), &fields).await;
            assert_eq!(
                got.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {auth:?}"
            );
            assert_eq!(got.header("www-authenticate"), Some("Bearer"));
        }
    }
    for (method, path) in &targets {
        let got = request(
            method.clone(),
            &proxy.admin_url(path),
            &[("authorization", "Bearer s3cret-token-1")],
        )
        .await;
        let expected = if *path == "/nope" {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        };
        assert_eq!(got.status, expected, "{method} {path}: {}", got.text());
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            get(&proxy.admin_url(path)).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
    proxy.stop().await;
}

/// The token file is read again on reload: the new token works and the old one stops working;
/// a reload that cannot read the file fails (422, naming `admin.token_file`) and keeps the
/// token in force.
#[tokio::test]
async fn token_is_read_again_on_reload() {
    let up = ok_upstream().await;
    let token = ConfigFile::new("old-token\n");
    let yaml = config(
        &up.endpoint(),
        &format!("  token_file: {}\n", token.path.display()),
    );
    let file = ConfigFile::new(&yaml);
    let proxy = start_proxy_file(&file).await;
    let config_url = proxy.admin_url("/config");
    let with = |t: &'static str| [("authorization", t)];
    assert_eq!(
        request(Method::GET, &config_url, &with("Bearer old-token"))
            .await
            .status,
        StatusCode::OK
    );

    token.write("new-token");
    let reloaded = request(
        Method::POST,
        &proxy.admin_url("/reload"),
        &with("Bearer old-token"),
    )
    .await;
    assert_eq!(reloaded.status, StatusCode::OK, "{}", reloaded.text());
    assert_eq!(
        request(Method::GET, &config_url, &with("Bearer old-token"))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        request(Method::GET, &config_url, &with("Bearer new-token"))
            .await
            .status,
        StatusCode::OK
    );

    std::fs::remove_file(&token.path).unwrap();
    let failed = request(
        Method::POST,
        &proxy.admin_url("/reload"),
        &with("Bearer new-token"),
    )
    .await;
    assert_eq!(failed.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        failed.text().contains("admin.token_file"),
        "{}",
        failed.text()
    );
    assert_eq!(
        request(Method::GET, &config_url, &with("Bearer new-token"))
            .await
            .status,
        StatusCode::OK
    );
    proxy.stop().await;
}

/// Regression (issue 13: admin responses carried no `Cache-Control`): every admin response —
/// answers, errors, refusals, HEAD — says `Cache-Control: no-store`.
#[tokio::test]
async fn every_admin_response_is_no_store() {
    let up = ok_upstream().await;
    let token = ConfigFile::new("t0ken");
    let file = ConfigFile::new(&config(
        &up.endpoint(),
        &format!("  token_file: {}\n", token.path.display()),
    ));
    let proxy = start_proxy_file(&file).await;
    let auth = ("authorization", "Bearer t0ken");
    type Case<'a> = (Method, &'a str, Vec<(&'a str, &'a str)>, StatusCode);
    let cases: Vec<Case<'_>> = vec![
        (Method::GET, "/metrics", vec![auth], StatusCode::OK),
        (Method::HEAD, "/metrics", vec![auth], StatusCode::OK),
        (Method::GET, "/healthz", vec![], StatusCode::OK),
        (Method::HEAD, "/readyz", vec![], StatusCode::OK),
        (Method::GET, "/config", vec![auth], StatusCode::OK),
        (Method::POST, "/reload", vec![auth], StatusCode::OK),
        (Method::GET, "/nope", vec![auth], StatusCode::NOT_FOUND),
        (
            Method::DELETE,
            "/config",
            vec![auth],
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (Method::GET, "/config", vec![], StatusCode::UNAUTHORIZED),
        (
            Method::GET,
            "/config",
            vec![("host", "attacker.example")],
            StatusCode::FORBIDDEN,
        ),
        (
            Method::POST,
            "/reload",
            vec![auth, ("origin", "null")],
            StatusCode::FORBIDDEN,
        ),
    ];
    for (method, path, fields, status) in cases {
        let got = request(method.clone(), &proxy.admin_url(path), &fields).await;
        assert_eq!(got.status, status, "{method} {path}");
        assert_eq!(
            got.header("cache-control"),
            Some("no-store"),
            "{method} {path}"
        );
    }
    // A reload that fails (422) too.
    file.write("server: { bogus: 1 }\n");
    let got = request(Method::POST, &proxy.admin_url("/reload"), &[auth]).await;
    assert_eq!(got.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(got.header("cache-control"), Some("no-store"));
    proxy.stop().await;
}

/// Regression (issue 13: `HEAD /metrics` and `HEAD /healthz` got 405, and health checkers use
/// HEAD): HEAD answers wherever GET does, with the same status and fields (`Content-Length`
/// included) and no body; the 405 of a POST-only path lists its method.
#[tokio::test]
async fn head_answers_like_get_without_a_body() {
    let up = ok_upstream().await;
    let proxy = start_proxy(&config(&up.endpoint(), "")).await;
    let admin = proxy.admin.unwrap();
    for path in ["/healthz", "/readyz", "/metrics", "/config"] {
        let get = raw(admin, &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1")).await;
        let head = raw(admin, &format!("HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1")).await;
        assert_eq!((get.status, head.status), (200, 200), "{path}");
        assert!(head.body.is_empty(), "HEAD {path} sent a body");
        for field in ["content-type", "content-length", "cache-control"] {
            assert!(get.header(field).is_some(), "GET {path}: no {field}");
            assert_eq!(
                head.header(field),
                get.header(field),
                "HEAD {path}: {field}"
            );
        }
        assert_eq!(
            get.header("content-length"),
            Some(get.body.len().to_string().as_str()),
            "{path}"
        );
    }
    let wrong = raw(admin, "HEAD /reload HTTP/1.1\r\nHost: 127.0.0.1").await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("POST"));
    let wrong = raw(
        admin,
        "PUT /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0",
    )
    .await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("GET, HEAD"));
    proxy.stop().await;
}

/// Reads from `tcp` until the peer closes or errors; returns how long that took from `since`.
async fn until_closed(tcp: &mut TcpStream, since: Instant, deadline: Duration) -> Duration {
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(deadline, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the admin listener kept the connection past {deadline:?}"
    );
    since.elapsed()
}

/// Regression (issue 12: the admin listener had no header timeout): a client that sends
/// nothing, and one that dribbles its request head a byte at a time, are both cut once the
/// header read timeout has passed.
#[tokio::test]
async fn admin_cuts_silent_and_dribbling_clients() {
    let up = ok_upstream().await;
    let proxy = start_proxy(&config(&up.endpoint(), "")).await;
    let admin = proxy.admin.unwrap();
    let deadline = ADMIN_HEADER_READ_TIMEOUT + Duration::from_secs(10);

    let started = Instant::now();
    let mut silent = TcpStream::connect(admin).await.unwrap();
    let dribbler = tokio::spawn(async move {
        let started = Instant::now();
        let mut tcp = TcpStream::connect(admin).await.unwrap();
        let head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        for byte in head {
            if tcp.write_all(&[*byte]).await.is_err() {
                break; // cut: the read below sees it
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            if started.elapsed() > deadline {
                break;
            }
        }
        started.elapsed()
    });
    let silent_for = until_closed(&mut silent, started, deadline).await;
    let dribbled_for = dribbler.await.unwrap();
    // The dribbler had bytes left to send for 15 s: it stopped because it was cut.
    assert!(
        dribbled_for < deadline,
        "the dribbling client was not cut (dribbled for {dribbled_for:?})"
    );
    // Cut by the timeout, not by something sooner.
    assert!(
        silent_for >= ADMIN_HEADER_READ_TIMEOUT - Duration::from_millis(500),
        "{silent_for:?}"
    );
    assert!(
        dribbled_for >= ADMIN_HEADER_READ_TIMEOUT - Duration::from_millis(500),
        "{dribbled_for:?}"
    );
    // The listener still serves.
    assert_eq!(
        get(&proxy.admin_url("/healthz")).await.status,
        StatusCode::OK
    );
    proxy.stop().await;
}

/// Regression (issue 12: the admin listener had no connection cap): with every slot held by a
/// client that has not finished its head, a new client is not served until the header timeout
/// frees the slots — then it is.
#[tokio::test]
async fn admin_connections_are_capped() {
    let up = ok_upstream().await;
    let proxy = start_proxy(&config(&up.endpoint(), "")).await;
    let admin = proxy.admin.unwrap();
    let started = Instant::now();
    let mut held = Vec::new();
    // From four addresses other than the probe's, each within its own cap.
    for i in 0..ADMIN_MAX_CONNECTIONS {
        let octet = 2 + (i / ADMIN_MAX_PER_ADDRESS) as u8;
        let mut tcp = connect_from(octet, admin).await;
        tcp.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        held.push(tcp);
    }
    // Served only once a slot is free: the held connections are cut at the header timeout
    // (counted from their accept, after `started`), so not before then.
    let probe =
        tokio::spawn(async move { raw(admin, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1").await });
    let early = ADMIN_HEADER_READ_TIMEOUT - Duration::from_secs(2);
    tokio::time::sleep(early.saturating_sub(started.elapsed())).await;
    assert!(
        !probe.is_finished(),
        "a connection beyond the cap was served at once"
    );
    let answered = probe.await.unwrap();
    assert_eq!(answered.status, 200);
    assert!(
        started.elapsed() >= early,
        "served before the cap freed a slot"
    );
    drop(held);
    assert_eq!(
        get(&proxy.admin_url("/healthz")).await.status,
        StatusCode::OK
    );
    proxy.stop().await;
}

/// One address cannot take every admin slot: past its 16 connections, more from it are closed
/// at accept, and a probe from another address is answered at once, not after the header
/// timeout.
#[tokio::test]
async fn one_address_cannot_take_every_admin_slot() {
    let up = ok_upstream().await;
    let proxy = start_proxy(&config(&up.endpoint(), "")).await;
    let admin = proxy.admin.unwrap();
    let mut held = Vec::new();
    for _ in 0..ADMIN_MAX_PER_ADDRESS {
        let mut tcp = connect_from(2, admin).await;
        tcp.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        held.push(tcp);
    }
    // One more from the same address: closed without an answer, well before the timeout.
    let started = Instant::now();
    let mut extra = connect_from(2, admin).await;
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(ADMIN_HEADER_READ_TIMEOUT, extra.read_to_end(&mut bytes)).await;
    assert!(read.is_ok(), "the extra connection was left open");
    assert!(bytes.is_empty(), "{:?}", String::from_utf8_lossy(&bytes));
    // Another address is served at once.
    let answered = raw(admin, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1").await;
    assert_eq!(answered.status, 200);
    assert!(
        started.elapsed() < ADMIN_HEADER_READ_TIMEOUT - Duration::from_secs(2),
        "answered after {:?}",
        started.elapsed()
    );
    drop(held);
    proxy.stop().await;
}
