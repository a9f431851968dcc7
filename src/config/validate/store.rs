//! `store:`: `store.redis`, the server or cluster of global limits, and `store.tasks`, where
//! deferred tasks live (`store.redis`' server unless it names its own).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::cx::Cx;
use super::join;
use crate::config::raw::{RawRedis, RawStore, RawTasks};
use crate::config::{
    redact_url, OnStoreError, RedisConfig, RedisTarget, StoreConfig, TaskStoreConfig,
};

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

// === impl Cx: store ===

impl Cx {
    pub(super) fn store(&mut self, raw: &RawStore) -> Option<StoreConfig> {
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
            None => inherited(TaskStoreConfig::DEFAULT_TIMEOUT),
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
            RedisConfig::DEFAULT_TIMEOUT,
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
            OnStoreError::default(),
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
            TaskStoreConfig::DEFAULT_TIMEOUT,
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
                    redact_url(url)
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
                    redact_url(url)
                ),
            );
        }
        #[cfg(feature = "redis")]
        if redis::Client::open(url).is_err() {
            return self.fail(
                at,
                format!(
                    "not a valid Redis URL, found {:?}; expected redis://[user:password@]host[:port][/db] or rediss://…",
                    redact_url(url)
                ),
            );
        }
        #[cfg(not(feature = "redis"))]
        let _ = at;
        Some(url.to_owned())
    }

    /// `store.redis.cluster`: 1 to [`RedisTarget::MAX_CLUSTER_SEEDS`] seed URLs, all with TLS or all without
    /// (the cluster client uses one mode for every node).
    fn cluster(&mut self, at: &str, raw: &[String]) -> Option<RedisTarget> {
        if raw.is_empty() {
            return self.fail(
                at,
                "must list at least one seed node, like [redis://10.0.0.1:6379, redis://10.0.0.2:6379]",
            );
        }
        if raw.len() > RedisTarget::MAX_CLUSTER_SEEDS {
            return self.fail(
                at,
                format!(
                    "at most {} seed nodes, found {}; a few are enough: the client discovers the others",
                    RedisTarget::MAX_CLUSTER_SEEDS,
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
}
