use std::net::SocketAddr;
use std::sync::Arc;

use super::*;
use crate::config::UpstreamConfig;

/// An upstream config of `endpoints` with the defaults of the fleet's fields.
pub(super) fn config(balance: Balance, endpoints: &[&str]) -> UpstreamConfig {
    UpstreamConfig {
        name: "test".into(),
        endpoints: endpoints
            .iter()
            .map(|e| e.parse().expect("authority"))
            .collect(),
        connect_timeout: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        concurrency: None,
        resolve_interval: UpstreamConfig::DEFAULT_RESOLVE_INTERVAL,
        balance,
        health_check: None,
        outlier: Default::default(),
        retry: Default::default(),
        protocol: Default::default(),
        https: false,
        tls: None,
    }
}

/// A fleet of `endpoints` with the default keep-alive and no fleet before it.
fn fleet(balance: Balance, endpoints: &[&str]) -> Fleet {
    Fleet::new(&config(balance, endpoints), KeepAlive::default(), None)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// An address kept across a resolution keeps its endpoint (pool, state); a failed lookup keeps
/// the name's addresses; an address gone is dropped while a request holding it still has it.
#[tokio::test]
async fn resolutions_keep_endpoints_and_failed_lookups_keep_addresses() {
    let fleet = fleet(Balance::LeastRequest, &["10.0.0.1:80", "10.0.0.9:80"]);
    let before = fleet.endpoints();
    assert_eq!(before.len(), 2);
    let answers = || {
        vec![
            Ok(vec![addr("10.0.0.1:80"), addr("10.0.0.2:80")]),
            Err(io::Error::other("lookup failed")),
        ]
    };
    assert!(fleet.apply(answers()));
    let after = fleet.endpoints();
    let addrs: Vec<_> = after.iter().map(|e| e.addr).collect();
    assert_eq!(
        addrs,
        [
            addr("10.0.0.1:80"),
            addr("10.0.0.2:80"),
            addr("10.0.0.9:80")
        ]
    );
    assert!(
        Arc::ptr_eq(&before[0], &after[0]),
        "kept address, same endpoint"
    );
    assert!(Arc::ptr_eq(&before[1], &after[2]), "failed lookup keeps it");
    assert!(!fleet.apply(answers()), "same answers: no change");
    assert!(fleet.apply(vec![Ok(vec![addr("10.0.0.2:80")]), Ok(vec![])]));
    assert_eq!(fleet.endpoints().len(), 1);
    assert_eq!(
        before[0].addr,
        addr("10.0.0.1:80"),
        "still held by its holder"
    );
}

/// At most MAX_ENDPOINTS endpoints, however many addresses a name has.
#[tokio::test]
async fn endpoints_are_bounded() {
    let fleet = fleet(Balance::RoundRobin, &["10.0.0.1:80"]);
    let many = (0..2000u32)
        .map(|i| SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 80)))
        .collect();
    fleet.apply(vec![Ok(many)]);
    assert_eq!(fleet.endpoints().len(), UpstreamConfig::MAX_ENDPOINTS);
}

/// Least request: the two choices are distinct (so the busier of two endpoints is never
/// chosen), and an endpoint that is down is chosen only when every one is.
#[tokio::test(start_paused = true)]
async fn least_request_prefers_the_idle_and_skips_the_down() {
    let fleet = fleet(Balance::LeastRequest, &["10.0.0.1:80", "10.0.0.2:80"]);
    let eps = fleet.endpoints();
    // Load on endpoint 0, through a stand-in for checked-out connections.
    let _busy = eps[0].pool.test_load(3);
    for _ in 0..100 {
        assert_eq!(fleet.pick(&eps), Some(1));
    }
    fleet.mark_down(&eps[1], Duration::from_secs(10));
    for _ in 0..100 {
        assert_eq!(fleet.pick(&eps), Some(0), "the down one is skipped");
    }
    fleet.mark_down(&eps[0], Duration::from_secs(10));
    assert!(fleet.pick(&eps).is_some(), "all down: any");
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(fleet.pick(&eps), Some(1), "back up: the idle one again");
    assert_eq!(fleet.pick(&[]), None);
}

/// Round robin takes each endpoint in turn; least request spreads evenly when loads are equal.
#[tokio::test]
async fn round_robin_and_even_spread() {
    let rr = Fleet::new(
        &config(
            Balance::RoundRobin,
            &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"],
        ),
        KeepAlive::default(),
        None,
    );
    let eps = rr.endpoints();
    let picks: Vec<_> = (0..6).filter_map(|_| rr.pick(&eps)).collect();
    assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    let lr = Fleet::new(
        &config(
            Balance::LeastRequest,
            &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"],
        ),
        KeepAlive::default(),
        None,
    );
    let mut counts = [0usize; 3];
    for _ in 0..3000 {
        counts[lr.pick(&eps).expect("one")] += 1;
    }
    assert!(counts.iter().all(|&c| c > 600), "{counts:?}");
}

/// Pins: an endpoint in pushback is skipped; when every one is, `pushback_wait` is the
/// shortest wait left (at most 60 s), and it ends with the waits; a new address ends it.
#[tokio::test(start_paused = true)]
async fn pushback_skips_an_endpoint_and_all_waiting_is_known_at_once() {
    let fleet = fleet(Balance::RoundRobin, &["10.0.0.1:80", "10.0.0.2:80"]);
    let eps = fleet.endpoints();
    fleet.push_back(&eps[0], Duration::from_secs(5));
    assert_eq!(
        fleet.pushback_wait(),
        None,
        "one endpoint still takes requests"
    );
    for _ in 0..4 {
        assert_eq!(fleet.pick(&eps), Some(1));
    }
    fleet.push_back(&eps[1], Duration::from_secs(3600));
    assert_eq!(fleet.pushback_wait(), Some(Duration::from_secs(5)));
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(fleet.pushback_wait(), Some(Duration::from_secs(3)));
    tokio::time::advance(Duration::from_secs(3)).await;
    assert_eq!(fleet.pushback_wait(), None, "the first wait is over");
    assert_eq!(fleet.pick(&eps), Some(0));
    fleet.push_back(&eps[0], Duration::from_secs(5));
    assert_eq!(
        fleet.pushback_wait(),
        Some(Duration::from_secs(5)),
        "the other's wait was cut to 60 s, still 55 s to go"
    );
    fleet.apply(vec![
        Ok(vec![addr("10.0.0.1:80"), addr("10.0.0.3:80")]),
        Ok(vec![addr("10.0.0.2:80")]),
    ]);
    assert_eq!(fleet.pushback_wait(), None, "a new endpoint takes requests");
}

/// `Retry-After` as delta-seconds or an HTTP date; anything else is no wait.
#[test]
fn retry_after_forms() {
    let headers = |v: &str| {
        let mut h = http::HeaderMap::new();
        h.insert("retry-after", v.parse().expect("header value"));
        h
    };
    assert_eq!(retry_after(&headers("7")), Some(Duration::from_secs(7)));
    assert_eq!(
        retry_after(&headers("Sun, 06 Nov 1994 08:49:37 GMT")),
        Some(Duration::ZERO)
    );
    let later = std::time::SystemTime::now() + Duration::from_secs(120);
    let wait = retry_after(&headers(&httpdate::fmt_http_date(later))).expect("a date");
    assert!(
        wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
        "{wait:?}"
    );
    assert_eq!(retry_after(&headers("soon")), None);
    assert_eq!(retry_after(&http::HeaderMap::new()), None);
}
