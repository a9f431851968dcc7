use bytes::BytesMut;

use super::*;

fn parse(raw: &[u8], to_head: bool) -> Result<Option<ResponseHead>, ResponseError> {
    ResponseHead::parse(&mut BytesMut::from(raw), 16 << 10, to_head)
}

fn head(raw: &[u8], to_head: bool) -> ResponseHead {
    match parse(raw, to_head) {
        Ok(Some(head)) => head,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(raw)),
    }
}

/// Status, reason, fields, and the body left in the buffer.
#[test]
fn parses_a_response_head() {
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"[..],
    );
    let head = ResponseHead::parse(&mut buf, 1024, false).unwrap().unwrap();
    assert_eq!((head.status(), head.reason()), (201, &b"Created"[..]));
    assert_eq!(head.header("content-type"), Some(&b"text/plain"[..]));
    assert_eq!(head.fields().len(), 2);
    assert_eq!(head.framing(), Framing::Length(2));
    assert!(head.keep_alive() && !head.is_informational());
    assert_eq!(&buf[..], b"ok");
    assert!(matches!(
        parse(b"HTTP/1.1 200 OK\r\nA: b\r\n", false),
        Ok(None)
    ));
}

/// RFC 9112 §6.3: which responses have a body and how it ends, and when the connection
/// can be kept.
#[test]
fn response_framing() {
    let cases: &[(&[u8], bool, Framing, bool)] = &[
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            false,
            Framing::Length(3),
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            true,
            Framing::None,
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            Framing::Chunked,
            true,
        ),
        (b"HTTP/1.1 200 OK\r\n\r\n", false, Framing::Close, false),
        (
            b"HTTP/1.1 204 No Content\r\n\r\n",
            false,
            Framing::None,
            true,
        ),
        (
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false,
            Framing::None,
            true,
        ),
        (b"HTTP/1.1 100 Continue\r\n\r\n", false, Framing::None, true),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            false,
            Framing::Length(0),
            false,
        ),
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
            false,
            Framing::Length(0),
            false,
        ),
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n",
            false,
            Framing::Length(0),
            true,
        ),
        (b"HTTP/1.0 200 OK\r\n\r\n", false, Framing::Close, false),
    ];
    for (raw, to_head, framing, keep) in cases {
        let h = head(raw, *to_head);
        assert_eq!(
            (h.framing(), h.keep_alive()),
            (*framing, *keep),
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
    assert!(head(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", false).is_informational());
}

/// Ambiguous or broken responses are refused (502 for the client).
#[test]
fn refuses_ambiguous_responses() {
    use ResponseError::*;
    let cases: &[(&[u8], ResponseError)] = &[
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            LengthAndChunked,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            BadLength,
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", BadLength),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            NotChunked,
        ),
        (b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", Malformed),
        (b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n", Malformed),
        (b"HTTP/1.1 2000 OK\r\n\r\n", Malformed),
        (b"HTTP/1.1 200 OK\r\nX: \0\r\n\r\n", Malformed),
        (b"HTTP/2 200 OK\r\n\r\n", Malformed),
    ];
    for (raw, want) in cases {
        assert_eq!(
            parse(raw, false).err(),
            Some(*want),
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
    let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nX: aaaaaaaa"[..]);
    assert_eq!(
        ResponseHead::parse(&mut buf, 16, false).err(),
        Some(HeadTooLarge)
    );
}
