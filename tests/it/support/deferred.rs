//! What the deferred-delivery tests share: an upstream that records what it saw of each
//! request, and the 202's and the status endpoint's reading.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::support::redis_server::store_head;
use crate::support::*;

/// What a test upstream saw of one request.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub(crate) method: String,
    pub(crate) uri: String,
    pub(crate) key: Option<String>,
    pub(crate) header: Option<String>,
    pub(crate) body: Bytes,
}

/// Every request a recording upstream saw, in arrival order.
pub(crate) type Log = Arc<Mutex<Vec<Seen>>>;

/// An upstream that records each request and answers what `answer` says for it — given the
/// request and how many requests with the same `Idempotency-Key` came before it — after `delay`.
pub(crate) async fn recording<F>(delay: Duration, answer: F) -> (Upstream, Log)
where
    F: Fn(&Seen, usize) -> StatusCode + Send + Sync + 'static,
{
    recording_with(move |_| delay, answer).await
}

/// [`recording`], with a delay that depends on the request.
pub(crate) async fn recording_with<D, F>(delay: D, answer: F) -> (Upstream, Log)
where
    D: Fn(&Seen) -> Duration + Send + Sync + 'static,
    F: Fn(&Seen, usize) -> StatusCode + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    recording_on(listener, delay, move |seen, before| {
        let mut res = Response::new(TestBody::text("done"));
        *res.status_mut() = answer(seen, before);
        res
    })
}

/// The recording upstream in full: on `listener` (bound by the caller: e.g. on a port that
/// refused connections until now), after `delay`, the response `respond` builds — headers and
/// all — for the request and the count of its key's earlier requests.
pub(crate) fn recording_on<D, F>(listener: TcpListener, delay: D, respond: F) -> (Upstream, Log)
where
    D: Fn(&Seen) -> Duration + Send + Sync + 'static,
    F: Fn(&Seen, usize) -> Response<TestBody> + Send + Sync + 'static,
{
    let log: Log = Arc::default();
    let respond = Arc::new(respond);
    let delay = Arc::new(delay);
    let seen = log.clone();
    let up = upstream_on(listener, move |req: Request<Incoming>| {
        let (seen, respond, delay) = (seen.clone(), respond.clone(), delay.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let text = |name: &str| {
                parts
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let request = Seen {
                method: parts.method.to_string(),
                uri: parts.uri.to_string(),
                key: text("idempotency-key"),
                header: text("x-test"),
                body,
            };
            let before = {
                let mut log = seen.lock().unwrap();
                let before = log
                    .iter()
                    .filter(|s| s.key.is_some() && s.key == request.key)
                    .count();
                log.push(request.clone());
                before
            };
            tokio::time::sleep(delay(&request)).await;
            respond(&request, before)
        }
    });
    (up, log)
}

/// A config with `store.redis` at `redis`, an admin listener, upstream `api` at `endpoint`
/// (`timeout: 1s`, so that a task held by a dead instance is taken over within 6 s), and the
/// route `hooks` on `/hooks` with `extra` (YAML fields at the route's indentation) and
/// `defer: {defer}`.
pub(crate) fn config(redis: &str, endpoint: &str, extra: &str, defer: &str) -> String {
    let head = store_head(&format!("url: \"{redis}\""), "2s", "deny");
    format!(
        r#"{head}upstreams:
  api:
    endpoints: [{endpoint}]
    timeout: 1s
routes:
  - name: hooks
    match: {{path_prefix: /hooks}}
    upstream: api
{extra}
    defer: {defer}
"#
    )
}

/// POST `body` to `url` with `X-Test: <test>`.
pub(crate) async fn post(url: &str, body: impl Into<Bytes>) -> Got {
    send(
        &client(),
        Request::post(url)
            .header("x-test", "yes")
            .body(Full::new(body.into()))
            .unwrap(),
    )
    .await
}

/// The task's state from the status endpoint once it has reached `status` (within 20 s).
pub(crate) async fn until_status(proxy: &Proxy, id: &str, status: &str) -> serde_json::Value {
    let url = proxy.url(&format!("/_sluice/tasks/{id}"));
    until(
        &format!("task {id} to be {status}"),
        Duration::from_secs(20),
        || async {
            let got = get(&url).await;
            // Polled in a loop, past the lookup limit (20/s per address): not yet.
            if got.status == StatusCode::TOO_MANY_REQUESTS {
                return None;
            }
            assert_eq!(got.status, StatusCode::OK, "{}", got.text());
            let json = got.json();
            (json["status"] == status).then_some(json)
        },
    )
    .await
}

/// The id of a 202's task, checking the 202's form on the way.
pub(crate) fn accepted_id(got: &Got) -> String {
    assert_eq!(got.status, StatusCode::ACCEPTED, "{}", got.text());
    assert_eq!(got.header("content-type"), Some("application/json"));
    let json = got.json();
    let id = json["id"].as_str().expect("an id").to_owned();
    assert_eq!(json["status"], "queued");
    assert_eq!(id.len(), 32, "{id}");
    assert_eq!(
        got.header("location"),
        Some(format!("/_sluice/tasks/{id}").as_str())
    );
    id
}

pub(crate) fn sha(body: &[u8]) -> String {
    format!("{:x}", Sha256::digest(body))
}

/// The number of entries of `stream` in its group's pending list, and its length.
pub(crate) async fn pending_and_len(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
) -> (i64, i64) {
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg("sluice")
        .query_async(conn)
        .await
        .unwrap_or(redis::Value::Nil);
    let pending = match pending {
        redis::Value::Array(p) => match p.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => 0,
        },
        _ => 0,
    };
    let len: i64 = redis::cmd("XLEN")
        .arg(stream)
        .query_async(conn)
        .await
        .unwrap();
    (pending, len)
}
