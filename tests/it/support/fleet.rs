//! What the fleet tests share: names in a temporary `/etc/hosts` entry ([`Hosts`], in
//! `hosts.rs`, which the fleet bench shares) and real
//! upstream servers on 127.0.0.2, .3, .4 with one port ([`Fleet`]); Linux routes all of
//! 127.0.0.0/8 to the loopback interface.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpListener;

pub(crate) use super::hosts::Hosts;
use super::{upstream_on, TestBody, Upstream};

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
