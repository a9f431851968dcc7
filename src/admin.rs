//! The admin listener, on its own thread and runtime so that it answers even while the proxy's
//! workers are saturated.
//!
//! | path | answer |
//! |---|---|
//! | `GET /` | the dashboard: one self-contained HTML page that reads `/stats` (`dashboard`) |
//! | `GET /stats` | the dashboard's figures as JSON: rates, caps, queues, quantiles (`stats`) |
//! | `GET /metrics` | Prometheus metrics: text format 0.0.4, or OpenMetrics when `Accept` asks for it |
//! | `GET /healthz` | 200 while the process runs (no token needed) |
//! | `GET /readyz` | 200 once listeners are up; 503 while shutting down (no token needed) |
//! | `GET /config` | the effective config as JSON, secrets redacted |
//! | `POST /reload` | reloads the config like SIGHUP: 200 with a JSON result, or 422 with the errors |
//! | `GET /tasks` | dead deferred tasks of a route (`?route=…&status=dead`), oldest first (`tasks`) |
//! | `POST /tasks/requeue` | puts dead deferred tasks back in the queue: `{"requeued": N}` (`tasks`) |
//!
//! `HEAD` works wherever `GET` does. Anything else is 404 (405 for a known path with the wrong
//! method).
//!
//! Every request goes through one function, [`gate::check`] — `Host`, `Origin`, bearer token —
//! before its path is even looked at, so a path added to [`Endpoint`] is guarded without a line
//! of its own; and every response leaves through [`finish`] (`Cache-Control: no-store`,
//! `X-Content-Type-Options: nosniff`, `Content-Length`, no body for `HEAD`). The listener
//! bounds connections and their heads (`listener`). A reload reads files and builds a runtime:
//! it runs on a blocking thread, so a slow one never holds up `/healthz` or `/metrics`, nor the
//! proxy's workers. `/stats` reads its counters from a ring a task on this thread fills once a
//! second (`stats`).

mod dashboard;
mod gate;
mod listener;
mod stats;
mod tasks;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, VARY, WWW_AUTHENTICATE,
    X_CONTENT_TYPE_OPTIONS,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::service::service_fn;

use self::gate::Denied;
use self::stats::History;
use crate::body::ProxyBody;
use crate::config::AdminConfig;
use crate::metrics::Format;
use crate::net::accept::Admitted;
use crate::reload;
use crate::runtime::Shared;
use crate::shutdown::Shutdown;

/// How long the admin thread waits, once stopped, for work still on its blocking threads (a
/// reload stuck reading a file) before it lets the process exit anyway.
const BLOCKING_WAIT_AT_EXIT: Duration = Duration::from_secs(1);

/// The paths the admin listener answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Dashboard,
    Stats,
    Metrics,
    Healthz,
    Readyz,
    Config,
    Reload,
    /// `GET /tasks`: dead deferred tasks.
    Tasks,
    /// `POST /tasks/requeue`.
    Requeue,
}

// === impl Endpoint ===

impl Endpoint {
    fn of(path: &str) -> Option<Endpoint> {
        Some(match path {
            "/" => Endpoint::Dashboard,
            "/stats" => Endpoint::Stats,
            "/metrics" => Endpoint::Metrics,
            "/healthz" => Endpoint::Healthz,
            "/readyz" => Endpoint::Readyz,
            "/config" => Endpoint::Config,
            "/reload" => Endpoint::Reload,
            "/tasks" => Endpoint::Tasks,
            "/tasks/requeue" => Endpoint::Requeue,
            _ => return None,
        })
    }

    /// The method it answers (`GET` also answers `HEAD`).
    fn method(self) -> Method {
        match self {
            Endpoint::Reload | Endpoint::Requeue => Method::POST,
            _ => Method::GET,
        }
    }

    /// Health checks need no token: probes that cannot carry one (a load balancer's, a
    /// kubelet's) must still see whether the process is up. Every other path, including those
    /// added later, needs it.
    fn open(self) -> bool {
        matches!(self, Endpoint::Healthz | Endpoint::Readyz)
    }
}

/// Serves the admin endpoints on `listener` from a dedicated thread until `stop` fires. `admin`
/// is the admin config the process started with: the gate uses it while the current config
/// has no `admin` section (removing it needs a restart).
///
/// # Errors
/// The OS error if the thread or its runtime cannot be created.
pub(crate) fn spawn(
    listener: std::net::TcpListener,
    admin: AdminConfig,
    shared: Arc<Shared>,
    stop: Shutdown,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started_with = Arc::new(admin);
    // The first sample of `/stats`' ring, so that its rates have a base from the start.
    let history = Arc::new(History::default());
    history.sample(&shared.runtime());
    std::thread::Builder::new()
        .name("sluice-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => listener::gate(l),
                    Err(err) => {
                        tracing::error!(error = %err, "admin listener failed");
                        return;
                    }
                };
                tokio::spawn(stats::run_sampler(
                    shared.clone(),
                    history.clone(),
                    stop.watch(),
                ));
                let mut stopped = stop.watch();
                let refused = |peer: std::net::SocketAddr| {
                    tracing::debug!(client = %peer.ip(), "admin connection refused: too many open from this address");
                };
                while let Some(admitted) = listener.accept(&mut stopped, listener::share, refused).await {
                    let Admitted { tcp, held, .. } = admitted;
                    let (shared, started_with) = (shared.clone(), started_with.clone());
                    let history = history.clone();
                    let service = service_fn(move |req| {
                        let (shared, started_with) = (shared.clone(), started_with.clone());
                        let history = history.clone();
                        async move {
                            let res = answer(shared, &started_with, &history, req).await;
                            Ok::<_, Infallible>(res)
                        }
                    });
                    tokio::spawn(listener::serve_connection(tcp, service, held));
                }
            });
            // A reload stuck reading a file (a FIFO, a hung network mount) must not hold up the
            // process's exit: its blocking thread is left behind.
            runtime.shutdown_timeout(BLOCKING_WAIT_AT_EXIT);
        })
}

/// Answers one request: the gate first, then the endpoint, then [`finish`].
async fn answer(
    shared: Arc<Shared>,
    started_with: &AdminConfig,
    history: &History,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let head = req.method() == Method::HEAD;
    let endpoint = Endpoint::of(req.uri().path());
    let checked = {
        // The current config's rules, so that a reload applies them (a new token included).
        let runtime = shared.runtime();
        let admin = runtime.config.admin.as_ref().unwrap_or(started_with);
        gate::check(admin, &req, endpoint.is_some_and(Endpoint::open))
    };
    let res = match checked {
        Err(denied) => refuse(denied, endpoint),
        Ok(()) => match endpoint {
            None => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
            Some(e) if *req.method() == e.method() || (head && e.method() == Method::GET) => {
                serve(e, shared, history, req).await
            }
            Some(e) => {
                let allow = match e.method() {
                    Method::POST => "POST",
                    _ => "GET, HEAD",
                };
                let mut res = reply(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "text/plain",
                    "method not allowed\n",
                );
                res.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allow));
                res
            }
        },
    };
    finish(res, head)
}

/// What an endpoint answers to a request the gate let through.
async fn serve(
    endpoint: Endpoint,
    shared: Arc<Shared>,
    history: &History,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    match endpoint {
        Endpoint::Dashboard => html(StatusCode::OK, dashboard::PAGE),
        Endpoint::Stats => reply(
            StatusCode::OK,
            "application/json",
            stats::render(&shared, history),
        ),
        Endpoint::Metrics => {
            shared.refresh_gauges();
            let format = Format::negotiate(req.headers());
            let mut res = reply(
                StatusCode::OK,
                format.content_type(),
                shared.metrics.encode(format),
            );
            // The answer depends on `Accept`: a cache between scraper and sluice must know.
            res.headers_mut()
                .insert(VARY, HeaderValue::from_static("Accept"));
            res
        }
        Endpoint::Healthz => reply(StatusCode::OK, "text/plain", "ok\n"),
        Endpoint::Readyz => {
            if shared.is_ready() {
                reply(StatusCode::OK, "text/plain", "ready\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
            }
        }
        Endpoint::Config => {
            let config = shared.runtime().config.clone();
            let body = serde_json::to_string_pretty(&*config).unwrap_or_else(|_| "{}".to_owned());
            reply(StatusCode::OK, "application/json", body)
        }
        Endpoint::Reload => reload(shared).await,
        Endpoint::Tasks => tasks::list(shared.runtime(), req.uri().query()).await,
        Endpoint::Requeue => tasks::requeue(shared.runtime(), req.into_body()).await,
    }
}

/// `POST /reload`: reads, parses and builds on a blocking thread (file reads, YAML parsing and
/// building a runtime must not run on a thread that serves requests), then reports.
async fn reload(shared: Arc<Shared>) -> Response<ProxyBody> {
    let done = tokio::task::spawn_blocking(move || reload::reload(&shared)).await;
    match done {
        Ok(Ok(report)) => {
            let body = serde_json::json!({
                "result": "success",
                "routes": report.routes,
                "restart_required": report.restart_required,
            });
            reply(StatusCode::OK, "application/json", body.to_string())
        }
        Ok(Err(err)) => {
            // One error per line, each `file:line:column: field.path: message`.
            let message = err.to_string();
            let errors: Vec<&str> = message.lines().filter(|l| !l.trim().is_empty()).collect();
            let body = serde_json::json!({ "result": "failure", "errors": errors });
            reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                "application/json",
                body.to_string(),
            )
        }
        Err(err) => {
            tracing::error!(error = %err, "the reload task failed");
            reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                "reload failed; see the log\n",
            )
        }
    }
}

/// The answer to a request the gate refused. A browser opening the dashboard without the token
/// gets the sign-in page with its 401 (see `dashboard`); every other refusal is plain text.
fn refuse(denied: Denied, endpoint: Option<Endpoint>) -> Response<ProxyBody> {
    match denied {
        Denied::Token if endpoint == Some(Endpoint::Dashboard) => {
            let mut res = html(StatusCode::UNAUTHORIZED, dashboard::SIGN_IN);
            res.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            res
        }
        Denied::Host => reply(
            StatusCode::FORBIDDEN,
            "text/plain",
            "forbidden: Host is not an IP address, localhost or in admin.allowed_hosts\n",
        ),
        Denied::Origin => reply(
            StatusCode::FORBIDDEN,
            "text/plain",
            "forbidden: Origin is not an allowed host\n",
        ),
        Denied::Token => {
            let mut res = reply(
                StatusCode::UNAUTHORIZED,
                "text/plain",
                "unauthorized: send Authorization: Bearer <token from admin.token_file>\n",
            );
            res.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            res
        }
    }
}

/// What every admin response gets on its way out: `Cache-Control: no-store` (metrics, config
/// and errors must not be kept by a browser or proxy), an explicit `Content-Length`, and for
/// `HEAD` the same head with no body.
fn finish(mut res: Response<ProxyBody>, head: bool) -> Response<ProxyBody> {
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res.headers_mut()
        .insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Some(len) = res.body().size_hint().exact() {
        res.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    if head {
        *res.body_mut() = ProxyBody::empty();
    }
    res
}

/// An HTML page with the fields that hold the browser to it (`dashboard::headers`).
fn html(status: StatusCode, page: &'static str) -> Response<ProxyBody> {
    let mut res = reply(status, "text/html; charset=utf-8", page);
    res.headers_mut().extend(dashboard::headers());
    res
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ProxyBody> {
    let mut res = Response::new(ProxyBody::full(body.into()));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}
