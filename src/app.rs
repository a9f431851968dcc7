//! Running sluice: binds the listeners, serves until shutdown, and owns the background work
//! (housekeeping of key tables and idle upstream connections, reload on SIGHUP, the admin
//! thread, signals).
//!
//! [`App::bind`] binds every listener first (so tests can bind port 0 and learn the port) and
//! builds the first [`Runtime`]; [`App::run`] serves until the shutdown signal and drains.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::net::listener::{self, Listener};
pub use crate::proxy::fleet::resolve::Resolutions;
use crate::runtime::tls::Acceptor;
use crate::runtime::{Runtime, Shared, HOUSEKEEPING_INTERVAL};
use crate::shutdown::Shutdown;

/// Why sluice could not start (exit status 1; config errors are exit 2 and come earlier).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A bound but not yet serving sluice.
#[derive(Debug)]
pub struct App {
    shared: Arc<Shared>,
    http: Listener,
    http_addr: SocketAddr,
    /// The HTTPS listener, when `server.tls` is set.
    tls: Option<Listener>,
    tls_addr: Option<SocketAddr>,
    admin: Option<std::net::TcpListener>,
    admin_addr: Option<SocketAddr>,
    shutdown: Shutdown,
}

// === impl App ===

impl App {
    /// Binds every listener of `config` and builds the first runtime.
    ///
    /// # Errors
    /// [`StartError::Bind`] when an address cannot be bound.
    pub async fn bind(config: Config) -> Result<App, StartError> {
        let addr = config.server.listen;
        let http = Listener::bind(addr, config.server.max_connections.get())
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let http_addr = http
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        let (tls, tls_addr) = match &config.server.tls {
            Some(t) => {
                let addr = t.listen;
                let bound = Listener::bind_tls(addr, Acceptor::new(&t.identity), &http)
                    .await
                    .and_then(|l| l.local_addr().map(|local| (l, local)))
                    .map_err(|source| StartError::Bind { addr, source })?;
                (Some(bound.0), Some(bound.1))
            }
            None => (None, None),
        };
        let (admin, admin_addr) = match &config.admin {
            Some(a) => {
                let bound = std::net::TcpListener::bind(a.listen)
                    .and_then(|l| l.local_addr().map(|addr| (l, addr)))
                    .map_err(|source| StartError::Bind {
                        addr: a.listen,
                        source,
                    })?;
                (Some(bound.0), Some(bound.1))
            }
            None => (None, None),
        };
        let shared = Arc::new(Shared::new(Runtime::build(
            config,
            None,
            Arc::new(Metrics::new()),
        )));
        Ok(App {
            shared,
            http,
            http_addr,
            tls,
            tls_addr,
            admin,
            admin_addr,
            shutdown: Shutdown::new(),
        })
    }

    /// The address of the plain HTTP listener.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The address of the HTTPS listener, if configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The address of the admin listener, if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The signal that stops this app; trigger it to shut down gracefully.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// The shared state (current runtime, readiness).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serves until the shutdown signal fires, then drains for up to `server.shutdown_grace`.
    pub async fn run(mut self) {
        let config = self.shared.runtime().config.clone();
        self.log_start(&config);
        // What runs beside the listeners is spawned on this runtime, reloads included.
        let _ = self.shared.spawner.set(tokio::runtime::Handle::current());
        crate::supervise::deliverers(&self.shared);
        crate::supervise::resolvers(&self.shared);
        let housekeeping = spawn_housekeeping(self.shared.clone());
        // The admin listener outlives the drain, so /readyz can say 503 while it happens.
        let admin_stop = Shutdown::new();
        let admin = self.spawn_admin(&config, &admin_stop);
        // Installed before readiness is announced: SIGHUP's default action is to terminate, so
        // a reload sent as soon as /readyz says 200 must find the handler in place.
        let sighup = spawn_reload_on_sighup(self.shared.clone());

        self.shared.set_ready(true);
        let mut watch = self.shutdown.watch();
        let ready_flag = self.shared.clone();
        let flip = tokio::spawn(async move {
            watch.wait().await;
            ready_flag.set_ready(false);
            tracing::info!("shutting down: no new connections; draining in-flight requests");
        });
        let shared = self.shared.clone();
        self.serve_until_drained(&config).await;
        // Then deferred deliveries: unsent tasks go back to Redis, those under way finish.
        shared
            .deliverers
            .stop_all(config.server.shutdown_grace)
            .await;
        housekeeping.abort();
        sighup.abort();
        let _ = flip.await;
        admin_stop.trigger();
        if let Some(thread) = admin {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        tracing::info!("stopped");
    }

    /// The start-up lines: each listener and each route.
    fn log_start(&self, config: &Config) {
        tracing::info!(listen = %self.http_addr, "http listener up (HTTP/1.1, h2c)");
        if let (Some(addr), Some(tls)) = (self.tls_addr, &config.server.tls) {
            tracing::info!(listen = %addr, cert = %tls.cert.display(), "https listener up (TLS 1.2/1.3; ALPN h2, http/1.1)");
        }
        for route in &config.routes {
            tracing::info!(route = %route.name, upstream = %config.upstreams[route.upstream].name, limits = route.rate_limits.len(), "route");
        }
    }

    /// Starts the admin listener's thread, if the config has one, stopped by `stop`.
    fn spawn_admin(
        &mut self,
        config: &Config,
        stop: &Shutdown,
    ) -> Option<std::thread::JoinHandle<()>> {
        let (listener, addr, admin_config) =
            (self.admin.take()?, self.admin_addr?, config.admin.clone()?);
        match crate::admin::spawn(listener, admin_config, self.shared.clone(), stop.clone()) {
            Ok(thread) => {
                tracing::info!(listen = %addr, "admin listener up (/ /stats /metrics /healthz /readyz /config /reload /tasks)");
                Some(thread)
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot start the admin listener");
                None
            }
        }
    }

    /// Serves both listeners until the shutdown signal, then lets them drain side by side.
    async fn serve_until_drained(self, config: &Config) {
        let limits = listener::Limits {
            shutdown_grace: config.server.shutdown_grace,
        };
        let https = async {
            if let Some(tls) = self.tls {
                tls.serve(self.shared.clone(), limits, self.shutdown.watch())
                    .await;
            }
        };
        tokio::join!(
            self.http
                .serve(self.shared.clone(), limits, self.shutdown.watch()),
            https
        );
    }
}

/// Runs the housekeeping pass (`Runtime::housekeeping`) every [`HOUSEKEEPING_INTERVAL`] on a
/// blocking thread: a pass over a key table of a million keys takes 10–20 ms of CPU, which on a
/// worker thread would stall every request of that worker (all of them with `workers: 1`).
/// Passes never overlap: the next tick waits for the pass in progress.
fn spawn_housekeeping(shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
        // After a long pass, the next starts a whole interval later rather than at once.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let runtime = shared.runtime();
            let pass = tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                runtime.housekeeping();
                started.elapsed()
            });
            match pass.await {
                Ok(took) => tracing::debug!(?took, "housekeeping pass done"),
                Err(err) => tracing::error!(error = %err, "housekeeping pass failed"),
            }
        }
    })
}

/// Reloads the config on every SIGHUP. The handler is registered before this returns.
fn spawn_reload_on_sighup(shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let hup = signal(SignalKind::hangup());
        tokio::spawn(async move {
            let Ok(mut hup) = hup else {
                tracing::error!("cannot install the SIGHUP handler; reload with POST /reload");
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP received: reloading");
                let shared = shared.clone();
                // Reading and validating the file is blocking work.
                let _ = tokio::task::spawn_blocking(move || crate::reload::reload(&shared)).await;
            }
        })
    }
    #[cfg(not(unix))]
    {
        let _ = shared;
        tokio::spawn(async {})
    }
}

/// Fires `shutdown` on SIGTERM or SIGINT.
pub fn spawn_signal_handlers(shutdown: Shutdown) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                tracing::error!("cannot install signal handlers");
                return;
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        shutdown.trigger();
    });
}
