//! Route matching: the first route, in file order, whose host, path and method match.
//!
//! Matching never allocates: the host is compared case-insensitively in place and the path
//! is a byte comparison. A linear scan in file order is what users expect ("first match wins")
//! and is fast for the tens of routes an edge proxy has; `benches/hot_path.rs` measures 10 and
//! 1,000 routes.

use http::{Method, Request};

use crate::config::{HostMatch, PathMatch, RouteMatch};

/// A compiled route table: index `i` is route `i` of the config.
#[derive(Debug, Clone, Default)]
pub struct Router {
    matchers: Vec<RouteMatch>,
}

/// The parts of a request that routing looks at.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Host without port; case as sent.
    pub host: Option<&'a str>,
    /// The path, without the query.
    pub path: &'a str,
    /// The method.
    pub method: &'a Method,
}

// === impl Router ===

impl Router {
    /// Compiles the matchers, in file order.
    pub fn new(matchers: Vec<RouteMatch>) -> Self {
        Router { matchers }
    }

    /// The index of the first route that matches `target`.
    pub fn find(&self, target: &Target<'_>) -> Option<usize> {
        self.matchers.iter().position(|m| matches(m, target))
    }
}

// === impl Target ===

impl<'a> Target<'a> {
    /// Reads host (URI authority for HTTP/2 and absolute-form, else the `Host` header), path and
    /// method from a request.
    pub fn of<B>(req: &'a Request<B>) -> Self {
        let host = req
            .uri()
            .host()
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .map(strip_port);
        Target {
            host,
            path: req.uri().path(),
            method: req.method(),
        }
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`; a trailing dot is dropped too.
/// Bytes, not `str` patterns: it runs for every request.
fn strip_port(host: &str) -> &str {
    let bytes = host.as_bytes();
    let end = if bytes.first() == Some(&b'[') {
        bytes
            .iter()
            .position(|&b| b == b']')
            .map_or(bytes.len(), |i| i + 1)
    } else {
        bytes
            .iter()
            .rposition(|&b| b == b':')
            .unwrap_or(bytes.len())
    };
    let end = if end > 0 && bytes[end - 1] == b'.' {
        end - 1
    } else {
        end
    };
    // `end` is at an ASCII byte (`]`, `:`, `.`) or the end: a char boundary.
    host.get(..end).unwrap_or(host)
}

fn matches(m: &RouteMatch, t: &Target<'_>) -> bool {
    if let Some(methods) = &m.methods {
        if !methods.iter().any(|x| x == t.method) {
            return false;
        }
    }
    if let Some(want) = &m.host {
        let Some(host) = t.host else { return false };
        let ok = match want {
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
            HostMatch::Suffix(suffix) => {
                // `suffix` is `.example.com`: the host needs at least one more label in front.
                host.len() > suffix.len()
                    && host.as_bytes()[host.len() - suffix.len()..]
                        .eq_ignore_ascii_case(suffix.as_bytes())
            }
        };
        if !ok {
            return false;
        }
    }
    match &m.path {
        PathMatch::Exact(p) => t.path == p,
        PathMatch::Prefix(p) => path_has_prefix(t.path, p),
    }
}

/// Segment-aware prefix match: `/orders` matches `/orders`, `/orders/`, `/orders/1` and
/// `/orders.csv`, not `/ordersfoo`. A `.` ends the name as a `/` does: many upstreams serve
/// `/login.json` (Rails' `(.:format)`, Spring MVC's suffix patterns before 5.3) or `/login.`
/// (Windows drops trailing dots) as `/login`, so a route's limits must cover those spellings
/// too. (`;` parameters are gone already: routes see `crate::canonical::match_path`.) `prefix`
/// has no trailing slash except for `/` itself.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with(['/', '.']),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<HostMatch>, path: PathMatch, methods: Option<Vec<Method>>) -> RouteMatch {
        RouteMatch {
            host,
            path,
            methods,
        }
    }

    fn t<'a>(host: Option<&'a str>, path: &'a str, method: &'a Method) -> Target<'a> {
        Target { host, path, method }
    }

    /// Prefixes match whole segments only, a `.` suffix included (`/orders.csv`).
    #[test]
    fn prefix_is_segment_aware() {
        assert!(path_has_prefix("/orders", "/orders"));
        assert!(path_has_prefix("/orders/", "/orders"));
        assert!(path_has_prefix("/orders/1", "/orders"));
        assert!(!path_has_prefix("/ordersfoo", "/orders"));
        assert!(!path_has_prefix("/orders-v2", "/orders"));
        assert!(path_has_prefix("/orders.csv", "/orders"));
        assert!(path_has_prefix("/orders.", "/orders"));
        assert!(path_has_prefix("/orders.v1/x", "/orders"));
        assert!(!path_has_prefix("/order", "/orders"));
        assert!(path_has_prefix("/anything", "/"));
    }

    /// Hosts match case-insensitively, ports ignored, wildcards need a label in front.
    #[test]
    fn host_matching() {
        let get = Method::GET;
        let exact = route(
            Some(HostMatch::Exact("api.example.com".into())),
            PathMatch::default(),
            None,
        );
        let wild = route(
            Some(HostMatch::Suffix(".example.com".into())),
            PathMatch::default(),
            None,
        );
        assert!(matches(&exact, &t(Some("API.Example.com"), "/", &get)));
        assert!(!matches(&exact, &t(Some("www.example.com"), "/", &get)));
        assert!(!matches(&exact, &t(None, "/", &get)));
        assert!(matches(&wild, &t(Some("a.EXAMPLE.com"), "/", &get)));
        assert!(matches(&wild, &t(Some("a.b.example.com"), "/", &get)));
        assert!(!matches(&wild, &t(Some("example.com"), "/", &get)));
        assert!(!matches(&wild, &t(Some("badexample.com"), "/", &get)));
    }

    /// Ports and trailing dots are removed before matching.
    #[test]
    fn strip_port_forms() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("example.com."), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    /// The first matching route in file order wins; methods filter.
    #[test]
    fn first_match_wins() {
        let r = Router::new(vec![
            route(
                None,
                PathMatch::Exact("/orders/new".into()),
                Some(vec![Method::POST]),
            ),
            route(None, PathMatch::Prefix("/orders".into()), None),
            route(None, PathMatch::default(), None),
        ]);
        assert_eq!(r.find(&t(None, "/orders/new", &Method::POST)), Some(0));
        assert_eq!(r.find(&t(None, "/orders/new", &Method::GET)), Some(1));
        assert_eq!(r.find(&t(None, "/ordersfoo", &Method::GET)), Some(2));
        let none = Router::new(vec![route(None, PathMatch::Prefix("/a".into()), None)]);
        assert_eq!(none.find(&t(None, "/b", &Method::GET)), None);
    }
}
