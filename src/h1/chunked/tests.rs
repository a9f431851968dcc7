use bytes::{Bytes, BytesMut};

use crate::h1::{BodyError, BodyReader, Decoded, Framing, Relayed};

const MAX: u64 = 1 << 20;

/// What one call of a reader gave.
enum Step {
    Bytes(Bytes),
    More,
    End,
}

/// Feeds `body` to a chunked reader `step` bytes at a time through `next` (decode or relay):
/// the bytes it gave, and what followed the body in the buffer.
fn drive(
    body: &[u8],
    step: usize,
    mut next: impl FnMut(&mut BodyReader, &mut BytesMut) -> Result<Step, BodyError>,
) -> Result<(Vec<u8>, Vec<u8>), BodyError> {
    let mut reader = BodyReader::new(Framing::Chunked, MAX)?;
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut pieces = body.chunks(step);
    loop {
        match next(&mut reader, &mut buf)? {
            Step::Bytes(bytes) => out.extend_from_slice(&bytes),
            Step::End => {
                let rest = buf.iter().chain(pieces.flatten()).copied().collect();
                return Ok((out, rest));
            }
            Step::More => match pieces.next() {
                Some(piece) => buf.extend_from_slice(piece),
                None => return reader.eof().map(|()| (out, Vec::new())),
            },
        }
    }
}

/// The payload of `body` fed `step` bytes at a time, and what follows the body.
fn decode(body: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>), BodyError> {
    drive(body, step, |reader, buf| {
        Ok(match reader.decode(buf)? {
            Decoded::Data(bytes) => Step::Bytes(bytes),
            Decoded::NeedMore => Step::More,
            Decoded::End => {
                assert!(reader.is_done());
                Step::End
            }
        })
    })
}

/// The bytes `body` relays as, fed `step` bytes at a time.
fn relay(body: &[u8], step: usize) -> Result<Vec<u8>, BodyError> {
    let relayed = drive(body, step, |reader, buf| {
        Ok(match reader.relay(buf)? {
            Relayed::Forward(bytes) => Step::Bytes(bytes),
            Relayed::NeedMore => Step::More,
            Relayed::End => Step::End,
        })
    });
    relayed.map(|(out, _)| out)
}

/// Decoded and relayed, in pieces of every size: the payload, the bytes forwarded (the client's
/// framing minus extensions and trailer fields), and the next request left in the buffer.
#[test]
fn decodes_and_relays_in_any_pieces() {
    let body = b"5\r\nhello\r\n0006;name=val;q=\"a\\\"b\" \r\n world\r\nA\r\n0123456789\r\n0;x\r\nExpires: soon\r\nX: y\r\n\r\nGET /next";
    let relayed = b"5\r\nhello\r\n0006\r\n world\r\nA\r\n0123456789\r\n0\r\n\r\n";
    for step in 1..=body.len() {
        let (payload, rest) = decode(body, step).unwrap();
        assert_eq!(payload, b"hello world0123456789", "step {step}");
        assert_eq!(rest, b"GET /next", "step {step}");
        assert_eq!(relay(body, step).unwrap(), relayed, "step {step}");
    }
}

/// Every chunked framing the contract refuses, each with its own cause.
#[test]
fn refuses_broken_chunks() {
    use BodyError::*;
    let cases: &[(&[u8], BodyError)] = &[
        (b"x\r\n", BadChunkSize),
        (b"\r\n", BadChunkSize),
        (b"-1\r\n", BadChunkSize),
        (b"+1\r\n", BadChunkSize),
        (b"0x1\r\n", BadChunkSize),
        (b"1 \r\na\r\n0\r\n\r\n", BadChunkExtension),
        (b" 1\r\na\r\n0\r\n\r\n", BadChunkSize),
        (b"10000000000000000\r\n", ChunkSizeOverflow),
        (b"fffffffffffffffff\r\n", ChunkSizeOverflow),
        (b"1;\r\na\r\n0\r\n\r\n", BadChunkExtension),
        (b"1;a=\r\na\r\n0\r\n\r\n", BadChunkExtension),
        (b"1;a b\r\na\r\n0\r\n\r\n", BadChunkExtension),
        (b"1;a=\"b\r\na\r\n0\r\n\r\n", BadChunkExtension),
        (b"1;a=\"\x01\"\r\na\r\n0\r\n\r\n", BadChunkExtension),
        (b"1;a\x00\r\na\r\n0\r\n\r\n", BadChunkExtension),
        (b"1;a\nb\r\na\r\n0\r\n\r\n", BadChunkExtension),
        (b"1\na\r\n0\r\n\r\n", MissingCrlf),
        (b"1\r\nab\r\n0\r\n\r\n", MissingCrlf),
        (b"1\r\na\n0\r\n\r\n", MissingCrlf),
        (b"1\r\na\r\r\n0\r\n\r\n", MissingCrlf),
        (b"1\r\na\r\n0\r\n\n", BadTrailer),
        (b"0\r\n\r\r", MissingCrlf),
        (b"0\r\nX: y\n\r\n", BadTrailer),
        (b"0\r\nX y\r\n\r\n", BadTrailer),
        (b"0\r\n X: y\r\n\r\n", BadTrailer),
        (b"0\r\nX: \x00\r\n\r\n", BadTrailer),
        (b"5\r\nab", Incomplete),
        (b"5\r\nabcde\r\n", Incomplete),
        (b"0\r\n", Incomplete),
    ];
    for (body, want) in cases {
        for step in [1, body.len()] {
            assert_eq!(
                decode(body, step).err(),
                Some(*want),
                "{:?}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(
                relay(body, step).err(),
                Some(*want),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}

/// Leading zeros are no overflow; sixteen hex digits are the most a size can have.
#[test]
fn size_bounds() {
    let body = b"00000000000000000000000000001\r\na\r\n0\r\n\r\n";
    assert_eq!(decode(body, 3).unwrap().0, b"a");
    let mut reader = BodyReader::new(Framing::Chunked, u64::MAX).unwrap();
    let mut buf = BytesMut::from(&b"ffffffffffffffff\r\nabc"[..]);
    assert_eq!(reader.decode(&mut buf), Ok(Decoded::Data("abc".into())));
    assert_eq!(reader.payload(), u64::MAX);
}

/// The maximum applies to the sizes announced, before their data is read, and over chunks.
#[test]
fn maximum_body_size() {
    let mut reader = BodyReader::new(Framing::Chunked, 10).unwrap();
    let mut buf = BytesMut::from(&b"6\r\nabcdef\r\n5\r\n"[..]);
    assert!(matches!(reader.decode(&mut buf), Ok(Decoded::Data(_))));
    assert_eq!(reader.decode(&mut buf), Err(BodyError::TooLarge));
    let mut reader = BodyReader::new(Framing::Chunked, 10).unwrap();
    let mut buf = BytesMut::from(&b"6\r\nabcdef\r\n4\r\nabcd\r\n0\r\n\r\n"[..]);
    let mut n = 0;
    while let Ok(Decoded::Data(bytes)) = reader.decode(&mut buf) {
        n += bytes.len();
    }
    assert_eq!((n, reader.is_done()), (10, true));
}

/// Chunk-size lines, extensions over a body and trailers are bounded.
#[test]
fn bounded_lines_extensions_and_trailers() {
    let long_line = [
        b"1".to_vec(),
        b";a=".to_vec(),
        b"b".repeat(5000),
        b"\r\n".to_vec(),
    ]
    .concat();
    assert_eq!(
        decode(&long_line, 64).err(),
        Some(BodyError::ChunkLineTooLong)
    );
    let zeros = [b"0".repeat(5000), b"1\r\n".to_vec()].concat();
    assert_eq!(decode(&zeros, 64).err(), Some(BodyError::ChunkLineTooLong));
    let ext_chunk = [b"1;a=".to_vec(), b"b".repeat(3000), b"\r\nx\r\n".to_vec()].concat();
    let many: Vec<u8> = ext_chunk.repeat(6);
    assert_eq!(
        decode(&many, 512).err(),
        Some(BodyError::ExtensionsTooLarge)
    );
    let big_trailer = [
        b"0\r\nX: ".to_vec(),
        b"v".repeat(17 << 10),
        b"\r\n\r\n".to_vec(),
    ]
    .concat();
    assert_eq!(
        decode(&big_trailer, 512).err(),
        Some(BodyError::TrailersTooLarge)
    );
    let many_trailers = [b"0\r\n".to_vec(), b"X: y\r\n".repeat(101), b"\r\n".to_vec()].concat();
    assert_eq!(
        decode(&many_trailers, 512).err(),
        Some(BodyError::TrailersTooLarge)
    );
}

/// Content-Length bodies: relayed as they are, over pieces, the rest left; an announced
/// length over the maximum is refused before anything is read; EOF before the end is an
/// error. Until-close bodies end at EOF and are bounded too.
#[test]
fn length_and_close_bodies() {
    assert_eq!(
        BodyReader::new(Framing::Length(11), 10).err(),
        Some(BodyError::TooLarge)
    );
    let mut reader = BodyReader::new(Framing::Length(5), 10).unwrap();
    let mut buf = BytesMut::from(&b"hel"[..]);
    assert_eq!(reader.relay(&mut buf), Ok(Relayed::Forward("hel".into())));
    assert_eq!(reader.relay(&mut buf), Ok(Relayed::NeedMore));
    buf.extend_from_slice(b"loGET");
    assert_eq!(reader.relay(&mut buf), Ok(Relayed::Forward("lo".into())));
    assert_eq!(reader.relay(&mut buf), Ok(Relayed::End));
    assert_eq!((&buf[..], reader.payload()), (&b"GET"[..], 5));
    let mut reader = BodyReader::new(Framing::Length(5), 10).unwrap();
    assert_eq!(
        reader.decode(&mut BytesMut::from(&b"he"[..])),
        Ok(Decoded::Data("he".into()))
    );
    assert_eq!(reader.eof(), Err(BodyError::Incomplete));
    let mut none = BodyReader::new(Framing::None, 0).unwrap();
    assert_eq!(
        none.decode(&mut BytesMut::from(&b"GET"[..])),
        Ok(Decoded::End)
    );

    let mut close = BodyReader::new(Framing::Close, 6).unwrap();
    let mut buf = BytesMut::from(&b"abc"[..]);
    assert_eq!(close.decode(&mut buf), Ok(Decoded::Data("abc".into())));
    assert_eq!(close.decode(&mut buf), Ok(Decoded::NeedMore));
    assert_eq!(close.eof(), Ok(()));
    assert_eq!(close.decode(&mut buf), Ok(Decoded::End));
    let mut close = BodyReader::new(Framing::Close, 2).unwrap();
    assert_eq!(
        close.relay(&mut BytesMut::from(&b"abc"[..])),
        Err(BodyError::TooLarge)
    );
}
