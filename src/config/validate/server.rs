//! `server:`: the listeners, connection handling and what one client may hold; `server.tls`;
//! and the rule that no two listeners share an address.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::time::Duration;

use ipnet::IpNet;

use super::cx::Cx;
use super::{join, present};
use crate::canonical::EscapedSlashes;
use crate::config::raw::{RawServer, RawTls, Size};
use crate::config::TlsIdentity;
use crate::config::{AdminConfig, ByteSize, ClientLimits, Config, ServerConfig, TlsConfig};

/// The `server` fields of connection handling, checked apart from the rest.
struct Connections {
    header_read_timeout: Duration,
    max_connections: NonZeroUsize,
    shutdown_grace: Duration,
    workers: Option<NonZeroUsize>,
    max_concurrent_streams: u32,
}

// === impl Cx: server ===

impl Cx {
    pub(super) fn server(&mut self, raw: &RawServer) -> Option<ServerConfig> {
        let at = |field| join("server", field);
        let listen = self.socket_addr(
            &at("listen"),
            raw.listen.as_deref(),
            "an address like 0.0.0.0:8080",
        );
        let tls = raw.tls.as_ref().map(|tls| self.tls(tls));
        let trusted_proxies: Vec<Option<IpNet>> = raw
            .trusted_proxies
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, cidr)| self.cidr(&format!("server.trusted_proxies[{i}]"), cidr))
            .collect();
        let ipv6_key_prefix = self.whole(
            &at("ipv6_key_prefix"),
            raw.ipv6_key_prefix,
            ServerConfig::DEFAULT_IPV6_KEY_PREFIX,
            (0, ServerConfig::MAX_IPV6_KEY_PREFIX),
        );
        let connections = self.connections(raw);
        let escaped_slashes = self.choice(
            &at("escaped_slashes"),
            raw.escaped_slashes.as_deref(),
            &[
                ("reject", EscapedSlashes::Reject),
                ("keep", EscapedSlashes::Keep),
            ],
            EscapedSlashes::default(),
        );
        let retry_after_spread = self.retry_after_spread(raw.retry_after_spread);
        let client = self.client_limits(raw);
        let (connections, client) = (connections?, client?);
        Some(ServerConfig {
            listen: listen?,
            tls: present(tls)?,
            trusted_proxies: trusted_proxies.into_iter().collect::<Option<_>>()?,
            ipv6_key_prefix: ipv6_key_prefix?,
            rate_limit_headers: raw
                .rate_limit_headers
                .unwrap_or(ServerConfig::DEFAULT_RATE_LIMIT_HEADERS),
            header_read_timeout: connections.header_read_timeout,
            max_connections: connections.max_connections,
            shutdown_grace: connections.shutdown_grace,
            workers: connections.workers,
            max_concurrent_streams: connections.max_concurrent_streams,
            access_log: raw.access_log.unwrap_or(ServerConfig::DEFAULT_ACCESS_LOG),
            retry_after_spread: retry_after_spread?,
            escaped_slashes: escaped_slashes?,
            client,
        })
    }

    /// `server.retry_after_spread`: a number in 0..=1.
    fn retry_after_spread(&mut self, raw: Option<f64>) -> Option<f64> {
        let spread = raw.unwrap_or(ServerConfig::DEFAULT_RETRY_AFTER_SPREAD);
        if (0.0..=ServerConfig::MAX_RETRY_AFTER_SPREAD).contains(&spread) {
            return Some(spread);
        }
        self.error(
            "server.retry_after_spread",
            format!(
                "must be a number from 0 (off) to {} (up to twice the wait), not {spread}",
                ServerConfig::MAX_RETRY_AFTER_SPREAD
            ),
        );
        None
    }

    /// The `server` fields of connection handling: timeouts, connections, threads, streams.
    fn connections(&mut self, raw: &RawServer) -> Option<Connections> {
        let at = |field| join("server", field);
        let header_read_timeout = self.duration(
            &at("header_read_timeout"),
            raw.header_read_timeout.as_deref(),
            ServerConfig::DEFAULT_HEADER_READ_TIMEOUT,
            false,
        );
        let max_connections = self.nonzero_usize_or(
            &at("max_connections"),
            raw.max_connections,
            ServerConfig::DEFAULT_MAX_CONNECTIONS,
            Config::MAX_COUNT,
        );
        let shutdown_grace = self.duration(
            &at("shutdown_grace"),
            raw.shutdown_grace.as_deref(),
            ServerConfig::DEFAULT_SHUTDOWN_GRACE,
            true,
        );
        let workers = raw
            .workers
            .map(|n| self.nonzero_usize(&at("workers"), n.0, ServerConfig::MAX_WORKERS));
        let max_concurrent_streams = self.whole(
            &at("max_concurrent_streams"),
            raw.max_concurrent_streams,
            ServerConfig::DEFAULT_MAX_CONCURRENT_STREAMS,
            (1, u32::MAX),
        );
        Some(Connections {
            header_read_timeout: header_read_timeout?,
            max_connections: max_connections?,
            shutdown_grace: shutdown_grace?,
            workers: present(workers)?,
            max_concurrent_streams: max_concurrent_streams?,
        })
    }

    /// The `server` fields that bound what one client can hold: head and body sizes, buffers,
    /// body and send timeouts, connections per address.
    fn client_limits(&mut self, raw: &RawServer) -> Option<ClientLimits> {
        let at = |field| join("server", field);
        let sizes = self.client_sizes(raw);
        let [max_header_bytes, max_request_body, request_buffer, response_buffer, buffered] = sizes;
        let request_body_timeout = self.duration(
            &at("request_body_timeout"),
            raw.request_body_timeout.as_deref(),
            ClientLimits::DEFAULT_REQUEST_BODY_TIMEOUT,
            false,
        );
        let send_timeout = self.duration(
            &at("send_timeout"),
            raw.send_timeout.as_deref(),
            ClientLimits::DEFAULT_SEND_TIMEOUT,
            false,
        );
        let max_connections_per_ip = self.whole(
            &at("max_connections_per_ip"),
            raw.max_connections_per_ip,
            ClientLimits::DEFAULT_MAX_CONNECTIONS_PER_IP,
            (0, Config::MAX_COUNT),
        );
        Some(ClientLimits {
            max_header_bytes: max_header_bytes?,
            max_request_body: max_request_body?,
            request_buffer: request_buffer?,
            request_body_timeout: request_body_timeout?,
            response_buffer: response_buffer?,
            send_timeout: send_timeout?,
            max_buffered_bytes: buffered?,
            max_connections_per_ip: max_connections_per_ip?,
        })
    }

    /// The sizes of [`ClientLimits`], in this order: `max_header_bytes`, `max_request_body`,
    /// `request_buffer`, `response_buffer`, `max_buffered_bytes`.
    fn client_sizes(&mut self, raw: &RawServer) -> [Option<ByteSize>; 5] {
        let mut size = |field, raw: &Option<Size>, default, min| {
            self.size(
                &join("server", field),
                raw.as_ref(),
                default,
                (min, Config::MAX_SIZE),
            )
        };
        [
            size(
                "max_header_bytes",
                &raw.max_header_bytes,
                ClientLimits::DEFAULT_MAX_HEADER_BYTES,
                ClientLimits::MIN_MAX_HEADER_BYTES,
            ),
            size(
                "max_request_body",
                &raw.max_request_body,
                ClientLimits::DEFAULT_MAX_REQUEST_BODY,
                ByteSize(0),
            ),
            size(
                "request_buffer",
                &raw.request_buffer,
                ClientLimits::DEFAULT_REQUEST_BUFFER,
                ByteSize(0),
            ),
            size(
                "response_buffer",
                &raw.response_buffer,
                ClientLimits::DEFAULT_RESPONSE_BUFFER,
                ByteSize(0),
            ),
            size(
                "max_buffered_bytes",
                &raw.max_buffered_bytes,
                ClientLimits::DEFAULT_MAX_BUFFERED_BYTES,
                ByteSize(0),
            ),
        ]
    }

    fn tls(&mut self, raw: &RawTls) -> Option<TlsConfig> {
        let at = "server.tls";
        let listen = self.socket_addr(
            &join(at, "listen"),
            raw.listen.as_deref(),
            "an address like 0.0.0.0:8443",
        );
        let cert = self.file(
            &join(at, "cert"),
            raw.cert.as_deref(),
            "the path of a PEM certificate chain",
        );
        let key = self.file(
            &join(at, "key"),
            raw.key.as_deref(),
            "the path of a PEM private key",
        );
        // Read and check the files now, so that `sluice check` and a reload catch a bad
        // certificate, and what was checked is what the listener serves.
        let identity = match (&cert, &key) {
            (Some(cert), Some(key)) => match TlsIdentity::load(cert, key) {
                Ok(identity) => Some(identity),
                Err(errors) => {
                    for error in errors {
                        self.error(&join(at, error.field()), error.to_string());
                    }
                    None
                }
            },
            _ => None,
        };
        Some(TlsConfig {
            listen: listen?,
            cert: cert?,
            key: key?,
            identity: identity?,
        })
    }

    /// A CIDR (`10.0.0.0/8`) or a bare address (= one host).
    fn cidr(&mut self, at: &str, raw: &str) -> Option<IpNet> {
        let text = raw.trim();
        if let Ok(net) = text.parse::<IpNet>() {
            return Some(net.trunc());
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Some(IpNet::from(ip));
        }
        self.fail(
            at,
            format!(
                "expected a CIDR like 10.0.0.0/8 or an IP address like 192.0.2.7, found {raw:?}"
            ),
        )
    }
}

// === impl Cx: listeners ===

impl Cx {
    /// Listeners must not collide (only those that parsed are compared).
    pub(super) fn listeners(&mut self, server: &ServerConfig, admin: Option<&AdminConfig>) {
        let http = server.listen;
        if let Some(tls) = &server.tls {
            self.distinct("server.tls.listen", tls.listen, http, "server.listen");
        }
        if let Some(admin) = admin {
            self.distinct("admin.listen", admin.listen, http, "server.listen");
            if let Some(tls) = &server.tls {
                self.distinct(
                    "admin.listen",
                    admin.listen,
                    tls.listen,
                    "server.tls.listen",
                );
            }
        }
    }

    /// A second listener must not take the HTTP listener's address (port 0 = any free port,
    /// so two of them never collide).
    fn distinct(&mut self, path: &str, addr: SocketAddr, other: SocketAddr, other_path: &str) {
        if addr == other && addr.port() != 0 {
            self.error(
                path,
                format!("{addr} is already {other_path}; use another address"),
            );
        }
    }
}
