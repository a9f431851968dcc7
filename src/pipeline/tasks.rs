//! `GET /_sluice/tasks/<id>` on the proxy listener: the state of a deferred task, answered by
//! sluice before any route is matched (`crate::defer`). The id is all a client needs: it is
//! looked up among the tasks of every deferring route of the current config. Not counted in
//! `sluice_requests_total` (it reaches no route).

use http::{Method, Request};
use hyper::body::Incoming;

use crate::body::ProxyBody;
use crate::rescue;
use crate::runtime::Runtime;

/// Lookups under way at most, in the whole process. Each costs a Redis call per deferring route
/// on the connection global limits and deferrals share, and anyone can ask: a flood of lookups
/// must not queue up there until those calls time out. Past it, 503 `store-unavailable` at once.
#[cfg(feature = "redis")]
const MAX_LOOKUPS: usize = 32;

#[cfg(feature = "redis")]
static LOOKUPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_LOOKUPS);

/// The answer for `/_sluice/tasks/<rest>` (`req`'s canonical path). Boxed, and built outside
/// any async body: the Redis lookup's state stays out of the future of every request.
pub(super) fn answer<'a>(
    rt: &'a Runtime,
    req: &'a Request<Incoming>,
) -> super::Boxed<'a, http::Response<ProxyBody>> {
    Box::pin(look_up(rt, req))
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
    #[cfg(feature = "redis")]
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
    #[cfg(not(feature = "redis"))]
    let _ = (rt, rest);
    rescue::task_unknown()
}
