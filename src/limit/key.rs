//! Who a request counts against: the client address and the bucket key of each rate limit.
//!
//! Used at the top of the pipeline's rate-limit stage: from the socket peer and the request
//! headers, [`KeyExtractor::client_ip`] works out the client once per request, and
//! [`KeyExtractor::key`] turns it (or a header) into a [`LimitKey`] for each limit of the route.
//!
//! Nothing here allocates: keys are `Copy` values (an address or a keyed 64-bit hash), so the
//! hot path never builds a `String` per request.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv6Addr};

use http::header::HeaderMap;
use ipnet::IpNet;

use crate::client::X_FORWARDED_FOR;
use crate::config::KeySpec;

/// What a rate-limit bucket is keyed by. Copy, no heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitKey {
    /// `key: global`: one bucket for the whole route.
    Global,
    /// `key: client_ip`: the client address, IPv6 already cut to the configured prefix.
    Ip(IpAddr),
    /// `key: header:<Name>`: a keyed hash of the header's value(s).
    Header(u64),
}

/// Turns a request into bucket keys. Built once per config (per `Runtime`); shared by all
/// requests (`Send + Sync`, read-only after construction).
#[derive(Debug)]
pub struct KeyExtractor {
    /// `server.trusted_proxies`: only these peers may tell us who the client is through
    /// `X-Forwarded-For`. Canonical form (IPv4-mapped IPv6 networks turned into IPv4) so that
    /// one `contains` check per address is enough.
    trusted: Vec<IpNet>,
    /// `server.ipv6_key_prefix` (0..=128): a client usually owns a whole /64, so keying single
    /// IPv6 addresses would let it escape its limit by rotating addresses.
    ipv6_prefix: u8,
    /// Keyed SipHash-1-3 with a random per-process key: header values are chosen by clients, and
    /// an unkeyed hash would let one pick values that collide with another client's bucket.
    hasher: RandomState,
}

// === impl KeyExtractor ===

impl KeyExtractor {
    /// A key extractor for `server.trusted_proxies` and `server.ipv6_key_prefix`.
    ///
    /// A prefix above 128 is treated as 128 (validation rejects it; this only avoids a panic).
    pub fn new(trusted_proxies: &[IpNet], ipv6_key_prefix: u8) -> Self {
        let trusted = trusted_proxies
            .iter()
            .map(|net| canonical_net(*net))
            .collect();
        KeyExtractor {
            trusted,
            ipv6_prefix: ipv6_key_prefix.min(128),
            hasher: RandomState::new(),
        }
    }

    /// The same settings applied with `previous`'s hash key: header keys hash as before, so the
    /// buckets a reload carries over still belong to the same header values.
    pub(crate) fn keeping_hash_key(mut self, previous: &KeyExtractor) -> Self {
        self.hasher = previous.hasher.clone();
        self
    }

    /// The client address of a request.
    ///
    /// The socket peer, unless the peer is in `trusted_proxies`: then `X-Forwarded-For` is read
    /// from the right (the end our own proxy appended) and the first address that is not itself
    /// trusted is the client. Entries further left were written by whoever that client is, so
    /// they may be spoofed and are ignored.
    ///
    /// - Several `X-Forwarded-For` lines count as one list, in order (RFC 9110 §5.3).
    /// - Whitespace around entries and empty list elements (`a, , b`) are ignored.
    /// - Entries may be `1.2.3.4`, `2001:db8::1`, `[2001:db8::1]`, `1.2.3.4:5678` or
    ///   `[2001:db8::1]:5678` (some proxies add the port).
    /// - If every entry is trusted, the leftmost one is the client (the chain is all ours).
    /// - An entry that is not an address (`unknown`, garbage, a zone id) stops the walk: the
    ///   result is the last good address so far, i.e. the nearest trusted hop to its right, or
    ///   the peer when the rightmost entry is bad. Everything left of a bad entry is unverifiable,
    ///   so all its clients share the bucket of that hop rather than pick their own.
    /// - IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, what a dual-stack socket reports for an
    ///   IPv4 peer) are turned into IPv4 before anything else.
    ///
    /// Does not allocate.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.is_trusted(peer) {
            return peer;
        }
        // The last address accepted so far, walking right to left.
        let mut client = peer;
        // The last header line holds the rightmost entries.
        for line in headers.get_all(X_FORWARDED_FOR).iter().rev() {
            for entry in line.as_bytes().rsplit(|&b| b == b',') {
                let entry = entry.trim_ascii();
                if entry.is_empty() {
                    continue;
                }
                let Some(ip) = parse_xff_entry(entry) else {
                    return client;
                };
                client = ip.to_canonical();
                if !self.is_trusted(client) {
                    return client;
                }
            }
        }
        client
    }

    /// The key a request waits under in a cap's queue with `fair_by: spec`, as a number: a
    /// keyed hash of the client address (already cut to its IPv6 prefix) or the header's
    /// value(s), so that a client cannot pick a value that shares another's turn.
    pub fn queue_key(&self, spec: &KeySpec, client_ip: IpAddr, headers: &HeaderMap) -> u64 {
        match self.key(spec, client_ip, headers) {
            LimitKey::Global => 0,
            LimitKey::Ip(ip) => self.hasher.hash_one(ip),
            LimitKey::Header(hash) => hash,
        }
    }

    /// The bucket key of one limit for a request whose client is `client_ip`.
    ///
    /// - `global`: [`LimitKey::Global`].
    /// - `client_ip`: the address, IPv6 cut to `ipv6_key_prefix` bits, IPv4 as is.
    /// - `header:<Name>`: a keyed 64-bit hash of the header's value; when the header appears on
    ///   several lines, of all of them in order (length-prefixed, so `a`,`b` ≠ `ab`). A missing
    ///   header falls back to the `client_ip` key. Header keys are chosen by the client: they are
    ///   only meaningful when the upstream authenticates that header (an API key, say). The
    ///   rate stage refuses a request with several lines of a key header before this is called
    ///   (an upstream reads the first line, so hashing them all would let a client pick its
    ///   bucket with a second line).
    ///
    /// Does not allocate.
    pub fn key(&self, spec: &KeySpec, client_ip: IpAddr, headers: &HeaderMap) -> LimitKey {
        match spec {
            KeySpec::Global => LimitKey::Global,
            KeySpec::ClientIp => self.ip_key(client_ip),
            KeySpec::Header(name) => {
                let mut values = headers.get_all(name).iter().peekable();
                if values.peek().is_none() {
                    return self.ip_key(client_ip);
                }
                let mut h = self.hasher.build_hasher();
                for value in values {
                    // `[u8]`'s `Hash` writes the length first: the lines stay distinct.
                    value.as_bytes().hash(&mut h);
                }
                LimitKey::Header(h.finish())
            }
        }
    }

    fn ip_key(&self, ip: IpAddr) -> LimitKey {
        LimitKey::Ip(client_group(ip, self.ipv6_prefix))
    }

    /// True when the socket peer `peer` is in `trusted_proxies`: what it says about the
    /// client (`X-Forwarded-For`, `Forwarded`, `X-Real-IP`) may be believed and passed on.
    pub(crate) fn is_trusted_peer(&self, peer: IpAddr) -> bool {
        self.is_trusted(peer.to_canonical())
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }
}

/// The address that stands for a client: IPv4 as is, IPv6 cut to its first `ipv6_prefix`
/// bits (a client owns a whole prefix, so single addresses would let it multiply itself).
pub(crate) fn client_group(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(mask_v6(v6, ipv6_prefix)),
    }
}

/// Keeps the first `prefix` bits (0..=128) of `ip`.
fn mask_v6(ip: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let mask = match prefix {
        0 => 0,
        p if p >= 128 => u128::MAX,
        p => u128::MAX << (128 - u32::from(p)),
    };
    Ipv6Addr::from(u128::from(ip) & mask)
}

/// `::ffff:10.0.0.0/104` → `10.0.0.0/8`, so that it matches canonicalised addresses.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(net),
            None => net,
        },
        _ => net,
    }
}

/// One `X-Forwarded-For` element, already trimmed: an address, optionally bracketed (IPv6) and
/// optionally followed by `:port`. `None` when it is anything else.
fn parse_xff_entry(entry: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(entry).ok()?;
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        // `[v6]` or `[v6]:port`
        let (addr, after) = rest.split_once(']')?;
        if !(after.is_empty() || is_port(after.strip_prefix(':')?)) {
            return None;
        }
        return addr.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    // `v4:port` (a bare IPv6 address has several colons and parsed above, or is garbage)
    let (addr, port) = s.split_once(':')?;
    if !is_port(port) {
        return None;
    }
    addr.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

fn is_port(s: &str) -> bool {
    // digits only: `u16::from_str` would also take a leading `+`
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests;
