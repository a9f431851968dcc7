//! `server.retry_after_spread`: the `Retry-After` of a 503 (and of a 429 from a limit keyed
//! `global`) spread over the whole seconds from the exact wait `t` to `t × (1 + spread)`,
//! rounded up, so that clients rejected at the same moment do not all come back in the same
//! second.
//!
//! Evenly, not at random: each answer takes the next point of a Weyl sequence (multiples of the
//! golden ratio, modulo 1), so any run of rejections — 200 at once, or 3 — covers the range
//! about equally, which independent random draws do not. One atomic add per answer, no lock.
//! Never below the exact wait: a client that honours it is never early. Only the field a client
//! waits on is spread: `RateLimit`'s `t` and `grpc-retry-pushback-ms` stay exact.

use std::sync::atomic::{AtomicU64, Ordering};

/// 2⁶⁴ / φ: the step of the sequence.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Spreads `Retry-After` values (see the module docs).
#[derive(Debug)]
pub(crate) struct Spread {
    /// The spread in thousandths (0 = off).
    per_mille: u64,
    /// The sequence's position, stepped by [`GOLDEN`] per answer.
    next: AtomicU64,
}

// === impl Spread ===

impl Spread {
    /// A spread of `factor` (0 = off; the config bounds it to 0..=1).
    pub(crate) fn new(factor: f64) -> Self {
        Spread {
            per_mille: (factor.clamp(0.0, 1.0) * 1000.0).round() as u64,
            next: AtomicU64::new(0),
        }
    }

    /// The `Retry-After` to send for an exact wait of `secs`: one of `secs ..= ⌈secs × (1 +
    /// spread)⌉`, each about as often.
    pub(crate) fn apply(&self, secs: u64) -> u64 {
        if self.per_mille == 0 || secs == 0 {
            return secs;
        }
        let top = secs
            .saturating_mul(1000 + self.per_mille)
            .div_ceil(1000)
            .max(secs);
        let choices = u128::from(top - secs) + 1;
        let point = self.next.fetch_add(GOLDEN, Ordering::Relaxed);
        // point / 2⁶⁴ is in [0, 1): scaled to 0..choices.
        let offset = (u128::from(point) * choices) >> 64;
        secs + offset as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts of each value over `n` answers for an exact `secs`.
    fn counts(spread: &Spread, secs: u64, n: usize) -> std::collections::BTreeMap<u64, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..n {
            *counts.entry(spread.apply(secs)).or_default() += 1;
        }
        counts
    }

    /// 200 rejections of 10 s with the default 0.5: every value of 10..=15, each 33 ± 2 times.
    #[test]
    fn spreads_evenly_over_t_to_one_and_a_half_t() {
        let got = counts(&Spread::new(0.5), 10, 200);
        assert_eq!(
            got.keys().copied().collect::<Vec<_>>(),
            (10..=15).collect::<Vec<_>>()
        );
        assert!(got.values().all(|&n| (31..=36).contains(&n)), "{got:?}");
    }

    /// 1 s spreads to 1 or 2 (1.5 rounded up), about half each; even three answers use both.
    #[test]
    fn one_second_spreads_to_one_or_two() {
        let got = counts(&Spread::new(0.5), 1, 100);
        assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        assert!(got.values().all(|&n| (45..=55).contains(&n)), "{got:?}");
        let few = counts(&Spread::new(0.5), 1, 3);
        assert_eq!(few.len(), 2, "{few:?}");
    }

    /// Off: the exact value, always; never below it whatever the spread.
    #[test]
    fn zero_is_off_and_nothing_is_early() {
        let off = Spread::new(0.0);
        assert!((0..50).all(|_| off.apply(7) == 7));
        let full = Spread::new(1.0);
        for secs in [1, 2, 59, 60, 3600] {
            let got = counts(&full, secs, 64);
            assert!(
                got.keys().all(|&v| v >= secs && v <= secs * 2),
                "{secs}: {got:?}"
            );
        }
        assert_eq!(full.apply(u64::MAX), u64::MAX, "saturates");
    }
}
