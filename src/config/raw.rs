//! Step 1 of loading: the YAML file as written, deserialized into serde mirrors of the schema.
//!
//! No logic lives here: every field is optional or a plain string so that `validate` can report
//! every bad value at once with its path. What serde itself rejects (YAML syntax, unknown
//! fields, a list where a mapping belongs, text where a number belongs) stops at the first
//! error, which carries serde's line and column and the field path.

use std::fmt::Write as _;
use std::path::Path;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::error::{ConfigError, FieldError};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    /// `server:` (required: it holds `listen`).
    pub(crate) server: Option<RawServer>,
    /// `admin:`.
    pub(crate) admin: Option<RawAdmin>,
    /// `store:`.
    pub(crate) store: Option<RawStore>,
    /// `upstreams:`, in file order.
    pub(crate) upstreams: Option<RawUpstreams>,
    /// `routes:`.
    pub(crate) routes: Option<Vec<RawRoute>>,
}

/// `server:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    /// `ip:port` of the plain HTTP listener.
    pub(crate) listen: Option<String>,
    /// The HTTPS listener.
    pub(crate) tls: Option<RawTls>,
    /// CIDRs or bare addresses.
    pub(crate) trusted_proxies: Option<Vec<String>>,
    /// Prefix length, 0..=128.
    pub(crate) ipv6_key_prefix: Option<Int>,
    /// Send `RateLimit-Policy` / `RateLimit`.
    pub(crate) rate_limit_headers: Option<bool>,
    /// A duration.
    pub(crate) header_read_timeout: Option<String>,
    /// A count ≥ 1.
    pub(crate) max_connections: Option<Int>,
    /// A duration.
    pub(crate) shutdown_grace: Option<String>,
    /// A count ≥ 1.
    pub(crate) workers: Option<Int>,
    /// A count ≥ 1.
    pub(crate) max_concurrent_streams: Option<Int>,
    /// One log line per request.
    pub(crate) access_log: Option<bool>,
    /// A number in 0..=1.
    pub(crate) retry_after_spread: Option<f64>,
    /// A size: request line + headers.
    pub(crate) max_header_bytes: Option<Size>,
    /// A size.
    pub(crate) max_request_body: Option<Size>,
    /// A size.
    pub(crate) request_buffer: Option<Size>,
    /// A duration.
    pub(crate) request_body_timeout: Option<String>,
    /// A size.
    pub(crate) response_buffer: Option<Size>,
    /// A duration.
    pub(crate) send_timeout: Option<String>,
    /// A size.
    pub(crate) max_buffered_bytes: Option<Size>,
    /// A count ≥ 0.
    pub(crate) max_connections_per_ip: Option<Int>,
    /// `reject` | `keep`.
    pub(crate) escaped_slashes: Option<String>,
}

/// `server.tls:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    /// `ip:port` of the HTTPS listener.
    pub(crate) listen: Option<String>,
    /// Path of the PEM certificate chain.
    pub(crate) cert: Option<String>,
    /// Path of the PEM private key.
    pub(crate) key: Option<String>,
}

/// `admin:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    /// `ip:port` of the admin listener.
    pub(crate) listen: Option<String>,
    /// Host names accepted in `Host` besides IP literals and `localhost`.
    pub(crate) allowed_hosts: Option<Vec<String>>,
    /// Path of the file holding the bearer token.
    pub(crate) token_file: Option<String>,
}

/// `store:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    /// `store.redis:`.
    pub(crate) redis: Option<RawRedis>,
    /// `store.tasks:`.
    pub(crate) tasks: Option<RawTasks>,
}

/// `store.tasks:` — where deferred tasks live: `store.redis`'s fields but `on_error`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTasks {
    /// `redis://` or `rediss://` URL.
    pub(crate) url: Option<String>,
    /// Redis Cluster seed URLs.
    pub(crate) cluster: Option<Vec<String>>,
    /// Path of a PEM file of CA certificates.
    pub(crate) ca: Option<String>,
    /// A duration: one task write in all.
    pub(crate) timeout: Option<String>,
}

/// `store.redis:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedis {
    /// `redis://` or `rediss://` URL.
    pub(crate) url: Option<String>,
    /// Redis Cluster seed URLs.
    pub(crate) cluster: Option<Vec<String>>,
    /// Path of a PEM file of CA certificates.
    pub(crate) ca: Option<String>,
    /// A duration.
    pub(crate) timeout: Option<String>,
    /// `local` | `allow` | `deny`.
    pub(crate) on_error: Option<String>,
}

/// `upstreams:` — a mapping from names to upstreams, kept in file order.
#[derive(Debug, Default)]
pub(crate) struct RawUpstreams(pub(crate) Vec<(String, RawUpstream)>);

/// `upstreams.<name>:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    /// `http://host:port` URLs.
    pub(crate) endpoints: Option<Vec<String>>,
    /// A duration.
    pub(crate) connect_timeout: Option<String>,
    /// A duration.
    pub(crate) timeout: Option<String>,
    /// A cap shared by every route to this upstream.
    pub(crate) concurrency: Option<RawConcurrency>,
    /// A duration; 0 allowed.
    pub(crate) resolve_interval: Option<String>,
    /// `least_request` | `round_robin`.
    pub(crate) balance: Option<String>,
    /// Active health checks.
    pub(crate) health_check: Option<RawHealthCheck>,
    /// Passive outlier ejection.
    pub(crate) outlier: Option<RawOutlier>,
    /// Retries on another endpoint.
    pub(crate) retry: Option<RawRetry>,
    /// `http1` | `http2` | `auto`.
    pub(crate) protocol: Option<String>,
    /// TLS to `https://` endpoints.
    pub(crate) tls: Option<RawUpstreamTls>,
}

/// `upstreams.<name>.tls:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamTls {
    /// A PEM file of certificates to trust.
    pub(crate) ca: Option<String>,
    /// A host name (or IP address) for SNI and verification.
    pub(crate) server_name: Option<String>,
    /// A PEM certificate chain.
    pub(crate) client_cert: Option<String>,
    /// A PEM private key.
    pub(crate) client_key: Option<String>,
}

/// `upstreams.<name>.retry:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    /// A count ≥ 1: tries in all.
    pub(crate) attempts: Option<Int>,
    /// A percentage, `20%`.
    pub(crate) budget: Option<String>,
}

/// `upstreams.<name>.health_check:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealthCheck {
    /// An absolute path.
    pub(crate) path: Option<String>,
    /// A duration.
    pub(crate) interval: Option<String>,
    /// A duration.
    pub(crate) timeout: Option<String>,
    /// A count ≥ 1.
    pub(crate) unhealthy_after: Option<Int>,
    /// A count ≥ 1.
    pub(crate) healthy_after: Option<Int>,
}

/// `upstreams.<name>.outlier:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutlier {
    /// A count ≥ 1.
    pub(crate) consecutive_failures: Option<Int>,
    /// A duration.
    pub(crate) ejection: Option<String>,
}

/// `concurrency:` of a route or an upstream.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConcurrency {
    /// A count ≥ 1.
    pub(crate) max_inflight: Option<Int>,
    /// `adaptive:`, instead of `max_inflight`.
    pub(crate) adaptive: Option<RawAdaptive>,
    /// A count ≥ 1, instead of `max_inflight` (an upstream's cap only).
    pub(crate) per_endpoint: Option<Int>,
    /// A count ≥ 0.
    pub(crate) queue: Option<Int>,
    /// A duration.
    pub(crate) queue_timeout: Option<String>,
    /// `client_ip` | `header:NAME`.
    pub(crate) fair_by: Option<String>,
    /// A count ≥ 1 (with `fair_by`).
    pub(crate) max_queued_per_key: Option<Int>,
}

/// `concurrency.adaptive:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdaptive {
    /// A count ≥ 1.
    pub(crate) min_inflight: Option<Int>,
    /// A count ≥ `min_inflight`.
    pub(crate) max_inflight: Option<Int>,
}

/// `routes[]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    /// Unique route name.
    pub(crate) name: Option<String>,
    /// `match:`.
    #[serde(rename = "match")]
    pub(crate) matcher: Option<RawMatch>,
    /// The name of an upstream.
    pub(crate) upstream: Option<String>,
    /// `critical` | `high` | `normal` | `low`.
    pub(crate) priority: Option<String>,
    /// `enforce` | `shadow`.
    pub(crate) mode: Option<String>,
    /// `rate_limits:`.
    pub(crate) rate_limits: Option<Vec<RawRateLimit>>,
    /// `concurrency:`.
    pub(crate) concurrency: Option<RawConcurrency>,
    /// `defer:`.
    pub(crate) defer: Option<RawDefer>,
    /// A count ≥ 0.
    pub(crate) max_upgraded: Option<Int>,
    /// A duration.
    pub(crate) upgraded_idle_timeout: Option<String>,
}

/// `routes[].defer:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDefer {
    /// `overflow` | `always`.
    pub(crate) when: Option<String>,
    /// A size.
    pub(crate) max_body: Option<Size>,
    /// A count ≥ 1.
    pub(crate) attempts: Option<Int>,
    /// A duration.
    pub(crate) backoff: Option<String>,
    /// A duration.
    pub(crate) ttl: Option<String>,
    /// A count ≥ 1.
    pub(crate) max_tasks: Option<Int>,
    /// A duration.
    pub(crate) backoff_max: Option<String>,
}

/// `routes[].match:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMatch {
    /// `api.example.com` or `*.example.com`.
    pub(crate) host: Option<String>,
    /// Starts with `/`.
    pub(crate) path_prefix: Option<String>,
    /// Starts with `/`.
    pub(crate) path_exact: Option<String>,
    /// HTTP method names.
    pub(crate) methods: Option<Vec<String>>,
}

/// `routes[].rate_limits[]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    /// Unique within the route.
    pub(crate) name: Option<String>,
    /// `global` | `client_ip` | `header:<Name>`.
    pub(crate) key: Option<String>,
    /// `N/s`, `N/m` or `N/h`.
    pub(crate) rate: Option<String>,
    /// A count ≥ 1.
    pub(crate) burst: Option<Int>,
    /// `local` | `global`.
    pub(crate) scope: Option<String>,
    /// A count ≥ 0.
    pub(crate) lease: Option<Int>,
    /// A count in 1..=100,000,000.
    pub(crate) max_keys: Option<Int>,
    /// Tokens a request takes: a count in 1..=1,000,000, at most the burst.
    pub(crate) cost: Option<Int>,
    /// A response header name.
    pub(crate) charge_header: Option<String>,
}

/// A whole number (possibly negative, so that `validate` can say "must be at least 1"); its own
/// type so that a wrong value reads "expected a whole number", not "expected i64".
#[derive(Clone, Copy, Debug)]
pub(crate) struct Int(pub(crate) i64);

/// A size: a whole number of bytes, or text with a unit (`512`, `64KiB`, `16MiB`, `1GiB`);
/// `validate` parses the text.
#[derive(Clone, Debug)]
pub(crate) enum Size {
    /// A bare number: bytes.
    Bytes(i64),
    /// Text, unit included.
    Text(String),
}

/// Deserializes `text` into a [`RawConfig`]; `path` only names the file in errors.
///
/// # Errors
/// [`ConfigError::Invalid`] with one error: YAML syntax, an empty file, a top level that is not
/// a mapping, or the first field serde rejects (unknown, or of the wrong type).
pub(crate) fn parse(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
    let invalid = |error: FieldError| ConfigError::Invalid {
        path: path.to_path_buf(),
        errors: vec![error],
    };
    // The shape first, so that an empty file or a top-level list gets a plain-words message
    // instead of "invalid type: unit value, expected struct RawConfig".
    let shape: serde_yaml::Value =
        serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text))
            .map_err(|e| invalid(field_error(&e, text)))?;
    let found = match shape {
        serde_yaml::Value::Mapping(_) => None,
        serde_yaml::Value::Null => Some("the file is empty"),
        serde_yaml::Value::Sequence(_) => Some("found a list"),
        serde_yaml::Value::Tagged(_) => Some("found a tagged value"),
        _ => Some("found a single value"),
    };
    if let Some(found) = found {
        return Err(invalid(FieldError {
            line: Some(1),
            column: Some(1),
            path: String::new(),
            message: format!(
                "expected a mapping with `server`, `upstreams` and `routes` at the top level; {found}"
            ),
        }));
    }
    serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text))
        .map_err(|e| invalid(field_error(&e, text)))
}

/// Turns serde's error into ours: the path from `serde_path_to_error`, the place from
/// `serde_yaml`, and `serde_yaml`'s message without the place and path it embeds, taught
/// (`super::teach`) with the `text` it was found in.
fn field_error(error: &serde_path_to_error::Error<serde_yaml::Error>, text: &str) -> FieldError {
    let mut path = String::new();
    for segment in error.path() {
        match segment {
            serde_path_to_error::Segment::Seq { index } => {
                let _ = write!(path, "[{index}]");
            }
            serde_path_to_error::Segment::Map { key } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            // Enum variants are not fields; where serde could not name the place (YAML syntax
            // errors), the parent is enough.
            serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => {}
        }
    }
    let inner = error.inner();
    let location = inner.location();
    let mut message = inner.to_string();
    if let Some(loc) = &location {
        message = message.replacen(
            &format!(" at line {} column {}", loc.line(), loc.column()),
            "",
            1,
        );
    }
    // serde_yaml puts its own idea of the path in front (`routes[0].name: invalid type: …`).
    if let Some((head, tail)) = message.split_once(": ") {
        if head == path || (!head.is_empty() && !head.contains(char::is_whitespace)) {
            message = tail.to_owned();
        }
    }
    // A number beyond 64 bits fails in serde_yaml's own `Value` before any field sees it.
    if let Some(rest) = message.strip_prefix("invalid type: integer `") {
        if let Some((number, "as u128, expected any YAML value")) = rest.split_once("` ") {
            message = format!("{number} is far too large for any field");
        }
    }
    let line = location.as_ref().map(serde_yaml::Location::line);
    FieldError {
        line,
        column: location.as_ref().map(serde_yaml::Location::column),
        path,
        message: super::teach::teach(&message, text, line),
    }
}

// === impl RawUpstreams ===

impl<'de> Deserialize<'de> for RawUpstreams {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InOrder;

        impl<'de> Visitor<'de> for InOrder {
            type Value = RawUpstreams;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mapping from upstream names to upstreams")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut upstreams = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry::<String, RawUpstream>()? {
                    upstreams.push(entry);
                }
                Ok(RawUpstreams(upstreams))
            }
        }

        deserializer.deserialize_map(InOrder)
    }
}

// === impl Int ===

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Whole;

        impl Visitor<'_> for Whole {
            type Value = Int;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a whole number")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                i64::try_from(v).map(Int).map_err(|_| too_large(v))
            }

            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Int, E> {
                Err(too_large(v))
            }

            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Int, E> {
                i64::try_from(v).map(Int).map_err(|_| too_large(v))
            }
        }

        deserializer.deserialize_i64(Whole)
    }
}

/// The error for a number beyond `i64`: every bound in the schema is far below it.
fn too_large<E: de::Error>(v: impl std::fmt::Display) -> E {
    E::custom(format_args!("{v} is far too large for any field"))
}

// === impl Size ===

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = Size;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size like 512, 64KiB, 16MiB or 1GiB")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                Ok(Size::Bytes(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                i64::try_from(v).map(Size::Bytes).map_err(|_| too_large(v))
            }

            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Size, E> {
                Err(too_large(v))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                Ok(Size::Text(v.to_owned()))
            }
        }

        deserializer.deserialize_any(SizeVisitor)
    }
}
