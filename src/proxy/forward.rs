//! Rewriting requests for the upstream and responses for the client.
//!
//! What a reverse proxy owes both sides (RFC 9110 §7.6.1, and what NGINX and Envoy do):
//! hop-by-hop headers — the fixed list plus any named in `Connection` — are removed in both
//! directions; the client's `Host` is kept; `X-Forwarded-For` gets the peer appended and
//! `X-Forwarded-Proto` / `X-Forwarded-Host` are set. From a peer outside `trusted_proxies`,
//! `Forwarded` and `X-Real-IP` are removed: upstreams (Spring's `ForwardedHeaderFilter`, NGINX's
//! `real_ip` module) take the client's address from them, and a client must not pick its own.
//! So are `X-Original-URL` and `X-Rewrite-URL`, which some upstreams (IIS rewrites, Symfony and
//! Zend before 2018) route by instead of the path: a client could name `/login` there while
//! sluice routed `/anything` under another route's limits.

use std::net::IpAddr;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Version};

use crate::client::{Origin, X_FORWARDED_FOR};
use crate::proxy::pool::TeTrailers;

/// Headers that describe one hop and must never be forwarded.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// Request headers only a trusted proxy may send: they name the client or the path.
const FROM_TRUSTED_ONLY: [HeaderName; 4] = [
    header::FORWARDED,
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
];

/// Rewrites `req` in place for the upstream (see the module docs). The request is sent as
/// HTTP/1.1 whatever the client spoke. `trusted`: the peer is in `trusted_proxies`.
pub(crate) fn request<B>(req: &mut Request<B>, origin: Origin, trusted: bool) {
    // The authority of an HTTP/2 (or absolute-form) request becomes the Host header upstream.
    let authority_host = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    // `TE: trailers` goes on to an HTTP/2 upstream (the pool puts it back there): a gRPC
    // server may refuse a request without it.
    if asks_trailers(req.headers()) {
        req.extensions_mut().insert(TeTrailers);
    }
    let headers = req.headers_mut();
    // Includes `Upgrade`: an upgrade request gets it back from `upgrade_headers`.
    strip_hop_by_hop(headers);
    // A scan of the names present first: most requests carry none of them, and a removal
    // hashes its name whether or not it is there.
    if !trusted && headers.keys().any(|name| FROM_TRUSTED_ONLY.contains(name)) {
        for name in &FROM_TRUSTED_ONLY {
            headers.remove(name);
        }
    }
    if let Some(host) = authority_host {
        headers.insert(header::HOST, host);
    }
    let host = headers.get(header::HOST).cloned();
    append_forwarded_for(headers, origin.peer);
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if origin.https { "https" } else { "http" }),
    );
    match host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
    *req.version_mut() = Version::HTTP_11;
}

/// Rewrites an upstream response in place for the client.
pub(crate) fn response<B>(res: &mut Response<B>) {
    strip_hop_by_hop(res.headers_mut());
}

/// True when the request's `TE` lists `trailers`.
fn asks_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(header::TE).iter().any(|value| {
        value.to_str().is_ok_and(|v| {
            v.split(',').any(|item| {
                item.split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        })
    })
}

/// Puts back the two hop-by-hop headers an upgrade is made of (RFC 9110 §7.8), after
/// [`request`] or [`response`] removed them: `Upgrade: <protocol>` and `Connection: upgrade`,
/// and nothing else the other hop named in `Connection`.
pub(crate) fn upgrade_headers(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::UPGRADE, protocol);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// Position of a hop-by-hop header in [`HOP_BY_HOP`], if `name` is one.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    HOP_BY_HOP.iter().position(|h| h == name)
}

/// Removes the fixed hop-by-hop headers and every header named in `Connection`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names present (a handful) notes which hop-by-hop headers occur; only
    // those are then removed. Most requests carry none, most responses only `Connection:
    // keep-alive`: far cheaper than a hash probe for each of the nine names.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // `Connection` may name more headers. `close` names none, and a hop-by-hop name (most
        // often `keep-alive`) is removed below if present: compared as text, neither costs a
        // parse or a removal. Anything else is collected first (removing while borrowing is not
        // possible) — rare, so the allocation does not matter.
        let mut named: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            let Ok(value) = value.to_str() else { continue };
            for token in value.split(',').map(str::trim) {
                let known = token.is_empty()
                    || token.eq_ignore_ascii_case("close")
                    || HOP_BY_HOP
                        .iter()
                        .any(|h| token.eq_ignore_ascii_case(h.as_str()));
                if known {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    named.push(name);
                }
            }
        }
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// `X-Forwarded-For: <existing>, <peer>`, folded into one line so upstreams that read only the
/// first line see the whole chain. Without an existing line (most requests) the value is built on
/// the stack: its one allocation is the header value's.
fn append_forwarded_for(headers: &mut HeaderMap, peer: IpAddr) {
    let mut buf = [0u8; IP_TEXT_MAX];
    let ip = ip_text(peer, &mut buf);
    // One hash probe for the lookup and the write.
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Vacant(entry) => {
            if let Ok(line) = HeaderValue::from_bytes(ip) {
                entry.insert(line);
            }
        }
        Entry::Occupied(mut entry) => {
            let mut value = String::new();
            for existing in entry.iter() {
                match existing.to_str().map(str::trim) {
                    Ok("") | Err(_) => {}
                    Ok(s) => {
                        value.push_str(s);
                        value.push_str(", ");
                    }
                }
            }
            value.push_str(std::str::from_utf8(ip).unwrap_or_default());
            if let Ok(line) = HeaderValue::from_str(&value) {
                entry.insert(line);
            }
        }
    }
}

/// The longest text form of an IP address (an IPv4-mapped IPv6 address).
const IP_TEXT_MAX: usize = 45;

/// `ip` in its usual text form, written into `buf`. IPv4 — nearly every peer — is written by
/// hand: the `Display` machinery costs more than the rest of the header rewrite together.
fn ip_text(ip: IpAddr, buf: &mut [u8; IP_TEXT_MAX]) -> &[u8] {
    let mut len = 0;
    match ip {
        IpAddr::V4(v4) => {
            let mut put = |b: u8| {
                buf[len] = b;
                len += 1;
            };
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    put(b'.');
                }
                if octet >= 100 {
                    put(b'0' + octet / 100);
                }
                if octet >= 10 {
                    put(b'0' + (octet / 10) % 10);
                }
                put(b'0' + octet % 10);
            }
        }
        IpAddr::V6(_) => {
            use std::io::Write as _;
            let mut rest = &mut buf[..];
            let _ = write!(rest, "{ip}");
            len = IP_TEXT_MAX - rest.len();
        }
    }
    &buf[..len]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin {
            peer: "10.1.2.3".parse().unwrap(),
            https: false,
        }
    }

    /// Hop-by-hop headers, including those named in Connection, never reach the upstream.
    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut req = Request::builder()
            .uri("/x")
            .header("host", "api.example.com")
            .header("connection", "keep-alive, X-Secret")
            .header("x-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("x-kept", "yes")
            .body(())
            .unwrap();
        request(&mut req, origin(), false);
        let h = req.headers();
        assert!(h.get("connection").is_none());
        assert!(h.get("x-secret").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("te").is_none());
        assert_eq!(h["x-kept"], "yes");
        assert_eq!(h["host"], "api.example.com");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
    }

    /// An existing X-Forwarded-For chain (even over several lines) gets the peer appended.
    #[test]
    fn appends_to_forwarded_for_chain() {
        let mut req = Request::builder()
            .uri("/")
            .header("x-forwarded-for", "1.1.1.1, 2.2.2.2")
            .header("x-forwarded-for", "3.3.3.3")
            .body(())
            .unwrap();
        request(&mut req, origin(), false);
        let all: Vec<_> = req.headers().get_all("x-forwarded-for").iter().collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0], "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3");
    }

    /// Empty and non-text lines add nothing to the chain (no stray `, `); with no chain at all
    /// the peer alone is sent.
    #[test]
    fn forwarded_for_skips_empty_and_binary_lines() {
        let cases: [(&[&[u8]], &str); 4] = [
            (&[], "10.1.2.3"),
            (&[b""], "10.1.2.3"),
            (&[b"", b" 1.1.1.1 ", b"\xff"], "1.1.1.1, 10.1.2.3"),
            (&[b"1.1.1.1", b""], "1.1.1.1, 10.1.2.3"),
        ];
        for (lines, want) in cases {
            let mut req = Request::builder().uri("/").body(()).unwrap();
            for line in lines {
                let value = HeaderValue::from_bytes(line).unwrap();
                req.headers_mut().append("x-forwarded-for", value);
            }
            request(&mut req, origin(), false);
            let all: Vec<_> = req.headers().get_all("x-forwarded-for").iter().collect();
            assert_eq!(all, [want], "{lines:?}");
        }
    }

    /// Addresses are written exactly as `Display` writes them, the longest IPv6 form included.
    #[test]
    fn ip_text_matches_display() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.100.9.255",
            "127.0.0.1",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
            "::ffff:255.255.255.255",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut buf = [0; IP_TEXT_MAX];
            assert_eq!(ip_text(ip, &mut buf), ip.to_string().as_bytes());
        }
    }

    /// `Connection: keep-alive, Upgrade` removes the named hop-by-hop headers too.
    #[test]
    fn connection_naming_standard_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-a", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-a"));
    }

    /// `Forwarded`, `X-Real-IP`, `X-Original-URL` and `X-Rewrite-URL` (every line) reach the
    /// upstream only from a trusted peer.
    #[test]
    fn origin_and_rewrite_headers_only_from_trusted_peers() {
        for trusted in [false, true] {
            let mut req = Request::builder()
                .uri("/")
                .header("forwarded", "for=1.2.3.4")
                .header("forwarded", "for=5.6.7.8")
                .header("x-real-ip", "1.2.3.4")
                .header("x-original-url", "/login")
                .header("x-rewrite-url", "/login")
                .body(())
                .unwrap();
            request(&mut req, origin(), trusted);
            let h = req.headers();
            assert_eq!(
                h.get_all("forwarded").iter().count(),
                if trusted { 2 } else { 0 }
            );
            for name in ["x-real-ip", "x-original-url", "x-rewrite-url"] {
                assert_eq!(h.contains_key(name), trusted, "{name}");
            }
        }
    }

    /// An HTTP/2 request's authority becomes the upstream Host; the request goes out as HTTP/1.1.
    #[test]
    fn h2_authority_becomes_host() {
        let mut req = Request::builder()
            .uri("https://api.example.com/a?b=1")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        request(
            &mut req,
            Origin {
                https: true,
                ..origin()
            },
            false,
        );
        assert_eq!(req.headers()["host"], "api.example.com");
        assert_eq!(req.headers()["x-forwarded-proto"], "https");
        assert_eq!(req.version(), Version::HTTP_11);
    }
}
