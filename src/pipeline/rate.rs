//! The rate-limit stage: every limit of the route, in config order, must admit the request.
//! Cheap and never waiting — except a `scope: global` limit, which asks Redis within
//! `store.redis.timeout`. The first limit that denies decides, and the ones after it are not
//! charged. The decisions also make the `RateLimit` field every response of the route carries.
//!
//! First of all, a header that one of the limits keys on (`header:<Name>`) must come at most
//! once: upstreams authenticate the first line (Go's `Header.Get`, Java's `getHeader`), so a
//! key hashed from all lines would let a client pick a fresh bucket with a second line. Such a
//! request gets 400 `bad-request` before any bucket is charged.

use http::{HeaderMap, Response};

use crate::config::KeySpec;

use super::shadowed;
use crate::body::ProxyBody;
use crate::config::Mode;
use crate::limit::headers::{RateLimitField, RATELIMIT, RATELIMIT_POLICY};
use crate::limit::{Decision, LimitKey, StoreUnavailable};
use crate::net::Origin;
use crate::rescue::{BadRequest, Rejection};
use crate::runtime::{Limit, Route, Runtime};

/// The `RateLimit` items of the limits that decided, for the response.
pub(super) struct Fields(Option<RateLimitField>);

/// Checks every limit of `route`, adding their items to `fields`.
pub(super) async fn check(
    rt: &Runtime,
    route: &Route,
    origin: Origin,
    headers: &HeaderMap,
    fields: &mut Fields,
) -> Result<(), Rejection> {
    if route.limits.is_empty() {
        return Ok(());
    }
    repeated_keys(route, headers)?;
    let client_ip = rt.keys.client_ip(origin.peer, headers);
    for (index, limit) in route.limits.iter().enumerate() {
        let config = limit.rate.config();
        let key = rt.keys.key(&config.key, client_ip, headers);
        let rejection = match decide(limit, &key, headers).await {
            Ok(Some(Decision::Admitted { remaining, reset })) => {
                fields.push(&config.name, remaining, reset);
                continue;
            }
            // Redis failed and `on_error: allow`: this limit passes and has no item.
            Ok(None) => continue,
            Ok(Some(Decision::Denied { retry_after })) => {
                if route.mode == Mode::Shadow {
                    fields.push(&config.name, 0, retry_after);
                }
                Rejection::RateLimited {
                    limit: index,
                    retry_after,
                }
            }
            Err(StoreUnavailable) => Rejection::StoreUnavailable { limit: index },
        };
        tracing::debug!(route = %route.name, limit = %config.name, ?key, reason = rejection.reason(), "limit denies");
        match route.mode {
            Mode::Shadow => shadowed(route, &rejection),
            Mode::Enforce => return Err(rejection),
        }
    }
    Ok(())
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

/// One limit's decision: the local bucket, or Redis' for a global limit (`Ok(None)`: Redis
/// failed and `on_error: allow`).
async fn decide(
    limit: &Limit,
    key: &LimitKey,
    headers: &HeaderMap,
) -> Result<Option<Decision>, StoreUnavailable> {
    #[cfg(feature = "redis")]
    if let Some(global) = &limit.global {
        // Boxed: keeps the Redis call's state out of the future of every request.
        return Box::pin(global.check(key, headers)).await;
    }
    #[cfg(not(feature = "redis"))]
    let _ = headers;
    Ok(Some(limit.rate.check(key)))
}

// === impl Fields ===

impl Fields {
    /// An empty field for a route that sends `RateLimit` fields, else nothing.
    pub(super) fn of(route: &Route) -> Self {
        Fields(route.policy.is_some().then(RateLimitField::new))
    }

    fn push(&mut self, name: &str, remaining: u32, reset: std::time::Duration) {
        if let Some(field) = &mut self.0 {
            field.push(name, remaining, reset);
        }
    }

    /// Adds `RateLimit-Policy` and `RateLimit` to a response of the route. `RateLimit` is left
    /// out when no limit has an item (all were global with Redis down and `on_error: allow`).
    pub(super) fn decorate(
        self,
        mut res: Response<ProxyBody>,
        route: &Route,
    ) -> Response<ProxyBody> {
        if let (Some(policy), Some(mut field)) = (&route.policy, self.0) {
            res.headers_mut().insert(RATELIMIT_POLICY, policy.clone());
            if !field.is_empty() {
                res.headers_mut().insert(RATELIMIT, field.finish());
            }
        }
        res
    }
}
