//! The fleet behind sluice: endpoints from names (in a temporary `/etc/hosts` entry), re-resolved
//! under load, balancing, and what `sluice check` says of names. Upstream servers run on
//! 127.0.0.2, .3 and .4 with one port.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;

use crate::support::bin::{self, finish};
use crate::support::fleet::{Fleet, Hosts};
use crate::support::{client, get, send, start_proxy, until, ConfigFile, TestBody};

/// The problem type of `queue-full`, which `upstream-pushback` shares.
const REDUCED_CAPACITY: &str =
    "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity";

/// A config with upstream `api` at `endpoints` (YAML list items) plus `extra` upstream fields,
/// and one route to it.
fn config(endpoints: &str, extra: &str) -> String {
    format!(
        "server: {{ listen: 127.0.0.1:0 }}\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         upstreams: {{ api: {{ endpoints: [{endpoints}], {extra} }} }}\n\
         routes: [{{ name: all, upstream: api }}]\n"
    )
}

/// The limit of upstream `api`'s cap now.
fn cap_limit(proxy: &crate::support::Proxy) -> usize {
    let cap = proxy.shared.runtime().upstream_cap("api");
    cap.expect("upstream api has a cap").limit()
}

/// An upstream that answers 200 at once.
async fn ok_fleet() -> Fleet {
    Fleet::start(|_, _| async { Response::new(TestBody::text("ok")) }).await
}

/// Clients sending GETs in a loop until [`Load::finish`], counting the answers that are not
/// 200.
struct Load {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicUsize>,
    clients: Vec<tokio::task::JoinHandle<usize>>,
}

impl Load {
    fn start(url: String, clients: usize) -> Load {
        let (stop, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let clients = (0..clients)
            .map(|_| {
                let (url, stop, failed) = (url.clone(), stop.clone(), failed.clone());
                tokio::spawn(async move {
                    let client = client();
                    let mut sent = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let req = Request::get(&url).body(Full::new(Bytes::new())).unwrap();
                        if send(&client, req).await.status != StatusCode::OK {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        sent += 1;
                    }
                    sent
                })
            })
            .collect();
        Load {
            stop,
            failed,
            clients,
        }
    }

    /// Stops the clients: (requests sent, answers not 200).
    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let mut sent = 0;
        for c in self.clients {
            sent += c.await.expect("client task");
        }
        (sent, self.failed.load(Ordering::Relaxed))
    }
}

/// sluice in front of `fleet` through `hosts`' name, with `extra` upstream fields.
async fn proxy_for(fleet: &Fleet, hosts: &Hosts, extra: &str) -> crate::support::Proxy {
    let endpoint = format!("http://{}:{}", hosts.name, fleet.port);
    start_proxy(&config(&endpoint, extra)).await
}

/// Pins: an address added to a name gets requests without a reload, one removed stops getting
/// them, and no request fails meanwhile (re-resolution under load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_resolution_under_load_fails_no_request() {
    let fleet = ok_fleet().await;
    let hosts = Hosts::new("reresolve", &[Fleet::ip(0)]);
    let proxy = proxy_for(&fleet, &hosts, "resolve_interval: 100ms").await;
    let load = Load::start(proxy.url("/"), 4);
    until("traffic on .2", Duration::from_secs(10), || {
        fleet.requests()[0] > 20
    })
    .await;
    assert_eq!(fleet.requests()[1], 0, "not a member yet");
    hosts.set(&[Fleet::ip(0), Fleet::ip(1)]);
    until("traffic on .3", Duration::from_secs(10), || {
        fleet.requests()[1] > 20
    })
    .await;
    hosts.set(&[Fleet::ip(1)]);
    // Once .2 is gone, its count stops moving while .3's grows.
    until("no more traffic on .2", Duration::from_secs(10), || async {
        let before = fleet.requests();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = fleet.requests();
        after[0] == before[0] && after[1] > before[1] + 10
    })
    .await;
    let (sent, failed) = load.finish().await;
    assert!(sent > 60, "load ran: {sent}");
    assert_eq!(failed, 0, "of {sent} requests");
    proxy.stop().await;
}

/// Pins: least request sends most requests to the fast endpoint of two (the slow one holds
/// its requests longer, so it is the busier of the two choices).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_favours_the_fast_endpoint() {
    let fleet = Fleet::start(|i, _| async move {
        if i == 1 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Response::new(TestBody::text("ok"))
    })
    .await;
    let hosts = Hosts::new("p2c", &[Fleet::ip(0), Fleet::ip(1)]);
    let proxy = proxy_for(&fleet, &hosts, "balance: least_request").await;
    let load = Load::start(proxy.url("/"), 8);
    until("400 requests", Duration::from_secs(30), || {
        fleet.requests().iter().sum::<usize>() >= 400
    })
    .await;
    let (_, failed) = load.finish().await;
    let [fast, slow, _] = fleet.requests()[..] else {
        unreachable!()
    };
    assert!(slow > 0, "the slow endpoint is still tried");
    assert!(fast > 4 * slow, "fast {fast}, slow {slow}");
    assert_eq!(failed, 0);
    proxy.stop().await;
}

/// Pins: `sluice check` prints what a name resolves to; a name that does not resolve is an
/// error (exit 2, placed at its field) for `check` and `run` unless another endpoint of the
/// upstream resolves; `check --offline` does not resolve.
#[test]
fn check_resolves_names_and_refuses_an_upstream_without_address() {
    let hosts = Hosts::new("check", &[Fleet::ip(0), Fleet::ip(1)]);
    let good = ConfigFile::new(&config(&format!("http://{}:8080", hosts.name), ""));
    let out = finish(bin::command().args(["check", "-c"]).arg(&good.path));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains(&hosts.name) && l.contains("->"))
        .unwrap_or_else(|| panic!("no resolution line in {}", out.stdout));
    assert!(line.contains("127.0.0.2:8080, 127.0.0.3:8080"), "{line}");
    let bad = ConfigFile::new(&config("http://no-such-name.invalid:8080", ""));
    for cmd in ["check", "run"] {
        let out = finish(bin::command().args([cmd, "-c"]).arg(&bad.path));
        assert_eq!(out.code, Some(2), "{cmd}: {}", out.stderr);
        assert!(
            out.stderr.contains(":3:") && out.stderr.contains("upstreams.api.endpoints[0]"),
            "{cmd}: {}",
            out.stderr
        );
    }
    let offline = finish(
        bin::command()
            .args(["check", "--offline", "-c"])
            .arg(&bad.path),
    );
    assert_eq!(offline.code, Some(0), "{}", offline.stderr);
    let other = ConfigFile::new(&config(
        "http://no-such-name.invalid:8080, http://127.0.0.1:8080",
        "",
    ));
    let out = finish(bin::command().args(["check", "-c"]).arg(&other.path));
    assert_eq!(
        out.code,
        Some(0),
        "another endpoint resolves: {}",
        out.stderr
    );
    assert!(out.stdout.contains("not resolved"), "{}", out.stdout);
}

/// An upstream whose server `i` answers `status` with `Retry-After: retry_after` when `i` is in
/// `which`, and 200 otherwise.
async fn answering(status: u16, retry_after: &'static str, which: &'static [usize]) -> Fleet {
    Fleet::start(move |i, _| async move {
        if !which.contains(&i) {
            return Response::new(TestBody::text("ok"));
        }
        Response::builder()
            .status(status)
            .header("retry-after", retry_after)
            .body(TestBody::text("wait"))
            .unwrap()
    })
    .await
}

/// Pins: an endpoint that answers 503 with `Retry-After` gets no request while the others
/// take them (the GET it answered so is retried on another); when every endpoint has asked to wait, sluice answers 503 `upstream-pushback`
/// at once, with the problem type of `queue-full` and a `Retry-After` no longer than asked,
/// without contacting the upstream (counted as `upstream_pushback`).
#[tokio::test]
async fn pushback_is_honoured_and_answered_at_the_edge() {
    let fleet = answering(503, "30", &[0]).await;
    let hosts = Hosts::new("pushback", &[Fleet::ip(0), Fleet::ip(1)]);
    let proxy = proxy_for(
        &fleet,
        &hosts,
        "balance: round_robin, resolve_interval: 100ms",
    )
    .await;
    let mut codes = Vec::new();
    for _ in 0..20 {
        codes.push(get(&proxy.url("/")).await.status.as_u16());
    }
    assert_eq!(
        fleet.requests()[0],
        1,
        "asked once, then left alone: {codes:?}"
    );
    // The one 503 with Retry-After was retried on .3 (a GET): every client got a 200.
    assert_eq!(codes, [200; 20]);
    hosts.set(&[Fleet::ip(0)]);
    // Only .2 now (once re-resolved): its wait is the upstream's.
    until("pushback at the edge", Duration::from_secs(15), || async {
        get(&proxy.url("/")).await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let before = fleet.requests();
    for _ in 0..10 {
        let got = get(&proxy.url("/")).await;
        assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
        let json = got.json();
        assert_eq!(json["reason"], "upstream-pushback", "{json}");
        assert_eq!(json["type"], REDUCED_CAPACITY, "{json}");
        let secs: u64 = got
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .unwrap();
        // At most the 30 s asked for, spread by the default 0.5 (to 45).
        assert!((1..=45).contains(&secs), "{secs}");
    }
    assert_eq!(fleet.requests(), before, "no upstream traffic");
    let pushed = proxy
        .metric("sluice_requests_total{route=\"all\",outcome=\"upstream_pushback\"}")
        .await;
    assert!(pushed >= 10.0, "{pushed}");
    proxy.stop().await;
}

/// Pins: a 429 is about one client: passed on, and every request still reaches the upstream.
#[tokio::test]
async fn a_429_passes_through_and_changes_nothing() {
    let fleet = answering(429, "30", &[0, 1, 2]).await;
    let hosts = Hosts::new("pass429", &[Fleet::ip(0)]);
    let proxy = proxy_for(&fleet, &hosts, "").await;
    for _ in 0..5 {
        let got = get(&proxy.url("/")).await;
        assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(got.header("retry-after"), Some("30"));
    }
    assert_eq!(fleet.requests()[0], 5);
    proxy.stop().await;
}

/// A server on `ip:port` that accepts connections, reads a little and closes them without an
/// answer (a reset before any response byte); counts the connections.
async fn resetting(ip: &str, port: u16) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind((ip, port))
        .await
        .expect("bind the resetting server");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 1024];
            let _ = tcp.read(&mut buf).await;
            drop(tcp);
        }
    });
    (accepted, task)
}

/// Pins: an endpoint that resets connections before answering is ejected after
/// `consecutive_failures` and gets no more requests, while the others serve; an endpoint that
/// is the only one is never ejected.
#[tokio::test]
async fn ejection_of_a_failing_endpoint_never_of_the_last() {
    let fleet = ok_fleet().await;
    let (resets, task) = resetting("127.0.0.5", fleet.port).await;
    let hosts = Hosts::new("eject", &[Fleet::ip(0), "127.0.0.5"]);
    let extra = "balance: round_robin, outlier: { consecutive_failures: 2, ejection: 1m }";
    let proxy = proxy_for(&fleet, &hosts, extra).await;
    let mut bad = 0;
    for _ in 0..30 {
        bad += usize::from(get(&proxy.url("/")).await.status != StatusCode::OK);
    }
    assert_eq!(resets.load(Ordering::SeqCst), 2, "ejected after two");
    assert_eq!(bad, 0, "the two GETs that met a reset were retried on .2");
    // Seen: the metric (every state, at 0 too) and /stats.
    for (state, n) in [
        ("healthy", 1.0),
        ("ejected", 1.0),
        ("unhealthy", 0.0),
        ("pushback", 0.0),
    ] {
        let series = format!("sluice_upstream_endpoints{{upstream=\"api\",state=\"{state}\"}}");
        assert_eq!(proxy.metric(&series).await, n, "{state}");
    }
    let stats = get(&proxy.admin_url("/stats")).await.json();
    let endpoints = &stats["upstreams"][0]["endpoints"];
    let ejected = format!("127.0.0.5:{}", fleet.port);
    let states: Vec<(String, String)> = endpoints
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| {
            (
                e["address"].as_str().unwrap().to_owned(),
                e["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        states.contains(&(ejected, "ejected".to_owned())),
        "{states:?}"
    );
    assert_eq!(states.len(), 2, "{states:?}");
    proxy.stop().await;
    let alone = Hosts::new("eject-last", &["127.0.0.5"]);
    let proxy = proxy_for(&fleet, &alone, extra).await;
    for _ in 0..6 {
        assert_eq!(get(&proxy.url("/")).await.status, StatusCode::BAD_GATEWAY);
    }
    assert_eq!(
        resets.load(Ordering::SeqCst),
        8,
        "the last endpoint is still tried"
    );
    task.abort();
    proxy.stop().await;
}

/// Pins: no client steers the fleet — fast 5xx a client provokes (answers the upstream chose
/// to send) eject nothing: every endpoint keeps its share, and a `per_endpoint` cap its size.
#[tokio::test]
async fn fast_5xx_eject_nothing() {
    let fleet = Fleet::start(|_, req| async move {
        let status = if req.uri().path() == "/bad" { 500 } else { 200 };
        Response::builder()
            .status(status)
            .body(TestBody::text("x"))
            .unwrap()
    })
    .await;
    let hosts = Hosts::new("steer", &[Fleet::ip(0), Fleet::ip(1)]);
    let extra = "balance: round_robin, outlier: { consecutive_failures: 2 }, \
                 concurrency: { per_endpoint: 4 }";
    let proxy = proxy_for(&fleet, &hosts, extra).await;
    assert_eq!(cap_limit(&proxy), 8);
    for _ in 0..20 {
        assert_eq!(get(&proxy.url("/bad")).await.status.as_u16(), 500);
    }
    assert_eq!(
        cap_limit(&proxy),
        8,
        "the per_endpoint cap is not the client's to shrink"
    );
    let before = fleet.requests();
    for _ in 0..20 {
        assert_eq!(get(&proxy.url("/")).await.status, StatusCode::OK);
    }
    let after = fleet.requests();
    assert_eq!(after[0] - before[0], 10, "{before:?} → {after:?}");
    assert_eq!(after[1] - before[1], 10, "{before:?} → {after:?}");
    proxy.stop().await;
}

/// Pins: a failing active health check takes an endpoint out of rotation (and a
/// `per_endpoint` cap down by its share), and passing checks bring it back.
#[tokio::test]
async fn health_check_removes_and_restores_an_endpoint() {
    let sick = Arc::new(AtomicBool::new(false));
    let served = Arc::new([
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    ]);
    let (s, c) = (sick.clone(), served.clone());
    let fleet = Fleet::start(move |i, req| {
        let (sick, served) = (s.clone(), c.clone());
        async move {
            if req.uri().path() == "/healthz" {
                let code = if i == 1 && sick.load(Ordering::SeqCst) {
                    500
                } else {
                    200
                };
                return Response::builder()
                    .status(code)
                    .body(TestBody::text(""))
                    .unwrap();
            }
            served[i].fetch_add(1, Ordering::SeqCst);
            Response::new(TestBody::text("ok"))
        }
    })
    .await;
    let hosts = Hosts::new("health", &[Fleet::ip(0), Fleet::ip(1)]);
    let extra = "balance: round_robin, concurrency: { per_endpoint: 3 }, health_check: { path: /healthz, interval: 100ms, timeout: 1s, unhealthy_after: 2, healthy_after: 2 }";
    let proxy = proxy_for(&fleet, &hosts, extra).await;
    let share_of_3 = || async {
        let before = served[1].load(Ordering::SeqCst);
        for _ in 0..10 {
            assert_eq!(get(&proxy.url("/")).await.status, StatusCode::OK);
        }
        served[1].load(Ordering::SeqCst) - before
    };
    assert_eq!(share_of_3().await, 5, "healthy: half");
    sick.store(true, Ordering::SeqCst);
    assert_eq!(cap_limit(&proxy), 6);
    until("the sick endpoint out", Duration::from_secs(10), || async {
        share_of_3().await == 0
    })
    .await;
    assert_eq!(
        cap_limit(&proxy),
        3,
        "the cap follows the healthy endpoints"
    );
    sick.store(false, Ordering::SeqCst);
    until("the endpoint back", Duration::from_secs(10), || async {
        share_of_3().await == 5
    })
    .await;
    assert_eq!(cap_limit(&proxy), 6);
    proxy.stop().await;
}

/// Pins: a `per_endpoint` cap goes from N to 2N as an address appears under the name, and the
/// requests queued meanwhile are admitted at once (to the new endpoint, the old one being
/// full), before any request finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_endpoint_cap_grows_as_an_address_appears() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let fleet = Fleet::start(move |_, _| {
        let gate = g.clone();
        async move {
            let _ = gate.acquire().await.map(|p| p.forget());
            Response::new(TestBody::text("ok"))
        }
    })
    .await;
    let hosts = Hosts::new("grow", &[Fleet::ip(0)]);
    let extra = "resolve_interval: 100ms, \
                 concurrency: { per_endpoint: 2, queue: 16, queue_timeout: 20s }";
    let proxy = proxy_for(&fleet, &hosts, extra).await;
    assert_eq!(cap_limit(&proxy), 2);
    let url = proxy.url("/");
    let requests: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await.status })
        })
        .collect();
    let inflight = |i: usize| fleet.servers[i].inflight.load(Ordering::SeqCst);
    until("2 in flight on .2", Duration::from_secs(10), || {
        inflight(0) == 2
    })
    .await;
    let cap = proxy.shared.runtime().upstream_cap("api").expect("cap");
    until("4 queued", Duration::from_secs(10), || {
        cap.queue_depth() == 4
    })
    .await;
    hosts.set(&[Fleet::ip(0), Fleet::ip(1)]);
    until("2 more in flight on .3", Duration::from_secs(10), || {
        inflight(1) == 2
    })
    .await;
    assert_eq!(cap_limit(&proxy), 4);
    assert_eq!(cap.queue_depth(), 2);
    gate.add_permits(100);
    for r in requests {
        assert_eq!(r.await.expect("request task"), StatusCode::OK);
    }
    proxy.stop().await;
}

/// The value of `sluice_upstream_retries_total{upstream="api"}` now.
async fn retries(proxy: &crate::support::Proxy) -> f64 {
    proxy
        .metric("sluice_upstream_retries_total{upstream=\"api\"}")
        .await
}

/// Sends `method` to `url`, with an `Idempotency-Key` when `key`; the status.
async fn send_method(url: &str, method: &str, key: bool) -> StatusCode {
    let mut req = Request::builder().method(method).uri(url);
    if key {
        req = req.header("idempotency-key", "k-1");
    }
    let req = req.body(Full::new(Bytes::from_static(b"{}"))).unwrap();
    send(&client(), req).await.status
}

/// Pins: retries that happen — a GET after a refused connection, a GET and a keyed POST after
/// a reset before any response byte, each on another endpoint — and those that must not: a
/// POST without `Idempotency-Key` the upstream may have read.
#[tokio::test]
async fn retries_that_happen_and_those_that_must_not() {
    let fleet = ok_fleet().await;
    let (resets, task) = resetting("127.0.0.5", fleet.port).await;
    // .6 refuses: nothing listens there.
    let hosts = Hosts::new("retry", &[Fleet::ip(0), "127.0.0.5", "127.0.0.6"]);
    let extra = "balance: round_robin, outlier: { consecutive_failures: 1000 }";
    let proxy = proxy_for(&fleet, &hosts, extra).await;
    let url = proxy.url("/");
    for _ in 0..9 {
        assert_eq!(send_method(&url, "GET", false).await, StatusCode::OK);
    }
    assert!(resets.load(Ordering::SeqCst) >= 1, "a GET met the reset");
    let after_gets = retries(&proxy).await;
    assert!(after_gets >= 2.0, "{after_gets}");
    // A POST: the reset endpoint may have read it, so it is not sent again.
    let mut posts = Vec::new();
    for _ in 0..6 {
        posts.push(send_method(&url, "POST", false).await.as_u16());
    }
    assert!(
        posts.contains(&502),
        "a POST met the reset and was not retried: {posts:?}"
    );
    for _ in 0..6 {
        assert_eq!(
            send_method(&url, "POST", true).await,
            StatusCode::OK,
            "keyed"
        );
    }
    task.abort();
    proxy.stop().await;
}

/// Pins: the budget — with `budget: 0%`, retries after resets stop at the floor of 3 a second
/// over 10 s, and the requests beyond it get the upstream's failure.
#[tokio::test]
async fn the_retry_budget_bounds_retries() {
    let fleet = ok_fleet().await;
    let (_resets, task) = resetting("127.0.0.5", fleet.port).await;
    let hosts = Hosts::new("budget", &[Fleet::ip(0), "127.0.0.5"]);
    let extra = "balance: round_robin, outlier: { consecutive_failures: 1000 }, \
                 retry: { attempts: 2, budget: 0% }";
    let proxy = proxy_for(&fleet, &hosts, extra).await;
    let url = proxy.url("/");
    let mut failed = 0;
    for _ in 0..100 {
        failed += usize::from(send_method(&url, "GET", false).await != StatusCode::OK);
    }
    let retried = retries(&proxy).await;
    // Half the first tries or more meet the reset; the floor allows 30 retries in 10 s (more
    // only if the run took longer than that).
    assert!((30.0..=40.0).contains(&retried), "{retried} retries");
    assert!(failed >= 10, "{failed} failed");
    task.abort();
    proxy.stop().await;
}

/// Sends a PUT with `len` bytes of body, streamed by the client in 16 KiB frames; the status.
async fn put_streamed(url: &str, len: usize) -> StatusCode {
    use futures_util::stream;
    use http_body_util::StreamBody;
    let frames: Vec<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>> = (0..len)
        .step_by(16 * 1024)
        .map(|at| {
            let n = (len - at).min(16 * 1024);
            Ok(hyper::body::Frame::data(Bytes::from(vec![b'x'; n])))
        })
        .collect();
    let body = StreamBody::new(stream::iter(frames));
    let req = Request::put(url).body(body).unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<StreamBody<_>>();
    match client.request(req).await {
        Ok(res) => res.status(),
        Err(e) => panic!("PUT through sluice: {e}"),
    }
}

/// Pins: a retry never re-sends a body streamed past `request_buffer`. A PUT (idempotent) whose
/// 64 KiB body streams past a 1 KiB buffer and meets a reset gets 502, and no other endpoint
/// sees it — neither whole nor cut; the same PUT with a body within the buffer is retried and
/// arrives whole.
#[tokio::test]
async fn a_body_streamed_past_the_buffer_is_never_sent_again() {
    use http_body_util::BodyExt;
    let lengths = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = lengths.clone();
    let fleet = Fleet::start(move |_, req: Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        async move {
            let body = req.into_body().collect().await.map(|b| b.to_bytes().len());
            seen.lock().unwrap().push(body.unwrap_or(usize::MAX));
            Response::new(TestBody::text("ok"))
        }
    })
    .await;
    let (resets, task) = resetting("127.0.0.5", fleet.port).await;
    let hosts = Hosts::new("streamed", &[Fleet::ip(0), "127.0.0.5"]);
    let proxy = start_proxy(&format!(
        "server: {{ listen: 127.0.0.1:0, request_buffer: 1KiB }}\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         upstreams: {{ api: {{ endpoints: ['http://{}:{}'], balance: round_robin, \
         outlier: {{ consecutive_failures: 1000 }} }} }}\n\
         routes: [{{ name: all, upstream: api }}]\n",
        hosts.name, fleet.port
    ))
    .await;
    let url = proxy.url("/");
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(put_streamed(&url, 64 * 1024).await.as_u16());
    }
    let streamed_ok = statuses.iter().filter(|&&s| s == 200).count();
    assert!(resets.load(Ordering::SeqCst) >= 1, "a PUT met the reset");
    assert!(statuses.contains(&502), "not retried: {statuses:?}");
    assert_eq!(retries(&proxy).await, 0.0, "{statuses:?}");
    {
        let got = lengths.lock().unwrap();
        assert_eq!(got.len(), streamed_ok, "{statuses:?} vs {got:?}");
        assert!(got.iter().all(|&n| n == 64 * 1024), "cut bodies: {got:?}");
    }
    // Within the buffer, the same PUT is retried and arrives whole.
    for _ in 0..6 {
        assert_eq!(put_streamed(&url, 512).await, StatusCode::OK);
    }
    assert!(retries(&proxy).await >= 1.0, "a buffered PUT was retried");
    let got = lengths.lock().unwrap().clone();
    assert_eq!(got.len(), streamed_ok + 6, "{got:?}");
    assert!(got[streamed_ok..].iter().all(|&n| n == 512), "{got:?}");
    task.abort();
    proxy.stop().await;
}
