//! The fields of one head, as ranges into its bytes: the storage both heads share.

use std::mem::MaybeUninit;

use smallvec::SmallVec;

/// The most fields a head may carry: hyper's default, so that the fast path and hyper answer
/// 431 at the same count.
pub const MAX_FIELDS: usize = 100;

/// One field line: where its name and value sit in the head's bytes.
#[derive(Debug, Clone, Copy)]
struct Field {
    name: u32,
    name_len: u32,
    value: u32,
    value_len: u32,
}

/// Fields kept inline: browsers send 10 to 20, API clients fewer. A head with more spills to
/// one heap allocation (never one per field).
const INLINE_FIELDS: usize = 24;

/// The field lines of a head in the order received, as ranges into the head's bytes (which the
/// head owns). Inline up to [`INLINE_FIELDS`] (384 bytes, so a head is cheap to move), at most
/// [`MAX_FIELDS`].
#[derive(Clone)]
pub(crate) struct Fields {
    items: SmallVec<[Field; INLINE_FIELDS]>,
}

/// The `httparse` scratch array for one parse: left uninitialised, as hyper does, since
/// `httparse` writes each entry before it is read.
pub(crate) type Scratch<'b> = [MaybeUninit<httparse::Header<'b>>; MAX_FIELDS];

/// A fresh [`Scratch`].
pub(crate) fn scratch<'b>() -> Scratch<'b> {
    [const { MaybeUninit::uninit() }; MAX_FIELDS]
}

// === impl Fields ===

impl Fields {
    /// Records `parsed`, whose slices all point into `head`. A slice outside `head` cannot come
    /// from `httparse`; it would be recorded as empty rather than trusted.
    pub(crate) fn record(head: &[u8], parsed: &[httparse::Header<'_>]) -> Fields {
        let items = parsed
            .iter()
            .take(MAX_FIELDS)
            .map(|header| {
                let (name, name_len) = span(head, header.name.as_bytes());
                let (value, value_len) = span(head, header.value);
                Field {
                    name,
                    name_len,
                    value,
                    value_len,
                }
            })
            .collect();
        Fields { items }
    }

    /// The `(name, value)` of every line, in order.
    pub(crate) fn iter<'a>(
        &'a self,
        head: &'a [u8],
    ) -> impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])> + 'a {
        self.items.iter().map(move |f| {
            (
                slice(head, f.name, f.name_len),
                slice(head, f.value, f.value_len),
            )
        })
    }

    /// The value of every line named `name` (ASCII case ignored), in order.
    pub(crate) fn all<'a>(
        &'a self,
        head: &'a [u8],
        name: &'a str,
    ) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter(head)
            .filter(move |(n, _)| is(n, name))
            .map(|(_, v)| v)
    }

    /// The value of the first line named `name`.
    pub(crate) fn first<'a>(&'a self, head: &'a [u8], name: &str) -> Option<&'a [u8]> {
        self.iter(head).find(|(n, _)| is(n, name)).map(|(_, v)| v)
    }
}

impl std::fmt::Debug for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fields")
            .field("len", &self.items.len())
            .finish()
    }
}

/// `name` is `want`, ignoring ASCII case. Lengths first: most names differ there.
pub(crate) fn is(name: &[u8], want: &str) -> bool {
    name.len() == want.len() && name.eq_ignore_ascii_case(want.as_bytes())
}

/// The elements of a comma-separated list (RFC 9110 §5.6.1), trimmed of spaces and tabs,
/// empty ones skipped.
pub(crate) fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|element| !element.is_empty())
}

/// `value` without leading and trailing spaces and tabs.
pub(crate) fn trim(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// `b` may appear in a token (RFC 9110 §5.6.2 `tchar`).
pub(crate) fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_'
        | b'`' | b'|' | b'~' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z')
}

/// Offset and length of `part` inside `whole`, computed from the addresses (no unsafe: a
/// subtraction of integers). `(0, 0)` if `part` is not inside `whole`.
pub(crate) fn span(whole: &[u8], part: &[u8]) -> (u32, u32) {
    let start = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    let inside = start
        .checked_add(part.len())
        .is_some_and(|end| end <= whole.len());
    match (inside, u32::try_from(start), u32::try_from(part.len())) {
        (true, Ok(start), Ok(len)) => (start, len),
        _ => (0, 0),
    }
}

/// `head[start..start + len]`, or empty if out of range (never, for ranges from [`span`]).
pub(crate) fn slice(head: &[u8], start: u32, len: u32) -> &[u8] {
    let start = start as usize;
    head.get(start..start + len as usize).unwrap_or_default()
}
