//! The admin listener, on its own thread and runtime so that it answers even while the proxy's
//! workers are saturated.
//!
//! | path | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus metrics (OpenMetrics text) |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 once listeners are up; 503 while shutting down |
//! | `GET /config` | the effective config as JSON, secrets redacted |
//! | `POST /reload` | reloads the config like SIGHUP: 200 with a JSON result, or 422 with the errors |
//!
//! Anything else is 404 (405 for a known path with the wrong method).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::body::ProxyBody;
use crate::reload;
use crate::runtime::Shared;
use crate::shutdown::Shutdown;

/// Serves the admin endpoints on `listener` from a dedicated thread until `stop` fires.
///
/// # Errors
/// The OS error if the thread or its runtime cannot be created.
pub(crate) fn spawn(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    stop: Shutdown,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("sluice-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(err) => {
                        tracing::error!(error = %err, "admin listener failed");
                        return;
                    }
                };
                let mut stopped = stop.watch();
                loop {
                    let tcp = tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((tcp, _)) => tcp,
                            Err(_) => continue,
                        },
                        () = stopped.wait() => break,
                    };
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| {
                            let shared = shared.clone();
                            async move { Ok::<_, Infallible>(answer(&shared, &req)) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), service)
                            .await;
                    });
                }
            });
        })
}

fn answer(shared: &Shared, req: &Request<Incoming>) -> Response<ProxyBody> {
    let path = req.uri().path();
    let method = req.method();
    match (path, method) {
        ("/metrics", &Method::GET) => {
            shared.runtime().refresh_gauges();
            reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                shared.metrics.encode(),
            )
        }
        ("/healthz", &Method::GET) => reply(StatusCode::OK, "text/plain", "ok\n"),
        ("/readyz", &Method::GET) => {
            if shared.is_ready() {
                reply(StatusCode::OK, "text/plain", "ready\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
            }
        }
        ("/config", &Method::GET) => {
            let config = shared.runtime().config.clone();
            let body = serde_json::to_string_pretty(&*config).unwrap_or_else(|_| "{}".to_owned());
            reply(StatusCode::OK, "application/json", body)
        }
        ("/reload", &Method::POST) => match reload::reload(shared) {
            Ok(report) => {
                let body = serde_json::json!({
                    "result": "success",
                    "routes": report.routes,
                    "restart_required": report.restart_required,
                });
                reply(StatusCode::OK, "application/json", body.to_string())
            }
            Err(err) => {
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
        },
        ("/metrics" | "/healthz" | "/readyz" | "/config", _) => {
            let mut res = reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "method not allowed\n",
            );
            res.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET"));
            res
        }
        ("/reload", _) => {
            let mut res = reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "method not allowed\n",
            );
            res.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
            res
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
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
