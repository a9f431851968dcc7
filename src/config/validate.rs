//! Step 2 of loading: raw values become the runtime types of [`super`], which cannot hold a
//! bad value.
//!
//! Every check runs, even after one has failed, so that one `sluice check` shows every problem
//! of a file. Each error names its field path and is placed in the file by the context
//! ([`cx::Cx`]), which also checks the value formats every section shares. One file per
//! section of the file: `server` (with `server.tls` and the listeners' addresses), `admin`,
//! `store` (`store.redis`, `store.tasks`), `upstream` (with `concurrency`), `route` (with
//! `match`), `limit` (`rate_limits`) and `defer`. Every default and bound is the runtime type's
//! (see [`super`]). What this build cannot do (a build without the `redis` feature and
//! `scope: global`) is refused in one place, [`reject_unbuilt`].

mod admin;
mod cx;
mod defer;
mod limit;
mod route;
mod server;
mod store;
mod upstream;

use std::path::Path;

use self::cx::Cx;
use super::error::ConfigError;
use super::raw::RawConfig;
use super::Config;

/// Converts `raw` into a [`Config`]. `text` is the file's YAML (to place errors), `path` its name.
///
/// # Errors
/// [`ConfigError::Invalid`] with every problem found, sorted by position in the file.
pub(crate) fn validate(raw: RawConfig, text: &str, path: &Path) -> Result<Config, ConfigError> {
    let mut cx = Cx::new(text);
    reject_unbuilt(&raw, &mut cx);
    let config = cx.config(raw, path);
    cx.finish(config, path)
}

/// Refuses what the contract describes but this build cannot do. A build without the `redis`
/// cargo feature has no Redis client: it refuses `scope: global` limits and `defer` (`store` itself is
/// validated and accepted, unused, so one config file serves both builds).
fn reject_unbuilt(raw: &RawConfig, cx: &mut Cx) {
    #[cfg(not(feature = "redis"))]
    for (i, route) in raw.routes.iter().flatten().enumerate() {
        if route.defer.is_some() {
            cx.error(
                &format!("routes[{i}].defer"),
                "defer needs Redis support, which this build of sluice lacks (built without the cargo feature `redis`)",
            );
        }
        for (j, limit) in route.rate_limits.iter().flatten().enumerate() {
            if limit.scope.as_deref().map(str::trim) == Some("global") {
                cx.error(
                    &format!("routes[{i}].rate_limits[{j}].scope"),
                    "scope: global needs Redis support, which this build of sluice lacks (built without the cargo feature `redis`)",
                );
            }
        }
    }
    #[cfg(feature = "redis")]
    let _ = (raw, cx);
}

/// Which stores the file configures: global limits need `redis`, deferral `tasks` (given, or
/// `redis`).
#[derive(Clone, Copy)]
struct Stores {
    redis: bool,
    tasks: bool,
}

// === impl Cx: the whole file ===

impl Cx {
    /// Every section of `raw`, checked; `None` when one of them is invalid (its errors
    /// recorded).
    fn config(&mut self, raw: RawConfig, path: &Path) -> Option<Config> {
        let server = match &raw.server {
            Some(server) => self.server(server),
            None => self.missing("server", "a mapping with at least `listen`"),
        };
        if let Some(server) = &server {
            // Route paths are put in the form requests are matched in, under the same setting.
            self.escaped_slashes = server.escaped_slashes;
        }
        let admin = raw.admin.as_ref().map(|admin| self.admin(admin));
        let store = raw.store.as_ref().map(|store| self.store(store));

        let raw_upstreams = raw.upstreams.map(|u| u.0).unwrap_or_default();
        let upstreams: Vec<_> = raw_upstreams
            .iter()
            .map(|(name, upstream)| self.upstream(name, upstream))
            .collect();
        // Upstream names are unique: the parser refuses a mapping with a duplicate key.

        let names: Vec<&str> = raw_upstreams
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        let stores = Stores {
            redis: raw.store.as_ref().is_some_and(|s| s.redis.is_some()),
            tasks: raw
                .store
                .as_ref()
                .is_some_and(|s| s.redis.is_some() || s.tasks.is_some()),
        };
        let routes = self.routes(raw.routes.as_deref().unwrap_or_default(), &names, stores);

        if let Some(server) = &server {
            self.listeners(server, admin.as_ref().and_then(Option::as_ref));
        }
        Some(Config {
            source: path.to_path_buf(),
            server: server?,
            admin: present(admin)?,
            store: present(store)?,
            upstreams: upstreams.into_iter().collect::<Option<_>>()?,
            routes: routes.into_iter().collect::<Option<_>>()?,
        })
    }
}

/// An optional section: absent → `Some(None)`; present and valid → `Some(Some(v))`; present and
/// invalid → `None`.
fn present<T>(section: Option<Option<T>>) -> Option<Option<T>> {
    match section {
        None => Some(None),
        Some(value) => value.map(Some),
    }
}

/// `parent.key`, or `key` at the top level.
fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}
