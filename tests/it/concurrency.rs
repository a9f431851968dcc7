//! Concurrency caps through a real listener: the cap is never exceeded, bounded priority queues
//! answer 503 (queue-full, queue-timeout, shed) with Retry-After, route caps come before
//! upstream caps, slots are held until the response body is sent and freed when a client goes
//! away, and shadow mode rejects nothing.
//!
//! The test upstream holds each request until the test lets it go (a semaphore), so every step
//! waits for an observable event (requests at the upstream, the cap's queue depth) instead of
//! sleeping.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use sluice::limit::ConcurrencyLimit;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

const REDUCED_CAPACITY: &str =
    "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity";

/// How long any awaited event may take before the test fails (generous: a loaded 2-core CI box).
const PATIENCE: Duration = Duration::from_secs(10);

/// An upstream that holds every request whose path does not contain `free` until the test
/// releases it, and records the order in which requests arrive.
struct Gated {
    up: Upstream,
    gate: Arc<Semaphore>,
    arrived: Arc<Mutex<Vec<String>>>,
}

impl Gated {
    /// Lets `n` held requests (in arrival order) answer.
    fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }
    /// Lets every held request, now and later, answer.
    fn open(&self) {
        self.gate.add_permits(100_000);
    }
    /// Requests being handled by the upstream now.
    fn inflight(&self) -> usize {
        self.up.inflight.load(Ordering::SeqCst)
    }
    /// Paths in the order they reached the upstream.
    fn arrived(&self) -> Vec<String> {
        self.arrived.lock().unwrap().clone()
    }
}

/// A [`Gated`] upstream; a released request then takes `work` before it answers.
async fn gated_upstream(work: Duration) -> Gated {
    let gate = Arc::new(Semaphore::new(0));
    let arrived = Arc::new(Mutex::new(Vec::new()));
    let (g, a) = (gate.clone(), arrived.clone());
    let up = upstream(move |req: Request<Incoming>| {
        let (g, a) = (g.clone(), a.clone());
        async move {
            let path = req.uri().path().to_owned();
            a.lock().unwrap().push(path.clone());
            if !path.contains("free") {
                g.acquire().await.unwrap().forget();
                if !work.is_zero() {
                    tokio::time::sleep(work).await;
                }
            }
            Response::new(TestBody::text(path))
        }
    })
    .await;
    Gated { up, gate, arrived }
}

/// The live cap of upstream `name` (in-process: sluice runs in this test).
fn upstream_cap(proxy: &Proxy, name: &str) -> ConcurrencyLimit {
    proxy
        .shared
        .runtime()
        .upstream_cap(name)
        .unwrap_or_else(|| panic!("upstream {name} has no cap"))
}

/// The live cap of route `name`.
fn route_cap(proxy: &Proxy, name: &str) -> ConcurrencyLimit {
    proxy
        .shared
        .runtime()
        .route_cap(name)
        .unwrap_or_else(|| panic!("route {name} has no cap"))
}

/// GETs `url` in the background.
fn spawn_get(url: String) -> JoinHandle<Got> {
    tokio::spawn(async move { get(&url).await })
}

/// Asserts a capacity 503: status, problem JSON with `reason`, Retry-After in 1..=60 equal to
/// `retry_after`.
fn assert_capacity_503(got: &Got, reason: &str) {
    assert_eq!(
        got.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        got.text()
    );
    assert_eq!(got.header("content-type"), Some("application/problem+json"));
    let p = got.json();
    assert_eq!(p["type"], REDUCED_CAPACITY, "{p}");
    assert_eq!(p["title"], "Service Unavailable", "{p}");
    assert_eq!(p["status"], 503, "{p}");
    assert_eq!(p["reason"], reason, "{p}");
    let secs: u64 = got
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After on a {reason} 503"))
        .parse()
        .expect("Retry-After is delay-seconds");
    assert!(
        (1..=60).contains(&secs),
        "Retry-After {secs} outside 1..=60"
    );
    assert_eq!(
        p["retry_after"], secs,
        "retry_after member differs from the header: {p}"
    );
}

/// Upstream `capped` (cap `max` / `queue` / `timeout`) behind route `r` (all paths).
fn capped(endpoint: &str, max: usize, queue: usize, timeout: &str) -> String {
    capped_routes(
        endpoint,
        max,
        queue,
        timeout,
        "  - name: r\n    upstream: capped\n",
    )
}

/// Upstream `capped` (cap `max` / `queue` / `timeout`) behind `routes` (YAML list items).
fn capped_routes(endpoint: &str, max: usize, queue: usize, timeout: &str, routes: &str) -> String {
    format!(
        r#"
server: {{ listen: 127.0.0.1:0 }}
upstreams:
  capped:
    endpoints: [{endpoint}]
    concurrency: {{ max_inflight: {max}, queue: {queue}, queue_timeout: {timeout} }}
routes:
{routes}"#
    )
}

/// GETs `path` in the background and waits until it is the first request at the upstream.
async fn first_at_upstream(up: &Gated, proxy: &Proxy, path: &str) -> JoinHandle<Got> {
    let got = spawn_get(proxy.url(path));
    until("the first request at the upstream", PATIENCE, || {
        up.inflight() == 1
    })
    .await;
    got
}

/// GETs `path` in the background and waits until `cap`'s queue holds `depth` waiters.
async fn queued_at(
    cap: &ConcurrencyLimit,
    proxy: &Proxy,
    path: &str,
    depth: usize,
) -> JoinHandle<Got> {
    let got = spawn_get(proxy.url(path));
    until(
        &format!("{depth} waiter(s) queued at {path}"),
        PATIENCE,
        || cap.queue_depth() == depth,
    )
    .await;
    got
}

/// 40 concurrent clients against an upstream capped at 4: all are served, and the upstream never
/// sees more than 4 at once (and does see 4: the cap is used, not just respected).
#[tokio::test]
async fn cap_is_never_exceeded() {
    let up = gated_upstream(Duration::from_millis(50)).await;
    let proxy = start_proxy(&capped(&up.up.endpoint(), 4, 100, "10s")).await;
    let cap = upstream_cap(&proxy, "capped");
    let clients: Vec<_> = (0..40)
        .map(|i| spawn_get(proxy.url(&format!("/{i}"))))
        .collect();
    until("4 in flight and 36 queued", PATIENCE, || {
        up.inflight() == 4 && cap.queue_depth() == 36
    })
    .await;
    assert_eq!(up.up.requests(), 4);
    up.open();
    for c in clients {
        let got = c.await.unwrap();
        assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    }
    assert_eq!(up.up.requests(), 40);
    assert_eq!(
        up.up.max_inflight(),
        4,
        "the upstream saw more (or fewer) than the cap at once"
    );
    until("the cap drains", PATIENCE, || {
        cap.inflight() == 0 && cap.queue_depth() == 0
    })
    .await;
    proxy.stop().await;
}

/// Cap and queue full: the next request gets 503 queue-full at once, with Retry-After and the
/// reduced-capacity problem type; the queued one is served later.
#[tokio::test]
async fn full_queue_is_503_queue_full() {
    let up = gated_upstream(Duration::ZERO).await;
    let proxy = start_proxy(&capped(&up.up.endpoint(), 1, 1, "30s")).await;
    let cap = upstream_cap(&proxy, "capped");
    let first = first_at_upstream(&up, &proxy, "/1").await;
    let queued = queued_at(&cap, &proxy, "/2", 1).await;
    let started = Instant::now();
    let got = get(&proxy.url("/3")).await;
    assert_capacity_503(&got, "queue-full");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "queue-full must not wait for queue_timeout"
    );
    assert_eq!(got.json()["route"], "r");
    up.open();
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    assert_eq!(queued.await.unwrap().status, StatusCode::OK);
    assert_eq!(
        up.arrived(),
        ["/1", "/2"],
        "the rejected request reached the upstream"
    );
    proxy.stop().await;
}

/// `queue: 0`: with the slot taken, a request is rejected at once with 503 queue-full.
#[tokio::test]
async fn queue_zero_rejects_at_once() {
    let up = gated_upstream(Duration::ZERO).await;
    let proxy = start_proxy(&capped(&up.up.endpoint(), 1, 0, "30s")).await;
    let first = first_at_upstream(&up, &proxy, "/1").await;
    let started = Instant::now();
    let got = get(&proxy.url("/2")).await;
    assert_capacity_503(&got, "queue-full");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "queue 0 must not wait"
    );
    up.open();
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    assert_eq!(up.up.requests(), 1);
    proxy.stop().await;
}

/// A request that waits queue_timeout without a slot gets 503 queue-timeout, not before.
#[tokio::test]
async fn queue_timeout_is_503() {
    let up = gated_upstream(Duration::ZERO).await;
    let proxy = start_proxy(&capped(&up.up.endpoint(), 1, 5, "400ms")).await;
    let cap = upstream_cap(&proxy, "capped");
    let first = first_at_upstream(&up, &proxy, "/1").await;
    let started = Instant::now();
    let got = get(&proxy.url("/2")).await;
    let took = started.elapsed();
    assert_capacity_503(&got, "queue-timeout");
    assert!(
        took >= Duration::from_millis(400),
        "timed out before queue_timeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "queue_timeout far too late: {took:?}"
    );
    assert_eq!(cap.queue_depth(), 0, "the timed-out waiter is still queued");
    up.open();
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    assert_eq!(up.up.requests(), 1);
    proxy.stop().await;
}

/// An upstream's cap is shared by every route to it: two routes together stay within it.
#[tokio::test]
async fn upstream_cap_is_shared_by_routes() {
    let up = gated_upstream(Duration::ZERO).await;
    let routes = r#"  - { name: a, match: { path_prefix: /a }, upstream: capped }
  - { name: b, match: { path_prefix: /b }, upstream: capped }
"#;
    let proxy = start_proxy(&capped_routes(&up.up.endpoint(), 2, 10, "30s", routes)).await;
    let cap = upstream_cap(&proxy, "capped");
    let clients: Vec<_> = ["/a/1", "/b/1", "/a/2", "/b/2", "/a/3", "/b/3"]
        .into_iter()
        .map(|p| spawn_get(proxy.url(p)))
        .collect();
    until("2 in flight and 4 queued", PATIENCE, || {
        up.inflight() == 2 && cap.queue_depth() == 4
    })
    .await;
    up.open();
    for c in clients {
        assert_eq!(c.await.unwrap().status, StatusCode::OK);
    }
    let arrived = up.arrived();
    assert!(
        arrived.iter().any(|p| p.starts_with("/a")) && arrived.iter().any(|p| p.starts_with("/b"))
    );
    assert_eq!(
        up.up.max_inflight(),
        2,
        "the two routes together exceeded the upstream's cap"
    );
    proxy.stop().await;
}

/// The route's cap is checked before the upstream's: a route capped at 1 (queue 0) rejects its
/// second concurrent request although the upstream has room, and a request waiting at the route
/// cap holds no upstream slot.
#[tokio::test]
async fn route_cap_comes_before_upstream_cap() {
    let up = gated_upstream(Duration::ZERO).await;
    let routes = r#"  - name: strict
    match: { path_prefix: /strict }
    upstream: capped
    concurrency: { max_inflight: 1, queue: 1, queue_timeout: 30s }
  - { name: other, match: { path_prefix: /other }, upstream: capped }
"#;
    let proxy = start_proxy(&capped_routes(&up.up.endpoint(), 2, 0, "30s", routes)).await;
    let strict = route_cap(&proxy, "strict");
    let upstream = upstream_cap(&proxy, "capped");
    let first = first_at_upstream(&up, &proxy, "/strict/1").await;
    // Waits at the route cap; must not take the upstream's second slot meanwhile.
    let second = queued_at(&strict, &proxy, "/strict/2", 1).await;
    assert_eq!(
        upstream.inflight(),
        1,
        "a request queued at the route cap holds an upstream slot"
    );
    // The route's queue is full: rejected by the route cap though the upstream has a free slot.
    let third = get(&proxy.url("/strict/3")).await;
    assert_capacity_503(&third, "queue-full");
    assert_eq!(upstream.inflight(), 1);
    // Another route gets the upstream's free slot.
    let other = spawn_get(proxy.url("/other/1"));
    until(
        "the other route's request at the upstream",
        PATIENCE,
        || up.inflight() == 2,
    )
    .await;
    up.open();
    for c in [first, second, other] {
        assert_eq!(c.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(up.arrived(), ["/strict/1", "/other/1", "/strict/2"]);
    proxy.stop().await;
}

/// Priority: with the cap held and the queue full of `low` requests, a `critical` arrival evicts
/// the newest low waiter (503 shed) and is served before the older low waiter; a request of
/// equal priority to every waiter evicts nobody (503 queue-full).
#[tokio::test]
async fn higher_priority_sheds_the_newest_lower_waiter() {
    let up = gated_upstream(Duration::ZERO).await;
    let routes = r#"  - { name: low, match: { path_prefix: /low }, upstream: capped, priority: low }
  - { name: crit, match: { path_prefix: /crit }, upstream: capped, priority: critical }
"#;
    let proxy = start_proxy(&capped_routes(&up.up.endpoint(), 1, 2, "30s", routes)).await;
    let cap = upstream_cap(&proxy, "capped");
    let running = first_at_upstream(&up, &proxy, "/low/0").await;
    let older = queued_at(&cap, &proxy, "/low/1", 1).await;
    let newer = queued_at(&cap, &proxy, "/low/2", 2).await;

    let critical = spawn_get(proxy.url("/crit/1"));
    let shed = tokio::time::timeout(PATIENCE, newer)
        .await
        .expect("the newest low waiter was not shed")
        .unwrap();
    assert_capacity_503(&shed, "shed");
    assert_eq!(shed.json()["route"], "low");
    assert_eq!(
        cap.queue_depth(),
        2,
        "the critical request takes the shed one's place"
    );

    // The queue holds [critical, low]: a low arrival has equal priority to the lowest waiter.
    let equal = get(&proxy.url("/low/3")).await;
    assert_capacity_503(&equal, "queue-full");

    // Free the slot: the critical request goes next, then the older low one.
    up.release(1);
    assert_eq!(running.await.unwrap().status, StatusCode::OK);
    until("the next request at the upstream", PATIENCE, || {
        up.up.requests() == 2
    })
    .await;
    assert_eq!(up.arrived()[1], "/crit/1", "critical was not served first");
    up.open();
    assert_eq!(critical.await.unwrap().text(), "/crit/1");
    assert_eq!(older.await.unwrap().text(), "/low/1");
    assert_eq!(up.arrived(), ["/low/0", "/crit/1", "/low/1"]);
    proxy.stop().await;
}

/// A critical request never evicts another critical one: a full queue of equals means queue-full.
#[tokio::test]
async fn equal_priority_never_evicts() {
    let up = gated_upstream(Duration::ZERO).await;
    let routes = "  - { name: crit, upstream: capped, priority: critical }\n";
    let proxy = start_proxy(&capped_routes(&up.up.endpoint(), 1, 1, "30s", routes)).await;
    let cap = upstream_cap(&proxy, "capped");
    let running = first_at_upstream(&up, &proxy, "/1").await;
    let waiting = queued_at(&cap, &proxy, "/2", 1).await;
    assert_capacity_503(&get(&proxy.url("/3")).await, "queue-full");
    up.open();
    assert_eq!(running.await.unwrap().status, StatusCode::OK);
    assert_eq!(
        waiting.await.unwrap().status,
        StatusCode::OK,
        "an equal-priority waiter was evicted"
    );
    proxy.stop().await;
}

/// Sends a request on a raw connection and returns it, to be dropped mid-request.
async fn raw_request(proxy: &Proxy, path: &str) -> TcpStream {
    let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .await
        .unwrap();
    conn
}

/// A queued client that goes away leaves the queue at once and is never forwarded; an in-flight
/// client that goes away frees its slot: afterwards a request with `queue: 0` gets the slot.
#[tokio::test]
async fn disconnected_clients_free_their_place() {
    let up = gated_upstream(Duration::ZERO).await;
    let proxy = start_proxy(&capped(&up.up.endpoint(), 1, 1, "30s")).await;
    let cap = upstream_cap(&proxy, "capped");

    let in_flight = raw_request(&proxy, "/held").await;
    until("the held request at the upstream", PATIENCE, || {
        up.inflight() == 1
    })
    .await;
    let queued = raw_request(&proxy, "/queued").await;
    until("one waiter", PATIENCE, || cap.queue_depth() == 1).await;
    drop(queued);
    until("the gone waiter to leave the queue", PATIENCE, || {
        cap.queue_depth() == 0
    })
    .await;
    assert_eq!(cap.inflight(), 1);

    drop(in_flight);
    until("the gone client's slot to be freed", PATIENCE, || {
        cap.inflight() == 0
    })
    .await;
    // The upstream still holds the abandoned request; a new one must get the slot anyway.
    let got = get(&proxy.url("/free")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.text(), "/free");
    assert!(
        !up.arrived().contains(&"/queued".to_owned()),
        "a gone waiter was forwarded: {:?}",
        up.arrived()
    );
    up.open();
    proxy.stop().await;
}

/// Metrics (admin listener): the queue-depth and in-flight gauges follow waiters and in-flight
/// requests whose clients go away, back to 0.
#[tokio::test]
async fn disconnects_bring_gauges_back_to_zero() {
    let up = gated_upstream(Duration::ZERO).await;
    let yaml = capped(&up.up.endpoint(), 1, 4, "30s").replace(
        "server: { listen: 127.0.0.1:0 }",
        "server: { listen: 127.0.0.1:0 }\nadmin: { listen: 127.0.0.1:0 }",
    );
    let proxy = start_proxy(&yaml).await;
    let depth = "sluice_queue_depth{upstream=\"capped\"}";
    let inflight = "sluice_inflight{upstream=\"capped\"}";

    let held = raw_request(&proxy, "/held").await;
    until("the held request at the upstream", PATIENCE, || {
        up.inflight() == 1
    })
    .await;
    let mut queued = Vec::new();
    for i in 0..3 {
        queued.push(raw_request(&proxy, &format!("/queued/{i}")).await);
    }
    until("queue depth 3", PATIENCE, || async {
        proxy.metric(depth).await == 3.0
    })
    .await;
    assert_eq!(proxy.metric(inflight).await, 1.0);
    assert_eq!(
        proxy
            .metric("sluice_utilization{upstream=\"capped\"}")
            .await,
        1.0
    );

    drop(queued);
    until("queue depth 0", PATIENCE, || async {
        proxy.metric(depth).await == 0.0
    })
    .await;
    assert_eq!(proxy.metric(inflight).await, 1.0);
    drop(held);
    until("in-flight 0", PATIENCE, || async {
        proxy.metric(inflight).await == 0.0
    })
    .await;
    assert_eq!(
        proxy
            .metric("sluice_utilization{upstream=\"capped\"}")
            .await,
        0.0
    );
    assert_eq!(up.up.requests(), 1, "a gone waiter was forwarded");
    up.open();
    proxy.stop().await;
}

/// A raw upstream whose `/stream` response sends its head and a first part at once, and the
/// rest only when `finish` is notified; any other path answers `ok` at once.
async fn streaming_upstream(finish: Arc<Notify>) -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let finish = finish.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // Read one request head (GETs only: no body follows).
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 1024];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                    buf.drain(..head_end);
                    let ok = if head.starts_with("GET /stream ") {
                        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nfirst")
                            .await
                            .is_ok()
                            && {
                                finish.notified().await;
                                conn.write_all(b"-last").await.is_ok()
                            }
                    } else {
                        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                            .is_ok()
                    };
                    if !ok {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), task)
}

/// The slot is held until the response body has been sent whole, not just its head: while a
/// body still streams, a request with `queue: 0` gets 503; once it is done, the next succeeds.
#[tokio::test]
async fn slot_is_held_until_the_body_is_sent() {
    let finish = Arc::new(Notify::new());
    let (endpoint, _task) = streaming_upstream(finish.clone()).await;
    let proxy = start_proxy(&capped(&endpoint, 1, 0, "30s")).await;
    let cap = upstream_cap(&proxy, "capped");
    let cl = client();
    let res = tokio::time::timeout(
        PATIENCE,
        cl.request(
            Request::get(proxy.url("/stream"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        ),
    )
    .await
    .expect("response head in time")
    .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let frame = tokio::time::timeout(PATIENCE, body.frame())
        .await
        .expect("first part in time");
    let first = frame.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"first");

    // Head and a part sent, the rest pending: the slot is still taken.
    assert_eq!(cap.inflight(), 1);
    assert_capacity_503(&get(&proxy.url("/other")).await, "queue-full");

    finish.notify_one();
    let mut rest = Vec::new();
    while let Some(frame) = tokio::time::timeout(PATIENCE, body.frame())
        .await
        .expect("rest in time")
    {
        rest.extend_from_slice(&frame.unwrap().into_data().unwrap_or_default());
    }
    assert_eq!(rest, b"-last");
    until("the slot to be released after the body", PATIENCE, || {
        cap.inflight() == 0
    })
    .await;
    let got = get(&proxy.url("/other")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.text(), "ok");
    proxy.stop().await;
}

fn shadow_capped(endpoint: &str) -> String {
    format!(
        r#"
server: {{ listen: 127.0.0.1:0 }}
admin: {{ listen: 127.0.0.1:0 }}
upstreams:
  capped:
    endpoints: [{endpoint}]
    concurrency: {{ max_inflight: 1, queue: 0, queue_timeout: 30s }}
routes:
  - name: r
    upstream: capped
    mode: shadow
    concurrency: {{ max_inflight: 1, queue: 0, queue_timeout: 30s }}
"#
    )
}

/// Three requests held at once through a shadow route capped at 1 (route and upstream).
async fn three_through_shadow_caps(up: &Gated, proxy: &Proxy) {
    let clients: Vec<_> = (0..3)
        .map(|i| spawn_get(proxy.url(&format!("/{i}"))))
        .collect();
    until("all three at the upstream at once", PATIENCE, || {
        up.inflight() == 3
    })
    .await;
    up.open();
    for c in clients {
        let got = c.await.unwrap();
        assert_eq!(
            got.status,
            StatusCode::OK,
            "shadow mode rejected: {}",
            got.text()
        );
    }
}

/// `mode: shadow` on a capped route: nothing is rejected or queued, and the upstream may see
/// more than the cap at once.
#[tokio::test]
async fn shadow_mode_enforces_no_cap() {
    let up = gated_upstream(Duration::ZERO).await;
    let proxy = start_proxy(&shadow_capped(&up.up.endpoint())).await;
    three_through_shadow_caps(&up, &proxy).await;
    assert_eq!(up.up.max_inflight(), 3);
    assert_eq!(up.up.requests(), 3);
    proxy.stop().await;
}

/// Metrics (admin listener): in shadow mode, what the caps would have rejected is counted with
/// `shadow="true"` (two of three concurrent requests against a cap of 1 with no queue), and
/// nothing as a real rejection.
#[tokio::test]
async fn shadow_mode_counts_what_the_cap_would_reject() {
    let up = gated_upstream(Duration::ZERO).await;
    let proxy = start_proxy(&shadow_capped(&up.up.endpoint())).await;
    three_through_shadow_caps(&up, &proxy).await;
    let m = get(&proxy.admin_url("/metrics")).await.text();
    assert_eq!(
        expect_metric(
            &m,
            "sluice_requests_total{route=\"r\",outcome=\"forwarded\"}"
        ),
        3.0,
        "{m}"
    );
    assert_eq!(
        expect_metric(
            &m,
            "sluice_requests_total{route=\"r\",outcome=\"queue_full\"}"
        ),
        0.0,
        "{m}"
    );
    assert!(
        expect_metric(
            &m,
            "sluice_requests_total{route=\"r\",outcome=\"queue_full\",shadow=\"true\"}"
        ) >= 2.0,
        "shadow mode did not count the requests the cap would have rejected:\n{m}"
    );
    proxy.stop().await;
}

/// GETs `path` as `tenant` (header `X-Tenant`) in the background.
fn spawn_get_as(url: String, tenant: &'static str) -> JoinHandle<Got> {
    tokio::spawn(async move {
        let req = Request::get(&url)
            .header("x-tenant", tenant)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        crate::support::send(&crate::support::client(), req).await
    })
}

/// A route cap of 1 with a queue of 20, `fair` added to its `concurrency`, in front of `up`.
async fn tenants_proxy(up: &Gated, fair: &str) -> Proxy {
    start_proxy(&format!(
        "server: {{ listen: 127.0.0.1:0 }}\n\
         upstreams: {{ api: {{ endpoints: ['{}'] }} }}\n\
         routes: [{{ name: r, upstream: api, concurrency: \
         {{ max_inflight: 1, queue: 20, queue_timeout: 10s {fair} }} }}]\n",
        up.up.endpoint()
    ))
    .await
}

/// Where the light tenant's one request reached the upstream (0 = first), after a heavy
/// tenant took the slot and queued 8 more before it.
async fn light_position(fair: &str) -> usize {
    let up = gated_upstream(Duration::ZERO).await;
    let proxy = tenants_proxy(&up, fair).await;
    let cap = route_cap(&proxy, "r");
    let mut all = vec![spawn_get_as(proxy.url("/heavy-0"), "heavy")];
    until("the heavy tenant holds the slot", PATIENCE, || {
        up.inflight() == 1
    })
    .await;
    for i in 1..=8 {
        all.push(spawn_get_as(proxy.url(&format!("/heavy-{i}")), "heavy"));
        until("queued", PATIENCE, || cap.queue_depth() == i).await;
    }
    all.push(spawn_get_as(proxy.url("/light"), "light"));
    until("the light request queued", PATIENCE, || {
        cap.queue_depth() == 9
    })
    .await;
    up.open();
    for got in all {
        assert_eq!(got.await.unwrap().status, StatusCode::OK);
    }
    proxy.stop().await;
    let arrived = up.arrived();
    arrived
        .iter()
        .position(|p| p == "/light")
        .unwrap_or_else(|| panic!("{arrived:?}"))
}

/// Pins: with `fair_by`, a tenant's flood does not delay another tenant's request behind all of
/// it: the light tenant's request reaches the upstream third (after the heavy request holding
/// the slot and the one whose turn came first), where arrival order puts it tenth.
#[tokio::test]
async fn fair_by_serves_a_light_tenant_between_a_heavy_ones_requests() {
    assert_eq!(light_position(", fair_by: 'header:X-Tenant'").await, 2);
    assert_eq!(
        light_position("").await,
        9,
        "without fair_by: arrival order"
    );
}

/// Pins: `max_queued_per_key` — a tenant with that many waiters gets 503 `queue-full` at once,
/// while another tenant still queues and is served.
#[tokio::test]
async fn max_queued_per_key_refuses_the_flooding_tenant_only() {
    let up = gated_upstream(Duration::ZERO).await;
    let fair = ", fair_by: 'header:X-Tenant', max_queued_per_key: 3";
    let proxy = tenants_proxy(&up, fair).await;
    let cap = route_cap(&proxy, "r");
    let mut held = vec![spawn_get_as(proxy.url("/heavy-0"), "heavy")];
    until("the slot taken", PATIENCE, || up.inflight() == 1).await;
    for i in 1..=3 {
        held.push(spawn_get_as(proxy.url(&format!("/heavy-{i}")), "heavy"));
        until("queued", PATIENCE, || cap.queue_depth() == i).await;
    }
    let refused = spawn_get_as(proxy.url("/heavy-4"), "heavy").await.unwrap();
    assert_capacity_503(&refused, "queue-full");
    held.push(spawn_get_as(proxy.url("/light"), "light"));
    until("the other tenant queued", PATIENCE, || {
        cap.queue_depth() == 4
    })
    .await;
    up.open();
    for got in held {
        assert_eq!(got.await.unwrap().status, StatusCode::OK);
    }
    proxy.stop().await;
}
