//! `scope: global` rate limits against a real redis-server (started per test on a free port):
//! one limit shared by two instances, the same headers as the local algorithm, TTLs, each
//! `on_error` policy when Redis dies, start-up while Redis is down and recovery, passwords.

use std::cell::Cell;
use std::time::Duration;

use crate::support::free_port;
use crate::support::redis_server::{store_config, RedisServer, FAULT_TIMEOUT, MARGIN, PATIENT};
use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;

/// [`store_config`] with the Redis at `url`.
fn config(url: &str, timeout: &str, on_error: &str, upstream: &str, routes: &str) -> String {
    store_config(
        &format!("url: \"{url}\""),
        timeout,
        on_error,
        upstream,
        routes,
    )
}

/// Sluice on the Redis at `url` with [`PATIENT`] calls and `on_error: deny`, `routes` to `up`.
async fn start_patient(url: &str, up: &Upstream, routes: &str) -> Proxy {
    start_proxy(&config(url, PATIENT, "deny", &up.endpoint(), routes)).await
}

/// Sluice on the Redis at `url` with [`FAULT_TIMEOUT`] calls and `on_error`, `routes` to `up`.
async fn start_faulty(url: &str, on_error: &str, up: &Upstream, routes: &str) -> Proxy {
    let timeout = format!("{}ms", FAULT_TIMEOUT.as_millis());
    start_proxy(&config(url, &timeout, on_error, &up.endpoint(), routes)).await
}

/// A header value of whole seconds within `low..=high`: values rounded up to seconds drop by one
/// for each second a slow machine spends between two requests.
fn secs_between(value: Option<&str>, low: u64, high: u64) -> bool {
    value
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|v| (low..=high).contains(&v))
}

/// A route `name` on `path_prefix` with one global limit.
fn route(name: &str, prefix: &str, limit: &str) -> String {
    format!(
        "  - name: {name}\n    match: {{path_prefix: {prefix}}}\n    upstream: api\n    rate_limits:\n      - {limit}\n"
    )
}

fn req(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::new(Bytes::new())).unwrap()
}

/// GET `url` and how long it took.
async fn timed_get(url: &str) -> (Got, Duration) {
    let started = Instant::now();
    let got = get(url).await;
    (got, started.elapsed())
}

/// Every key under `sluice:` in `redis`.
async fn sluice_keys(conn: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("sluice:*")
        .query_async(conn)
        .await
        .unwrap();
    keys.sort();
    keys
}

/// Calls of EVALSHA that Redis has executed (from `INFO commandstats`).
async fn evalsha_calls(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Pins: two sluice instances sharing one global limit admit its burst in total, not twice it,
/// one request after another and in a concurrent burst across both (the script is atomic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_global_limit() {
    let redis = RedisServer::start().await;
    let up = ok_upstream().await;
    let routes = route(
        "seq",
        "/seq",
        "{name: shared, key: global, rate: 1/m, burst: 10, scope: global}",
    ) + &route(
        "burst",
        "/burst",
        "{name: shared, key: global, rate: 1/m, burst: 10, scope: global}",
    );
    let yaml = config(&redis.url(), PATIENT, "deny", &up.endpoint(), &routes);
    let a = start_proxy(&yaml).await;
    let b = start_proxy(&yaml).await;

    let mut statuses = Vec::new();
    for i in 0..20 {
        let proxy = if i % 2 == 0 { &a } else { &b };
        statuses.push(get(&proxy.url("/seq")).await.status.as_u16());
    }
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((admitted, limited), (10, 10), "{statuses:?}");
    assert!(statuses[..10].iter().all(|s| *s == 200), "{statuses:?}");

    // 40 at once, 20 through each instance.
    let client = client();
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let url = if i % 2 == 0 {
                a.url("/burst")
            } else {
                b.url("/burst")
            };
            let client = client.clone();
            tokio::spawn(async move { send(&client, req(&url)).await.status })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        match task.await.unwrap() {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        admitted, 10,
        "the two instances together admit the burst once"
    );
    a.stop().await;
    b.stop().await;
}

/// Pins: the same config and the same request sequence give the same status, Retry-After,
/// RateLimit-Policy, RateLimit and problem JSON `retry_after` through a global limit as
/// through a local one (GCRA in Lua = governor's GCRA).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_headers_agree_with_the_local_algorithm() {
    let redis = RedisServer::start().await;
    let up = ok_upstream().await;
    let limits = |scope: &str| {
        format!(
            "      - {{name: per-client, key: client_ip, rate: 5/m, burst: 3, scope: {scope}}}\n      - {{name: total, key: global, rate: 10/m, burst: 50, scope: {scope}}}\n"
        )
    };
    let routes = format!(
        "  - name: local\n    match: {{path_prefix: /local}}\n    upstream: api\n    rate_limits:\n{}  - name: global\n    match: {{path_prefix: /global}}\n    upstream: api\n    rate_limits:\n{}",
        limits("local"),
        limits("global")
    );
    let proxy = start_patient(&redis.url(), &up, &routes).await;
    let view = |got: &Got| {
        let retry_after = (got.status == StatusCode::TOO_MANY_REQUESTS)
            .then(|| got.json()["retry_after"].clone());
        (
            got.status,
            got.header("retry-after").map(str::to_owned),
            got.header("ratelimit-policy").map(str::to_owned),
            got.header("ratelimit").map(str::to_owned),
            retry_after,
        )
    };
    let mut seen = Vec::new();
    for _ in 0..5 {
        let local = get(&proxy.url("/local")).await;
        let global = get(&proxy.url("/global")).await;
        // The two limits run on two clocks (this process's, Redis'), read a moment apart: a
        // value in seconds may round to the next second on one of them on a loaded machine.
        let (g, l) = (view(&global), view(&local));
        assert_eq!((g.0, g.2.as_deref()), (l.0, l.2.as_deref()));
        for (g, l) in [(&g.1, &l.1), (&g.3, &l.3)] {
            assert!(
                same_within_a_second(g.as_deref(), l.as_deref()),
                "{g:?} vs {l:?}"
            );
        }
        let (gj, lj) = (
            g.4.as_ref().map(|v| v.to_string()),
            l.4.as_ref().map(|v| v.to_string()),
        );
        assert!(
            same_within_a_second(gj.as_deref(), lj.as_deref()),
            "{gj:?} vs {lj:?}"
        );
        seen.push(g);
    }
    // And the values are the ones the contract's formulas give (T = 12 s and 6 s; a `t` is a
    // second less for each second the sequence has taken so far).
    assert_eq!(
        seen[0].3.as_deref(),
        Some("\"per-client\";r=2;t=12, \"total\";r=49;t=6")
    );
    let third = seen[2].3.as_deref().unwrap();
    assert!(
        third.starts_with("\"per-client\";r=0;t=1") && third.contains("\"total\";r=47;t="),
        "{third}"
    );
    assert_eq!(seen[3].0, StatusCode::TOO_MANY_REQUESTS);
    assert!(secs_between(seen[3].1.as_deref(), 10, 12), "{:?}", seen[3]);
    let denied = seen[3].3.as_deref().unwrap();
    assert_eq!(
        denied,
        format!("\"per-client\";r=0;t={}", seen[3].1.as_deref().unwrap())
    );
    proxy.stop().await;
}

/// True when `a` and `b` are the same text but for numbers that differ by at most 1 (seconds
/// read on two clocks), e.g. `"total";r=48;t=5` and `"total";r=48;t=6`.
fn same_within_a_second(a: Option<&str>, b: Option<&str>) -> bool {
    fn split(s: &str) -> (String, Vec<i64>) {
        let mut shape = String::new();
        let mut numbers = Vec::new();
        let mut digits = String::new();
        for c in s.chars().chain(std::iter::once(' ')) {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            if !digits.is_empty() {
                numbers.push(digits.parse().unwrap_or(i64::MAX));
                shape.push('#');
                digits.clear();
            }
            shape.push(c);
        }
        (shape, numbers)
    }
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            let ((sa, na), (sb, nb)) = (split(a), split(b));
            sa == sb && na.iter().zip(&nb).all(|(x, y)| (x - y).abs() <= 1)
        }
        _ => false,
    }
}

/// Pins: bucket keys are `sluice:{<route>:<limit>:<key>}`, expire (PTTL > 0) no later than the
/// bucket's refill time, and a header key holds a hash, not the header's value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expire_within_the_refill_time() {
    let redis = RedisServer::start().await;
    let up = ok_upstream().await;
    let routes = "  - name: r\n    upstream: api\n    rate_limits:\n      - {name: per-client, key: client_ip, rate: 1/s, burst: 5, scope: global}\n      - {name: per-key, key: \"header:X-Api-Key\", rate: 1/m, burst: 3, scope: global}\n";
    let proxy = start_patient(&redis.url(), &up, routes).await;
    let with_key = || {
        Request::get(proxy.url("/"))
            .header("x-api-key", "k-123-secret")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    for _ in 0..3 {
        assert_eq!(send(&client(), with_key()).await.status, StatusCode::OK);
    }
    let mut conn = redis.connection(None).await;
    let keys = sluice_keys(&mut conn).await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().all(|k| !k.contains("k-123")), "{keys:?}");
    let ip_key = "sluice:{r:per-client:ip:127.0.0.1}";
    let header_key = keys
        .iter()
        .find(|k| k.starts_with("sluice:{r:per-key:h:"))
        .unwrap_or_else(|| panic!("{keys:?}"));
    assert!(keys.contains(&ip_key.to_owned()), "{keys:?}");
    // (key, refill time = burst × T, less than the TTL after 3 quick requests (≈ 3 T): T)
    for (key, refill_ms, at_least_ms) in [
        (ip_key, 5_000, 1_000),
        (header_key.as_str(), 180_000, 60_000),
    ] {
        let pttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            pttl > at_least_ms && pttl <= refill_ms,
            "{key}: PTTL {pttl} ms"
        );
        let value: String = redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let (secs, nanos) = value.split_once('.').unwrap();
        assert!(
            secs.parse::<u64>().is_ok() && nanos.len() == 9,
            "TAT {value:?}"
        );
    }
    proxy.stop().await;
}

/// Pins: a key that Redis denied is denied from memory until its Retry-After has passed: a
/// client hammering a key over its limit costs no Redis round trip per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_key_is_not_asked_again() {
    let redis = RedisServer::start().await;
    let up = ok_upstream().await;
    let routes = route(
        "r",
        "/",
        "{key: global, rate: 1/m, burst: 1, scope: global}",
    );
    let proxy = start_patient(&redis.url(), &up, &routes).await;
    let mut conn = redis.connection(None).await;
    assert_eq!(get(&proxy.url("/")).await.status, StatusCode::OK);
    let denied = get(&proxy.url("/")).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    let calls = evalsha_calls(&mut conn).await;
    assert!(calls >= 2, "{calls}");
    for _ in 0..20 {
        let again = get(&proxy.url("/")).await;
        assert_eq!(again.status, StatusCode::TOO_MANY_REQUESTS);
        // A limit keyed `global`: its Retry-After is spread (0.5 by default), its RateLimit
        // `t` is not.
        assert!(
            secs_between(again.header("retry-after"), 55, 90),
            "{again:?}"
        );
    }
    assert_eq!(evalsha_calls(&mut conn).await, calls);
    proxy.stop().await;
}

/// Pins: when Redis is killed, `on_error: local` falls back to the instance's own bucket (a
/// full burst, then 429), `allow` admits (no RateLimit item), `deny` answers 503
/// `store-unavailable`; no request takes longer than the timeout plus a margin, and
/// `sluice_store_errors_total` counts the failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_policies_when_redis_dies() {
    let mut redis = RedisServer::start().await;
    let up = ok_upstream().await;
    let mut proxies = Vec::new();
    for policy in ["local", "allow", "deny"] {
        // One route per policy: separate buckets.
        let routes = route(
            policy,
            "/",
            "{name: g, key: global, rate: 1/m, burst: 3, scope: global}",
        );
        let proxy = start_faulty(&redis.url(), policy, &up, &routes).await;
        // Redis is up: one token of three taken from the shared bucket.
        let got = get(&proxy.url("/")).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.header("ratelimit"), Some("\"g\";r=2;t=60"));
        proxies.push((policy, proxy));
    }

    redis.kill();

    for (policy, proxy) in &proxies {
        let mut statuses = Vec::new();
        for _ in 0..5 {
            let (got, took) = timed_get(&proxy.url("/")).await;
            assert!(
                took < FAULT_TIMEOUT + MARGIN,
                "{policy}: a request took {took:?} with Redis down"
            );
            match *policy {
                "local" => {
                    if got.status == StatusCode::TOO_MANY_REQUESTS {
                        assert!(got.header("retry-after").is_some());
                    }
                }
                "allow" => {
                    assert_eq!(got.header("ratelimit"), None, "unknown state: no item");
                    assert_eq!(got.header("ratelimit-policy"), Some("\"g\";q=3;w=180"));
                }
                _ => {
                    if got.status == StatusCode::SERVICE_UNAVAILABLE {
                        let json = got.json();
                        assert_eq!(json["reason"], "store-unavailable", "{json}");
                        assert_eq!(json["type"], "about:blank", "{json}");
                        assert_eq!(json["status"], 503, "{json}");
                    }
                }
            }
            statuses.push(got.status.as_u16());
        }
        let expected: &[u16] = match *policy {
            // The instance's own bucket is full: three admitted (the shared one had two left).
            "local" => &[200, 200, 200, 429, 429],
            "allow" => &[200; 5],
            _ => &[503; 5],
        };
        assert_eq!(statuses, expected, "{policy}");
        assert!(
            proxy.metric("sluice_store_errors_total").await >= 1.0,
            "{policy}: failures are counted"
        );
    }
    let deny = &proxies[2].1;
    assert_eq!(
        deny.metric("sluice_requests_total{route=\"deny\",outcome=\"store_unavailable\"}")
            .await,
        5.0
    );
    for (_, proxy) in proxies {
        proxy.stop().await;
    }
}

/// Pins: sluice starts while Redis is down (requests pass under `on_error: allow`, quickly,
/// and the failed connection attempts are counted), and global limiting takes over once
/// redis-server starts on that port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_redis_is_down_and_resumes_when_it_is_up() {
    let port = free_port();
    let mut redis = RedisServer::stopped_on(port, &[]);
    let up = ok_upstream().await;
    let routes = route(
        "r",
        "/",
        "{key: global, rate: 1/m, burst: 2, scope: global}",
    );
    let proxy = start_faulty(&redis.url(), "allow", &up, &routes).await;
    for _ in 0..5 {
        let (got, took) = timed_get(&proxy.url("/")).await;
        assert_eq!(got.status, StatusCode::OK);
        assert!(took < FAULT_TIMEOUT + MARGIN, "took {took:?}");
    }
    assert!(proxy.metric("sluice_store_errors_total").await >= 1.0);

    redis.restart().await;
    // A fresh bucket of 2, then 429. (1 if an answer came after the timeout: the script ran.)
    let admitted = resumed(&proxy, None).await;
    assert!((1..=2).contains(&admitted), "{admitted}");
    proxy.stop().await;
}

/// Pins: Redis killed and started again (empty) on the same port: requests pass meanwhile
/// (`on_error: allow`), the connection is re-established in the background and global limiting
/// resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_redis_restarts() {
    let mut redis = RedisServer::start().await;
    let up = ok_upstream().await;
    let routes = route(
        "r",
        "/",
        "{key: \"header:X-Client\", rate: 1/m, burst: 2, scope: global}",
    );
    let proxy = start_faulty(&redis.url(), "allow", &up, &routes).await;
    // Client a empties its bucket through Redis. (Its 429 is then remembered until its
    // Retry-After, Redis or not, so client b is the one that shows the recovery.)
    for expected in [200, 200, 429] {
        let got = send(&client(), as_client(&proxy, "a")).await;
        assert_eq!(got.status.as_u16(), expected);
    }

    redis.kill();
    for _ in 0..5 {
        let started = Instant::now();
        let got = send(&client(), as_client(&proxy, "b")).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.header("ratelimit"), None, "Redis is down: no item");
        assert!(started.elapsed() < FAULT_TIMEOUT + MARGIN);
    }
    assert!(proxy.metric("sluice_store_errors_total").await >= 1.0);

    redis.restart().await;
    // b's fresh bucket of 2, then 429 (1 if an answer came after the timeout).
    let admitted = resumed(&proxy, Some("b")).await;
    assert!((1..=2).contains(&admitted), "{admitted}");
    proxy.stop().await;
}

fn as_client(proxy: &Proxy, name: &str) -> Request<Full<Bytes>> {
    Request::get(proxy.url("/"))
        .header("x-client", name)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Sends requests (as `client`, if given; bounded: 30 s) until one gets 429; returns how many
/// Redis admitted before it (the 200s that carry a `RateLimit` item).
async fn resumed(proxy: &Proxy, client_name: Option<&str>) -> usize {
    let admitted_by_redis = Cell::new(0);
    until(
        "global limiting to resume (a 429)",
        Duration::from_secs(30),
        || async {
            let request = match client_name {
                Some(name) => as_client(proxy, name),
                None => req(&proxy.url("/")),
            };
            let started = Instant::now();
            let got = send(&client(), request).await;
            let took = started.elapsed();
            assert!(took < FAULT_TIMEOUT + MARGIN, "took {took:?}");
            match got.status {
                StatusCode::TOO_MANY_REQUESTS => true,
                StatusCode::OK => {
                    if got.header("ratelimit").is_some() {
                        admitted_by_redis.set(admitted_by_redis.get() + 1);
                    }
                    false
                }
                other => panic!("unexpected {other}"),
            }
        },
    )
    .await;
    admitted_by_redis.get()
}

/// Pins: a password in the URL authenticates (the limit is enforced by Redis), and `GET
/// /config` shows it redacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_urls_work_and_are_redacted() {
    let redis = RedisServer::start_with(&["--requirepass", "s3cret-pw"]).await;
    let up = ok_upstream().await;
    let url = format!("redis://:s3cret-pw@127.0.0.1:{}", redis.port);
    let routes = route(
        "r",
        "/",
        "{key: global, rate: 1/m, burst: 1, scope: global}",
    );
    let proxy = start_patient(&url, &up, &routes).await;
    assert_eq!(get(&proxy.url("/")).await.status, StatusCode::OK);
    assert_eq!(
        get(&proxy.url("/")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let mut conn = redis.connection(Some("s3cret-pw")).await;
    assert_eq!(sluice_keys(&mut conn).await, ["sluice:{r:limit-0:global}"]);
    let config = get(&proxy.admin_url("/config")).await.text();
    assert!(!config.contains("s3cret-pw"), "{config}");
    assert!(config.contains(":***@127.0.0.1"), "{config}");
    proxy.stop().await;
}

/// Pins: shadow mode on a global limit counts and logs what it would reject and forwards it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_forwards_what_a_global_limit_would_reject() {
    let redis = RedisServer::start().await;
    let up = ok_upstream().await;
    let routes = "  - name: r\n    upstream: api\n    mode: shadow\n    rate_limits:\n      - {name: g, key: global, rate: 1/m, burst: 1, scope: global}\n";
    let proxy = start_patient(&redis.url(), &up, routes).await;
    assert_eq!(get(&proxy.url("/")).await.status, StatusCode::OK);
    let second = get(&proxy.url("/")).await;
    assert_eq!(second.status, StatusCode::OK);
    let item = second.header("ratelimit").unwrap();
    assert!(item.starts_with("\"g\";r=0;t="), "{item}");
    assert_eq!(up.requests(), 2);
    assert_eq!(
        proxy
            .metric("sluice_requests_total{route=\"r\",outcome=\"rate_limited\",shadow=\"true\"}")
            .await,
        1.0
    );
    proxy.stop().await;
}

/// Pins: a reload keeps the Redis connection while `store.redis.url` is unchanged, and a reload
/// (through the admin thread) that changes it connects to the new server, which then holds the
/// buckets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_or_replaces_the_connection() {
    let first = RedisServer::start().await;
    let second = RedisServer::start().await;
    let up = ok_upstream().await;
    let routes = route(
        "r",
        "/",
        "{key: global, rate: 1/m, burst: 5, scope: global}",
    );
    let yaml = |url: &str| config(url, PATIENT, "deny", &up.endpoint(), &routes);
    let file = ConfigFile::new(&yaml(&first.url()));
    let proxy = start_proxy_file(&file).await;
    assert_eq!(get(&proxy.url("/")).await.status, StatusCode::OK);
    let store = |proxy: &Proxy| proxy.shared.runtime().store().cloned().expect("a store");
    let before = store(&proxy);

    // Same URL, another limit: same connection.
    file.write(&yaml(&first.url()).replace("burst: 5", "burst: 6"));
    let reloaded = proxy.reload().await;
    assert_eq!(reloaded.status, StatusCode::OK, "{}", reloaded.text());
    assert!(std::sync::Arc::ptr_eq(&before, &store(&proxy)));

    // Another URL: a new connection, to the other server.
    file.write(&yaml(&second.url()));
    let reloaded = proxy.reload().await;
    assert_eq!(reloaded.status, StatusCode::OK, "{}", reloaded.text());
    assert!(!std::sync::Arc::ptr_eq(&before, &store(&proxy)));
    drop(before);
    let got = get(&proxy.url("/")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        got.header("ratelimit"),
        Some("\"limit-0\";r=4;t=60"),
        "a fresh bucket"
    );
    let mut conn = second.connection(None).await;
    assert_eq!(sluice_keys(&mut conn).await, ["sluice:{r:limit-0:global}"]);
    proxy.stop().await;
}

/// Pins: `cost` on a global limit, shared by two instances: cost 5 against burst 10 admits two
/// requests in all (`r=5`, then `r=0`), and the third, through either instance, is 429 with a
/// `Retry-After` of five tokens (the Lua script needs the whole cost, as `check_key_n` does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cost_is_taken_from_the_shared_bucket() {
    a_cost_against_burst_ten("").await;
}

/// Pins: the same with `lease: 10`: the first instance leases the whole bucket and spends it
/// five tokens a request; the other finds Redis' bucket empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cost_is_taken_from_a_lease() {
    a_cost_against_burst_ten(", lease: 10").await;
}

async fn a_cost_against_burst_ten(lease: &str) {
    let redis = RedisServer::start().await;
    let up = ok_upstream().await;
    let routes = route(
        "heavy",
        "/",
        &format!(
            "{{name: heavy, key: global, rate: 1/m, burst: 10, cost: 5, scope: global{lease}}}"
        ),
    );
    let yaml = config(&redis.url(), PATIENT, "deny", &up.endpoint(), &routes);
    let a = start_proxy(&yaml).await;
    let b = start_proxy(&yaml).await;
    let first = get(&a.url("/x")).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("ratelimit"), Some("\"heavy\";r=5;t=60"));
    // Through `a` again with a lease (`b` holds none), through `b` without.
    let second_via = if lease.is_empty() { &b } else { &a };
    let second = get(&second_via.url("/x")).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.header("ratelimit"), Some("\"heavy\";r=0;t=60"));
    for proxy in [&a, &b] {
        let third = get(&proxy.url("/x")).await;
        third.assert_problem(StatusCode::TOO_MANY_REQUESTS, "rate-limited");
        assert!(
            secs_between(third.header("retry-after"), 290, 450),
            "five tokens of 60 s (spread up to 1.5 ×, key: global): {:?}",
            third.header("retry-after")
        );
    }
    assert_eq!(up.requests(), 2);
    a.stop().await;
    b.stop().await;
}

/// Pins: `charge_header` on a global limit: an upstream reporting `X-Cost: 50` against burst 10
/// puts the shared bucket of the key 40 tokens into debt (a second script call, made after the
/// response without delaying it), so both instances deny the key with a `Retry-After` of 41
/// tokens, another key is unaffected, a huge report is capped at 10 × burst, and the client
/// never sees the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_header_puts_the_shared_bucket_into_debt() {
    let redis = RedisServer::start().await;
    let up = upstream(|req: hyper::Request<hyper::body::Incoming>| async move {
        let mut res = hyper::Response::new(TestBody::text("ok"));
        if let Some(cost) = req.headers().get("x-report") {
            res.headers_mut().insert("x-cost", cost.clone());
        }
        res
    })
    .await;
    let routes = route(
        "tokens",
        "/",
        "{name: tokens, key: header:X-Api-Key, rate: 1/m, burst: 10, scope: global, charge_header: X-Cost}",
    );
    let yaml = config(&redis.url(), PATIENT, "deny", &up.endpoint(), &routes);
    let a = start_proxy(&yaml).await;
    let b = start_proxy(&yaml).await;
    let as_key = |proxy: &Proxy, key: &str, report: Option<&str>| {
        let mut req = Request::get(proxy.url("/x")).header("x-api-key", key);
        if let Some(report) = report {
            req = req.header("x-report", report);
        }
        req.body(Full::new(Bytes::new())).unwrap()
    };
    let heavy = send(&client(), as_key(&a, "k1", Some("50"))).await;
    assert_eq!(heavy.status, StatusCode::OK);
    assert_eq!(heavy.header("x-cost"), None, "the header is removed");
    // The charge reaches Redis after the response: wait for it (at most a second).
    let deadline = Instant::now() + Duration::from_secs(1);
    let denied = loop {
        let got = send(&client(), as_key(&b, "k1", None)).await;
        if got.status == StatusCode::TOO_MANY_REQUESTS || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    denied.assert_problem(StatusCode::TOO_MANY_REQUESTS, "rate-limited");
    // 41 tokens of 60 s, or 42 if a request of the loop passed before the charge landed.
    assert!(
        secs_between(denied.header("retry-after"), 2400, 2520),
        "41 or 42 tokens of 60 s: {:?}",
        denied.header("retry-after")
    );
    let again = send(&client(), as_key(&a, "k1", None)).await;
    assert_eq!(again.status, StatusCode::TOO_MANY_REQUESTS);
    let other = send(&client(), as_key(&a, "k2", None)).await;
    assert_eq!(other.status, StatusCode::OK, "another key is unaffected");
    assert_eq!(other.header("ratelimit"), Some("\"tokens\";r=9;t=60"));
    // However much is reported, the debt is at most 10 × burst: 100 tokens owed + 1.
    let huge = send(&client(), as_key(&a, "k3", Some("18446744073709551615"))).await;
    assert_eq!((huge.status, huge.header("x-cost")), (StatusCode::OK, None));
    let deadline = Instant::now() + Duration::from_secs(1);
    let capped = loop {
        let got = send(&client(), as_key(&b, "k3", None)).await;
        if got.status == StatusCode::TOO_MANY_REQUESTS || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        secs_between(capped.header("retry-after"), 6000, 6060),
        "101 tokens of 60 s: {:?}",
        capped.header("retry-after")
    );
    a.stop().await;
    b.stop().await;
}
