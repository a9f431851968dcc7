//! The one accept loop of both listeners, the proxy's and the admin's: whoever reaches their
//! address must not pin a core or every file descriptor.
//!
//! - a slot of the listener's connection cap is taken before `accept`, so connections beyond
//!   the cap wait in the kernel's backlog;
//! - a connection from a client that has its share open already is closed at once (the proxy's
//!   `max_connections_per_ip`, the admin's fixed share), so one client cannot take every slot;
//! - an accept error (EMFILE and friends, which last until a descriptor is freed) is logged and
//!   retried after [`ACCEPT_BACKOFF`] instead of spinning.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::per_ip::{IpSlot, PerIp};
use crate::shutdown::ShutdownWatch;

/// The pause after a failed `accept`.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A listening socket with its connection slots and its count of connections per client.
#[derive(Debug)]
pub(crate) struct Gate {
    tcp: TcpListener,
    /// Each open connection holds one (the proxy's plain and TLS listeners share theirs).
    slots: Arc<Semaphore>,
    /// Connections open per client (shared like `slots`).
    per_client: Arc<PerIp>,
}

/// One client's share of the connections: the key its connections count under (an address,
/// or an IPv6 prefix) and how many it may have open.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Share {
    pub key: IpAddr,
    pub cap: usize,
}

/// What an accepted connection holds until it closes: its slot and its client's count.
#[derive(Debug)]
pub(crate) struct Held {
    _slot: OwnedSemaphorePermit,
    _client: Option<IpSlot>,
}

/// An accepted connection.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub tcp: TcpStream,
    pub peer: SocketAddr,
    pub held: Held,
}

// === impl Gate ===

impl Gate {
    /// A gate on `tcp` with its own `max_connections` slots.
    pub(crate) fn new(tcp: TcpListener, max_connections: usize) -> Self {
        Gate {
            tcp,
            slots: Arc::new(Semaphore::new(max_connections)),
            per_client: Arc::default(),
        }
    }

    /// A gate on `tcp` that shares `beside`'s slots and per-client counts.
    pub(crate) fn beside(tcp: TcpListener, beside: &Gate) -> Self {
        Gate {
            tcp,
            slots: beside.slots.clone(),
            per_client: beside.per_client.clone(),
        }
    }

    /// The bound address (with the real port when 0 was asked for).
    ///
    /// # Errors
    /// The OS error, if the socket cannot tell.
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The next connection admitted; `None` once `stop` fires. `share` gives a peer's share
    /// (`None`: unbounded); a connection beyond it is closed and told to `refused`.
    pub(crate) async fn accept(
        &self,
        stop: &mut ShutdownWatch,
        share: impl Fn(SocketAddr) -> Option<Share>,
        refused: impl Fn(SocketAddr),
    ) -> Option<Admitted> {
        let slot = tokio::select! {
            slot = self.slots.clone().acquire_owned() => slot.ok()?,
            () = stop.wait() => return None,
        };
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = accept_backing_off(|| self.tcp.accept()) => accepted,
                () = stop.wait() => return None,
            };
            let client = match share(peer) {
                None => None,
                Some(Share { key, cap }) => match self.per_client.enter(key, cap) {
                    Some(counted) => Some(counted),
                    None => {
                        refused(peer);
                        continue;
                    }
                },
            };
            let held = Held {
                _slot: slot,
                _client: client,
            };
            return Some(Admitted { tcp, peer, held });
        }
    }
}

/// Calls `accept` until it succeeds, pausing [`ACCEPT_BACKOFF`] after each error: errors such
/// as EMFILE persist until a descriptor is freed, and retrying at once would spin a core.
async fn accept_backing_off<T, F, Fut>(mut accept: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    loop {
        match accept().await {
            Ok(accepted) => return accepted,
            Err(err) => {
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::{accept_backing_off, ACCEPT_BACKOFF};

    /// Regression (the admin listener retried a failed accept at once, spinning a core on
    /// EMFILE): after each error, accept is tried again only after the back-off.
    #[tokio::test(start_paused = true)]
    async fn accept_errors_back_off() {
        let calls = AtomicUsize::new(0);
        let accept = || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 1000 {
                    Err(std::io::Error::from_raw_os_error(24)) // EMFILE
                } else {
                    Ok(n)
                }
            }
        };
        let second = Duration::from_secs(1);
        let got = tokio::time::timeout(second, accept_backing_off(accept)).await;
        assert!(
            got.is_err(),
            "a thousand errors were retried within a second"
        );
        let tried = calls.load(Ordering::SeqCst);
        let at_most = (second.as_millis() / ACCEPT_BACKOFF.as_millis()) as usize + 1;
        assert!(
            (at_most - 1..=at_most).contains(&tried),
            "{tried} accept calls in 1 s, expected about {at_most}"
        );
    }
}
