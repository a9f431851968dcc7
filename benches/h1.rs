//! Criterion benches of the HTTP/1.1 fast path's codec (`sluice::h1`, issue 23): parse a
//! typical request head (8 fields), decide its framing, write the upstream head; beside it,
//! what hyper's server does with the same bytes to build an `http::Request` (httparse, then
//! `Method`, `Uri`, and a `HeaderMap` of `HeaderName`/`HeaderValue`), reproduced here since
//! hyper's parser is not public.
//! Run: `cargo bench --bench h1`.
// criterion's `criterion_group!` makes an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri};
use sluice::h1::{write_request, Parsed, RequestEdits, RequestHead};

/// A browser-like API request: 8 fields, a small JSON body announced.
const HEAD: &[u8] = b"POST /api/v1/orders?expand=items HTTP/1.1\r\n\
Host: api.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: application/json\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Content-Type: application/json\r\n\
Content-Length: 27\r\n\
Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc\r\n\
Connection: keep-alive\r\n\r\n";

fn parse(buf: &mut BytesMut) -> RequestHead {
    match RequestHead::parse(buf, 16 << 10) {
        Ok(Parsed::Head(head)) => head,
        other => panic!("{other:?}"),
    }
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("h1");
    group.bench_function("parse_head", |b| {
        b.iter_batched_ref(
            || BytesMut::from(HEAD),
            |buf| black_box(parse(buf)),
            BatchSize::SmallInput,
        );
    });
    let edits = RequestEdits {
        peer: [203, 0, 113, 7].into(),
        https: false,
        trusted: false,
        target: None,
    };
    let mut out = BytesMut::with_capacity(1024);
    group.bench_function("parse_frame_write", |b| {
        b.iter_batched_ref(
            || BytesMut::from(HEAD),
            |buf| {
                let head = parse(buf);
                black_box(head.framing());
                out.clear();
                write_request(&head, &edits, &mut out);
                black_box(out.len())
            },
            BatchSize::SmallInput,
        );
    });
    let head = parse(&mut BytesMut::from(HEAD));
    group.bench_function("write_request", |b| {
        b.iter(|| {
            out.clear();
            write_request(&head, &edits, &mut out);
            black_box(out.len())
        });
    });
    group.bench_function("hyper_like_request", |b| {
        b.iter_batched_ref(
            || BytesMut::from(HEAD),
            |buf| black_box(hyper_like(buf)),
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

/// What hyper's `Server::parse` does with a head: httparse into indices, then an
/// `http::Request` whose fields are `HeaderName`s and shared `HeaderValue`s.
fn hyper_like(buf: &mut BytesMut) -> Request<()> {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(len) = req.parse(buf).unwrap() else {
        panic!("partial");
    };
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
    let method = Method::from_bytes(req.method.unwrap().as_bytes()).unwrap();
    let (path, path_len) = at(req.path.unwrap().as_bytes());
    let fields: Vec<_> = req
        .headers
        .iter()
        .map(|h| (at(h.name.as_bytes()), at(h.value)))
        .collect();
    let head: Bytes = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path..path + path_len)).unwrap();
    let mut map = HeaderMap::with_capacity(fields.len());
    for ((n, nl), (v, vl)) in fields {
        let name = HeaderName::from_bytes(&head[n..n + nl]).unwrap();
        let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl)).unwrap();
        map.append(name, value);
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = map;
    request
}

criterion_group!(benches, codec);
criterion_main!(benches);
