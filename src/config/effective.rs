//! How a [`Config`](super::Config) serialises: the file's schema with every default filled in
//! and secrets redacted — what `GET /config` answers, and YAML that loads back to the same
//! config. The types derive `Serialize`; these are the field formats that differ from serde's
//! defaults (durations with a unit, endpoints as URLs, upstreams keyed by name).

use std::fmt::Display;
use std::time::Duration;

use http::Method;
use serde::ser::{SerializeMap, Serializer};

use super::UpstreamConfig;

/// `2s`, `250ms`: what the file takes.
pub(super) fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// `20%`: what the file takes.
pub(super) fn percent<S: Serializer>(p: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{p}%"))
}

/// A value in its `Display` form (rates, keys).
pub(super) fn display<S: Serializer, T: Display>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

/// An optional value in its `Display` form, or null.
pub(super) fn display_opt<S: Serializer, T: Display>(
    value: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

/// A URL with its password replaced by `***`.
pub(super) fn redacted<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&super::redact_url(url))
}

/// URLs with their passwords replaced by `***`.
pub(super) fn redacted_list<S: Serializer>(urls: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(urls.iter().map(|url| super::redact_url(url)))
}

/// Method names, or null for "any".
pub(super) fn methods<S: Serializer>(list: &Option<Vec<Method>>, s: S) -> Result<S::Ok, S::Error> {
    match list {
        Some(list) => s.collect_seq(list.iter().map(Method::as_str)),
        None => s.serialize_none(),
    }
}

/// Upstreams as the file has them: a mapping from names.
pub(super) fn by_name<S: Serializer>(list: &[UpstreamConfig], s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(list.len()))?;
    for upstream in list {
        map.serialize_entry(&*upstream.name, &WithUrls(upstream))?;
    }
    map.end()
}

/// An upstream with its endpoints as URLs (`http://host:port` or `https://…`, as the file
/// names them): the scheme is the upstream's, not the endpoint's.
struct WithUrls<'a>(&'a UpstreamConfig);

impl serde::Serialize for WithUrls<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Effective<'a> {
            endpoints: Vec<String>,
            #[serde(flatten)]
            rest: &'a UpstreamConfig,
        }
        let scheme = if self.0.https { "https" } else { "http" };
        Effective {
            endpoints: self
                .0
                .endpoints
                .iter()
                .map(|a| format!("{scheme}://{a}"))
                .collect(),
            rest: self.0,
        }
        .serialize(s)
    }
}
