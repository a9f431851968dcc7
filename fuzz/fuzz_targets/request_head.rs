//! Any bytes as a request head (and a response head): never a panic; an accepted head's
//! accessors, framing and upstream head are consistent, and its body reads to the same
//! payload relayed or decoded.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice::h1::{
    write_request, write_response, BodyReader, Decoded, Parsed, Relayed, RequestEdits,
    RequestError, RequestHead, ResponseError, ResponseHead, MAX_FIELDS,
};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    if let Ok(Parsed::Head(head)) = RequestHead::parse(&mut buf, 16 << 10) {
        let _ = (head.method(), head.path(), head.query(), head.keep_alive());
        assert!(head.target().starts_with(head.path()));
        let edits = RequestEdits {
            peer: [10, 0, 0, 1].into(),
            https: false,
            trusted: false,
            target: None,
        };
        let mut out = BytesMut::new();
        write_request(&head, &edits, &mut out);
        // What sluice writes upstream is a head its own parser accepts, with the same framing.
        match RequestHead::parse(&mut out, 64 << 10) {
            Ok(Parsed::Head(again)) => assert_eq!(again.framing(), head.framing()),
            // Up to three `X-Forwarded-*` and a framing field are added (as today).
            Err(RequestError::TooManyFields) if head.fields().len() > MAX_FIELDS - 4 => {}
            other => panic!("the written head does not parse: {other:?}"),
        }
        body(head.framing(), buf);
    }
    let mut buf = BytesMut::from(data);
    if let Ok(Some(head)) = ResponseHead::parse(&mut buf, 16 << 10, false) {
        let mut out = BytesMut::new();
        write_response(&head, &[("ratelimit", b"\"a\";r=1;t=2")], false, &mut out);
        let parsed = ResponseHead::parse(&mut out, 64 << 10, false);
        let full = head.fields().len() > MAX_FIELDS - 3;
        assert!(
            matches!(parsed, Ok(Some(_))) || (full && matches!(parsed, Err(ResponseError::TooManyFields))),
            "the written head does not parse: {parsed:?}"
        );
    }
});

/// Relayed and decoded, the body's payload is the same.
fn body(framing: sluice::h1::Framing, buf: BytesMut) {
    let (Ok(mut relay), Ok(mut decode)) = (BodyReader::new(framing, 1 << 20), BodyReader::new(framing, 1 << 20)) else {
        return;
    };
    let mut relayed = BytesMut::new();
    let mut input = buf.clone();
    while let Ok(Relayed::Forward(bytes)) = relay.relay(&mut input) {
        relayed.extend_from_slice(&bytes);
    }
    let mut decoded = Vec::new();
    let mut input = buf;
    while let Ok(Decoded::Data(bytes)) = decode.decode(&mut input) {
        decoded.extend_from_slice(&bytes);
    }
    assert_eq!(relay.is_done(), decode.is_done());
    assert!(decoded.len() as u64 <= 1 << 20);
    let _ = relayed;
}
