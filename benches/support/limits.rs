//! The rate limit the micro-benches build without YAML: local, per second, room for a million
//! keys (so that no bench measures eviction by accident).
#![allow(dead_code)]

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;

use sluice::config::{KeySpec, LimitScope, Per, Rate, RateLimitConfig};

/// A local limit `name` on `key`: `count` per second, a bucket of `burst`.
pub(crate) fn per_second(name: &str, key: KeySpec, count: u32, burst: u32) -> RateLimitConfig {
    RateLimitConfig {
        name: Arc::from(name),
        key,
        rate: Rate {
            count: NonZeroU32::new(count).expect("benches use count >= 1"),
            per: Per::Second,
        },
        burst: NonZeroU32::new(burst).expect("benches use burst >= 1"),
        scope: LimitScope::Local,
        lease: 0,
        max_keys: NonZeroUsize::new(1_000_000).expect("nonzero"),
        cost: RateLimitConfig::DEFAULT_COST,
        charge_header: None,
    }
}
