//! The one check every admin request passes before its path is looked at.
//!
//! The admin listener answers whoever reaches its address, and the commonest way to reach it
//! from outside is through an operator's browser:
//!
//! - **DNS rebinding**: a page at `attacker.example` makes its own name resolve to `127.0.0.1`
//!   and reads `http://attacker.example:9901/config` as same-origin. The browser still sends
//!   `Host: attacker.example`, so the host of the request must be an IP literal, `localhost`
//!   or a name the operator listed in `admin.allowed_hosts` (any port) — else 403.
//! - **Cross-site requests** (CSRF): any page can make the browser send `POST /reload` without
//!   reading the answer. Browsers mark such requests with `Origin`: a request whose `Origin` is
//!   not the request's own host and port, nor a host listed in `admin.allowed_hosts`, gets 403
//!   (so does `null`), whatever its method — the contract requires it for `POST`, and no
//!   same-origin request a browser makes to the admin listener carries a foreign `Origin`. An
//!   IP literal is no exception: a page served from `http://203.0.113.7` is another site, and
//!   so is one on another port of the same host.
//! - **A shared network**: with `admin.token_file`, every path but `/healthz` and `/readyz`
//!   needs `Authorization: Bearer <token>` — else 401.
//!
//! The token is compared with `subtle`'s constant-time slice comparison (the RustCrypto
//! project's, already in the build through rustls): the time taken does not depend on how many
//! leading bytes match, so the token cannot be guessed byte by byte. The comparison returns at
//! once when the lengths differ, so a token's length is not secret: make tokens long and of a
//! fixed length (e.g. 32 random bytes in hex).

use std::net::{Ipv4Addr, Ipv6Addr};

use http::header::{AUTHORIZATION, HOST, ORIGIN};
use http::uri::Scheme;
use http::Request;
use subtle::ConstantTimeEq;

use crate::config::{AdminConfig, AdminToken};

/// Why the gate refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Denied {
    /// `Host` absent, repeated, malformed, or not an allowed host: 403.
    Host,
    /// `Origin` names a host that is not allowed: 403.
    Origin,
    /// The bearer token is missing or wrong: 401.
    Token,
}

/// Admits `req` or says why not. `open`: the path needs no token (`/healthz`, `/readyz`);
/// `Host` and `Origin` are checked on every path.
pub(super) fn check<B>(admin: &AdminConfig, req: &Request<B>, open: bool) -> Result<(), Denied> {
    let Some((host, port)) = request_authority(req).and_then(split_authority) else {
        return Err(Denied::Host);
    };
    if !allowed(host, &admin.allowed_hosts) {
        return Err(Denied::Host);
    }
    // The listener speaks plain HTTP: a host without a port is on 80, unless an absolute-form
    // target said `https`.
    let default_port = if req.uri().scheme() == Some(&Scheme::HTTPS) {
        443
    } else {
        80
    };
    let own = (host, port.unwrap_or(default_port));
    if !origin_allowed(req, own, &admin.allowed_hosts) {
        return Err(Denied::Origin);
    }
    match &admin.token {
        Some(token) if !open && !bearer_matches(req, token) => Err(Denied::Token),
        _ => Ok(()),
    }
}

/// The authority the request is for: that of an absolute-form target (the `Host` field is then
/// ignored, RFC 9112 §3.2.2), else the single `Host` field. `None` when absent, repeated or not
/// text.
fn request_authority<B>(req: &Request<B>) -> Option<&str> {
    if let Some(authority) = req.uri().authority() {
        return Some(authority.as_str());
    }
    let mut hosts = req.headers().get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(host), None) => host.to_str().ok(),
        _ => None,
    }
}

/// An authority `host[:port]` as its host (an IPv6 address in brackets, kept with them) and its
/// port (`None` when absent or empty); `None` when it is not of that form (user info, a stray
/// `:`, a port that is not a number up to 65535).
fn split_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => {
            let end = rest.find(']')?;
            authority.split_at(end + 2)
        }
        None => authority.split_at(authority.find(':').unwrap_or(authority.len())),
    };
    let port = match port.strip_prefix(':') {
        None if port.is_empty() => None,
        Some("") => None,
        Some(digits) if digits.bytes().all(|b| b.is_ascii_digit()) => Some(digits.parse().ok()?),
        _ => return None,
    };
    (!host.is_empty() && !host.contains('@')).then_some((host, port))
}

/// An IP literal (`127.0.0.1`, `[::1]`), `localhost`, or an entry of `allowed_hosts` (stored
/// lower case without a trailing dot); names compare case-insensitively, one trailing dot
/// ignored.
fn allowed(host: &str, allowed_hosts: &[String]) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().is_ok();
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    name(host).eq_ignore_ascii_case("localhost") || listed(host, allowed_hosts)
}

/// An entry of `allowed_hosts`, case-insensitively, one trailing dot ignored.
fn listed(host: &str, allowed_hosts: &[String]) -> bool {
    allowed_hosts
        .iter()
        .any(|a| a.eq_ignore_ascii_case(name(host)))
}

/// `host` without its one trailing dot (`localhost.` is `localhost`).
fn name(host: &str) -> &str {
    host.strip_suffix('.').unwrap_or(host)
}

/// No `Origin` (not a browser's cross-site request), or a single `http://` or `https://` origin
/// whose host and port (explicit, else the scheme's 80 or 443) are `own`, the request's — or
/// whose host is listed in `allowed_hosts`, on any port, as a listed `Host` is. `null`, other
/// schemes and anything unreadable are refused.
fn origin_allowed<B>(req: &Request<B>, own: (&str, u16), allowed_hosts: &[String]) -> bool {
    let mut origins = req.headers().get_all(ORIGIN).iter();
    let origin = match (origins.next(), origins.next()) {
        (None, _) => return true,
        (Some(origin), None) => origin,
        (Some(_), Some(_)) => return false,
    };
    let Some((scheme, authority)) = origin.to_str().ok().and_then(|o| o.split_once("://")) else {
        return false;
    };
    let default_port = if scheme.eq_ignore_ascii_case("http") {
        80
    } else if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        return false;
    };
    let Some((host, port)) = split_authority(authority) else {
        return false;
    };
    let (own_host, own_port) = own;
    let same =
        name(host).eq_ignore_ascii_case(name(own_host)) && port.unwrap_or(default_port) == own_port;
    same || listed(host, allowed_hosts)
}

/// A single `Authorization: Bearer <token>` (scheme case-insensitive, RFC 9110 §11.1) whose
/// token equals `expected`, compared in constant time (see the module docs).
fn bearer_matches<B>(req: &Request<B>, expected: &AdminToken) -> bool {
    let mut fields = req.headers().get_all(AUTHORIZATION).iter();
    let value = match (fields.next(), fields.next()) {
        (Some(value), None) => value.as_bytes(),
        _ => return false,
    };
    let Some(space) = value.iter().position(|&b| b == b' ') else {
        return false;
    };
    let (scheme, presented) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"Bearer") {
        return false;
    }
    presented.trim_ascii().ct_eq(expected.as_bytes()).into()
}

#[cfg(test)]
mod tests;
