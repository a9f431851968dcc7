//! The drain signal shared by every listener: SIGTERM/SIGINT (or a test) triggers it; accept
//! loops stop, in-flight requests get `server.shutdown_grace` to finish, `/readyz` turns 503.

use tokio::sync::watch;

/// Triggers shutdown. Cloning shares the same signal.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: std::sync::Arc<watch::Sender<bool>>,
}

/// Waits for shutdown; one per task that must stop.
#[derive(Debug, Clone)]
pub(crate) struct ShutdownWatch {
    rx: watch::Receiver<bool>,
}

// === impl Shutdown ===

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A signal that has not fired.
    pub fn new() -> Self {
        let (tx, _) = watch::channel(false);
        Shutdown {
            tx: std::sync::Arc::new(tx),
        }
    }

    /// Fires the signal; idempotent.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// A watch that resolves when the signal fires.
    pub(crate) fn watch(&self) -> ShutdownWatch {
        ShutdownWatch {
            rx: self.tx.subscribe(),
        }
    }
}

// === impl ShutdownWatch ===

impl ShutdownWatch {
    /// Resolves once shutdown has been triggered (at once if it already was).
    pub(crate) async fn wait(&mut self) {
        // An error means every sender is gone: nobody can trigger any more, so treat it as
        // shutdown rather than waiting forever.
        let _ = self.rx.wait_for(|fired| *fired).await;
    }
}
