//! `GET /_sluice/tasks/<id>` on the proxy listener: the state of a deferred task, answered by
//! sluice before any route is matched (`crate::defer`). The id is all a client needs: it is
//! looked up among the tasks of every deferring route of the current config. Not counted in
//! `sluice_requests_total` (it reaches no route).
//!
//! Lookups are limited per client address first ([`TaskLookups`]): past it, 429 `rate-limited`
//! before anything else is spent; the answers carry the limit's `RateLimit` fields as a
//! route's do.

use std::time::Duration;

use http::{Method, Request, Response};
use hyper::body::Incoming;

use futures_util::future::BoxFuture;

use crate::body::ProxyBody;
use crate::client::Origin;
use crate::limit::headers::{RateLimitField, RATELIMIT, RATELIMIT_POLICY};
use crate::limit::Decision;
use crate::rescue;
use crate::runtime::{Runtime, TaskLookups};

/// Lookups under way at most, in the whole process. Each costs a Redis call per deferring route
/// on the connection global limits and deferrals share, and anyone can ask: a flood of lookups
/// must not queue up there until those calls time out. Past it, 503 `store-unavailable` at once.
const MAX_LOOKUPS: usize = 32;

static LOOKUPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_LOOKUPS);

/// The answer for `/_sluice/tasks/<rest>` (`req`'s canonical path) to `origin`. Boxed, and
/// built outside any async body: the Redis lookup's state stays out of the future of every
/// request.
pub(super) fn answer<'a>(
    rt: &'a Runtime,
    origin: Origin,
    req: &'a Request<Incoming>,
) -> BoxFuture<'a, http::Response<ProxyBody>> {
    let lookups = &rt.task_lookups;
    // The per-address limit before the lookup's permit and Redis calls: one client polling in
    // a loop must not take them from everyone else. Other methods cost nothing (405).
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return Box::pin(look_up(rt, req));
    }
    let client_ip = rt.keys.client_ip(origin.peer, req.headers());
    let key = rt
        .keys
        .key(&lookups.rate.config().key, client_ip, req.headers());
    match lookups.rate.check(&key) {
        Decision::Denied { retry_after } => {
            Box::pin(std::future::ready(lookups.rejected.respond(retry_after)))
        }
        Decision::Admitted { remaining, reset } => Box::pin(async move {
            let mut res = look_up(rt, req).await;
            admitted_fields(lookups, &mut res, remaining, reset);
            res
        }),
    }
}

/// The lookup limit's `RateLimit-Policy` and `RateLimit` on an admitted lookup's answer (as on
/// every answer of a route with limits), unless `server.rate_limit_headers` is off.
fn admitted_fields(
    lookups: &TaskLookups,
    res: &mut Response<ProxyBody>,
    remaining: u32,
    reset: Duration,
) {
    let Some(policy) = &lookups.policy else {
        return;
    };
    let mut field = RateLimitField::new();
    field.push(&lookups.rate.config().name, remaining, reset);
    let headers = res.headers_mut();
    headers.insert(RATELIMIT_POLICY, policy.clone());
    headers.insert(RATELIMIT, field.finish());
}

/// [`answer`]'s work.
async fn look_up(rt: &Runtime, req: &Request<Incoming>) -> http::Response<ProxyBody> {
    let rest = req
        .uri()
        .path()
        .strip_prefix(rescue::TASKS_PATH)
        .unwrap_or_default();
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return rescue::task_method_not_allowed();
    }
    {
        let Some(id) = crate::defer::TaskId::parse(rest) else {
            return rescue::task_unknown();
        };
        let Ok(_lookup) = LOOKUPS.try_acquire() else {
            return rescue::task_store_unavailable();
        };
        let mut unanswered = false;
        for defer in rt.routes.iter().filter_map(|r| r.defer.as_ref()) {
            match defer.status(&id).await {
                // Its write's outcome is not known yet: ask again (see `crate::defer::accept`).
                Ok(Some(status)) if status.status == "writing" => return rescue::task_writing(),
                Ok(Some(status)) => return rescue::task_status(status.to_json()),
                Ok(None) => {}
                Err(_) => unanswered = true,
            }
        }
        // Not found where Redis answered; where it did not, it may be.
        if unanswered {
            return rescue::task_store_unavailable();
        }
    }
    rescue::task_unknown()
}
