//! The concurrency stage: a slot of the route's cap, then one of the upstream's. Either may
//! queue the request (bounded in depth and time, ordered by priority) or refuse it. Everything
//! the request holds rides in [`Slots`] until its response body is done.

use std::net::IpAddr;

use http::HeaderMap;

use super::shadowed;
use crate::client::Origin;
use crate::config::Mode;
use crate::limit::{ConcurrencyLimit, Permit, Slots};
use crate::metrics::{InflightGuard, ScopeMetrics};
use crate::rescue::{Cap, Rejection};
use crate::runtime::{Route, Runtime};

/// Who a request is, for the queues of caps with `fair_by`: the client as the rate limits
/// see it, and the request's headers.
pub(super) struct Asker<'a> {
    rt: &'a Runtime,
    peer: IpAddr,
    headers: &'a HeaderMap,
}

/// Takes the route's slot, then the upstream's.
pub(super) async fn admit(route: &Route, asker: Asker<'_>) -> Result<Slots, Rejection> {
    let mut slots = Slots::default();
    if let Some(cap) = &route.concurrency {
        let key = asker.key(cap);
        slots.route = Some(take(cap, route, &route.cap_metrics, (Cap::Route, key)).await?);
    }
    slots.route_gauge = Some(InflightGuard::enter(&route.metrics.inflight));
    if let Some(cap) = &route.upstream.concurrency {
        let key = asker.key(cap);
        let which = (Cap::Upstream, key);
        let permit = take(cap, route, &route.upstream_cap_metrics, which).await?;
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
    (which, key): (Cap, u64),
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
        .acquire_as(route.priority, key)
        .await
        .map_err(|rejected| Rejection::Capacity {
            cap: which,
            rejected,
        })?;
    metrics.queue_wait.observe(permit.waited().as_secs_f64());
    Ok(permit)
}

// === impl Asker ===

impl<'a> Asker<'a> {
    pub(super) fn new(rt: &'a Runtime, origin: Origin, headers: &'a HeaderMap) -> Self {
        Asker {
            rt,
            peer: origin.peer,
            headers,
        }
    }

    /// The request's key in `cap`'s queue: 0 (one line for all) without `fair_by`.
    fn key(&self, cap: &ConcurrencyLimit) -> u64 {
        match &cap.config().fair_by {
            None => 0,
            Some(spec) => {
                let keys = &self.rt.keys;
                let client = keys.client_ip(self.peer, self.headers);
                keys.queue_key(spec, client, self.headers)
            }
        }
    }
}
