//! Shared test harness: sluice started in-process on 127.0.0.1:0 from a YAML string, real
//! upstream servers written here, and a small HTTP client; [`bin`] runs the binary instead,
//! [`wait`] bounds every wait for an event ([`until`]), and [`alone`] keeps the tests that
//! measure against the clock apart. With the `redis` feature, [`redis_server`] starts real
//! Redis servers and clusters, and [`deferred`] is what the deferred-delivery tests share.

pub(crate) mod bin;
#[cfg(feature = "redis")]
pub(crate) mod deferred;
pub(crate) mod fleet;
pub(crate) mod hosts;
#[cfg(feature = "redis")]
pub(crate) mod redis_server;
pub(crate) mod wait;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sluice::app::App;
use sluice::runtime::Shared;
use sluice::shutdown::Shutdown;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub(crate) use wait::until;

/// Held by the tests that measure rates or latencies against the clock under load they make
/// (the adaptive cap's load tests, three instances sharing a global limit) and by those that
/// load the machine hard enough to upset such a measurement (a 1 GiB upload, megabytes of
/// deferred bodies): they run one at a time, beside light tests only. Before the tests were
/// one binary, each file was a process of its own and cargo ran them one after the other; the
/// load tests of a file were already serialised this way. A tokio mutex: it is held across
/// awaits, works from any test's runtime, and is not poisoned when a test holding it fails.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for the other tests that measure or load the machine (see [`ALONE`]) to finish; the
/// guard keeps them out until it is dropped, at the end of the test.
pub(crate) async fn alone() -> tokio::sync::MutexGuard<'static, ()> {
    ALONE.lock().await
}

/// [`alone`] for a test that is not async (it must not be called inside a runtime).
pub(crate) fn alone_blocking() -> tokio::sync::MutexGuard<'static, ()> {
    ALONE.blocking_lock()
}

/// A sluice running in this test process.
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    /// The HTTPS listener, when the config has `server.tls`.
    pub(crate) tls: Option<SocketAddr>,
    pub(crate) admin: Option<SocketAddr>,
    pub(crate) shutdown: Shutdown,
    pub(crate) shared: Arc<Shared>,
    pub(crate) task: JoinHandle<()>,
}

impl Proxy {
    /// `http://127.0.0.1:port` + path.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `http://<admin>` + path.
    pub(crate) fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{}",
            self.admin.expect("admin listener configured"),
            path
        )
    }

    /// Scrapes `/metrics` and returns the value of the sample `series` (name and labels exactly
    /// as exposed). Panics when the series is absent: a misspelt name or label must fail the
    /// test, not read as 0.
    pub(crate) async fn metric(&self, series: &str) -> f64 {
        let text = get(&self.admin_url("/metrics")).await.text();
        expect_metric(&text, series)
    }

    /// `POST /reload` on the admin listener, with no credentials: the config file read again.
    pub(crate) async fn reload(&self) -> Got {
        send(
            &client(),
            Request::post(self.admin_url("/reload"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
    }

    /// Triggers graceful shutdown and waits for the app to stop.
    ///
    /// # Panics
    /// When the app has not stopped within 20 s, or its task panicked: a test whose proxy does
    /// not shut down cleanly fails instead of passing late.
    pub(crate) async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("sluice stopped within 20 s of shutdown")
            .expect("the app task ended without a panic");
    }
}

/// Starts sluice from YAML. `listen` should be `127.0.0.1:0`.
pub(crate) async fn start_proxy(yaml: &str) -> Proxy {
    let config = sluice::config::from_yaml(yaml, Path::new("test.yaml"))
        .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{yaml}"));
    start_config(config).await
}

/// A port that was free a moment ago (bound, then released). Racy: between the release and the
/// binary's own bind, another process (a test running in parallel) may take it. Only for what must be
/// told its port before it starts (a config naming it, a redis-server child); the rest listens
/// on port 0.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh directory `sluice-<what>-<pid>-<n>` under the system's temporary directory, for
/// one test (the counter keeps parallel tests of one process apart). The caller removes it.
pub(crate) fn temp_dir(what: &str) -> std::path::PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sluice-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A temporary config file (for reload tests); removed with its directory at drop.
pub(crate) struct ConfigFile {
    pub(crate) path: std::path::PathBuf,
}

impl ConfigFile {
    pub(crate) fn new(yaml: &str) -> Self {
        let path = temp_dir("test").join("sluice.yaml");
        std::fs::write(&path, yaml).unwrap();
        ConfigFile { path }
    }

    /// Replaces the file's content (atomically, as editors and config management do).
    pub(crate) fn write(&self, yaml: &str) {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Starts sluice from a config file (so that reload reads it again).
pub(crate) async fn start_proxy_file(file: &ConfigFile) -> Proxy {
    let config =
        sluice::config::load(&file.path).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
    start_config(config).await
}

/// Starts sluice from a loaded config.
pub(crate) async fn start_config(config: sluice::config::Config) -> Proxy {
    let app = App::bind(config).await.expect("bind");
    let addr = app.http_addr();
    let tls = app.tls_addr();
    let admin = app.admin_addr();
    let shutdown = app.shutdown_handle();
    let shared = app.shared();
    let task = tokio::spawn(app.run());
    Proxy {
        addr,
        tls,
        admin,
        shutdown,
        shared,
        task,
    }
}

/// The body test upstreams answer with.
pub(crate) enum TestBody {
    Full(Option<Bytes>),
    /// `remaining` bytes in chunks of `chunk` bytes, generated on the fly.
    Generated {
        remaining: u64,
        chunk: usize,
    },
}

impl TestBody {
    pub(crate) fn text(s: impl Into<String>) -> Self {
        TestBody::Full(Some(Bytes::from(s.into())))
    }
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            TestBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            TestBody::Generated { remaining, chunk } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let n = (*chunk as u64).min(*remaining) as usize;
                *remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; n])))))
            }
        }
    }
}

type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>
        + Send
        + Sync,
>;

/// A real HTTP server for tests, counting requests and in-flight requests.
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    pub(crate) requests: Arc<AtomicUsize>,
    pub(crate) inflight: Arc<AtomicUsize>,
    pub(crate) max_inflight: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Upstream {
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub(crate) fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    pub(crate) fn max_inflight(&self) -> usize {
        self.max_inflight.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts an upstream answering with `handler`.
pub(crate) async fn upstream<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    upstream_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), handler)
}

/// Starts an upstream answering with `handler` on `listener` (bound by the caller: e.g. on a
/// port that refused connections until now).
pub(crate) fn upstream_on<F, Fut>(listener: TcpListener, handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let inflight = Arc::new(AtomicUsize::new(0));
    let max_inflight = Arc::new(AtomicUsize::new(0));
    let (r, i, m) = (requests.clone(), inflight.clone(), max_inflight.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (handler, r, i, m) = (handler.clone(), r.clone(), i.clone(), m.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let (handler, r, i, m) = (handler.clone(), r.clone(), i.clone(), m.clone());
                    async move {
                        r.fetch_add(1, Ordering::SeqCst);
                        let now = i.fetch_add(1, Ordering::SeqCst) + 1;
                        m.fetch_max(now, Ordering::SeqCst);
                        let res = handler(req).await;
                        i.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(res)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        requests,
        inflight,
        max_inflight,
        task,
    }
}

/// An upstream answering 200 "ok" at once.
pub(crate) async fn ok_upstream() -> Upstream {
    upstream(|_| async { Response::new(TestBody::text("ok")) }).await
}

/// An upstream that echoes what it received as JSON: method, uri, version and headers.
pub(crate) async fn echo_upstream() -> Upstream {
    upstream(|req: Request<Incoming>| async move {
        let mut headers = serde_json::Map::new();
        for (name, value) in req.headers() {
            headers.insert(
                name.to_string(),
                serde_json::Value::String(value.to_str().unwrap_or("").to_owned()),
            );
        }
        let body = serde_json::json!({
            "method": req.method().as_str(),
            "uri": req.uri().to_string(),
            "version": format!("{:?}", req.version()),
            "headers": headers,
        });
        Response::new(TestBody::text(body.to_string()))
    })
    .await
}

/// An upstream that waits `delay` before answering 200.
pub(crate) async fn slow_upstream(delay: Duration) -> Upstream {
    upstream(move |_| async move {
        tokio::time::sleep(delay).await;
        Response::new(TestBody::text("slow ok"))
    })
    .await
}

/// A port on which nothing listens (connection refused).
pub(crate) async fn refused_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

/// A server that accepts connections and never answers.
pub(crate) async fn silent_server() -> (SocketAddr, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = l.accept().await {
            held.push(tcp);
        }
    });
    (addr, task)
}

/// A plain HTTP/1.1 client with keep-alive.
pub(crate) fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge (h2c) client.
pub(crate) fn h2c_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A response read whole.
#[derive(Debug)]
pub(crate) struct Got {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Got {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// Asserts a problem response sluice made itself: `status`, and `reason` in its JSON.
    #[track_caller]
    pub(crate) fn assert_problem(&self, status: StatusCode, reason: &str) {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.json()["reason"], reason);
    }
}

/// Sends `req` and reads the whole response (each bounded: 30 s for the head, 30 s more for the
/// body).
pub(crate) async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Got {
    let res = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("response within 30 s")
        .expect("request failed");
    let (parts, body) = res.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(30), body.collect())
        .await
        .expect("body within 30 s of the head")
        .expect("body")
        .to_bytes();
    Got {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// GET `url` with a fresh client.
pub(crate) async fn get(url: &str) -> Got {
    send(
        &client(),
        Request::get(url).body(Full::new(Bytes::new())).unwrap(),
    )
    .await
}

/// The value of the sample `series` (e.g. `sluice_requests_total{route="a",outcome="shed"}`)
/// in a Prometheus exposition; `None` when there is no such series.
pub(crate) fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The value of the sample `series`, which must exist: panics with the exposition when it does
/// not. Counters and gauges are created with their route, upstream or limit, so a series that
/// should read 0 is there with 0 — absence means a wrong name or label.
pub(crate) fn expect_metric(text: &str, series: &str) -> f64 {
    metric_value(text, series).unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

/// Retries `attempt` until it answers 200 (see [`until`]); meanwhile every answer must be a 503,
/// and after 10 s the test fails, waiting for `what`.
pub(crate) async fn until_ok_past_503s<F, Fut>(what: &str, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Got>,
{
    until(what, Duration::from_secs(10), || {
        let got = attempt();
        async move {
            let got = got.await;
            if got.status == StatusCode::OK {
                return true;
            }
            assert_eq!(
                got.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{}",
                got.text()
            );
            false
        }
    })
    .await;
}

/// A config with a listener, an admin listener, upstream `api` at `endpoint`, and `routes`
/// (YAML list items, indented 2).
pub(crate) fn admin_config(endpoint: &str, routes: &str) -> String {
    format!(
        "server: {{ listen: 127.0.0.1:0 }}\nadmin: {{ listen: 127.0.0.1:0 }}\nupstreams: {{ api: {{ endpoints: [{endpoint}] }} }}\nroutes:\n{routes}"
    )
}
