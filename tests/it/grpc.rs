//! gRPC through sluice, with an h2c client and an HTTP/2 upstream speaking gRPC's framing
//! (HTTP/2, `content-type: application/grpc`, status in trailers): trailers relayed, sluice's
//! own refusals answered as gRPC statuses (trailers-only, `grpc-retry-pushback-ms`), and
//! `grpc-timeout` bounding the wait for the upstream.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::support::*;

/// A gRPC-like upstream over h2c: answers a message frame, then trailers `grpc-status: 5`,
/// `grpc-message: not found` and metadata `x-meta: kept`, after `delay`. The request's `te`
/// comes back in `x-te`.
async fn grpc_upstream(delay: Duration) -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let te = req.headers().get("te").cloned();
                    tokio::time::sleep(delay).await;
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", "5".parse().unwrap());
                    trailers.insert("grpc-message", "not found".parse().unwrap());
                    trailers.insert("x-meta", "kept".parse().unwrap());
                    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                        Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi"))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let mut res = Response::builder()
                        .header("content-type", "application/grpc")
                        .body(StreamBody::new(futures_util::stream::iter(frames)))
                        .unwrap();
                    if let Some(te) = te {
                        res.headers_mut().insert("x-te", te);
                    }
                    Ok::<_, Infallible>(res)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), task)
}

/// A config with `endpoint` as upstream `api` (`protocol: http2`) and one route with `route`
/// (YAML flow-map members, may be empty).
fn config(endpoint: &str, route: &str) -> String {
    format!(
        "server: {{ listen: 127.0.0.1:0 }}\n\
         upstreams:\n  api: {{ endpoints: ['{endpoint}'], protocol: http2, timeout: 5s }}\n\
         routes: [{{ name: all, upstream: api{route} }}]\n"
    )
}

/// A unary gRPC call through `proxy` (h2c), with `headers` added; the response head and its
/// body read whole (data and trailers).
async fn call(proxy: &Proxy, headers: &[(&str, &str)]) -> (Response<()>, Bytes, Option<HeaderMap>) {
    let mut req = Request::post(proxy.url("/pkg.Service/Method"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x02hi")))
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(30), h2c_client().request(req))
        .await
        .expect("answered within 30 s")
        .expect("an HTTP/2 response");
    let (parts, body) = res.into_parts();
    let collected = body.collect().await.expect("the whole body");
    let trailers = collected.trailers().cloned();
    (
        Response::from_parts(parts, ()),
        collected.to_bytes(),
        trailers,
    )
}

fn header<'a>(map: &'a HeaderMap, name: &str) -> Option<&'a str> {
    map.get(name).and_then(|v| v.to_str().ok())
}

/// The upstream's message and its trailers (status, message, metadata) reach the client;
/// `TE: trailers` reaches the upstream.
#[tokio::test]
async fn trailers_are_relayed() {
    let (endpoint, _upstream) = grpc_upstream(Duration::ZERO).await;
    let proxy = start_proxy(&config(&endpoint, "")).await;
    let (res, body, trailers) = call(&proxy, &[]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(res.headers(), "x-te"), Some("trailers"));
    assert_eq!(&body[..], b"\0\0\0\0\x02hi");
    let trailers = trailers.expect("trailers relayed");
    assert_eq!(header(&trailers, "grpc-status"), Some("5"));
    assert_eq!(header(&trailers, "grpc-message"), Some("not found"));
    assert_eq!(header(&trailers, "x-meta"), Some("kept"));
    proxy.stop().await;
}

/// A rate-limited gRPC call is HTTP 200, trailers-only, `grpc-status: 8`, `grpc-message:
/// rate-limited`, with the exact wait as `grpc-retry-pushback-ms` and the RateLimit fields;
/// the same refusal to a plain request stays a 429.
#[tokio::test]
async fn rate_limited_call_is_resource_exhausted_with_pushback() {
    let (endpoint, _upstream) = grpc_upstream(Duration::ZERO).await;
    let limit = ", rate_limits: [{ name: calls, key: client_ip, rate: 1/m, burst: 1 }]";
    let proxy = start_proxy(&config(&endpoint, limit)).await;
    let (first, _, trailers) = call(&proxy, &[]).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        trailers.as_ref().and_then(|t| header(t, "grpc-status")),
        Some("5")
    );
    let (res, body, trailers) = call(&proxy, &[]).await;
    assert_eq!(res.status(), StatusCode::OK);
    let h = res.headers();
    assert_eq!(header(h, "content-type"), Some("application/grpc"));
    assert_eq!(header(h, "grpc-status"), Some("8"), "{h:?}");
    assert_eq!(header(h, "grpc-message"), Some("rate-limited"));
    let pushback: u64 = header(h, "grpc-retry-pushback-ms")
        .and_then(|v| v.parse().ok())
        .expect("grpc-retry-pushback-ms in ms");
    assert!((50_000..=60_000).contains(&pushback), "{pushback}");
    assert!(h.contains_key("ratelimit"), "{h:?}");
    assert!(body.is_empty() && trailers.is_none(), "trailers-only");
    let plain = get(&proxy.url("/")).await;
    assert_eq!(plain.status, StatusCode::TOO_MANY_REQUESTS);
    proxy.stop().await;
}

/// An upstream that cannot be reached is `grpc-status: 14` (UNAVAILABLE), not a 502.
#[tokio::test]
async fn unreachable_upstream_is_unavailable() {
    let refused = refused_port().await;
    let proxy = start_proxy(&config(&format!("http://{refused}"), "")).await;
    let (res, _, _) = call(&proxy, &[]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(res.headers(), "grpc-status"), Some("14"));
    assert_eq!(
        header(res.headers(), "grpc-message"),
        Some("upstream-unavailable")
    );
    proxy.stop().await;
}

/// `grpc-timeout` shorter than the upstream's `timeout` (5 s) bounds the wait: an upstream
/// answering after 3 s gives `grpc-status: 4` (DEADLINE_EXCEEDED) after about 300 ms.
#[tokio::test]
async fn grpc_timeout_bounds_the_wait() {
    let (endpoint, _upstream) = grpc_upstream(Duration::from_secs(3)).await;
    let proxy = start_proxy(&config(&endpoint, "")).await;
    let started = Instant::now();
    let (res, _, _) = call(&proxy, &[("grpc-timeout", "300m")]).await;
    let took = started.elapsed();
    assert_eq!(header(res.headers(), "grpc-status"), Some("4"), "{res:?}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    proxy.stop().await;
}

/// A gRPC request is never deferred: on a route with `defer: {when: always}` it is forwarded
/// (the upstream's 201 comes back, the upstream saw it at once) while a plain POST gets 202.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_requests_are_never_deferred() {
    use crate::support::deferred::{config, recording};
    use crate::support::redis_server::RedisServer;
    let redis = RedisServer::start().await;
    let (up, log) = recording(Duration::ZERO, |_, _| StatusCode::CREATED).await;
    let proxy = start_proxy(&config(&redis.url(), &up.endpoint(), "", "{when: always}")).await;
    let grpc = send(
        &client(),
        Request::post(proxy.url("/hooks/call"))
            .header("content-type", "application/grpc+proto")
            .header("idempotency-key", "")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap(),
    )
    .await;
    assert_eq!(grpc.status, StatusCode::CREATED, "{}", grpc.text());
    assert_eq!(log.lock().unwrap().len(), 1);
    let plain = crate::support::deferred::post(&proxy.url("/hooks/call"), "x").await;
    assert_eq!(plain.status, StatusCode::ACCEPTED, "{}", plain.text());
    proxy.stop().await;
}

/// A server-streaming call is relayed as it streams: four messages 150 ms apart, then the
/// status in trailers; the client has the first message long before the trailers.
#[tokio::test]
async fn streamed_messages_are_relayed_as_they_come() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _upstream = tokio::spawn(async move {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let svc = service_fn(|_req: Request<Incoming>| async {
            let frames = futures_util::stream::unfold(0u8, |n| async move {
                match n {
                    0..=3 => {
                        if n > 0 {
                            tokio::time::sleep(Duration::from_millis(150)).await;
                        }
                        let message = Bytes::from(vec![0, 0, 0, 0, 1, b'a' + n]);
                        Some((Ok::<_, Infallible>(Frame::data(message)), n + 1))
                    }
                    4 => {
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        Some((Ok(Frame::trailers(trailers)), n + 1))
                    }
                    _ => None,
                }
            });
            let res = Response::builder()
                .header("content-type", "application/grpc")
                .body(StreamBody::new(frames))
                .unwrap();
            Ok::<_, Infallible>(res)
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(tcp), svc)
            .await;
    });
    let proxy = start_proxy(&config(&format!("http://{addr}"), "")).await;
    let req = Request::post(proxy.url("/pkg.Service/Stream"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let started = Instant::now();
    let res = h2c_client().request(req).await.unwrap();
    let mut body = res.into_body();
    let (mut first, mut data, mut status) = (None, Vec::new(), None);
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(chunk) = frame.data_ref() {
            first.get_or_insert_with(|| started.elapsed());
            data.extend_from_slice(chunk);
        } else if let Some(trailers) = frame.trailers_ref() {
            status = header(trailers, "grpc-status").map(str::to_owned);
        }
    }
    let ended = started.elapsed();
    assert_eq!(data.len(), 24, "four messages of 6 bytes");
    assert_eq!(status.as_deref(), Some("0"));
    let first = first.expect("a message");
    assert!(
        ended.saturating_sub(first) >= Duration::from_millis(150),
        "first message at {first:?}, end at {ended:?}: not streamed"
    );
    proxy.stop().await;
}

/// Pins: trailers go both ways — a client's request trailers reach the upstream (a gRPC
/// request's body streams from its first byte, frames as they come), as the upstream's
/// response trailers reach the client.
#[tokio::test]
async fn request_trailers_reach_the_upstream() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let got = req.into_body().collect().await.ok();
                    let seen = got
                        .as_ref()
                        .and_then(|c| c.trailers())
                        .and_then(|t| t.get("x-request-meta"))
                        .cloned();
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    if let Some(seen) = seen {
                        trailers.insert("x-seen", seen);
                    }
                    let frames: Vec<Result<Frame<Bytes>, Infallible>> =
                        vec![Ok(Frame::trailers(trailers))];
                    let res = Response::builder()
                        .header("content-type", "application/grpc")
                        .body(StreamBody::new(futures_util::stream::iter(frames)))
                        .unwrap();
                    Ok::<_, Infallible>(res)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    let proxy = start_proxy(&config(&format!("http://{addr}"), "")).await;
    let mut meta = HeaderMap::new();
    meta.insert("x-request-meta", "from-the-client".parse().unwrap());
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
        Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi"))),
        Ok(Frame::trailers(meta)),
    ];
    let req = Request::post(proxy.url("/pkg.Service/Method"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let res = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("answered within 30 s")
        .expect("an HTTP/2 response");
    let collected = res.into_body().collect().await.expect("the whole body");
    let trailers = collected.trailers().cloned().expect("trailers relayed");
    assert_eq!(header(&trailers, "grpc-status"), Some("0"));
    assert_eq!(
        header(&trailers, "x-seen"),
        Some("from-the-client"),
        "{trailers:?}"
    );
    upstream.abort();
    proxy.stop().await;
}
