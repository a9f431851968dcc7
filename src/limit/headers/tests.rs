use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use super::{policy_value, refill_secs, retry_after_secs, RateLimitField, INLINE_CAPACITY};
use crate::config::{KeySpec, LimitScope, RateLimitConfig};

fn limit(name: &str, rate: &str, burst: u32) -> RateLimitConfig {
    RateLimitConfig {
        name: Arc::from(name),
        key: KeySpec::ClientIp,
        rate: rate.parse().expect("test rate"),
        burst: NonZeroU32::new(burst).expect("test burst"),
        scope: LimitScope::Local,
        lease: 0,
        max_keys: NonZeroUsize::new(1_000_000).expect("nonzero"),
        cost: RateLimitConfig::DEFAULT_COST,
        charge_header: None,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// The contract's RateLimit-Policy example, byte for byte.
#[test]
fn policy_matches_contract_example() {
    let per_client = limit("per-client", "100/s", 200);
    let total = limit("total", "1000/s", 1000);
    assert_eq!(
        policy_value(&[&per_client, &total]).as_bytes(),
        br#""per-client";q=200;w=2, "total";q=1000;w=1"#
    );
}

// w = burst × emission interval, rounded up, at least 1, for N/s, N/m and N/h rates (including
// intervals that are not whole nanoseconds, like 60/7 s).
#[test]
fn policy_w_rounding() {
    let w = |rate: &str, burst: u32| refill_secs(&limit("x", rate, burst));
    assert_eq!(w("1000/s", 1), 1, "1 ms rounds up to the minimum of 1");
    assert_eq!(w("3/s", 3), 1, "3 × 333333333 ns");
    assert_eq!(w("2/s", 3), 2, "1.5 s");
    assert_eq!(w("10/m", 10), 60);
    assert_eq!(w("7/m", 7), 60, "7 × 8.571428571 s is just under 60");
    assert_eq!(w("7/m", 1), 9, "8.57 s");
    assert_eq!(w("6/m", 1), 10);
    assert_eq!(w("1/m", 3), 180);
    assert_eq!(w("30/m", 45), 90);
    assert_eq!(w("3/h", 1), 1200);
    assert_eq!(w("7/h", 2), 1029, "2 × 514.285714285 s");
    assert_eq!(
        policy_value(&[&limit("m", "7/m", 1)]).as_bytes(),
        br#""m";q=1;w=9"#
    );
}

// A route without limits gets an empty value (it sends no field).
#[test]
fn policy_of_no_limits_is_empty() {
    assert!(policy_value(&[]).is_empty());
}

// The contract's 429 example: only the rejecting limit, r=0, t = Retry-After.
#[test]
fn denied_item_matches_contract_example() {
    let mut f = RateLimitField::new();
    f.push_denied("per-client", ms(2300));
    assert_eq!(f.finish().as_bytes(), br#""per-client";r=0;t=3"#);
}

// One item per limit on an admitted request; t rounds up; 0 only for a full bucket.
#[test]
fn admitted_items() {
    let mut f = RateLimitField::new();
    f.push("per-client", 199, ms(10))
        .push("total", 999, ms(1))
        .push("daily", 5, Duration::ZERO);
    assert_eq!(
        f.finish().as_bytes(),
        br#""per-client";r=199;t=1, "total";r=999;t=1, "daily";r=5;t=0"#
    );
    f.push("m", 0, Duration::from_secs(5)).push(
        "h",
        4_294_967_295,
        Duration::from_millis(1_800_001),
    );
    assert_eq!(
        f.finish().as_bytes(),
        br#""m";r=0;t=5, "h";r=4294967295;t=1801"#
    );
}

// finish() empties the builder, so it can be reused for the next response.
#[test]
fn builder_is_reusable() {
    let mut f = RateLimitField::default();
    assert!(f.is_empty());
    f.push("a", 1, ms(1));
    assert!(!f.is_empty());
    assert_eq!(f.finish().as_bytes(), br#""a";r=1;t=1"#);
    assert!(f.is_empty());
    assert!(f.finish().is_empty());
    f.push("b", 2, ms(1));
    assert_eq!(f.finish().as_bytes(), br#""b";r=2;t=1"#);
}

// Items that outgrow the stack buffer spill to the heap without losing or reordering bytes.
#[test]
fn long_fields_spill_intact() {
    let names: Vec<String> = (0..20)
        .map(|i| format!("limit-with-a-longish-name-{i}"))
        .collect();
    let mut f = RateLimitField::new();
    let mut expected = String::new();
    for (i, name) in names.iter().enumerate() {
        f.push(name, i as u32, Duration::from_secs(i as u64));
        if i > 0 {
            expected.push_str(", ");
        }
        expected.push_str(&format!("\"{name}\";r={i};t={i}"));
    }
    assert!(expected.len() > INLINE_CAPACITY);
    assert_eq!(f.finish().as_bytes(), expected.as_bytes());
    // A single name longer than the inline buffer on its own.
    let long = "n".repeat(INLINE_CAPACITY + 10);
    f.push(&long, 1, ms(1));
    assert_eq!(
        f.finish().as_bytes(),
        format!("\"{long}\";r=1;t=1").as_bytes()
    );
    // And back to the inline buffer afterwards.
    f.push("a", 0, ms(1));
    assert_eq!(f.finish().as_bytes(), br#""a";r=0;t=1"#);
}

// Names are sf-strings: " and \ are escaped; what an sf-string cannot hold becomes ?, no panic.
#[test]
fn names_are_escaped_sf_strings() {
    let mut f = RateLimitField::new();
    f.push(r#"a"b\c"#, 1, ms(1));
    assert_eq!(f.finish().as_bytes(), br#""a\"b\\c";r=1;t=1"#);
    f.push("tab\there\u{7f}é€", 1, ms(1));
    assert_eq!(f.finish().as_bytes(), br#""tab?here???";r=1;t=1"#);
    f.push("", 1, ms(1));
    assert_eq!(f.finish().as_bytes(), br#""";r=1;t=1"#);
    assert_eq!(
        policy_value(&[&limit("\"q\"", "1/s", 1)]).as_bytes(),
        br#""\"q\"";q=1;w=1"#
    );
}

// Retry-After: whole seconds rounded up, at least 1.
#[test]
fn retry_after_rounding() {
    assert_eq!(retry_after_secs(ms(200)), 1);
    assert_eq!(retry_after_secs(ms(1000)), 1);
    assert_eq!(retry_after_secs(ms(1700)), 2);
    assert_eq!(retry_after_secs(Duration::ZERO), 1);
    assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
    assert_eq!(retry_after_secs(Duration::from_nanos(2_000_000_001)), 3);
    assert_eq!(retry_after_secs(Duration::MAX), u64::MAX, "saturates");
}

// Integers stay valid sf-integers (at most 15 digits) whatever the duration.
#[test]
fn huge_values_are_clamped_to_sf_integer() {
    let mut f = RateLimitField::new();
    f.push_denied("x", Duration::MAX);
    assert_eq!(f.finish().as_bytes(), br#""x";r=0;t=999999999999999"#);
}
