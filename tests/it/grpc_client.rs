//! gRPC through sluice with a real gRPC library at both ends: tonic's client (`Channel` over
//! h2c, `tonic::client::Grpc`, prost messages) calling a service that tonic's server side
//! encodes (`tonic::server::Grpc` under hyper's HTTP/2 server), sluice between them with its
//! upstream on `protocol: http2`. What the library makes of sluice's answers is what a user of
//! it sees: unary, server-streaming and bidirectional calls, a relayed status with its
//! metadata, and sluice's own refusals as RESOURCE_EXHAUSTED (with the pushback in the
//! metadata), UNAVAILABLE, DEADLINE_EXCEEDED and INVALID_ARGUMENT.
//!
//! The messages are written by hand (`#[derive(prost::Message)]`) and the paths given as
//! `PathAndQuery`: no `.proto` file, no codegen, no `protoc`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, Stream, StreamExt};
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::server::{ServerStreamingService, StreamingService, UnaryService};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use crate::support::*;

/// The one message of the test service, both ways.
#[derive(Clone, PartialEq, prost::Message)]
struct Echo {
    /// What to echo; `hold` keeps a unary call open until the test releases it.
    #[prost(string, tag = "1")]
    text: String,
    /// The number of messages a streaming call answers.
    #[prost(uint32, tag = "2")]
    count: u32,
}

const UNARY: &str = "/sluice.test.Echo/Unary";
const STREAM: &str = "/sluice.test.Echo/Stream";
const FAIL: &str = "/sluice.test.Echo/Fail";
const FAIL_LATE: &str = "/sluice.test.Echo/FailLate";
const CHAT: &str = "/sluice.test.Echo/Chat";

/// The status the upstream fails with: NOT_FOUND, a message that needs percent-encoding on the
/// wire, and custom metadata.
const FAIL_MESSAGE: &str = "book 42: not on the shelf — 100% gone";

fn failure() -> Status {
    let mut metadata = MetadataMap::new();
    metadata.insert("x-detail", MetadataValue::from_static("shelf 7"));
    Status::with_metadata(Code::NotFound, FAIL_MESSAGE, metadata)
}

/// What the test service shares with the test: calls that reached it, and the release of held
/// calls.
#[derive(Debug, Default)]
struct State {
    calls: AtomicUsize,
    release: Notify,
}

/// The unary methods: `Unary` echoes (holding a `hold` until released), `Fail` fails with
/// [`failure`] before any message (tonic answers it trailers-only).
#[derive(Debug, Clone)]
struct UnarySvc(Arc<State>, bool);

impl UnaryService<Echo> for UnarySvc {
    type Response = Echo;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Echo>, Status>> + Send>>;

    fn call(&mut self, request: Request<Echo>) -> Self::Future {
        let (state, fail) = (self.0.clone(), self.1);
        Box::pin(async move {
            let echo = request.into_inner();
            if fail {
                return Err(failure());
            }
            if echo.text == "hold" {
                state.release.notified().await;
            }
            Ok(Response::new(Echo {
                text: format!("echo: {}", echo.text),
                count: 1,
            }))
        })
    }
}

type EchoStream = Pin<Box<dyn Stream<Item = Result<Echo, Status>> + Send>>;

/// The server-streaming methods: `Stream` answers `count` messages 20 ms apart, then OK;
/// `FailLate` the same messages, then [`failure`] (in trailers, after the messages).
#[derive(Debug, Clone)]
struct StreamSvc(bool);

impl ServerStreamingService<Echo> for StreamSvc {
    type Response = Echo;
    type ResponseStream = EchoStream;
    type Future = Pin<Box<dyn Future<Output = Result<Response<EchoStream>, Status>> + Send>>;

    fn call(&mut self, request: Request<Echo>) -> Self::Future {
        let fail = self.0;
        Box::pin(async move {
            let echo = request.into_inner();
            let messages = stream::iter(0..echo.count).then(move |n| {
                let text = format!("{} #{n}", echo.text);
                async move {
                    if n > 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Ok(Echo { text, count: n })
                }
            });
            let end = stream::iter(fail.then(|| Err(failure())));
            Ok(Response::new(Box::pin(messages.chain(end)) as EchoStream))
        })
    }
}

/// The bidirectional method `Chat`: each message echoed as it comes, the stream ending OK when
/// the client's does.
#[derive(Debug, Clone)]
struct ChatSvc;

impl StreamingService<Echo> for ChatSvc {
    type Response = Echo;
    type ResponseStream = EchoStream;
    type Future = Pin<Box<dyn Future<Output = Result<Response<EchoStream>, Status>> + Send>>;

    fn call(&mut self, request: Request<Streaming<Echo>>) -> Self::Future {
        Box::pin(async move {
            let replies = request.into_inner().map(|message| {
                message.map(|echo| Echo {
                    text: format!("echo: {}", echo.text),
                    count: echo.count,
                })
            });
            Ok(Response::new(Box::pin(replies) as EchoStream))
        })
    }
}

/// The test service over h2c on a loopback port: each method served by tonic's server side.
async fn tonic_upstream() -> (String, Arc<State>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(State::default());
    let shared = state.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let state = shared.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<Incoming>| {
                    let state = state.clone();
                    async move {
                        state.calls.fetch_add(1, Ordering::SeqCst);
                        let mut grpc =
                            tonic::server::Grpc::new(ProstCodec::<Echo, Echo>::default());
                        let res = match req.uri().path() {
                            UNARY => grpc.unary(UnarySvc(state, false), req).await,
                            FAIL => grpc.unary(UnarySvc(state, true), req).await,
                            STREAM => grpc.server_streaming(StreamSvc(false), req).await,
                            FAIL_LATE => grpc.server_streaming(StreamSvc(true), req).await,
                            CHAT => grpc.streaming(ChatSvc, req).await,
                            _ => Status::unimplemented("no such method").into_http(),
                        };
                        Ok::<_, Infallible>(res)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), state, task)
}

/// sluice with `endpoint` as upstream `api` (`protocol: http2`) and one route with `route`
/// (YAML flow-map members, may be empty).
async fn proxy_to(endpoint: &str, route: &str) -> Proxy {
    start_proxy(&format!(
        "server: {{ listen: 127.0.0.1:0 }}\n\
         upstreams:\n  api: {{ endpoints: ['{endpoint}'], protocol: http2, timeout: 10s }}\n\
         routes: [{{ name: all, upstream: api{route} }}]\n"
    ))
    .await
}

/// tonic's client on a `Channel` to `proxy` (h2c: HTTP/2 with prior knowledge).
async fn client_of(proxy: &Proxy) -> tonic::client::Grpc<Channel> {
    let channel = Channel::from_shared(proxy.url(""))
        .unwrap()
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("the channel connects to sluice");
    tonic::client::Grpc::new(channel)
}

/// A unary call to `path` with `text`, bounded at 30 s (a hang fails the test).
async fn unary(
    client: &mut tonic::client::Grpc<Channel>,
    path: &'static str,
    text: &str,
) -> Result<Response<Echo>, Status> {
    unary_within(client, path, text, None).await
}

/// [`unary`] with `deadline` as the call's `grpc-timeout` (tonic writes it in the most precise
/// unit that fits 8 digits: 300 ms is `300000u`).
async fn unary_within(
    client: &mut tonic::client::Grpc<Channel>,
    path: &'static str,
    text: &str,
    deadline: Option<Duration>,
) -> Result<Response<Echo>, Status> {
    let call = async {
        client.ready().await.expect("the channel is ready");
        let mut request = Request::new(Echo {
            text: text.to_owned(),
            count: 0,
        });
        if let Some(deadline) = deadline {
            request.set_timeout(deadline);
        }
        client
            .unary(
                request,
                PathAndQuery::from_static(path),
                ProstCodec::default(),
            )
            .await
    };
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the call ended within 30 s")
}

/// A server-streaming call to `path` asking for `count` messages: the messages received, and
/// how the stream ended (`Ok` or the status), bounded at 30 s.
async fn streaming(
    client: &mut tonic::client::Grpc<Channel>,
    path: &'static str,
    count: u32,
) -> (Vec<Echo>, Result<(), Status>) {
    let call = async {
        client.ready().await.expect("the channel is ready");
        let request = Request::new(Echo {
            text: "tick".to_owned(),
            count,
        });
        let mut stream = client
            .server_streaming(
                request,
                PathAndQuery::from_static(path),
                ProstCodec::default(),
            )
            .await
            .expect("the call's response head")
            .into_inner();
        let mut messages = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => return (messages, Ok(())),
                Err(status) => return (messages, Err(status)),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the call ended within 30 s")
}

fn metadata<'a>(status: &'a Status, name: &str) -> Option<&'a str> {
    status.metadata().get(name).and_then(|v| v.to_str().ok())
}

/// Pins: a unary call and a server-streaming call of five messages go through sluice and come
/// back whole to tonic's client, decoded, in order, the stream ending OK.
#[tokio::test]
async fn unary_and_server_streaming_calls() {
    let (endpoint, state, _upstream) = tonic_upstream().await;
    let proxy = proxy_to(&endpoint, "").await;
    let mut client = client_of(&proxy).await;

    let answer = unary(&mut client, UNARY, "hello").await.expect("OK");
    assert_eq!(answer.get_ref().text, "echo: hello");

    let (messages, end) = streaming(&mut client, STREAM, 5).await;
    end.expect("the stream ends OK");
    let texts: Vec<_> = messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(
        texts,
        ["tick #0", "tick #1", "tick #2", "tick #3", "tick #4"]
    );
    assert_eq!(state.calls.load(Ordering::SeqCst), 2);
    proxy.stop().await;
}

/// Pins: the upstream's non-OK status reaches tonic's client with its code, its message
/// (percent-encoded on the wire, decoded by the client) and its custom metadata, both as
/// tonic's server sends it before any message (trailers-only) and after messages (in
/// trailers, the messages received first).
#[tokio::test]
async fn upstream_status_with_trailing_metadata() {
    let (endpoint, _state, _upstream) = tonic_upstream().await;
    let proxy = proxy_to(&endpoint, "").await;
    let mut client = client_of(&proxy).await;

    let status = unary(&mut client, FAIL, "book 42").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), FAIL_MESSAGE);
    assert_eq!(metadata(&status, "x-detail"), Some("shelf 7"), "{status:?}");

    let (messages, end) = streaming(&mut client, FAIL_LATE, 3).await;
    assert_eq!(messages.len(), 3, "the messages before the status");
    let status = end.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), FAIL_MESSAGE);
    assert_eq!(metadata(&status, "x-detail"), Some("shelf 7"), "{status:?}");
    proxy.stop().await;
}

/// Pins: past a route's rate limit tonic's client sees RESOURCE_EXHAUSTED, `rate-limited`,
/// with `grpc-retry-pushback-ms` in the status's metadata: the wait for the next token
/// (1/m: just under 60,000 ms). The refused call never reached the upstream.
#[tokio::test]
async fn rate_limited_call_is_resource_exhausted_with_pushback() {
    let (endpoint, state, _upstream) = tonic_upstream().await;
    let limit = ", rate_limits: [{ name: calls, key: global, rate: 1/m, burst: 1 }]";
    let proxy = proxy_to(&endpoint, limit).await;
    let mut client = client_of(&proxy).await;

    unary(&mut client, UNARY, "first").await.expect("OK");
    let status = unary(&mut client, UNARY, "second").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), "rate-limited");
    let pushback: u64 = metadata(&status, "grpc-retry-pushback-ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("grpc-retry-pushback-ms in ms: {status:?}"));
    assert!((1..=60_000).contains(&pushback), "{pushback}");
    // The call before took a moment, not most of a minute.
    assert!(pushback >= 30_000, "{pushback}");
    assert_eq!(state.calls.load(Ordering::SeqCst), 1);
    proxy.stop().await;
}

/// Pins: with the route's one slot held by an open call and no queue, tonic's client sees
/// UNAVAILABLE, `queue-full`, with a pushback; the held call, released, still ends OK.
#[tokio::test]
async fn full_cap_is_unavailable() {
    let (endpoint, state, _upstream) = tonic_upstream().await;
    let cap = ", concurrency: { max_inflight: 1, queue: 0 }";
    let proxy = proxy_to(&endpoint, cap).await;
    let mut client = client_of(&proxy).await;

    let mut holder = client.clone();
    let held = tokio::spawn(async move { unary(&mut holder, UNARY, "hold").await });
    until(
        "the held call at the upstream",
        Duration::from_secs(20),
        || state.calls.load(Ordering::SeqCst) == 1,
    )
    .await;

    let status = unary(&mut client, UNARY, "second").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "queue-full");
    let pushback: u64 = metadata(&status, "grpc-retry-pushback-ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("grpc-retry-pushback-ms in ms: {status:?}"));
    assert!(pushback > 0, "{pushback}");
    assert_eq!(state.calls.load(Ordering::SeqCst), 1, "refused at sluice");

    state.release.notify_one();
    let answer = held.await.unwrap().expect("the held call ends OK");
    assert_eq!(answer.get_ref().text, "echo: hold");
    proxy.stop().await;
}

/// Pins: an upstream slower than its `timeout` (300 ms here; the client's own deadline, 10 s,
/// is sent as `10000000u` and is the longer) is DEADLINE_EXCEEDED, `upstream-timeout`, to
/// tonic's client, in well under the client's deadline.
#[tokio::test]
async fn upstream_timeout_is_deadline_exceeded() {
    let (endpoint, state, _upstream) = tonic_upstream().await;
    let proxy = start_proxy(&format!(
        "server: {{ listen: 127.0.0.1:0 }}\n\
         upstreams:\n  api: {{ endpoints: ['{endpoint}'], protocol: http2, timeout: 300ms }}\n\
         routes: [{{ name: all, upstream: api }}]\n"
    ))
    .await;
    let mut client = client_of(&proxy).await;

    let started = Instant::now();
    let deadline = Some(Duration::from_secs(10));
    let status = unary_within(&mut client, UNARY, "hold", deadline)
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.message(), "upstream-timeout");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(state.calls.load(Ordering::SeqCst), 1);
    proxy.stop().await;
}

/// Pins: a client deadline shorter than the upstream's `timeout` frees the route's slot when it
/// passes. tonic enforces its deadline itself, so its client ends the call first (CANCELLED,
/// "Timeout expired", the stream reset; sluice's DEADLINE_EXCEEDED for `grpc-timeout`, a
/// moment later, is for clients that do not); then, with the one slot of `max_inflight: 1`
/// held at the upstream for up to 10 s, a call within 3 s is answered OK: sluice let go of the
/// abandoned one.
#[tokio::test]
async fn client_deadline_frees_the_slot() {
    let (endpoint, state, _upstream) = tonic_upstream().await;
    let cap = ", concurrency: { max_inflight: 1, queue: 0 }";
    let proxy = proxy_to(&endpoint, cap).await;
    let mut client = client_of(&proxy).await;

    // Long enough for the call to reach the upstream on a loaded machine.
    let deadline = Some(Duration::from_secs(1));
    let status = unary_within(&mut client, UNARY, "hold", deadline)
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{status:?}"
    );
    assert_eq!(
        state.calls.load(Ordering::SeqCst),
        1,
        "the call reached the upstream"
    );

    let started = Instant::now();
    loop {
        match unary(&mut client, UNARY, "next").await {
            Ok(answer) => {
                assert_eq!(answer.get_ref().text, "echo: next");
                break;
            }
            Err(status) if status.code() == Code::Unavailable => {
                assert!(
                    started.elapsed() < Duration::from_secs(3),
                    "the slot still held: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
    proxy.stop().await;
}

/// sluice with `server` (YAML flow-map members) in front of `endpoint`, one route.
async fn proxy_with_server(endpoint: &str, server: &str) -> Proxy {
    start_proxy(&format!(
        "server: {{ listen: 127.0.0.1:0, {server} }}\n\
         upstreams:\n  api: {{ endpoints: ['{endpoint}'], protocol: http2, timeout: 10s }}\n\
         routes: [{{ name: all, upstream: api }}]\n"
    ))
    .await
}

/// Pins: a bidirectional call whose client sends its next message only after the reply to the
/// last one (its stream open throughout) is answered message by message: sluice does not hold
/// a gRPC request's body until it ends or fills `request_buffer` (before, the call never
/// reached the upstream and ended in DEADLINE_EXCEEDED `body-timeout` after
/// `request_body_timeout`, here 5 s).
#[tokio::test]
async fn bidirectional_call_is_answered_message_by_message() {
    let (endpoint, state, _upstream) = tonic_upstream().await;
    let proxy = proxy_with_server(&endpoint, "request_body_timeout: 5s").await;
    let mut client = client_of(&proxy).await;

    let call = async {
        let (tx, rx) = tokio::sync::mpsc::channel::<Echo>(1);
        let outgoing = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let say = |n: u32| Echo {
            text: format!("ping {n}"),
            count: n,
        };
        tx.send(say(0)).await.unwrap();
        client.ready().await.expect("the channel is ready");
        let mut replies: Streaming<Echo> = client
            .streaming(
                Request::new(outgoing),
                PathAndQuery::from_static(CHAT),
                ProstCodec::default(),
            )
            .await
            .expect("the call's response head")
            .into_inner();
        for n in 0..3 {
            if n > 0 {
                tx.send(say(n)).await.unwrap();
            }
            let reply = replies
                .message()
                .await
                .expect("a reply")
                .expect("not the end");
            assert_eq!(reply.text, format!("echo: ping {n}"));
        }
        drop(tx);
        let end = replies.message().await.expect("the call ends OK");
        assert!(end.is_none(), "{end:?}");
    };
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the call ended within 30 s");
    assert_eq!(state.calls.load(Ordering::SeqCst), 1);
    proxy.stop().await;
}

/// Pins: a request message larger than `max_request_body` (the body streamed to the upstream,
/// the limit found on the way) is INVALID_ARGUMENT, `body-too-large`, to tonic's client; the
/// connection serves the next call.
#[tokio::test]
async fn body_over_the_limit_is_invalid_argument() {
    let (endpoint, _state, _upstream) = tonic_upstream().await;
    let proxy = proxy_with_server(&endpoint, "max_request_body: 64KiB").await;
    let mut client = client_of(&proxy).await;

    let big = "x".repeat(300_000);
    let status = unary(&mut client, UNARY, &big).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(status.message(), "body-too-large");
    let answer = unary(&mut client, UNARY, "small").await.expect("OK");
    assert_eq!(answer.get_ref().text, "echo: small");
    proxy.stop().await;
}
