//! Deferred delivery (`defer:` routes) against a real redis-server started per test: the 202
//! and the status endpoint, the delivered request, `when: overflow` under a burst, retries and
//! `dead`, a crashed instance's tasks delivered by another, Redis down at accept time, and what
//! Redis keeps.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::bin::{self, Sluice};
use crate::support::deferred::*;
use crate::support::redis_server::RedisServer;
use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

/// Pins: a deferred request is answered 202 with `Location` and `{"id","status":"queued"}`,
/// then delivered once with the same method, path and query, headers and body plus
/// `Idempotency-Key: <id>`; the status endpoint follows it to `delivered` with the upstream's
/// status; Redis keeps only the state (no body, an expiry) and no stream entry; the outcome and
/// counters say so; unknown ids and other methods get 404 and 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_request_is_delivered_as_sent_with_its_key() {
    let redis = RedisServer::start().await;
    let (up, log) = recording(Duration::ZERO, |_, _| StatusCode::CREATED).await;
    let proxy = start_proxy(&config(&redis.url(), &up.endpoint(), "", "{when: always}")).await;

    let got = post(&proxy.url("/hooks/order?x=1&y=two"), "payload-1").await;
    let id = accepted_id(&got);
    let done = until_status(&proxy, &id, "delivered").await;
    assert_eq!(
        done,
        serde_json::json!({"id": id, "route": "hooks", "status": "delivered", "attempts": 1,
            "response": {"status": 201}})
    );
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].uri, "/hooks/order?x=1&y=two");
    assert_eq!(seen[0].body, Bytes::from("payload-1"));
    assert_eq!(seen[0].key.as_deref(), Some(id.as_str()));
    assert_eq!(seen[0].header.as_deref(), Some("yes"));

    // What Redis keeps of a delivered task: its state until the ttl, not its request.
    let mut conn = redis.connection(None).await;
    let key = format!("sluice:defer:{{hooks}}:t:{id}");
    let body: i64 = redis::cmd("EXISTS")
        .arg(format!("sluice:defer:{{hooks}}:b:{id}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(body, 0, "the body is dropped once delivered");
    let request: Option<Vec<u8>> = redis::cmd("HGET")
        .arg(&key)
        .arg("headers")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(request, None, "the request is dropped once delivered");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl > 3600 * 1000 && ttl <= 24 * 3600 * 1000,
        "the state is kept until the task's ttl (24 h): {ttl}"
    );
    let entries: i64 = redis::cmd("XLEN")
        .arg("sluice:defer:{hooks}:s")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(entries, 0, "delivered entries are deleted");

    assert_eq!(
        proxy
            .metric(r#"sluice_requests_total{route="hooks",outcome="deferred"}"#)
            .await,
        1.0
    );
    for (result, n) in [("accepted", 1.0), ("delivered", 1.0), ("retried", 0.0)] {
        let series = format!(r#"sluice_deferred_total{{route="hooks",result="{result}"}}"#);
        assert_eq!(proxy.metric(&series).await, n, "{series}");
    }
    until(
        "the gauge to count the delivered task",
        Duration::from_secs(10),
        || async {
            let text = get(&proxy.admin_url("/metrics")).await.text();
            metric_value(
                &text,
                r#"sluice_deferred_tasks{route="hooks",status="delivered"}"#,
            ) == Some(1.0)
        },
    )
    .await;
    // The dashboard's `/stats` carries the same counts, on the route's entry.
    let stats = get(&proxy.admin_url("/stats")).await.json();
    let hooks = stats["routes"]
        .as_array()
        .and_then(|routes| routes.iter().find(|r| r["name"] == "hooks"))
        .cloned()
        .unwrap_or_else(|| panic!("no route hooks in {stats}"));
    assert_eq!(hooks["deferred"]["delivered"], 1, "{hooks}");
    assert_eq!(hooks["deferred"]["queued"], 0, "{hooks}");

    let unknown = get(&proxy.url(&format!("/_sluice/tasks/{}", "0".repeat(32)))).await;
    unknown.assert_problem(StatusCode::NOT_FOUND, "unknown-task");
    assert_eq!(get(&proxy.url("/_sluice/tasks/nope")).await.status, 404);
    let wrong = post(&proxy.url(&format!("/_sluice/tasks/{id}")), "").await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong.header("allow"), Some("GET, HEAD"));
    proxy.stop().await;
}

/// Pins: `when: overflow` under a burst against a cap of 1 (no queue) answers no request 503 —
/// each is forwarded or deferred — and every accepted body reaches the upstream (the SHA-256
/// sets are equal), deliveries never exceeding the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_burst_against_a_cap_of_one_loses_nothing() {
    let redis = RedisServer::start().await;
    let (up, log) = recording(Duration::from_millis(20), |_, _| StatusCode::OK).await;
    let cap = "    concurrency: {max_inflight: 1, queue: 0}";
    let proxy = start_proxy(&config(
        &redis.url(),
        &up.endpoint(),
        cap,
        "{when: overflow}",
    ))
    .await;

    let bodies: Vec<String> = (0..40)
        .map(|i| format!("event-{i}-{}", "x".repeat(i)))
        .collect();
    let burst = bodies.iter().map(|body| {
        let url = proxy.url("/hooks/events");
        let body = body.clone();
        tokio::spawn(async move { post(&url, body).await.status })
    });
    let mut statuses = Vec::new();
    for task in burst.collect::<Vec<_>>() {
        statuses.push(task.await.unwrap());
    }
    let deferred = statuses
        .iter()
        .filter(|s| **s == StatusCode::ACCEPTED)
        .count();
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::ACCEPTED),
        "{statuses:?}"
    );
    assert!(
        deferred > 0,
        "a burst of 40 on one slot defers some: {statuses:?}"
    );

    let sent: BTreeSet<String> = bodies.iter().map(|b| sha(b.as_bytes())).collect();
    until(
        "every body to reach the upstream",
        Duration::from_secs(20),
        || {
            let got: BTreeSet<String> = log.lock().unwrap().iter().map(|s| sha(&s.body)).collect();
            got == sent
        },
    )
    .await;
    assert_eq!(up.max_inflight(), 1, "deliveries take the cap's slot too");
    assert_eq!(
        proxy
            .metric(r#"sluice_requests_total{route="hooks",outcome="queue_full"}"#)
            .await,
        0.0
    );
    proxy.stop().await;
}

/// Pins: a 503 is retried after the backoff until the upstream accepts (three attempts, two
/// retries), with the same key each time; a 400 ends the task at once (`delivered`, the
/// upstream's 400); a task answered 500 every time is `dead` after `attempts`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_until_success_none_on_400_dead_after_attempts() {
    let redis = RedisServer::start().await;
    let (up, log) = recording(Duration::ZERO, |seen, before| match seen.uri.as_str() {
        "/hooks/flaky" if before < 2 => StatusCode::SERVICE_UNAVAILABLE,
        "/hooks/flaky" => StatusCode::OK,
        "/hooks/bad" => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    })
    .await;
    let defer = "{when: always, attempts: 3, backoff: 50ms}";
    let proxy = start_proxy(&config(&redis.url(), &up.endpoint(), "", defer)).await;

    let flaky = accepted_id(&post(&proxy.url("/hooks/flaky"), "f").await);
    let bad = accepted_id(&post(&proxy.url("/hooks/bad"), "b").await);
    let broken = accepted_id(&post(&proxy.url("/hooks/broken"), "x").await);

    let done = until_status(&proxy, &flaky, "delivered").await;
    assert_eq!(done["attempts"], 3);
    assert_eq!(done["response"]["status"], 200);
    let done = until_status(&proxy, &bad, "delivered").await;
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["response"]["status"], 400);
    let dead = until_status(&proxy, &broken, "dead").await;
    assert_eq!(dead["attempts"], 3);
    assert_eq!(dead["response"]["status"], 500);

    let seen = log.lock().unwrap().clone();
    let count = |uri: &str| seen.iter().filter(|s| s.uri == uri).count();
    assert_eq!(
        (
            count("/hooks/flaky"),
            count("/hooks/bad"),
            count("/hooks/broken")
        ),
        (3, 1, 3),
        "{seen:?}"
    );
    assert!(seen
        .iter()
        .filter(|s| s.uri == "/hooks/flaky")
        .all(|s| s.key.as_deref() == Some(flaky.as_str())));
    for (result, n) in [("delivered", 2.0), ("retried", 4.0), ("dead", 1.0)] {
        let series = format!(r#"sluice_deferred_total{{route="hooks",result="{result}"}}"#);
        assert_eq!(proxy.metric(&series).await, n, "{series}");
    }
    proxy.stop().await;
}

/// Pins: with Redis down, a request the route defers gets 503 `store-unavailable` — never a
/// 202 for work that is not stored — and so does the status endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_accept_time_is_503_never_202() {
    let mut redis = RedisServer::start().await;
    let up = ok_upstream().await;
    let proxy = start_proxy(&config(&redis.url(), &up.endpoint(), "", "{when: always}")).await;
    let id = accepted_id(&post(&proxy.url("/hooks/a"), "stored").await);
    redis.kill();
    for _ in 0..5 {
        let got = post(&proxy.url("/hooks/a"), "not stored").await;
        got.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "store-unavailable");
        // The first write after the kill may have left on a connection that then broke: its
        // outcome is unknown, and the 503 says so (names the task, says when to look). Once
        // the store is known to be down, nothing is sent: plainly not stored.
        match got.json().get("task") {
            Some(task) => {
                let location = format!("/_sluice/tasks/{}", task.as_str().unwrap());
                assert_eq!(got.header("location"), Some(location.as_str()));
                assert!(got.header("retry-after").is_some());
            }
            None => assert_eq!(got.header("retry-after"), None),
        }
    }
    let status = get(&proxy.url(&format!("/_sluice/tasks/{id}"))).await;
    assert_eq!(status.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        proxy
            .metric(r#"sluice_requests_total{route="hooks",outcome="store_unavailable"}"#)
            .await,
        5.0
    );
    assert_eq!(
        proxy
            .metric(r#"sluice_deferred_total{route="hooks",result="accepted"}"#)
            .await,
        1.0
    );
    proxy.stop().await;
}

/// Pins: a body larger than `max_body` gets 413 under `when: always` (announced or not); under
/// `when: overflow` a request the caps refuse whose body is too large keeps its 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_max_body() {
    let redis = RedisServer::start().await;
    let (up, _log) = recording(Duration::from_millis(300), |_, _| StatusCode::OK).await;
    let always = config(
        &redis.url(),
        &up.endpoint(),
        "",
        "{when: always, max_body: 16}",
    );
    let proxy = start_proxy(&always).await;
    let got = post(&proxy.url("/hooks/a"), "0123456789abcdefX").await;
    got.assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large");
    assert!(got.json()["detail"]
        .as_str()
        .unwrap()
        .contains("defer.max_body"));
    let id = accepted_id(&post(&proxy.url("/hooks/a"), "0123456789abcdef").await);
    until_status(&proxy, &id, "delivered").await;
    proxy.stop().await;

    let cap = "    concurrency: {max_inflight: 1, queue: 0}";
    let overflow = config(
        &redis.url(),
        &up.endpoint(),
        cap,
        "{when: overflow, max_body: 16}",
    );
    let proxy = start_proxy(&overflow).await;
    let url = proxy.url("/hooks/b");
    let busy = tokio::spawn(async move { post(&url, "first").await.status });
    until("the slot to be taken", Duration::from_secs(5), || {
        up.inflight.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    let got = post(&proxy.url("/hooks/b"), "0123456789abcdefX").await;
    got.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "queue-full");
    accepted_id(&post(&proxy.url("/hooks/b"), "small").await);
    assert_eq!(busy.await.unwrap(), StatusCode::OK);
    proxy.stop().await;
}

/// Pins crash safety: 50 tasks accepted while the upstream does not answer, the instance
/// SIGKILLed with some tasks in the hands of its deliverers (sent, unanswered) and the rest
/// still queued; another instance started with the upstream up takes the held ones over after
/// the visibility timeout and delivers all 50 at least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_a_killed_instance_are_delivered_by_another() {
    let redis = RedisServer::start().await;
    let (silent, _held) = silent_server().await;
    let defer = "{when: always, attempts: 100, backoff: 100ms}";
    let first = ConfigFile::new(&config(
        &redis.url(),
        &format!("http://{silent}"),
        "",
        defer,
    ));
    let mut a = Sluice::start(bin::command().args(["run", "-c"]).arg(&first.path))
        .unwrap_or_else(|stderr| panic!("sluice run did not start:\n{stderr}"));
    let bodies: Vec<String> = (0..50).map(|i| format!("task-{i}")).collect();
    let url = format!("http://{}/hooks/t", a.http);
    for body in &bodies {
        accepted_id(&post(&url, body.clone()).await);
    }
    // The deliverers have sent their tasks and wait for answers that never come.
    let conn = redis.connection(None).await;
    until("tasks in the hands of the deliverers", Duration::from_secs(10), || {
        let mut conn = conn.clone();
        async move {
            let pending: redis::Value = redis::cmd("XPENDING")
                .arg("sluice:defer:{hooks}:s")
                .arg("sluice")
                .query_async(&mut conn)
                .await
                .unwrap();
            matches!(&pending, redis::Value::Array(p) if matches!(p.first(), Some(redis::Value::Int(n)) if *n > 0))
        }
    })
    .await;
    a.signal("KILL");
    a.wait_exit();

    let (up, log) = recording(Duration::ZERO, |_, _| StatusCode::OK).await;
    let second = ConfigFile::new(&config(&redis.url(), &up.endpoint(), "", defer));
    let mut b = Sluice::start(bin::command().args(["run", "-c"]).arg(&second.path))
        .unwrap_or_else(|stderr| panic!("sluice run did not start:\n{stderr}"));
    let sent: BTreeSet<String> = bodies.iter().map(|b| sha(b.as_bytes())).collect();
    let delivered = crate::support::wait::within(Duration::from_secs(30), || {
        let got: BTreeSet<String> = log.lock().unwrap().iter().map(|s| sha(&s.body)).collect();
        got.is_superset(&sent)
    })
    .await;
    if delivered.is_err() {
        let got: BTreeSet<String> = log.lock().unwrap().iter().map(|s| sha(&s.body)).collect();
        panic!(
            "{} of 50 tasks delivered in 30 s; sluice:\n{}",
            got.intersection(&sent).count(),
            b.stderr(false)
        );
    }
    assert!(
        b.wait_for_log("took over deferred tasks").is_some(),
        "the held tasks came back through a takeover:\n{}",
        b.stderr(false)
    );
    until(
        "every entry acknowledged and deleted",
        Duration::from_secs(10),
        || {
            let mut conn = conn.clone();
            async move {
                let entries: i64 = redis::cmd("XLEN")
                    .arg("sluice:defer:{hooks}:s")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                entries == 0
            }
        },
    )
    .await;
}

/// Pins: a reload that removes a deferring route stops its deliverers without losing a task:
/// the one waiting for a slot goes back to the stream unsent (not left pending for a takeover);
/// when the route comes back, its new deliverers deliver it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_route_puts_its_waiting_task_back() {
    let redis = RedisServer::start().await;
    let (up, log) = recording_with(
        |seen| {
            if seen.uri.starts_with("/x") {
                Duration::from_secs(2)
            } else {
                Duration::ZERO
            }
        },
        |_, _| StatusCode::OK,
    )
    .await;
    let route = |name: &str| {
        format!(
            "  - name: {name}\n    match: {{path_prefix: /{name}}}\n    upstream: api\n    defer: {{when: always}}\n"
        )
    };
    let yaml = |routes: &str| {
        format!(
            "server: {{listen: 127.0.0.1:0}}\nadmin: {{listen: 127.0.0.1:0}}\nstore: {{redis: {{url: \"{}\", timeout: 2s}}}}\nupstreams:\n  api:\n    endpoints: [{}]\n    timeout: 5s\n    concurrency: {{max_inflight: 1, queue: 0}}\nroutes:\n{routes}",
            redis.url(),
            up.endpoint()
        )
    };
    let file = ConfigFile::new(&yaml(&(route("x") + &route("y"))));
    let proxy = start_proxy_file(&file).await;
    let reload = || async {
        let got = proxy.reload().await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    };

    // Task a holds the upstream's only slot for 2 s; task b waits for it.
    accepted_id(&post(&proxy.url("/x/a"), "a").await);
    until(
        "task a to reach the upstream",
        Duration::from_secs(10),
        || up.inflight.load(std::sync::atomic::Ordering::SeqCst) == 1,
    )
    .await;
    let b = accepted_id(&post(&proxy.url("/y/b"), "b").await);
    let mut conn = redis.connection(None).await;
    let stream = "sluice:defer:{y}:s";
    until(
        "task b to be held by a deliverer",
        Duration::from_secs(10),
        || {
            let mut conn = conn.clone();
            async move { pending_and_len(&mut conn, stream).await == (1, 1) }
        },
    )
    .await;

    file.write(&yaml(&route("x")));
    reload().await;
    until(
        "task b to be put back, unsent",
        Duration::from_secs(5),
        || {
            let mut conn = conn.clone();
            async move { pending_and_len(&mut conn, stream).await == (0, 1) }
        },
    )
    .await;
    let status: String = redis::cmd("HGET")
        .arg(format!("sluice:defer:{{y}}:t:{b}"))
        .arg("status")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(status, "queued");
    assert!(log.lock().unwrap().iter().all(|s| !s.uri.starts_with("/y")));

    file.write(&yaml(&(route("x") + &route("y"))));
    reload().await;
    let done = until_status(&proxy, &b, "delivered").await;
    assert_eq!(done["attempts"], 1);
    let seen = log.lock().unwrap().clone();
    assert_eq!(
        seen.iter().filter(|s| s.uri == "/y/b").count(),
        1,
        "{seen:?}"
    );
    proxy.stop().await;
}

/// Pins: on a Redis Cluster (the route's keys share one hash tag, so the scripts run on one
/// node), tasks are accepted, delivered and their state read like on one server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_delivery_on_a_redis_cluster() {
    let cluster = redis_server::RedisCluster::start(3).await;
    let (up, log) = recording(Duration::ZERO, |_, _| StatusCode::OK).await;
    let yaml = config("redis://unused", &up.endpoint(), "", "{when: always}").replace(
        "url: \"redis://unused\"",
        &format!("cluster: {}", cluster.seeds_yaml()),
    );
    let proxy = start_proxy(&yaml).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(accepted_id(
            &post(&proxy.url("/hooks/c"), format!("c{i}")).await,
        ));
    }
    for id in &ids {
        let done = until_status(&proxy, id, "delivered").await;
        assert_eq!(done["response"]["status"], 200);
    }
    assert_eq!(log.lock().unwrap().len(), 5);
    proxy.stop().await;
}

/// Pins: a task whose next attempt would come after its `ttl` gets one last try shortly before
/// the ttl ends instead (an upstream back by then still gets it), then is `dead` with error
/// `expired` and the upstream's last status; its record is gone (404) once the `ttl` has
/// passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_ttl_a_task_is_dead_then_forgotten() {
    let redis = RedisServer::start().await;
    let (up, log) = recording(Duration::ZERO, |_, _| StatusCode::BAD_GATEWAY).await;
    let defer = "{when: always, attempts: 10, backoff: 10s, ttl: 3s}";
    let proxy = start_proxy(&config(&redis.url(), &up.endpoint(), "", defer)).await;
    let id = accepted_id(&post(&proxy.url("/hooks/late"), "late").await);
    let dead = until_status(&proxy, &id, "dead").await;
    assert_eq!(dead["attempts"], 2, "{dead}");
    assert_eq!(dead["response"]["status"], 502);
    assert_eq!(dead["error"], "expired");
    assert_eq!(log.lock().unwrap().len(), 2, "the first try and the last");
    let url = proxy.url(&format!("/_sluice/tasks/{id}"));
    until(
        "the record to expire with the ttl",
        Duration::from_secs(10),
        || async { get(&url).await.status == StatusCode::NOT_FOUND },
    )
    .await;
    assert_eq!(
        proxy
            .metric(r#"sluice_deferred_total{route="hooks",result="dead"}"#)
            .await,
        1.0
    );
    proxy.stop().await;
}

/// Regression (issue 22, item 7): task lookups had only a process-wide cap of 32 under way, so
/// one client polling in a loop could starve everyone's lookups. `GET /_sluice/tasks/<id>` is
/// limited per client address (20/s, burst 40), before Redis is asked (here nothing listens
/// where it should be): past the burst, 429 `rate-limited` with `Retry-After` and the limit's
/// `RateLimit` fields; another client address is not affected, and a reload refills nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_lookups_are_limited_per_client_address() {
    use hyper_util::client::legacy::{connect::HttpConnector, Client};
    let up = ok_upstream().await;
    let file = ConfigFile::new(&config(
        "redis://127.0.0.1:1",
        &up.endpoint(),
        "",
        "{when: always}",
    ));
    let proxy = start_proxy_file(&file).await;
    let url = proxy.url(&format!("/_sluice/tasks/{}", "0".repeat(32)));
    let lookup = |client: Client<HttpConnector, Full<Bytes>>| {
        let req = Request::get(&url).body(Full::new(Bytes::new())).unwrap();
        async move { send(&client, req).await }
    };
    let from = |ip: [u8; 4]| {
        let mut connector = HttpConnector::new();
        connector.set_local_address(Some(ip.into()));
        Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector)
    };
    let (one, other) = (from([127, 0, 0, 1]), from([127, 0, 0, 2]));
    let started = std::time::Instant::now();
    let mut answers = Vec::new();
    for _ in 0..60 {
        answers.push(lookup(one.clone()).await);
    }
    let took = started.elapsed();
    let limited: Vec<&Got> = answers
        .iter()
        .filter(|g| g.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    // The bucket gives back one lookup per 50 ms while the 60 are sent.
    let refilled = (took.as_secs_f64() * 20.0).ceil() as usize + 1;
    assert!(
        !limited.is_empty() && limited.len() + refilled >= 20,
        "{} of 60 lookups limited in {took:?}",
        limited.len()
    );
    for (i, got) in answers.iter().take(40).enumerate() {
        // Admitted, so looked up: Redis is not there.
        assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "lookup {i}");
        assert_eq!(
            got.header("ratelimit-policy"),
            Some(r#""task-lookups";q=40;w=2"#)
        );
    }
    for got in limited {
        assert_eq!(got.header("retry-after"), Some("1"));
        assert_eq!(got.header("ratelimit"), Some(r#""task-lookups";r=0;t=1"#));
        let json = got.json();
        assert_eq!(json["reason"], "rate-limited", "{json}");
        assert_eq!(json["retry_after"], 1, "{json}");
        assert_eq!(json.get("route"), None, "{json}");
    }
    let got = lookup(other).await;
    assert_eq!(
        got.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        got.text()
    );
    assert_eq!(
        got.header("ratelimit")
            .map(|r| r.starts_with(r#""task-lookups";r=39;"#)),
        Some(true)
    );

    // A reload keeps the buckets: after it, 127.0.0.1 gets back only what time refilled.
    let reloaded = post(&proxy.admin_url("/reload"), "").await;
    assert_eq!(reloaded.status, StatusCode::OK, "{}", reloaded.text());
    let mut admitted = 0;
    while lookup(one.clone()).await.status != StatusCode::TOO_MANY_REQUESTS {
        admitted += 1;
        assert!(admitted < 40, "the reload refilled the bucket");
    }
    let refilled = (started.elapsed().as_secs_f64() * 20.0).ceil() as usize + 1;
    assert!(admitted <= refilled, "{admitted} admitted after the reload");
    proxy.stop().await;
}
