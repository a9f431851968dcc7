//! `routes[].rate_limits[]`: token buckets, their keys, rates, bursts and scope, the lease of a
//! global limit and the bounds its bucket arithmetic can hold.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use super::cx::Cx;
use super::join;
use crate::config::raw::{Int, RawRateLimit};
use crate::config::{KeySpec, LimitScope, Rate, RateLimitConfig};

// === impl Cx: rate limits ===

impl Cx {
    /// A route's `rate_limits` (at `at.rate_limits`), their names unique within the route;
    /// `has_store`: `store.redis` is configured, which `scope: global` needs.
    pub(super) fn rate_limits(
        &mut self,
        at: &str,
        raw: Option<&[RawRateLimit]>,
        has_store: bool,
    ) -> Vec<Option<RateLimitConfig>> {
        let raw = raw.unwrap_or_default();
        let limits = raw
            .iter()
            .enumerate()
            .map(|(i, limit)| {
                self.rate_limit(&format!("{at}.rate_limits[{i}]"), i, limit, has_store)
            })
            .collect();
        self.unique_limit_names(at, raw);
        limits
    }

    fn rate_limit(
        &mut self,
        at: &str,
        index: usize,
        raw: &RawRateLimit,
        has_store: bool,
    ) -> Option<RateLimitConfig> {
        let name = match raw.name.as_deref() {
            Some(name) => self.name(&join(at, "name"), name),
            None => Some(Arc::from(format!("limit-{index}"))),
        };
        let key = match raw.key.as_deref() {
            Some(key) => self.key(&join(at, "key"), key),
            None => self.missing(&join(at, "key"), "global, client_ip or header:<Name>"),
        };
        let rate = self.rate(&join(at, "rate"), raw.rate.as_deref());
        let burst = match (raw.burst, rate) {
            (Some(burst), _) => self.number::<u32>(&join(at, "burst"), burst.0, 1, u32::MAX),
            (None, Some(rate)) => Some(rate.count.get()),
            (None, None) => None,
        };
        let scope = self.choice(
            &join(at, "scope"),
            raw.scope.as_deref(),
            &[("local", LimitScope::Local), ("global", LimitScope::Global)],
            LimitScope::default(),
        );
        if let (Some(rate), Some(burst), Some(scope)) = (rate, burst, scope) {
            self.bucket_bounds(at, rate, burst, scope);
        }
        if scope == Some(LimitScope::Global) && !has_store {
            self.error(
                &join(at, "scope"),
                "scope: global needs store.redis, which is not configured",
            );
        }
        let lease = self.lease(&join(at, "lease"), raw.lease, burst, scope);
        let max_keys = self.nonzero_usize_or(
            &join(at, "max_keys"),
            raw.max_keys,
            RateLimitConfig::DEFAULT_MAX_KEYS,
            RateLimitConfig::MAX_MAX_KEYS,
        );
        let cost = self.cost(&join(at, "cost"), raw.cost, burst, lease);
        let charge_header = self.charge_header(at, raw.charge_header.as_deref());
        Some(RateLimitConfig {
            name: name?,
            key: key?,
            rate: rate?,
            burst: NonZeroU32::new(burst?)?,
            scope: scope?,
            lease: lease?,
            max_keys: max_keys?,
            cost: cost?,
            charge_header: charge_header?,
        })
    }

    /// `rate_limits[].cost`: 1 (default) … [`RateLimitConfig::MAX_COST`], at most the limit's
    /// burst (a request costing more could never pass), and at most a `lease` (which holds
    /// the tokens of whole requests).
    fn cost(
        &mut self,
        at: &str,
        raw: Option<Int>,
        burst: Option<u32>,
        lease: Option<u32>,
    ) -> Option<NonZeroU32> {
        let Some(raw) = raw else {
            return Some(RateLimitConfig::DEFAULT_COST);
        };
        let cost = self.number::<u32>(at, raw.0, 1, RateLimitConfig::MAX_COST)?;
        if let Some(lease @ 1..) = lease.filter(|&lease| lease < cost) {
            return self.fail(
                at,
                format!("must be at most the limit's lease ({lease}), found {cost}: a lease holds the tokens of whole requests"),
            );
        }
        match burst {
            Some(burst) if cost > burst => self.fail(
                at,
                format!("must be at most the limit's burst ({burst}), found {cost}: a request costing more than the bucket holds could never pass"),
            ),
            _ => NonZeroU32::new(cost),
        }
    }

    /// `rate_limits[].charge_header`: a header name. `Some(None)` when absent.
    fn charge_header(&mut self, at: &str, raw: Option<&str>) -> Option<Option<HeaderName>> {
        let Some(raw) = raw else {
            return Some(None);
        };
        match HeaderName::from_bytes(raw.trim().as_bytes()) {
            Ok(name) => Some(Some(name)),
            Err(_) => self.fail(
                &join(at, "charge_header"),
                format!("{raw:?} is not a valid header name"),
            ),
        }
    }

    /// `rate`: required, `N/s`, `N/m` or `N/h`.
    fn rate(&mut self, at: &str, raw: Option<&str>) -> Option<Rate> {
        match raw {
            Some(rate) => match rate.parse::<Rate>() {
                Ok(rate) => Some(rate),
                Err(message) => self.fail(at, message),
            },
            None => self.missing(at, "a rate like 100/s, 20/m or 5/h"),
        }
    }

    /// `rate_limits[].lease`: 0 (default) … min(burst, [`RateLimitConfig::MAX_LEASE`]), and only
    /// with `scope: global` — a local limit makes no Redis call to save, so a lease there is a
    /// mistake worth saying rather than a value to ignore.
    fn lease(
        &mut self,
        at: &str,
        raw: Option<Int>,
        burst: Option<u32>,
        scope: Option<LimitScope>,
    ) -> Option<u32> {
        let Some(raw) = raw else {
            return Some(RateLimitConfig::DEFAULT_LEASE);
        };
        let lease = self.number::<u32>(at, raw.0, 0, RateLimitConfig::MAX_LEASE)?;
        if lease == 0 {
            return Some(0);
        }
        if scope == Some(LimitScope::Local) {
            return self.fail(
                at,
                "lease is for scope: global limits (tokens taken from Redis ahead of use); a local limit has no Redis call to save: remove lease or set scope: global",
            );
        }
        match burst {
            Some(burst) if lease > burst => self.fail(
                at,
                format!("must be at most the limit's burst ({burst}), found {lease}: a lease is taken from the bucket, which never holds more"),
            ),
            _ => Some(lease),
        }
    }

    /// Duplicate limit names of a route, explicit or defaulted (`limit-1` may clash with an
    /// explicit one).
    fn unique_limit_names(&mut self, at: &str, raw: &[RawRateLimit]) {
        let names: Vec<(String, String)> = raw
            .iter()
            .enumerate()
            .map(|(i, l)| match l.name.as_deref() {
                Some(name) => (format!("{at}.rate_limits[{i}].name"), name.to_owned()),
                None => (format!("{at}.rate_limits[{i}]"), format!("limit-{i}")),
            })
            .collect();
        self.unique(names.iter().map(|(p, n)| (p.clone(), n.as_str())), "limit");
    }

    /// Bounds the arithmetic of the buckets can hold: a token interval of at least 1 ns, and a
    /// refill time (burst × interval) governor can represent (2^62 ns, 146 years) — the Redis
    /// script's exact range is 2^53 ns (104 days).
    fn bucket_bounds(&mut self, at: &str, rate: Rate, burst: u32, scope: LimitScope) {
        let interval = rate.per.duration().as_nanos() / u128::from(rate.count.get());
        let refill = interval * u128::from(burst);
        let (max_refill, max_text): (u128, _) = match scope {
            LimitScope::Global => (1 << 53, "104 days with scope: global"),
            LimitScope::Local => (1 << 62, "146 years"),
        };
        if interval == 0 {
            self.error(
                &join(at, "rate"),
                format!("{rate} is more than one token per nanosecond"),
            );
        } else if refill > max_refill {
            let took = Duration::from_nanos(u64::try_from(refill).unwrap_or(u64::MAX));
            self.error(
                &join(at, "burst"),
                format!(
                    "burst {burst} at {rate} takes {} to refill; at most {max_text} is supported",
                    humantime::format_duration(took)
                ),
            );
        }
    }

    /// `global` | `client_ip` | `header:<Name>`.
    pub(super) fn key(&mut self, at: &str, raw: &str) -> Option<KeySpec> {
        match raw.trim() {
            "global" => Some(KeySpec::Global),
            "client_ip" => Some(KeySpec::ClientIp),
            key => match key.strip_prefix("header:") {
                Some(name) => HeaderName::from_bytes(name.trim().as_bytes())
                    .ok()
                    .map(KeySpec::Header)
                    .or_else(|| {
                        self.fail(
                            at,
                            format!("{:?} is not a valid header name, in {raw:?}", name.trim()),
                        )
                    }),
                None => self.fail(
                    at,
                    format!("expected global, client_ip or header:<Name>, found {raw:?}"),
                ),
            },
        }
    }
}
