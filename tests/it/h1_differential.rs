//! Differential test of the HTTP/1.1 fast path's codec (`sluice::h1`, issue 23) against
//! hyper's HTTP/1 server, which serves every connection today.
//!
//! Generated requests — valid ones, and mutations of them: repeated and conflicting framing
//! fields, `Transfer-Encoding` variants, obs-fold, bare CR and LF, NUL, whitespace before a
//! colon, other target forms, huge and malformed chunk sizes and extensions, missing CRLFs,
//! truncation, random bytes — go to both. They must agree on accept/reject, and when both
//! accept, on the method, the target, the field list (names, values, hyper's order) and the
//! body bytes. Where hyper accepts and the codec does not, the codec must refuse with one of
//! the documented strictness causes ([`stricter_head`], [`stricter_body`]) or decline to
//! hyper; it may never accept what hyper refuses.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::alone_blocking;
use sluice::h1::{BodyError, BodyReader, Decoded, Parsed, RequestError, RequestHead};

/// Cases per run: thousands, within the time budget of a debug build.
const CASES: u32 = 4000;
const MAX_HEAD: usize = 64 << 10;
const MAX_BODY: u64 = 1 << 20;

/// What a parser made of one request.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    method: String,
    target: String,
    /// Lower-case names and values, in `HeaderMap` order (grouped by name).
    fields: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// The codec's verdict.
#[derive(Debug)]
enum Ours {
    Accepted(Seen),
    Head(RequestError),
    Body(BodyError),
    Declined,
    Incomplete,
}

/// hyper's: the first request's head and, if it could be read whole, its body.
#[derive(Debug)]
struct Theirs {
    seen: Option<(Seen, bool)>,
}

/// Strictness beyond hyper's on heads, by design (see `src/h1.rs`): hyper keeps one of several
/// equal `Content-Length`s, drops `Content-Length` beside `Transfer-Encoding`, accepts codings
/// before a final `chunked`, strips a fragment, and takes `*`, `?query` and the authority form
/// as targets.
fn stricter_head(err: RequestError) -> bool {
    use RequestError::*;
    matches!(
        err,
        SeveralLengths | LengthAndChunked | NotChunked | BadTarget | TargetForm
    )
}

/// Strictness beyond hyper's on chunked bodies: hyper takes any bytes but CR and LF as chunk
/// extensions and whitespace after a chunk size before CRLF (both `BadChunkExtension` here),
/// unbounded leading zeros (`ChunkLineTooLong`), and bare LF between trailer fields.
fn stricter_body(err: BodyError) -> bool {
    use BodyError::*;
    matches!(err, BadChunkExtension | ChunkLineTooLong | BadTrailer)
}

// ---- the two parsers ----

fn ours(raw: &[u8]) -> Ours {
    let mut buf = BytesMut::from(raw);
    let head = match RequestHead::parse(&mut buf, MAX_HEAD) {
        Ok(Parsed::Head(head)) => head,
        Ok(Parsed::Decline(_)) => return Ours::Declined,
        Ok(Parsed::Partial) => return Ours::Incomplete,
        Err(err) => return Ours::Head(err),
    };
    let mut reader = match BodyReader::new(head.framing(), MAX_BODY) {
        Ok(reader) => reader,
        Err(err) => return Ours::Body(err),
    };
    let mut body = Vec::new();
    loop {
        match reader.decode(&mut buf) {
            Ok(Decoded::Data(bytes)) => body.extend_from_slice(&bytes),
            Ok(Decoded::End) => break,
            Ok(Decoded::NeedMore) => match reader.eof() {
                Ok(()) => break,
                Err(err) => return Ours::Body(err),
            },
            Err(err) => return Ours::Body(err),
        }
    }
    let mut fields: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, value) in head.fields() {
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        // `HeaderMap` order: a repeated name joins its first line's group.
        let at = fields
            .iter()
            .rposition(|(n, _)| *n == name)
            .map_or(fields.len(), |i| i + 1);
        fields.insert(at, (name, value.to_vec()));
    }
    Ours::Accepted(Seen {
        method: head.method().to_owned(),
        target: head.target().to_owned(),
        fields,
        body,
    })
}

async fn theirs(raw: Vec<u8>) -> Theirs {
    let (client, server) = tokio::io::duplex(1 << 20);
    let seen: Arc<Mutex<Option<(Seen, bool)>>> = Arc::default();
    let slot = seen.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let slot = slot.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map(|c| c.to_bytes());
            let fields = parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect();
            let seen = Seen {
                method: parts.method.as_str().to_owned(),
                target: parts.uri.to_string(),
                fields,
                body: body.as_ref().map(|b| b.to_vec()).unwrap_or_default(),
            };
            let mut slot = slot.lock().unwrap();
            if slot.is_none() {
                *slot = Some((seen, body.is_ok()));
            }
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        }
    });
    // `half_close`: the client's EOF (sent right after the request) must not cut the
    // response short; the parse is what is compared, and it is the same either way.
    let conn = http1::Builder::new()
        .half_close(true)
        .serve_connection(TokioIo::new(server), service);
    let conn = tokio::spawn(conn);
    let (mut read, mut write) = tokio::io::split(client);
    let _ = write.write_all(&raw).await;
    let _ = write.shutdown().await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut response)).await;
    conn.abort();
    let seen = seen.lock().unwrap().take();
    Theirs { seen }
}

/// The verdicts agree, or differ only as documented.
fn compare(
    raw: &[u8],
    ours: &Ours,
    theirs: &Theirs,
    stats: &mut Stats,
) -> Result<(), TestCaseError> {
    let shown = String::from_utf8_lossy(raw);
    match (ours, &theirs.seen) {
        (Ours::Declined, _) => stats.declined += 1,
        (Ours::Accepted(seen), Some((hyper, true))) => {
            prop_assert_eq!(seen, hyper, "{:?}", shown);
            stats.agreed_accept += 1;
        }
        (Ours::Accepted(seen), other) => {
            return Err(TestCaseError::fail(format!(
                "accepted by the codec, not by hyper: {shown:?}\nours: {seen:?}\nhyper: {other:?}"
            )))
        }
        (Ours::Head(_) | Ours::Incomplete, None) | (Ours::Body(_), Some((_, false))) => {
            stats.agreed_reject += 1;
        }
        (Ours::Body(err), None) => {
            return Err(TestCaseError::fail(format!(
                "head accepted by the codec (body: {err:?}), not by hyper: {shown:?}"
            )))
        }
        (Ours::Head(err), Some(_)) => {
            prop_assert!(
                stricter_head(*err),
                "refused ({err:?}), hyper accepts: {shown:?}"
            );
            *stats.stricter.entry(format!("{err:?}")).or_default() += 1;
        }
        (Ours::Body(err), Some((_, true))) => {
            prop_assert!(
                stricter_body(*err),
                "body refused ({err:?}), hyper accepts: {shown:?}"
            );
            *stats.stricter.entry(format!("{err:?}")).or_default() += 1;
        }
        (Ours::Incomplete, Some(hyper)) => {
            return Err(TestCaseError::fail(format!(
                "incomplete for the codec, hyper parsed {hyper:?}: {shown:?}"
            )))
        }
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Stats {
    agreed_accept: u32,
    agreed_reject: u32,
    /// Where hyper accepts and the codec refuses, by cause.
    stricter: std::collections::BTreeMap<String, u32>,
    declined: u32,
}

// ---- generated requests ----

#[derive(Debug, Clone)]
struct Chunk {
    data: Vec<u8>,
    ext: Option<&'static str>,
    upper: bool,
    zeros: usize,
}

#[derive(Debug, Clone)]
enum Body {
    None,
    Length(Vec<u8>),
    Chunked {
        chunks: Vec<Chunk>,
        trailers: Vec<(String, Vec<u8>)>,
    },
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Another `Content-Length`: the same value or another.
    DupLength(bool),
    /// A `Transfer-Encoding` line of this value.
    AddTe(&'static str),
    /// A `Content-Length` line (beside chunked, or a second).
    AddLength(u8),
    /// A field's value folded onto a second line.
    ObsFold(Index),
    /// Whitespace between a field's name and its colon.
    SpaceBeforeColon(Index),
    /// The target replaced.
    Target(&'static str),
    /// HTTP/1.0.
    Http10,
    /// A head CRLF made a bare CR, or a bare LF.
    BareCr(Index),
    BareLf(Index),
    /// A NUL inserted into the head.
    Nul(Index),
    /// The first chunk's size replaced.
    ChunkSize(&'static str),
    /// The CRLF after a chunk's data removed.
    DropChunkCrlf,
    /// Bytes cut off the end.
    Truncate(u8),
    /// A byte anywhere replaced.
    Flip(Index, u8),
}

#[derive(Debug, Clone)]
struct Case {
    method: &'static str,
    target: String,
    fields: Vec<(String, Vec<u8>)>,
    framing_at: Index,
    body: Body,
    mutations: Vec<Mutation>,
}

fn method() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "HEAD", "PURGE", "get", "M-SEARCH",
    ])
}

fn target() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "a", "Z", "0", "-", ".", "_", "~", "%20", "%2F", "%", "!", "$", "&", "'", "(", ")", "*",
        "+", ",", ";", "=", ":", "@", "/", "\"", "{", "}", "|", "^", "`", "[", "]", "\\", "é", "?",
        "<", ">", "..",
    ]);
    prop::collection::vec(piece, 0..8).prop_map(|pieces| format!("/{}", pieces.concat()))
}

fn field() -> impl Strategy<Value = (String, Vec<u8>)> {
    let name = prop::sample::select(vec![
        "Host",
        "host",
        "Accept",
        "User-Agent",
        "X-Custom",
        "x-custom",
        "Cookie",
        "Content-Type",
        "Connection",
        "Expect",
        "Upgrade",
        "X-Forwarded-For",
        "TE",
        "x_under",
        "X.Dot",
    ]);
    let byte = prop_oneof![
        8 => 0x21u8..=0x7e,
        2 => Just(b' '),
        1 => Just(b'\t'),
        1 => 0x80u8..=0xff,
    ];
    (name, prop::collection::vec(byte, 0..12)).prop_map(|(n, v)| (n.to_owned(), v))
}

fn chunk() -> impl Strategy<Value = Chunk> {
    let ext = prop::option::weighted(
        0.2,
        prop::sample::select(vec![
            ";a",
            ";a=b",
            ";a=\"q \\\" r\"",
            " ;a",
            ";a=b;c",
            ";a =b",
            ";a=\"x",
        ]),
    );
    (
        prop::collection::vec(any::<u8>(), 1..24),
        ext,
        any::<bool>(),
        prop::sample::select(vec![0usize, 0, 0, 1, 3]),
    )
        .prop_map(|(data, ext, upper, zeros)| Chunk {
            data,
            ext,
            upper,
            zeros,
        })
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        2 => Just(Body::None),
        2 => prop::collection::vec(any::<u8>(), 0..40).prop_map(Body::Length),
        3 => (
            prop::collection::vec(chunk(), 0..4),
            prop::collection::vec(field(), 0..2)
        )
            .prop_map(|(chunks, trailers)| Body::Chunked { chunks, trailers }),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<bool>().prop_map(Mutation::DupLength),
        prop::sample::select(vec![
            "chunked",
            "gzip, chunked",
            "chunked, gzip",
            " chunked",
            "identity",
            "CHUNKED",
            "chunked, chunked",
            "",
            "chunked;q=1",
            ", chunked",
        ])
        .prop_map(Mutation::AddTe),
        any::<u8>().prop_map(Mutation::AddLength),
        any::<Index>().prop_map(Mutation::ObsFold),
        any::<Index>().prop_map(Mutation::SpaceBeforeColon),
        prop::sample::select(vec![
            "http://a.example/x",
            "HTTP://a.example",
            "a.example:443",
            "*",
            "/a#frag",
            "?q",
            "//a",
            "/a?b#c",
            "ftp://x/y",
            "x:y",
        ])
        .prop_map(Mutation::Target),
        Just(Mutation::Http10),
        any::<Index>().prop_map(Mutation::BareCr),
        any::<Index>().prop_map(Mutation::BareLf),
        any::<Index>().prop_map(Mutation::Nul),
        prop::sample::select(vec![
            "ffffffffffffffffff",
            "10000000000000000",
            "-1",
            "0x5",
            "5 ",
            "",
            "g",
            "1\t",
        ])
        .prop_map(Mutation::ChunkSize),
        Just(Mutation::DropChunkCrlf),
        (1u8..8).prop_map(Mutation::Truncate),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        method(),
        target(),
        prop::collection::vec(field(), 0..8),
        any::<Index>(),
        body(),
        prop_oneof![
            3 => Just(Vec::new()),
            4 => prop::collection::vec(mutation(), 1..3),
        ],
    )
        .prop_map(
            |(method, target, fields, framing_at, body, mutations)| Case {
                method,
                target,
                fields,
                framing_at,
                body,
                mutations,
            },
        )
}

/// `name: value` lines, then the empty line.
fn put_fields(raw: &mut Vec<u8>, fields: &[(String, Vec<u8>)]) {
    for (name, value) in fields {
        raw.extend_from_slice(name.as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(value);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"\r\n");
}

/// The bytes of `case`, its mutations applied.
fn serialise(case: &Case) -> Vec<u8> {
    let mut target = case.target.clone();
    let mut version = "HTTP/1.1";
    let mut fields = case.fields.clone();
    let mut chunk_size: Option<&str> = None;
    let mut drop_crlf = false;
    let framing: Vec<(String, Vec<u8>)> = match &case.body {
        Body::None => vec![],
        Body::Length(body) => vec![("Content-Length".into(), body.len().to_string().into())],
        Body::Chunked { .. } => vec![("Transfer-Encoding".into(), b"chunked".to_vec())],
    };
    let at = case.framing_at.index(fields.len() + 1);
    fields.splice(at..at, framing);
    for m in &case.mutations {
        match m {
            Mutation::DupLength(same) => {
                let n = match &case.body {
                    Body::Length(b) if *same => b.len(),
                    Body::Length(b) => b.len() + 1,
                    _ => 0,
                };
                fields.push(("Content-Length".into(), n.to_string().into()));
            }
            Mutation::AddTe(v) => fields.push(("Transfer-Encoding".into(), v.as_bytes().to_vec())),
            Mutation::AddLength(n) => fields.push(("Content-Length".into(), n.to_string().into())),
            Mutation::ObsFold(i) if !fields.is_empty() => {
                let at = i.index(fields.len());
                fields[at].1.extend_from_slice(b"\r\n folded");
            }
            Mutation::SpaceBeforeColon(i) if !fields.is_empty() => {
                let at = i.index(fields.len());
                fields[at].0.push(' ');
            }
            Mutation::Target(t) => target = (*t).to_owned(),
            Mutation::Http10 => version = "HTTP/1.0",
            Mutation::ChunkSize(s) => chunk_size = Some(s),
            Mutation::DropChunkCrlf => drop_crlf = true,
            _ => {}
        }
    }
    let mut raw = format!("{} {} {}\r\n", case.method, target, version).into_bytes();
    put_fields(&mut raw, &fields);
    let head_len = raw.len();
    match &case.body {
        Body::None => {}
        Body::Length(body) => raw.extend_from_slice(body),
        Body::Chunked { chunks, trailers } => {
            for (i, c) in chunks.iter().enumerate() {
                let size = match chunk_size {
                    Some(s) if i == 0 => s.to_owned(),
                    _ if c.upper => format!("{}{:X}", "0".repeat(c.zeros), c.data.len()),
                    _ => format!("{}{:x}", "0".repeat(c.zeros), c.data.len()),
                };
                raw.extend_from_slice(size.as_bytes());
                raw.extend_from_slice(c.ext.unwrap_or("").as_bytes());
                raw.extend_from_slice(b"\r\n");
                raw.extend_from_slice(&c.data);
                if !(drop_crlf && i == 0) {
                    raw.extend_from_slice(b"\r\n");
                }
            }
            raw.extend_from_slice(b"0\r\n");
            put_fields(&mut raw, trailers);
        }
    }
    for m in &case.mutations {
        // Earlier byte mutations may have cut into the head.
        let head_len = head_len.min(raw.len());
        match m {
            Mutation::BareCr(i) | Mutation::BareLf(i) => {
                let ends: Vec<usize> = raw[..head_len]
                    .windows(2)
                    .enumerate()
                    .filter(|(_, w)| *w == b"\r\n")
                    .map(|(p, _)| p)
                    .collect();
                if !ends.is_empty() {
                    let p = ends[i.index(ends.len())];
                    let keep = if matches!(m, Mutation::BareCr(_)) {
                        p
                    } else {
                        p + 1
                    };
                    raw.remove(if keep == p { p + 1 } else { p });
                }
            }
            Mutation::Nul(i) => {
                let p = i.index(head_len.max(1));
                raw.insert(p, 0);
            }
            Mutation::Truncate(n) => raw.truncate(raw.len().saturating_sub(usize::from(*n))),
            Mutation::Flip(i, b) if !raw.is_empty() => {
                let p = i.index(raw.len());
                raw[p] = *b;
            }
            _ => {}
        }
    }
    raw
}

/// Thousands of generated and mutated requests, parsed by the codec and by hyper.
#[test]
fn codec_agrees_with_hyper() {
    // A few seconds of full CPU: not beside the tests that measure against the clock.
    let _alone = alone_blocking();
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let stats = Mutex::new(Stats::default());
    let result = runner.run(&case(), |case| {
        let raw = serialise(&case);
        let theirs = rt.block_on(theirs(raw.clone()));
        compare(&raw, &ours(&raw), &theirs, &mut stats.lock().unwrap())
    });
    let stats = stats.into_inner().unwrap();
    eprintln!(
        "h1 differential: {CASES} cases in {:?}: {stats:?}",
        started.elapsed()
    );
    if let Err(err) = result {
        panic!("{err}");
    }
    // The generator must reach every verdict, or the test proves little.
    assert!(stats.agreed_accept > CASES / 5, "{stats:?}");
    assert!(stats.agreed_reject > CASES / 10, "{stats:?}");
    assert!(
        !stats.stricter.is_empty() && stats.declined > 0,
        "{stats:?}"
    );
}
