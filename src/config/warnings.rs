//! `sluice check`'s warnings: configs that are valid but do something their author most likely
//! did not mean. Each is a `warning:` line on stderr; `check` still exits 0.

use std::fmt;

use super::{Config, KeySpec, LimitScope, OnStoreError, PathMatch, Priority, RouteConfig};

/// One footgun found in a valid config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// The field path it is about, e.g. `routes[2].rate_limits[0]`.
    pub path: String,
    /// What it does, and what to do instead.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "warning: {}: {}", self.path, self.message)
    }
}

/// Every warning of `config`, in route order.
pub fn warnings(config: &Config) -> Vec<Warning> {
    let mut found = Vec::new();
    for (i, route) in config.routes.iter().enumerate() {
        invented_keys(i, route, &mut found);
        critical_without_queue(config, i, route, &mut found);
        login_open_on_redis_errors(config, i, route, &mut found);
    }
    for upstream in &config.upstreams {
        tls_unused(upstream, &mut found);
    }
    found
}

/// `tls:` on an upstream whose endpoints are `http://`: nothing of it is used (a valid config:
/// the block may be there for a switch to `https://` to come).
fn tls_unused(upstream: &super::UpstreamConfig, found: &mut Vec<Warning>) {
    if upstream.tls.is_some() && !upstream.https {
        found.push(Warning {
            path: format!("upstreams.{}.tls", upstream.name),
            message: "the endpoints are http://, so tls is not used; write https:// endpoints \
                      for TLS to the upstream"
                .to_owned(),
        });
    }
}

/// A `header:` limit with no `client_ip` limit before it: a client that invents a new key for
/// each request gets a fresh bucket each time.
fn invented_keys(i: usize, route: &RouteConfig, found: &mut Vec<Warning>) {
    for (j, limit) in route.rate_limits.iter().enumerate() {
        let KeySpec::Header(name) = &limit.key else {
            continue;
        };
        let guarded = route.rate_limits[..j]
            .iter()
            .any(|earlier| earlier.key == KeySpec::ClientIp);
        if !guarded {
            found.push(Warning {
                path: format!("routes[{i}].rate_limits[{j}]"),
                message: format!(
                    "a limit keyed by the `{name}` header with no `client_ip` limit before it: a \
                     client that sends a new value with each request gets a fresh bucket each \
                     time; put a `client_ip` limit first"
                ),
            });
        }
    }
}

/// A critical route whose cap (its own or its upstream's) has no queue: its requests get 503
/// the moment every slot is busy, though nothing of lower priority could be shed for them.
fn critical_without_queue(
    config: &Config,
    i: usize,
    route: &RouteConfig,
    found: &mut Vec<Warning>,
) {
    if route.priority != Priority::Critical {
        return;
    }
    let upstream = config.upstreams.get(route.upstream);
    let caps = [
        (
            format!("routes[{i}].concurrency"),
            route.concurrency.as_ref(),
        ),
        (
            format!("upstreams.{}.concurrency", route.upstream_name),
            upstream.and_then(|u| u.concurrency.as_ref()),
        ),
    ];
    for (path, cap) in caps {
        if cap.is_some_and(|cap| cap.queue == 0) {
            found.push(Warning {
                path,
                message: format!(
                    "route `{}` is critical, but this cap has no queue (`queue: 0`): its \
                     requests get 503 the moment every slot is busy; give it a queue",
                    route.name
                ),
            });
        }
    }
}

/// A login route with a global limit while Redis errors admit every request: a Redis outage
/// opens the login limit to password guessing.
fn login_open_on_redis_errors(
    config: &Config,
    i: usize,
    route: &RouteConfig,
    found: &mut Vec<Warning>,
) {
    let allow = config
        .store
        .as_ref()
        .and_then(|s| s.redis.as_ref())
        .is_some_and(|redis| redis.on_error == OnStoreError::Allow);
    if !allow || !is_login(route) {
        return;
    }
    if let Some(j) = route
        .rate_limits
        .iter()
        .position(|limit| limit.scope == LimitScope::Global)
    {
        found.push(Warning {
            path: format!("routes[{i}].rate_limits[{j}]"),
            message: "a global limit on a login route with `store.redis.on_error: allow`: while \
                      Redis is unreachable every request is admitted, a window for password \
                      guessing; use `on_error: local` (the default) or `deny`"
                .to_owned(),
        });
    }
}

/// A route that takes logins, by its name or its path.
fn is_login(route: &RouteConfig) -> bool {
    let path = match &route.matcher.path {
        PathMatch::Prefix(p) | PathMatch::Exact(p) => p.as_str(),
    };
    let words = ["login", "signin", "sign-in", "auth", "token", "password"];
    let name = route.name.to_ascii_lowercase();
    let path = path.to_ascii_lowercase();
    words.iter().any(|w| name.contains(w) || path.contains(w))
}
