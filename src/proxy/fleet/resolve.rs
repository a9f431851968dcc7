//! Names to addresses, the way the system resolves them (`/etc/hosts`, then DNS as
//! `/etc/resolv.conf` says): `getaddrinfo` through the standard library, on a blocking thread
//! when called from a task.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use http::uri::Authority;

use crate::config::Config;

/// What every name among a config's endpoints resolves to now: `sluice check` prints it, and
/// `check` and `run` refuse a config with an upstream none of whose endpoints resolves.
#[derive(Debug)]
pub struct Resolutions {
    /// One per configured endpoint that is a name (IP literals need no resolving).
    names: Vec<Resolution>,
    /// Upstreams (by name) with at least one endpoint that has an address.
    resolving: Vec<Arc<str>>,
}

/// One name's answer.
#[derive(Debug)]
struct Resolution {
    /// Its upstream.
    upstream: Arc<str>,
    /// Its index in the upstream's `endpoints`.
    index: usize,
    /// `host:port`.
    name: Authority,
    /// The addresses, or the resolver's error.
    answer: io::Result<Vec<SocketAddr>>,
}

// === impl Resolutions ===

impl Resolutions {
    /// Resolves every name of `config` now (blocking).
    pub fn of(config: &Config) -> Self {
        let mut names = Vec::new();
        let mut resolving = Vec::new();
        for upstream in &config.upstreams {
            let mut any = false;
            for (index, name) in upstream.endpoints.iter().enumerate() {
                if literal(name).is_some() {
                    any = true;
                    continue;
                }
                let answer = lookup_blocking(name);
                any |= answer.is_ok();
                let upstream = upstream.name.clone();
                let name = name.clone();
                names.push(Resolution {
                    upstream,
                    index,
                    name,
                    answer,
                });
            }
            if any {
                resolving.push(upstream.name.clone());
            }
        }
        Resolutions { names, resolving }
    }

    /// The names that do not resolve in an upstream none of whose endpoints does, as a field
    /// path (`upstreams.orders.endpoints[0]`) and a message.
    pub fn errors(&self) -> Vec<(String, String)> {
        let fatal = |r: &&Resolution| r.answer.is_err() && !self.resolving.contains(&r.upstream);
        self.names
            .iter()
            .filter(fatal)
            .map(|r| {
                let err = r.answer.as_ref().err().map(ToString::to_string);
                (
                    format!("upstreams.{}.endpoints[{}]", r.upstream, r.index),
                    format!(
                        "{} does not resolve ({}), and no other endpoint of the upstream does",
                        r.name,
                        err.unwrap_or_default()
                    ),
                )
            })
            .collect()
    }
}

impl fmt::Display for Resolutions {
    /// `names resolved now:` then one line per name: its addresses or why it has none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.names.is_empty() {
            return Ok(());
        }
        writeln!(f, "names resolved now:")?;
        for r in &self.names {
            write!(f, "  {:<16} {} -> ", r.upstream, r.name)?;
            match &r.answer {
                Ok(addrs) => {
                    let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                    writeln!(f, "{}", addrs.join(", "))?;
                }
                Err(err) => writeln!(f, "not resolved ({err})")?,
            }
        }
        Ok(())
    }
}

/// The addresses of `name` (`host:port`) now, each with the port, without repeats, in the
/// resolver's order. An IP literal is its own address and never reaches the resolver.
///
/// # Errors
/// The resolver's error, or `NotFound` when it answered with no address.
pub(crate) fn lookup_blocking(name: &Authority) -> io::Result<Vec<SocketAddr>> {
    if let Some(addr) = literal(name) {
        return Ok(vec![addr]);
    }
    dedup(name.as_str().to_socket_addrs()?.collect())
}

/// [`lookup_blocking`] from a task: tokio runs `getaddrinfo` on its blocking pool.
///
/// # Errors
/// As [`lookup_blocking`].
pub(crate) async fn lookup(name: &Authority) -> io::Result<Vec<SocketAddr>> {
    if let Some(addr) = literal(name) {
        return Ok(vec![addr]);
    }
    dedup(tokio::net::lookup_host(name.as_str()).await?.collect())
}

/// The address of an IP-literal authority (`127.0.0.1:80`, `[::1]:80`).
pub(crate) fn literal(name: &Authority) -> Option<SocketAddr> {
    name.as_str().parse().ok()
}

/// `addrs` without repeats (the resolver answers once per socket type), order kept; an empty
/// answer is an error.
fn dedup(addrs: Vec<SocketAddr>) -> io::Result<Vec<SocketAddr>> {
    let mut out: Vec<SocketAddr> = Vec::with_capacity(addrs.len());
    for addr in addrs {
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    if out.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no address"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IP literal is its own address; `localhost` resolves through `/etc/hosts`; a name
    /// under `.invalid` (RFC 6761) never resolves.
    #[tokio::test]
    async fn literals_names_and_failures() {
        let lit: Authority = "127.0.0.9:81".parse().expect("authority");
        assert_eq!(
            lookup(&lit).await.expect("literal"),
            ["127.0.0.9:81".parse::<SocketAddr>().expect("addr")]
        );
        let local: Authority = "localhost:8080".parse().expect("authority");
        let addrs = lookup(&local).await.expect("localhost resolves");
        assert!(addrs
            .iter()
            .all(|a| a.port() == 8080 && a.ip().is_loopback()));
        let bad: Authority = "no-such-host.invalid:80".parse().expect("authority");
        assert!(lookup(&bad).await.is_err());
        assert!(lookup_blocking(&bad).is_err());
    }
}
