use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use super::{KeyExtractor, LimitKey};
use crate::config::KeySpec;

fn addr(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter()
        .map(|s| s.parse().expect("test network"))
        .collect()
}

/// Trusts 10.0.0.0/8 and 2001:db8:ffff::/48, groups IPv6 by /64.
fn extractor() -> KeyExtractor {
    KeyExtractor::new(&nets(&["10.0.0.0/8", "2001:db8:ffff::/48"]), 64)
}

/// One `X-Forwarded-For` line per argument.
fn xff(lines: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in lines {
        h.append(
            "x-forwarded-for",
            HeaderValue::from_str(line).expect("test header"),
        );
    }
    h
}

fn client(peer: &str, lines: &[&str]) -> IpAddr {
    extractor().client_ip(addr(peer), &xff(lines))
}

// An untrusted peer is the client, whatever X-Forwarded-For says.
#[test]
fn untrusted_peer_ignores_xff() {
    assert_eq!(client("192.0.2.7", &["198.51.100.1"]), addr("192.0.2.7"));
    assert_eq!(client("192.0.2.7", &[]), addr("192.0.2.7"));
}

// A trusted peer without X-Forwarded-For is the client itself.
#[test]
fn trusted_peer_without_xff_is_the_client() {
    assert_eq!(client("10.0.0.1", &[]), addr("10.0.0.1"));
}

// Behind a trusted proxy: the rightmost entry that is not trusted.
#[test]
fn trusted_peer_uses_rightmost_untrusted_entry() {
    assert_eq!(client("10.0.0.1", &["198.51.100.1"]), addr("198.51.100.1"));
    assert_eq!(
        client("10.0.0.1", &["198.51.100.1, 10.1.2.3, 10.0.0.9"]),
        addr("198.51.100.1"),
        "trusted hops on the right are skipped"
    );
}

// Entries left of the first untrusted one were written by the client and are ignored.
#[test]
fn spoofed_left_entries_are_ignored() {
    assert_eq!(
        client("10.0.0.1", &["1.1.1.1, 10.0.0.5, 198.51.100.1"]),
        addr("198.51.100.1")
    );
    assert_eq!(
        client("10.0.0.1", &["10.9.9.9, 198.51.100.1, 10.0.0.2"]),
        addr("198.51.100.1")
    );
}

// If the whole chain is trusted, its leftmost entry is the client.
#[test]
fn all_trusted_chain_gives_leftmost() {
    assert_eq!(
        client("10.0.0.1", &["10.0.0.3, 10.0.0.2"]),
        addr("10.0.0.3")
    );
}

// Several header lines are one list: the last line holds the rightmost entries.
#[test]
fn multiple_xff_lines_concatenate() {
    assert_eq!(
        client("10.0.0.1", &["1.1.1.1, 198.51.100.1", "10.0.0.2"]),
        addr("198.51.100.1")
    );
    assert_eq!(
        client("10.0.0.1", &["1.1.1.1", "198.51.100.9, 10.0.0.2"]),
        addr("198.51.100.9")
    );
    assert_eq!(
        client("10.0.0.1", &["10.0.0.4", "10.0.0.3"]),
        addr("10.0.0.4")
    );
}

// Whitespace and empty list elements are tolerated.
#[test]
fn spaces_and_empty_elements() {
    assert_eq!(
        client("10.0.0.1", &["  198.51.100.1 ,,  10.0.0.2  ,"]),
        addr("198.51.100.1")
    );
    assert_eq!(
        client("10.0.0.1", &["198.51.100.1\t,\t10.0.0.2"]),
        addr("198.51.100.1")
    );
}

// Garbage stops the walk at the last good address: the peer if the rightmost entry is bad,
// otherwise the nearest trusted hop to its right; never anything left of it.
#[test]
fn garbage_in_xff_stops_at_last_good_address() {
    assert_eq!(
        client("10.0.0.1", &["198.51.100.1, garbage"]),
        addr("10.0.0.1")
    );
    assert_eq!(
        client("10.0.0.1", &["198.51.100.1, unknown, 10.0.0.2"]),
        addr("10.0.0.2")
    );
    assert_eq!(
        client("10.0.0.1", &["198.51.100.1, 300.1.1.1"]),
        addr("10.0.0.1")
    );
    assert_eq!(
        client("10.0.0.1", &["198.51.100.1, fe80::1%eth0"]),
        addr("10.0.0.1")
    );
    assert_eq!(
        client("10.0.0.1", &["198.51.100.1, 1.2.3.4:99999"]),
        addr("10.0.0.1")
    );
    // Garbage left of the client does not matter.
    assert_eq!(
        client("10.0.0.1", &["garbage, 198.51.100.1"]),
        addr("198.51.100.1")
    );
}

// Non-UTF-8 (obs-text) bytes in the header are garbage, not a panic.
#[test]
fn non_utf8_xff_is_garbage() {
    let mut h = HeaderMap::new();
    h.append(
        "x-forwarded-for",
        HeaderValue::from_bytes(b"198.51.100.1, \xff\xfe").expect("obs-text"),
    );
    assert_eq!(
        extractor().client_ip(addr("10.0.0.1"), &h),
        addr("10.0.0.1")
    );
}

// IPv6 entries, bracketed or not, and entries with ports.
#[test]
fn ipv6_and_port_forms() {
    assert_eq!(client("10.0.0.1", &["2001:db8::1"]), addr("2001:db8::1"));
    assert_eq!(client("10.0.0.1", &["[2001:db8::1]"]), addr("2001:db8::1"));
    assert_eq!(
        client("10.0.0.1", &["[2001:db8::1]:443"]),
        addr("2001:db8::1")
    );
    assert_eq!(
        client("10.0.0.1", &["198.51.100.1:5678"]),
        addr("198.51.100.1")
    );
    assert_eq!(
        client("10.0.0.1", &["2001:db8::1, 2001:db8:ffff::7"]),
        addr("2001:db8::1")
    );
    assert_eq!(
        client("2001:db8:ffff::1", &["198.51.100.1"]),
        addr("198.51.100.1")
    );
}

// An IPv4-mapped IPv6 peer (dual-stack socket) is its IPv4 address, for trust and as result.
#[test]
fn ipv4_mapped_peer_is_ipv4() {
    assert_eq!(
        client("::ffff:10.0.0.1", &["198.51.100.1"]),
        addr("198.51.100.1")
    );
    assert_eq!(
        client("::ffff:192.0.2.7", &["198.51.100.1"]),
        addr("192.0.2.7")
    );
    assert_eq!(
        client("10.0.0.1", &["::ffff:198.51.100.1"]),
        addr("198.51.100.1")
    );
    assert_eq!(
        client("10.0.0.1", &["198.51.100.1, ::ffff:10.0.0.2"]),
        addr("198.51.100.1")
    );
}

// A trusted network written in IPv4-mapped form trusts the IPv4 peers it covers.
#[test]
fn ipv4_mapped_trusted_network() {
    let ex = KeyExtractor::new(&nets(&["::ffff:10.0.0.0/104"]), 64);
    assert_eq!(
        ex.client_ip(addr("10.0.0.1"), &xff(&["198.51.100.1"])),
        addr("198.51.100.1")
    );
}

fn ip_key(ex: &KeyExtractor, ip: &str) -> LimitKey {
    ex.key(&KeySpec::ClientIp, addr(ip), &HeaderMap::new())
}

// IPv6 clients are grouped by /64 by default: same /64 → same key, other /64 → other key.
#[test]
fn ipv6_grouped_by_64() {
    let ex = extractor();
    assert_eq!(
        ip_key(&ex, "2001:db8:1:2::1"),
        ip_key(&ex, "2001:db8:1:2:ffff:ffff:ffff:ffff")
    );
    assert_eq!(
        ip_key(&ex, "2001:db8:1:2::1"),
        LimitKey::Ip(addr("2001:db8:1:2::"))
    );
    assert_ne!(
        ip_key(&ex, "2001:db8:1:2::1"),
        ip_key(&ex, "2001:db8:1:3::1")
    );
}

// IPv4 keys are the address itself (also when given in IPv4-mapped form).
#[test]
fn ipv4_key_is_the_address() {
    let ex = extractor();
    assert_eq!(ip_key(&ex, "192.0.2.1"), LimitKey::Ip(addr("192.0.2.1")));
    assert_ne!(ip_key(&ex, "192.0.2.1"), ip_key(&ex, "192.0.2.2"));
    assert_eq!(
        ip_key(&ex, "::ffff:192.0.2.1"),
        LimitKey::Ip(addr("192.0.2.1"))
    );
}

// Other prefixes: /48 groups a whole site, /128 keys single addresses, /0 is one bucket.
#[test]
fn custom_ipv6_prefixes() {
    let ex48 = KeyExtractor::new(&[], 48);
    assert_eq!(
        ip_key(&ex48, "2001:db8:1:2::1"),
        ip_key(&ex48, "2001:db8:1:ffff::1")
    );
    assert_ne!(
        ip_key(&ex48, "2001:db8:1::1"),
        ip_key(&ex48, "2001:db8:2::1")
    );
    assert_eq!(
        ip_key(&ex48, "2001:db8:1:2::1"),
        LimitKey::Ip(addr("2001:db8:1::"))
    );

    let ex128 = KeyExtractor::new(&[], 128);
    assert_ne!(ip_key(&ex128, "2001:db8::1"), ip_key(&ex128, "2001:db8::2"));
    assert_eq!(
        ip_key(&ex128, "2001:db8::1"),
        LimitKey::Ip(addr("2001:db8::1"))
    );

    let ex0 = KeyExtractor::new(&[], 0);
    assert_eq!(ip_key(&ex0, "2001:db8::1"), LimitKey::Ip(addr("::")));

    let ex_bad = KeyExtractor::new(&[], 200); // clamped to 128, no panic
    assert_eq!(
        ip_key(&ex_bad, "2001:db8::1"),
        LimitKey::Ip(addr("2001:db8::1"))
    );
}

// key: global is always the one key.
#[test]
fn global_key() {
    assert_eq!(
        extractor().key(&KeySpec::Global, addr("192.0.2.1"), &HeaderMap::new()),
        LimitKey::Global
    );
}

fn header_key(ex: &KeyExtractor, values: &[&str]) -> LimitKey {
    let name = HeaderName::from_static("x-api-key");
    let mut h = HeaderMap::new();
    for v in values {
        h.append(name.clone(), HeaderValue::from_str(v).expect("test header"));
    }
    ex.key(&KeySpec::Header(name), addr("2001:db8:1:2::1"), &h)
}

// header:<Name>: equal values share a key, different values do not, a missing header falls
// back to the client IP key; several lines are hashed in order and unambiguously.
#[test]
fn header_keys() {
    let ex = extractor();
    let k = header_key(&ex, &["secret-1"]);
    assert!(matches!(k, LimitKey::Header(_)));
    assert_eq!(k, header_key(&ex, &["secret-1"]));
    assert_ne!(k, header_key(&ex, &["secret-2"]));
    assert_eq!(header_key(&ex, &[]), LimitKey::Ip(addr("2001:db8:1:2::")));
    assert_ne!(header_key(&ex, &["a", "b"]), header_key(&ex, &["ab"]));
    assert_ne!(header_key(&ex, &["a", "b"]), header_key(&ex, &["b", "a"]));
    assert_ne!(
        header_key(&ex, &[""]),
        header_key(&ex, &[]),
        "an empty value is still present"
    );
}

// The hash is keyed per extractor (per process in production): another key gives other hashes,
// so nobody can precompute colliding values.
#[test]
fn header_hash_is_keyed() {
    let (a, b) = (extractor(), extractor());
    assert_ne!(header_key(&a, &["secret-1"]), header_key(&b, &["secret-1"]));
}

/// Header lines made of arbitrary bytes (those a header value may hold), biased toward the
/// characters the X-Forwarded-For walk looks at.
fn header_line() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let byte = prop_oneof![
        4 => any::<u8>(),
        2 => prop::sample::select(b",:[]. 0123456789abcdef".to_vec()),
    ];
    proptest::collection::vec(byte, 0..48)
}

proptest::proptest! {
    /// The X-Forwarded-For walk and key extraction never panic, whatever the lines hold.
    #[test]
    fn xff_and_keys_never_panic(
        lines in proptest::collection::vec(header_line(), 0..4),
        peer_bits in proptest::prelude::any::<u32>(),
        v6 in proptest::prelude::any::<u128>(),
    ) {
        let mut headers = HeaderMap::new();
        for line in &lines {
            if let Ok(v) = HeaderValue::from_bytes(line) {
                headers.append("x-forwarded-for", v.clone());
                headers.append("x-api-key", v);
            }
        }
        let keys = extractor();
        for peer in [
            IpAddr::from(std::net::Ipv4Addr::from(peer_bits)),
            addr("10.1.2.3"),
            IpAddr::from(std::net::Ipv6Addr::from(v6)),
        ] {
            let client = keys.client_ip(peer, &headers);
            let _ = keys.key(&KeySpec::ClientIp, client, &headers);
            let _ = keys.key(
                &KeySpec::Header(HeaderName::from_static("x-api-key")),
                client,
                &headers,
            );
            let _ = keys.key(&KeySpec::Global, client, &headers);
            let _ = keys.is_trusted_peer(peer);
        }
    }
}
