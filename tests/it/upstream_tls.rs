//! `https://` upstreams: verification against a private CA given as `tls.ca`, the name verified
//! (`tls.server_name`), an unknown CA, mTLS with and without a client certificate, a reload
//! that reads the CA file again, and the config errors of `tls:`. The upstream's certificate is
//! for `api.test` (made per test with rcgen) and it listens on 127.0.0.1: `tls.server_name`
//! names it, so no /etc/hosts entry is needed.

use std::path::Path;
use std::time::Duration;

use http::StatusCode;
use sluice::config::ConfigError;

use crate::support::protocols::{proto_upstream, server_tls, Ca, ProtoUpstream, SERVER_NAME};
use crate::support::*;

/// A config with upstream `api` at `https://127.0.0.1:<port>` with `tls` (a YAML flow map, or
/// empty for none) and one route to it.
fn config(upstream: &ProtoUpstream, tls: &str) -> String {
    let tls = if tls.is_empty() {
        String::new()
    } else {
        format!(", tls: {tls}")
    };
    format!(
        "server: {{ listen: 127.0.0.1:0 }}\nadmin: {{ listen: 127.0.0.1:0 }}\n\
         upstreams:\n  api: {{ endpoints: ['https://127.0.0.1:{}'], connect_timeout: 2s{tls} }}\n\
         routes: [{{ name: all, upstream: api }}]\n",
        upstream.addr.port()
    )
}

/// `tls:` with the CA at `ca` and `server_name`.
fn trusting(ca: &Path, server_name: &str) -> String {
    format!("{{ ca: '{}', server_name: {server_name} }}", ca.display())
}

/// A server certificate from the CA given as `tls.ca`, for the name given as `server_name`:
/// verified, 200; the upstream saw HTTP/2 (`auto`, and the server offers h2).
#[tokio::test]
async fn verified_with_tls_ca_and_server_name() {
    let ca = Ca::new("upstream CA");
    let upstream = proto_upstream(Some(server_tls(
        &ca.issue(&[SERVER_NAME]),
        &["h2", "http/1.1"],
        None,
    )))
    .await;
    let ca_path = ca.write_pem("ca.pem");
    let proxy = start_proxy(&config(&upstream, &trusting(&ca_path, SERVER_NAME))).await;
    let got = get(&proxy.url("/")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.text(), "HTTP/2.0");
    proxy.stop().await;
}

/// The certificate is for `api.test`; sluice verifies `other.test`: the handshake fails, 502
/// `upstream-unavailable`, and the upstream never sees a request.
#[tokio::test]
async fn wrong_server_name_is_502() {
    let ca = Ca::new("upstream CA");
    let upstream = proto_upstream(Some(server_tls(
        &ca.issue(&[SERVER_NAME]),
        &["h2", "http/1.1"],
        None,
    )))
    .await;
    let ca_path = ca.write_pem("ca.pem");
    let proxy = start_proxy(&config(&upstream, &trusting(&ca_path, "other.test"))).await;
    get(&proxy.url("/"))
        .await
        .assert_problem(StatusCode::BAD_GATEWAY, "upstream-unavailable");
    proxy.stop().await;
}

/// Without `tls.ca` the private CA is unknown (only the system's roots are trusted): 502. The
/// endpoint's host, an IP here, is the name verified by default.
#[tokio::test]
async fn unknown_ca_is_502() {
    let ca = Ca::new("upstream CA");
    let upstream = proto_upstream(Some(server_tls(
        &ca.issue(&[SERVER_NAME, "127.0.0.1"]),
        &["h2", "http/1.1"],
        None,
    )))
    .await;
    let proxy = start_proxy(&config(&upstream, "")).await;
    get(&proxy.url("/"))
        .await
        .assert_problem(StatusCode::BAD_GATEWAY, "upstream-unavailable");
    // Another CA as `tls.ca` is no better.
    let other = Ca::new("another CA");
    let other_path = other.write_pem("other.pem");
    let proxy2 = start_proxy(&config(&upstream, &trusting(&other_path, SERVER_NAME))).await;
    get(&proxy2.url("/"))
        .await
        .assert_problem(StatusCode::BAD_GATEWAY, "upstream-unavailable");
    proxy.stop().await;
    proxy2.stop().await;
}

/// The endpoint's host is the name verified when `tls.server_name` is absent: a certificate
/// for 127.0.0.1 (an IP SAN) verifies at `https://127.0.0.1:port`.
#[tokio::test]
async fn endpoint_host_is_the_default_name() {
    let ca = Ca::new("upstream CA");
    let upstream = proto_upstream(Some(server_tls(
        &ca.issue(&["127.0.0.1"]),
        &["http/1.1"],
        None,
    )))
    .await;
    let ca_path = ca.write_pem("ca.pem");
    let tls = format!("{{ ca: '{}' }}", ca_path.display());
    let proxy = start_proxy(&config(&upstream, &tls)).await;
    let got = get(&proxy.url("/")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.text(), "HTTP/1.1");
    proxy.stop().await;
}

/// An upstream that requires a client certificate from its own client CA: with
/// `tls.client_cert` and `tls.client_key` from that CA, 200; without, the handshake fails and
/// the answer is 502.
#[tokio::test]
async fn mtls_required_given_and_not_given() {
    let ca = Ca::new("upstream CA");
    let clients = Ca::new("client CA");
    let upstream = proto_upstream(Some(server_tls(
        &ca.issue(&[SERVER_NAME]),
        &["h2", "http/1.1"],
        Some(&clients),
    )))
    .await;
    let ca_path = ca.write_pem("ca.pem");
    let (cert, key) = clients
        .issue(&["sluice.client"])
        .write(&clients.dir, "client");
    let with_cert = format!(
        "{{ ca: '{}', server_name: {SERVER_NAME}, client_cert: '{}', client_key: '{}' }}",
        ca_path.display(),
        cert.display(),
        key.display()
    );
    let proxy = start_proxy(&config(&upstream, &with_cert)).await;
    let got = get(&proxy.url("/")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    proxy.stop().await;

    let proxy = start_proxy(&config(&upstream, &trusting(&ca_path, SERVER_NAME))).await;
    let got = get(&proxy.url("/")).await;
    // TLS 1.3: the server checks the client's certificate after the client has finished its
    // handshake, so the refusal may come as an alert on the first read: either way a 502.
    got.assert_problem(StatusCode::BAD_GATEWAY, "upstream-unavailable");
    proxy.stop().await;
}

/// A reload reads `tls.ca` again: the file first holds another CA (502), then the upstream's
/// CA is written to the same path and a reload makes the next request verify (200).
#[tokio::test]
async fn reload_reads_the_ca_file_again() {
    let ca = Ca::new("upstream CA");
    let other = Ca::new("another CA");
    let upstream = proto_upstream(Some(server_tls(
        &ca.issue(&[SERVER_NAME]),
        &["h2", "http/1.1"],
        None,
    )))
    .await;
    let ca_path = other.write_pem("ca.pem");
    let file = ConfigFile::new(&config(&upstream, &trusting(&ca_path, SERVER_NAME)));
    let proxy = start_proxy_file(&file).await;
    get(&proxy.url("/"))
        .await
        .assert_problem(StatusCode::BAD_GATEWAY, "upstream-unavailable");
    std::fs::copy(ca.write_pem("right.pem"), &ca_path).unwrap();
    let reloaded = proxy.reload().await;
    assert_eq!(reloaded.status, StatusCode::OK, "{}", reloaded.text());
    // The failed endpoint is skipped for a while (all endpoints down: it is tried anyway).
    let got = get(&proxy.url("/")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    proxy.stop().await;
}

/// The errors of an upstream's `tls:`, at the field: a client certificate without its key
/// (and the reverse), a CA file that is missing or holds no certificate, a server name that
/// is not one, and a mix of `http://` and `https://` endpoints.
#[test]
fn tls_config_errors_name_the_field() {
    let ca = Ca::new("upstream CA");
    let (cert, key) = ca.issue(&["sluice.client"]).write(&ca.dir, "client");
    let not_pem = ca.dir.join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let cases = [
        (
            format!("{{ client_cert: '{}' }}", cert.display()),
            "upstreams.api.tls.client_key",
            "client_cert and client_key go together",
        ),
        (
            format!("{{ client_key: '{}' }}", key.display()),
            "upstreams.api.tls.client_cert",
            "client_cert and client_key go together",
        ),
        (
            "{ ca: /nonexistent/ca.pem }".to_owned(),
            "upstreams.api.tls.ca",
            "/nonexistent/ca.pem",
        ),
        (
            format!("{{ ca: '{}' }}", not_pem.display()),
            "upstreams.api.tls.ca",
            "holds no PEM certificate",
        ),
        (
            "{ server_name: 'not a name' }".to_owned(),
            "upstreams.api.tls.server_name",
            "expected a host name",
        ),
    ];
    for (tls, field, says) in cases {
        let yaml = format!(
            "server: {{ listen: 127.0.0.1:0 }}\nupstreams:\n  api:\n    endpoints: ['https://127.0.0.1:1']\n    tls: {tls}\nroutes: [{{ name: all, upstream: api }}]\n"
        );
        let errors = match sluice::config::from_yaml(&yaml, Path::new("t.yaml")) {
            Ok(_) => panic!("expected an invalid config:\n{yaml}"),
            Err(ConfigError::Invalid { errors, .. }) => errors,
            Err(e) => panic!("{e:?}"),
        };
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0].path, field, "{}", errors[0]);
        assert_eq!(errors[0].line, Some(5), "{}", errors[0]);
        assert!(errors[0].message.contains(says), "{}", errors[0]);
    }
    let mixed = "server: { listen: 127.0.0.1:0 }\nupstreams:\n  api:\n    endpoints: ['https://127.0.0.1:1', 'http://127.0.0.1:2']\nroutes: [{ name: all, upstream: api }]\n";
    match sluice::config::from_yaml(mixed, Path::new("t.yaml")) {
        Err(ConfigError::Invalid { errors, .. }) => {
            assert_eq!(errors[0].path, "upstreams.api.endpoints", "{errors:#?}");
            assert!(errors[0].message.contains("mixes http:// and https://"));
        }
        other => panic!("expected an invalid config: {other:?}"),
    }
}

/// `tls:` on an upstream with `http://` endpoints is valid but unused: `sluice check` warns.
#[test]
fn tls_on_http_endpoints_is_a_warning() {
    let yaml = "server: { listen: 127.0.0.1:0 }\nupstreams:\n  api:\n    endpoints: ['http://127.0.0.1:1']\n    tls: { server_name: api.test }\nroutes: [{ name: all, upstream: api }]\n";
    let config = sluice::config::from_yaml(yaml, Path::new("t.yaml")).unwrap();
    let warnings = sluice::config::warnings(&config);
    assert!(
        warnings
            .iter()
            .any(|w| w.path == "upstreams.api.tls" && w.message.contains("not used")),
        "{warnings:?}"
    );
}

/// A failed handshake is a connect failure: with one endpoint whose certificate does not
/// verify and one that does, every request is answered by the good one (retried there, then
/// the bad one skipped), none fails.
#[tokio::test]
async fn a_failed_handshake_goes_to_another_endpoint() {
    let ca = Ca::new("upstream CA");
    let stranger = Ca::new("unknown CA");
    let alpn = ["h2", "http/1.1"];
    let good = proto_upstream(Some(server_tls(&ca.issue(&[SERVER_NAME]), &alpn, None))).await;
    let bad = proto_upstream(Some(server_tls(
        &stranger.issue(&[SERVER_NAME]),
        &alpn,
        None,
    )))
    .await;
    let ca_path = ca.write_pem("ca.pem");
    let yaml = format!(
        "server: {{ listen: 127.0.0.1:0 }}\n\
         upstreams:\n  api: {{ endpoints: ['https://127.0.0.1:{}', 'https://127.0.0.1:{}'], balance: round_robin, tls: {} }}\n\
         routes: [{{ name: all, upstream: api }}]\n",
        bad.addr.port(),
        good.addr.port(),
        trusting(&ca_path, SERVER_NAME)
    );
    let proxy = start_proxy(&yaml).await;
    for _ in 0..6 {
        let got = get(&proxy.url("/")).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    }
    assert!(bad.connections() >= 1, "the bad endpoint was tried");
    assert_eq!(bad.requests(), 0);
    assert_eq!(good.requests(), 6);
    proxy.stop().await;
}

/// Active health checks of an `https://` upstream speak TLS (with the upstream's `tls`): the
/// endpoint stays healthy, and the checks reach it without any request. (Checks in cleartext
/// would fail the handshake and mark it unhealthy after one failure.)
#[tokio::test]
async fn health_checks_use_tls() {
    let ca = Ca::new("upstream CA");
    let upstream = proto_upstream(Some(server_tls(
        &ca.issue(&[SERVER_NAME]),
        &["http/1.1"],
        None,
    )))
    .await;
    let ca_path = ca.write_pem("ca.pem");
    let yaml = format!(
        "server: {{ listen: 127.0.0.1:0 }}\nadmin: {{ listen: 127.0.0.1:0 }}\n\
         upstreams:\n  api:\n    endpoints: ['https://127.0.0.1:{}']\n    tls: {}\n    \
         health_check: {{ path: /healthz, interval: 50ms, timeout: 2s, unhealthy_after: 1, healthy_after: 1 }}\n\
         routes: [{{ name: all, upstream: api }}]\n",
        upstream.addr.port(),
        trusting(&ca_path, SERVER_NAME)
    );
    let proxy = start_proxy(&yaml).await;
    until(
        "three checks reached the upstream",
        Duration::from_secs(10),
        || upstream.requests() >= 3,
    )
    .await;
    let stats = get(&proxy.admin_url("/stats")).await.json();
    assert_eq!(
        stats["upstreams"][0]["endpoints"][0]["state"], "healthy",
        "{stats}"
    );
    proxy.stop().await;
}
