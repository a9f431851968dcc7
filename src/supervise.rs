//! What the app runs beside the listeners, and reconciles with each runtime: the deliverers of
//! the deferring routes (`crate::defer`). A runtime is data — one config version's routes,
//! limits and pools — and runs nothing; after the first runtime is published and after each
//! reload, [`deliverers`] starts the deliverers a new deferring route needs, hands those of a
//! route that stays (same name, same task store) the route as rebuilt, and lets those of a
//! route that went stop (dropping them stops them: a task waiting for a slot goes back to its
//! stream, a delivery under way finishes).
//!
//! And the resolvers: [`resolvers`] starts, for each upstream of a new runtime that names its
//! endpoints, the task that resolves them again every `resolve_interval` (once per upstream:
//! an upstream a reload kept keeps its task; one a reload dropped ends its task when the last
//! request to it is done), and the task of its active health checks when it has
//! `health_check`, and the one making a `per_endpoint` cap follow the fleet.

use std::collections::HashMap;
use std::sync::Arc;

use crate::defer::{Deliveries, DeliveryTarget, RouteDefer};
use crate::runtime::{Route, Runtime, Shared};

/// Reconciles the deliverers of `shared` with its current runtime (see the module docs). Does
/// nothing before the app runs (no place to spawn them yet: the app calls it then).
// In a build without Redis deliverers have no value: what follows their making is unreachable.
#[allow(unreachable_code)]
pub(crate) fn deliverers(shared: &Shared) {
    let Some(spawner) = shared.spawner.get() else {
        return;
    };
    let runtime = shared.runtime();
    let mut before = shared.deliverers.take();
    let mut after = HashMap::new();
    for route in &runtime.routes {
        let Some(defer) = &route.defer else {
            continue;
        };
        let target = target(&runtime, route, defer);
        let deliveries = match before.remove(&route.name) {
            Some(kept) if kept.serves(defer.store()) => {
                kept.retarget(target);
                kept
            }
            _ => Arc::new(Deliveries::start(
                &route.name,
                defer.store(),
                target,
                spawner,
            )),
        };
        after.insert(route.name.clone(), deliveries);
    }
    shared.deliverers.put(after);
    // What is left of `before` is dropped here: those deliverers stop.
}

/// Starts the re-resolving task of every upstream of `shared`'s runtime that has none yet (see
/// the module docs). Does nothing before the app runs.
pub(crate) fn resolvers(shared: &Shared) {
    let Some(spawner) = shared.spawner.get() else {
        return;
    };
    for upstream in &shared.runtime().upstreams {
        let interval = upstream.config().resolve_interval;
        crate::proxy::fleet::spawn_resolver(upstream.fleet(), interval, spawner);
        crate::proxy::fleet::health::spawn_follower(upstream.fleet(), spawner);
        if let Some(check) = &upstream.config().health_check {
            crate::proxy::fleet::health::spawn_health_checks(upstream.fleet(), check, spawner);
        }
    }
}

/// What the deliverers of `route` need of it in `runtime`.
fn target(runtime: &Runtime, route: &Route, defer: &RouteDefer) -> DeliveryTarget {
    DeliveryTarget {
        config: *defer.config(),
        upstream: route.upstream.clone(),
        route_cap: route.concurrency.clone(),
        route_inflight: route.metrics.inflight.clone(),
        upstream_inflight: route.upstream_inflight.clone(),
        upstream_duration: route.metrics.upstream_duration.clone(),
        metrics: defer.metrics().clone(),
        budget: runtime.budget.clone(),
    }
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::metrics::Metrics;

    /// Pins: after a reload, a deferring route keeps its deliverers (their consumer, the tasks
    /// they hold) while the route keeps its name and the store its target, and they are handed
    /// the new `defer:`; a changed store gets new ones; a route removed loses them.
    #[tokio::test]
    async fn reloads_keep_the_deliverers_of_a_route() {
        let yaml = |url: &str, attempts: u32, route: &str| {
            format!(
                "server: {{ listen: 127.0.0.1:0 }}\n\
                 store: {{ redis: {{ url: \"{url}\" }} }}\n\
                 upstreams: {{ api: {{ endpoints: [http://127.0.0.1:1] }} }}\n\
                 routes: [{{ name: {route}, upstream: api, defer: {{ attempts: {attempts} }} }}]\n"
            )
        };
        let build = |yaml: &str, previous: Option<&Runtime>| {
            let config = crate::config::from_yaml(yaml, Path::new("test.yaml"))
                .unwrap_or_else(|e| panic!("test config invalid: {e}"));
            Runtime::build(config, previous, Arc::new(Metrics::new()))
        };
        // Nothing listens on port 1: these runtimes never reach Redis, which is not needed.
        let shared = Shared::new(build(&yaml("redis://127.0.0.1:1", 4, "hooks"), None));
        let _ = shared.spawner.set(tokio::runtime::Handle::current());
        let held = |shared: &Shared| {
            let all = shared.deliverers.take();
            let hooks = all.get("hooks").cloned();
            shared.deliverers.put(all);
            hooks
        };
        deliverers(&shared);
        let first = held(&shared).expect("deliverers started");
        let next = |url: &str, attempts: u32, route: &str| {
            let current = shared.runtime();
            shared.swap(build(&yaml(url, attempts, route), Some(&current)));
            deliverers(&shared);
        };
        next("redis://127.0.0.1:1", 5, "hooks");
        let same = held(&shared).expect("still there");
        assert!(Arc::ptr_eq(&first, &same), "kept across a reload");
        next("redis://127.0.0.2:1", 5, "hooks");
        let other = held(&shared).expect("new ones");
        assert!(!Arc::ptr_eq(&same, &other), "another store: new deliverers");
        next("redis://127.0.0.2:1", 5, "renamed");
        assert!(held(&shared).is_none(), "a removed route's deliverers go");
    }
}
