use std::net::SocketAddr;
use std::sync::Arc;

use super::*;
use crate::config::UpstreamConfig;

fn config(balance: Balance, endpoints: &[&str]) -> UpstreamConfig {
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
