//! The proxies compared, each a process of its own with one worker, configured for the same
//! upstream capacity: its config (written into the run's directory), how it is started, and how
//! it is stopped.
//!
//! Every process is started under `timeout`, so it ends by itself even if the bench is killed
//! before it can stop it (NGINX's workers would otherwise outlive a killed master). The bench
//! stops each with SIGTERM (which `timeout` passes on), then SIGKILL if it has not exited after
//! a few seconds.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The longest any proxy process may live; the whole run takes a few minutes.
const LIFETIME: Duration = Duration::from_secs(20 * 60);

/// The proxies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// sluice, `max_inflight` = the upstream's workers.
    SluiceFixed,
    /// sluice, `concurrency.adaptive`.
    SluiceAdaptive,
    /// NGINX, `limit_req` at the capacity + `limit_conn` at the workers.
    Nginx,
    /// HAProxy, server `maxconn` + queue + `set-priority-class`.
    Haproxy,
}

/// What every proxy is configured from.
#[derive(Clone, Debug)]
pub(crate) struct Policy {
    /// The upstream's address.
    pub(crate) upstream: SocketAddr,
    /// The upstream's workers: the cap of sluice, NGINX's `limit_conn`, HAProxy's `maxconn`.
    pub(crate) workers: usize,
    /// The upstream's capacity, req/s: NGINX's `limit_req` rate.
    pub(crate) capacity: u32,
    /// Requests that may wait: sluice's `queue`, NGINX's `limit_req` burst (HAProxy's queue is
    /// bounded by time alone, see [`haproxy_cfg`]).
    pub(crate) queue: usize,
    /// The longest a request may wait: sluice's `queue_timeout`, HAProxy's `timeout queue`.
    pub(crate) queue_timeout: Duration,
    /// The adaptive cap's bounds.
    pub(crate) adaptive: (usize, usize),
}

/// A running proxy.
pub(crate) struct Target {
    pub(crate) kind: Kind,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// sluice's admin listener (for `sluice_concurrency_limit`).
    pub(crate) admin: Option<SocketAddr>,
    /// The config file it runs with.
    pub(crate) config: PathBuf,
    child: Child,
}

// === impl Kind ===

impl Kind {
    /// Every kind, in the order of the tables.
    pub(crate) const ALL: [Kind; 4] = [
        Kind::SluiceFixed,
        Kind::SluiceAdaptive,
        Kind::Nginx,
        Kind::Haproxy,
    ];

    /// The name in `OVERLOAD_TARGETS` and the TSV.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Kind::SluiceFixed => "sluice",
            Kind::SluiceAdaptive => "sluice-adaptive",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        }
    }

    /// The name in tables and plots.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::SluiceFixed => "sluice (fixed cap)",
            Kind::SluiceAdaptive => "sluice (adaptive cap)",
            Kind::Nginx => "NGINX",
            Kind::Haproxy => "HAProxy",
        }
    }

    /// Whether it orders waiting requests by priority.
    pub(crate) fn has_priority(self) -> bool {
        !matches!(self, Kind::Nginx)
    }

    pub(crate) fn from_key(key: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.key() == key)
    }

    /// The program it needs on the PATH (`None`: the bench's own sluice build).
    pub(crate) fn program(self) -> Option<&'static str> {
        match self {
            Kind::SluiceFixed | Kind::SluiceAdaptive => None,
            Kind::Nginx => Some("nginx"),
            Kind::Haproxy => Some("haproxy"),
        }
    }
}

// === impl Target ===

impl Target {
    /// Writes the config into `dir` and starts the proxy on a free loopback port. `sluice` is
    /// the sluice executable.
    pub(crate) fn start(
        kind: Kind,
        policy: &Policy,
        dir: &Path,
        sluice: &Path,
    ) -> Result<Target, String> {
        let addr = free_port()?;
        let (admin, config, mut command) = match kind {
            Kind::SluiceFixed | Kind::SluiceAdaptive => {
                let admin = free_port()?;
                let path = dir.join(format!("{}.yaml", kind.key()));
                write(&path, &sluice_yaml(kind, policy, addr, admin))?;
                let mut command = under_timeout(sluice.as_os_str());
                command.arg("run").arg("-c").arg(&path);
                (Some(admin), path, command)
            }
            Kind::Nginx => {
                let prefix = dir.join("nginx");
                std::fs::create_dir_all(&prefix)
                    .map_err(|e| format!("cannot create {}: {e}", prefix.display()))?;
                let path = dir.join("nginx.conf");
                write(&path, &nginx_conf(policy, addr, &prefix))?;
                let mut command = under_timeout("nginx".as_ref());
                command
                    .arg("-p")
                    .arg(&prefix)
                    .arg("-e")
                    .arg(prefix.join("error.log"))
                    .arg("-c")
                    .arg(&path)
                    .args(["-g", "daemon off;"]);
                (None, path, command)
            }
            Kind::Haproxy => {
                let path = dir.join("haproxy.cfg");
                write(&path, &haproxy_cfg(policy, addr))?;
                let mut command = under_timeout("haproxy".as_ref());
                command.arg("-db").arg("-f").arg(&path);
                (None, path, command)
            }
        };
        let log = dir.join(format!("{}.log", kind.key()));
        let log = std::fs::File::create(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let err = log
            .try_clone()
            .map_err(|e| format!("cannot share the log file: {e}"))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", kind.label()))?;
        Ok(Target {
            kind,
            addr,
            admin,
            config,
            child,
        })
    }

    /// True while the process runs.
    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if !self.alive() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `timeout -k 5 LIFETIME program`: the process ends by itself after [`LIFETIME`].
fn under_timeout(program: &std::ffi::OsStr) -> Command {
    let mut command = Command::new("timeout");
    command
        .args(["-k", "5", &format!("{}s", LIFETIME.as_secs())])
        .arg(program);
    command
}

/// A free port on 127.0.0.1 (bound, then released for the proxy to bind; the window is short
/// and only this machine's other programs could take it).
fn free_port() -> Result<SocketAddr, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn millis(d: Duration) -> u128 {
    d.as_millis()
}

/// Two routes to one upstream with a cap and a priority queue.
fn sluice_yaml(kind: Kind, p: &Policy, addr: SocketAddr, admin: SocketAddr) -> String {
    let size = match kind {
        Kind::SluiceAdaptive => format!(
            "adaptive: {{ min_inflight: {}, max_inflight: {} }}",
            p.adaptive.0, p.adaptive.1
        ),
        _ => format!("max_inflight: {}", p.workers),
    };
    format!(
        "# {label}: the overload bench's config (benches/overload).\n\
         server:\n  listen: {addr}\n  workers: 1\n  shutdown_grace: 1s\n\
         admin:\n  listen: {admin}\n\
         upstreams:\n  api:\n    endpoints: [http://{up}]\n    timeout: 5s\n    \
         concurrency: {{ {size}, queue: {queue}, queue_timeout: {timeout}ms }}\n\
         routes:\n  \
         - {{ name: critical, match: {{ path_prefix: /critical }}, upstream: api, priority: critical }}\n  \
         - {{ name: batch, match: {{ path_prefix: /batch }}, upstream: api, priority: low }}\n",
        label = kind.label(),
        up = p.upstream,
        queue = p.queue,
        timeout = millis(p.queue_timeout),
    )
}

/// NGINX has no priorities: `limit_req` paces admissions at the capacity (up to `queue`
/// requests are delayed to fit the rate, as in a queue; more get 429), and `limit_conn` keeps
/// at most `workers` requests at the upstream (more get 503). Both key on the server name: one
/// budget for everyone, as the upstream's capacity is.
fn nginx_conf(p: &Policy, addr: SocketAddr, prefix: &Path) -> String {
    let mut conf = String::new();
    let _ = write!(
        conf,
        "# NGINX: the overload bench's config (benches/overload).\n\
         worker_processes 1;\n\
         pid {pid};\n\
         error_log {log} error;\n\
         events {{ worker_connections 8192; multi_accept on; }}\n\
         http {{\n    access_log off;\n    keepalive_requests 10000000;\n    keepalive_timeout 75s;\n    \
         limit_req_zone $server_name zone=capacity:1m rate={rate}r/s;\n    \
         limit_conn_zone $server_name zone=inflight:1m;\n    \
         limit_req_status 429;\n    limit_conn_status 503;\n    \
         # Rejections are not written to the error log (level error).\n    \
         limit_req_log_level info;\n    limit_conn_log_level info;\n    \
         upstream api {{\n        server {up};\n        keepalive 64;\n    }}\n    \
         server {{\n        listen {addr} backlog=4096;\n        server_name overload;\n        \
         location / {{\n            \
         limit_req zone=capacity burst={burst};\n            \
         limit_conn inflight {workers};\n            \
         proxy_pass http://api;\n            proxy_http_version 1.1;\n            \
         proxy_set_header Connection \"\";\n        }}\n    }}\n}}\n",
        pid = prefix.join("nginx.pid").display(),
        log = prefix.join("error.log").display(),
        rate = p.capacity,
        up = p.upstream,
        burst = p.queue,
        workers = p.workers,
    );
    conf
}

/// HAProxy: the server's `maxconn` is the cap; requests beyond it wait in the server's queue,
/// lower `priority-class` first, for at most `timeout queue` (then 503). The queue has no
/// length bound (`maxqueue` would turn critical requests away as soon as it is full of
/// low-priority ones, as sluice's queue would without shedding): HAProxy's own way to bound it
/// is time.
fn haproxy_cfg(p: &Policy, addr: SocketAddr) -> String {
    format!(
        "# HAProxy: the overload bench's config (benches/overload).\n\
         global\n    nbthread 1\n    maxconn 8192\n\
         defaults\n    mode http\n    option http-keep-alive\n    timeout connect 1s\n    \
         timeout client 30s\n    timeout server 10s\n    timeout http-keep-alive 30s\n    \
         timeout queue {timeout}ms\n\
         frontend fe\n    bind {addr}\n    \
         http-request set-priority-class int(-10) if {{ path_beg /critical }}\n    \
         http-request set-priority-class int(10) if {{ path_beg /batch }}\n    \
         default_backend be\n\
         backend be\n    http-reuse always\n    server api {up} maxconn {workers}\n",
        timeout = millis(p.queue_timeout),
        up = p.upstream,
        workers = p.workers,
    )
}
