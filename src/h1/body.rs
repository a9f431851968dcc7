//! Reading a body out of a connection's read buffer, by `Content-Length`, chunked or until the
//! connection closes: relayed as framed (for forwarding) or decoded (for buffering), with a
//! maximum size either way.

use bytes::{Buf, Bytes, BytesMut};

use super::chunked::{Chunked, Class};
use super::error::BodyError;
use super::Framing;

/// Reads one body from the read buffer it shares with the heads around it.
#[derive(Debug, Clone)]
pub struct BodyReader {
    kind: Kind,
    /// Payload bytes read (for `Content-Length` and until-close bodies).
    read: u64,
    max: u64,
}

/// The body's framing and its progress.
#[derive(Debug, Clone)]
enum Kind {
    /// This many bytes remain.
    Length(u64),
    Chunked(Chunked),
    /// Until the connection closes; `bool`: it has.
    Close(bool),
}

/// What [`BodyReader::relay`] has for the peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Relayed {
    /// These bytes, to write as they are (payload and, when chunked, its framing). Taken off the
    /// front of the buffer without copying.
    Forward(Bytes),
    /// The buffer is used up: read more, then call again.
    NeedMore,
    /// The body is complete; the buffer holds what follows it.
    End,
}

/// What [`BodyReader::decode`] has read.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Payload bytes, taken off the front of the buffer without copying.
    Data(Bytes),
    /// The buffer is used up: read more, then call again.
    NeedMore,
    /// The body is complete; the buffer holds what follows it.
    End,
}

// === impl BodyReader ===

impl BodyReader {
    /// A reader of a body framed by `framing`, of at most `max` payload bytes.
    ///
    /// # Errors
    /// [`BodyError::TooLarge`] at once for a `Content-Length` over `max`: nothing need be read.
    pub fn new(framing: Framing, max: u64) -> Result<BodyReader, BodyError> {
        let kind = match framing {
            Framing::None => Kind::Length(0),
            Framing::Length(n) if n > max => return Err(BodyError::TooLarge),
            Framing::Length(n) => Kind::Length(n),
            Framing::Chunked => Kind::Chunked(Chunked::new(max)),
            Framing::Close => Kind::Close(false),
        };
        Ok(BodyReader { kind, read: 0, max })
    }

    /// Takes the next bytes to forward off the front of `buf`: the payload, and for a chunked
    /// body its framing as the peer wrote it (chunk extensions and trailer fields left out).
    ///
    /// # Errors
    /// A [`BodyError`]: the body cannot go on.
    pub fn relay(&mut self, buf: &mut BytesMut) -> Result<Relayed, BodyError> {
        let Kind::Chunked(chunked) = &mut self.kind else {
            return Ok(match self.take(buf)? {
                Step::Bytes(bytes) => Relayed::Forward(bytes),
                Step::NeedMore => Relayed::NeedMore,
                Step::End => Relayed::End,
            });
        };
        // `keep`: bytes at the front of `buf` read and to be forwarded.
        let mut keep = 0;
        loop {
            let (n, class) = chunked.run(&buf[keep..])?;
            if n == 0 {
                break;
            }
            match class {
                Class::Dropped if keep == 0 => buf.advance(n),
                Class::Dropped => {
                    // The run was read: forward what precedes it and drop it.
                    let forward = buf.split_to(keep).freeze();
                    buf.advance(n);
                    return Ok(Relayed::Forward(forward));
                }
                Class::Frame | Class::Payload => keep += n,
            }
        }
        Ok(match keep {
            0 if chunked.is_done() => Relayed::End,
            0 => Relayed::NeedMore,
            _ => Relayed::Forward(buf.split_to(keep).freeze()),
        })
    }

    /// Takes the next payload bytes off the front of `buf`, framing consumed.
    ///
    /// # Errors
    /// A [`BodyError`]: the body cannot go on.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, BodyError> {
        let Kind::Chunked(chunked) = &mut self.kind else {
            return Ok(match self.take(buf)? {
                Step::Bytes(bytes) => Decoded::Data(bytes),
                Step::NeedMore => Decoded::NeedMore,
                Step::End => Decoded::End,
            });
        };
        loop {
            match chunked.run(buf)? {
                (0, _) if chunked.is_done() => return Ok(Decoded::End),
                (0, _) => return Ok(Decoded::NeedMore),
                (n, Class::Payload) => return Ok(Decoded::Data(buf.split_to(n).freeze())),
                (n, Class::Frame | Class::Dropped) => buf.advance(n),
            }
        }
    }

    /// The connection closed: the end of an until-close body, an error for any other
    /// unfinished one.
    ///
    /// # Errors
    /// [`BodyError::Incomplete`]: the body was cut short.
    pub fn eof(&mut self) -> Result<(), BodyError> {
        if let Kind::Close(closed) = &mut self.kind {
            *closed = true;
        }
        match self.is_done() {
            true => Ok(()),
            false => Err(BodyError::Incomplete),
        }
    }

    /// The whole body has been read.
    pub fn is_done(&self) -> bool {
        match &self.kind {
            Kind::Length(left) => *left == 0,
            Kind::Chunked(chunked) => chunked.is_done(),
            Kind::Close(closed) => *closed,
        }
    }

    /// Payload bytes so far: what the limits count. For a chunked body, those announced by the
    /// chunk sizes read (checked against the maximum before the data arrives).
    pub fn payload(&self) -> u64 {
        match &self.kind {
            Kind::Chunked(chunked) => chunked.payload(),
            _ => self.read,
        }
    }

    /// The next payload bytes of a body that is not chunked: as many as `buf` has, up to its
    /// end.
    fn take(&mut self, buf: &mut BytesMut) -> Result<Step, BodyError> {
        let n = match &mut self.kind {
            Kind::Length(left) => {
                let n = usize::try_from(*left).map_or(buf.len(), |l| l.min(buf.len()));
                // n ≤ left.
                *left -= n as u64;
                n
            }
            Kind::Close(_) => {
                let n = buf.len();
                if self.read.saturating_add(n as u64) > self.max {
                    return Err(BodyError::TooLarge);
                }
                n
            }
            Kind::Chunked(_) => 0,
        };
        if n > 0 {
            self.read += n as u64;
            return Ok(Step::Bytes(buf.split_to(n).freeze()));
        }
        Ok(if self.is_done() {
            Step::End
        } else {
            Step::NeedMore
        })
    }
}

/// What [`BodyReader::take`] has, for a body that is not chunked.
enum Step {
    Bytes(Bytes),
    NeedMore,
    End,
}
