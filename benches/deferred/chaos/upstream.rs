//! The chaos run's upstream: takes each delivery for [`SERVICE`] and answers 200, counting the
//! deliveries per `Idempotency-Key` and checking that each carries the key its client sent
//! (which the body repeats). It can be stopped — it stops accepting, finishes the requests it
//! has and closes its connections, so every delivery it counted was answered — and started
//! again on the same port.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long the upstream works on one delivery: at 100 tasks/s, about five are under way at
/// any moment, so a killed instance has some in its hands.
pub(crate) const SERVICE: Duration = Duration::from_millis(50);

/// Longest wait for the requests under way when the upstream stops.
const DRAIN: Duration = Duration::from_secs(5);

/// The upstream; serving until [`Upstream::stop`].
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    seen: Arc<Seen>,
    serving: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

/// What the upstream has seen.
#[derive(Default)]
pub(crate) struct Seen {
    /// Deliveries per `Idempotency-Key`.
    pub(crate) keys: Mutex<HashMap<String, u32>>,
    /// Deliveries whose `Idempotency-Key` is not the one their body names, or that have none.
    pub(crate) mismatched: AtomicU64,
}

impl Upstream {
    /// Starts it on a free port of 127.0.0.1.
    pub(crate) async fn start() -> Result<Upstream, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot bind the upstream: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("upstream address: {e}"))?;
        let mut upstream = Upstream {
            addr,
            seen: Arc::default(),
            serving: None,
        };
        upstream.serve(listener);
        Ok(upstream)
    }

    /// Deliveries counted so far, per key.
    pub(crate) fn seen(&self) -> &Seen {
        &self.seen
    }

    /// Stops accepting, lets the requests under way finish and closes the connections.
    pub(crate) async fn stop(&mut self) {
        if let Some((stop, task)) = self.serving.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
    }

    /// Serves again on the same port.
    pub(crate) async fn restart(&mut self) -> Result<(), String> {
        let listener = TcpListener::bind(self.addr)
            .await
            .map_err(|e| format!("cannot bind the upstream again on {}: {e}", self.addr))?;
        self.serve(listener);
        Ok(())
    }

    fn serve(&mut self, listener: TcpListener) {
        let (stop, mut stopped) = oneshot::channel();
        let seen = self.seen.clone();
        let task = tokio::spawn(async move {
            let graceful = GracefulShutdown::new();
            loop {
                let tcp = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                    _ = &mut stopped => break,
                };
                let seen = seen.clone();
                let svc = service_fn(move |req| deliver(seen.clone(), req));
                let builder = auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(tcp), svc);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            // Refuse connections from now on; finish what was asked.
            drop(listener);
            let _ = tokio::time::timeout(DRAIN, graceful.shutdown()).await;
        });
        self.serving = Some((stop, task));
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some((_, task)) = self.serving.take() {
            task.abort();
        }
    }
}

/// One delivery: counted under its key, checked against its body, answered 200 after
/// [`SERVICE`].
async fn deliver(
    seen: Arc<Seen>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let named = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["key"].as_str().map(str::to_owned));
    match key {
        Some(key) => {
            if named.as_deref() != Some(key.as_str()) {
                seen.mismatched.fetch_add(1, Ordering::Relaxed);
            }
            let mut keys = seen.keys.lock().unwrap_or_else(|e| e.into_inner());
            *keys.entry(key).or_insert(0) += 1;
        }
        None => {
            seen.mismatched.fetch_add(1, Ordering::Relaxed);
        }
    }
    tokio::time::sleep(SERVICE).await;
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}
