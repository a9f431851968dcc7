//! Any bytes as a chunked body, read in pieces cut where the first byte says: never a panic;
//! the payload does not depend on the cuts; relayed, the body is a chunked body again whose
//! payload is the same; the count for the limits is the payload's length.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice::h1::{BodyError, BodyReader, Decoded, Framing, Relayed};

const MAX: u64 = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let step = usize::from(cut % 16) + 1;
    let whole = read(body, body.len().max(1), false);
    let pieces = read(body, step, false);
    assert_eq!(whole, pieces, "the payload depends on how the body was cut");
    let (relayed, relay_done, relay_err) = read(body, step, true);
    assert_eq!(relay_err, whole.2, "relay and decode disagree on the error");
    if let (payload, true, None) = &whole {
        assert!(relay_done);
        // The relayed bytes are a complete chunked body with the same payload.
        let again = read(&relayed, relayed.len().max(1), false);
        assert_eq!(&again.0, payload);
        assert!(again.1, "the relayed body is not complete");
    }
});

/// What `body` gives, fed `step` bytes at a time: its payload (`relay`: the bytes to
/// forward), whether it ended, and its error.
fn read(body: &[u8], step: usize, relay: bool) -> (Vec<u8>, bool, Option<BodyError>) {
    let Ok(mut reader) = BodyReader::new(Framing::Chunked, MAX) else {
        return (Vec::new(), false, None);
    };
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in body.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            let next = match relay {
                true => reader.relay(&mut buf).map(|r| match r {
                    Relayed::Forward(bytes) => Some(Some(bytes)),
                    Relayed::NeedMore => Some(None),
                    Relayed::End => None,
                }),
                false => reader.decode(&mut buf).map(|d| match d {
                    Decoded::Data(bytes) => Some(Some(bytes)),
                    Decoded::NeedMore => Some(None),
                    Decoded::End => None,
                }),
            };
            match next {
                Ok(Some(Some(bytes))) => out.extend_from_slice(&bytes),
                Ok(Some(None)) => break,
                Ok(None) => {
                    if !relay {
                        assert_eq!(reader.payload(), out.len() as u64);
                    }
                    return (out, true, None);
                }
                Err(err) => return (out, false, Some(err)),
            }
        }
    }
    assert!(reader.payload() <= MAX);
    (out, false, None)
}
