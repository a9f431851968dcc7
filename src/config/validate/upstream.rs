//! `upstreams.<name>:`: endpoints, timeouts, balancing, health checks and outlier ejection; and `concurrency:` (fixed or `adaptive`), which
//! an upstream and a route both take.

use std::num::NonZeroUsize;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Uri};

use super::cx::Cx;
use super::{join, present};
use crate::config::raw::{
    Int, RawAdaptive, RawConcurrency, RawHealthCheck, RawOutlier, RawRetry, RawUpstream,
    RawUpstreamTls,
};
use crate::config::{
    load_ca, server_name, AdaptiveConfig, Balance, CapSize, ConcurrencyConfig, Config,
    HealthCheckConfig, KeySpec, OutlierConfig, RetryConfig, TlsIdentity, UpstreamConfig,
    UpstreamProtocol, UpstreamTlsConfig, UpstreamTrust,
};

// === impl Cx: upstreams ===

impl Cx {
    pub(super) fn upstream(&mut self, name: &str, raw: &RawUpstream) -> Option<UpstreamConfig> {
        let at = format!("upstreams.{name}");
        let checked_name = self.name(&at, name);
        let endpoints = self.endpoints(&at, raw.endpoints.as_deref());
        let connect_timeout = self.duration(
            &join(&at, "connect_timeout"),
            raw.connect_timeout.as_deref(),
            UpstreamConfig::DEFAULT_CONNECT_TIMEOUT,
            false,
        );
        let timeout = self.duration(
            &join(&at, "timeout"),
            raw.timeout.as_deref(),
            UpstreamConfig::DEFAULT_TIMEOUT,
            false,
        );
        let concurrency = raw
            .concurrency
            .as_ref()
            .map(|c| self.concurrency(&join(&at, "concurrency"), c));
        let resolve_interval = self.duration(
            &join(&at, "resolve_interval"),
            raw.resolve_interval.as_deref(),
            UpstreamConfig::DEFAULT_RESOLVE_INTERVAL,
            true,
        );
        let balance = self.balance(&at, raw);
        let health_check = raw
            .health_check
            .as_ref()
            .map(|h| self.health_check(&join(&at, "health_check"), h));
        let outlier = self.outlier(&join(&at, "outlier"), raw.outlier.as_ref());
        let retry = self.retry(&join(&at, "retry"), raw.retry.as_ref());
        let protocol = self.protocol(&at, raw);
        let tls = raw
            .tls
            .as_ref()
            .map(|t| self.upstream_tls(&join(&at, "tls"), t));
        let (endpoints, https) = endpoints?;
        let tls = present(tls)?;
        if https && tls.as_ref().is_none_or(|t| t.server_name.is_none()) {
            self.verifiable_hosts(&at, &endpoints);
        }
        Some(UpstreamConfig {
            name: checked_name?,
            endpoints,
            connect_timeout: connect_timeout?,
            timeout: timeout?,
            concurrency: present(concurrency)?,
            resolve_interval: resolve_interval?,
            balance: balance?,
            health_check: present(health_check)?,
            outlier: outlier?,
            retry: retry?,
            protocol: protocol?,
            https,
            tls,
        })
    }

    /// `balance:` — `least_request` (the default) or `round_robin`.
    fn balance(&mut self, at: &str, raw: &RawUpstream) -> Option<Balance> {
        self.choice(
            &join(at, "balance"),
            raw.balance.as_deref(),
            &[
                ("least_request", Balance::LeastRequest),
                ("round_robin", Balance::RoundRobin),
            ],
            Balance::default(),
        )
    }

    /// `protocol:` — `http1`, `http2` or `auto` (the default).
    fn protocol(&mut self, at: &str, raw: &RawUpstream) -> Option<UpstreamProtocol> {
        self.choice(
            &join(at, "protocol"),
            raw.protocol.as_deref(),
            &[
                ("http1", UpstreamProtocol::Http1),
                ("http2", UpstreamProtocol::Http2),
                ("auto", UpstreamProtocol::Auto),
            ],
            UpstreamProtocol::default(),
        )
    }

    /// Without `tls.server_name`, the name verified is each endpoint URL's host: it must be one
    /// a certificate can name.
    fn verifiable_hosts(&mut self, at: &str, endpoints: &[Authority]) {
        for (i, endpoint) in endpoints.iter().enumerate() {
            if server_name(endpoint.host()).is_none() {
                self.error(
                    &format!("{at}.endpoints[{i}]"),
                    format!(
                        "{:?} cannot be verified as a TLS server name; set tls.server_name",
                        endpoint.host()
                    ),
                );
            }
        }
    }

    /// `tls:` of an upstream: every file read and checked now (at start and on each reload),
    /// `client_cert` and `client_key` both or neither.
    fn upstream_tls(&mut self, at: &str, raw: &RawUpstreamTls) -> Option<UpstreamTlsConfig> {
        let ca = raw
            .ca
            .as_deref()
            .map(|ca| self.file(&join(at, "ca"), Some(ca), "the path of PEM certificates"));
        let ca = present(ca)?;
        let ca_certs = match &ca {
            Some(path) => match load_ca(path) {
                Ok(certs) => Some(certs),
                Err(error) => self.fail(&join(at, "ca"), error.to_string()),
            },
            None => Some(Vec::new()),
        };
        let server_name = match raw.server_name.as_deref().map(str::trim) {
            None => Some(None),
            Some(name) if server_name(name).is_some() => Some(Some(name.to_owned())),
            Some(name) => self.fail(
                &join(at, "server_name"),
                format!("expected a host name like api.internal or an IP address, found {name:?}"),
            ),
        };
        let client = self.client_identity(at, raw);
        Some(UpstreamTlsConfig {
            ca,
            server_name: server_name?,
            client_cert: raw.client_cert.as_deref().map(Into::into),
            client_key: raw.client_key.as_deref().map(Into::into),
            loaded: UpstreamTrust {
                ca: ca_certs?,
                client: client?,
            },
        })
    }

    /// `tls.client_cert` with `tls.client_key`, read and checked to match; `Some(None)` when
    /// neither is given.
    fn client_identity(&mut self, at: &str, raw: &RawUpstreamTls) -> Option<Option<TlsIdentity>> {
        let (cert_at, key_at) = (join(at, "client_cert"), join(at, "client_key"));
        match (raw.client_cert.as_deref(), raw.client_key.as_deref()) {
            (None, None) => Some(None),
            (Some(_), None) => self.missing(
                &key_at,
                "the path of the PEM private key of client_cert (client_cert and client_key go together)",
            ),
            (None, Some(_)) => self.missing(
                &cert_at,
                "the path of the PEM certificate chain of client_key (client_cert and client_key go together)",
            ),
            (Some(cert), Some(key)) => {
                let cert = self.file(&cert_at, Some(cert), "the path of a PEM certificate chain");
                let key = self.file(&key_at, Some(key), "the path of a PEM private key");
                match TlsIdentity::load(&cert?, &key?) {
                    Ok(identity) => Some(Some(identity)),
                    Err(errors) => {
                        for error in errors {
                            let field = match error.field() {
                                "key" => &key_at,
                                _ => &cert_at,
                            };
                            self.error(field, error.to_string());
                        }
                        None
                    }
                }
            }
        }
    }

    /// `endpoints:` — 1..=[`UpstreamConfig::MAX_ENDPOINTS`] endpoint URLs, all `http://` or all
    /// `https://` (true).
    fn endpoints(&mut self, at: &str, raw: Option<&[String]>) -> Option<(Vec<Authority>, bool)> {
        let endpoints: Vec<Option<(Authority, bool)>> = match raw {
            None => vec![self.missing(
                &join(at, "endpoints"),
                "a list of URLs like [http://127.0.0.1:3000]",
            )],
            Some([]) => vec![self.fail(
                &join(at, "endpoints"),
                "at least one endpoint is required, like [http://127.0.0.1:3000]",
            )],
            Some(list) if list.len() > UpstreamConfig::MAX_ENDPOINTS => vec![self.fail(
                &join(at, "endpoints"),
                format!(
                    "at most {} endpoints, found {}",
                    UpstreamConfig::MAX_ENDPOINTS,
                    list.len()
                ),
            )],
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(i, url)| self.endpoint(&format!("{at}.endpoints[{i}]"), url))
                .collect(),
        };
        let endpoints: Vec<(Authority, bool)> = endpoints.into_iter().collect::<Option<_>>()?;
        let https = endpoints.first().is_some_and(|(_, https)| *https);
        if endpoints.iter().any(|(_, h)| *h != https) {
            return self.fail(
                &join(at, "endpoints"),
                "mixes http:// and https:// endpoints; an upstream's endpoints share one scheme (make two upstreams)",
            );
        }
        Some((endpoints.into_iter().map(|(a, _)| a).collect(), https))
    }

    /// `health_check:` — `path` required (absolute), the rest with their defaults.
    fn health_check(&mut self, at: &str, raw: &RawHealthCheck) -> Option<HealthCheckConfig> {
        let path = match raw.path.as_deref() {
            None => self.missing(&join(at, "path"), "an absolute path like /healthz"),
            Some(p) if p.starts_with('/') && p.parse::<PathAndQuery>().is_ok() => {
                Some(p.to_owned())
            }
            Some(p) => self.fail(
                &join(at, "path"),
                format!("expected an absolute path like /healthz, found {p:?}"),
            ),
        };
        let duration = |cx: &mut Self, field: &str, raw: Option<&str>, default| {
            cx.duration(&join(at, field), raw, default, false)
        };
        let interval = duration(
            self,
            "interval",
            raw.interval.as_deref(),
            HealthCheckConfig::DEFAULT_INTERVAL,
        );
        let timeout = duration(
            self,
            "timeout",
            raw.timeout.as_deref(),
            HealthCheckConfig::DEFAULT_TIMEOUT,
        );
        let after = |cx: &mut Self, field: &str, raw: Option<Int>| {
            cx.whole(
                &join(at, field),
                raw,
                HealthCheckConfig::DEFAULT_AFTER,
                (1, 1000),
            )
        };
        let unhealthy_after = after(self, "unhealthy_after", raw.unhealthy_after);
        let healthy_after = after(self, "healthy_after", raw.healthy_after);
        Some(HealthCheckConfig {
            path: path?,
            interval: interval?,
            timeout: timeout?,
            unhealthy_after: unhealthy_after?,
            healthy_after: healthy_after?,
        })
    }

    /// `outlier:` — absent means its defaults: passive ejection is always on.
    fn outlier(&mut self, at: &str, raw: Option<&RawOutlier>) -> Option<OutlierConfig> {
        let raw = raw.unwrap_or(&RawOutlier {
            consecutive_failures: None,
            ejection: None,
        });
        let consecutive_failures = self.whole(
            &join(at, "consecutive_failures"),
            raw.consecutive_failures,
            OutlierConfig::DEFAULT_CONSECUTIVE_FAILURES,
            (1, 1000),
        );
        let ejection = self.duration_within(
            &join(at, "ejection"),
            raw.ejection.as_deref(),
            OutlierConfig::DEFAULT_EJECTION,
            (Duration::from_millis(1), OutlierConfig::MAX_EJECTION),
        );
        Some(OutlierConfig {
            consecutive_failures: consecutive_failures?,
            ejection: ejection?,
        })
    }

    /// `retry:` — absent means its defaults.
    fn retry(&mut self, at: &str, raw: Option<&RawRetry>) -> Option<RetryConfig> {
        let (attempts, budget) = raw.map_or((None, None), |r| (r.attempts, r.budget.as_deref()));
        let attempts = self.whole(
            &join(at, "attempts"),
            attempts,
            RetryConfig::DEFAULT_ATTEMPTS,
            (1, 10),
        );
        let budget_at = join(at, "budget");
        let budget_percent = match budget {
            None => Some(RetryConfig::DEFAULT_BUDGET_PERCENT),
            Some(text) => match text
                .trim()
                .strip_suffix('%')
                .map(|n| n.trim().parse::<u32>())
            {
                Some(Ok(n)) if n <= 100 => Some(n),
                _ => self.fail(
                    &budget_at,
                    format!("expected a percentage from 0% to 100% like 20%, found {text:?}"),
                ),
            },
        };
        Some(RetryConfig {
            attempts: attempts?,
            budget_percent: budget_percent?,
        })
    }

    /// `concurrency:` of an upstream or a route: `max_inflight` or `adaptive`, the queue.
    pub(super) fn concurrency(
        &mut self,
        at: &str,
        raw: &RawConcurrency,
    ) -> Option<ConcurrencyConfig> {
        let size = self.cap_size(at, raw);
        let queue = self.whole(
            &join(at, "queue"),
            raw.queue,
            ConcurrencyConfig::DEFAULT_QUEUE,
            (0, Config::MAX_COUNT),
        );
        let queue_timeout = self.duration(
            &join(at, "queue_timeout"),
            raw.queue_timeout.as_deref(),
            ConcurrencyConfig::DEFAULT_QUEUE_TIMEOUT,
            false,
        );
        let (fair_by, max_queued_per_key) = self.fairness(at, raw);
        Some(ConcurrencyConfig {
            size: size?,
            queue: queue?,
            queue_timeout: queue_timeout?,
            fair_by: fair_by?,
            max_queued_per_key: max_queued_per_key?,
        })
    }

    /// `fair_by` (`client_ip` or `header:NAME`: one queue for everyone is what its absence
    /// means, so `global` is refused) and `max_queued_per_key` (with `fair_by` only).
    fn fairness(
        &mut self,
        at: &str,
        raw: &RawConcurrency,
    ) -> (Option<Option<KeySpec>>, Option<Option<NonZeroUsize>>) {
        let fair_at = join(at, "fair_by");
        let fair_by = match raw.fair_by.as_deref() {
            None => Some(None),
            Some(text) => match self.key(&fair_at, text) {
                Some(KeySpec::Global) => self.fail(
                    &fair_at,
                    "expected client_ip or header:<Name>: `global` would be one key for every request, which is the queue without fair_by",
                ),
                other => other.map(Some),
            },
        };
        let max_at = join(at, "max_queued_per_key");
        let max_queued_per_key = match (raw.max_queued_per_key, &raw.fair_by) {
            (None, _) => Some(None),
            (Some(_), None) => self.fail(
                &max_at,
                "needs fair_by: it bounds the waiters of one key, and fair_by says what a key is",
            ),
            (Some(n), Some(_)) => self
                .nonzero_usize(&max_at, n.0, Config::MAX_COUNT)
                .map(Some),
        };
        (fair_by, max_queued_per_key)
    }

    /// A route's `concurrency:`: as an upstream's, but `per_endpoint` is an upstream's alone.
    pub(super) fn route_concurrency(
        &mut self,
        at: &str,
        raw: &RawConcurrency,
    ) -> Option<ConcurrencyConfig> {
        if raw.per_endpoint.is_some() {
            return self.fail(
                &join(at, "per_endpoint"),
                "per_endpoint is an upstream's cap (upstreams.<name>.concurrency); a route takes max_inflight or adaptive",
            );
        }
        self.concurrency(at, raw)
    }

    /// The size of a cap: exactly one of `max_inflight`, `adaptive` and `per_endpoint`.
    fn cap_size(&mut self, at: &str, raw: &RawConcurrency) -> Option<CapSize> {
        let given = [
            raw.max_inflight.is_some(),
            raw.adaptive.is_some(),
            raw.per_endpoint.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return self.fail(
                at,
                "max_inflight, adaptive and per_endpoint are mutually exclusive; keep one",
            );
        }
        match (raw.max_inflight, &raw.adaptive, raw.per_endpoint) {
            (Some(n), _, _) => self
                .nonzero_usize(&join(at, "max_inflight"), n.0, Config::MAX_COUNT)
                .map(CapSize::Fixed),
            (_, Some(adaptive), _) => self
                .adaptive(&join(at, "adaptive"), adaptive)
                .map(CapSize::Adaptive),
            (_, _, Some(n)) => self
                .nonzero_usize(&join(at, "per_endpoint"), n.0, Config::MAX_COUNT)
                .map(CapSize::PerEndpoint),
            (None, None, None) => self.missing(
                &join(at, "max_inflight"),
                "a number of requests, at least 1 (or `adaptive:` for a cap that follows the upstream's latency, or `per_endpoint:` on an upstream)",
            ),
        }
    }

    /// `adaptive:` — each bound in 1..=[`AdaptiveConfig::MAX_MAX_INFLIGHT`], with its default,
    /// and `min_inflight` ≤ `max_inflight`.
    fn adaptive(&mut self, at: &str, raw: &RawAdaptive) -> Option<AdaptiveConfig> {
        let max = AdaptiveConfig::MAX_MAX_INFLIGHT;
        let min_inflight = self.nonzero_usize_or(
            &join(at, "min_inflight"),
            raw.min_inflight,
            AdaptiveConfig::DEFAULT_MIN_INFLIGHT,
            max,
        );
        let max_inflight = self.nonzero_usize_or(
            &join(at, "max_inflight"),
            raw.max_inflight,
            AdaptiveConfig::DEFAULT_MAX_INFLIGHT,
            max,
        );
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

    /// `http://host[:port][/]` → `host:port` (port 80 when absent), or `https://…` (port 443
    /// when absent, and true).
    fn endpoint(&mut self, at: &str, raw: &str) -> Option<(Authority, bool)> {
        let expected =
            || format!("expected an endpoint URL like http://127.0.0.1:3000, found {raw:?}");
        let Ok(uri) = raw.trim().parse::<Uri>() else {
            return self.fail(at, expected());
        };
        let (https, default_port) = match uri.scheme_str() {
            Some("http") => (false, 80),
            Some("https") => (true, 443),
            _ => return self.fail(at, expected()),
        };
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
        let authority = match authority.port_u16() {
            Some(0) => self.fail(
                at,
                format!("port 0 is not a valid endpoint port, found {raw:?}"),
            ),
            Some(_) => Some(authority.clone()),
            None => format!("{}:{default_port}", authority.host())
                .parse::<Authority>()
                .ok()
                .or_else(|| self.fail(at, expected())),
        };
        Some((authority?, https))
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
