//! Why a body cannot be read: the error of [`BodyReader`](super::BodyReader) and of the chunked
//! decoder under it, in a file of its own so that both use it and neither uses the other.

/// Why a body cannot be read. All but [`TooLarge`](BodyError::TooLarge) (413) are a 400 from
/// a client, a 502 from an upstream; either way the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Over the maximum size (announced or read).
    #[error("the body is larger than the limit")]
    TooLarge,
    /// A chunk size that is not hex digits, or whitespace after one not followed by `;`.
    #[error("a chunk size is not a hex number")]
    BadChunkSize,
    /// A chunk size over 2^64 - 1.
    #[error("a chunk size overflows")]
    ChunkSizeOverflow,
    /// A chunk extension that is not `;name[=token|"quoted"]`.
    #[error("a chunk extension is malformed")]
    BadChunkExtension,
    /// A chunk-size line over 4 KiB.
    #[error("a chunk-size line is too long")]
    ChunkLineTooLong,
    /// More than 16 KiB of chunk extensions in one body.
    #[error("the chunk extensions are too long")]
    ExtensionsTooLarge,
    /// A chunk-size line, chunk or last chunk not ended by CRLF.
    #[error("a chunk is not followed by CRLF")]
    MissingCrlf,
    /// A trailer field that is not `name: value` CRLF.
    #[error("a trailer field is malformed")]
    BadTrailer,
    /// More than 16 KiB or 100 trailer fields.
    #[error("the trailer fields are too large")]
    TrailersTooLarge,
    /// The connection closed before the body's end.
    #[error("the connection closed before the end of the body")]
    Incomplete,
}
