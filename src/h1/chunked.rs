//! The chunked coding (RFC 9112 §7.1) as an incremental state machine over a body's bytes.
//!
//! The machine sorts every byte it reads into a [`Class`]: framing to forward as it is (chunk
//! sizes, CRLFs, the last chunk and the final CRLF), payload (counted against the maximum),
//! or dropped (chunk extensions and trailer fields). A relay forwards the first two classes
//! untouched — the upstream sees the client's framing, minus what is dropped — and a decoder
//! keeps the payload only. Everything RFC 9112 does not allow is refused, with bounds on what
//! an attacker could otherwise make sluice read forever without progress.

use super::error::BodyError;
use super::fields::is_tchar;

/// The longest chunk-size line (size, extensions), CRLF excluded.
const MAX_LINE: usize = 4096;
/// The most extension bytes over a whole body (hyper's bound).
const MAX_EXTENSIONS: usize = 16 << 10;
/// The most trailer bytes (hyper's bound).
const MAX_TRAILERS: usize = 16 << 10;
/// The most trailer fields (hyper's, the same as for a head).
const MAX_TRAILER_FIELDS: usize = super::MAX_FIELDS;

/// What a run of body bytes is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Chunk framing, forwarded as read.
    Frame,
    /// Chunk data.
    Payload,
    /// Chunk extensions and trailer fields: read, checked and not forwarded.
    Dropped,
}

/// Where the machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The first hex digit of a chunk size.
    Start,
    /// More hex digits, or what ends the size.
    Size,
    /// In a chunk extension (dropped).
    Ext(Ext),
    /// The LF of a chunk-size line.
    SizeLf,
    /// Chunk data; `Chunked::left` bytes of it remain.
    Data,
    /// The CR after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// After the last chunk: a trailer field or the final CRLF.
    TrailerStart,
    /// A trailer field's name.
    TrailerName,
    /// A trailer field's value.
    TrailerValue,
    /// The LF of a trailer field.
    TrailerLf,
    /// The final LF.
    EndLf,
    /// The body is complete.
    Done,
}

/// Where in `*( BWS ";" BWS ext-name [ BWS "=" BWS ( token / quoted-string ) ] )`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ext {
    /// Whitespace between elements. `value`: an `=` may come (after a name); `end`: the line
    /// may end (an extension is complete).
    Sep { value: bool, end: bool },
    /// After `;`, before the name.
    BeforeName,
    /// In the name.
    Name,
    /// After `=`, before the value.
    BeforeValue,
    /// In a token value.
    Token,
    /// In a quoted-string value.
    Quoted,
    /// After a `\` in a quoted-string.
    QuotedPair,
}

/// The chunked coding's state for one body.
#[derive(Debug, Clone)]
pub(crate) struct Chunked {
    state: State,
    /// The chunk size being read, then what remains of the chunk's data.
    left: u64,
    /// Bytes of the current chunk-size line.
    line: usize,
    /// Extension bytes so far in the body.
    extensions: usize,
    /// Trailer bytes and fields so far.
    trailer_bytes: usize,
    trailer_fields: usize,
    /// Payload announced so far (sizes read), checked against `max` before the data is read.
    payload: u64,
    max: u64,
}

// === impl Chunked ===

impl Chunked {
    /// A body of at most `max` payload bytes.
    pub(crate) fn new(max: u64) -> Chunked {
        Chunked {
            state: State::Start,
            left: 0,
            line: 0,
            extensions: 0,
            trailer_bytes: 0,
            trailer_fields: 0,
            payload: 0,
            max,
        }
    }

    /// The last chunk and the final CRLF have been read.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Payload bytes announced by the chunk sizes read so far (all read once done).
    pub(crate) fn payload(&self) -> u64 {
        self.payload
    }

    /// Reads the longest run of `input`'s first bytes that are of one class. `(0, _)` when
    /// `input` is empty or the body is done; nothing after the final CRLF is read.
    ///
    /// # Errors
    /// The first byte that breaks the coding or a bound; the body cannot go on.
    pub(crate) fn run(&mut self, input: &[u8]) -> Result<(usize, Class), BodyError> {
        let Some(&first) = input.first() else {
            return Ok((0, Class::Frame));
        };
        match self.state {
            State::Done => return Ok((0, Class::Frame)),
            State::Data => {
                // The chunk's data in one piece, however long: the fast case.
                let n = usize::try_from(self.left).map_or(input.len(), |l| l.min(input.len()));
                // n ≤ left, so this cannot underflow.
                self.left -= n as u64;
                if self.left == 0 {
                    self.state = State::DataCr;
                }
                return Ok((n, Class::Payload));
            }
            _ => {}
        }
        let class = self.class(first);
        self.byte(first)?;
        let mut n = 1;
        for &b in &input[1..] {
            if matches!(self.state, State::Data | State::Done) || self.class(b) != class {
                break;
            }
            self.byte(b)?;
            n += 1;
        }
        Ok((n, class))
    }

    /// The class of `b` read in the current state.
    fn class(&self, b: u8) -> Class {
        match self.state {
            State::Size if b == b';' || b == b' ' || b == b'\t' => Class::Dropped,
            State::Ext(_) if b == b'\r' => Class::Frame,
            State::Ext(_) => Class::Dropped,
            State::TrailerStart if b != b'\r' => Class::Dropped,
            State::TrailerName | State::TrailerValue | State::TrailerLf => Class::Dropped,
            State::Data => Class::Payload,
            _ => Class::Frame,
        }
    }

    /// Reads one byte outside chunk data.
    fn byte(&mut self, b: u8) -> Result<(), BodyError> {
        self.state = match self.state {
            State::Start => {
                self.left = u64::from(hex(b).ok_or(BodyError::BadChunkSize)?);
                self.line = 1;
                State::Size
            }
            State::Size => self.size_byte(b)?,
            State::Ext(ext) => self.ext_byte(ext, b)?,
            State::SizeLf if b == b'\n' && self.left == 0 => State::TrailerStart,
            State::SizeLf if b == b'\n' => State::Data,
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataLf if b == b'\n' => State::Start,
            State::EndLf if b == b'\n' => State::Done,
            State::SizeLf | State::DataCr | State::DataLf | State::EndLf => {
                return Err(BodyError::MissingCrlf)
            }
            State::TrailerStart | State::TrailerName | State::TrailerValue | State::TrailerLf => {
                self.trailer_byte(self.state, b)?
            }
            // `run` reads neither data nor anything after the end byte by byte.
            State::Data | State::Done => self.state,
        };
        Ok(())
    }

    /// A byte of the chunk-size line after its first digit.
    fn size_byte(&mut self, b: u8) -> Result<State, BodyError> {
        Ok(match b {
            b'\r' => self.size_read()?,
            b'\n' => return Err(BodyError::MissingCrlf),
            b';' => self.ext(Ext::BeforeName)?,
            b' ' | b'\t' => self.ext(Ext::Sep {
                value: false,
                end: false,
            })?,
            _ => {
                let digit = hex(b).ok_or(BodyError::BadChunkSize)?;
                self.line += 1;
                if self.line > MAX_LINE {
                    return Err(BodyError::ChunkLineTooLong);
                }
                self.left = self
                    .left
                    .checked_mul(16)
                    .and_then(|n| n.checked_add(u64::from(digit)))
                    .ok_or(BodyError::ChunkSizeOverflow)?;
                State::Size
            }
        })
    }

    /// A byte of the trailer section (after the last chunk's line).
    fn trailer_byte(&mut self, state: State, b: u8) -> Result<State, BodyError> {
        Ok(match state {
            State::TrailerStart if b == b'\r' => State::EndLf,
            State::TrailerStart => {
                self.trailer_fields += 1;
                if self.trailer_fields > MAX_TRAILER_FIELDS {
                    return Err(BodyError::TrailersTooLarge);
                }
                self.trailer()?;
                if !is_tchar(b) {
                    return Err(BodyError::BadTrailer);
                }
                State::TrailerName
            }
            State::TrailerName => {
                self.trailer()?;
                match b {
                    b':' => State::TrailerValue,
                    _ if is_tchar(b) => State::TrailerName,
                    _ => return Err(BodyError::BadTrailer),
                }
            }
            State::TrailerValue => {
                self.trailer()?;
                match b {
                    b'\r' => State::TrailerLf,
                    b'\t' | b' '..=b'~' | 0x80..=0xff => State::TrailerValue,
                    _ => return Err(BodyError::BadTrailer),
                }
            }
            State::TrailerLf if b == b'\n' => {
                self.trailer()?;
                State::TrailerStart
            }
            State::TrailerLf => return Err(BodyError::BadTrailer),
            // `byte` passes only the trailer states.
            _ => state,
        })
    }

    /// The chunk size is complete (its CR read): refuse it if the body would pass `max`.
    fn size_read(&mut self) -> Result<State, BodyError> {
        self.payload = self
            .payload
            .checked_add(self.left)
            .filter(|&total| total <= self.max)
            .ok_or(BodyError::TooLarge)?;
        Ok(State::SizeLf)
    }

    /// One more extension byte, bounded per line and per body.
    fn ext(&mut self, next: Ext) -> Result<State, BodyError> {
        self.line += 1;
        self.extensions += 1;
        if self.line > MAX_LINE {
            return Err(BodyError::ChunkLineTooLong);
        }
        if self.extensions > MAX_EXTENSIONS {
            return Err(BodyError::ExtensionsTooLarge);
        }
        Ok(State::Ext(next))
    }

    /// Reads `b` in extension state `ext` (RFC 9112 §7.1.1).
    fn ext_byte(&mut self, ext: Ext, b: u8) -> Result<State, BodyError> {
        let ws = b == b' ' || b == b'\t';
        let next = match (ext, b) {
            (Ext::Sep { end: true, .. } | Ext::Name | Ext::Token, b'\r') => {
                return self.size_read()
            }
            (Ext::Sep { value, end }, _) if ws => Ext::Sep { value, end },
            (Ext::Sep { .. } | Ext::Name | Ext::Token, b';') => Ext::BeforeName,
            (Ext::Sep { value: true, .. } | Ext::Name, b'=') => Ext::BeforeValue,
            (Ext::BeforeName, _) if ws => Ext::BeforeName,
            (Ext::BeforeName | Ext::Name, _) if is_tchar(b) => Ext::Name,
            (Ext::Name, _) if ws => Ext::Sep {
                value: true,
                end: true,
            },
            (Ext::BeforeValue, _) if ws => Ext::BeforeValue,
            (Ext::BeforeValue, b'"') => Ext::Quoted,
            (Ext::BeforeValue | Ext::Token, _) if is_tchar(b) => Ext::Token,
            (Ext::Token, _) if ws => Ext::Sep {
                value: false,
                end: true,
            },
            (Ext::Quoted, b'"') => Ext::Sep {
                value: false,
                end: true,
            },
            (Ext::Quoted, b'\\') => Ext::QuotedPair,
            (Ext::Quoted, b'\t' | b' ' | b'!' | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff) => {
                Ext::Quoted
            }
            (Ext::QuotedPair, b'\t' | b' '..=b'~' | 0x80..=0xff) => Ext::Quoted,
            _ => return Err(BodyError::BadChunkExtension),
        };
        self.ext(next)
    }

    /// One more trailer byte, bounded.
    fn trailer(&mut self) -> Result<(), BodyError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > MAX_TRAILERS {
            return Err(BodyError::TrailersTooLarge);
        }
        Ok(())
    }
}

/// The value of hex digit `b` (either case).
fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests;
