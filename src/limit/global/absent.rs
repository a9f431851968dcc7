//! `scope: global` limits in a build without Redis: [`GlobalLimit`] is a type with no value.
//! Config validation refuses `scope: global` in such a build, so no limit has one; the code that
//! would use one compiles unchanged (see `crate::store`).

use std::sync::Arc;

use http::HeaderMap;
use prometheus_client::metrics::counter::Counter;

use crate::config::{RateLimitConfig, RedisConfig};
use crate::limit::{Decision, LimitKey, RateLimit, StoreUnavailable};
pub use crate::store::Store;

/// No global limit: there is none in a build without Redis.
#[derive(Debug)]
pub(crate) enum GlobalLimit {}

impl GlobalLimit {
    /// Never called: there is no store to keep the buckets in.
    pub(crate) fn new(
        _: &str,
        _: &RateLimitConfig,
        _: &RedisConfig,
        store: Arc<Store>,
        _: Arc<RateLimit>,
        _: Counter,
    ) -> GlobalLimit {
        match *store {}
    }

    pub(crate) fn keeps(&self, _: &RateLimitConfig, _: &RedisConfig, _: &Arc<Store>) -> bool {
        match *self {}
    }

    pub(crate) async fn check(
        self: &Arc<Self>,
        _: &LimitKey,
        _: &HeaderMap,
    ) -> Result<Option<Decision>, StoreUnavailable> {
        match **self {}
    }

    pub(crate) fn charge_key(&self, _: &LimitKey, _: &HeaderMap) -> Vec<u8> {
        match *self {}
    }

    pub(crate) fn charge(self: &Arc<Self>, _: Vec<u8>, _: u64) {
        match **self {}
    }

    pub(crate) fn housekeeping(&self) {
        match *self {}
    }
}
