//! Hot reload: SIGHUP or `POST /reload` reads the config file again.
//!
//! [`reload`] blocks (file reads, YAML parsing, building the runtime): both callers run it on a
//! blocking thread, never on a thread that serves requests or admin endpoints.
//!
//! A valid config becomes a new [`Runtime`] published at once for new requests; requests in
//! flight finish under the runtime they started with; connections are untouched. Limiter state
//! whose route name, limit name and parameters are unchanged is carried over, and so are caps
//! and upstream pools that did not change (see [`Runtime::build`]). An invalid config changes
//! nothing: it is logged with its line and field path and counted as a failure.
//!
//! The TLS certificate and key are read again too (loading the config reads them): new
//! handshakes use the new certificate, established TLS connections keep theirs. A certificate
//! or key that cannot be read or does not match fails the reload like any config error.
//!
//! Some settings belong to things built once at start-up — listener addresses, worker threads,
//! the connection cap. A reload that changes them logs that a restart is needed and keeps the
//! running ones.

use crate::config::{self, Config, ConfigError};
use crate::runtime::{Runtime, Shared};

/// What a successful reload did.
#[derive(Debug, Clone)]
pub(crate) struct ReloadReport {
    /// Routes in the new config.
    pub routes: usize,
    /// Changed settings that only take effect after a restart.
    pub restart_required: Vec<&'static str>,
}

/// Reloads the config file the running config came from.
///
/// # Errors
/// The [`ConfigError`] of the new file; the running config is kept.
pub(crate) fn reload(shared: &Shared) -> Result<ReloadReport, ConfigError> {
    // One reload at a time: two racing reloads could publish an older file last.
    let _one_at_a_time = shared.reloading.lock().unwrap_or_else(|e| e.into_inner());
    let current = shared.runtime();
    let path = current.config.source.clone();
    let new = match config::load(&path) {
        Ok(new) => new,
        Err(err) => {
            shared.metrics.reload(false);
            tracing::error!("reload failed, keeping the running config:\n{err}");
            return Err(err);
        }
    };
    let restart_required = restart_required(&current.config, &new);
    for field in &restart_required {
        tracing::warn!(
            field,
            "changed in the config file; takes effect after a restart (the running value is kept)"
        );
    }
    let report = ReloadReport {
        routes: new.routes.len(),
        restart_required,
    };
    if let Some(tls) = &new.server.tls {
        tracing::info!(cert = %tls.cert.display(), "TLS certificate reloaded; new handshakes use it");
    }
    shared.swap(Runtime::build(new, Some(&current), shared.metrics.clone()));
    // Counted as soon as the new runtime serves: a client that sees it sees the count.
    shared.metrics.reload(true);
    crate::supervise::deliverers(shared);
    crate::supervise::resolvers(shared);
    tracing::info!(file = %path.display(), routes = report.routes, "config reloaded");
    Ok(report)
}

/// Settings a reload cannot apply to what is already running.
fn restart_required(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.server.listen != new.server.listen {
        changed.push("server.listen");
    }
    if old.server.tls.as_ref().map(|t| t.listen) != new.server.tls.as_ref().map(|t| t.listen) {
        changed.push("server.tls.listen");
    }
    if old.admin.as_ref().map(|a| a.listen) != new.admin.as_ref().map(|a| a.listen) {
        changed.push("admin.listen");
    }
    if old.server.workers != new.server.workers {
        changed.push("server.workers");
    }
    if old.server.max_connections != new.server.max_connections {
        changed.push("server.max_connections");
    }
    if old.server.shutdown_grace != new.server.shutdown_grace {
        changed.push("server.shutdown_grace");
    }
    changed
}
