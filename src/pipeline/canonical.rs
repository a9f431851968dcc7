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

use crate::canonical::{self, BadRequest, EscapedSlashes};

/// Checks `req`'s host and puts its path in canonical form.
///
/// # Errors
/// The [`BadRequest`] cause: a path with no canonical form, a missing, repeated or invalid
/// `Host`, or a `Host` and an authority that disagree.
pub(super) fn check<B>(req: &mut Request<B>, escaped: EscapedSlashes) -> Result<(), BadRequest> {
    host(req)?;
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
/// authority as `Host`).
fn host<B>(req: &Request<B>) -> Result<(), BadRequest> {
    let mut lines = req.headers().get_all(HOST).iter();
    let header = lines.next();
    if lines.next().is_some() {
        return Err(BadRequest::HostRepeated);
    }
    let authority = req.uri().authority().map(|a| a.as_str());
    match (authority, header) {
        (Some(authority), _) if authority.contains('@') => Err(BadRequest::HostInvalid),
        (Some(authority), Some(header)) => {
            let (a, h) = (
                canonical::host(authority.as_bytes())?,
                canonical::host(header.as_bytes())?,
            );
            if a.agrees(&h) {
                Ok(())
            } else {
                Err(BadRequest::HostMismatch)
            }
        }
        (Some(authority), None) => canonical::host(authority.as_bytes()).map(drop),
        (None, Some(header)) => canonical::host(header.as_bytes()).map(drop),
        (None, None) if req.version() <= Version::HTTP_10 => Ok(()),
        (None, None) => Err(BadRequest::HostMissing),
    }
}

/// `uri` with its path replaced by `path` and its query kept.
fn with_path(uri: &Uri, path: &str) -> Result<Uri, BadRequest> {
    let mut target = String::with_capacity(path.len() + uri.query().map_or(0, |q| q.len() + 1));
    target.push_str(path);
    if let Some(query) = uri.query() {
        target.push('?');
        target.push_str(query);
    }
    // The canonical path holds only characters a URI allows, so only its length can fail.
    let path_and_query = PathAndQuery::from_maybe_shared(Bytes::from(target))
        .map_err(|_| BadRequest::PathTooLong)?;
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).map_err(|_| BadRequest::PathTooLong)
}

#[cfg(test)]
mod tests;
