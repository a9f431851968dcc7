//! Which endpoint a request goes to: O(1) per request whatever the fleet's size, except when
//! the endpoints picked are down (then a scan finds one that is not).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Endpoint, Fleet};
use crate::config::Balance;

// === impl Fleet: balancing ===

impl Fleet {
    /// The index in `endpoints` (a list this fleet gave) of the endpoint for the next request:
    /// by the configured balance, among those not down; when every one is down, any. `None`
    /// for an empty list.
    pub(crate) fn pick(&self, endpoints: &[Arc<Endpoint>]) -> Option<usize> {
        let n = endpoints.len();
        if n <= 1 {
            return n.checked_sub(1);
        }
        let start = match self.balance {
            Balance::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
            Balance::LeastRequest => return Some(self.two_choices(endpoints)),
        };
        Some(self.first_up(endpoints, start))
    }

    /// Power of two choices: two distinct endpoints at random, the one with fewer requests in
    /// flight (the first on a tie); one that is down loses to one that is not.
    fn two_choices(&self, endpoints: &[Arc<Endpoint>]) -> usize {
        let n = endpoints.len();
        let r = self.random();
        let a = (r % n as u64) as usize;
        // Another index: a plus 1..n-1, so never a itself.
        let b = (a + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n;
        match (self.is_down(&endpoints[a]), self.is_down(&endpoints[b])) {
            (false, false) => {
                let load = |i: usize| endpoints[i].pool.inflight();
                if load(b) < load(a) {
                    b
                } else {
                    a
                }
            }
            (true, false) => b,
            (false, true) => a,
            (true, true) => self.first_up(endpoints, a),
        }
    }

    /// The first endpoint from `start` on (wrapping) that is not down; when all are, the first
    /// that is not in pushback (no healthy endpoint: all are used, and the log says so once);
    /// `start` if every one is.
    fn first_up(&self, endpoints: &[Arc<Endpoint>], start: usize) -> usize {
        let n = endpoints.len();
        let from_start = || (0..n).map(|i| (start + i) % n);
        let up = from_start().find(|&i| !self.is_down(&endpoints[i]));
        self.note_fallback(up.is_none());
        up.or_else(|| from_start().find(|&i| !self.in_pushback(&endpoints[i])))
            .unwrap_or(start)
    }

    /// The next number of a SplitMix64 stream: one atomic add, no lock.
    fn random(&self) -> u64 {
        let mut z = self
            .seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
