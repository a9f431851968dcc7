//! The admin listener, metrics, hot reload and readiness, through real listeners.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

fn post(url: &str) -> Request<Full<Bytes>> {
    Request::post(url).body(Full::new(Bytes::new())).unwrap()
}

/// The health endpoints, /config with the password redacted, and 404/405 for the rest.
#[tokio::test]
async fn admin_endpoints() {
    let up = ok_upstream().await;
    let yaml = admin_config(&up.endpoint(), "  - { name: all, upstream: api }\n");
    let proxy = start_proxy(&yaml).await;
    assert_eq!(
        get(&proxy.admin_url("/healthz")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&proxy.admin_url("/readyz")).await.status,
        StatusCode::OK
    );
    let config = get(&proxy.admin_url("/config")).await;
    assert_eq!(config.status, StatusCode::OK);
    assert_eq!(config.header("content-type"), Some("application/json"));
    let json = config.json();
    assert!(json.to_string().contains("all"), "{json}");
    assert_eq!(
        get(&proxy.admin_url("/nope")).await.status,
        StatusCode::NOT_FOUND
    );
    let wrong = send(&client(), post(&proxy.admin_url("/metrics"))).await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    let metrics = get(&proxy.admin_url("/metrics")).await;
    assert!(
        metrics
            .text()
            .contains("# TYPE sluice_requests_total counter"),
        "{}",
        metrics.text()
    );
    proxy.stop().await;
}

/// After a known sequence — forwarded, rate-limited, shed, queue-full, an upstream timeout and
/// an unmatched path — every counter says exactly that, and the gauges are back to 0 when idle.
#[tokio::test]
async fn counters_are_exact_and_gauges_return_to_zero() {
    let release = Arc::new(tokio::sync::Notify::new());
    let hold = Arc::new(AtomicBool::new(true));
    let (r, h) = (release.clone(), hold.clone());
    let up = upstream(move |req: http::Request<hyper::body::Incoming>| {
        let (r, h) = (r.clone(), h.clone());
        async move {
            if req.uri().path().starts_with("/slow") && h.load(Ordering::SeqCst) {
                r.notified().await;
            }
            if req.uri().path().starts_with("/timeout") {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            http::Response::new(TestBody::text("ok"))
        }
    })
    .await;
    let yaml = format!(
        r#"
server: {{ listen: 127.0.0.1:0 }}
admin: {{ listen: 127.0.0.1:0 }}
upstreams:
  api: {{ endpoints: [{ep}], timeout: 1s }}
  capped:
    endpoints: [{ep}]
    concurrency: {{ max_inflight: 1, queue: 1, queue_timeout: 30s }}
routes:
  - name: limited
    match: {{ path_prefix: /limited }}
    upstream: api
    rate_limits: [{{ name: tiny, key: global, rate: 1/h, burst: 3 }}]
  - name: timeout
    match: {{ path_prefix: /timeout }}
    upstream: api
  - name: slow-low
    match: {{ path_prefix: /slow/low }}
    upstream: capped
    priority: low
  - name: slow-high
    match: {{ path_prefix: /slow/high }}
    upstream: capped
    priority: high
"#,
        ep = up.endpoint()
    );
    let proxy = start_proxy(&yaml).await;
    // 3 forwarded + 2 rate-limited.
    for i in 0..5 {
        let got = get(&proxy.url("/limited")).await;
        assert_eq!(
            got.status,
            if i < 3 {
                StatusCode::OK
            } else {
                StatusCode::TOO_MANY_REQUESTS
            }
        );
    }
    // One upstream timeout.
    assert_eq!(
        get(&proxy.url("/timeout")).await.status,
        StatusCode::GATEWAY_TIMEOUT
    );
    // One unmatched.
    assert_eq!(
        get(&proxy.url("/nowhere")).await.status,
        StatusCode::NOT_FOUND
    );
    // The capped upstream: one low in flight, one low queued; a high arrival sheds the queued
    // low; another low finds the queue full (of the high).
    let url = |p: &str| proxy.url(p);
    // Counted by arrivals, not by `inflight`: the timed-out request may still be at the upstream.
    let arrived = up.requests();
    let first = tokio::spawn({
        let u = url("/slow/low/1");
        async move { get(&u).await.status }
    });
    until(
        "the first low request at the upstream",
        Duration::from_secs(10),
        || up.requests() > arrived,
    )
    .await;
    let queued_low = tokio::spawn({
        let u = url("/slow/low/2");
        async move { get(&u).await }
    });
    until(
        "the second low request queued",
        Duration::from_secs(10),
        || async {
            proxy
                .metric("sluice_queue_depth{upstream=\"capped\"}")
                .await
                >= 1.0
        },
    )
    .await;
    let high = tokio::spawn({
        let u = url("/slow/high/1");
        async move { get(&u).await.status }
    });
    let shed = queued_low.await.unwrap();
    shed.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "shed");
    let full = get(&url("/slow/low/3")).await;
    assert_eq!(full.json()["reason"], "queue-full");
    assert_eq!(
        proxy
            .metric("sluice_utilization{upstream=\"capped\"}")
            .await,
        1.0
    );
    assert_eq!(
        proxy.metric("sluice_inflight{upstream=\"capped\"}").await,
        1.0
    );
    hold.store(false, Ordering::SeqCst);
    release.notify_waiters();
    release.notify_one();
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    assert_eq!(high.await.unwrap(), StatusCode::OK);

    let m = get(&proxy.admin_url("/metrics")).await.text();
    let v = |s: &str| expect_metric(&m, s);
    assert_eq!(
        v("sluice_requests_total{route=\"limited\",outcome=\"forwarded\"}"),
        3.0,
        "{m}"
    );
    assert_eq!(
        v("sluice_requests_total{route=\"limited\",outcome=\"rate_limited\"}"),
        2.0
    );
    assert_eq!(
        v("sluice_responses_total{route=\"limited\",code=\"429\"}"),
        2.0
    );
    assert_eq!(
        v("sluice_requests_total{route=\"timeout\",outcome=\"upstream_timeout\"}"),
        1.0
    );
    assert_eq!(
        v("sluice_responses_total{route=\"timeout\",code=\"504\"}"),
        1.0
    );
    assert_eq!(
        v("sluice_requests_total{route=\"\",outcome=\"no_route\"}"),
        1.0
    );
    assert_eq!(
        v("sluice_requests_total{route=\"slow-low\",outcome=\"forwarded\"}"),
        1.0
    );
    assert_eq!(
        v("sluice_requests_total{route=\"slow-low\",outcome=\"shed\"}"),
        1.0
    );
    assert_eq!(
        v("sluice_requests_total{route=\"slow-low\",outcome=\"queue_full\"}"),
        1.0
    );
    assert_eq!(
        v("sluice_requests_total{route=\"slow-high\",outcome=\"forwarded\"}"),
        1.0
    );
    assert_eq!(
        v("sluice_rate_limit_keys{route=\"limited\",limit=\"tiny\"}"),
        1.0
    );
    assert!(v("sluice_queue_wait_seconds_count{upstream=\"capped\"}") >= 2.0);
    assert!(v("sluice_upstream_duration_seconds_count{route=\"limited\"}") >= 3.0);
    // Idle: every gauge is there (created with its route or upstream) and back to 0.
    for series in [
        "sluice_inflight{upstream=\"capped\"}",
        "sluice_inflight{route=\"slow-low\"}",
        "sluice_inflight{route=\"slow-high\"}",
        "sluice_inflight{route=\"limited\"}",
        "sluice_queue_depth{upstream=\"capped\"}",
        "sluice_utilization{upstream=\"capped\"}",
    ] {
        assert_eq!(v(series), 0.0, "{series} not back to 0:\n{m}");
    }
    proxy.stop().await;
}

fn reload_config(upstream: &str, other_rate: &str, extra: &str) -> String {
    format!(
        r#"
server: {{ listen: 127.0.0.1:0 }}
admin: {{ listen: 127.0.0.1:0 }}
upstreams: {{ api: {{ endpoints: [{upstream}] }} }}
routes:
  - name: kept
    match: {{ path_prefix: /kept }}
    upstream: api
    rate_limits: [{{ name: per-client, key: client_ip, rate: 1/h, burst: 2 }}]
  - name: other
    match: {{ path_prefix: /other }}
    upstream: api
    rate_limits: [{{ key: global, rate: {other_rate} }}]
{extra}
"#
    )
}

/// A reload that only changes another route keeps a limit's state: a client that spent its
/// burst does not get a fresh one. An invalid file changes nothing and is counted.
#[tokio::test]
async fn reload_keeps_unchanged_limit_state_and_rejects_invalid_files() {
    let up = ok_upstream().await;
    let file = ConfigFile::new(&reload_config(&up.endpoint(), "10/s", ""));
    let proxy = start_proxy_file(&file).await;
    assert_eq!(get(&proxy.url("/kept")).await.status, StatusCode::OK);
    assert_eq!(get(&proxy.url("/kept")).await.status, StatusCode::OK);
    assert_eq!(
        get(&proxy.url("/kept")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(get(&proxy.url("/new")).await.status, StatusCode::NOT_FOUND);

    // Valid: another route's rate changes and a route is added.
    file.write(&reload_config(
        &up.endpoint(),
        "20/s",
        "  - name: new\n    match: { path_prefix: /new }\n    upstream: api\n",
    ));
    let ok = proxy.reload().await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert_eq!(ok.json()["result"], "success");
    assert_eq!(get(&proxy.url("/new")).await.status, StatusCode::OK);
    assert_eq!(
        get(&proxy.url("/kept")).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "burst was refilled by a reload"
    );
    assert_eq!(
        get(&proxy.url("/other")).await.header("ratelimit-policy"),
        Some("\"limit-0\";q=20;w=1")
    );

    // Invalid: 422 with the error, nothing changes.
    file.write("server:\n  listen: 127.0.0.1:0\n  bogus: true\n");
    let bad = proxy.reload().await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.text().contains("server.bogus"), "{}", bad.text());
    assert_eq!(get(&proxy.url("/new")).await.status, StatusCode::OK);
    assert_eq!(
        proxy
            .metric("sluice_config_reloads_total{result=\"failure\"}")
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric("sluice_config_reloads_total{result=\"success\"}")
            .await,
        1.0
    );
    proxy.stop().await;
}

fn with_key(url: &str, key: &str) -> Request<Full<Bytes>> {
    Request::get(url)
        .header("x-api-key", key)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Regression (a reload re-seeded the hash of header keys, so every `key: header:…` bucket came
/// back full): a reload that only changes another route keeps header-keyed state — a key that
/// spent its burst still gets 429, and another key still has its own bucket.
#[tokio::test]
async fn reload_keeps_header_keyed_limit_state() {
    let up = ok_upstream().await;
    let keyed = "  - name: keyed\n    match: { path_prefix: /keyed }\n    upstream: api\n    rate_limits: [{ name: per-key, key: \"header:X-Api-Key\", rate: 1/h, burst: 2 }]\n";
    let file = ConfigFile::new(&reload_config(&up.endpoint(), "10/s", keyed));
    let proxy = start_proxy_file(&file).await;
    let keyed_url = proxy.url("/keyed");
    for expected in [
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::TOO_MANY_REQUESTS,
    ] {
        let got = send(&client(), with_key(&keyed_url, "k1")).await;
        assert_eq!(got.status, expected, "{}", got.text());
    }

    // Another route's rate changes; `keyed` is untouched.
    file.write(&reload_config(&up.endpoint(), "20/s", keyed));
    let ok = proxy.reload().await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert_eq!(
        get(&proxy.url("/other")).await.header("ratelimit-policy"),
        Some("\"limit-0\";q=20;w=1"),
        "the reload applied"
    );
    assert_eq!(
        send(&client(), with_key(&keyed_url, "k1")).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the header key's burst was refilled by a reload"
    );
    assert_eq!(
        send(&client(), with_key(&keyed_url, "k2")).await.status,
        StatusCode::OK
    );
    proxy.stop().await;
}

/// A config with one capped upstream (2 in flight, no queue) whose `timeout` is `timeout`.
fn capped_config(endpoint: &str, timeout: &str) -> String {
    format!(
        r#"
server: {{ listen: 127.0.0.1:0 }}
admin: {{ listen: 127.0.0.1:0 }}
upstreams:
  capped:
    endpoints: [{endpoint}]
    timeout: {timeout}
    concurrency: {{ max_inflight: 2, queue: 0, queue_timeout: 1s }}
routes: [{{ name: all, upstream: capped }}]
"#
    )
}

/// Regression (a reload that changed another field of an upstream, e.g. `timeout`, built it a
/// fresh cap, so the requests in flight no longer counted): the cap's slots carry over — with
/// `max_inflight` requests held across the reload, a new request gets 503 queue-full and the
/// upstream never sees more than the cap; once they finish, their slots are free again.
#[tokio::test]
async fn reload_keeps_upstream_slots_when_another_field_changes() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let up = upstream(move |req: http::Request<hyper::body::Incoming>| {
        let g = g.clone();
        async move {
            if req.uri().path().starts_with("/held") {
                g.acquire().await.unwrap().forget();
            }
            http::Response::new(TestBody::text("ok"))
        }
    })
    .await;
    let file = ConfigFile::new(&capped_config(&up.endpoint(), "30s"));
    let proxy = start_proxy_file(&file).await;
    let held: Vec<_> = (0..2)
        .map(|i| {
            let url = proxy.url(&format!("/held/{i}"));
            tokio::spawn(async move { get(&url).await.status })
        })
        .collect();
    until(
        "the held requests at the upstream",
        Duration::from_secs(10),
        || up.inflight.load(Ordering::SeqCst) >= 2,
    )
    .await;

    file.write(&capped_config(&up.endpoint(), "31s"));
    let ok = proxy.reload().await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    let got = get(&proxy.url("/probe")).await;
    assert_eq!(
        got.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a request beyond the cap was admitted after the reload: {}",
        got.text()
    );
    assert_eq!(got.json()["reason"], "queue-full");
    assert_eq!(up.max_inflight(), 2, "the upstream saw more than the cap");

    gate.add_permits(2);
    for task in held {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    // The held requests' slots go back to the carried cap (bounded retry: a slot is released
    // when the response body is done, asynchronously to the client's read).
    let probe = proxy.url("/probe");
    until_ok_past_503s("the held requests' slots to come back", || get(&probe)).await;
    assert_eq!(up.max_inflight(), 2);
    proxy.stop().await;
}

/// Reloads under continuous load from several clients lose no request: every request gets the
/// old or the new policy's answer.
#[tokio::test]
async fn reload_under_load_loses_nothing() {
    let up = ok_upstream().await;
    let file = ConfigFile::new(&reload_config(&up.endpoint(), "100000/s", ""));
    let proxy = start_proxy_file(&file).await;
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, answered, url) = (stop.clone(), answered.clone(), proxy.url("/other"));
        clients.push(tokio::spawn(async move {
            let cl = client();
            while !stop.load(Ordering::SeqCst) {
                let got = send(
                    &cl,
                    Request::get(&url).body(Full::new(Bytes::new())).unwrap(),
                )
                .await;
                assert_eq!(got.status, StatusCode::OK, "{}", got.text());
                answered.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for i in 0..10 {
        let rate = if i % 2 == 0 { "200000/s" } else { "100000/s" };
        file.write(&reload_config(&up.endpoint(), rate, ""));
        let ok = proxy.reload().await;
        assert_eq!(ok.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("a client saw a failed request");
    }
    assert!(answered.load(Ordering::SeqCst) > 0);
    proxy.stop().await;
}

/// /readyz answers 503 while shutdown drains in-flight requests.
#[tokio::test]
async fn readyz_flips_during_shutdown() {
    let up = slow_upstream(Duration::from_millis(1500)).await;
    let yaml = admin_config(&up.endpoint(), "  - { name: all, upstream: api }\n");
    let proxy = start_proxy(&yaml).await;
    let readyz = proxy.admin_url("/readyz");
    assert_eq!(get(&readyz).await.status, StatusCode::OK);
    let url = proxy.url("/");
    let in_flight = tokio::spawn(async move { get(&url).await.status });
    until(
        "the request in flight at the upstream",
        Duration::from_secs(10),
        || up.inflight.load(Ordering::SeqCst) > 0,
    )
    .await;
    proxy.shutdown.trigger();
    until(
        "/readyz to answer 503 while draining",
        Duration::from_secs(10),
        || async { get(&readyz).await.status == StatusCode::SERVICE_UNAVAILABLE },
    )
    .await;
    assert_eq!(in_flight.await.unwrap(), StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(10), proxy.task)
        .await
        .expect("sluice stopped within 10 s of the drain")
        .expect("the app task ended without a panic");
}

/// Regression (issue 12: `POST /reload` read and parsed the file and built the runtime on the
/// admin listener's only thread): a reload stuck reading its config file — a FIFO that nobody
/// writes yet — holds up neither the proxy, served here by a single thread as with
/// `workers: 1`, nor the admin listener's other endpoints; it completes once the file comes.
#[cfg(unix)]
#[tokio::test]
async fn reload_runs_off_the_admin_and_request_threads() {
    use tokio::io::AsyncWriteExt;

    let up = ok_upstream().await;
    let yaml = admin_config(&up.endpoint(), "  - { name: all, upstream: api }\n");
    let file = ConfigFile::new(&yaml);
    let proxy = start_proxy_file(&file).await;
    // The config file becomes a FIFO: reading it blocks until the test writes the YAML.
    std::fs::remove_file(&file.path).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&file.path)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo failed");
    let reload = tokio::spawn({
        let url = proxy.admin_url("/reload");
        async move { send(&client(), post(&url)).await }
    });
    // Opening the FIFO's write end without blocking succeeds only once a reader has it open:
    // then the reload is inside its read, and stays there until the YAML is written.
    let path = file.path.clone();
    let mut writer = until(
        "the reload to open the config file",
        Duration::from_secs(10),
        || {
            tokio::net::unix::pipe::OpenOptions::new()
                .open_sender(&path)
                .ok()
        },
    )
    .await;

    let proxied = tokio::time::timeout(Duration::from_secs(5), get(&proxy.url("/x"))).await;
    let health =
        tokio::time::timeout(Duration::from_secs(5), get(&proxy.admin_url("/healthz"))).await;
    // Release the reload before asserting, so that a failure does not leave it stuck.
    writer.write_all(yaml.as_bytes()).await.unwrap();
    drop(writer);
    assert_eq!(
        proxied
            .expect("the proxy answered while a reload was reading")
            .status,
        StatusCode::OK
    );
    assert_eq!(
        health
            .expect("/healthz answered while a reload was reading")
            .status,
        StatusCode::OK
    );
    let done = tokio::time::timeout(Duration::from_secs(10), reload)
        .await
        .expect("the reload finished once its file was written")
        .unwrap();
    assert_eq!(done.status, StatusCode::OK, "{}", done.text());
    proxy.stop().await;
}

/// A config with traffic of every kind of series: a rate limit (429s, a keys gauge), a capped
/// upstream (queue depth, utilisation, queue wait) and an unmatched path (`route=""`).
async fn metrics_fixture() -> (Upstream, Proxy) {
    let up = ok_upstream().await;
    let yaml = format!(
        r#"
server: {{ listen: 127.0.0.1:0 }}
admin: {{ listen: 127.0.0.1:0 }}
upstreams:
  api:
    endpoints: [{ep}]
    concurrency: {{ max_inflight: 4, queue: 2, queue_timeout: 1s }}
routes:
  - name: limited
    match: {{ path_prefix: /limited }}
    upstream: api
    rate_limits: [{{ name: per-client, key: client_ip, rate: 1/h, burst: 1 }}]
  - name: open
    match: {{ path_prefix: /open }}
    upstream: api
"#,
        ep = up.endpoint()
    );
    let proxy = start_proxy(&yaml).await;
    for path in ["/limited", "/limited", "/open", "/nowhere"] {
        get(&proxy.url(path)).await;
    }
    (up, proxy)
}

/// Runs promtool (Debian's `prometheus` package; `.ci/run` installs it) with `args`, `stdin`
/// on its standard input; returns its exit status and its output.
fn promtool(args: &[&str], stdin: &str) -> (std::process::ExitStatus, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}); install it: apt-get install -y prometheus")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status, text)
}

/// Regression (issue 13: `/metrics` spoke OpenMetrics whatever the `Accept`, and
/// `promtool check metrics` failed on it with "no help text" for every counter): by default
/// `/metrics` is Prometheus text 0.0.4, which promtool passes without a remark.
#[tokio::test]
async fn default_metrics_pass_promtool_check() {
    let (_up, proxy) = metrics_fixture().await;
    for accept in [None, Some("text/plain"), Some("*/*")] {
        let mut req = Request::get(proxy.admin_url("/metrics"));
        if let Some(accept) = accept {
            req = req.header("accept", accept);
        }
        let got = send(&client(), req.body(Full::new(Bytes::new())).unwrap()).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(
            got.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8"),
            "Accept: {accept:?}"
        );
        let text = got.text();
        assert!(
            text.contains("# TYPE sluice_requests_total counter\n"),
            "{text}"
        );
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        let (status, output) = promtool(&["check", "metrics"], &text);
        assert!(
            status.success() && output.trim().is_empty(),
            "promtool check metrics: {status}\n{output}\n---\n{text}"
        );
    }
    proxy.stop().await;
}

/// Checks the structure of an OpenMetrics 1.0 text exposition as its specification states it:
/// metadata of a family before its samples and each family in one block, sample names made of
/// the family name and the suffixes its type allows, label sets and values that parse,
/// histograms with cumulative buckets ending at `+Inf` equal to `_count`, and `# EOF` last.
fn assert_openmetrics(text: &str) {
    use std::collections::{HashMap, HashSet};
    let lines: Vec<&str> = text.split_terminator('\n').collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "must end with # EOF");
    assert!(text.ends_with("# EOF\n"), "one newline after # EOF");
    let mut types: HashMap<&str, &str> = HashMap::new();
    let mut done: HashSet<&str> = HashSet::new();
    let mut current: Option<&str> = None;
    // Histogram buckets by family and label set (without `le`): (le, count) in order.
    let mut buckets: HashMap<(String, String), Vec<(f64, f64)>> = HashMap::new();
    let mut counts: HashMap<(String, String), f64> = HashMap::new();
    for line in &lines[..lines.len() - 1] {
        assert!(!line.is_empty(), "blank line");
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap(), parts.next().expect("a family name"));
            if current != Some(name) {
                if let Some(previous) = current {
                    done.insert(previous);
                }
                assert!(!done.contains(name), "family {name} split in two blocks");
                current = Some(name);
            }
            match kind {
                "TYPE" => {
                    let t = parts.next().expect("a type");
                    assert!(
                        ["counter", "gauge", "histogram", "info", "unknown"].contains(&t),
                        "{line}"
                    );
                    assert!(types.insert(name, t).is_none(), "second TYPE: {line}");
                }
                "HELP" | "UNIT" => {}
                _ => panic!("unknown metadata line: {line}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}').expect("label set closed")),
            None => (series, ""),
        };
        let mut le = None;
        let mut others = Vec::new();
        for pair in labels.split_terminator(',') {
            let (k, v) = pair.split_once('=').expect("label=value");
            assert!(
                !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "label name in {line}"
            );
            assert!(
                v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                "{line}"
            );
            if k == "le" {
                le = Some(v.trim_matches('"').to_owned());
            } else {
                others.push(pair);
            }
        }
        let family = current.expect("a sample before any metadata");
        let t = types
            .get(family)
            .copied()
            .expect("a sample of a family without TYPE");
        let suffix = name
            .strip_prefix(family)
            .unwrap_or_else(|| panic!("sample {name} outside family {family}"));
        let allowed: &[&str] = match t {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_count", "_sum", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        assert!(allowed.contains(&suffix), "{name} in a {t} family");
        let key = (family.to_owned(), others.join(","));
        match suffix {
            "_bucket" => {
                let le = le.expect("a bucket without le");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                buckets.entry(key).or_default().push((le, value));
            }
            "_count" => {
                counts.insert(key, value);
            }
            _ => assert!(le.is_none(), "le outside a bucket: {line}"),
        }
    }
    assert!(!buckets.is_empty(), "no histogram bucket in:\n{text}");
    for (key, list) in &buckets {
        assert!(
            list.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{key:?}"
        );
        let last = list.last().unwrap();
        assert_eq!(last.0, f64::INFINITY, "{key:?} has no +Inf bucket");
        assert_eq!(
            Some(&last.1),
            counts.get(key),
            "{key:?}: +Inf bucket != _count"
        );
    }
}

/// OpenMetrics when `Accept` asks for it (as Prometheus does): its content type, a structure
/// that follows the specification, and Prometheus' own OpenMetrics parser (promtool's backfill
/// reads OpenMetrics strictly; it needs a timestamp on every sample, so one is added) accepts it.
#[tokio::test]
async fn openmetrics_when_accept_asks_for_it() {
    let (_up, proxy) = metrics_fixture().await;
    let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let req = Request::get(proxy.admin_url("/metrics"))
        .header("accept", accept)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let got = send(&client(), req).await;
    assert_eq!(
        got.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert_eq!(got.header("vary"), Some("Accept"));
    let text = got.text();
    assert!(text.contains("# TYPE sluice_requests counter\n"), "{text}");
    assert_openmetrics(&text);

    let stamped: String = text
        .lines()
        .map(|l| match l.starts_with('#') {
            true => format!("{l}\n"),
            false => format!("{l} 1700000000\n"),
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("sluice-openmetrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("metrics.om");
    std::fs::write(&input, &stamped).unwrap();
    let (status, output) = promtool(
        &[
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            input.to_str().unwrap(),
            dir.join("blocks").to_str().unwrap(),
        ],
        "",
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        status.success(),
        "promtool's OpenMetrics parser: {status}\n{output}\n---\n{text}"
    );
    proxy.stop().await;
}

/// Regression (issue 13: `sluice_config_reloads_total` had no series until the first reload,
/// so `increase()` could not see the first failure): both results are there at 0 from the
/// start, in both formats.
#[tokio::test]
async fn reload_series_exist_at_zero_from_the_start() {
    let up = ok_upstream().await;
    let proxy = start_proxy(&admin_config(
        &up.endpoint(),
        "  - { name: all, upstream: api }\n",
    ))
    .await;
    for result in ["success", "failure"] {
        let series = format!("sluice_config_reloads_total{{result=\"{result}\"}}");
        assert_eq!(proxy.metric(&series).await, 0.0);
    }
    let req = Request::get(proxy.admin_url("/metrics"))
        .header("accept", "application/openmetrics-text")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let text = send(&client(), req).await.text();
    assert_eq!(
        metric_value(&text, "sluice_config_reloads_total{result=\"failure\"}"),
        Some(0.0),
        "{text}"
    );
    proxy.stop().await;
}
