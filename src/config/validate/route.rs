//! `routes:`: each route's name, upstream, priority and mode, and its `match:` (host, path,
//! methods). Its `rate_limits`, `concurrency` and `defer` have files of their own.

use std::sync::Arc;
use std::time::Duration;

use http::Method;

use super::cx::{is_host_name, Cx};
use super::{join, present, Stores};
use crate::canonical;
use crate::config::raw::{RawMatch, RawRoute};
use crate::config::{Config, HostMatch, Mode, PathMatch, Priority, RouteConfig, RouteMatch};

// === impl Cx: routes ===

impl Cx {
    /// `routes:`: at least one, names unique.
    pub(super) fn routes(
        &mut self,
        raw: &[RawRoute],
        upstreams: &[&str],
        stores: Stores,
    ) -> Vec<Option<RouteConfig>> {
        if raw.is_empty() {
            self.error(
                "routes",
                "at least one route is required: with none, every request gets 404",
            );
        }
        let routes = raw
            .iter()
            .enumerate()
            .map(|(i, route)| self.route(&format!("routes[{i}]"), route, upstreams, stores))
            .collect();
        self.unique(
            raw.iter()
                .enumerate()
                .filter_map(|(i, r)| Some((format!("routes[{i}].name"), r.name.as_deref()?))),
            "route",
        );
        routes
    }

    /// A route's `priority` and `mode`, each defaulted.
    fn priority_and_mode(&mut self, at: &str, raw: &RawRoute) -> (Option<Priority>, Option<Mode>) {
        let priority = self.choice(
            &join(at, "priority"),
            raw.priority.as_deref(),
            &[
                ("critical", Priority::Critical),
                ("high", Priority::High),
                ("normal", Priority::Normal),
                ("low", Priority::Low),
            ],
            Priority::default(),
        );
        let mode = self.choice(
            &join(at, "mode"),
            raw.mode.as_deref(),
            &[("enforce", Mode::Enforce), ("shadow", Mode::Shadow)],
            Mode::default(),
        );
        (priority, mode)
    }

    fn route(
        &mut self,
        at: &str,
        raw: &RawRoute,
        upstreams: &[&str],
        stores: Stores,
    ) -> Option<RouteConfig> {
        let name = match raw.name.as_deref() {
            Some(name) => self.name(&join(at, "name"), name),
            None => self.missing(&join(at, "name"), "a unique name like create-order"),
        };
        let matcher = match &raw.matcher {
            Some(matcher) => self.matcher(&join(at, "match"), matcher),
            None => Some(RouteMatch::default()),
        };
        let upstream = self.upstream_ref(&join(at, "upstream"), raw.upstream.as_deref(), upstreams);
        let (priority, mode) = self.priority_and_mode(at, raw);
        let limits = self.rate_limits(at, raw.rate_limits.as_deref(), stores.redis);
        let concurrency = raw
            .concurrency
            .as_ref()
            .map(|c| self.route_concurrency(&join(at, "concurrency"), c));
        let defer = raw
            .defer
            .as_ref()
            .map(|d| self.defer(&join(at, "defer"), d, stores.tasks, mode));
        let (max_upgraded, upgraded_idle_timeout) = self.upgraded(at, raw);
        Some(RouteConfig {
            name: name?,
            matcher: matcher?,
            upstream: upstream?,
            upstream_name: Arc::from(upstreams[upstream?]),
            priority: priority?,
            mode: mode?,
            rate_limits: limits.into_iter().collect::<Option<_>>()?,
            concurrency: present(concurrency)?,
            defer: present(defer)?,
            max_upgraded: max_upgraded?,
            upgraded_idle_timeout: upgraded_idle_timeout?,
        })
    }

    /// `max_upgraded` and `upgraded_idle_timeout`: what a route's upgraded connections may hold.
    fn upgraded(&mut self, at: &str, raw: &RawRoute) -> (Option<usize>, Option<Duration>) {
        let max_upgraded = self.whole(
            &join(at, "max_upgraded"),
            raw.max_upgraded,
            RouteConfig::DEFAULT_MAX_UPGRADED,
            (0, Config::MAX_COUNT),
        );
        let upgraded_idle_timeout = self.duration(
            &join(at, "upgraded_idle_timeout"),
            raw.upgraded_idle_timeout.as_deref(),
            RouteConfig::DEFAULT_UPGRADED_IDLE_TIMEOUT,
            false,
        );
        (max_upgraded, upgraded_idle_timeout)
    }

    /// The index of the upstream a route names.
    fn upstream_ref(&mut self, at: &str, raw: Option<&str>, upstreams: &[&str]) -> Option<usize> {
        let Some(wanted) = raw else {
            return self.missing(at, "the name of an upstream");
        };
        if let Some(index) = upstreams.iter().position(|u| *u == wanted) {
            return Some(index);
        }
        let known = if upstreams.is_empty() {
            "none are defined under `upstreams`".to_owned()
        } else {
            format!("known upstreams: {}", upstreams.join(", "))
        };
        self.fail(at, format!("unknown upstream {wanted:?}; {known}"))
    }

    fn matcher(&mut self, at: &str, raw: &RawMatch) -> Option<RouteMatch> {
        let host = raw.host.as_deref().map(|h| self.host(&join(at, "host"), h));
        let prefix = raw.path_prefix.as_deref().map(|p| {
            self.path(&join(at, "path_prefix"), p)
                .map(|p| prefix_path(&p))
        });
        let exact = raw
            .path_exact
            .as_deref()
            .map(|p| self.path(&join(at, "path_exact"), p));
        let path = match (prefix, exact) {
            (Some(_), Some(_)) => self.fail(
                at,
                "path_prefix and path_exact are mutually exclusive; keep one",
            ),
            (Some(prefix), None) => prefix.map(PathMatch::Prefix),
            (None, Some(exact)) => exact.map(PathMatch::Exact),
            (None, None) => Some(PathMatch::default()),
        };
        let methods = raw
            .methods
            .as_ref()
            .map(|list| self.methods(&join(at, "methods"), list));
        Some(RouteMatch {
            host: present(host)?,
            path: path?,
            methods: present(methods)?,
        })
    }
}

// === impl Cx: match values ===

impl Cx {
    /// `api.example.com` or `*.example.com`, lower-cased.
    fn host(&mut self, at: &str, raw: &str) -> Option<HostMatch> {
        let host = raw.trim().to_ascii_lowercase();
        if host.contains('/') {
            return self.fail(
                at,
                format!("a host must not contain a path (use path_prefix), found {raw:?}"),
            );
        }
        if host.contains(':') {
            return self.fail(
                at,
                format!(
                    "a host must not contain a port (hosts are matched without it), found {raw:?}"
                ),
            );
        }
        let (wildcard, name) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host.as_str()),
        };
        if name.contains('*') {
            return self.fail(
                at,
                format!("only a leading wildcard is allowed, as in *.example.com (omit host to match any), found {raw:?}"),
            );
        }
        if !is_host_name(name) {
            return self.fail(
                at,
                format!(
                    "expected a host name like api.example.com or *.example.com, found {raw:?}"
                ),
            );
        }
        Some(if wildcard {
            HostMatch::Suffix(format!(".{name}"))
        } else {
            HostMatch::Exact(name.to_owned())
        })
    }

    /// A path to match: starts with `/`, no query, no spaces, no `;` parameters (requests are
    /// matched without theirs); returned in canonical form, the form requests are matched in
    /// (`/%6cogin` → `/login`, `/café` → `/caf%C3%A9`).
    fn path(&mut self, at: &str, raw: &str) -> Option<String> {
        if !raw.starts_with('/') {
            return self.fail(at, format!("a path must start with /, found {raw:?}"));
        }
        if raw.contains(['?', '#']) {
            return self.fail(
                at,
                format!("a path must not contain a query or fragment, found {raw:?}"),
            );
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return self.fail(
                at,
                format!("a path must not contain spaces or control characters, found {raw:?}"),
            );
        }
        if raw.contains(';') {
            return self.fail(
                at,
                format!("a path must not contain ; parameters (requests are matched without theirs), found {raw:?}"),
            );
        }
        match canonical::path(raw, self.escaped_slashes) {
            Ok(path) => Some(path.into_owned()),
            Err(err) => {
                let hint = match err {
                    canonical::NotCanonical::EscapedSlash => {
                        " (server.escaped_slashes: keep would allow them)"
                    }
                    _ => "",
                };
                self.fail(
                    at,
                    format!("{err}, so no request can match it{hint}: {raw:?}"),
                )
            }
        }
    }

    fn methods(&mut self, at: &str, raw: &[String]) -> Option<Vec<Method>> {
        if raw.is_empty() {
            return self.fail(
                at,
                "must list at least one method; omit `methods` to match all",
            );
        }
        let parsed: Vec<Option<Method>> = raw
            .iter()
            .enumerate()
            .map(|(i, m)| {
                Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
                    .ok()
                    .or_else(|| {
                        self.fail(
                            &format!("{at}[{i}]"),
                            format!("expected an HTTP method like GET or POST, found {m:?}"),
                        )
                    })
            })
            .collect();
        let mut methods: Vec<Method> = Vec::with_capacity(parsed.len());
        for method in parsed {
            let method = method?;
            if !methods.contains(&method) {
                methods.push(method);
            }
        }
        Some(methods)
    }
}

/// A prefix without its trailing slash (`/orders/` matches as `/orders`), except `/` itself.
fn prefix_path(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    }
}
