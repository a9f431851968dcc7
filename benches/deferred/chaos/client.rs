//! The chaos run's clients: an open-loop producer of POSTs at a fixed rate, each with an
//! `Idempotency-Key` of its own (which its body repeats), to the instances in turn. A request
//! whose connection is refused (its instance is down: nothing was sent) goes to the other
//! instance, as a load balancer would send it; every other answer, or its absence, is what
//! the request ends with.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The longest a request waits for its answer.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// 202: stored as this task.
    Accepted(String),
    /// 503 `store-unavailable` naming the task whose outcome is unknown (it may be stored).
    Unknown(String),
    /// 503 without a task: not stored.
    NotStored,
    /// Any other status.
    Other(u16),
    /// No answer: the connection broke or the deadline passed (the request may be stored).
    Lost,
}

/// One request and how it ended.
#[derive(Clone, Debug)]
pub(crate) struct Sent {
    pub(crate) key: String,
    pub(crate) answer: Answer,
}

/// Sends `count` requests at `rate` per second, request `n` to instance `n % 2` (the other
/// when that one refuses the connection), and returns how each ended once all have.
pub(crate) async fn run(
    instances: [SocketAddr; 2],
    count: usize,
    rate: f64,
    run: &str,
) -> Vec<Sent> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let sent = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for n in 0..count {
        let due = start + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let key = format!("chaos-{run}-{n}");
        let (client, sent) = (client.clone(), sent.clone());
        let targets = [instances[n % 2], instances[(n + 1) % 2]];
        tasks.push(tokio::spawn(async move {
            let answer = post(&client, targets, &key).await;
            sent.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Sent { key, answer });
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let mut sent = std::mem::take(&mut *sent.lock().unwrap_or_else(|e| e.into_inner()));
    sent.sort_by(|a, b| a.key.cmp(&b.key));
    sent
}

/// POSTs `key`'s request to the first of `targets`, to the second if the first refuses the
/// connection.
async fn post(
    client: &Client<HttpConnector, Full<Bytes>>,
    targets: [SocketAddr; 2],
    key: &str,
) -> Answer {
    let body = serde_json::json!({ "key": key }).to_string();
    for target in targets {
        let req = Request::post(format!("http://{target}/hooks/chaos"))
            .header("idempotency-key", key)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.clone())));
        let Ok(req) = req else {
            return Answer::Other(0);
        };
        let res = match tokio::time::timeout(REQUEST_DEADLINE, client.request(req)).await {
            Ok(Ok(res)) => res,
            // Nothing was sent: the other instance gets it.
            Ok(Err(err)) if err.is_connect() => continue,
            Ok(Err(_)) | Err(_) => return Answer::Lost,
        };
        let status = res.status();
        let Ok(Ok(body)) = tokio::time::timeout(REQUEST_DEADLINE, res.into_body().collect()).await
        else {
            return Answer::Lost;
        };
        let json = serde_json::from_slice::<serde_json::Value>(&body.to_bytes()).ok();
        let field = |name: &str| {
            json.as_ref()
                .and_then(|j| j[name].as_str())
                .map(str::to_owned)
        };
        return match status {
            StatusCode::ACCEPTED => field("id").map_or(Answer::Other(202), Answer::Accepted),
            StatusCode::SERVICE_UNAVAILABLE => {
                field("task").map_or(Answer::NotStored, Answer::Unknown)
            }
            other => Answer::Other(other.as_u16()),
        };
    }
    Answer::Lost
}
