//! The gate's parts one by one: which hosts, origins and `Authorization` fields pass.
//! (`tests/admin_access.rs` covers the same through real sockets.)

use std::net::SocketAddr;

use http::header::{AUTHORIZATION, HOST, ORIGIN};
use http::Request;

use super::{allowed, check, split_authority, Denied};
use crate::config::{AdminConfig, AdminToken};

fn admin(allowed_hosts: &[&str], token: Option<&str>) -> AdminConfig {
    AdminConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
        allowed_hosts: allowed_hosts.iter().map(|h| (*h).to_owned()).collect(),
        token_file: None,
        token: token.map(AdminToken::new),
    }
}

fn request(target: &str, headers: &[(http::HeaderName, &str)]) -> Request<()> {
    let mut req = Request::get(target);
    for (name, value) in headers {
        req = req.header(name, *value);
    }
    req.body(()).unwrap()
}

/// Pins: an authority's host and port; IPv6 keeps its brackets; an empty port is no port; user
/// info, a stray colon, a non-numeric port or one past 65535 make it unreadable.
#[test]
fn split_authority_into_host_and_port() {
    for (authority, split) in [
        ("127.0.0.1", Some(("127.0.0.1", None))),
        ("127.0.0.1:9901", Some(("127.0.0.1", Some(9901)))),
        ("localhost:", Some(("localhost", None))),
        ("[::1]:9901", Some(("[::1]", Some(9901)))),
        ("[::1]", Some(("[::1]", None))),
        ("sluice.internal:80", Some(("sluice.internal", Some(80)))),
        ("", None),
        (":80", None),
        ("a:b", None),
        ("a:80:80", None),
        ("a:65536", None),
        ("a:+80", None),
        ("::1", None),
        ("[::1]x", None),
        ("[::1", None),
        ("user@localhost", None),
    ] {
        assert_eq!(split_authority(authority), split, "{authority:?}");
    }
}

/// Pins: IP literals and `localhost` always pass; names only when listed, case-insensitively
/// and with one trailing dot ignored; look-alikes do not.
#[test]
fn allowed_hosts_and_look_alikes() {
    let list = ["sluice.internal".to_owned()];
    for host in [
        "127.0.0.1",
        "10.1.2.3",
        "[::1]",
        "[2001:db8::7]",
        "localhost",
        "LocalHost",
        "localhost.",
        "sluice.internal",
        "SLUICE.Internal",
        "sluice.internal.",
    ] {
        assert!(allowed(host, &list), "{host:?} refused");
    }
    for host in [
        "attacker.example",
        "localhost.attacker.example",
        "127.0.0.1.nip.io",
        "sluice.internal.attacker.example",
        "evil.sluice.internal",
        "sluice.internal..",
        "[not-an-ip]",
        "127.1",
        "",
    ] {
        assert!(!allowed(host, &list), "{host:?} allowed");
    }
}

/// Pins: the order and the scope of the checks — Host on every path (health included), then
/// Origin on every request that has one, then the token everywhere but the open paths.
/// (Which origins pass: [`origin_is_the_request_host_and_port_or_listed`].)
#[test]
fn check_host_then_origin_then_token() {
    let open = admin(&[], None);
    let locked = admin(&["sluice.internal"], Some("s3cret"));
    let ok = |admin: &AdminConfig, req: &Request<()>, open: bool| check(admin, req, open);

    let foreign = request("/healthz", &[(HOST, "attacker.example")]);
    assert_eq!(ok(&open, &foreign, true), Err(Denied::Host));
    assert_eq!(ok(&locked, &foreign, true), Err(Denied::Host));
    assert_eq!(ok(&open, &request("/x", &[]), false), Err(Denied::Host));
    let two_hosts = request("/x", &[(HOST, "127.0.0.1"), (HOST, "127.0.0.1")]);
    assert_eq!(ok(&open, &two_hosts, false), Err(Denied::Host));
    // An absolute-form target names the host; the Host field is then ignored.
    let absolute = request("http://attacker.example/config", &[(HOST, "127.0.0.1")]);
    assert_eq!(ok(&open, &absolute, false), Err(Denied::Host));
    let absolute = request(
        "http://localhost:9901/config",
        &[(HOST, "attacker.example")],
    );
    assert_eq!(ok(&open, &absolute, false), Ok(()));

    for origin in [
        "http://evil.example",
        "null",
        "http://localhost.evil.example:9901",
        "evil",
    ] {
        let req = request("/reload", &[(HOST, "127.0.0.1:9901"), (ORIGIN, origin)]);
        assert_eq!(ok(&open, &req, false), Err(Denied::Origin), "{origin}");
    }
    let listed = request(
        "/reload",
        &[
            (HOST, "sluice.internal:9901"),
            (ORIGIN, "https://sluice.internal"),
            (AUTHORIZATION, "Bearer s3cret"),
        ],
    );
    assert_eq!(ok(&locked, &listed, false), Ok(()));

    let host = [(HOST, "localhost")];
    assert_eq!(
        ok(&locked, &request("/config", &host), false),
        Err(Denied::Token)
    );
    assert_eq!(ok(&locked, &request("/readyz", &host), true), Ok(()));
    assert_eq!(ok(&open, &request("/config", &host), false), Ok(()));
}

/// Pins: exactly one `Authorization: Bearer <token>` with the exact token passes; the scheme is
/// case-insensitive and spaces around the token do not count; anything else is refused.
#[test]
fn bearer_token_must_match_exactly() {
    let locked = admin(&[], Some("s3cret-token"));
    let with = |values: &[&str]| {
        let mut headers = vec![(HOST, "127.0.0.1")];
        headers.extend(values.iter().map(|v| (AUTHORIZATION, *v)));
        check(&locked, &request("/metrics", &headers), false)
    };
    for good in [
        "Bearer s3cret-token",
        "bearer s3cret-token",
        "BEARER   s3cret-token ",
    ] {
        assert_eq!(with(&[good]), Ok(()), "{good:?}");
    }
    for bad in [
        &[][..],
        &["Bearer"],
        &["Bearer "],
        &["Bearer s3cret"],
        &["Bearer s3cret-token2"],
        &["Bearer S3CRET-TOKEN"],
        &["Basic czNjcmV0LXRva2Vu"],
        &["s3cret-token"],
        &["Bearers3cret-token"],
        &["Bearer s3cret-token", "Bearer s3cret-token"],
    ] {
        assert_eq!(with(bad), Err(Denied::Token), "{bad:?}");
    }
}

/// Regression (issue 22: any IP-literal `Origin` passed, so a page served from
/// `http://203.0.113.7` could make an operator's browser `POST /reload`): an `Origin` passes only
/// when its host and port (explicit, or its scheme's 80 / 443) are the request's own — a
/// `Host` without a port being on 80 — or its host is listed in `allowed_hosts` (any port).
#[test]
fn origin_is_the_request_host_and_port_or_listed() {
    let admin = admin(&["sluice.internal"], None);
    let with = |host: &str, origin: &str| {
        let req = request("/reload", &[(HOST, host), (ORIGIN, origin)]);
        check(&admin, &req, false)
    };
    for (host, origin) in [
        ("127.0.0.1:9901", "http://127.0.0.1:9901"),
        ("127.0.0.1:9901", "HTTP://127.0.0.1:9901"),
        ("127.0.0.1:9901", "https://127.0.0.1:9901"),
        ("127.0.0.1", "http://127.0.0.1"),
        ("127.0.0.1", "http://127.0.0.1:80"),
        ("127.0.0.1:80", "http://127.0.0.1"),
        ("127.0.0.1:443", "https://127.0.0.1"),
        ("[::1]:9901", "http://[::1]:9901"),
        ("LocalHost:9901", "http://localhost.:9901"),
        ("127.0.0.1:9901", "http://sluice.internal"),
        ("127.0.0.1:9901", "https://SLUICE.internal:8443"),
        ("sluice.internal", "http://sluice.internal:1"),
    ] {
        assert_eq!(with(host, origin), Ok(()), "Host: {host}, Origin: {origin}");
    }
    for (host, origin) in [
        ("127.0.0.1:9901", "http://203.0.113.7"),
        ("127.0.0.1:9901", "http://203.0.113.7:9901"),
        ("127.0.0.1:9901", "http://10.0.0.1:9901"),
        ("127.0.0.1:9901", "http://[::1]:9901"),
        ("127.0.0.1:9901", "http://localhost:9901"),
        ("127.0.0.1:9901", "http://127.0.0.1"),
        ("127.0.0.1:9901", "http://127.0.0.1:9902"),
        ("127.0.0.1", "https://127.0.0.1"),
        ("127.0.0.1", "http://127.0.0.1:8080"),
        ("localhost:9901", "http://localhost"),
        ("127.0.0.1:9901", "ftp://127.0.0.1:9901"),
        ("127.0.0.1:9901", "http://127.0.0.1:9901/"),
        ("127.0.0.1:9901", "http://127.0.0.1:99999"),
        ("127.0.0.1:9901", "null"),
    ] {
        assert_eq!(
            with(host, origin),
            Err(Denied::Origin),
            "Host: {host}, Origin: {origin}"
        );
    }
    // An absolute-form `https://` target: its host without a port is on 443.
    let req = request(
        "https://127.0.0.1/reload",
        &[(HOST, "127.0.0.1"), (ORIGIN, "https://127.0.0.1")],
    );
    assert_eq!(check(&admin, &req, false), Ok(()));
}
