//! What the fleet tests share: names in a temporary `/etc/hosts` entry ([`Hosts`]) and real
//! upstream servers on 127.0.0.2, .3, .4 with one port ([`Fleet`]); Linux routes all of
//! 127.0.0.0/8 to the loopback interface.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use super::{upstream_on, TestBody, Upstream};

/// Serialises the read-modify-writes of `/etc/hosts` by the tests of this process (each test
/// writes only lines of its own name, but two rewrites at once would lose one).
static HOSTS: Mutex<()> = Mutex::new(());
/// Makes each name unique in this process.
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A name of this test's own in `/etc/hosts`, standing for the addresses last [`Hosts::set`].
/// Its lines are removed when dropped, also when the test panics; other lines are untouched.
pub(crate) struct Hosts {
    pub(crate) name: String,
}

impl Hosts {
    /// A fresh name (`<what>-<pid>-<n>.fleet.test`), resolving to `ips`.
    pub(crate) fn new(what: &str, ips: &[&str]) -> Hosts {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let hosts = Hosts {
            name: format!("{what}-{}-{n}.fleet.test", std::process::id()),
        };
        hosts.set(ips);
        hosts
    }

    /// The name now stands for `ips` (and nothing else): its lines are rewritten in place.
    pub(crate) fn set(&self, ips: &[&str]) {
        let _guard = HOSTS.lock().unwrap_or_else(|e| e.into_inner());
        let text = std::fs::read_to_string("/etc/hosts").expect("read /etc/hosts");
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| !self.is_ours(l))
            .map(str::to_owned)
            .collect();
        lines.extend(ips.iter().map(|ip| format!("{ip} {}", self.name)));
        let text = lines.join("\n") + "\n";
        // Renamed over, so that a lookup meanwhile (another test's, or sluice's resolver) reads
        // the old file or the new one, never half of one; written in place where /etc/hosts is
        // a mount point and cannot be renamed over.
        let tmp = format!("/etc/.hosts.{}.tmp", std::process::id());
        let renamed =
            std::fs::write(&tmp, &text).and_then(|()| std::fs::rename(&tmp, "/etc/hosts"));
        if renamed.is_err() {
            let _ = std::fs::remove_file(&tmp);
            std::fs::write("/etc/hosts", text).expect("write /etc/hosts");
        }
    }

    fn is_ours(&self, line: &str) -> bool {
        line.split_whitespace().nth(1) == Some(self.name.as_str())
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.set(&[]);
    }
}

/// Upstream servers on 127.0.0.2, .3 and .4, one port for all.
pub(crate) struct Fleet {
    pub(crate) port: u16,
    /// On .2, .3, .4 in that order.
    pub(crate) servers: Vec<Upstream>,
}

impl Fleet {
    /// Starts the three servers, each answering with `handler(index, request)`.
    pub(crate) async fn start<F, Fut>(handler: F) -> Fleet
    where
        F: Fn(usize, Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let (port, listeners) = bind_three().await;
        let servers = listeners
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                let handler = handler.clone();
                upstream_on(l, move |req| handler(i, req))
            })
            .collect();
        Fleet { port, servers }
    }

    /// The address of server `i` (0 → 127.0.0.2).
    pub(crate) fn ip(i: usize) -> &'static str {
        ["127.0.0.2", "127.0.0.3", "127.0.0.4"][i]
    }

    /// Requests each server has had.
    pub(crate) fn requests(&self) -> Vec<usize> {
        self.servers.iter().map(Upstream::requests).collect()
    }
}

/// Three listeners on 127.0.0.2, .3, .4 with one port (tries ports until one is free on all).
async fn bind_three() -> (u16, Vec<TcpListener>) {
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.0.2:0")
            .await
            .expect("bind 127.0.0.2");
        let port = first.local_addr().expect("local addr").port();
        let mut all = vec![first];
        for ip in ["127.0.0.3", "127.0.0.4"] {
            let addr = SocketAddr::new(ip.parse::<IpAddr>().expect("ip"), port);
            if let Ok(l) = TcpListener::bind(addr).await {
                all.push(l);
            }
        }
        if all.len() == 3 {
            return (port, all);
        }
    }
    panic!("no port free on 127.0.0.2, .3 and .4");
}
