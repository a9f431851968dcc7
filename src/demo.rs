//! `sluice demo`: a sample "consumer API" with limited capacity, and what to send at it.
//!
//! The sample upstream takes 20 ms per request and works on at most 8 at once; more wait
//! inside it, so without sluice its latency grows with the load. It listens on the first
//! endpoint of the first upstream in `config/demo.yaml`.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::body::ProxyBody;
use crate::config::Config;

/// Time the sample upstream spends on each request.
pub(crate) const WORK: Duration = Duration::from_millis(20);
/// Requests the sample upstream works on at once.
pub(crate) const CAPACITY: usize = 8;

/// Why the sample upstream could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The demo config has no upstream endpoint to listen on.
    #[error("the demo config names no upstream endpoint for the sample upstream")]
    NoEndpoint,
    /// The endpoint is not a local socket address.
    #[error("the sample upstream must listen on an IP:port endpoint, found {0}")]
    BadEndpoint(String),
    /// Binding failed.
    #[error("cannot start the sample upstream on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Starts the sample upstream on the first endpoint of the config's first upstream.
///
/// # Errors
/// [`DemoError`] when there is no usable endpoint or it cannot be bound.
pub async fn start_upstream(config: &Config) -> Result<SocketAddr, DemoError> {
    let endpoint = config
        .upstreams
        .first()
        .and_then(|u| u.endpoints.first())
        .ok_or(DemoError::NoEndpoint)?;
    let addr: SocketAddr = endpoint
        .as_str()
        .parse()
        .map_err(|_| DemoError::BadEndpoint(endpoint.to_string()))?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| DemoError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| DemoError::Bind { addr, source })?;
    tokio::spawn(serve_sample(listener));
    tracing::info!(%addr, "sample upstream up: {} ms per request, {CAPACITY} at once", WORK.as_millis());
    Ok(addr)
}

async fn serve_sample(listener: TcpListener) {
    let capacity = Arc::new(Semaphore::new(CAPACITY));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let capacity = capacity.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let capacity = capacity.clone();
                async move {
                    // Work waits for one of CAPACITY workers, as a real backend's thread pool would.
                    let _worker = capacity.acquire().await;
                    tokio::time::sleep(WORK).await;
                    let body = format!("ok: {} {}\n", req.method(), req.uri().path());
                    Ok::<_, Infallible>(Response::new(ProxyBody::full(body)))
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// Prints the dashboard's address (when the admin listener is on, as in `config/demo.yaml`)
/// and the commands that show what sluice does.
///
/// Written, not `println!`ed: a closed stdout (`sluice demo | head`) must not panic the demo;
/// what cannot be written is dropped.
pub fn print_instructions(
    proxy: SocketAddr,
    admin: Option<SocketAddr>,
    sample: SocketAddr,
    config: &Path,
) {
    let mut out = std::io::stdout().lock();
    let config = config.display();
    if let Some(admin) = admin {
        let _ = writeln!(
            out,
            "dashboard: http://{admin}/   (open it in a browser, then run the commands below and watch)"
        );
    }
    let p = format!("http://{proxy}");
    let _ = writeln!(
        out,
        r#"
sluice demo: a sample API on {sample} ({CAPACITY} workers, {work} ms per request) behind sluice
on {p}, configured by {config}

  # 200, with RateLimit-Policy and RateLimit fields:
  curl -i {p}/api/hello

  # 429 with Retry-After once the per-client burst is spent (20, refilled at 10/s, in {config}):
  for i in $(seq 40); do curl -s -o /dev/null -w '%{{http_code}} ' {p}/api/hello; done; echo
  wrk -t1 -c4 -d5s {p}/api/hello        # "Non-2xx or 3xx responses": the 429s

  # 503 with Retry-After: the upstream cap (8 in flight, queue 16, in {config}) pushes back:
  wrk -t2 -c64 -d5s {p}/batch/report
  curl -i {p}/batch/report      # run while wrk is running

  # critical work keeps getting 200s while low-priority batch work is shed:
  wrk -t1 -c64 -d10s {p}/batch/report &
  for i in $(seq 20); do curl -s -o /dev/null -w '%{{http_code}} ' {p}/checkout; done; echo

Ctrl-C stops sluice (in-flight requests finish first).
"#,
        work = WORK.as_millis()
    );
}
