//! `server.retry_after_spread`: rejected clients told to come back over a spread of seconds, not
//! all in the same one. 200 requests rejected at once by a cap; a `global`-keyed limit's 429s
//! (spread, their `RateLimit` `t` exact) beside a `client_ip` one's (never spread).

use std::collections::BTreeMap;
use std::time::Duration;

use http::StatusCode;

use crate::support::{get, slow_upstream, start_proxy, until, Got};

/// The `Retry-After` of `got`, which must be the body's `retry_after` too.
fn told(got: &Got) -> u64 {
    let secs: u64 = got
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a Retry-After: {got:?}"));
    assert_eq!(got.json()["retry_after"], secs, "body and header agree");
    secs
}

/// Sends `n` GETs to `url` at once; how many were told each `Retry-After`, and the statuses.
async fn rejected_at_once(url: &str, n: usize) -> (BTreeMap<u64, usize>, Vec<u16>) {
    let all: Vec<_> = (0..n)
        .map(|_| {
            let url = url.to_owned();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    let (mut told_counts, mut statuses) = (BTreeMap::new(), Vec::new());
    for one in all {
        let got = one.await.expect("request task");
        statuses.push(got.status.as_u16());
        if got.status == StatusCode::SERVICE_UNAVAILABLE {
            *told_counts.entry(told(&got)).or_default() += 1;
        }
    }
    (told_counts, statuses)
}

/// A cap of one with no queue in front of an upstream that takes 5 s, `spread` given.
async fn full_cap(spread: &str) -> (crate::support::Proxy, crate::support::Upstream) {
    let up = slow_upstream(Duration::from_secs(5)).await;
    let proxy = start_proxy(&format!(
        "server: {{ listen: 127.0.0.1:0 {spread} }}\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         upstreams: {{ api: {{ endpoints: ['{}'] }} }}\n\
         routes: [{{ name: all, upstream: api, \
         concurrency: {{ max_inflight: 1, queue: 0, queue_timeout: 4s }} }}]\n",
        up.endpoint()
    ))
    .await;
    let url = proxy.url("/");
    // The one slot taken for 5 s.
    tokio::spawn(async move { get(&url).await });
    until("the slot taken", Duration::from_secs(10), || {
        up.requests() == 1
    })
    .await;
    (proxy, up)
}

/// Pins: 200 requests rejected by a full cap at the same moment are told 4, 5 or 6 s (the exact
/// 4 s — the queue timeout, nothing having drained — spread by the default 0.5), each about a
/// third of the time; with `retry_after_spread: 0` all are told 4.
#[tokio::test]
async fn two_hundred_rejections_at_once_are_spread_over_t_to_one_and_a_half_t() {
    let (proxy, _up) = full_cap("").await;
    let (counts, statuses) = rejected_at_once(&proxy.url("/"), 200).await;
    assert!(statuses.iter().all(|&s| s == 503), "{statuses:?}");
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        vec![4, 5, 6],
        "{counts:?}"
    );
    assert!(
        counts.values().all(|&n| (50..=84).contains(&n)),
        "{counts:?}"
    );
    proxy.stop().await;

    let (proxy, _up) = full_cap(", retry_after_spread: 0").await;
    let (counts, _) = rejected_at_once(&proxy.url("/"), 50).await;
    assert_eq!(counts, BTreeMap::from([(4, 50)]), "off: the exact wait");
    proxy.stop().await;
}

/// The `t` of a 429's `RateLimit` field.
fn field_t(got: &Got) -> u64 {
    let field = got.header("ratelimit").expect("a RateLimit field");
    field
        .rsplit_once(";t=")
        .and_then(|(_, t)| t.parse().ok())
        .unwrap_or_else(|| panic!("t in {field:?}"))
}

/// Pins: the 429s of a limit keyed `global` are spread (never below the exact wait, which their
/// `RateLimit` `t` still says); those of a `client_ip` limit are not.
#[tokio::test]
async fn global_keyed_429s_are_spread_and_their_ratelimit_t_is_not() {
    let up = crate::support::ok_upstream().await;
    let proxy = start_proxy(&format!(
        "server: {{ listen: 127.0.0.1:0 }}\n\
         upstreams: {{ api: {{ endpoints: ['{}'] }} }}\n\
         routes:\n\
         - {{ name: shared, match: {{ path_prefix: /shared }}, upstream: api, \
              rate_limits: [{{ name: all, key: global, rate: 6/m, burst: 1 }}] }}\n\
         - {{ name: mine, match: {{ path_prefix: /mine }}, upstream: api, \
              rate_limits: [{{ name: each, key: client_ip, rate: 6/m, burst: 1 }}] }}\n",
        up.endpoint()
    ))
    .await;
    for (path, spread) in [("/shared", true), ("/mine", false)] {
        assert_eq!(get(&proxy.url(path)).await.status, StatusCode::OK);
        let mut told_values = Vec::new();
        for _ in 0..30 {
            let got = get(&proxy.url(path)).await;
            assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS, "{path}");
            let (secs, t) = (told(&got), field_t(&got));
            assert!((1..=10).contains(&t), "{path}: t={t}");
            assert!(
                secs >= t && secs <= (t * 3).div_ceil(2),
                "{path}: {secs} for t={t}"
            );
            if !spread {
                assert_eq!(secs, t, "{path}: not spread");
            }
            told_values.push(secs);
        }
        if spread {
            told_values.sort_unstable();
            told_values.dedup();
            assert!(told_values.len() >= 3, "spread: {told_values:?}");
        }
    }
    proxy.stop().await;
}
