use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroUsize;
use std::sync::Arc;

use governor::nanos::Nanos;
use prometheus_client::metrics::counter::Counter;

use super::*;

fn table(max_keys: usize) -> KeyTable {
    KeyTable::new(
        NonZeroUsize::new(max_keys).expect("nonzero"),
        Counter::default(),
    )
}

fn key(i: u32) -> LimitKey {
    LimitKey::Ip(IpAddr::V4(Ipv4Addr::from(i)))
}

/// Sets `key`'s state to `value` at time `now`, the way a check does.
fn put(t: &KeyTable, i: u32, value: u64, now: u64) {
    t.set(&key(i), value, now);
}

/// The shards' capacities add up to `max_keys`, whatever the shard count.
#[test]
fn capacities_add_up_to_max_keys() {
    for max_keys in [1, 2, 63, 64, 65, 100, 1000, 1023, 100_000] {
        let t = table(max_keys);
        let total: usize = t.shards.iter().map(|s| read(s).capacity).sum();
        assert_eq!(total, max_keys);
        assert!(t.shards.len().is_power_of_two());
        assert!(t.shards.iter().all(|s| read(s).capacity >= 1));
    }
}

/// Never more than `max_keys` keys; every key past the bound is one eviction; the slot vectors
/// never grow past their shard's capacity.
#[test]
fn bounded_and_counted() {
    let t = table(1000);
    for i in 0..20_000 {
        put(&t, i, u64::MAX, u64::from(i));
        assert!(t.len() <= 1000);
    }
    assert_eq!(t.len(), 1000);
    assert_eq!(t.evictions(), 19_000);
    for shard in &*t.shards {
        let s = read(shard);
        assert!(
            s.slots.capacity() <= s.capacity,
            "{} > {}",
            s.slots.capacity(),
            s.capacity
        );
        assert_eq!(s.index.len(), s.slots.len());
    }
}

/// With no more keys than samples, eviction is exact LRU: the key touched last stays.
#[test]
fn small_table_is_exact_lru() {
    let t = table(3);
    put(&t, 1, u64::MAX, 1);
    put(&t, 2, u64::MAX, 2);
    put(&t, 3, u64::MAX, 3);
    assert_eq!(t.get(&key(1), 4), Some(u64::MAX)); // 1 is now the most recent
    put(&t, 4, u64::MAX, 5);
    assert_eq!(t.get(&key(2), 6), None, "2 was the least recently used");
    assert!(t.get(&key(1), 7).is_some() && t.get(&key(3), 8).is_some());
    assert_eq!(t.evictions(), 1);
}

/// A stale entry (state in the past) is reused before any live one, however recent, and its
/// drop is not counted as an eviction (nothing was lost).
#[test]
fn stale_entry_goes_first() {
    let t = table(3);
    put(&t, 1, 100, 1); // live until 100
    put(&t, 2, 5, 2); // stale from 5 on
    put(&t, 3, 100, 3);
    put(&t, 4, 100, 10);
    assert!(
        t.get(&key(1), 11).is_some(),
        "the LRU key survives: 2 was stale"
    );
    assert_eq!(t.get(&key(2), 11), None);
    assert_eq!(t.evictions(), 0);
    put(&t, 5, 100, 12);
    // 1 was read at 11, 4 written at 10: 3 (written at 3) is the least recently used.
    assert_eq!(t.get(&key(3), 13), None, "the LRU live key is evicted");
    assert!(t.get(&key(1), 13).is_some() && t.get(&key(4), 13).is_some());
    assert_eq!(t.evictions(), 1);
}

/// `update` runs governor's step on the stored state: `None` for a new key, then what was
/// stored; an `Err` leaves the state as it was.
#[test]
fn update_is_governors_compare_and_swap() {
    let t = table(10);
    let k = key(7);
    let seen = t.update(&k, 1, |old| Ok::<_, ()>((old, Nanos::from(42))));
    assert_eq!(seen, Ok(None));
    let seen = t.update(&k, 2, |old| Ok::<_, ()>((old, Nanos::from(43))));
    assert_eq!(seen, Ok(Some(Nanos::from(42))));
    assert_eq!(
        t.update(&k, 3, |_| Err::<((), Nanos), _>("denied")),
        Err("denied")
    );
    assert_eq!(t.get(&k, 4), Some(43));
}

/// `retain` drops what it is told to and keeps every other key findable with its own state
/// (slots move to fill the holes; their index entries must follow). `shrink_to_fit` keeps
/// them too.
#[test]
fn retain_keeps_the_index_right() {
    // Room to spare: a shard that fills up before the others would evict.
    let t = table(4000);
    for i in 0..500 {
        put(&t, i, u64::from(i), 0);
    }
    t.retain(|state| state % 3 != 0);
    t.shrink_to_fit();
    assert_eq!(t.len(), 500 - 167);
    for i in 0..500 {
        let want = (i % 3 != 0).then_some(u64::from(i));
        assert_eq!(t.get(&key(i), 1), want, "key {i}");
    }
    assert_eq!(t.evictions(), 0, "housekeeping drops are not evictions");
}

/// Under concurrent checks of new and known keys the bound holds and every key past it is one
/// eviction.
#[test]
fn concurrent_updates_stay_bounded() {
    let t = Arc::new(table(256));
    let threads: Vec<_> = (0..4u32)
        .map(|n| {
            let t = Arc::clone(&t);
            std::thread::spawn(move || {
                for i in 0..5_000u32 {
                    let k = key(n * 1_000_000 + i);
                    let _ = t.update(&k, u64::from(i), |old| {
                        Ok::<_, ()>(((), Nanos::from(old.map_or(u64::MAX, |o| o.as_u64()))))
                    });
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("updater thread");
    }
    assert_eq!(t.len(), 256);
    assert_eq!(t.evictions(), 4 * 5_000 - 256);
}
