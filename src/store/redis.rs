//! The connections to a Redis server or cluster, and their circuit breakers (see `crate::store`).

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, RedisResult, ScriptInvocation, TlsCertificates};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::clock::Epoch;
use crate::config::{Config, LimitScope, RedisTarget};

/// Why a [`Store::call`] got no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CallError {
    /// Not asked: not connected, or the key's breaker is open and it is not this call's turn to
    /// probe.
    #[error("Redis is not reachable now")]
    NotAsked,
    /// Redis answered with an error: the command did not run (sluice's scripts read before
    /// they write, and Redis refuses a script only at its first write).
    #[error("Redis refused the call")]
    Refused,
    /// The connection failed: the command may or may not have run.
    #[error("Redis call failed")]
    Failed,
    /// No answer within the call's timeout.
    #[error("no answer from Redis in time")]
    Timeout,
}

/// While a breaker is open, one request per interval (per instance and breaker) tries Redis;
/// the others apply `on_error` without waiting.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Pause between attempts at the first connection (later reconnections are redis-rs', driven
/// by the probes).
pub(crate) const CONNECT_RETRY: Duration = Duration::from_millis(500);

/// Bound on establishing one connection (TCP, TLS, AUTH; for a cluster, each node's), separate
/// from the per-call timeout: it happens in the background, no request waits for it longer
/// than `timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Hash slots of Redis Cluster.
pub(crate) const CLUSTER_SLOTS: usize = 16384;

/// Slots that share a breaker (see the module docs): 256 breakers per cluster.
pub(crate) const SLOTS_PER_BREAKER: usize = 64;

/// Retries of one call inside the cluster client (a MOVED or ASK redirection is one, a
/// reconnection another). Few: every call is bounded by `timeout` anyway, and a request whose
/// answer is no longer awaited is dropped by the client.
const CLUSTER_RETRIES: u32 = 3;

/// Bounds (ms) of the cluster client's wait between retries (its default grows to minutes).
const CLUSTER_RETRY_WAIT_MS: (u64, u64) = (1, 50);

/// [`Health`] states.
const CONNECTING: u8 = 0;
const HEALTHY: u8 = 1;
const FAILING: u8 = 2;

/// The connection to `store.redis` shared by every global limit of a runtime, and kept by the
/// next runtime while `store.redis` (`url` or `cluster`, and `ca`) is unchanged. Dropping it
/// stops the connecting task.
pub struct Store {
    /// Connection, health and counters, shared with the connecting task.
    pub(crate) inner: Arc<Inner>,
    /// The task making the first connection (done once it has).
    connector: JoinHandle<()>,
}

pub(crate) struct Inner {
    /// `store.redis.url` or `.cluster`, to tell whether a reload may keep this store.
    target: RedisTarget,
    /// The certificates of `store.redis.ca`, for the same reason.
    ca: Option<Arc<[u8]>>,
    /// The target, passwords replaced by `***`: what logs show.
    redacted: String,
    /// Set once by the connecting task; redis-rs reconnects by itself from then on.
    conn: OnceLock<RedisConn>,
    /// The circuit breakers and the once-per-change logging.
    health: Health,
    /// Wakes requests waiting for the first connection attempt to end.
    connected: Notify,
    /// `sluice_store_errors_total`.
    errors: Counter,
}

/// A connection to call scripts on: cheap to clone (shared handles to the multiplexed
/// connections).
#[derive(Clone)]
pub(crate) enum RedisConn {
    /// `store.redis.url`.
    Server(ConnectionManager),
    /// `store.redis.cluster`.
    Cluster(ClusterConnection),
}

// === impl RedisConn ===

impl RedisConn {
    /// Runs a script on this connection (`EVALSHA`, loading it on `NOSCRIPT`).
    pub(crate) async fn invoke<T: FromRedisValue>(
        self,
        invocation: &ScriptInvocation<'_>,
    ) -> RedisResult<T> {
        match self {
            RedisConn::Server(mut conn) => invocation.invoke_async(&mut conn).await,
            RedisConn::Cluster(mut conn) => invocation.invoke_async(&mut conn).await,
        }
    }

    /// Sends one command on this connection.
    pub(crate) async fn query<T: FromRedisValue>(self, cmd: &redis::Cmd) -> RedisResult<T> {
        match self {
            RedisConn::Server(mut conn) => cmd.query_async(&mut conn).await,
            RedisConn::Cluster(mut conn) => cmd.query_async(&mut conn).await,
        }
    }

    /// Sends the commands of `pipe` back to back (each still a command of its own to Redis:
    /// others' commands may run between them) and reads their replies.
    pub(crate) async fn pipeline<T: FromRedisValue>(
        self,
        pipe: &redis::Pipeline,
    ) -> RedisResult<T> {
        match self {
            RedisConn::Server(mut conn) => pipe.query_async(&mut conn).await,
            RedisConn::Cluster(mut conn) => pipe.query_async(&mut conn).await,
        }
    }
}

/// Connected or not, and the breakers.
struct Health {
    /// [`CONNECTING`] until the first attempt ends; then [`HEALTHY`] while no breaker is open,
    /// else [`FAILING`].
    state: AtomicU8,
    /// Per breaker: 0 while closed; while open, the time (ns since `epoch`, at least 1) before
    /// which no probe goes.
    breakers: Box<[AtomicU64]>,
    /// Breakers open, to log the first failure and the last recovery once.
    open: AtomicUsize,
    /// The origin of the breakers' times.
    epoch: Epoch,
}

// === impl Store ===

impl Store {
    /// The store of `config`'s global limits: `None` when no limit has `scope: global`; the
    /// `previous` one when `store.redis` still names the same server or cluster with the same
    /// `ca` (the connection and its health carry over a reload); else a new one whose first
    /// connection is made by a task spawned on `spawner` (the proxy's runtime: a reload may run
    /// on the admin thread).
    ///
    /// # Panics
    /// When a new store is needed and `spawner` is `None` (a runtime built outside tokio).
    pub(crate) fn for_limits(
        config: &Config,
        previous: Option<&Arc<Store>>,
        spawner: Option<&Handle>,
        errors: &Counter,
    ) -> Option<Arc<Store>> {
        let uses_store = config
            .routes
            .iter()
            .any(|r| r.rate_limits.iter().any(|l| l.scope == LimitScope::Global));
        let redis = config.store.as_ref()?.redis.as_ref()?;
        if !uses_store {
            return None;
        }
        Some(Store::keep_or_connect(
            (&redis.target, redis.ca_pem.as_ref(), redis.timeout),
            previous,
            spawner,
            errors,
        ))
    }

    /// The store of `config`'s deferred tasks (`store.tasks`, by default `store.redis`'s server
    /// on connections of its own): `None` when no route defers; kept across a reload like
    /// [`Store::for_limits`]'.
    ///
    /// # Panics
    /// As [`Store::for_limits`].
    pub(crate) fn for_tasks(
        config: &Config,
        previous: Option<&Arc<Store>>,
        spawner: Option<&Handle>,
        errors: &Counter,
    ) -> Option<Arc<Store>> {
        let tasks = config.store.as_ref()?.tasks.as_ref()?;
        if !config.routes.iter().any(|r| r.defer.is_some()) {
            return None;
        }
        Some(Store::keep_or_connect(
            (&tasks.target, tasks.ca_pem.as_ref(), tasks.timeout),
            previous,
            spawner,
            errors,
        ))
    }

    /// `previous` if it connects to `target` trusting `ca`, else a new store.
    fn keep_or_connect(
        (target, ca, timeout): (&RedisTarget, Option<&Arc<[u8]>>, Duration),
        previous: Option<&Arc<Store>>,
        spawner: Option<&Handle>,
        errors: &Counter,
    ) -> Arc<Store> {
        if let Some(previous) = previous.filter(|p| p.serves(target, ca)) {
            return previous.clone();
        }
        let spawner = spawner.expect("a runtime using Redis is built inside tokio");
        Arc::new(Store::connect(
            target,
            ca.cloned(),
            timeout,
            spawner,
            errors,
        ))
    }

    /// Starts connecting to `target` in the background; usable at once (requests apply
    /// `on_error` until a connection is up, after waiting at most their timeout for the first
    /// attempt). `timeout` bounds each call inside a cluster client.
    pub(crate) fn connect(
        target: &RedisTarget,
        ca: Option<Arc<[u8]>>,
        timeout: Duration,
        spawner: &Handle,
        errors: &Counter,
    ) -> Store {
        let breakers = match target {
            RedisTarget::Server(_) => 1,
            RedisTarget::Cluster(_) => CLUSTER_SLOTS / SLOTS_PER_BREAKER,
        };
        let inner = Arc::new(Inner {
            target: target.clone(),
            ca,
            redacted: target.to_string(),
            conn: OnceLock::new(),
            health: Health {
                state: AtomicU8::new(CONNECTING),
                breakers: (0..breakers).map(|_| AtomicU64::new(0)).collect(),
                open: AtomicUsize::new(0),
                epoch: Epoch::new(),
            },
            connected: Notify::new(),
            errors: errors.clone(),
        });
        let connector = spawner.spawn(connect(inner.clone(), timeout));
        Store { inner, connector }
    }

    /// True once connected and while no call is failing.
    pub(crate) fn is_healthy(&self) -> bool {
        self.inner.health.state.load(Ordering::Acquire) == HEALTHY
    }

    /// True when this store connects to `target`, trusting the certificates `ca`.
    pub(crate) fn serves(&self, target: &RedisTarget, ca: Option<&Arc<[u8]>>) -> bool {
        self.inner.target == *target && self.inner.ca.as_ref() == ca
    }

    /// The breaker of a key whose cluster hash slot is `slot` (always 0 for a server).
    pub(crate) fn breaker_of(&self, slot: u16) -> usize {
        match self.inner.target {
            RedisTarget::Server(_) => 0,
            RedisTarget::Cluster(_) => usize::from(slot) % CLUSTER_SLOTS / SLOTS_PER_BREAKER,
        }
    }
}

impl Store {
    /// Runs `call` on the connection serving `key`, bounded by `timeout` (the wait for the first
    /// connection included); a failure or timeout feeds the breaker of the key's slot, a success
    /// closes it.
    ///
    /// # Errors
    /// [`CallError`]: not asked (not connected, breaker open), failed, or timed out.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        key: &[u8],
        timeout: Duration,
        call: F,
    ) -> Result<T, CallError>
    where
        F: FnOnce(RedisConn) -> Fut,
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        let inner = &self.inner;
        let breaker = self.breaker_of(slot_of(key));
        let attempt = async {
            let Some(conn) = inner.connection(breaker).await else {
                return Err(CallError::NotAsked);
            };
            call(conn).await.map_err(|err| {
                inner.failed(breaker, &err);
                if is_refusal(&err) {
                    CallError::Refused
                } else {
                    CallError::Failed
                }
            })
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(answer)) => {
                inner.succeeded(breaker);
                Ok(answer)
            }
            Ok(Err(err)) => Err(err),
            Err(_) => {
                inner.failed(breaker, &format_args!("no answer within {timeout:?}"));
                Err(CallError::Timeout)
            }
        }
    }

    /// Where this store connects, and the certificates it trusts: what a dedicated connection
    /// to the same Redis needs ([`open_dedicated`]).
    pub(crate) fn link(&self) -> Link {
        Link {
            target: self.inner.target.clone(),
            ca: self.inner.ca.clone(),
            redacted: self.inner.redacted.clone(),
        }
    }

    /// `sluice_store_errors_total`, for calls made outside [`Store::call`].
    pub(crate) fn errors(&self) -> &Counter {
        &self.inner.errors
    }
}

/// True when `err` is Redis' own error reply (`-OOM`, `-ERR`, …): the command was refused, not
/// lost on the way.
pub(crate) fn is_refusal(err: &redis::RedisError) -> bool {
    matches!(
        err.kind(),
        redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
    )
}

/// Where a store connects: enough to open more connections to the same server or cluster.
#[derive(Clone)]
pub(crate) struct Link {
    /// `store.redis.url` or `.cluster`.
    target: RedisTarget,
    /// `store.redis.ca`, read when the config was loaded.
    ca: Option<Arc<[u8]>>,
    /// For logs.
    pub(crate) redacted: String,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("redis", &self.redacted)
            .finish_non_exhaustive()
    }
}

/// Opens a connection of its own to where `link` points, for calls that must not share the
/// store's multiplexed connection (blocking reads). `response_timeout` bounds each call inside
/// a cluster client (a server's calls are bounded by the caller); one attempt, bounded by twice
/// the connect timeout.
///
/// # Errors
/// The connection error, or a timeout error.
pub(crate) async fn open_dedicated(
    link: &Link,
    response_timeout: Duration,
) -> RedisResult<RedisConn> {
    let roots = link.ca.as_deref().map(|ca| roots_with(ca, &link.redacted));
    match tokio::time::timeout(
        CONNECT_TIMEOUT * 2,
        open(&link.target, roots.as_deref(), response_timeout),
    )
    .await
    {
        Ok(conn) => conn,
        Err(_) => Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "no connection within the connect timeout",
        ))),
    }
}

/// The Redis Cluster hash slot of a key: CRC16 (XMODEM) of its hash tag — the text between the
/// first `{` and the next `}` — modulo 16384. Every sluice key has a tag (the whole bucket
/// name, or a deferring route's name), so each bucket or route maps to one slot of its own,
/// whichever node holds it.
pub(crate) fn slot_of(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|b| *b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % 16384
}

/// `fmt::Write` into a byte buffer (a key's address or hex digits).
pub(crate) struct ByteSink<'a>(pub(crate) &'a mut Vec<u8>);

impl fmt::Write for ByteSink<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Appends a config name with `%` and `:` percent-escaped: the names may hold both, and a key's
/// parts are separated by `:`.
pub(crate) fn escape_into(out: &mut Vec<u8>, name: &str) {
    for b in name.bytes() {
        match b {
            b'%' => out.extend_from_slice(b"%25"),
            b':' => out.extend_from_slice(b"%3A"),
            b => out.push(b),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.connector.abort();
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("redis", &self.inner.redacted)
            .field("healthy", &self.is_healthy())
            .finish_non_exhaustive()
    }
}

/// Makes the first connection, retrying every [`CONNECT_RETRY`] until it succeeds.
async fn connect(inner: Arc<Inner>, timeout: Duration) {
    // Read once: loading the system's roots reads files.
    let roots = inner
        .ca
        .as_deref()
        .map(|ca| roots_with(ca, &inner.redacted));
    loop {
        let attempt = tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            open(&inner.target, roots.as_deref(), timeout),
        )
        .await;
        match attempt {
            Ok(Ok(conn)) => {
                // Only this task sets it.
                let _ = inner.conn.set(conn);
                inner.connected_now();
                inner.connected.notify_waiters();
                return;
            }
            Ok(Err(err)) => inner.connect_failed(&err),
            Err(_) => {
                inner.connect_failed(&format_args!("no connection within {CONNECT_TIMEOUT:?}"))
            }
        }
        inner.connected.notify_waiters();
        tokio::time::sleep(CONNECT_RETRY).await;
    }
}

/// One attempt at connecting to `target`, trusting `roots` (PEM) for TLS when given (else
/// redis-rs' default: the system's roots).
async fn open(
    target: &RedisTarget,
    roots: Option<&[u8]>,
    timeout: Duration,
) -> RedisResult<RedisConn> {
    let certs = || TlsCertificates {
        client_tls: None,
        root_cert: roots.map(<[u8]>::to_vec),
    };
    match target {
        RedisTarget::Server(url) => {
            let client = match roots {
                Some(_) => redis::Client::build_with_tls(url.as_str(), certs())?,
                None => redis::Client::open(url.as_str())?,
            };
            // No retries inside the manager: a failed reconnection surfaces at once as an
            // error, and the next probe starts another. No response timeout either: every
            // call is bounded by `store.redis.timeout` around it.
            let config = ConnectionManagerConfig::new()
                .set_number_of_retries(0)
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(None);
            Ok(RedisConn::Server(
                ConnectionManager::new_with_config(client, config).await?,
            ))
        }
        RedisTarget::Cluster(seeds) => {
            let mut builder = ClusterClient::builder(seeds.iter().map(String::as_str))
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(timeout)
                .retries(CLUSTER_RETRIES)
                .min_retry_wait(CLUSTER_RETRY_WAIT_MS.0)
                .max_retry_wait(CLUSTER_RETRY_WAIT_MS.1);
            if roots.is_some() {
                builder = builder.certs(certs());
            }
            let client = builder.build()?;
            Ok(RedisConn::Cluster(client.get_async_connection().await?))
        }
    }
}

/// The certificates a `rediss://` server is checked against when `store.redis.ca` is given:
/// the system's roots (`SSL_CERT_FILE` / `SSL_CERT_DIR` when set, as rustls-native-certs
/// reads them) plus `ca`, as one PEM text. redis-rs replaces the system's roots with the
/// certificates it is given, so both are given.
fn roots_with(ca: &[u8], redacted: &str) -> Vec<u8> {
    let system = rustls_native_certs::load_native_certs();
    if let Some(error) = system.errors.first() {
        tracing::warn!(
            redis = %redacted,
            %error,
            loaded = system.certs.len(),
            "some of the system's root certificates could not be read; Redis over TLS trusts the others and store.redis.ca"
        );
    }
    let mut pem = Vec::with_capacity(system.certs.len() * 2048 + ca.len() + 1);
    for cert in &system.certs {
        pem_block(&mut pem, cert);
    }
    pem.extend_from_slice(ca);
    pem.push(b'\n');
    pem
}

/// Appends one certificate (DER) as a PEM block: base64 in lines of 64 characters.
fn pem_block(out: &mut Vec<u8>, der: &[u8]) {
    use base64::Engine as _;
    out.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    for line in encoded.as_bytes().chunks(64) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(b"-----END CERTIFICATE-----\n");
}

// === impl Inner ===

impl Inner {
    /// A connection to call Redis on for a key behind `breaker`, or `None` to apply `on_error`
    /// now: not connected yet (the connecting task is on it), or the breaker is open and it is
    /// not this request's turn to probe. Waits only for the end of the very first connection
    /// attempt (the caller bounds the wait).
    pub(crate) async fn connection(&self, breaker: usize) -> Option<RedisConn> {
        let conn = match self.conn.get() {
            Some(conn) => conn,
            None => {
                let notified = self.connected.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.health.state.load(Ordering::Acquire) == CONNECTING {
                    notified.await;
                }
                self.conn.get()?
            }
        };
        self.health.may_call(breaker).then(|| conn.clone())
    }

    /// A call for a key behind `breaker` failed: count it, hold that breaker's probes back, log
    /// if this is news.
    pub(crate) fn failed(&self, breaker: usize, error: &dyn fmt::Display) {
        self.errors.inc();
        if self.health.open_breaker(breaker) {
            self.health.state.store(FAILING, Ordering::Release);
            match self.target {
                RedisTarget::Server(_) => tracing::warn!(
                    redis = %self.redacted,
                    %error,
                    "Redis is failing: global rate limits apply store.redis.on_error (deferred requests get 503) until it answers again"
                ),
                RedisTarget::Cluster(_) => tracing::warn!(
                    redis = %self.redacted,
                    %error,
                    first_slot = breaker * SLOTS_PER_BREAKER,
                    "Redis Cluster is failing for some slots: their keys apply store.redis.on_error (deferred requests get 503) until their node answers again"
                ),
            }
        }
    }

    /// A call for a key behind `breaker` succeeded: close that breaker, log if it was the last
    /// one open.
    pub(crate) fn succeeded(&self, breaker: usize) {
        if self.health.close_breaker(breaker) {
            self.health.state.store(HEALTHY, Ordering::Release);
            tracing::info!(redis = %self.redacted, "Redis answers again: global rate limits and deferred delivery use it");
        }
    }

    /// A connection attempt failed: count it, log if this is news.
    fn connect_failed(&self, error: &dyn fmt::Display) {
        self.errors.inc();
        if self.health.state.swap(FAILING, Ordering::AcqRel) == CONNECTING {
            tracing::warn!(
                redis = %self.redacted,
                %error,
                "Redis is unreachable: global rate limits apply store.redis.on_error (deferred requests get 503) until it answers (retrying in the background)"
            );
        }
    }

    /// The first connection is up.
    fn connected_now(&self) {
        self.health.state.store(HEALTHY, Ordering::Release);
        tracing::info!(redis = %self.redacted, "connected to Redis (global rate limits, deferred delivery)");
    }
}

// === impl Health ===

impl Health {
    /// True when `breaker` is closed, or open and this caller is the one that may probe now (at
    /// most one per [`PROBE_INTERVAL`]).
    fn may_call(&self, breaker: usize) -> bool {
        let Some(slot) = self.breakers.get(breaker) else {
            return true;
        };
        let next = slot.load(Ordering::Acquire);
        if next == 0 {
            return true;
        }
        let now = self.epoch.now();
        now >= next
            && slot
                .compare_exchange(
                    next,
                    self.probe_after(now),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Opens `breaker` (or holds its next probe back); true when it was the first one open.
    fn open_breaker(&self, breaker: usize) -> bool {
        let Some(slot) = self.breakers.get(breaker) else {
            return false;
        };
        let next = self.probe_after(self.epoch.now());
        slot.swap(next, Ordering::AcqRel) == 0 && self.open.fetch_add(1, Ordering::AcqRel) == 0
    }

    /// Closes `breaker`; true when it was the last one open.
    fn close_breaker(&self, breaker: usize) -> bool {
        let Some(slot) = self.breakers.get(breaker) else {
            return false;
        };
        // The common case, a closed breaker, costs one load.
        slot.load(Ordering::Relaxed) != 0
            && slot.swap(0, Ordering::AcqRel) != 0
            && self.open.fetch_sub(1, Ordering::AcqRel) == 1
    }

    /// The time of the next probe after a failure at `now`: never 0, which means closed.
    fn probe_after(&self, now: u64) -> u64 {
        now.saturating_add(PROBE_INTERVAL.as_nanos() as u64).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: a cluster's breakers cover 64 slots each, independently: a failure behind one
    /// holds back that range's calls (one probe per interval), not the others'; a success
    /// closes it; the store is healthy again only when no breaker is open.
    #[tokio::test(start_paused = true)]
    async fn cluster_breakers_open_per_slot_range() {
        // Nothing listens on port 1: the store never connects, which this test does not need.
        let target = RedisTarget::Cluster(vec!["redis://127.0.0.1:1".into()]);
        let timeout = Duration::from_millis(20);
        let store = Store::connect(
            &target,
            None,
            timeout,
            &Handle::current(),
            &Counter::default(),
        );
        assert_eq!(store.inner.health.breakers.len(), 256);
        assert_eq!(store.breaker_of(0), 0);
        assert_eq!(store.breaker_of(63), 0);
        assert_eq!(store.breaker_of(64), 1);
        assert_eq!(store.breaker_of(16383), 255);
        let health = &store.inner.health;
        health.state.store(HEALTHY, Ordering::Release);

        store.inner.failed(3, &"down");
        store.inner.failed(7, &"down");
        assert!(!store.is_healthy());
        assert!(!health.may_call(3) && !health.may_call(7));
        assert!(health.may_call(4), "other ranges still call Redis");
        tokio::time::advance(PROBE_INTERVAL).await;
        assert!(health.may_call(3), "one probe after the interval");
        assert!(!health.may_call(3), "only one");
        store.inner.succeeded(3);
        assert!(health.may_call(3));
        assert!(!store.is_healthy(), "range 7 is still open");
        store.inner.succeeded(7);
        assert!(store.is_healthy());
        assert_eq!(health.open.load(Ordering::Acquire), 0);
    }

    /// Pins: the PEM writer's base64 (RFC 4648 test vectors, padding) and its 64-column lines,
    /// checked by reading the block back with the parser rustls uses.
    #[test]
    fn pem_blocks_encode_base64_in_lines_of_64() {
        for (der, b64) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
        ] {
            let mut out = Vec::new();
            pem_block(&mut out, der);
            let text = String::from_utf8(out).unwrap();
            let body = text
                .strip_prefix("-----BEGIN CERTIFICATE-----\n")
                .and_then(|t| t.strip_suffix("-----END CERTIFICATE-----\n"))
                .unwrap();
            assert_eq!(body.trim_end(), b64, "{der:?}");
        }
        use rustls_pki_types::pem::PemObject;
        let der: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mut out = Vec::new();
        pem_block(&mut out, &der);
        assert!(String::from_utf8_lossy(&out)
            .lines()
            .all(|l| l.len() <= 64 || l.starts_with("-----")));
        let back = rustls_pki_types::CertificateDer::from_pem_slice(&out).unwrap();
        assert_eq!(back.as_ref(), &der[..]);
    }
}
