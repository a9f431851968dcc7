//! Rewriting requests for the upstream and responses for the client.
//!
//! What a reverse proxy owes both sides (RFC 9110 §7.6.1, and what NGINX and Envoy do):
//! hop-by-hop headers — the fixed list plus any named in `Connection` — are removed in both
//! directions; the client's `Host` is kept; `X-Forwarded-For` gets the peer appended and
//! `X-Forwarded-Proto` / `X-Forwarded-Host` are set.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Version};

/// Headers that describe one hop and must never be forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Where the request came from, as the upstream should learn it.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    /// The socket peer.
    pub peer: IpAddr,
    /// True on the TLS listener.
    pub https: bool,
}

/// Rewrites `req` in place for the upstream (see the module docs). The request is sent as
/// HTTP/1.1 whatever the client spoke.
pub fn request<B>(req: &mut Request<B>, origin: Origin) {
    // The authority of an HTTP/2 (or absolute-form) request becomes the Host header upstream.
    let authority_host = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    // `Upgrade` is hop-by-hop too; sluice does not tunnel upgraded connections.
    headers.remove(header::UPGRADE);
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
pub fn response<B>(res: &mut Response<B>) {
    strip_hop_by_hop(res.headers_mut());
    res.headers_mut().remove(header::UPGRADE);
}

/// Removes the fixed hop-by-hop headers and every header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Names listed in Connection are collected first: removing while iterating is not possible.
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        // `remove` on an absent header is a cheap hash probe; no allocation.
        headers.remove(name);
    }
}

/// `X-Forwarded-For: <existing>, <peer>`, folded into one line so upstreams that read only the
/// first line see the whole chain.
fn append_forwarded_for(headers: &mut HeaderMap, peer: IpAddr) {
    use std::fmt::Write as _;
    let mut value = String::with_capacity(64);
    for (i, existing) in headers.get_all(&X_FORWARDED_FOR).iter().enumerate() {
        if let Ok(s) = existing.to_str() {
            if i > 0 {
                value.push_str(", ");
            }
            value.push_str(s.trim());
        }
    }
    if !value.is_empty() {
        value.push_str(", ");
    }
    let _ = write!(value, "{peer}");
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR, v);
    }
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
        request(&mut req, origin());
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
        request(&mut req, origin());
        let all: Vec<_> = req.headers().get_all("x-forwarded-for").iter().collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0], "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3");
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
        );
        assert_eq!(req.headers()["host"], "api.example.com");
        assert_eq!(req.headers()["x-forwarded-proto"], "https");
        assert_eq!(req.version(), Version::HTTP_11);
    }
}
