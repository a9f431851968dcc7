//! The configuration: what sluice was told to do, as validated runtime types.
//!
//! Loading takes three steps, each in its own module:
//! 1. `raw`: the YAML is deserialized into serde mirrors of the file (`deny_unknown_fields`,
//!    no logic). Type errors found here carry serde's line and column and the field path.
//! 2. `validate`: raw values become the types below, which cannot hold a bad value
//!    (rates, durations, addresses, names that refer to something that exists). All errors
//!    are collected, each with its field path; `locate` finds the line and column of that path
//!    in the YAML text.
//! 3. The caller ([`crate::app`]) builds a running `Runtime` from a [`Config`].
//!
//! Everything here is plain data: cheap to clone, printable by `sluice check`.
//!
//! # Defaults and bounds
//!
//! Each is defined once, as an associated const of the runtime type that holds the field, in an
//! `impl` right below that type, in the field's own unit type (`Duration`, [`ByteSize`],
//! `NonZeroUsize`, …):
//! - `DEFAULT_<FIELD>` is what the field takes when the file leaves it out
//!   ([`DeferConfig::DEFAULT_ATTEMPTS`]);
//! - `MIN_<FIELD>` / `MAX_<FIELD>` bound what the file may give, both included
//!   ([`DeferConfig::MAX_ATTEMPTS`], [`ClientLimits::MIN_MAX_HEADER_BYTES`]); a bound on
//!   something else than the value is named for what it counts
//!   ([`RedisTarget::MAX_CLUSTER_SEEDS`], [`AdminConfig::MAX_TOKEN_FILE_BYTES`]);
//! - the bounds every field of a kind shares are [`Config::MAX_DURATION`],
//!   [`Config::MAX_SIZE`] and [`Config::MAX_COUNT`]; those a field's type already carries (a
//!   `NonZero*` is at least 1, a `u32` at most `u32::MAX`) are not repeated;
//! - an enum field's default is its `#[default]` variant; a list's is empty, an `Option`'s
//!   `None`, and a default that follows another field (a limit's `burst`) is `validate`'s.
//!
//! `validate` takes every default and bound from here. `docs/reference.md` states the defaults
//! for users, and a test (`src/config/tests/defaults.rs`) checks each against the code: a
//! config giving the documented value must load the same as one leaving the field out.

mod effective;
mod error;
mod locate;
mod raw;
mod teach;
#[cfg(test)]
mod tests;
mod tls;
mod validate;
mod warnings;

use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderName, Method};
use ipnet::IpNet;
use serde::Serialize;

pub use self::error::{ConfigError, FieldError};
pub(crate) use self::tls::{load_ca, server_name, TlsIdentity};
pub use self::warnings::{warnings, Warning};
pub use crate::canonical::EscapedSlashes;

/// Reads, parses and validates the config file at `path`.
///
/// # Errors
/// [`ConfigError::Read`] when the file cannot be read, [`ConfigError::Invalid`] with every
/// problem found (file, line, column, field path, what was expected) otherwise.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    from_yaml(&text, path)
}

/// Parses and validates YAML text; `path` is only used to name the file in errors.
///
/// # Errors
/// [`ConfigError::Invalid`] with every problem found.
pub fn from_yaml(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let raw = raw::parse(text, path)?;
    validate::validate(raw, text, path)
}

/// A [`ConfigError`] for problems found after loading (`(field path, message)`), each placed
/// at its field in the file `path` when the file can be read again.
pub fn field_errors(path: &Path, problems: Vec<(String, String)>) -> ConfigError {
    let locator = std::fs::read_to_string(path)
        .map(|text| locate::Locator::new(&text))
        .unwrap_or_else(|_| locate::Locator::new(""));
    let errors = problems
        .into_iter()
        .map(|(field, message)| {
            let place = locator.find(&field);
            FieldError {
                line: place.map(|(line, _)| line),
                column: place.map(|(_, column)| column),
                path: field,
                message,
            }
        })
        .collect();
    ConfigError::Invalid {
        path: path.to_path_buf(),
        errors,
    }
}

/// A validated configuration. It serialises as the file's schema with every default filled in
/// and secrets redacted: what `GET /config` answers (see `effective`).
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    /// The file this was read from (for messages and reload).
    #[serde(skip)]
    pub source: PathBuf,
    /// The listeners and connection-level settings.
    pub server: ServerConfig,
    /// The admin listener (metrics, health, reload); `None` = no admin listener.
    pub admin: Option<AdminConfig>,
    /// The shared store used by `scope: global` limits and deferred delivery.
    pub store: Option<StoreConfig>,
    /// Upstreams in file order; routes refer to them by index.
    #[serde(serialize_with = "effective::by_name")]
    pub upstreams: Vec<UpstreamConfig>,
    /// Routes in file order: the first match wins.
    pub routes: Vec<RouteConfig>,
}

impl Config {
    /// The longest duration any field takes unless its own bound says more: no timer sluice
    /// arms can then overflow, and a day is more than any timeout needs.
    pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
    /// The largest size any field takes (a body, a buffer, the buffering budget).
    pub const MAX_SIZE: ByteSize = ByteSize(1 << 30);
    /// The largest count of connections, in-flight requests, queue places or tasks.
    pub const MAX_COUNT: usize = 10_000_000;
}

/// `server:` — listeners and connection handling.
#[derive(Clone, Debug, Serialize)]
pub struct ServerConfig {
    /// Plain HTTP listener: HTTP/1.1 and HTTP/2 with prior knowledge.
    pub listen: SocketAddr,
    /// Optional HTTPS listener.
    pub tls: Option<TlsConfig>,
    /// Peers whose `X-Forwarded-For` is believed. Default: none.
    pub trusted_proxies: Vec<IpNet>,
    /// `client_ip` keys group IPv6 clients by this prefix length, at most
    /// [`Self::MAX_IPV6_KEY_PREFIX`]. Default [`Self::DEFAULT_IPV6_KEY_PREFIX`].
    pub ipv6_key_prefix: u8,
    /// Send `RateLimit-Policy` / `RateLimit`. Default [`Self::DEFAULT_RATE_LIMIT_HEADERS`].
    pub rate_limit_headers: bool,
    /// A client that has not sent a request head within this is disconnected. Default
    /// [`Self::DEFAULT_HEADER_READ_TIMEOUT`].
    #[serde(serialize_with = "effective::duration")]
    pub header_read_timeout: Duration,
    /// Open connections at most; more wait in the kernel's accept backlog. Default
    /// [`Self::DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: NonZeroUsize,
    /// How long in-flight requests may run after SIGTERM/SIGINT (zero: exit at once). Default
    /// [`Self::DEFAULT_SHUTDOWN_GRACE`].
    #[serde(serialize_with = "effective::duration")]
    pub shutdown_grace: Duration,
    /// Worker threads, at most [`Self::MAX_WORKERS`]; `None` = number of CPUs.
    pub workers: Option<NonZeroUsize>,
    /// HTTP/2 streams per connection. Default [`Self::DEFAULT_MAX_CONCURRENT_STREAMS`].
    pub max_concurrent_streams: u32,
    /// One log line per request. Default [`Self::DEFAULT_ACCESS_LOG`].
    pub access_log: bool,
    /// 503s, and 429s of limits keyed `global`, tell `Retry-After` spread evenly over
    /// `[t, t × (1 + this)]`, rounded up; 0 = off, at most [`Self::MAX_RETRY_AFTER_SPREAD`].
    /// Default [`Self::DEFAULT_RETRY_AFTER_SPREAD`].
    pub retry_after_spread: f64,
    /// What a path holding `%2F` or `%5C` (or a raw `\`) gets: 400, or forwarded with them
    /// encoded. Default reject (`EscapedSlashes`' `#[default]`).
    pub escaped_slashes: EscapedSlashes,
    /// What one client may hold: head and body sizes, buffers, timeouts, connections (the
    /// same `server:` mapping in the file).
    #[serde(flatten)]
    pub client: ClientLimits,
}

impl ServerConfig {
    /// `ipv6_key_prefix` when absent: a client usually owns a whole /64.
    pub const DEFAULT_IPV6_KEY_PREFIX: u8 = 64;
    /// Largest `ipv6_key_prefix`: a whole IPv6 address.
    pub const MAX_IPV6_KEY_PREFIX: u8 = 128;
    /// `rate_limit_headers` when absent.
    pub const DEFAULT_RATE_LIMIT_HEADERS: bool = true;
    /// `header_read_timeout` when absent.
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// `max_connections` when absent.
    pub const DEFAULT_MAX_CONNECTIONS: NonZeroUsize = NonZeroUsize::new(10_000).unwrap();
    /// `shutdown_grace` when absent.
    pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
    /// The most worker threads.
    pub const MAX_WORKERS: usize = 1024;
    /// `max_concurrent_streams` when absent.
    pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;
    /// `access_log` when absent.
    pub const DEFAULT_ACCESS_LOG: bool = false;
    /// `retry_after_spread` when absent: clients rejected together come back over half as long
    /// again as the exact wait.
    pub const DEFAULT_RETRY_AFTER_SPREAD: f64 = 0.5;
    /// The largest `retry_after_spread`: up to twice the exact wait.
    pub const MAX_RETRY_AFTER_SPREAD: f64 = 1.0;
}

/// `server:` fields that bound what one client can hold of sluice's capacity.
#[derive(Clone, Debug, Serialize)]
pub struct ClientLimits {
    /// Request line plus headers at most (HTTP/1 read buffer, HTTP/2 header list); larger: 431.
    /// Default [`Self::DEFAULT_MAX_HEADER_BYTES`]; at least [`Self::MIN_MAX_HEADER_BYTES`].
    pub max_header_bytes: ByteSize,
    /// Request bodies larger than this get 413 `body-too-large`. Default
    /// [`Self::DEFAULT_MAX_REQUEST_BODY`].
    pub max_request_body: ByteSize,
    /// Request bodies up to this size are read whole before the request waits for a slot or
    /// reaches the upstream; larger ones stream. Default [`Self::DEFAULT_REQUEST_BUFFER`].
    pub request_buffer: ByteSize,
    /// Time to receive a buffered body, or the longest pause in a streamed one (408
    /// `body-timeout`). Default [`Self::DEFAULT_REQUEST_BODY_TIMEOUT`].
    #[serde(serialize_with = "effective::duration")]
    pub request_body_timeout: Duration,
    /// Upstream responses up to this size are read whole as fast as the upstream sends them,
    /// freeing their slots and connection however slowly the client reads. Default
    /// [`Self::DEFAULT_RESPONSE_BUFFER`].
    pub response_buffer: ByteSize,
    /// A response the client accepts no bytes of for this long is aborted. Default
    /// [`Self::DEFAULT_SEND_TIMEOUT`].
    #[serde(serialize_with = "effective::duration")]
    pub send_timeout: Duration,
    /// All request and response buffering together; past it, bodies stream. Default
    /// [`Self::DEFAULT_MAX_BUFFERED_BYTES`].
    pub max_buffered_bytes: ByteSize,
    /// Open connections per client address (IPv6: per `ipv6_key_prefix`); 0 = no cap. Default
    /// [`Self::DEFAULT_MAX_CONNECTIONS_PER_IP`].
    pub max_connections_per_ip: usize,
}

impl ClientLimits {
    /// `max_header_bytes` when absent: NGINX allows 4 × 8 KiB, HAProxy 16 KiB, Envoy 60 KiB.
    pub const DEFAULT_MAX_HEADER_BYTES: ByteSize = ByteSize(64 << 10);
    /// Smallest `max_header_bytes`: hyper reads a request head into a buffer of at least 8 KiB,
    /// so a smaller limit cannot be kept.
    pub const MIN_MAX_HEADER_BYTES: ByteSize = ByteSize(8 << 10);
    /// `max_request_body` when absent.
    pub const DEFAULT_MAX_REQUEST_BODY: ByteSize = ByteSize(16 << 20);
    /// `request_buffer` when absent.
    pub const DEFAULT_REQUEST_BUFFER: ByteSize = ByteSize(1 << 20);
    /// `request_body_timeout` when absent.
    pub const DEFAULT_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(30);
    /// `response_buffer` when absent.
    pub const DEFAULT_RESPONSE_BUFFER: ByteSize = ByteSize(1 << 20);
    /// `send_timeout` when absent (NGINX's `send_timeout` is 60 s).
    pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
    /// `max_buffered_bytes` when absent.
    pub const DEFAULT_MAX_BUFFERED_BYTES: ByteSize = ByteSize(256 << 20);
    /// `max_connections_per_ip` when absent: no cap.
    pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 0;
}

/// A number of bytes. Written `512`, `64KiB`, `16MiB`, `1GiB` in the file (binary units; `KB`,
/// `MB`, `GB` are the same units, as NGINX reads them); serialised as a plain number of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The size as a `usize` (saturating: validation bounds every size far below it).
    pub fn get(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        for (unit, name) in UNITS {
            if self.0 >= unit && self.0.is_multiple_of(unit) {
                return write!(f, "{}{name}", self.0 / unit);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// `server.tls:` — the HTTPS listener.
#[derive(Clone, Debug, Serialize)]
pub struct TlsConfig {
    /// Address of the HTTPS listener.
    pub listen: SocketAddr,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The certificate and key read from `cert` and `key` when the config was loaded, checked
    /// to match: what the listener serves, so a file changed after loading changes nothing
    /// until the next reload.
    #[serde(skip)]
    pub(crate) identity: TlsIdentity,
}

/// `admin:` — the admin listener.
#[derive(Clone, Debug, Serialize)]
pub struct AdminConfig {
    /// Address of the admin listener (keep it on loopback or a private network).
    pub listen: SocketAddr,
    /// Host names a request's `Host` may name besides IP literals and `localhost`, with any
    /// port: lower case, without a trailing dot, each at most [`Self::MAX_HOST_NAME_LEN`]
    /// bytes. Against DNS rebinding, where a page an operator opens resolves its own name to
    /// the admin address. Default: none.
    pub allowed_hosts: Vec<String>,
    /// The file the bearer token was read from (at most [`Self::MAX_TOKEN_FILE_BYTES`]);
    /// `None` = no token needed.
    pub token_file: Option<PathBuf>,
    /// The token read from `token_file` when the config was loaded (surrounding whitespace
    /// trimmed): what requests are checked against until the next reload reads the file again.
    /// Never serialised or printed.
    #[serde(skip)]
    pub(crate) token: Option<AdminToken>,
}

impl AdminConfig {
    /// The longest `allowed_hosts` entry: the longest host name (RFC 1035).
    pub const MAX_HOST_NAME_LEN: usize = 253;
    /// The longest `token_file` read: a token is tens of bytes.
    pub const MAX_TOKEN_FILE_BYTES: u64 = 4096;
}

/// The admin bearer token. Its `Debug` does not show it, so neither do logs nor `/config`.
#[derive(Clone)]
pub(crate) struct AdminToken(Arc<[u8]>);

/// `store:` — shared state: the buckets of global limits and the tasks of deferred delivery.
#[derive(Clone, Debug, Serialize)]
pub struct StoreConfig {
    /// The Redis server holding global buckets (and, unless `tasks` names another, tasks).
    pub redis: Option<RedisConfig>,
    /// Where deferred tasks live, on connections of their own: `store.tasks`, or `store.redis`'s
    /// server with the default task timeout. `None` when neither is given.
    pub tasks: Option<TaskStoreConfig>,
}

/// `store.tasks:` (or what it defaults to): the Redis server or cluster of deferred tasks.
#[derive(Clone, Serialize)]
pub struct TaskStoreConfig {
    /// One server or a Redis Cluster.
    #[serde(flatten)]
    pub target: RedisTarget,
    /// `ca`: as `store.redis.ca`.
    pub ca: Option<PathBuf>,
    /// The certificates read from `ca` when the config was loaded.
    #[serde(skip)]
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) ca_pem: Option<Arc<[u8]>>,
    /// Bound on one task write in all (every piece of its body). Default
    /// [`Self::DEFAULT_TIMEOUT`].
    #[serde(serialize_with = "effective::duration")]
    pub timeout: Duration,
}

impl TaskStoreConfig {
    /// `timeout` when absent (also when `store.tasks` is): one task write in all, every piece of
    /// its body. Far above a limit call's: a task is worth waiting for, a 202 is not sent
    /// before Redis has it, and its calls run on connections of their own.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
}

impl fmt::Debug for TaskStoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskStoreConfig")
            .field("target", &self.target)
            .field("ca", &self.ca)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `store.redis:`.
#[derive(Clone, Serialize)]
pub struct RedisConfig {
    /// One server (`url`) or a Redis Cluster (`cluster`); exactly one of the two.
    #[serde(flatten)]
    pub target: RedisTarget,
    /// `ca`: a PEM file of CA certificates trusted for `rediss://` besides the system's roots.
    pub ca: Option<PathBuf>,
    /// The certificates read from `ca` when the config was loaded, checked to parse: what
    /// connections trust, so a file changed after loading changes nothing until a reload.
    #[serde(skip)]
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) ca_pem: Option<Arc<[u8]>>,
    /// Per call; after it, `on_error` applies. Default [`Self::DEFAULT_TIMEOUT`].
    #[serde(serialize_with = "effective::duration")]
    pub timeout: Duration,
    /// What a global limit does when Redis fails. Default local.
    pub on_error: OnStoreError,
}

impl RedisConfig {
    /// `timeout` when absent.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(20);
}

/// `store.redis.url` or `store.redis.cluster`: where the buckets live. The URLs may hold a
/// password, so they are never printed whole.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub enum RedisTarget {
    /// `url`: one `redis://` or `rediss://` server (or a primary with replicas behind one address).
    #[serde(rename = "url", serialize_with = "effective::redacted")]
    Server(String),
    /// `cluster`: seed nodes of a Redis Cluster, all `redis://` or all `rediss://`; the client
    /// discovers the other nodes and the slot map from them.
    #[serde(rename = "cluster", serialize_with = "effective::redacted_list")]
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// Most seed nodes `cluster` may list: a bound, not a need (a few are enough).
    pub const MAX_CLUSTER_SEEDS: usize = 64;

    /// True when the connections use TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        match self {
            RedisTarget::Server(url) => url.starts_with("rediss://"),
            RedisTarget::Cluster(seeds) => seeds.iter().any(|u| u.starts_with("rediss://")),
        }
    }
}

impl fmt::Display for RedisTarget {
    /// Redacted: `redis://:***@host:6379`, or `cluster [seed, seed]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisTarget::Server(url) => f.write_str(&redact_url(url)),
            RedisTarget::Cluster(seeds) => {
                let seeds: Vec<String> = seeds.iter().map(|u| redact_url(u)).collect();
                write!(f, "cluster [{}]", seeds.join(", "))
            }
        }
    }
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("target", &self.target)
            .field("ca", &self.ca)
            .field("timeout", &self.timeout)
            .field("on_error", &self.on_error)
            .finish()
    }
}

/// Replaces the password of a URL (`scheme://user:password@host`) with `***`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}")
            } else {
                format!("{scheme}://***@{host}")
            }
        }
        None => url.to_owned(),
    }
}

/// `store.redis.on_error`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Fall back to this instance's own bucket for the limit. The default.
    #[default]
    Local,
    /// Admit the request.
    Allow,
    /// Reject with 503.
    Deny,
}

/// `upstreams.<name>:`.
#[derive(Clone, Debug, Serialize)]
pub struct UpstreamConfig {
    /// The name routes use, and the `upstream` label of metrics.
    #[serde(skip)]
    pub name: Arc<str>,
    /// `http://host:port` endpoints as the file names them; a name stands for every address
    /// it resolves to.
    #[serde(skip)] // Serialised as URLs with the scheme (`effective::by_name`).
    pub endpoints: Vec<Authority>,
    /// A connection attempt longer than this fails (502). Default
    /// [`Self::DEFAULT_CONNECT_TIMEOUT`].
    #[serde(serialize_with = "effective::duration")]
    pub connect_timeout: Duration,
    /// Time until the response head arrives (504 after it). Default [`Self::DEFAULT_TIMEOUT`].
    #[serde(serialize_with = "effective::duration")]
    pub timeout: Duration,
    /// A cap shared by every route to this upstream.
    pub concurrency: Option<ConcurrencyConfig>,
    /// How often the names among `endpoints` are resolved again; zero = at start and reload
    /// only. Default [`Self::DEFAULT_RESOLVE_INTERVAL`].
    #[serde(serialize_with = "effective::duration")]
    pub resolve_interval: Duration,
    /// How an endpoint is chosen for a request. Default [`Balance::LeastRequest`].
    pub balance: Balance,
    /// Active health checks; none when absent.
    pub health_check: Option<HealthCheckConfig>,
    /// Passive outlier ejection, always on.
    pub outlier: OutlierConfig,
    /// Retries on another endpoint, and their budget.
    pub retry: RetryConfig,
    /// The HTTP version spoken to the endpoints. Default [`UpstreamProtocol::Auto`].
    pub protocol: UpstreamProtocol,
    /// True when the endpoints are `https://` (every endpoint of an upstream has the same
    /// scheme): connections are TLS, with `tls` (its defaults when absent).
    #[serde(skip)] // The endpoints' scheme says it.
    pub https: bool,
    /// `tls:` as the file gives it: certificates to trust, the name to verify, a client
    /// certificate. Unused (and warned about by `sluice check`) with `http://` endpoints.
    pub tls: Option<UpstreamTlsConfig>,
}

/// `upstreams.<name>.protocol`: the HTTP version spoken to the upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 only (ALPN offers `http/1.1` over TLS).
    Http1,
    /// HTTP/2 only: ALPN offers `h2` over TLS; over `http://`, h2c with prior knowledge.
    Http2,
    /// Over TLS, ALPN offers `h2` and `http/1.1` and the server's choice is spoken; over
    /// `http://`, HTTP/1.1. The default.
    #[default]
    Auto,
}

impl UpstreamProtocol {
    /// The name the config file, `/stats` and the access log use.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::Http2 => "http2",
            UpstreamProtocol::Auto => "auto",
        }
    }
}

/// `upstreams.<name>.tls:` — how sluice verifies an `https://` upstream and proves itself to
/// it. Verification is always on: the system's roots plus `ca`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct UpstreamTlsConfig {
    /// PEM certificates trusted besides the system's roots.
    pub ca: Option<PathBuf>,
    /// The name sent as SNI and verified in the certificate. Default: the endpoint URL's host
    /// (never the address a name resolved to).
    pub server_name: Option<String>,
    /// A PEM client certificate chain (mTLS), with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// What the files held when the config was loaded (read again on each reload).
    #[serde(skip)]
    pub(crate) loaded: UpstreamTrust,
}

impl UpstreamTlsConfig {
    /// True when both name the same files and the files held the same certificates when read.
    pub(crate) fn same_as(&self, other: &UpstreamTlsConfig) -> bool {
        let chain =
            |t: &UpstreamTlsConfig| t.loaded.client.as_ref().map(|c| c.certified.cert.clone());
        self.ca == other.ca
            && self.server_name == other.server_name
            && self.client_cert == other.client_cert
            && self.client_key == other.client_key
            && self.loaded.ca == other.loaded.ca
            && chain(self) == chain(other)
    }
}

/// The certificate files of an upstream's `tls:`, read and checked when the config is loaded.
#[derive(Clone, Debug, Default)]
pub(crate) struct UpstreamTrust {
    /// The certificates of `ca`, checked to parse as trust anchors.
    pub(crate) ca: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// The client certificate and its key, checked to match.
    pub(crate) client: Option<TlsIdentity>,
}

/// `upstreams.<name>.retry:` — which requests are sent again, and how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RetryConfig {
    /// Tries in all (1 = no retry) for an idempotent request after a reset before any response
    /// byte or a 503 with `Retry-After`; a connect failure is retried on each other endpoint
    /// whatever this says. Default [`Self::DEFAULT_ATTEMPTS`].
    pub attempts: u32,
    /// Retries at most this percentage of the upstream's requests (over the last 10 s), plus
    /// [`Self::FLOOR_PER_SEC`] a second. Default [`Self::DEFAULT_BUDGET_PERCENT`].
    #[serde(rename = "budget", serialize_with = "effective::percent")]
    pub budget_percent: u32,
}

impl RetryConfig {
    /// `attempts` when absent.
    pub const DEFAULT_ATTEMPTS: u32 = 2;
    /// `budget` when absent, in percent.
    pub const DEFAULT_BUDGET_PERCENT: u32 = 20;
    /// Retries a second the budget always allows.
    pub const FLOOR_PER_SEC: u32 = 3;
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: Self::DEFAULT_ATTEMPTS,
            budget_percent: Self::DEFAULT_BUDGET_PERCENT,
        }
    }
}

/// `upstreams.<name>.health_check:` — a `GET` of `path` on every endpoint every `interval`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthCheckConfig {
    /// The path checked; a 2xx answer within `timeout` is a success. Required.
    pub path: String,
    /// Time between two checks of an endpoint. Default [`Self::DEFAULT_INTERVAL`].
    #[serde(serialize_with = "effective::duration")]
    pub interval: Duration,
    /// A check without an answer by then fails. Default [`Self::DEFAULT_TIMEOUT`].
    #[serde(serialize_with = "effective::duration")]
    pub timeout: Duration,
    /// Consecutive failures that make a healthy endpoint unhealthy. Default 2.
    pub unhealthy_after: u32,
    /// Consecutive successes that make an unhealthy endpoint healthy again. Default 2.
    pub healthy_after: u32,
}

impl HealthCheckConfig {
    /// `interval` when absent.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
    /// `timeout` when absent.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
    /// `unhealthy_after` and `healthy_after` when absent.
    pub const DEFAULT_AFTER: u32 = 2;
}

/// `upstreams.<name>.outlier:` — passive ejection of an endpoint that keeps failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct OutlierConfig {
    /// Consecutive failures (connect failures, resets before a response, timeouts: never an
    /// answer the upstream chose to send) that eject an endpoint. Default
    /// [`Self::DEFAULT_CONSECUTIVE_FAILURES`].
    pub consecutive_failures: u32,
    /// How long the first ejection lasts; each repeat doubles it, up to
    /// [`Self::MAX_EJECTION`]. Default [`Self::DEFAULT_EJECTION`].
    #[serde(serialize_with = "effective::duration")]
    pub ejection: Duration,
}

impl OutlierConfig {
    /// `consecutive_failures` when absent.
    pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
    /// `ejection` when absent.
    pub const DEFAULT_EJECTION: Duration = Duration::from_secs(10);
    /// The longest ejection, however often it repeats.
    pub const MAX_EJECTION: Duration = Duration::from_secs(300);
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: Self::DEFAULT_CONSECUTIVE_FAILURES,
            ejection: Self::DEFAULT_EJECTION,
        }
    }
}

impl UpstreamConfig {
    /// `connect_timeout` when absent.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
    /// `timeout` when absent.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    /// `resolve_interval` when absent.
    pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(5);
    /// Endpoints (addresses, over all names) an upstream keeps at most: the addresses of a name
    /// beyond it are left out (and the log says so), so a name that resolves to thousands of
    /// addresses cannot grow sluice's memory without bound.
    pub const MAX_ENDPOINTS: usize = 256;
}

/// `upstreams.<name>.balance`: how an endpoint is chosen for each request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Of two endpoints picked at random (distinct when there are two or more), the one with
    /// fewer requests in flight. The default.
    #[default]
    LeastRequest,
    /// Each endpoint in turn.
    RoundRobin,
}

/// `concurrency:` on a route or an upstream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConcurrencyConfig {
    /// How many requests may be in flight at once: a fixed number, or a cap that follows the
    /// upstream's latency. Serialised as the file has it: `max_inflight: N` or `adaptive: {…}`.
    #[serde(flatten)]
    pub size: CapSize,
    /// Requests that may wait for a slot; 0 = reject at once. Default [`Self::DEFAULT_QUEUE`].
    pub queue: usize,
    /// A waiter older than this gets 503 `queue-timeout`. Default
    /// [`Self::DEFAULT_QUEUE_TIMEOUT`].
    #[serde(serialize_with = "effective::duration")]
    pub queue_timeout: Duration,
    /// `fair_by`: within one priority, waiters are served in turns across the keys this gives
    /// (`client_ip` or `header:NAME`), not in arrival order. `None`: arrival order.
    #[serde(serialize_with = "effective::display_opt")]
    pub fair_by: Option<KeySpec>,
    /// A key's waiters beyond this get 503 `queue-full` (with `fair_by` only). `None`: no
    /// bound but the queue's.
    pub max_queued_per_key: Option<NonZeroUsize>,
}

impl ConcurrencyConfig {
    /// `queue` when absent: reject at once when every slot is busy.
    pub const DEFAULT_QUEUE: usize = 0;
    /// `queue_timeout` when absent.
    pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
}

/// The size of a concurrency cap: `max_inflight` or `adaptive` (exactly one of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CapSize {
    /// `max_inflight: N`: requests in flight at most, always.
    #[serde(rename = "max_inflight")]
    Fixed(NonZeroUsize),
    /// `adaptive: {min_inflight, max_inflight}`: the cap follows the upstream's latency
    /// between these bounds (see `crate::limit::adaptive`).
    #[serde(rename = "adaptive")]
    Adaptive(AdaptiveConfig),
    /// `per_endpoint: N` (an upstream's cap only): N × the upstream's healthy endpoints (at
    /// least N), following the fleet as endpoints come, go, fail and recover.
    #[serde(rename = "per_endpoint")]
    PerEndpoint(NonZeroUsize),
}

/// `concurrency.adaptive:` — the bounds of an adaptive cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct AdaptiveConfig {
    /// The lowest cap the algorithm may set, and the concurrency at which it measures the
    /// upstream's no-load latency. Default [`Self::DEFAULT_MIN_INFLIGHT`]; at most
    /// `max_inflight`.
    pub min_inflight: NonZeroUsize,
    /// The highest cap the algorithm may set. Default [`Self::DEFAULT_MAX_INFLIGHT`]; at most
    /// [`Self::MAX_MAX_INFLIGHT`].
    pub max_inflight: NonZeroUsize,
}

impl AdaptiveConfig {
    /// `min_inflight` when absent (the contract's example).
    pub const DEFAULT_MIN_INFLIGHT: NonZeroUsize = NonZeroUsize::new(2).unwrap();
    /// `max_inflight` when absent (the contract's example).
    pub const DEFAULT_MAX_INFLIGHT: NonZeroUsize = NonZeroUsize::new(256).unwrap();
    /// Largest `max_inflight`, and so of `min_inflight`, which is at most `max_inflight`.
    pub const MAX_MAX_INFLIGHT: usize = 1_000_000;
}

/// `routes[]`.
#[derive(Clone, Debug, Serialize)]
pub struct RouteConfig {
    /// Unique name: metrics label, problem JSON `route`.
    pub name: Arc<str>,
    /// What requests this route takes.
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    /// Index into [`Config::upstreams`].
    #[serde(skip)]
    pub upstream: usize,
    /// The upstream's name, as the file gives it.
    #[serde(rename = "upstream")]
    pub upstream_name: Arc<str>,
    /// Who is shed first when queues are full.
    pub priority: Priority,
    /// Enforce limits, or only count what they would reject.
    pub mode: Mode,
    /// All must admit a request.
    pub rate_limits: Vec<RateLimitConfig>,
    /// A cap on this route alone, checked before the upstream's.
    pub concurrency: Option<ConcurrencyConfig>,
    /// Deferred delivery through Redis (needs `store.redis`); `None` = answer every request now.
    pub defer: Option<DeferConfig>,
    /// Upgraded connections (WebSocket and other `Upgrade`s) open on this route at most, their
    /// handshakes included; past it an upgrade gets 503 `queue-full`. 0 refuses every upgrade.
    /// Default [`Self::DEFAULT_MAX_UPGRADED`].
    pub max_upgraded: usize,
    /// An upgraded connection with no byte either way for this long is closed. Default
    /// [`Self::DEFAULT_UPGRADED_IDLE_TIMEOUT`].
    #[serde(serialize_with = "effective::duration")]
    pub upgraded_idle_timeout: Duration,
}

impl RouteConfig {
    /// `max_upgraded` when absent (the contract's decision after review).
    pub const DEFAULT_MAX_UPGRADED: usize = 1000;
    /// `upgraded_idle_timeout` when absent: the contract's example. Long enough for a
    /// WebSocket whose peers ping every minute or so (browsers and most libraries do less
    /// often, or never: an application that keeps quiet connections sets its own).
    pub const DEFAULT_UPGRADED_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
}

/// `routes[].defer:` — requests written to a Redis stream, answered `202 Accepted`, and
/// delivered to the upstream when it has idle capacity (see `crate::defer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct DeferConfig {
    /// Which requests are deferred. Default `overflow`.
    pub when: DeferWhen,
    /// A deferred request's body may hold at most this many bytes (larger: 413). Default
    /// [`Self::DEFAULT_MAX_BODY`]; at most [`Self::MAX_MAX_BODY`].
    pub max_body: ByteSize,
    /// Deliveries tried in all, at most [`Self::MAX_ATTEMPTS`]. Default
    /// [`Self::DEFAULT_ATTEMPTS`].
    pub attempts: NonZeroU32,
    /// The wait before the second attempt; it doubles for each further one, up to
    /// `backoff_max`. Default [`Self::DEFAULT_BACKOFF`]; [`Self::MIN_BACKOFF`] ..=
    /// [`Self::MAX_BACKOFF`].
    #[serde(serialize_with = "effective::duration")]
    pub backoff: Duration,
    /// A task not delivered this long after it was accepted is `dead`; its record is kept until
    /// then. Default [`Self::DEFAULT_TTL`]; [`Self::MIN_TTL`] ..= [`Self::MAX_TTL`].
    #[serde(serialize_with = "effective::duration")]
    pub ttl: Duration,
    /// Tasks of the route not delivered yet (queued, waiting, delivering, dead), all instances
    /// together: past it, 503 `queue-full`. Default [`Self::DEFAULT_MAX_TASKS`].
    pub max_tasks: u64,
    /// The longest wait between two tries of a task. Default [`Self::DEFAULT_BACKOFF_MAX`]; at
    /// least `backoff`.
    #[serde(serialize_with = "effective::duration")]
    pub backoff_max: Duration,
}

impl DeferConfig {
    /// `max_body` when absent.
    pub const DEFAULT_MAX_BODY: ByteSize = ByteSize(1 << 20);
    /// Largest `max_body`: a task's body goes to Redis in pieces and is held whole by a
    /// deliverer; 64 MiB bounds both.
    pub const MAX_MAX_BODY: ByteSize = ByteSize(64 << 20);
    /// `attempts` when absent.
    pub const DEFAULT_ATTEMPTS: NonZeroU32 = NonZeroU32::new(4).unwrap();
    /// Most `attempts`: with waits capped at a minute, 100 attempts retry for over an hour and a
    /// half; more is a task that should have been declared dead.
    pub const MAX_ATTEMPTS: u32 = 100;
    /// `backoff` when absent.
    pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
    /// Shortest `backoff` (and `backoff_max`).
    pub const MIN_BACKOFF: Duration = Duration::from_millis(1);
    /// Longest `backoff`: every wait between attempts is at most a minute (the contract), so a
    /// longer first wait could not be kept.
    pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
    /// `backoff_max` when absent: a task keeps being tried at least every five minutes while
    /// the upstream is down.
    pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(300);
    /// `ttl` when absent.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
    /// Shortest `ttl`: a task must live long enough for one delivery.
    pub const MIN_TTL: Duration = Duration::from_secs(1);
    /// Longest `ttl`, beyond the 24 h of other durations: work accepted before a weekend outage
    /// of the upstream should still be there on Monday. A week is the retention queue services
    /// default to (Kafka's `log.retention.hours`); Redis holds every queued body that long.
    pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
    /// `max_tasks` when absent.
    pub const DEFAULT_MAX_TASKS: u64 = 100_000;
}

/// `routes[].defer.when`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeferWhen {
    /// Only requests the caps would answer with 503 (`queue-full`, `queue-timeout`, `shed`).
    #[default]
    Overflow,
    /// Every request of the route, before the caps.
    Always,
}

impl DeferWhen {
    /// The name used in the YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            DeferWhen::Overflow => "overflow",
            DeferWhen::Always => "always",
        }
    }
}

/// `routes[].match`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RouteMatch {
    /// `None` = any host.
    #[serde(serialize_with = "effective::display_opt")]
    pub host: Option<HostMatch>,
    /// Default: prefix `/`.
    #[serde(flatten)]
    pub path: PathMatch,
    /// `None` = any method.
    #[serde(serialize_with = "effective::methods")]
    pub methods: Option<Vec<Method>>,
}

/// How a route matches the request's host (lower-cased, port removed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMatch {
    /// `api.example.com`, stored lower-case.
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: matches `a.example.com`, not `example.com`.
    Suffix(String),
}

/// How a route matches the request path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    /// Segment-aware prefix: `/orders` matches `/orders`, `/orders/1` and `/orders.csv` (a `.`
    /// suffix: many upstreams serve `/orders.csv` as `/orders`), not `/ordersfoo`.
    /// Stored without a trailing slash, except `/` itself.
    #[serde(rename = "path_prefix")]
    Prefix(String),
    /// The whole path, query excluded.
    #[serde(rename = "path_exact")]
    Exact(String),
}

impl Default for PathMatch {
    fn default() -> Self {
        PathMatch::Prefix("/".to_owned())
    }
}

/// `routes[].priority`. Ordered: `Low < Normal < High < Critical`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Dropped first.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Shed only for critical work.
    High,
    /// Never shed.
    Critical,
}

impl Priority {
    /// The name used in the YAML and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }
}

/// `routes[].mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Reject what limits reject.
    #[default]
    Enforce,
    /// Count and log what would be rejected; reject nothing.
    Shadow,
}

/// `routes[].rate_limits[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RateLimitConfig {
    /// `name`, or `limit-<index>`: the item name in `RateLimit` fields and the metrics label.
    pub name: Arc<str>,
    /// Which requests share a bucket.
    #[serde(serialize_with = "effective::display")]
    pub key: KeySpec,
    /// Sustained rate.
    #[serde(serialize_with = "effective::display")]
    pub rate: Rate,
    /// Bucket size. Default: the rate's count.
    pub burst: NonZeroU32,
    /// Local bucket, or shared through the store.
    pub scope: LimitScope,
    /// `scope: global`: tokens one instance takes from Redis per call for a key and spends
    /// locally (`0`: every request asks Redis). At most `burst` and [`Self::MAX_LEASE`].
    /// Default [`Self::DEFAULT_LEASE`].
    pub lease: u32,
    /// Keys the limit's table holds at most (and its denial cache, for `scope: global`); the
    /// least recently used goes when a new one comes. Default [`Self::DEFAULT_MAX_KEYS`]; at
    /// most [`Self::MAX_MAX_KEYS`].
    pub max_keys: NonZeroUsize,
    /// Tokens one request takes from its bucket: 1..=[`Self::MAX_COST`], at most `burst` (a
    /// request costing more could never pass), and at most `lease` when set. Default 1.
    pub cost: NonZeroU32,
    /// A response header in which the upstream reports what the request cost, in tokens:
    /// charged to the request's key after the response, less `cost` (already taken), the bucket
    /// going into debt if need be (at most [`Self::MAX_DEBT_BURSTS`] × `burst`); the header is
    /// removed from the response. Default: none.
    #[serde(serialize_with = "effective::display_opt")]
    pub charge_header: Option<HeaderName>,
}

impl RateLimitConfig {
    /// `lease` when absent: every request asks Redis.
    pub const DEFAULT_LEASE: u32 = 0;
    /// Largest `lease` (it is also at most the limit's burst).
    pub const MAX_LEASE: u32 = 1_000_000;
    /// `max_keys` when absent.
    pub const DEFAULT_MAX_KEYS: NonZeroUsize = NonZeroUsize::new(1_000_000).unwrap();
    /// Largest `max_keys`: 5 to 8.5 GB of keys for one limit (50 to 85 bytes a key).
    pub const MAX_MAX_KEYS: usize = 100_000_000;
    /// `cost` when absent.
    pub const DEFAULT_COST: NonZeroU32 = NonZeroU32::new(1).unwrap();
    /// Largest `cost`.
    pub const MAX_COST: u32 = 1_000_000;
    /// A `charge_header` puts a bucket at most this many bursts in debt: a bad header cannot
    /// lock a key out for longer than that many refill times (plus the cost of its next request).
    pub const MAX_DEBT_BURSTS: u32 = 10;
}

/// `rate_limits[].key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySpec {
    /// One bucket for the whole route.
    Global,
    /// One bucket per client address (IPv6 grouped by prefix).
    ClientIp,
    /// One bucket per value of this header; a missing header falls back to the client IP.
    Header(HeaderName),
}

/// A rate: `count` tokens per `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Tokens per period.
    pub count: NonZeroU32,
    /// The period.
    pub per: Per,
}

/// The period of a [`Rate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Per {
    /// `/s`
    Second,
    /// `/m`
    Minute,
    /// `/h`
    Hour,
}

impl Per {
    /// The period's length.
    pub fn duration(self) -> Duration {
        match self {
            Per::Second => Duration::from_secs(1),
            Per::Minute => Duration::from_secs(60),
            Per::Hour => Duration::from_secs(3600),
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Per::Second => "s",
            Per::Minute => "m",
            Per::Hour => "h",
        }
    }
}

impl Rate {
    /// Time for one token to be replenished: period / count.
    pub fn emission_interval(&self) -> Duration {
        self.per.duration() / self.count.get()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.per.suffix())
    }
}

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let expected = || format!("expected a rate like 100/s, 20/m or 5/h, found {s:?}");
        let (n, unit) = s.trim().split_once('/').ok_or_else(expected)?;
        // NGINX writes `5r/s` (limit_req_zone's `rate=`): say how sluice spells it.
        if let Some(count) = n
            .trim()
            .strip_suffix('r')
            .filter(|c| c.parse::<u32>().is_ok())
        {
            return Err(format!(
                "NGINX's {s:?} is written `{count}/{}` in sluice (a rate like 100/s, 20/m or 5/h)",
                unit.trim()
            ));
        }
        let count: u32 = n.trim().parse().map_err(|_| expected())?;
        let count = NonZeroU32::new(count)
            .ok_or_else(|| format!("a rate must be positive, found {s:?}"))?;
        let per = match unit.trim() {
            "s" => Per::Second,
            "m" => Per::Minute,
            "h" => Per::Hour,
            _ => return Err(expected()),
        };
        Ok(Rate { count, per })
    }
}

/// `rate_limits[].scope`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitScope {
    /// This instance's own bucket.
    #[default]
    Local,
    /// A bucket in `store.redis`, shared by every instance.
    Global,
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySpec::Global => f.write_str("global"),
            KeySpec::ClientIp => f.write_str("client_ip"),
            KeySpec::Header(name) => write!(f, "header:{name}"),
        }
    }
}

impl fmt::Display for HostMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMatch::Exact(host) => f.write_str(host),
            HostMatch::Suffix(suffix) => write!(f, "*{suffix}"),
        }
    }
}

// === impl AdminToken ===

impl AdminToken {
    /// The token as read (trimmed); at least one byte, printable ASCII without spaces.
    pub(crate) fn new(token: &str) -> Self {
        AdminToken(Arc::from(token.as_bytes()))
    }

    /// The token's bytes, for the constant-time comparison in the admin gate.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

impl fmt::Display for Config {
    /// The one-screen summary printed by `sluice check`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "config {} is valid", self.source.display())?;
        self.fmt_listeners(f)?;
        writeln!(f, "upstreams:")?;
        for up in &self.upstreams {
            let eps: Vec<String> = up.endpoints.iter().map(|a| format!("http://{a}")).collect();
            write!(f, "  {:<16} {}", up.name, eps.join(", "))?;
            if let Some(c) = &up.concurrency {
                write!(f, "  [{}]", DisplayCap(c))?;
            }
            writeln!(f)?;
        }
        writeln!(f, "routes (first match wins):")?;
        for r in &self.routes {
            fmt_route(f, r)?;
        }
        Ok(())
    }
}

impl Config {
    /// The listeners and the store, for the `sluice check` summary.
    fn fmt_listeners(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "listeners:")?;
        writeln!(f, "  http   {}", self.server.listen)?;
        if let Some(tls) = &self.server.tls {
            writeln!(f, "  https  {} (cert {})", tls.listen, tls.cert.display())?;
        }
        if let Some(admin) = &self.admin {
            write!(f, "  admin  {}", admin.listen)?;
            if let Some(file) = &admin.token_file {
                write!(f, " (bearer token from {})", file.display())?;
            }
            writeln!(f)?;
        }
        let Some(store) = &self.store else {
            return Ok(());
        };
        writeln!(f, "store:")?;
        let ca = |ca: &Option<PathBuf>| match ca {
            Some(ca) => format!(", ca {}", ca.display()),
            None => String::new(),
        };
        if let Some(redis) = &store.redis {
            let on_error = match redis.on_error {
                OnStoreError::Local => "local",
                OnStoreError::Allow => "allow",
                OnStoreError::Deny => "deny",
            };
            writeln!(
                f,
                "  redis  {} (timeout {}, on_error {on_error}{})",
                redis.target,
                humantime::format_duration(redis.timeout),
                ca(&redis.ca)
            )?;
        }
        if let Some(tasks) = &store.tasks {
            writeln!(
                f,
                "  tasks  {} (timeout {}{}, connections of their own)",
                tasks.target,
                humantime::format_duration(tasks.timeout),
                ca(&tasks.ca)
            )?;
        }
        Ok(())
    }
}

/// One line of `sluice check`'s summary for the rate limit `l`.
fn fmt_limit(f: &mut fmt::Formatter<'_>, l: &RateLimitConfig) -> fmt::Result {
    let scope = match (l.scope, l.lease) {
        (LimitScope::Global, 0) => ", scope global".to_owned(),
        (LimitScope::Global, lease) => format!(", scope global, lease {lease}"),
        (LimitScope::Local, _) => String::new(),
    };
    let cost = match (l.cost.get(), &l.charge_header) {
        (1, None) => String::new(),
        (cost, None) => format!(", cost {cost}"),
        (cost, Some(header)) => format!(", cost {cost}, charged by {header}"),
    };
    writeln!(
        f,
        "      limit {}: {} burst {} per {}{scope}{cost}",
        l.name, l.rate, l.burst, l.key
    )
}

/// One route of the `sluice check` summary, with its limits and cap.
fn fmt_route(f: &mut fmt::Formatter<'_>, r: &RouteConfig) -> fmt::Result {
    let host = r
        .matcher
        .host
        .as_ref()
        .map_or_else(|| "*".to_owned(), ToString::to_string);
    let path = match &r.matcher.path {
        PathMatch::Prefix(p) => format!("{p}*"),
        PathMatch::Exact(p) => p.clone(),
    };
    let methods = r.matcher.methods.as_ref().map_or_else(
        || "ANY".to_owned(),
        |ms| ms.iter().map(Method::as_str).collect::<Vec<_>>().join(","),
    );
    let shadow = if r.mode == Mode::Shadow {
        ", shadow"
    } else {
        ""
    };
    writeln!(
        f,
        "  {:<16} {methods} {host}{path} -> {} (priority {}{shadow})",
        r.name,
        r.upstream_name,
        r.priority.as_str(),
    )?;
    for l in &r.rate_limits {
        fmt_limit(f, l)?;
    }
    if let Some(c) = &r.concurrency {
        writeln!(f, "      {}", DisplayCap(c))?;
    }
    if let Some(d) = &r.defer {
        writeln!(
            f,
            "      defer {}: max_body {}, attempts {}, backoff {}..{}, ttl {}, max_tasks {}",
            d.when.as_str(),
            d.max_body,
            d.attempts,
            humantime::format_duration(d.backoff),
            humantime::format_duration(d.backoff_max),
            humantime::format_duration(d.ttl),
            d.max_tasks
        )?;
    }
    Ok(())
}

struct DisplayCap<'a>(&'a ConcurrencyConfig);

impl fmt::Display for DisplayCap<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.size {
            CapSize::Fixed(max) => write!(f, "concurrency {max} in flight")?,
            CapSize::PerEndpoint(n) => write!(f, "concurrency {n} per healthy endpoint")?,
            CapSize::Adaptive(a) => write!(
                f,
                "concurrency adaptive {}..{} in flight",
                a.min_inflight, a.max_inflight
            )?,
        }
        write!(
            f,
            ", queue {}, queue_timeout {}",
            self.0.queue,
            humantime::format_duration(self.0.queue_timeout)
        )
    }
}
