use std::net::IpAddr;

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use proptest::prelude::*;

use super::*;
use crate::client::Origin;
use crate::h1::Parsed;
use crate::proxy::forward;

fn request(raw: &[u8]) -> RequestHead {
    match RequestHead::parse(&mut BytesMut::from(raw), 64 << 10) {
        Ok(Parsed::Head(head)) => head,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(raw)),
    }
}

fn response(raw: &[u8]) -> ResponseHead {
    match ResponseHead::parse(&mut BytesMut::from(raw), 64 << 10, false) {
        Ok(Some(head)) => head,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(raw)),
    }
}

fn edits(trusted: bool) -> RequestEdits<'static> {
    RequestEdits {
        peer: [10, 1, 2, 3].into(),
        https: false,
        trusted,
        target: None,
    }
}

fn written(head: &RequestHead, edits: &RequestEdits<'_>) -> String {
    let mut out = BytesMut::new();
    write_request(head, edits, &mut out);
    String::from_utf8(out.to_vec()).unwrap()
}

/// The upstream head, byte for byte: lines copied as sent (names' case and spacing kept),
/// hop-by-hop fields and those `Connection` names gone, the `X-Forwarded-*` fields in the
/// place of the client's first line of each, new ones last, framing last.
#[test]
fn writes_the_upstream_request() {
    let head = request(
        b"POST /a?b HTTP/1.1\r\nHost: api.example\r\nConnection: keep-alive, X-Secret\r\nX-Forwarded-Proto:https\r\nX-Secret: 1\r\nTransfer-Encoding: chunked\r\nX-Forwarded-For: 1.1.1.1\r\nAccept:  */*\r\nx-forwarded-for: , 2.2.2.2\r\nTE: trailers\r\n\r\n",
    );
    assert_eq!(
        written(&head, &edits(false)),
        // Lines are trimmed, not split: `, 2.2.2.2` stays as it is (as `proxy::forward`).
        "POST /a?b HTTP/1.1\r\nHost: api.example\r\nX-Forwarded-Proto: http\r\nX-Forwarded-For: 1.1.1.1, , 2.2.2.2, 10.1.2.3\r\nAccept:  */*\r\nx-forwarded-host: api.example\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    // The canonical target replaces the one sent; an IPv6 peer over TLS.
    let head = request(b"GET /%6cogin HTTP/1.1\r\nhost: a\r\nX-Forwarded-Host: evil\r\n\r\n");
    let edits = RequestEdits {
        peer: "2001:db8::7".parse().unwrap(),
        https: true,
        trusted: false,
        target: Some(b"/login"),
    };
    assert_eq!(
        written(&head, &edits),
        "GET /login HTTP/1.1\r\nhost: a\r\nX-Forwarded-Host: a\r\nx-forwarded-for: 2001:db8::7\r\nx-forwarded-proto: https\r\n\r\n"
    );
}

/// `Forwarded`, `X-Real-IP`, `X-Original-URL` and `X-Rewrite-URL` only from trusted peers;
/// a `Content-Length` that `Connection` names is written again, so the body keeps its end.
#[test]
fn trusted_only_fields_and_framing_kept() {
    let raw = b"PUT / HTTP/1.1\r\nHost: a\r\nForwarded: for=1.2.3.4\r\nX-Real-IP: 1.2.3.4\r\nX-Original-URL: /admin\r\nx-rewrite-url: /admin\r\nConnection: Content-Length\r\nContent-Length: 3\r\n\r\n";
    let head = request(raw);
    let untrusted = written(&head, &edits(false));
    assert_eq!(
        untrusted,
        "PUT / HTTP/1.1\r\nHost: a\r\nx-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: http\r\nx-forwarded-host: a\r\ncontent-length: 3\r\n\r\n"
    );
    let trusted = written(&head, &edits(true));
    for line in [
        "Forwarded: for=1.2.3.4",
        "X-Real-IP: 1.2.3.4",
        "X-Original-URL: /admin",
        "x-rewrite-url: /admin",
    ] {
        assert!(trusted.contains(line), "{line}");
    }
}

/// The response head: status line with the upstream's phrase (the standard one if it sent
/// none), hop-by-hop fields gone, added fields in place of the upstream's or last, framing.
#[test]
fn writes_the_client_response() {
    let head = response(b"HTTP/1.1 200 Fine\r\nDate: x\r\nRateLimit: old\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nratelimit: older\r\n\r\n");
    let mut out = BytesMut::new();
    let added: &[(&str, &[u8])] = &[
        ("ratelimit", b"\"a\";r=1;t=2"),
        ("ratelimit-policy", b"\"a\";q=5;w=1"),
    ];
    write_response(&head, added, false, &mut out);
    assert_eq!(
        &out[..],
        b"HTTP/1.1 200 Fine\r\nDate: x\r\nRateLimit: \"a\";r=1;t=2\r\nratelimit-policy: \"a\";q=5;w=1\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    let head = response(b"HTTP/1.1 404 \r\n\r\n");
    let mut out = BytesMut::new();
    write_response(&head, &[], true, &mut out);
    assert_eq!(
        &out[..],
        b"HTTP/1.1 404 Not Found\r\nconnection: close\r\n\r\n"
    );
}

/// Field names and values of a written head, lower-case names, as `HeaderMap` order
/// (grouped by name at the first one's place) so that it compares with hyper's.
fn grouped<'a>(fields: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in fields {
        let name = HeaderName::from_bytes(name).unwrap();
        map.append(name, HeaderValue::from_bytes(value).unwrap());
    }
    map
}

/// A map's fields as (name, values in order), sorted by name: the same fields, whatever
/// order `HeaderMap::remove` left them in.
fn by_name(map: &HeaderMap) -> Vec<(String, Vec<Vec<u8>>)> {
    let mut fields: Vec<_> = map
        .keys()
        .map(|k| {
            (
                k.to_string(),
                map.get_all(k)
                    .iter()
                    .map(|v| v.as_bytes().to_vec())
                    .collect(),
            )
        })
        .collect();
    fields.sort();
    fields
}

/// Field lines drawn from the names `proxy::forward` treats specially, in any case, with
/// values that include lists, empty values and obs-text.
fn field() -> impl Strategy<Value = (String, String)> {
    let names = prop::sample::select(vec![
        "Host",
        "X-Forwarded-For",
        "x-forwarded-for",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Upgrade",
        "Proxy-Authorization",
        "Forwarded",
        "X-Real-IP",
        "X-Original-URL",
        "X-Rewrite-URL",
        "Accept",
        "X-A",
        "x-a",
        "X-B",
        "Content-Type",
    ]);
    let values = prop::sample::select(vec![
        "",
        "1.1.1.1",
        " 2.2.2.2 , 3.3.3.3",
        "close",
        "keep-alive, X-A",
        "X-B, x-forwarded-for",
        "Upgrade",
        "x-a b",
        "host",
        "api.example",
        "\u{e9}t\u{e9}",
        "websocket",
        "a,,b",
    ]);
    (names, values).prop_map(|(n, v)| (n.to_owned(), v.to_owned()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Against today's path (hyper's parse into a `HeaderMap`, then `proxy::forward`): the
    /// same fields with the same values, only the order differing (see the module docs).
    #[test]
    fn request_fields_match_forward(
        fields in prop::collection::vec(field(), 0..12),
        trusted in any::<bool>(),
        https in any::<bool>(),
        v6 in any::<bool>(),
    ) {
        let mut raw = b"GET /x HTTP/1.1\r\n".to_vec();
        for (name, value) in &fields {
            raw.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let head = request(&raw);
        let peer: IpAddr = if v6 { "2001:db8::7".parse().unwrap() } else { [10, 1, 2, 3].into() };
        let mut out = BytesMut::new();
        write_request(&head, &RequestEdits { peer, https, trusted, target: None }, &mut out);
        let ours = request(&out);
        prop_assert_eq!(ours.target(), "/x");

        let mut req = Request::builder().uri("/x").body(()).unwrap();
        *req.headers_mut() = grouped(head.fields());
        forward::request(&mut req, Origin { peer, https }, trusted);
        prop_assert_eq!(by_name(&grouped(ours.fields())), by_name(req.headers()));
    }

    /// The same for responses: `proxy::forward::response`, then `RateLimit` inserted.
    #[test]
    fn response_fields_match_forward(fields in prop::collection::vec(field(), 0..12)) {
        let mut raw = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n".to_vec();
        for (name, value) in &fields {
            raw.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let head = response(&raw);
        let mut out = BytesMut::new();
        write_response(&head, &[("x-a", b"added")], false, &mut out);
        let ours = response(&out);

        let mut res = Response::new(());
        *res.headers_mut() = grouped(head.fields());
        forward::response(&mut res);
        res.headers_mut().insert("x-a", HeaderValue::from_static("added"));
        prop_assert_eq!(by_name(&grouped(ours.fields())), by_name(res.headers()));
    }
}
