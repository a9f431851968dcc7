//! One upstream: its endpoints, its pooled keep-alive client, and its failure handling.
//!
//! - Endpoints are what the configured names resolve to, chosen by the upstream's `balance`
//!   (see [`fleet`](super::fleet)).
//! - Passive health, like NGINX's `max_fails=1 fail_timeout=10s`: an endpoint whose connection
//!   failed is skipped for [`FAIL_TIMEOUT`] (unless every endpoint is down, then they are all
//!   tried anyway: better a likely failure than a certain one).
//! - A connection is made (or taken from the [`pool`](super::pool)) before the request is
//!   handed over, so a request whose connection failed still has its body and never reached the
//!   upstream: the next endpoint is tried, once each.
//! - A reused keep-alive connection may have been closed by the upstream in the meantime; hyper
//!   gives the request back when it was not written, and it is sent again on a new connection.
//!   (A request already written to a connection that then closes is not sent again: the upstream
//!   may have acted on it. It fails with 502.)
//! - `connect_timeout` bounds each connection attempt; `timeout` bounds everything until the
//!   response head arrives.
//! - [`Upstream::housekeeping`] closes the idle connections of every endpoint that have expired
//!   (see [`pool`](super::pool)); the runtime's housekeeping pass calls it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::header::HOST;
use http::uri::Uri;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use futures_util::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;

use crate::clock::Epoch;
use crate::config::{CapSize, UpstreamConfig};
use crate::limit::ConcurrencyLimit;
use crate::proxy::fleet::retry::{self, Budget};
use crate::proxy::fleet::{Endpoint, Fleet};
use crate::proxy::pool::{Conn, ConnectError, EndpointPool, KeepAlive};
use crate::proxy::request_body::{Fault, UpstreamBody};

/// How long an endpoint whose connection failed is skipped.
pub(crate) const FAIL_TIMEOUT: Duration = Duration::from_secs(10);

/// An upstream with its client pool. Shared by every route that names it.
#[derive(Debug)]
pub(crate) struct Upstream {
    /// The config name: metrics label and error detail.
    pub name: Arc<str>,
    /// The cap shared by every route to this upstream, if configured.
    pub concurrency: Option<ConcurrencyLimit>,
    config: UpstreamConfig,
    /// The endpoints its names resolve to, and the choice among them.
    fleet: Arc<Fleet>,
    /// What bounds retries.
    budget: Budget,
    /// `sluice_upstream_retries_total{upstream}`, once the runtime has given it.
    retries: OnceLock<Counter>,
    /// Time base of the warning throttle.
    epoch: Epoch,
    /// Per failure class (connect, timeout, failed): when a warning was last logged, in ms
    /// since `epoch`, and how many were suppressed since. A dead upstream under load fails
    /// thousands of times a second; the log gets one line per class per [`WARN_EVERY`].
    warned_at_ms: [AtomicU64; 3],
    suppressed: [AtomicU64; 3],
}

/// At most one warning per failure class and upstream in this period.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(10);

/// What [`Upstream::send`] gives back: the response head and the connection its body comes on.
pub(crate) type Exchanged = Result<(Response<Incoming>, Conn), UpstreamError>;

/// Why forwarding failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// No endpoint accepted a connection (refused, unreachable, or connect_timeout).
    #[error("no endpoint of upstream {upstream} accepted a connection ({source})")]
    Connect {
        /// Upstream name.
        upstream: Arc<str>,
        /// The last endpoint's connect error.
        source: ConnectError,
    },
    /// The response head did not arrive within `timeout`.
    #[error("upstream {upstream} did not answer within {timeout:?}")]
    Timeout {
        /// Upstream name.
        upstream: Arc<str>,
        /// The configured timeout.
        timeout: Duration,
    },
    /// Every endpoint has asked to wait (503 with `Retry-After`): nothing was sent.
    #[error("every endpoint of upstream {upstream} asked to wait {retry_after:?} more")]
    Pushback {
        /// Upstream name.
        upstream: Arc<str>,
        /// Until the first endpoint may be asked again.
        retry_after: Duration,
    },
    /// The connection broke after the request was sent (reset, bad response).
    #[error("upstream {upstream} failed: {source}")]
    Failed {
        /// Upstream name.
        upstream: Arc<str>,
        /// What failed.
        source: hyper::Error,
    },
}

// === impl Upstream ===

impl Upstream {
    /// Builds the client pool for `config`, its names resolved now (see [`Fleet::new`]).
    pub(crate) fn new(config: &UpstreamConfig) -> Self {
        Self::with_cap(config, None, None)
    }

    /// Builds the upstream with `cap` as its concurrency limit when given — a reload hands over
    /// the running cap of an upstream whose `concurrency` did not change, so slots in use and
    /// waiters carry over even when other fields (endpoints, timeouts) changed. A name that
    /// does not resolve now keeps its addresses in `previous` (the upstream before a reload).
    pub(crate) fn with_cap(
        config: &UpstreamConfig,
        cap: Option<ConcurrencyLimit>,
        previous: Option<&Upstream>,
    ) -> Self {
        Self::build(config, cap, KeepAlive::default(), previous)
    }

    /// An upstream whose endpoints keep idle connections by `keep_alive` instead of the
    /// defaults: tests shorten the idle timeout or the bound.
    #[cfg(test)]
    pub(crate) fn with_keep_alive(config: &UpstreamConfig, keep_alive: KeepAlive) -> Self {
        Self::build(config, None, keep_alive, None)
    }

    fn build(
        config: &UpstreamConfig,
        cap: Option<ConcurrencyLimit>,
        keep_alive: KeepAlive,
        previous: Option<&Upstream>,
    ) -> Self {
        let fleet = Fleet::new(config, keep_alive, previous.map(|p| &*p.fleet));
        let concurrency = cap.or_else(|| config.concurrency.clone().map(ConcurrencyLimit::new));
        if let (Some(cap), Some(CapSize::PerEndpoint(per))) =
            (&concurrency, config.concurrency.as_ref().map(|c| c.size))
        {
            // N × healthy endpoints, from now on (see `Fleet::follow`); the fleet before a
            // reload no longer sets it.
            if let Some(previous) = previous {
                previous.fleet.detach_cap();
            }
            fleet.attach_cap(cap.clone(), per.get());
        }
        Upstream {
            name: config.name.clone(),
            concurrency,
            config: config.clone(),
            fleet: Arc::new(fleet),
            budget: Budget::new(&config.retry),
            retries: OnceLock::new(),
            epoch: Epoch::new(),
            warned_at_ms: Default::default(),
            suppressed: Default::default(),
        }
    }

    /// Counts this upstream's retries in `counter` from now on (the first call wins: an
    /// upstream a reload keeps keeps its counter).
    pub(crate) fn count_retries_in(&self, counter: Counter) {
        let _ = self.retries.set(counter);
    }

    /// The endpoints and their choice.
    pub(crate) fn fleet(&self) -> &Arc<Fleet> {
        &self.fleet
    }

    /// The config this upstream was built from.
    pub(crate) fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// Sends a request (already rewritten by `forward::request`) and waits for the response
    /// head. The returned [`Conn`] goes back to its pool once the response body has been read.
    ///
    /// # Errors
    /// [`UpstreamError::Connect`] when no endpoint could be reached, [`UpstreamError::Timeout`]
    /// after `timeout`, [`UpstreamError::Failed`] when the exchange broke.
    pub(crate) async fn send(&self, req: Request<UpstreamBody>) -> Exchanged {
        let (mut parts, body) = req.into_parts();
        // Origin-form on the wire: the Host header (kept from the client) names the site.
        parts.uri = parts
            .uri
            .path_and_query()
            .cloned()
            .map_or_else(|| Uri::from_static("/"), Uri::from);
        // Whether the client's body played a part in a failure (see `count_failure`).
        let fault = match &body {
            UpstreamBody::Client(body) => body.fault(),
            UpstreamBody::Empty => None,
        };
        if let Some(retry_after) = self.pushback() {
            return Err(UpstreamError::Pushback {
                upstream: self.name.clone(),
                retry_after,
            });
        }
        let req = Request::from_parts(parts, body);
        self.budget.request();
        let endpoints = self.fleet.endpoints();
        // The endpoint being tried, as an index into `endpoints` (MAX: none yet).
        let current = AtomicUsize::new(usize::MAX);
        let sending = self.send_tries(req, &endpoints, &current);
        let result = match tokio::time::timeout(self.config.timeout, sending).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout {
                upstream: self.name.clone(),
                timeout: self.config.timeout,
            }),
        };
        if let Err(UpstreamError::Failed { .. } | UpstreamError::Timeout { .. }) = &result {
            let endpoint = endpoints.get(current.load(Ordering::Relaxed));
            self.count_failure(endpoint, fault.as_deref());
        }
        result
    }

    /// A reset before the response or a timeout counts against `endpoint` for outlier ejection
    /// unless the client's streamed body was not passed on whole (`fault`): a client that
    /// trickles or breaks its body must not eject an endpoint.
    fn count_failure(&self, endpoint: Option<&Arc<Endpoint>>, fault: Option<&Fault>) {
        let clients_doing = fault.is_some_and(|f| !f.complete() || f.get().is_some());
        if let (Some(endpoint), false) = (endpoint, clients_doing) {
            self.fleet.failed(endpoint);
        }
    }

    /// When every endpoint has asked to wait: how long until the first may be asked again.
    /// A request then gets 503 `upstream-pushback` at once.
    pub(crate) fn pushback(&self) -> Option<Duration> {
        self.fleet.pushback_wait()
    }

    /// Sends `req`, and sends it again on another endpoint while it may be (see
    /// [`retry`](crate::proxy::fleet::retry)): idempotent, its body read whole, tries left,
    /// the budget not spent, and the last try reset before any response byte or answered 503
    /// with `Retry-After` (that endpoint now waits).
    async fn send_tries(
        &self,
        mut req: Request<UpstreamBody>,
        endpoints: &[Arc<Endpoint>],
        current: &AtomicUsize,
    ) -> Exchanged {
        // Each retry goes to another endpoint: none with one endpoint.
        let mut left = match retry::idempotent(&req) && endpoints.len() > 1 {
            true => self.config.retry.attempts.saturating_sub(1),
            false => 0,
        };
        loop {
            let spare = if left > 0 { retry::copy(&req) } else { None };
            let result = self.send_with_retry(req, endpoints, current).await;
            let Some(next) = spare else { return result };
            let again = match &result {
                Err(UpstreamError::Failed { .. }) => true,
                Ok((res, _)) => {
                    res.status() == http::StatusCode::SERVICE_UNAVAILABLE
                        && res.headers().contains_key(http::header::RETRY_AFTER)
                }
                Err(_) => false,
            };
            if !again || self.pushback().is_some() || !self.budget.try_retry() {
                return result;
            }
            if let Err(UpstreamError::Failed { .. }) = &result {
                self.count_failure(endpoints.get(current.load(Ordering::Relaxed)), None);
            }
            self.note_retry();
            left -= 1;
            req = next;
        }
    }

    /// Counts a retry in `sluice_upstream_retries_total`.
    fn note_retry(&self) {
        if let Some(counter) = self.retries.get() {
            counter.inc();
        }
    }

    async fn send_with_retry(
        &self,
        mut req: Request<UpstreamBody>,
        endpoints: &[Arc<Endpoint>],
        current: &AtomicUsize,
    ) -> Exchanged {
        let Some(first) = self.first(endpoints, current.load(Ordering::Relaxed)) else {
            return Err(self.no_address());
        };
        let tries = endpoints.len();
        let mut last_err = None;
        for i in 0..tries {
            let index = (first + i) % tries;
            let endpoint = &endpoints[index];
            if i > 0 && self.fleet.is_down(endpoint) && self.any_up(endpoints) {
                continue;
            }
            if i > 0 {
                // A connect failure is retried whatever the budget says, and counts in it.
                self.budget.retried();
                self.note_retry();
            }
            current.store(index, Ordering::Relaxed);
            let conn = match endpoint.pool.idle_conn() {
                Some(conn) => Ok(conn),
                None => connect(&endpoint.pool).await,
            };
            let mut conn = match conn {
                Ok(conn) => conn,
                Err(source) => {
                    // Nothing was sent: the request, body included, is still ours.
                    self.mark_down(endpoint, &source);
                    last_err = Some(UpstreamError::Connect {
                        upstream: self.name.clone(),
                        source,
                    });
                    continue;
                }
            };
            self.fleet.mark_up(endpoint);
            name_host(&mut req, endpoint);
            let unsent = match conn.sender.try_send_request(req).await {
                Ok(res) => return Ok(self.answered(endpoint, res, conn)),
                Err(mut err) => match err.take_message() {
                    // A reused connection closed before the request was written: send it again
                    // on a fresh one (what hyper-util's `retry_canceled_requests` does).
                    Some(unsent) if conn.reused => unsent,
                    _ => {
                        return Err(UpstreamError::Failed {
                            upstream: self.name.clone(),
                            source: err.into_error(),
                        })
                    }
                },
            };
            return self.resend(endpoint, unsent).await;
        }
        Err(last_err.unwrap_or_else(|| self.no_address()))
    }

    /// The endpoint to try first: the balance's pick, but not `avoid` (the one a retry follows)
    /// when there is another.
    fn first(&self, endpoints: &[Arc<Endpoint>], avoid: usize) -> Option<usize> {
        let first = self.fleet.pick(endpoints)?;
        match first == avoid && endpoints.len() > 1 {
            true => Some((first + 1) % endpoints.len()),
            false => Some(first),
        }
    }

    /// What `endpoint`'s answer tells of it: a 503 with `Retry-After` puts it in pushback (a
    /// 429 is about one client and changes nothing).
    fn answered(
        &self,
        endpoint: &Endpoint,
        res: Response<Incoming>,
        conn: Conn,
    ) -> (Response<Incoming>, Conn) {
        self.fleet.succeeded(endpoint);
        if res.status() == http::StatusCode::SERVICE_UNAVAILABLE {
            if let Some(wait) = crate::proxy::fleet::retry_after(res.headers()) {
                self.fleet.push_back(endpoint, wait);
            }
        }
        (res, conn)
    }

    /// The error of an upstream none of whose names resolved (yet).
    fn no_address(&self) -> UpstreamError {
        UpstreamError::Connect {
            upstream: self.name.clone(),
            source: ConnectError::NoAddress,
        }
    }

    /// Sends `req` again on a fresh connection to endpoint `index`. Boxed, and built outside any
    /// async body: this rare path's state stays out of the future of every request.
    fn resend<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        req: Request<UpstreamBody>,
    ) -> BoxFuture<'a, Exchanged> {
        Box::pin(async move {
            let mut fresh = connect(&endpoint.pool).await.map_err(|source| {
                self.mark_down(endpoint, &source);
                UpstreamError::Connect {
                    upstream: self.name.clone(),
                    source,
                }
            })?;
            match fresh.sender.send_request(req).await {
                Ok(res) => Ok(self.answered(endpoint, res, fresh)),
                Err(source) => Err(UpstreamError::Failed {
                    upstream: self.name.clone(),
                    source,
                }),
            }
        })
    }

    /// Closes the expired idle connections of every endpoint and forgets those the upstream
    /// closed ([`EndpointPool::reap`]). Called by the runtime's housekeeping pass.
    pub(crate) fn housekeeping(&self) {
        let now = Instant::now();
        for endpoint in self.fleet.endpoints().iter() {
            endpoint.pool.reap(now);
        }
    }

    /// Idle connections over all endpoints.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.fleet.endpoints().iter().map(|e| e.pool.idle()).sum()
    }

    fn mark_down(&self, endpoint: &Endpoint, err: &ConnectError) {
        self.fleet.mark_down(endpoint, FAIL_TIMEOUT);
        self.fleet.failed(endpoint);
        tracing::debug!(upstream = %self.name, error = %err, "connect failed; endpoint skipped for {FAIL_TIMEOUT:?}");
    }

    /// Logs a failure at warn level, at most once per class every [`WARN_EVERY`]; the others
    /// are counted and reported with the next line.
    pub(crate) fn warn_failure(&self, err: &UpstreamError) {
        let class = match err {
            // Not a failure: the upstream's own request, answered at the edge.
            UpstreamError::Pushback { .. } => return,
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

    fn any_up(&self, endpoints: &[Arc<Endpoint>]) -> bool {
        endpoints.iter().any(|e| !self.fleet.is_down(e))
    }

    fn now_ms(&self) -> u64 {
        // +1 so that a healthy endpoint (0) is never "down until" the first millisecond.
        self.epoch.now() / 1_000_000 + 1
    }
}

/// Gives `req` the endpoint's name as `Host` when it has none: HTTP/1.0 may omit Host, and an
/// HTTP/1.1 upstream needs one.
fn name_host(req: &mut Request<UpstreamBody>, endpoint: &Endpoint) {
    if !req.headers().contains_key(HOST) {
        if let Ok(host) = HeaderValue::from_str(endpoint.pool.authority.as_str()) {
            req.headers_mut().insert(HOST, host);
        }
    }
}

/// A new connection to `pool`'s endpoint, boxed: most requests take an idle one, and the
/// connect and handshake state stays out of their futures.
fn connect(pool: &Arc<EndpointPool>) -> BoxFuture<'_, Result<Conn, ConnectError>> {
    Box::pin(pool.connect())
}

#[cfg(test)]
mod tests;
