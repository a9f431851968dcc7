//! The rate-limit stage: every limit of the route, in config order, must admit the request.
//! Cheap and never waiting — except a `scope: global` limit, which asks Redis within
//! `store.redis.timeout`. The first limit that denies decides, and the ones after it are not
//! charged. The decisions also make the `RateLimit` field every response of the route carries.
//!
//! First of all, a header that one of the limits keys on (`header:<Name>`) must come at most
//! once: upstreams authenticate the first line (Go's `Header.Get`, Java's `getHeader`), so a
//! key hashed from all lines would let a client pick a fresh bucket with a second line. Such a
//! request gets 400 `bad-request` before any bucket is charged.
//!
//! After the upstream's response, [`Fields::charge`] reads what the upstream says the request
//! cost (a limit's `charge_header`), charges it to the key the limit admitted the request with,
//! and removes the header from the response.

use std::net::IpAddr;
use std::time::Duration;

use http::{HeaderMap, Response};

use futures_util::future::BoxFuture;

use crate::config::KeySpec;

use super::shadowed;
use crate::body::ProxyBody;
use crate::client::Origin;
use crate::config::Mode;
use crate::limit::headers::{RateLimitField, RATELIMIT, RATELIMIT_POLICY};
use crate::limit::{Decision, LimitKey, StoreUnavailable};
use crate::rescue::{BadRequest, Rejection};
use crate::runtime::{Route, Runtime};

/// What each limit that decided said, for the response's `RateLimit` field: kept as numbers and
/// formatted once the response is known (most requests' state holds no formatting buffer).
#[derive(Default)]
pub(super) struct Fields {
    items: [Item; INLINE_ITEMS],
    len: usize,
    /// The items past `INLINE_ITEMS` (a route with that many limits is rare).
    more: Vec<Item>,
    /// For each `scope: global` limit with a `charge_header` that admitted the request: its
    /// index and the Redis key of the request's bucket (empty for every other route).
    global_charges: Vec<(usize, Vec<u8>)>,
}

/// Items kept in [`Fields`] without an allocation.
const INLINE_ITEMS: usize = 4;

#[derive(Clone, Copy, Default)]
struct Item {
    /// The limit's index in its route.
    limit: usize,
    remaining: u32,
    reset: Duration,
    /// The key the limit admitted the request with, kept only when the limit has a
    /// `charge_header`: the bucket the upstream's reported cost is charged to.
    charged: Option<LimitKey>,
}

/// Where [`check`] stopped: at a global limit, whose decision is Redis'.
pub(super) struct AtGlobal {
    index: usize,
    client_ip: IpAddr,
}

/// Checks the limits of `route` in order up to its first global limit, adding their items to
/// `fields`; for a route without global limits (nearly every route), all of them, and nothing
/// waits. `Some` when a global limit comes next: [`global`] goes on from there.
pub(super) fn check(
    rt: &Runtime,
    route: &Route,
    origin: Origin,
    headers: &HeaderMap,
    fields: &mut Fields,
) -> Result<Option<AtGlobal>, Rejection> {
    if route.limits.is_empty() {
        return Ok(None);
    }
    repeated_keys(route, headers)?;
    let client_ip = rt.keys.client_ip(origin.peer, headers);
    local_from(rt, route, client_ip, headers, fields, 0)
}

/// The rest of the rate stage from a global limit on. Boxed, and built outside any async body:
/// the Redis call's state stays out of the future of every request.
pub(super) fn global<'a>(
    rt: &'a Runtime,
    route: &'a Route,
    headers: &'a HeaderMap,
    fields: &'a mut Fields,
    at: AtGlobal,
) -> BoxFuture<'a, Result<(), Rejection>> {
    Box::pin(async move {
        let mut at = at;
        loop {
            let limit = &route.limits[at.index];
            let key = rt.keys.key(&limit.rate.config().key, at.client_ip, headers);
            let decision = match &limit.global {
                Some(global) => global.check(&key, headers).await,
                None => Ok(Some(limit.rate.check(&key))),
            };
            if let (Some(global), Some(_), Ok(Some(Decision::Admitted { .. }))) =
                (&limit.global, &limit.rate.config().charge_header, &decision)
            {
                let redis_key = global.charge_key(&key, headers);
                fields.global_charges.push((at.index, redis_key));
            }
            apply(route, at.index, &key, decision, fields)?;
            match local_from(rt, route, at.client_ip, headers, fields, at.index + 1)? {
                Some(next) => at = next,
                None => return Ok(()),
            }
        }
    })
}

/// The local limits of `route` from index `from` on, up to the next global one.
fn local_from(
    rt: &Runtime,
    route: &Route,
    client_ip: IpAddr,
    headers: &HeaderMap,
    fields: &mut Fields,
    from: usize,
) -> Result<Option<AtGlobal>, Rejection> {
    for (index, limit) in route.limits.iter().enumerate().skip(from) {
        if limit.global.is_some() {
            return Ok(Some(AtGlobal { index, client_ip }));
        }
        let key = rt.keys.key(&limit.rate.config().key, client_ip, headers);
        apply(route, index, &key, Ok(Some(limit.rate.check(&key))), fields)?;
    }
    Ok(None)
}

/// Acts on the decision of limit `index`: its item, or its rejection (only counted in shadow
/// mode). `Ok(None)`: Redis failed and `on_error: allow`, the limit passes and has no item.
fn apply(
    route: &Route,
    index: usize,
    key: &LimitKey,
    decision: Result<Option<Decision>, StoreUnavailable>,
    fields: &mut Fields,
) -> Result<(), Rejection> {
    let rejection = match decision {
        Ok(Some(Decision::Admitted { remaining, reset })) => {
            let config = route.limits[index].rate.config();
            let charged = config.charge_header.is_some().then_some(*key);
            fields.push(index, remaining, reset, charged);
            return Ok(());
        }
        Ok(None) => return Ok(()),
        Ok(Some(Decision::Denied { retry_after })) => {
            if route.mode == Mode::Shadow {
                // Nothing taken, nothing charged later.
                fields.push(index, 0, retry_after, None);
            }
            Rejection::RateLimited {
                limit: index,
                retry_after,
            }
        }
        Err(StoreUnavailable) => Rejection::StoreUnavailable { limit: index },
    };
    let limit = &route.limits[index].rate.config().name;
    tracing::debug!(route = %route.name, %limit, ?key, reason = rejection.reason(), "limit denies");
    match route.mode {
        Mode::Shadow => {
            shadowed(route, &rejection);
            Ok(())
        }
        Mode::Enforce => Err(rejection),
    }
}

/// The cost in `headers`' `name`: one line holding a whole number ≥ 0. `None` when absent; when
/// repeated, not a number or negative, also `None`, logged at debug.
fn reported_cost(headers: &HeaderMap, name: &http::HeaderName) -> Option<u64> {
    let mut lines = headers.get_all(name).iter();
    let first = lines.next()?;
    let cost = match lines.next() {
        None => first
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok()),
        Some(_) => None,
    };
    if cost.is_none() {
        tracing::debug!(header = %name, value = ?first, "charge header ignored: not one whole number ≥ 0");
    }
    cost
}

/// 400 when a header a limit keys on came more than once (see the module docs); in shadow mode
/// only counted (the key then hashes every line, as before).
fn repeated_keys(route: &Route, headers: &HeaderMap) -> Result<(), Rejection> {
    for (limit, l) in route.limits.iter().enumerate() {
        let KeySpec::Header(name) = &l.rate.config().key else {
            continue;
        };
        if headers.get_all(name).iter().nth(1).is_none() {
            continue;
        }
        let rejection = Rejection::BadRequest(BadRequest::RepeatedKey { limit });
        tracing::debug!(route = %route.name, header = %name, reason = rejection.reason(), "key header repeated");
        match route.mode {
            Mode::Shadow => shadowed(route, &rejection),
            Mode::Enforce => return Err(rejection),
        }
    }
    Ok(())
}

// === impl Fields ===

impl Fields {
    fn push(&mut self, limit: usize, remaining: u32, reset: Duration, charged: Option<LimitKey>) {
        let item = Item {
            limit,
            remaining,
            reset,
            charged,
        };
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = item;
                self.len += 1;
            }
            None => self.more.push(item),
        }
    }

    /// After the upstream's response `headers` (of a request of `route`): for each limit of the
    /// route with a `charge_header`, removes that header — always, so that the client never
    /// sees it — and charges the cost it reports, less the limit's `cost` already taken, to the
    /// key the limit admitted the request with (see [`crate::limit::RateLimit::charge`]). A
    /// header that is absent, repeated, not a whole number or negative is ignored (logged at
    /// debug); a cost below `cost` refunds nothing. `RateLimit` still shows the state at
    /// admission: the charge is felt by the key's next requests.
    pub(super) fn charge(&mut self, route: &Route, headers: &mut HeaderMap) {
        for (index, limit) in route.limits.iter().enumerate() {
            let config = limit.rate.config();
            let Some(name) = &config.charge_header else {
                continue;
            };
            let reported = reported_cost(headers, name);
            headers.remove(name);
            let Some(reported) = reported else {
                continue;
            };
            let extra = reported.saturating_sub(u64::from(config.cost.get()));
            match &limit.global {
                // Redis' bucket, in a task of its own (the response does not wait).
                Some(global) => {
                    let charge = self.global_charges.iter().position(|(l, _)| *l == index);
                    if let Some(at) = charge {
                        global.charge(self.global_charges.swap_remove(at).1, extra);
                    }
                }
                None => {
                    let item = self.items[..self.len]
                        .iter()
                        .chain(&self.more)
                        .find(|item| item.limit == index);
                    if let Some(key) = item.and_then(|i| i.charged) {
                        limit.rate.charge(&key, extra);
                    }
                }
            }
        }
    }

    /// Adds `RateLimit-Policy` and `RateLimit` to a response of the route. `RateLimit` is left
    /// out when no limit has an item (all were global with Redis down and `on_error: allow`).
    pub(super) fn decorate(
        self,
        mut res: Response<ProxyBody>,
        route: &Route,
    ) -> Response<ProxyBody> {
        let Some(policy) = &route.policy else {
            return res;
        };
        res.headers_mut().insert(RATELIMIT_POLICY, policy.clone());
        if self.len > 0 {
            let mut field = RateLimitField::new();
            for item in self.items[..self.len].iter().chain(&self.more) {
                let name = &route.limits[item.limit].rate.config().name;
                field.push(name, item.remaining, item.reset);
            }
            res.headers_mut().insert(RATELIMIT, field.finish());
        }
        res
    }
}
