//! Open connections per client address: `server.max_connections_per_ip`.
//!
//! The connection cap (`max_connections`) is global, so without this one client could take all
//! of it — 40 partial request heads from one address make every other client wait. An address
//! (IPv6: its `ipv6_key_prefix`) with the cap's worth of connections open has further ones
//! closed at accept (HAProxy's `src_conn_cur` rule, NGINX's `limit_conn` on connections).
//!
//! The table holds only addresses with a connection open, so it is bounded by
//! `max_connections`. A std `Mutex`: one insert or decrement per connection, no `.await` inside.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Connections open per client address, shared by the plain and the TLS listener.
#[derive(Debug, Default)]
pub(crate) struct PerIp {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection of an address; dropping it counts the connection closed.
#[derive(Debug)]
pub(crate) struct IpSlot {
    table: Arc<PerIp>,
    client: IpAddr,
}

// === impl PerIp ===

impl PerIp {
    /// Counts a new connection of `client`, unless it has `cap` open already.
    pub(crate) fn enter(self: &Arc<Self>, client: IpAddr, cap: usize) -> Option<IpSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(client).or_insert(0);
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            table: self.clone(),
            client,
        })
    }

    /// Addresses with a connection open (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: an address gets at most `cap` slots, another address is not affected, and the
    /// table forgets an address when its last connection closes.
    #[test]
    fn caps_each_address_and_forgets_closed_ones() {
        let table = Arc::new(PerIp::default());
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = table.enter(a, 2).expect("1 of 2");
        let second = table.enter(a, 2).expect("2 of 2");
        assert!(table.enter(a, 2).is_none(), "a third from a is refused");
        let other = table.enter(b, 2).expect("b has its own count");
        drop(first);
        let again = table.enter(a, 2).expect("a slot came back");
        drop((second, again, other));
        assert_eq!(table.len(), 0);
    }
}
