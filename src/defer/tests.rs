//! Unit tests of the parts of deferred delivery that need no Redis (the rest is pinned by
//! `tests/deferred.rs` against a real redis-server).

use super::*;

/// Pins: every key of a route carries the route as its hash tag (one cluster slot for the
/// scripts), escaped so that no two route names share keys.
#[test]
fn keys_share_the_route_tag() {
    let keys = Keys::new("hooks");
    let id = TaskId::parse("00112233445566778899aabbccddeeff").unwrap();
    assert_eq!(&*keys.stream, b"sluice:defer:{hooks}:s");
    assert_eq!(
        keys.task(&id),
        b"sluice:defer:{hooks}:t:00112233445566778899aabbccddeeff"
    );
    use crate::store::slot_of;
    let slot = slot_of(&keys.stream);
    for key in [&keys.retry, &keys.sending, &keys.delivered, &keys.dead] {
        assert_eq!(slot_of(key), slot);
    }
    assert_eq!(slot_of(&keys.task(&id)), slot);
    assert_ne!(&*Keys::new("a:b").stream, &*Keys::new("a%3Ab").stream);
}
