//! Step 2 of loading: raw values become the runtime types of [`super`], which cannot hold a
//! bad value.
//!
//! Every check runs, even after one has failed, so that one `sluice check` shows every problem
//! of a file. Each error names its field path and is placed in the file by [`Locator`].
//! What this build cannot do (a build without the `redis` feature and `scope: global`) is
//! refused in one place, [`reject_unbuilt`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Uri};
use http::{HeaderName, Method};
use ipnet::IpNet;

use super::error::{ConfigError, FieldError};
use super::locate::Locator;
use super::raw::{
    Int, RawAdaptive, RawAdmin, RawConcurrency, RawConfig, RawDefer, RawMatch, RawRateLimit,
    RawRedis, RawRoute, RawServer, RawStore, RawTasks, RawTls, RawUpstream, Size,
};
use super::{
    AdaptiveConfig, AdminConfig, AdminToken, ByteSize, CapSize, ClientLimits, ConcurrencyConfig,
    Config, DeferConfig, DeferWhen, EscapedSlashes, HostMatch, KeySpec, Mode, OnStoreError,
    PathMatch, Priority, Rate, RateLimitConfig, RedisConfig, RedisTarget, RouteConfig, RouteMatch,
    Scope, ServerConfig, StoreConfig, TaskStoreConfig, TlsConfig, UpstreamConfig,
};
use crate::canonical;
use crate::net::tls::Acceptor;

/// `server.header_read_timeout` when absent.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// `server.shutdown_grace` when absent.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// `server.max_connections` when absent.
const MAX_CONNECTIONS: i64 = 10_000;
/// `server.max_concurrent_streams` when absent.
const MAX_CONCURRENT_STREAMS: i64 = 100;
/// `server.ipv6_key_prefix` when absent: a client usually owns a whole /64.
const IPV6_KEY_PREFIX: i64 = 64;
/// `upstreams.*.connect_timeout` when absent.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// `upstreams.*.timeout` when absent.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// `concurrency.queue_timeout` when absent.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
/// `concurrency.adaptive.min_inflight` when absent (the contract's example).
const ADAPTIVE_MIN_INFLIGHT: i64 = 2;
/// `concurrency.adaptive.max_inflight` when absent (the contract's example).
const ADAPTIVE_MAX_INFLIGHT: i64 = 256;
/// Upper bound of both `concurrency.adaptive` bounds.
const ADAPTIVE_INFLIGHT_MAX: i64 = 1_000_000;
/// `store.redis.timeout` when absent.
const REDIS_TIMEOUT: Duration = Duration::from_millis(20);
/// `store.tasks.timeout` when absent (also when `store.tasks` is): one task write in all, every
/// piece of its body. Far above a limit call's: a task is worth waiting for, a 202 is not sent
/// before Redis has it, and its calls run on connections of their own.
const TASKS_TIMEOUT: Duration = Duration::from_secs(2);
/// `server.max_header_bytes` when absent: NGINX allows 4 × 8 KiB, HAProxy 16 KiB, Envoy 60 KiB.
const MAX_HEADER_BYTES: u64 = 64 << 10;
/// `server.max_request_body` when absent.
const MAX_REQUEST_BODY: u64 = 16 << 20;
/// `server.request_buffer` when absent.
const REQUEST_BUFFER: u64 = 1 << 20;
/// `server.request_body_timeout` when absent.
const REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// `server.response_buffer` when absent.
const RESPONSE_BUFFER: u64 = 1 << 20;
/// `server.send_timeout` when absent (NGINX's `send_timeout` is 60 s).
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// `server.max_buffered_bytes` when absent.
const MAX_BUFFERED_BYTES: u64 = 256 << 20;

/// The longest duration any field takes: no timer sluice arms can then overflow, and a day is
/// more than any timeout needs.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// The largest size any field takes (a body, a buffer, the buffering budget).
const MAX_SIZE: u64 = 1 << 30;
/// The largest count of connections, in-flight requests or queue places.
const MAX_COUNT: i64 = 10_000_000;
/// The most worker threads.
const MAX_WORKERS: i64 = 1024;
/// hyper reads a request head into a buffer of at least 8 KiB: a smaller limit cannot be kept.
const MIN_HEADER_BYTES: u64 = 8 << 10;
/// Most seed nodes `store.redis.cluster` may list: a bound, not a need (a few are enough).
const MAX_CLUSTER_SEEDS: usize = 64;
/// Largest `rate_limits[].lease` (it is also at most the limit's burst).
const MAX_LEASE: u32 = 1_000_000;
/// The longest `admin.token_file` read: a token is tens of bytes.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;
/// The longest host name (RFC 1035), for `admin.allowed_hosts`.
const MAX_HOST_NAME: usize = 253;
/// `rate_limits[].max_keys` when absent.
const MAX_KEYS: i64 = 1_000_000;
/// Largest `rate_limits[].max_keys`: 5 to 8.5 GB of keys for one limit (50 to 85 bytes a key).
const MAX_KEYS_BOUND: i64 = 100_000_000;
/// `defer.max_body` when absent.
const DEFER_MAX_BODY: u64 = 1 << 20;
/// `defer.attempts` when absent.
const DEFER_ATTEMPTS: i64 = 4;
/// Most `defer.attempts`: with waits capped at a minute, 100 attempts retry for over an hour and
/// a half; more is a task that should have been declared dead.
const DEFER_MAX_ATTEMPTS: i64 = 100;
/// `defer.backoff` when absent.
const DEFER_BACKOFF: Duration = Duration::from_secs(1);
/// Longest `defer.backoff`: every wait between attempts is at most a minute (the contract), so a
/// longer first wait could not be kept.
const DEFER_MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Largest `defer.max_body`: a task's body goes to Redis in pieces and is held whole by a
/// deliverer; 64 MiB bounds both.
const DEFER_MAX_MAX_BODY: u64 = 64 << 20;
/// `defer.max_tasks` when absent.
const DEFER_MAX_TASKS: i64 = 100_000;
/// `defer.backoff_max` when absent: a task keeps being tried at least every five minutes while
/// the upstream is down.
const DEFER_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// `defer.ttl` when absent.
const DEFER_TTL: Duration = Duration::from_secs(24 * 3600);
/// Shortest `defer.ttl`: a task must live long enough for one delivery.
const DEFER_MIN_TTL: Duration = Duration::from_secs(1);
/// Longest `defer.ttl`, beyond the 24 h of other durations: work accepted before a weekend
/// outage of the upstream should still be there on Monday. A week is the retention queue
/// services default to (Kafka's `log.retention.hours`); Redis holds every queued body that long.
const DEFER_MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Converts `raw` into a [`Config`]. `text` is the file's YAML (to place errors), `path` its name.
///
/// # Errors
/// [`ConfigError::Invalid`] with every problem found, sorted by position in the file.
pub(crate) fn validate(raw: RawConfig, text: &str, path: &Path) -> Result<Config, ConfigError> {
    let mut cx = Cx {
        locator: Locator::new(text),
        errors: Vec::new(),
        escaped_slashes: EscapedSlashes::default(),
    };
    reject_unbuilt(&raw, &mut cx);

    let server = match &raw.server {
        Some(server) => cx.server(server),
        None => cx.missing("server", "a mapping with at least `listen`"),
    };
    if let Some(server) = &server {
        // Route paths are put in the form requests are matched in, under the same setting.
        cx.escaped_slashes = server.escaped_slashes;
    }
    let admin = raw.admin.as_ref().map(|admin| cx.admin(admin));
    let store = raw.store.as_ref().map(|store| cx.store(store));

    let raw_upstreams = raw.upstreams.map(|u| u.0).unwrap_or_default();
    let upstreams: Vec<_> = raw_upstreams
        .iter()
        .map(|(name, upstream)| cx.upstream(name, upstream))
        .collect();
    // Upstream names are unique: the parser refuses a mapping with a duplicate key.

    let names: Vec<&str> = raw_upstreams
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    let has_store = Stores {
        redis: raw.store.as_ref().is_some_and(|s| s.redis.is_some()),
        tasks: raw
            .store
            .as_ref()
            .is_some_and(|s| s.redis.is_some() || s.tasks.is_some()),
    };
    let raw_routes = raw.routes.unwrap_or_default();
    let routes = cx.routes(&raw_routes, &names, has_store);

    if let Some(server) = &server {
        cx.listeners(server, admin.as_ref().and_then(Option::as_ref));
    }

    let built = (|| {
        Some(Config {
            source: path.to_path_buf(),
            server: server?,
            admin: present(admin)?,
            store: present(store)?,
            upstreams: upstreams.into_iter().collect::<Option<_>>()?,
            routes: routes.into_iter().collect::<Option<_>>()?,
        })
    })();
    match built {
        Some(config) if cx.errors.is_empty() => Ok(config),
        _ => {
            let mut errors = cx.errors;
            if errors.is_empty() {
                // Every failed check pushes an error; this only guards that invariant.
                errors.push(FieldError {
                    line: None,
                    column: None,
                    path: String::new(),
                    message: "invalid config".to_owned(),
                });
            }
            errors.sort_by_key(|e| (e.line.is_none(), e.line, e.column));
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                errors,
            })
        }
    }
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

/// An optional section: absent → `Some(None)`; present and valid → `Some(Some(v))`; present and
/// invalid → `None`.
fn present<T>(section: Option<Option<T>>) -> Option<Option<T>> {
    match section {
        None => Some(None),
        Some(value) => value.map(Some),
    }
}

/// A value for an error message, marked when it is a default rather than the file's.
fn shown(value: NonZeroUsize, defaulted: bool) -> String {
    if defaulted {
        format!("{value} (the default)")
    } else {
        value.to_string()
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

/// Which stores the file configures: global limits need `redis`, deferral `tasks` (given, or
/// `redis`).
#[derive(Clone, Copy)]
struct Stores {
    redis: bool,
    tasks: bool,
}

/// Where a store connects, the CA file it names and that file's certificates.
type RedisLink = (RedisTarget, Option<PathBuf>, Option<Arc<[u8]>>);

/// What `store.tasks` said.
enum TaskStore {
    /// A server or cluster of its own.
    Own(TaskStoreConfig),
    /// Only a timeout: `store.redis`'s server, on connections of its own.
    Inherit { timeout: Duration },
    /// Broken (errors recorded).
    Invalid,
}

/// The validation context: where errors go, and how they are placed in the file.
struct Cx {
    locator: Locator,
    errors: Vec<FieldError>,
    /// `server.escaped_slashes` once read: route paths are normalised under it.
    escaped_slashes: EscapedSlashes,
}

// === impl Cx: errors ===

impl Cx {
    /// Records an error at the field `path`, placed at that field (or its nearest parent).
    fn error(&mut self, path: &str, message: impl Into<String>) {
        let place = self.locator.find(path);
        self.errors.push(FieldError {
            line: place.map(|(line, _)| line),
            column: place.map(|(_, column)| column),
            path: path.to_owned(),
            message: message.into(),
        });
    }

    /// Records an error and returns `None`, for `return cx.fail(..)`.
    fn fail<T>(&mut self, path: &str, message: impl Into<String>) -> Option<T> {
        self.error(path, message);
        None
    }

    /// A required field is absent.
    fn missing<T>(&mut self, path: &str, expected: &str) -> Option<T> {
        self.fail(
            path,
            format!("required field is missing; expected {expected}"),
        )
    }

    /// Reports every name used a second time; `names` yields (path of the name, name).
    fn unique<'a>(&mut self, names: impl Iterator<Item = (String, &'a str)>, what: &str) {
        let mut seen: HashMap<&str, String> = HashMap::new();
        for (path, name) in names {
            match seen.get(name) {
                Some(first) => {
                    let message = format!("duplicate {what} name {name:?} (first used at {first})");
                    self.error(&path, message);
                }
                None => {
                    seen.insert(name, path);
                }
            }
        }
    }

    /// `routes:`: at least one, names unique.
    fn routes(
        &mut self,
        raw: &[RawRoute],
        upstreams: &[&str],
        has_store: Stores,
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
            .map(|(i, route)| self.route(&format!("routes[{i}]"), route, upstreams, has_store))
            .collect();
        self.unique(
            raw.iter()
                .enumerate()
                .filter_map(|(i, r)| Some((format!("routes[{i}].name"), r.name.as_deref()?))),
            "route",
        );
        routes
    }

    /// Listeners must not collide (only those that parsed are compared).
    fn listeners(&mut self, server: &ServerConfig, admin: Option<&AdminConfig>) {
        let http = server.listen;
        if let Some(tls) = &server.tls {
            self.distinct("server.tls.listen", tls.listen, http, "server.listen");
        }
        if let Some(admin) = admin {
            self.distinct("admin.listen", admin.listen, http, "server.listen");
            if let Some(tls) = &server.tls {
                self.distinct(
                    "admin.listen",
                    admin.listen,
                    tls.listen,
                    "server.tls.listen",
                );
            }
        }
    }

    /// A second listener must not take the HTTP listener's address (port 0 = any free port,
    /// so two of them never collide).
    fn distinct(&mut self, path: &str, addr: SocketAddr, other: SocketAddr, other_path: &str) {
        if addr == other && addr.port() != 0 {
            self.error(
                path,
                format!("{addr} is already {other_path}; use another address"),
            );
        }
    }
}

// === impl Cx: sections ===

impl Cx {
    fn server(&mut self, raw: &RawServer) -> Option<ServerConfig> {
        let at = "server";
        let listen = match raw.listen.as_deref() {
            Some(listen) => self.socket_addr(&join(at, "listen"), listen),
            None => self.missing(&join(at, "listen"), "an address like 0.0.0.0:8080"),
        };
        let tls = raw.tls.as_ref().map(|tls| self.tls(tls));
        let trusted_proxies: Vec<Option<IpNet>> = raw
            .trusted_proxies
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, cidr)| self.cidr(&format!("{at}.trusted_proxies[{i}]"), cidr))
            .collect();
        let ipv6_key_prefix = self.number::<u8>(
            &join(at, "ipv6_key_prefix"),
            raw.ipv6_key_prefix.map_or(IPV6_KEY_PREFIX, |n| n.0),
            0,
            128,
        );
        let header_read_timeout = self.duration(
            &join(at, "header_read_timeout"),
            raw.header_read_timeout.as_deref(),
            HEADER_READ_TIMEOUT,
            false,
        );
        let max_connections = self.nonzero_usize(
            &join(at, "max_connections"),
            raw.max_connections.map_or(MAX_CONNECTIONS, |n| n.0),
        );
        let shutdown_grace = self.duration(
            &join(at, "shutdown_grace"),
            raw.shutdown_grace.as_deref(),
            SHUTDOWN_GRACE,
            true,
        );
        let workers = raw.workers.map(|n| {
            self.number::<usize>(&join(at, "workers"), n.0, 1, MAX_WORKERS)
                .and_then(NonZeroUsize::new)
        });
        let max_concurrent_streams = self.number::<u32>(
            &join(at, "max_concurrent_streams"),
            raw.max_concurrent_streams
                .map_or(MAX_CONCURRENT_STREAMS, |n| n.0),
            1,
            i64::from(u32::MAX),
        );
        let escaped_slashes = self.choice(
            &join(at, "escaped_slashes"),
            raw.escaped_slashes.as_deref(),
            &[
                ("reject", EscapedSlashes::Reject),
                ("keep", EscapedSlashes::Keep),
            ],
            EscapedSlashes::Reject,
        );
        let client = self.client_limits(raw);
        Some(ServerConfig {
            listen: listen?,
            tls: present(tls)?,
            trusted_proxies: trusted_proxies.into_iter().collect::<Option<_>>()?,
            ipv6_key_prefix: ipv6_key_prefix?,
            rate_limit_headers: raw.rate_limit_headers.unwrap_or(true),
            header_read_timeout: header_read_timeout?,
            max_connections: max_connections?,
            shutdown_grace: shutdown_grace?,
            workers: present(workers)?,
            max_concurrent_streams: max_concurrent_streams?,
            access_log: raw.access_log.unwrap_or(false),
            escaped_slashes: escaped_slashes?,
            client: client?,
        })
    }

    /// The `server` fields that bound what one client can hold: head and body sizes, buffers,
    /// body and send timeouts, connections per address.
    fn client_limits(&mut self, raw: &RawServer) -> Option<ClientLimits> {
        let at = "server";
        let size = |cx: &mut Self, field: &str, raw: &Option<Size>, default: u64, min: u64| {
            cx.size(&join(at, field), raw.as_ref(), default, min, MAX_SIZE)
        };
        let max_header_bytes = size(
            self,
            "max_header_bytes",
            &raw.max_header_bytes,
            MAX_HEADER_BYTES,
            MIN_HEADER_BYTES,
        );
        let max_request_body = size(
            self,
            "max_request_body",
            &raw.max_request_body,
            MAX_REQUEST_BODY,
            0,
        );
        let request_buffer = size(
            self,
            "request_buffer",
            &raw.request_buffer,
            REQUEST_BUFFER,
            0,
        );
        let response_buffer = size(
            self,
            "response_buffer",
            &raw.response_buffer,
            RESPONSE_BUFFER,
            0,
        );
        let max_buffered_bytes = size(
            self,
            "max_buffered_bytes",
            &raw.max_buffered_bytes,
            MAX_BUFFERED_BYTES,
            0,
        );
        let request_body_timeout = self.duration(
            &join(at, "request_body_timeout"),
            raw.request_body_timeout.as_deref(),
            REQUEST_BODY_TIMEOUT,
            false,
        );
        let send_timeout = self.duration(
            &join(at, "send_timeout"),
            raw.send_timeout.as_deref(),
            SEND_TIMEOUT,
            false,
        );
        let max_connections_per_ip = self.number::<usize>(
            &join(at, "max_connections_per_ip"),
            raw.max_connections_per_ip.map_or(0, |n| n.0),
            0,
            MAX_COUNT,
        );
        Some(ClientLimits {
            max_header_bytes: max_header_bytes?,
            max_request_body: max_request_body?,
            request_buffer: request_buffer?,
            request_body_timeout: request_body_timeout?,
            response_buffer: response_buffer?,
            send_timeout: send_timeout?,
            max_buffered_bytes: max_buffered_bytes?,
            max_connections_per_ip: max_connections_per_ip?,
        })
    }

    fn tls(&mut self, raw: &RawTls) -> Option<TlsConfig> {
        let at = "server.tls";
        let listen = match raw.listen.as_deref() {
            Some(listen) => self.socket_addr(&join(at, "listen"), listen),
            None => self.missing(&join(at, "listen"), "an address like 0.0.0.0:8443"),
        };
        let cert = self.file(
            &join(at, "cert"),
            raw.cert.as_deref(),
            "the path of a PEM certificate chain",
        );
        let key = self.file(
            &join(at, "key"),
            raw.key.as_deref(),
            "the path of a PEM private key",
        );
        // Read and check the files now, so that `sluice check` and a reload catch a bad
        // certificate, and what was checked is what the listener serves.
        let acceptor = match (&cert, &key) {
            (Some(cert), Some(key)) => match Acceptor::load(cert, key) {
                Ok(acceptor) => Some(acceptor),
                Err(errors) => {
                    for error in errors {
                        self.error(&join(at, error.field()), error.to_string());
                    }
                    None
                }
            },
            _ => None,
        };
        Some(TlsConfig {
            listen: listen?,
            cert: cert?,
            key: key?,
            acceptor: acceptor?,
        })
    }

    fn admin(&mut self, raw: &RawAdmin) -> Option<AdminConfig> {
        let listen = match raw.listen.as_deref() {
            Some(listen) => self.socket_addr("admin.listen", listen),
            None => self.missing("admin.listen", "an address like 127.0.0.1:9901"),
        };
        let allowed_hosts: Vec<Option<String>> = raw
            .allowed_hosts
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, host)| self.allowed_host(&format!("admin.allowed_hosts[{i}]"), host))
            .collect();
        let at = "admin.token_file";
        let token_file = match raw.token_file.as_deref() {
            None => Some(None),
            Some(path) => self
                .file(
                    at,
                    Some(path),
                    "the path of a file holding the bearer token",
                )
                .map(Some),
        };
        // Read now, like the TLS files: `sluice check` and a reload catch a missing or empty
        // file, and a reload is what makes a new token count.
        let token = match &token_file {
            Some(Some(path)) => self.token(at, path).map(Some),
            _ => Some(None),
        };
        Some(AdminConfig {
            listen: listen?,
            allowed_hosts: allowed_hosts.into_iter().collect::<Option<_>>()?,
            token_file: token_file?,
            token: token?,
        })
    }

    /// An `admin.allowed_hosts` entry: a host name, lower-cased, one trailing dot dropped.
    fn allowed_host(&mut self, at: &str, raw: &str) -> Option<String> {
        let host = raw.trim().to_ascii_lowercase();
        let host = host.strip_suffix('.').unwrap_or(&host);
        let label_ok = |label: &str| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if host.len() > MAX_HOST_NAME || !host.split('.').all(label_ok) {
            return self.fail(
                at,
                format!(
                    "expected a host name like sluice.internal, without scheme, port or path (IP literals and localhost are always allowed), found {raw:?}"
                ),
            );
        }
        Some(host.to_owned())
    }

    /// The bearer token in the file at `path` (`at` = its field): text, surrounding whitespace
    /// trimmed, not empty, printable ASCII without spaces (it travels in a header field). The
    /// messages never quote the file's content.
    fn token(&mut self, at: &str, path: &Path) -> Option<AdminToken> {
        use std::io::Read as _;
        let mut text = Vec::new();
        // One byte past the bound tells a file that is too long from one that fits; the bound
        // also keeps a mistaken path (a device, a huge file) from being read whole.
        let read = std::fs::File::open(path)
            .and_then(|file| file.take(MAX_TOKEN_FILE_BYTES + 1).read_to_end(&mut text));
        let shown = path.display();
        if let Err(err) = read {
            return self.fail(at, format!("cannot read {shown}: {err}"));
        }
        if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
            return self.fail(
                at,
                format!("{shown} is larger than {MAX_TOKEN_FILE_BYTES} bytes; expected a file holding only the token"),
            );
        }
        let Ok(text) = std::str::from_utf8(&text) else {
            return self.fail(at, format!("{shown} is not UTF-8 text"));
        };
        let token = text.trim();
        if token.is_empty() {
            return self.fail(
                at,
                format!("{shown} is empty; expected a file holding the bearer token"),
            );
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return self.fail(
                at,
                format!("the token in {shown} must be printable ASCII without spaces or control characters (it is sent as `Authorization: Bearer <token>`)"),
            );
        }
        Some(AdminToken::new(token))
    }

    fn store(&mut self, raw: &RawStore) -> Option<StoreConfig> {
        if raw.redis.is_none() && raw.tasks.is_none() {
            return self.missing(
                "store.redis",
                "a mapping with at least `url` (or store.tasks, for deferred tasks alone)",
            );
        }
        let redis = raw.redis.as_ref().map(|redis| self.redis(redis));
        let tasks = raw
            .tasks
            .as_ref()
            .map(|tasks| self.tasks(tasks, raw.redis.is_some()));
        let redis = redis.map_or(Some(None), |r| r.map(Some))?;
        let inherited = |timeout| {
            redis.as_ref().map(|r| TaskStoreConfig {
                target: r.target.clone(),
                ca: r.ca.clone(),
                ca_pem: r.ca_pem.clone(),
                timeout,
            })
        };
        let tasks = match tasks {
            None => inherited(TASKS_TIMEOUT),
            Some(TaskStore::Own(tasks)) => Some(tasks),
            Some(TaskStore::Inherit { timeout }) => inherited(timeout),
            Some(TaskStore::Invalid) => return None,
        };
        Some(StoreConfig { redis, tasks })
    }

    fn redis(&mut self, raw: &RawRedis) -> Option<RedisConfig> {
        let at = "store.redis";
        let link = self.redis_link(
            at,
            raw.url.as_deref(),
            raw.cluster.as_deref(),
            raw.ca.as_deref(),
        );
        let timeout = self.duration(
            &join(at, "timeout"),
            raw.timeout.as_deref(),
            REDIS_TIMEOUT,
            false,
        );
        let on_error = self.choice(
            &join(at, "on_error"),
            raw.on_error.as_deref(),
            &[
                ("local", OnStoreError::Local),
                ("allow", OnStoreError::Allow),
                ("deny", OnStoreError::Deny),
            ],
            OnStoreError::Local,
        );
        let (target, ca, ca_pem) = link?;
        Some(RedisConfig {
            target,
            ca,
            ca_pem,
            timeout: timeout?,
            on_error: on_error?,
        })
    }

    /// `store.tasks`: a server of its own, or `store.redis`'s (when it names none) with its own
    /// timeout.
    fn tasks(&mut self, raw: &RawTasks, has_redis: bool) -> TaskStore {
        let at = "store.tasks";
        let timeout = self.duration(
            &join(at, "timeout"),
            raw.timeout.as_deref(),
            TASKS_TIMEOUT,
            false,
        );
        if raw.url.is_none() && raw.cluster.is_none() {
            if !has_redis {
                self.error(
                    &join(at, "url"),
                    "expected a URL like redis://127.0.0.1:6380 (or `cluster`): store.redis, which tasks use by default, is not given",
                );
            }
            if raw.ca.is_some() {
                self.error(
                    &join(at, "ca"),
                    "ca is used only with store.tasks.url or .cluster; without them, tasks use store.redis and its ca",
                );
            }
            return match timeout {
                Some(timeout) if has_redis && raw.ca.is_none() => TaskStore::Inherit { timeout },
                _ => TaskStore::Invalid,
            };
        }
        let link = self.redis_link(
            at,
            raw.url.as_deref(),
            raw.cluster.as_deref(),
            raw.ca.as_deref(),
        );
        match (link, timeout) {
            (Some((target, ca, ca_pem)), Some(timeout)) => TaskStore::Own(TaskStoreConfig {
                target,
                ca,
                ca_pem,
                timeout,
            }),
            _ => TaskStore::Invalid,
        }
    }

    /// Where a store connects (`url` or `cluster`) and the certificates it trusts (`ca`), for
    /// the section at `at`.
    fn redis_link(
        &mut self,
        at: &str,
        url: Option<&str>,
        cluster: Option<&[String]>,
        ca: Option<&str>,
    ) -> Option<RedisLink> {
        let target = match (url.map(str::trim), cluster) {
            (Some(_), Some(_)) => self.fail(
                at,
                "url and cluster are mutually exclusive: url names one server, cluster the seed nodes of a Redis Cluster; keep one",
            ),
            (None, None) => self.missing(
                &join(at, "url"),
                "a URL like redis://127.0.0.1:6379 (or `cluster`: a list of Redis Cluster seed URLs)",
            ),
            (Some(url), None) => self
                .redis_url(&join(at, "url"), url)
                .map(RedisTarget::Server),
            (None, Some(seeds)) => self.cluster(&join(at, "cluster"), seeds),
        };
        let (ca, ca_pem) = match ca {
            None => (Some(None), None),
            Some(path) => {
                let ca_at = join(at, "ca");
                let file = self.file(
                    &ca_at,
                    Some(path),
                    "the path of a PEM file of CA certificates",
                );
                let pem = file.as_deref().and_then(|file| self.ca_file(&ca_at, file));
                if let Some(target) = target.as_ref().filter(|t| !t.is_tls()) {
                    let (field, example) = match target {
                        RedisTarget::Server(_) => ("url", "rediss://"),
                        RedisTarget::Cluster(_) => ("cluster", "rediss:// seeds"),
                    };
                    self.error(
                        &ca_at,
                        format!("ca is used only by TLS connections, and {at}.{field} does not ask for TLS (use {example}, or remove ca)"),
                    );
                }
                (file.map(Some), pem)
            }
        };
        Some((target?, ca?, ca_pem))
    }

    /// `store.redis.url`, or one seed of `store.redis.cluster`: a `redis://` / `rediss://` URL
    /// that the Redis client accepts (host, port, database, user and password), so that a typo
    /// is a config error rather than a Redis outage. Printed redacted: it may hold a password.
    fn redis_url(&mut self, at: &str, url: &str) -> Option<String> {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return self.fail(
                at,
                format!(
                    "expected a redis:// or rediss:// URL, found {:?}",
                    super::redact_url(url)
                ),
            );
        }
        if url.contains('#') {
            // redis-rs reads `#insecure` as "skip certificate checks", which this build cannot
            // do (the connection would fail at every attempt): say so now.
            return self.fail(
                at,
                format!(
                    "a URL fragment is not supported, found {:?}: sluice always verifies a rediss:// server (trust a private CA with store.redis.ca)",
                    super::redact_url(url)
                ),
            );
        }
        #[cfg(feature = "redis")]
        if redis::Client::open(url).is_err() {
            return self.fail(
                at,
                format!(
                    "not a valid Redis URL, found {:?}; expected redis://[user:password@]host[:port][/db] or rediss://…",
                    super::redact_url(url)
                ),
            );
        }
        #[cfg(not(feature = "redis"))]
        let _ = at;
        Some(url.to_owned())
    }

    /// `store.redis.cluster`: 1 to [`MAX_CLUSTER_SEEDS`] seed URLs, all with TLS or all without
    /// (the cluster client uses one mode for every node).
    fn cluster(&mut self, at: &str, raw: &[String]) -> Option<RedisTarget> {
        if raw.is_empty() {
            return self.fail(
                at,
                "must list at least one seed node, like [redis://10.0.0.1:6379, redis://10.0.0.2:6379]",
            );
        }
        if raw.len() > MAX_CLUSTER_SEEDS {
            return self.fail(
                at,
                format!(
                    "at most {MAX_CLUSTER_SEEDS} seed nodes, found {}; a few are enough: the client discovers the others",
                    raw.len()
                ),
            );
        }
        let seeds: Vec<Option<String>> = raw
            .iter()
            .enumerate()
            .map(|(i, url)| self.redis_url(&format!("{at}[{i}]"), url.trim()))
            .collect();
        let seeds: Vec<String> = seeds.into_iter().collect::<Option<_>>()?;
        let tls = seeds.iter().filter(|u| u.starts_with("rediss://")).count();
        if tls != 0 && tls != seeds.len() {
            return self.fail(
                at,
                "seed nodes mix redis:// and rediss://; a cluster is reached with TLS on every node or on none",
            );
        }
        #[cfg(feature = "redis")]
        if let Err(err) = redis::cluster::ClusterClient::new(seeds.iter().map(String::as_str)) {
            // The client's own checks (e.g. different passwords among the seeds); its message
            // names no password.
            return self.fail(at, format!("not a usable list of seed nodes: {err}"));
        }
        Some(RedisTarget::Cluster(seeds))
    }

    /// The PEM file of `store.redis.ca`, read now (so that `sluice check` and a reload catch a
    /// bad file): at least one certificate, and nothing that fails to parse.
    fn ca_file(&mut self, at: &str, path: &Path) -> Option<Arc<[u8]>> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::CertificateDer;

        let pem = match std::fs::read(path) {
            Ok(pem) => pem,
            Err(err) => {
                return self.fail(at, format!("cannot read {}: {err}", path.display()));
            }
        };
        let mut certs = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            match cert {
                Ok(_) => certs += 1,
                Err(err) => {
                    return self.fail(
                        at,
                        format!("{} is not a valid PEM file: {err}", path.display()),
                    );
                }
            }
        }
        if certs == 0 {
            return self.fail(
                at,
                format!(
                    "{} holds no certificate (expected PEM blocks -----BEGIN CERTIFICATE-----)",
                    path.display()
                ),
            );
        }
        Some(Arc::from(pem))
    }

    fn upstream(&mut self, name: &str, raw: &RawUpstream) -> Option<UpstreamConfig> {
        let at = format!("upstreams.{name}");
        let checked_name = self.name(&at, name);
        let endpoints: Vec<Option<Authority>> = match &raw.endpoints {
            None => vec![self.missing(
                &join(&at, "endpoints"),
                "a list of URLs like [http://127.0.0.1:3000]",
            )],
            Some(list) if list.is_empty() => vec![self.fail(
                &join(&at, "endpoints"),
                "at least one endpoint is required, like [http://127.0.0.1:3000]",
            )],
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(i, url)| self.endpoint(&format!("{at}.endpoints[{i}]"), url))
                .collect(),
        };
        let connect_timeout = self.duration(
            &join(&at, "connect_timeout"),
            raw.connect_timeout.as_deref(),
            CONNECT_TIMEOUT,
            false,
        );
        let timeout = self.duration(
            &join(&at, "timeout"),
            raw.timeout.as_deref(),
            UPSTREAM_TIMEOUT,
            false,
        );
        let concurrency = raw
            .concurrency
            .as_ref()
            .map(|c| self.concurrency(&join(&at, "concurrency"), c));
        Some(UpstreamConfig {
            name: checked_name?,
            endpoints: endpoints.into_iter().collect::<Option<_>>()?,
            connect_timeout: connect_timeout?,
            timeout: timeout?,
            concurrency: present(concurrency)?,
        })
    }

    fn concurrency(&mut self, at: &str, raw: &RawConcurrency) -> Option<ConcurrencyConfig> {
        let size = match (raw.max_inflight, &raw.adaptive) {
            (Some(n), None) => self
                .nonzero_usize(&join(at, "max_inflight"), n.0)
                .map(CapSize::Fixed),
            (None, Some(adaptive)) => self
                .adaptive(&join(at, "adaptive"), adaptive)
                .map(CapSize::Adaptive),
            (Some(_), Some(_)) => self.fail(
                at,
                "max_inflight and adaptive are mutually exclusive; keep one",
            ),
            (None, None) => self.missing(
                &join(at, "max_inflight"),
                "a number of requests, at least 1 (or `adaptive:` for a cap that follows the upstream's latency)",
            ),
        };
        let queue = self.number::<usize>(
            &join(at, "queue"),
            raw.queue.map_or(0, |n| n.0),
            0,
            MAX_COUNT,
        );
        let queue_timeout = self.duration(
            &join(at, "queue_timeout"),
            raw.queue_timeout.as_deref(),
            QUEUE_TIMEOUT,
            false,
        );
        Some(ConcurrencyConfig {
            size: size?,
            queue: queue?,
            queue_timeout: queue_timeout?,
        })
    }

    /// `adaptive:` — each bound in 1..=1000000, defaults 2 and 256, `min_inflight` ≤
    /// `max_inflight`.
    fn adaptive(&mut self, at: &str, raw: &RawAdaptive) -> Option<AdaptiveConfig> {
        let mut bound = |field: &str, value: Option<Int>, default: i64| {
            let n = value.map_or(default, |n| n.0);
            self.number::<usize>(&join(at, field), n, 1, ADAPTIVE_INFLIGHT_MAX)
                .and_then(NonZeroUsize::new)
        };
        let min_inflight = bound("min_inflight", raw.min_inflight, ADAPTIVE_MIN_INFLIGHT);
        let max_inflight = bound("max_inflight", raw.max_inflight, ADAPTIVE_MAX_INFLIGHT);
        let (min_inflight, max_inflight) = (min_inflight?, max_inflight?);
        if min_inflight > max_inflight {
            let (min_shown, max_shown) = (
                shown(min_inflight, raw.min_inflight.is_none()),
                shown(max_inflight, raw.max_inflight.is_none()),
            );
            return self.fail(
                &join(at, "min_inflight"),
                format!("must be at most max_inflight; found min_inflight {min_shown} > max_inflight {max_shown}"),
            );
        }
        Some(AdaptiveConfig {
            min_inflight,
            max_inflight,
        })
    }

    fn route(
        &mut self,
        at: &str,
        raw: &RawRoute,
        upstreams: &[&str],
        has_store: Stores,
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
        let priority = self.choice(
            &join(at, "priority"),
            raw.priority.as_deref(),
            &[
                ("critical", Priority::Critical),
                ("high", Priority::High),
                ("normal", Priority::Normal),
                ("low", Priority::Low),
            ],
            Priority::Normal,
        );
        let mode = self.choice(
            &join(at, "mode"),
            raw.mode.as_deref(),
            &[("enforce", Mode::Enforce), ("shadow", Mode::Shadow)],
            Mode::Enforce,
        );
        let raw_limits = raw.rate_limits.as_deref().unwrap_or_default();
        let limits: Vec<Option<RateLimitConfig>> = raw_limits
            .iter()
            .enumerate()
            .map(|(i, limit)| {
                self.rate_limit(&format!("{at}.rate_limits[{i}]"), i, limit, has_store.redis)
            })
            .collect();
        self.unique_limit_names(at, raw_limits);
        let concurrency = raw
            .concurrency
            .as_ref()
            .map(|c| self.concurrency(&join(at, "concurrency"), c));
        let defer = raw
            .defer
            .as_ref()
            .map(|d| self.defer(&join(at, "defer"), d, has_store.tasks, mode));
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
        })
    }

    /// `routes[].defer`: needs `store.tasks` or `store.redis` (the tasks live there) and
    /// `mode: enforce` (a shadow route forwards every request, so it has nothing to defer).
    fn defer(
        &mut self,
        at: &str,
        raw: &RawDefer,
        has_store: bool,
        mode: Option<Mode>,
    ) -> Option<DeferConfig> {
        if !has_store {
            self.error(
                at,
                "defer needs store.redis (or store.tasks), which is not configured: deferred requests are kept in Redis",
            );
        }
        if mode == Some(Mode::Shadow) {
            self.error(
                at,
                "defer does not combine with mode: shadow (a shadow route forwards every request); remove defer or use mode: enforce",
            );
        }
        let when = self.choice(
            &join(at, "when"),
            raw.when.as_deref(),
            &[
                ("overflow", DeferWhen::Overflow),
                ("always", DeferWhen::Always),
            ],
            DeferWhen::Overflow,
        );
        let max_body = self.size(
            &join(at, "max_body"),
            raw.max_body.as_ref(),
            DEFER_MAX_BODY,
            0,
            DEFER_MAX_MAX_BODY,
        );
        let attempts = self
            .number::<u32>(
                &join(at, "attempts"),
                raw.attempts.map_or(DEFER_ATTEMPTS, |n| n.0),
                1,
                DEFER_MAX_ATTEMPTS,
            )
            .and_then(NonZeroU32::new);
        let backoff = self.duration_within(
            &join(at, "backoff"),
            raw.backoff.as_deref(),
            DEFER_BACKOFF,
            (Duration::from_millis(1), DEFER_MAX_BACKOFF),
        );
        let ttl = self.duration_within(
            &join(at, "ttl"),
            raw.ttl.as_deref(),
            DEFER_TTL,
            (DEFER_MIN_TTL, DEFER_MAX_TTL),
        );
        let max_tasks = self.number::<u64>(
            &join(at, "max_tasks"),
            raw.max_tasks.map_or(DEFER_MAX_TASKS, |n| n.0),
            1,
            MAX_COUNT,
        );
        let backoff_max = self.duration_within(
            &join(at, "backoff_max"),
            raw.backoff_max.as_deref(),
            DEFER_BACKOFF_MAX,
            (Duration::from_millis(1), MAX_DURATION),
        );
        if let (Some(backoff), Some(backoff_max)) = (backoff, backoff_max) {
            if backoff_max < backoff {
                self.error(
                    &join(at, "backoff_max"),
                    format!(
                        "must be at least backoff ({}): it is the longest of the waits that start at backoff",
                        humantime::format_duration(backoff)
                    ),
                );
            }
        }
        Some(DeferConfig {
            when: when?,
            max_body: max_body?,
            attempts: attempts?,
            backoff: backoff?,
            ttl: ttl?,
            max_tasks: max_tasks?,
            backoff_max: backoff_max?,
        })
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

    /// Duplicate limit names of a route, explicit or defaulted (`limit-1` may clash with an
    /// explicit one).
    fn unique_limit_names(&mut self, at: &str, raw: &[RawRateLimit]) {
        let names: Vec<(String, String)> = raw
            .iter()
            .enumerate()
            .map(|(i, l)| match l.name.as_deref() {
                Some(name) => (format!("{at}.rate_limits[{i}].name"), name.to_owned()),
                None => (format!("{at}.rate_limits[{i}]"), format!("limit-{i}")),
            })
            .collect();
        self.unique(names.iter().map(|(p, n)| (p.clone(), n.as_str())), "limit");
    }

    /// Bounds the arithmetic of the buckets can hold: a token interval of at least 1 ns, and a
    /// refill time (burst × interval) governor can represent (2^62 ns, 146 years) — the Redis
    /// script's exact range is 2^53 ns (104 days).
    fn bucket_bounds(&mut self, at: &str, rate: Rate, burst: u32, scope: Scope) {
        let interval = rate.per.duration().as_nanos() / u128::from(rate.count.get());
        let refill = interval * u128::from(burst);
        let (max_refill, max_text): (u128, _) = match scope {
            Scope::Global => (1 << 53, "104 days with scope: global"),
            Scope::Local => (1 << 62, "146 years"),
        };
        if interval == 0 {
            self.error(
                &join(at, "rate"),
                format!("{rate} is more than one token per nanosecond"),
            );
        } else if refill > max_refill {
            let took = Duration::from_nanos(u64::try_from(refill).unwrap_or(u64::MAX));
            self.error(
                &join(at, "burst"),
                format!(
                    "burst {burst} at {rate} takes {} to refill; at most {max_text} is supported",
                    humantime::format_duration(took)
                ),
            );
        }
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

    fn rate_limit(
        &mut self,
        at: &str,
        index: usize,
        raw: &RawRateLimit,
        has_store: bool,
    ) -> Option<RateLimitConfig> {
        let name = match raw.name.as_deref() {
            Some(name) => self.name(&join(at, "name"), name),
            None => Some(Arc::from(format!("limit-{index}"))),
        };
        let key = match raw.key.as_deref() {
            Some(key) => self.key(&join(at, "key"), key),
            None => self.missing(&join(at, "key"), "global, client_ip or header:<Name>"),
        };
        let rate = match raw.rate.as_deref() {
            Some(rate) => match rate.parse::<Rate>() {
                Ok(rate) => Some(rate),
                Err(message) => self.fail(&join(at, "rate"), message),
            },
            None => self.missing(&join(at, "rate"), "a rate like 100/s, 20/m or 5/h"),
        };
        let burst = match (raw.burst, rate) {
            (Some(burst), _) => {
                self.number::<u32>(&join(at, "burst"), burst.0, 1, i64::from(u32::MAX))
            }
            (None, Some(rate)) => Some(rate.count.get()),
            (None, None) => None,
        };
        let scope = self.choice(
            &join(at, "scope"),
            raw.scope.as_deref(),
            &[("local", Scope::Local), ("global", Scope::Global)],
            Scope::Local,
        );
        if let (Some(rate), Some(burst), Some(scope)) = (rate, burst, scope) {
            self.bucket_bounds(at, rate, burst, scope);
        }
        if scope == Some(Scope::Global) && !has_store {
            self.error(
                &join(at, "scope"),
                "scope: global needs store.redis, which is not configured",
            );
        }
        let lease = self.lease(&join(at, "lease"), raw.lease, burst, scope);
        let max_keys = self
            .number::<usize>(
                &join(at, "max_keys"),
                raw.max_keys.map_or(MAX_KEYS, |n| n.0),
                1,
                MAX_KEYS_BOUND,
            )
            .and_then(NonZeroUsize::new);
        Some(RateLimitConfig {
            name: name?,
            key: key?,
            rate: rate?,
            burst: NonZeroU32::new(burst?)?,
            scope: scope?,
            lease: lease?,
            max_keys: max_keys?,
        })
    }

    /// `rate_limits[].lease`: 0 (default) … min(burst, [`MAX_LEASE`]), and only with
    /// `scope: global` — a local limit makes no Redis call to save, so a lease there is a
    /// mistake worth saying rather than a value to ignore.
    fn lease(
        &mut self,
        at: &str,
        raw: Option<Int>,
        burst: Option<u32>,
        scope: Option<Scope>,
    ) -> Option<u32> {
        let Some(raw) = raw else {
            return Some(0);
        };
        let lease = self.number::<u32>(at, raw.0, 0, i64::from(MAX_LEASE))?;
        if lease == 0 {
            return Some(0);
        }
        if scope == Some(Scope::Local) {
            return self.fail(
                at,
                "lease is for scope: global limits (tokens taken from Redis ahead of use); a local limit has no Redis call to save: remove lease or set scope: global",
            );
        }
        match burst {
            Some(burst) if lease > burst => self.fail(
                at,
                format!("must be at most the limit's burst ({burst}), found {lease}: a lease is taken from the bucket, which never holds more"),
            ),
            _ => Some(lease),
        }
    }
}

// === impl Cx: values ===

impl Cx {
    /// Route, limit and upstream names: they appear in metric labels (which the exposition
    /// does not escape), problem JSON and `RateLimit` header fields (quoted strings), so they
    /// are kept to characters that need no escaping anywhere: letters, digits and `-_.:/~`.
    fn name(&mut self, at: &str, raw: &str) -> Option<Arc<str>> {
        if raw.is_empty() {
            return self.fail(at, "a name must not be empty");
        }
        if !raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/' | '~'))
        {
            return self.fail(
                at,
                format!(
                    "a name may hold ASCII letters, digits and - _ . : / ~ only, found {raw:?}"
                ),
            );
        }
        Some(Arc::from(raw))
    }

    /// A duration with a unit. `zero_ok` is for settings where zero means "none", such as a
    /// grace period; a zero timeout would fail everything.
    fn duration(
        &mut self,
        at: &str,
        raw: Option<&str>,
        default: Duration,
        zero_ok: bool,
    ) -> Option<Duration> {
        let Some(raw) = raw else {
            return Some(default);
        };
        match humantime::parse_duration(raw.trim()) {
            Ok(d) if d.is_zero() && !zero_ok => {
                self.fail(at, format!("must be greater than 0, found {raw:?}"))
            }
            Ok(d) if d > MAX_DURATION => {
                self.fail(at, format!("must be at most 24h, found {raw:?}"))
            }
            Ok(d) => Some(d),
            Err(_) => self.fail(
                at,
                format!("expected a duration with a unit like 250ms, 2s, 1m or 1h, found {raw:?}"),
            ),
        }
    }

    /// A duration with a unit within `bounds` (both included), for fields whose range is not
    /// the usual `> 0, ≤ 24h`.
    fn duration_within(
        &mut self,
        at: &str,
        raw: Option<&str>,
        default: Duration,
        (min, max): (Duration, Duration),
    ) -> Option<Duration> {
        let Some(raw) = raw else {
            return Some(default);
        };
        let show = |d: Duration| humantime::format_duration(d).to_string();
        match humantime::parse_duration(raw.trim()) {
            Ok(d) if d < min => {
                self.fail(at, format!("must be at least {}, found {raw:?}", show(min)))
            }
            Ok(d) if d > max => {
                self.fail(at, format!("must be at most {}, found {raw:?}", show(max)))
            }
            Ok(d) => Some(d),
            Err(_) => self.fail(
                at,
                format!("expected a duration with a unit like 250ms, 2s, 1m or 1h, found {raw:?}"),
            ),
        }
    }

    /// An integer in `min..=max`, as `T`.
    fn number<T: TryFrom<i64>>(&mut self, at: &str, raw: i64, min: i64, max: i64) -> Option<T> {
        if raw < min {
            return self.fail(at, format!("must be at least {min}, found {raw}"));
        }
        match T::try_from(raw) {
            Ok(n) if raw <= max => Some(n),
            _ => self.fail(at, format!("must be at most {max}, found {raw}")),
        }
    }

    /// A count that must be at least 1 (and at most [`MAX_COUNT`]).
    fn nonzero_usize(&mut self, at: &str, raw: i64) -> Option<NonZeroUsize> {
        self.number::<usize>(at, raw, 1, MAX_COUNT)
            .and_then(NonZeroUsize::new)
    }

    /// A size in `min..=max` bytes: a bare number of bytes, or a number with a unit (`B`, `KiB`
    /// `MiB`, `GiB`; `K`/`KB`, `M`/`MB`, `G`/`GB` mean the same binary units).
    fn size(
        &mut self,
        at: &str,
        raw: Option<&Size>,
        default: u64,
        min: u64,
        max: u64,
    ) -> Option<ByteSize> {
        let bytes = match raw {
            None => return Some(ByteSize(default)),
            Some(Size::Bytes(n)) => u64::try_from(*n).ok(),
            Some(Size::Text(text)) => parse_size(text),
        };
        let shown = |raw: Option<&Size>| match raw {
            Some(Size::Bytes(n)) => n.to_string(),
            Some(Size::Text(t)) => format!("{t:?}"),
            None => String::new(),
        };
        match bytes {
            None => self.fail(
                at,
                format!(
                    "expected a size like 512, 64KiB, 16MiB or 1GiB, found {}",
                    shown(raw)
                ),
            ),
            Some(n) if n < min => self.fail(
                at,
                format!("must be at least {}, found {}", ByteSize(min), shown(raw)),
            ),
            Some(n) if n > max => self.fail(
                at,
                format!("must be at most {}, found {}", ByteSize(max), shown(raw)),
            ),
            Some(n) => Some(ByteSize(n)),
        }
    }

    /// One of a fixed set of words; `None` in → `default`.
    fn choice<T: Copy>(
        &mut self,
        at: &str,
        raw: Option<&str>,
        options: &[(&str, T)],
        default: T,
    ) -> Option<T> {
        let Some(raw) = raw else {
            return Some(default);
        };
        match options.iter().find(|(word, _)| *word == raw.trim()) {
            Some((_, value)) => Some(*value),
            None => {
                let words: Vec<&str> = options.iter().map(|(word, _)| *word).collect();
                self.fail(
                    at,
                    format!("expected one of {}; found {raw:?}", words.join(", ")),
                )
            }
        }
    }

    fn socket_addr(&mut self, at: &str, raw: &str) -> Option<SocketAddr> {
        raw.trim().parse().ok().or_else(|| {
            self.fail(
                at,
                format!(
                    "expected an IP address and port like 0.0.0.0:8080 or [::]:8080, found {raw:?}"
                ),
            )
        })
    }

    fn file(&mut self, at: &str, raw: Option<&str>, expected: &str) -> Option<PathBuf> {
        match raw.map(str::trim) {
            None => self.missing(at, expected),
            Some("") => self.fail(at, format!("must not be empty; expected {expected}")),
            Some(path) => Some(PathBuf::from(path)),
        }
    }

    /// A CIDR (`10.0.0.0/8`) or a bare address (= one host).
    fn cidr(&mut self, at: &str, raw: &str) -> Option<IpNet> {
        let text = raw.trim();
        if let Ok(net) = text.parse::<IpNet>() {
            return Some(net.trunc());
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Some(IpNet::from(ip));
        }
        self.fail(
            at,
            format!(
                "expected a CIDR like 10.0.0.0/8 or an IP address like 192.0.2.7, found {raw:?}"
            ),
        )
    }

    /// `http://host[:port][/]` → `host:port` (port 80 when absent).
    fn endpoint(&mut self, at: &str, raw: &str) -> Option<Authority> {
        let expected =
            || format!("expected an endpoint URL like http://127.0.0.1:3000, found {raw:?}");
        let Ok(uri) = raw.trim().parse::<Uri>() else {
            return self.fail(at, expected());
        };
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return self.fail(
                    at,
                    format!("{raw:?}: TLS to upstreams (https://) is not supported yet"),
                );
            }
            _ => return self.fail(at, expected()),
        }
        let Some(authority) = uri.authority() else {
            return self.fail(at, expected());
        };
        if authority.as_str().contains('@') {
            return self.fail(
                at,
                format!("an endpoint must not contain user info, found {raw:?}"),
            );
        }
        if authority.host().is_empty() {
            return self.fail(at, expected());
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return self.fail(
                at,
                format!("an endpoint must not have a path or query (the request's path is sent as is), found {raw:?}"),
            );
        }
        match authority.port_u16() {
            Some(0) => self.fail(
                at,
                format!("port 0 is not a valid endpoint port, found {raw:?}"),
            ),
            Some(_) => Some(authority.clone()),
            None => format!("{}:80", authority.host())
                .parse::<Authority>()
                .ok()
                .or_else(|| self.fail(at, expected())),
        }
    }

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
        let label_ok = |label: &str| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !name.split('.').all(label_ok) {
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
                    canonical::BadRequest::EscapedSlash => {
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

    /// `global` | `client_ip` | `header:<Name>`.
    fn key(&mut self, at: &str, raw: &str) -> Option<KeySpec> {
        match raw.trim() {
            "global" => Some(KeySpec::Global),
            "client_ip" => Some(KeySpec::ClientIp),
            key => match key.strip_prefix("header:") {
                Some(name) => HeaderName::from_bytes(name.trim().as_bytes())
                    .ok()
                    .map(KeySpec::Header)
                    .or_else(|| {
                        self.fail(
                            at,
                            format!("{:?} is not a valid header name, in {raw:?}", name.trim()),
                        )
                    }),
                None => self.fail(
                    at,
                    format!("expected global, client_ip or header:<Name>, found {raw:?}"),
                ),
            },
        }
    }
}

/// `64KiB` → 65536. `None` for anything that is not a whole number with a known unit, or that
/// overflows.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KB" | "KiB" | "k" => 10,
        "M" | "MB" | "MiB" | "m" => 20,
        "G" | "GB" | "GiB" | "g" => 30,
        _ => return None,
    };
    n.checked_mul(1 << shift)
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
