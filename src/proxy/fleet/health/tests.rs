use std::time::Duration;

use super::*;
use crate::config::Balance;
use crate::proxy::fleet::tests::config;
use crate::proxy::pool::KeepAlive;

/// A fleet of three literal endpoints ejecting after 3 failures for 10 s.
fn fleet() -> Fleet {
    let mut config = config(
        Balance::RoundRobin,
        &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"],
    );
    config.outlier = OutlierConfig {
        consecutive_failures: 3,
        ejection: Duration::from_secs(10),
    };
    Fleet::new(&config, KeepAlive::default(), None)
}

fn check_config() -> HealthCheckConfig {
    HealthCheckConfig {
        path: "/healthz".into(),
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        unhealthy_after: 2,
        healthy_after: 2,
    }
}

/// Pins: failures in a row eject (an answer in between starts the count again); the ejection
/// doubles when it repeats soon after, up to 5 m, and starts over after a quiet spell.
#[tokio::test(start_paused = true)]
async fn consecutive_failures_eject_with_doubling() {
    let fleet = fleet();
    let eps = fleet.endpoints();
    let e = &eps[0];
    fleet.failed(e);
    fleet.failed(e);
    fleet.succeeded(e);
    fleet.failed(e);
    fleet.failed(e);
    assert!(!fleet.is_ejected(e), "an answer reset the count");
    fleet.failed(e);
    assert!(fleet.is_ejected(e));
    assert!(fleet.is_down(e), "not picked while ejected");
    let mut lengths = Vec::new();
    for _ in 0..7 {
        let mut secs = 0;
        while fleet.is_ejected(e) {
            tokio::time::advance(Duration::from_secs(1)).await;
            secs += 1;
        }
        lengths.push(secs);
        for _ in 0..3 {
            fleet.failed(e);
        }
    }
    assert_eq!(lengths, [10, 20, 40, 80, 160, 300, 300]);
    while fleet.is_ejected(e) {
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    tokio::time::advance(Duration::from_secs(301)).await;
    for _ in 0..3 {
        fleet.failed(e);
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(!fleet.is_ejected(e), "back to 10 s after a quiet spell");
}

/// Pins: the last endpoint that is neither ejected nor unhealthy is never ejected; with no
/// usable endpoint, picking still finds one (all are used).
#[tokio::test(start_paused = true)]
async fn never_the_last_endpoint() {
    let fleet = fleet();
    let eps = fleet.endpoints();
    for e in eps.iter() {
        for _ in 0..10 {
            fleet.failed(e);
        }
    }
    let ejected = eps.iter().filter(|e| fleet.is_ejected(e)).count();
    assert_eq!(ejected, 2);
    let kept = eps
        .iter()
        .position(|e| !fleet.is_ejected(e))
        .expect("one kept");
    for _ in 0..10 {
        assert_eq!(fleet.pick(&eps), Some(kept));
    }
    fleet.checked(&eps[kept], false, &check_config());
    fleet.checked(&eps[kept], false, &check_config());
    assert!(fleet.is_unhealthy(&eps[kept]));
    assert!(fleet.pick(&eps).is_some(), "none healthy: all are used");
}

/// Pins: `unhealthy_after` failed checks in a row make an endpoint unhealthy, and
/// `healthy_after` passed ones healthy again; a success in between starts the count over.
#[tokio::test]
async fn active_checks_switch_after_their_streaks() {
    let fleet = fleet();
    let eps = fleet.endpoints();
    let e = &eps[1];
    let config = check_config();
    fleet.checked(e, false, &config);
    fleet.checked(e, true, &config);
    fleet.checked(e, false, &config);
    assert!(!fleet.is_unhealthy(e));
    fleet.checked(e, false, &config);
    assert!(fleet.is_unhealthy(e));
    assert!(fleet.is_down(e));
    fleet.checked(e, true, &config);
    assert!(fleet.is_unhealthy(e));
    fleet.checked(e, true, &config);
    assert!(!fleet.is_unhealthy(e));
}
