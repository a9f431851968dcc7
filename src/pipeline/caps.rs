//! The concurrency stage: a slot of the route's cap, then one of the upstream's. Either may
//! queue the request (bounded in depth and time, ordered by priority) or refuse it. Everything
//! the request holds rides in [`Slots`] until its response body is done.

use super::shadowed;
use crate::config::Mode;
use crate::limit::{ConcurrencyLimit, Permit, Slots};
use crate::metrics::{InflightGuard, ScopeMetrics};
use crate::rescue::{Cap, Rejection};
use crate::runtime::Route;

/// Takes the route's slot, then the upstream's.
pub(super) async fn admit(route: &Route) -> Result<Slots, Rejection> {
    let mut slots = Slots::default();
    if let Some(cap) = &route.concurrency {
        slots.route = Some(take(cap, route, &route.cap_metrics, Cap::Route).await?);
    }
    slots.route_gauge = Some(InflightGuard::enter(&route.metrics.inflight));
    if let Some(cap) = &route.upstream.concurrency {
        let permit = take(cap, route, &route.upstream_cap_metrics, Cap::Upstream).await?;
        slots.upstream = Some(permit);
    }
    slots.upstream_gauge = Some(InflightGuard::enter(&route.upstream_inflight));
    Ok(slots)
}

/// A slot of `cap` for this route's priority. In shadow mode nothing waits and no real slot is
/// taken: the request is counted, and one the cap would have refused is logged.
async fn take(
    cap: &ConcurrencyLimit,
    route: &Route,
    metrics: &ScopeMetrics,
    which: Cap,
) -> Result<Permit, Rejection> {
    if route.mode == Mode::Shadow {
        let (permit, verdict) = cap.admit_shadow();
        if let Err(rejected) = verdict {
            shadowed(
                route,
                &Rejection::Capacity {
                    cap: which,
                    rejected,
                },
            );
        }
        return Ok(permit);
    }
    let permit = cap
        .acquire(route.priority)
        .await
        .map_err(|rejected| Rejection::Capacity {
            cap: which,
            rejected,
        })?;
    metrics.queue_wait.observe(permit.waited().as_secs_f64());
    Ok(permit)
}
