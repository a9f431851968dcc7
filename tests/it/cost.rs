//! `cost` and `charge_header` on rate limits through a real listener: a request taking several
//! tokens, an upstream-reported cost putting a key into debt (and only that key), the debt's
//! cap, the header never reaching the client, and the config errors.

use std::path::Path;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use sluice::config::ConfigError;

use crate::support::*;

/// A config with one route `r` to `endpoint` and the rate limit `limit` (a flow mapping).
fn config(endpoint: &str, limit: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\nupstreams:\n  api:\n    endpoints: [{endpoint}]\nroutes:\n  - name: r\n    upstream: api\n    rate_limits: [{limit}]\n"
    )
}

/// An upstream that reports as `X-Cost` each line of the request's `X-Report` (none without
/// it), answering 200 "ok".
async fn reporting_upstream() -> Upstream {
    upstream(|req: Request<Incoming>| async move {
        let mut res = Response::new(TestBody::text("ok"));
        for line in req.headers().get_all("x-report") {
            res.headers_mut().append("x-cost", line.clone());
        }
        res
    })
    .await
}

/// GET `/` with `X-Api-Key: key` and an `X-Report` line for each of `report`.
async fn get_as(proxy: &Proxy, key: &str, report: &[&str]) -> Got {
    let mut req = Request::get(proxy.url("/")).header("x-api-key", key);
    for line in report {
        req = req.header("x-report", *line);
    }
    send(&client(), req.body(Full::new(Bytes::new())).unwrap()).await
}

/// `RateLimit`'s `r` and `t` (one item).
fn r_and_t(got: &Got) -> (u64, u64) {
    let field = got
        .header("ratelimit")
        .unwrap_or_else(|| panic!("no RateLimit: {:?}", got.headers));
    let param = |k: &str| -> u64 {
        let at = field.find(&format!(";{k}=")).expect("parameter") + k.len() + 2;
        let digits: String = field[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().expect("a number")
    };
    (param("r"), param("t"))
}

fn retry_after(got: &Got) -> u64 {
    got.header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After: {:?}", got.headers))
        .parse()
        .expect("delay-seconds")
}

/// The issue's case: cost 5 against burst 10. Two requests pass (`r=5`, then `r=0`), the third
/// is 429, its `Retry-After` (and `t`) the time until five tokens are back, not one.
#[tokio::test]
async fn cost_five_against_burst_ten() {
    let up = ok_upstream().await;
    let proxy = start_proxy(&config(
        &up.endpoint(),
        "{ name: heavy, key: client_ip, rate: 1/m, burst: 10, cost: 5 }",
    ))
    .await;
    let first = get_as(&proxy, "a", &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        first.header("ratelimit-policy"),
        Some("\"heavy\";q=10;w=600")
    );
    assert_eq!(r_and_t(&first), (5, 60));
    let second = get_as(&proxy, "a", &[]).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(r_and_t(&second), (0, 60));
    let third = get_as(&proxy, "a", &[]).await;
    third.assert_problem(StatusCode::TOO_MANY_REQUESTS, "rate-limited");
    let secs = retry_after(&third);
    assert!(
        (290..=300).contains(&secs),
        "Retry-After {secs}: five tokens of 60 s"
    );
    assert_eq!(r_and_t(&third), (0, secs));
    assert_eq!(up.requests(), 2);
    proxy.stop().await;
}

/// An upstream reporting `X-Cost: 50` against burst 10 puts the key 40 tokens into debt: its
/// next requests are 429 with a `Retry-After` of the debt plus one token (41 minutes at 1/m),
/// while another key is unaffected; the client never sees `X-Cost`.
#[tokio::test]
async fn charge_header_puts_the_key_into_debt() {
    let up = reporting_upstream().await;
    let proxy = start_proxy(&config(
        &up.endpoint(),
        "{ name: tokens, key: header:X-Api-Key, rate: 1/m, burst: 10, charge_header: X-Cost }",
    ))
    .await;
    let heavy = get_as(&proxy, "a", &["50"]).await;
    assert_eq!(heavy.status, StatusCode::OK);
    assert_eq!(heavy.header("x-cost"), None, "the header is removed");
    assert_eq!(
        r_and_t(&heavy).0,
        9,
        "RateLimit shows the state at admission"
    );
    for _ in 0..2 {
        let next = get_as(&proxy, "a", &[]).await;
        next.assert_problem(StatusCode::TOO_MANY_REQUESTS, "rate-limited");
        let secs = retry_after(&next);
        assert!(
            (2450..=2460).contains(&secs),
            "Retry-After {secs}: 41 tokens of 60 s"
        );
        assert_eq!(r_and_t(&next), (0, secs));
    }
    let other = get_as(&proxy, "b", &[]).await;
    assert_eq!(other.status, StatusCode::OK, "another key is unaffected");
    assert_eq!(r_and_t(&other).0, 9);
    assert_eq!(up.requests(), 2);
    proxy.stop().await;
}

/// A reported cost at or below `cost` refunds nothing and charges nothing more; a malformed,
/// negative or repeated header is ignored. In every case the header is removed.
#[tokio::test]
async fn charge_header_is_always_stripped_and_malformed_ones_ignored() {
    let up = reporting_upstream().await;
    let proxy = start_proxy(&config(
        &up.endpoint(),
        "{ name: tokens, key: header:X-Api-Key, rate: 1/m, burst: 10, cost: 2, charge_header: X-Cost }",
    ))
    .await;
    let cases: [(&str, &[&str]); 7] = [
        ("small", &["1"]),
        ("even", &["2"]),
        ("word", &["lots"]),
        ("negative", &["-30"]),
        ("fraction", &["30.5"]),
        ("huge", &["99999999999999999999999"]),
        ("twice", &["30", "30"]),
    ];
    for (key, report) in cases {
        let got = get_as(&proxy, key, report).await;
        assert_eq!(got.status, StatusCode::OK, "{key}");
        assert_eq!(got.header("x-cost"), None, "{key}: the header is removed");
        let next = get_as(&proxy, key, &[]).await;
        assert_eq!(next.status, StatusCode::OK, "{key}: not charged");
        assert_eq!(
            r_and_t(&next).0,
            6,
            "{key}: two requests of cost 2, nothing more"
        );
    }
    let charged = get_as(&proxy, "charged", &["5"]).await;
    assert_eq!(charged.header("x-cost"), None);
    let next = get_as(&proxy, "charged", &[]).await;
    assert_eq!(r_and_t(&next).0, 3, "10 − 5 reported − 2");
    proxy.stop().await;
}

/// However much the upstream reports, the debt is at most 10 × burst: the key's next request
/// waits (10 × burst + cost) tokens' time at most, and a second huge report goes no deeper.
#[tokio::test]
async fn debt_is_capped_at_ten_bursts() {
    let up = reporting_upstream().await;
    let proxy = start_proxy(&config(
        &up.endpoint(),
        "{ name: tokens, key: header:X-Api-Key, rate: 1/m, burst: 10, charge_header: X-Cost }",
    ))
    .await;
    let got = get_as(&proxy, "a", &["18446744073709551615"]).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("x-cost"), None);
    let next = get_as(&proxy, "a", &[]).await;
    next.assert_problem(StatusCode::TOO_MANY_REQUESTS, "rate-limited");
    let secs = retry_after(&next);
    assert!(
        (6050..=6060).contains(&secs),
        "Retry-After {secs}: 100 owed + 1"
    );
    proxy.stop().await;
}

/// `cost` 0, `cost` above the burst and a `charge_header` that is no header name are config
/// errors at their field.
#[test]
fn cost_config_errors_name_the_field() {
    let cases = [
        ("cost: 0", "cost", "at least 1"),
        ("burst: 10, cost: 11", "cost", "could never pass"),
        ("cost: 1000001", "cost", "at most 1000000"),
        (
            "charge_header: 'X Cost'",
            "charge_header",
            "not a valid header name",
        ),
    ];
    for (fields, field, says) in cases {
        let yaml = config(
            "http://127.0.0.1:1",
            &format!("{{ key: client_ip, rate: 10/s, {fields} }}"),
        );
        let errors = match sluice::config::from_yaml(&yaml, Path::new("t.yaml")) {
            Ok(_) => panic!("expected an invalid config:\n{yaml}"),
            Err(ConfigError::Invalid { errors, .. }) => errors,
            Err(e) => panic!("{e:?}"),
        };
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0].path, format!("routes[0].rate_limits[0].{field}"));
        assert!(errors[0].message.contains(says), "{}", errors[0]);
    }
}
