//! The canonicalisation stage, first of the pipeline: one `Host`, valid; the path in canonical
//! form ([`crate::canonical`]), written back into the request so that routing matches it and
//! the upstream receives it (the query is left as sent). A request with no single meaning is
//! refused here, before routing: 400 `bad-request`, counted with `route=""`.
//!
//! Allocates nothing for a request that is already canonical, which is nearly every request.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::HOST;
use http::uri::{PathAndQuery, Uri};
use http::{Request, Version};

use crate::canonical::{self, EscapedSlashes, NotCanonical};

/// The canonical stage: puts `req`'s path in canonical form and checks its host. Returns the
/// request, read-only from here on, and the host name that routes match (see [`host`]).
///
/// # Errors
/// The [`NotCanonical`] cause; when both the host and the path are bad, the host's.
pub(super) fn check<B>(
    req: &mut Request<B>,
    escaped: EscapedSlashes,
) -> Result<(&Request<B>, Option<&str>), NotCanonical> {
    // `path` changes `req` only when it succeeds.
    let path = path(req, escaped);
    let req = &*req;
    let host = host(req)?;
    path?;
    Ok((req, host))
}

/// Puts `req`'s path in canonical form.
///
/// # Errors
/// The [`NotCanonical`] cause of a path with no canonical form.
fn path<B>(req: &mut Request<B>, escaped: EscapedSlashes) -> Result<(), NotCanonical> {
    let rebuilt = match canonical::path(req.uri().path(), escaped)? {
        Cow::Borrowed(_) => return Ok(()),
        Cow::Owned(path) => path,
    };
    *req.uri_mut() = with_path(req.uri(), &rebuilt)?;
    Ok(())
}

/// Exactly one host, valid (RFC 9112 §3.2): the `Host` header, or the authority of an HTTP/2
/// request (`:authority`) or of an absolute-form target; when both are present they must
/// agree (RFC 9113 §8.3.1). HTTP/1.0 may come without any (it is forwarded with the endpoint's
/// authority as `Host`). Returns the name that routes match: without port or trailing dot.
///
/// # Errors
/// The [`NotCanonical`] cause: a missing, repeated or invalid `Host`, or a `Host` and an
/// authority that disagree.
fn host<B>(req: &Request<B>) -> Result<Option<&str>, NotCanonical> {
    let mut lines = req.headers().get_all(HOST).iter();
    let header = lines.next();
    if lines.next().is_some() {
        return Err(NotCanonical::HostRepeated);
    }
    let header = match header {
        Some(value) => Some(value.to_str().map_err(|_| NotCanonical::HostInvalid)?),
        None => None,
    };
    let authority = req.uri().authority().map(|a| a.as_str());
    let checked = match (authority, header) {
        (Some(authority), Some(header)) => {
            let (a, h) = (canonical::host(authority)?, canonical::host(header)?);
            if !a.agrees(&h) {
                return Err(NotCanonical::HostMismatch);
            }
            a
        }
        (Some(value), None) | (None, Some(value)) => canonical::host(value)?,
        (None, None) if req.version() <= Version::HTTP_10 => return Ok(None),
        (None, None) => return Err(NotCanonical::HostMissing),
    };
    Ok(Some(checked.name))
}

/// `uri` with its path replaced by `path` and its query kept.
fn with_path(uri: &Uri, path: &str) -> Result<Uri, NotCanonical> {
    let mut target = String::with_capacity(path.len() + uri.query().map_or(0, |q| q.len() + 1));
    target.push_str(path);
    if let Some(query) = uri.query() {
        target.push('?');
        target.push_str(query);
    }
    // The canonical path holds only characters a URI allows, so only its length can fail.
    let path_and_query = PathAndQuery::from_maybe_shared(Bytes::from(target))
        .map_err(|_| NotCanonical::PathTooLong)?;
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).map_err(|_| NotCanonical::PathTooLong)
}

#[cfg(test)]
mod tests;
