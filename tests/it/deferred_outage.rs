//! Deferred tasks outlive an outage (issue 30), against a real redis-server, a real upstream
//! and sluice: an upstream down for longer than the whole retry schedule, Redis down between a
//! delivery's answer and its record, dead tasks listed and requeued on the admin listener, and
//! a 503 with `Retry-After` taken as pushback rather than an attempt.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::deferred::*;
use crate::support::redis_server::RedisServer;
use crate::support::*;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// `sluice:defer:{hooks}:…`: the keys of route `hooks` (see `src/defer.rs`).
const STREAM: &str = "sluice:defer:{hooks}:s";

/// Fields `fields` of task `id` of route `hooks`, read from Redis itself (the status endpoint
/// is for clients; these tests read every task of a batch at once).
async fn task_fields(
    conn: &mut MultiplexedConnection,
    id: &str,
    fields: &[&str],
) -> Vec<Option<String>> {
    let mut cmd = redis::cmd("HMGET");
    cmd.arg(format!("sluice:defer:{{hooks}}:t:{id}"));
    for field in fields {
        cmd.arg(*field);
    }
    cmd.query_async(conn).await.unwrap()
}

/// The statuses of tasks `ids` in Redis (`None` for a task Redis does not have).
async fn statuses(conn: &mut MultiplexedConnection, ids: &[String]) -> Vec<Option<String>> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(task_fields(conn, id, &["status"]).await.remove(0));
    }
    out
}

/// Entries of route `hooks`' stream held by a deliverer, and in all: (0, 0) once nothing is
/// left that could be sent again.
async fn entries(conn: &mut MultiplexedConnection) -> (i64, i64) {
    pending_and_len(conn, STREAM).await
}

/// How many requests the upstream saw per `Idempotency-Key`.
fn per_key(log: &Log) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for seen in log.lock().unwrap().iter() {
        *counts
            .entry(seen.key.clone().unwrap_or_default())
            .or_insert(0) += 1;
    }
    counts
}

/// A 200 "done".
fn done() -> Response<TestBody> {
    Response::new(TestBody::text("done"))
}

/// `POST` `body` (JSON text) to the admin listener's `path`.
async fn admin_post(proxy: &Proxy, path: &str, body: &str) -> Got {
    send(
        &client(),
        Request::post(proxy.admin_url(path))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap(),
    )
    .await
}

/// `GET /tasks?route=hooks&status=dead`'s tasks.
async fn listed_dead(proxy: &Proxy) -> Vec<Value> {
    let got = get(&proxy.admin_url("/tasks?route=hooks&status=dead")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.header("content-type"), Some("application/json"));
    got.json()["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("no tasks array: {}", got.text()))
        .clone()
}

/// `sluice_deferred_total{route="hooks",result=…}`.
async fn deferred_total(proxy: &Proxy, result: &str) -> f64 {
    proxy
        .metric(&format!(
            r#"sluice_deferred_total{{route="hooks",result="{result}"}}"#
        ))
        .await
}

/// Pins (issue 30): a refused connection is not an attempt. The upstream's port refuses
/// connections for 10 s — far longer than the whole retry schedule `attempts: 3, backoff:
/// 200ms` allowed before (three tries within a second) — while 20 tasks are accepted: they
/// wait (tried, no attempt counted), and once the upstream listens every one ends `delivered`
/// after one attempt, none `dead`, each seen once by the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_outlive_an_upstream_down_longer_than_their_retries() {
    let redis = RedisServer::start().await;
    // Nothing listens there until the upstream starts, 10 s from now.
    let port = free_port();
    let defer = "{when: always, attempts: 3, backoff: 200ms, ttl: 2m}";
    let endpoint = format!("http://127.0.0.1:{port}");
    let proxy = start_proxy(&config(&redis.url(), &endpoint, "", defer)).await;
    let outage = Instant::now();
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(accepted_id(
            &post(&proxy.url("/hooks/e"), format!("event-{i}")).await,
        ));
    }

    tokio::time::sleep(Duration::from_secs(9).saturating_sub(outage.elapsed())).await;
    let mut conn = redis.connection(None).await;
    for id in &ids {
        let fields = task_fields(&mut conn, id, &["status", "attempts", "tries"]).await;
        let (status, attempts, tries) = (&fields[0], &fields[1], &fields[2]);
        assert!(
            matches!(status.as_deref(), Some("queued" | "delivering")),
            "task {id} during the outage: {fields:?}"
        );
        assert_eq!(attempts.as_deref(), Some("0"), "task {id}: {fields:?}");
        let tries: u32 = tries.as_deref().and_then(|t| t.parse().ok()).unwrap_or(0);
        assert!(tries >= 1, "task {id} was tried meanwhile: {fields:?}");
    }

    tokio::time::sleep(Duration::from_secs(10).saturating_sub(outage.elapsed())).await;
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let (_up, log) = recording_on(listener, |_| Duration::ZERO, |_, _| done());
    // The longest wait between tries is then 6.4 s (200 ms doubled five times).
    until(
        "all 20 tasks to be delivered",
        Duration::from_secs(40),
        || {
            let mut conn = conn.clone();
            let ids = &ids;
            async move {
                let now = statuses(&mut conn, ids).await;
                assert!(
                    !now.iter().any(|s| s.as_deref() == Some("dead")),
                    "no task dies of an outage shorter than its ttl: {now:?}"
                );
                now.iter().all(|s| s.as_deref() == Some("delivered"))
            }
        },
    )
    .await;

    assert_eq!(
        entries(&mut conn).await,
        (0, 0),
        "nothing left to send again"
    );
    let seen = per_key(&log);
    let expected: BTreeMap<String, usize> = ids.iter().map(|id| (id.clone(), 1)).collect();
    assert_eq!(seen, expected, "each task reached the upstream once");
    for id in &ids {
        let got = get(&proxy.url(&format!("/_sluice/tasks/{id}"))).await;
        assert_eq!(
            got.json(),
            json!({"id": id, "route": "hooks", "status": "delivered", "attempts": 1,
                "response": {"status": 200}})
        );
    }
    assert_eq!(deferred_total(&proxy, "delivered").await, 20.0);
    assert_eq!(deferred_total(&proxy, "dead").await, 0.0);
    assert_eq!(deferred_total(&proxy, "retried").await, 0.0);
    proxy.stop().await;
}

/// Pins (issue 30): an outcome Redis cannot take is kept by the deliverer and recorded when
/// Redis is back, so a Redis outage alone never sends an answered task again. The upstream
/// stops Redis (append-only, `appendfsync always`: the restart on the same port loses
/// nothing) while it handles the delivery, then answers 200; Redis comes back 8 s later —
/// past the upstream's `timeout` (1 s) + 5 s after which a silent deliverer's entry is taken
/// over — and for 15 s more the upstream sees no second delivery; the task ends `delivered`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_kept_through_a_redis_outage_is_not_sent_again() {
    let server = RedisServer::start_durable().await;
    let url = server.url();
    // The upstream's handler takes the server out to stop it; the test takes it back.
    let slot = Arc::new(Mutex::new(Some(server)));
    let stopped = Arc::new(AtomicBool::new(false));
    let (handler_slot, handler_stopped) = (slot.clone(), stopped.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (up, log) = recording_on(
        listener,
        |_| Duration::ZERO,
        move |_, before| {
            if before == 0 {
                if let Some(server) = handler_slot.lock().unwrap().as_mut() {
                    server.kill();
                }
                handler_stopped.store(true, Ordering::SeqCst);
            }
            done()
        },
    );
    let proxy = start_proxy(&config(&url, &up.endpoint(), "", "{when: always}")).await;
    let id = accepted_id(&post(&proxy.url("/hooks/once"), "once").await);

    until(
        "the upstream to stop Redis during the delivery",
        Duration::from_secs(20),
        || stopped.load(Ordering::SeqCst),
    )
    .await;
    let stopped_at = Instant::now();
    let mut server = slot.lock().unwrap().take().expect("the server, stopped");
    assert!(!server.is_running());
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(stopped_at.elapsed())).await;
    server.restart().await;
    let back = Instant::now();

    let mut conn = server.connection(None).await;
    until(
        "the kept outcome to be recorded",
        Duration::from_secs(10),
        || {
            let mut conn = conn.clone();
            let id = &id;
            async move {
                task_fields(&mut conn, id, &["status"]).await[0].as_deref() == Some("delivered")
            }
        },
    )
    .await;
    // A takeover would come within the visibility timeout (6 s) plus the caretaker's grace
    // (5 s) and ticks: 15 s catches it.
    tokio::time::sleep(Duration::from_secs(15).saturating_sub(back.elapsed())).await;
    assert_eq!(
        per_key(&log),
        BTreeMap::from([(id.clone(), 1)]),
        "the upstream saw the task once"
    );
    assert_eq!(entries(&mut conn).await, (0, 0));
    // The status endpoint's connection, unused since the outage, learns on its first call
    // that Redis restarted: that lookup may get 503, the next ones do not.
    let url = proxy.url(&format!("/_sluice/tasks/{id}"));
    until_ok_past_503s("the status endpoint to reach Redis again", || get(&url)).await;
    let status = until_status(&proxy, &id, "delivered").await;
    assert_eq!(
        status,
        json!({"id": id, "route": "hooks", "status": "delivered", "attempts": 1,
            "response": {"status": 200}})
    );
    assert_eq!(deferred_total(&proxy, "delivered").await, 1.0);
    proxy.stop().await;
}

/// Pins (issue 30): a dead task keeps its request and comes back. Answered 500 twice
/// (`attempts: 2`) a task is `dead`; `GET /tasks?route=hooks&status=dead` lists it (attempts
/// 2, response 500); once the upstream answers 200, `POST /tasks/requeue` with its id (and, for
/// a second dead task, without ids) answers `{"requeued": 1}` and the task ends `delivered` with
/// its attempts counted afresh, counted in `sluice_deferred_total{result="requeued"}`; a task
/// not dead or unknown is not requeued; bad queries and bodies get 400, an unknown route 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_task_is_listed_requeued_and_delivered() {
    let redis = RedisServer::start().await;
    let healthy = Arc::new(AtomicBool::new(false));
    let answer = healthy.clone();
    let (up, log) = recording(Duration::ZERO, move |_, _| {
        if answer.load(Ordering::SeqCst) {
            StatusCode::OK
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    })
    .await;
    let defer = "{when: always, attempts: 2, backoff: 100ms}";
    let proxy = start_proxy(&config(&redis.url(), &up.endpoint(), "", defer)).await;
    assert_eq!(listed_dead(&proxy).await, Vec::<Value>::new());

    // With its id.
    let first = accepted_id(&post(&proxy.url("/hooks/a"), "a").await);
    let dead = until_status(&proxy, &first, "dead").await;
    assert_eq!(dead["attempts"], 2, "{dead}");
    let listed = listed_dead(&proxy).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0]["age_seconds"].is_u64(), "{listed:?}");
    assert_eq!(
        listed[0],
        json!({"id": first, "route": "hooks", "status": "dead", "attempts": 2,
            "response": {"status": 500}, "age_seconds": listed[0]["age_seconds"]})
    );
    healthy.store(true, Ordering::SeqCst);
    let body = json!({"route": "hooks", "status": "dead", "ids": [first]}).to_string();
    let got = admin_post(&proxy, "/tasks/requeue", &body).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.json(), json!({"requeued": 1}));
    let done = until_status(&proxy, &first, "delivered").await;
    assert_eq!(done["attempts"], 1, "attempts start afresh: {done}");
    assert_eq!(done["response"]["status"], 200);
    assert_eq!(listed_dead(&proxy).await, Vec::<Value>::new());
    assert_eq!(deferred_total(&proxy, "requeued").await, 1.0);

    // Without ids: every dead task of the route.
    healthy.store(false, Ordering::SeqCst);
    let second = accepted_id(&post(&proxy.url("/hooks/b"), "b").await);
    until_status(&proxy, &second, "dead").await;
    healthy.store(true, Ordering::SeqCst);
    let got = admin_post(&proxy, "/tasks/requeue", r#"{"route": "hooks"}"#).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.json(), json!({"requeued": 1}));
    until_status(&proxy, &second, "delivered").await;
    assert_eq!(deferred_total(&proxy, "requeued").await, 2.0);

    // Every try carried the task's key: two failed attempts and the delivery.
    let seen = per_key(&log);
    assert_eq!(
        seen,
        BTreeMap::from([(first.clone(), 3), (second.clone(), 3)])
    );

    // Nothing dead to put back: a delivered task, an unknown one, none at all.
    let unknown = "0".repeat(32);
    for body in [
        json!({"route": "hooks", "status": "dead", "ids": [first]}).to_string(),
        json!({"route": "hooks", "ids": [unknown]}).to_string(),
        json!({"route": "hooks", "status": "dead"}).to_string(),
    ] {
        let got = admin_post(&proxy, "/tasks/requeue", &body).await;
        assert_eq!(got.status, StatusCode::OK, "{body}: {}", got.text());
        assert_eq!(got.json(), json!({"requeued": 0}), "{body}");
    }
    assert_eq!(deferred_total(&proxy, "requeued").await, 2.0);

    for body in [
        "not json",
        "{}",
        r#"{"route": "hooks", "status": "queued"}"#,
        r#"{"route": "hooks", "ids": ["not-an-id"]}"#,
        r#"{"route": "hooks", "ids": "all"}"#,
        r#"{"route": "hooks", "extra": true}"#,
    ] {
        let got = admin_post(&proxy, "/tasks/requeue", body).await;
        assert_eq!(
            got.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            got.text()
        );
        assert!(got.json()["error"].is_string(), "{body}: {}", got.text());
    }
    let got = admin_post(&proxy, "/tasks/requeue", r#"{"route": "nope"}"#).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND, "{}", got.text());
    let got = get(&proxy.admin_url("/tasks?route=nope&status=dead")).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND, "{}", got.text());
    for query in ["route=hooks&status=queued", "route=hooks&colour=red"] {
        let got = get(&proxy.admin_url(&format!("/tasks?{query}"))).await;
        assert_eq!(
            got.status,
            StatusCode::BAD_REQUEST,
            "{query}: {}",
            got.text()
        );
    }
    proxy.stop().await;
}

/// Pins (issue 30, decisions after review): an upstream 503 with `Retry-After` is pushback,
/// not an attempt. With `attempts: 1`, a task answered `503 Retry-After: 1` twice and then 200
/// is delivered (attempts 1), each try at least the second the upstream asked for after the
/// one before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_with_retry_after_is_pushback_not_an_attempt() {
    let redis = RedisServer::start().await;
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let arrived = arrivals.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (up, log) = recording_on(
        listener,
        |_| Duration::ZERO,
        move |_, before| {
            arrived.lock().unwrap().push(Instant::now());
            if before < 2 {
                let mut res = done();
                *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                res.headers_mut()
                    .insert("retry-after", http::HeaderValue::from_static("1"));
                res
            } else {
                done()
            }
        },
    );
    let defer = "{when: always, attempts: 1, backoff: 100ms}";
    let proxy = start_proxy(&config(&redis.url(), &up.endpoint(), "", defer)).await;
    let id = accepted_id(&post(&proxy.url("/hooks/p"), "p").await);

    let delivered = until_status(&proxy, &id, "delivered").await;
    assert_eq!(
        delivered,
        json!({"id": id, "route": "hooks", "status": "delivered", "attempts": 1,
            "response": {"status": 200}})
    );
    assert_eq!(per_key(&log), BTreeMap::from([(id.clone(), 3)]));
    let arrivals = arrivals.lock().unwrap().clone();
    for pair in arrivals.windows(2) {
        let gap = pair[1] - pair[0];
        // Retry-After: 1 on Redis' clock; a little slack for the two clocks' reading.
        assert!(
            gap >= Duration::from_millis(950),
            "the next try waited for the Retry-After: {gap:?}"
        );
    }
    assert_eq!(deferred_total(&proxy, "retried").await, 0.0);
    assert_eq!(deferred_total(&proxy, "dead").await, 0.0);
    proxy.stop().await;
}

/// Pins (found writing these tests): an outcome record that Redis ran but whose reply came
/// too late — so that the deliverer, which keeps an outcome until Redis takes it, sends it
/// again — changes nothing the second time. Instance A reaches Redis through a proxy that
/// holds back every reply from the moment the upstream answers A's delivery with 500 (for
/// 12 s: A's record of "retry" runs, its reply does not come, A sends it again every few
/// seconds); instance B, connected directly, delivers the retry (200). The task ends
/// `delivered`, stays so once A's replies flow again, and the upstream saw it twice (the 500
/// and the 200) — a repeated record does not put it back in the queue (which sent it a third
/// time, or, its request gone, made it `dead`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_recorded_twice_does_not_undo_a_later_delivery() {
    let redis = RedisServer::start().await;
    let stall = redis_server::ReplyStall::start(redis.port).await;
    let hold = stall.switch();
    let (up, log) = recording(Duration::ZERO, move |_, before| {
        if before == 0 {
            hold.store(true, Ordering::SeqCst);
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        }
    })
    .await;
    let defer = "{when: always, attempts: 3, backoff: 100ms}";
    let a = start_proxy(&config(&stall.url(), &up.endpoint(), "", defer)).await;
    let id = accepted_id(&post(&a.url("/hooks/late"), "late").await);
    until(
        "A's first delivery to be answered 500",
        Duration::from_secs(20),
        || log.lock().unwrap().len() == 1,
    )
    .await;
    let held_at = Instant::now();
    let b = start_proxy(&config(&redis.url(), &up.endpoint(), "", defer)).await;

    let mut conn = redis.connection(None).await;
    let status = |conn: &MultiplexedConnection| {
        let (mut conn, id) = (conn.clone(), id.clone());
        async move { task_fields(&mut conn, &id, &["status"]).await.remove(0) }
    };
    until(
        "B to deliver the retry",
        Duration::from_secs(30),
        || async { status(&conn).await.as_deref() == Some("delivered") },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(12).saturating_sub(held_at.elapsed())).await;
    stall.switch().store(false, Ordering::SeqCst);
    // A's kept record now gets its reply; a repeated one would have queued the task again by
    // now, and a deliverer found it (within the caretaker's tick and the visibility timeout).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let fields = task_fields(&mut conn, &id, &["status", "attempts", "code", "error"]).await;
    assert_eq!(fields[0].as_deref(), Some("delivered"), "{fields:?}");
    assert_eq!(
        per_key(&log),
        BTreeMap::from([(id.clone(), 2)]),
        "the 500 and the delivery"
    );
    assert_eq!(entries(&mut conn).await, (0, 0));
    b.stop().await;
    a.stop().await;
}
