//! One upstream: its endpoints, its pooled keep-alive client, and its failure handling.
//!
//! - Endpoints are tried round-robin.
//! - Passive health, like NGINX's `max_fails=1 fail_timeout=10s`: an endpoint whose connection
//!   failed is skipped for [`FAIL_TIMEOUT`] (unless every endpoint is down, then they are all
//!   tried anyway: better a likely failure than a certain one).
//! - A request whose connection failed never reached the upstream, so it is safe to retry: the
//!   next endpoint is tried, once each. The client body is parked in a [`BodySlot`] so it can
//!   be taken back, which is only done when there is another endpoint to try.
//! - `connect_timeout` bounds each connection attempt; `timeout` bounds everything until the
//!   response head arrives.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use crate::config::UpstreamConfig;
use crate::limit::ConcurrencyLimit;
use crate::proxy::body::UpstreamBody;

/// How long an endpoint whose connection failed is skipped.
pub const FAIL_TIMEOUT: Duration = Duration::from_secs(10);

/// An upstream with its client pool. Shared by every route that names it.
#[derive(Debug)]
pub struct Upstream {
    /// The config name: metrics label and error detail.
    pub name: Arc<str>,
    /// The cap shared by every route to this upstream, if configured.
    pub concurrency: Option<ConcurrencyLimit>,
    config: UpstreamConfig,
    endpoints: Vec<Endpoint>,
    /// Round-robin cursor.
    next: AtomicUsize,
    client: Client<HttpConnector, UpstreamBody>,
    /// Time base for `Endpoint::down_until`.
    epoch: Instant,
    /// Per failure class (connect, timeout, failed): when a warning was last logged, in ms
    /// since `epoch`, and how many were suppressed since. A dead upstream under load fails
    /// thousands of times a second; the log gets one line per class per [`WARN_EVERY`].
    warned_at_ms: [AtomicU64; 3],
    suppressed: [AtomicU64; 3],
}

/// At most one warning per failure class and upstream in this period.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Endpoint {
    authority: Authority,
    /// Milliseconds since `Upstream::epoch` until which this endpoint is skipped; 0 = healthy.
    down_until_ms: AtomicU64,
}

/// Why forwarding failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No endpoint accepted a connection (refused, unreachable, or connect_timeout).
    #[error(
        "no endpoint of upstream {upstream} accepted a connection (last: {endpoint}: {source})"
    )]
    Connect {
        /// Upstream name.
        upstream: Arc<str>,
        /// The last endpoint tried.
        endpoint: Authority,
        /// The connect error.
        source: hyper_util::client::legacy::Error,
    },
    /// The response head did not arrive within `timeout`.
    #[error("upstream {upstream} did not answer within {timeout:?}")]
    Timeout {
        /// Upstream name.
        upstream: Arc<str>,
        /// The configured timeout.
        timeout: Duration,
    },
    /// The connection broke after the request was sent (reset, bad response).
    #[error("upstream {upstream} failed: {source}")]
    Failed {
        /// Upstream name.
        upstream: Arc<str>,
        /// What failed.
        source: hyper_util::client::legacy::Error,
    },
}

// === impl Upstream ===

impl Upstream {
    /// Builds the client pool for `config`. Must be called inside a tokio runtime.
    pub fn new(config: &UpstreamConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            // The client's Host header is forwarded as is (see `forward::request`).
            .set_host(false)
            .build(connector);
        Upstream {
            name: config.name.clone(),
            concurrency: config.concurrency.map(ConcurrencyLimit::new),
            config: config.clone(),
            endpoints: config
                .endpoints
                .iter()
                .map(|a| Endpoint {
                    authority: a.clone(),
                    down_until_ms: AtomicU64::new(0),
                })
                .collect(),
            next: AtomicUsize::new(0),
            client,
            epoch: Instant::now(),
            warned_at_ms: Default::default(),
            suppressed: Default::default(),
        }
    }

    /// The config this upstream was built from.
    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// Sends a request (already rewritten by `forward::request`) and waits for the response head.
    ///
    /// # Errors
    /// [`UpstreamError::Connect`] when no endpoint could be reached, [`UpstreamError::Timeout`]
    /// after `timeout`, [`UpstreamError::Failed`] when the exchange broke.
    pub async fn send(&self, req: Request<Incoming>) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.config.timeout, self.send_with_retry(req)).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout {
                upstream: self.name.clone(),
                timeout: self.config.timeout,
            }),
        }
    }

    async fn send_with_retry(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let (parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let tries = self.endpoints.len();
        let first = self.pick();
        if tries == 1 {
            let body = if body.is_end_stream() {
                UpstreamBody::Empty
            } else {
                UpstreamBody::Stream(body)
            };
            return self.attempt(first, parts, path, body).await;
        }
        // Several endpoints: keep what a retry needs. Parts are not Clone (extensions), so the
        // method, headers and version are copied; the body waits in a slot.
        let mut pending = if body.is_end_stream() {
            Pending::Empty
        } else {
            Pending::Body(body)
        };
        let mut last_err = None;
        for i in 0..tries {
            let index = (first + i) % tries;
            if i > 0 && self.is_down(index) && self.any_up() {
                continue;
            }
            let (upstream_body, slot) = match std::mem::replace(&mut pending, Pending::Gone) {
                Pending::Empty => (UpstreamBody::Empty, None),
                Pending::Body(b) => {
                    let (d, slot) = UpstreamBody::deferred(b);
                    (d, Some(slot))
                }
                Pending::Gone => break,
            };
            let mut copy = Request::new(());
            *copy.method_mut() = parts.method.clone();
            *copy.headers_mut() = parts.headers.clone();
            *copy.version_mut() = parts.version;
            let (copy_parts, ()) = copy.into_parts();
            match self
                .attempt(index, copy_parts, path.clone(), upstream_body)
                .await
            {
                Err(err @ UpstreamError::Connect { .. }) => {
                    // A connect error means the body was never polled, so it is still in the slot.
                    pending = match slot {
                        None => Pending::Empty,
                        Some(slot) => slot.take().map_or(Pending::Gone, Pending::Body),
                    };
                    last_err = Some(err);
                }
                other => return other,
            }
        }
        Err(last_err.unwrap_or_else(|| UpstreamError::Timeout {
            upstream: self.name.clone(),
            timeout: self.config.timeout,
        }))
    }

    async fn attempt(
        &self,
        index: usize,
        mut parts: Parts,
        path: PathAndQuery,
        body: UpstreamBody,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let endpoint = &self.endpoints[index];
        let mut uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(endpoint.authority.clone());
        uri = uri.path_and_query(path);
        parts.uri = match uri.build() {
            Ok(uri) => uri,
            // The authority was validated at config time and the path came from a parsed URI.
            Err(_) => Uri::from_static("/"),
        };
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(res) => {
                endpoint.down_until_ms.store(0, Ordering::Relaxed);
                Ok(res)
            }
            Err(source) if source.is_connect() => {
                let until = self.now_ms() + FAIL_TIMEOUT.as_millis() as u64;
                endpoint.down_until_ms.store(until, Ordering::Relaxed);
                tracing::debug!(upstream = %self.name, endpoint = %endpoint.authority, error = %source, "connect failed; endpoint skipped for {FAIL_TIMEOUT:?}");
                Err(UpstreamError::Connect {
                    upstream: self.name.clone(),
                    endpoint: endpoint.authority.clone(),
                    source,
                })
            }
            Err(source) => Err(UpstreamError::Failed {
                upstream: self.name.clone(),
                source,
            }),
        }
    }

    /// Logs a failure at warn level, at most once per class every [`WARN_EVERY`]; the others
    /// are counted and reported with the next line.
    pub fn warn_failure(&self, err: &UpstreamError) {
        let class = match err {
            UpstreamError::Connect { .. } => 0,
            UpstreamError::Timeout { .. } => 1,
            UpstreamError::Failed { .. } => 2,
        };
        let now = self.now_ms();
        let last = self.warned_at_ms[class].load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
        if due
            && self.warned_at_ms[class]
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let suppressed = self.suppressed[class].swap(0, Ordering::Relaxed);
            tracing::warn!(upstream = %self.name, error = %err, suppressed, "upstream failure");
        } else {
            self.suppressed[class].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The next endpoint in round-robin order that is not marked down; if all are down, the
    /// next one regardless.
    fn pick(&self) -> usize {
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| !self.is_down(i))
            .unwrap_or(start)
    }

    fn is_down(&self, index: usize) -> bool {
        self.endpoints[index].down_until_ms.load(Ordering::Relaxed) > self.now_ms()
    }

    fn any_up(&self) -> bool {
        (0..self.endpoints.len()).any(|i| !self.is_down(i))
    }

    fn now_ms(&self) -> u64 {
        // +1 so that a healthy endpoint (0) is never "down until" the first millisecond.
        self.epoch.elapsed().as_millis() as u64 + 1
    }
}

/// The request body between retries.
enum Pending {
    Empty,
    Body(Incoming),
    /// Taken by a connection that then failed: no retry possible.
    Gone,
}
