//! Upgraded connections (WebSocket and other HTTP/1.1 `Upgrade`s): after the upstream's 101,
//! the client's connection and the upstream's are joined and bytes flow both ways until either
//! side closes, the connection has been quiet for the route's `upgraded_idle_timeout`, or
//! sluice shuts down.
//!
//! Where each piece lives:
//! - `crate::pipeline` decides that a request is an upgrade, takes its place under the route's
//!   `max_upgraded` ([`Place`]), forwards the handshake holding the caps' slots, and on the
//!   upstream's 101 hands a [`Tunnel`] to the client connection's [`Upgrades`];
//! - `crate::net::server` runs it once hyper has written the 101 and handed the connection
//!   over, in the connection's own task: the connection keeps its slot of `max_connections` and
//!   `max_connections_per_ip` for as long as the tunnel is open;
//! - `crate::net::listener` closes every tunnel of its [`Tunnels`] once graceful shutdown has
//!   finished the requests in flight: upgraded connections are closed last.
//!
//! A tunnel holds no concurrency slot: it has no request in flight, only bytes, and a
//! WebSocket may stay open for hours. What bounds tunnels is `max_upgraded` per route and the
//! connection caps.
//!
//! Closing a WebSocket (idle or shutdown), each side is sent a close frame (1001, going away)
//! when the bytes relayed to it so far end on a frame boundary, which [`Frames`] tracks; a side
//! in the middle of a frame gets a plain close (a frame cannot be cut into). Best effort, as
//! the contract allows: a side that does not read gets no more than [`CLOSE_WRITE`] of sluice's
//! time.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a close frame (and the close after it) may take to write to one side.
pub(crate) const CLOSE_WRITE: Duration = Duration::from_secs(1);

/// The read buffer of each direction: one per direction for the tunnel's life.
const BUFFER: usize = 16 << 10;

/// The close frame sent to the client: FIN + close, 2 bytes of payload, status 1001.
const CLOSE_TO_CLIENT: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// The upgraded connections of one listener, for shutdown: [`Tunnels::close`] tells each to
/// close, [`Tunnels::closed`] waits until none is left.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tunnels {
    inner: Arc<TunnelsInner>,
}

#[derive(Debug)]
struct TunnelsInner {
    /// Fired once, when shutdown begins: an HTTP/2 tunnel closes once its connection carries
    /// no request any more (its stream keeps the connection, and so graceful shutdown, open).
    draining: watch::Sender<bool>,
    /// Fired once, after the listener's requests in flight have finished.
    closing: watch::Sender<bool>,
    /// Tunnels running now.
    open: watch::Sender<usize>,
}

/// One client connection's way to its tunnel: the pipeline hands the tunnel over while
/// answering the handshake, and the connection's task runs it once hyper has let go of the
/// connection (see the module docs). Shared by the connection's requests.
#[derive(Debug)]
pub(crate) struct Upgrades {
    tunnels: Tunnels,
    /// The tunnel of the handshake answered 101. std Mutex: a put and a take, never held
    /// across an await.
    handed: Mutex<Option<Tunnel>>,
}

/// An upgrade answered 101 by the upstream, to be joined to the client once hyper has written
/// the 101 to it.
#[derive(Debug)]
pub(crate) struct Tunnel {
    /// The client's connection, once hyper has written the 101.
    client: OnUpgrade,
    /// The upstream's connection, once its 101 has been read.
    upstream: OnUpgrade,
    /// The route's name, for the log.
    route: Arc<str>,
    /// No byte either way for this long closes both sides.
    idle_timeout: Duration,
    /// `Upgrade: websocket`: closed with close frames.
    websocket: bool,
    /// Its place under the route's `max_upgraded`, given back when it closes.
    place: Place,
    /// An HTTP/2 tunnel's stream ([`Stream`]); `None` over HTTP/1.1.
    stream: Option<Stream>,
}

/// What an HTTP/2 tunnel holds of its stream: the mark that keeps its connection open, and
/// what tells when its connection carries no request any more (see `TunnelsInner::draining`).
pub(crate) struct Stream {
    /// Held until the tunnel closes.
    pub(crate) hold: Box<dyn Send + Sync>,
    /// Resolves once the connection's other streams are tunnels too.
    pub(crate) quiet: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stream")
    }
}

/// One place under a route's `max_upgraded`, counted in `sluice_upgraded_connections{route}`
/// from the handshake until the upgraded connection closes (or the handshake ends without
/// one). Decrements the gauge when dropped.
#[derive(Debug)]
pub(crate) struct Place(Gauge);

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Both sides closed (or one broke the connection).
    Closed,
    /// No byte either way for `idle_timeout`.
    Idle,
    /// sluice is shutting down.
    Shutdown,
}

/// The time of the last byte read from either side, in milliseconds since the tunnel opened.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    last_ms: AtomicU64,
}

/// Where the bytes relayed in one direction stand in WebSocket framing (RFC 6455 §5.2): a close
/// frame may be added only between two frames.
#[derive(Debug, Default)]
struct Frames {
    /// The header bytes of the frame being read so far (at most 14).
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame not relayed yet.
    payload_left: u64,
    /// True while a write is under way (or was cut off): where the other side stands is then
    /// unknown.
    torn: bool,
}

// === impl Tunnels ===

impl Default for TunnelsInner {
    fn default() -> Self {
        TunnelsInner {
            draining: watch::channel(false).0,
            closing: watch::channel(false).0,
            open: watch::channel(0).0,
        }
    }
}

impl Tunnels {
    /// Shutdown has begun: HTTP/2 tunnels close once their connection carries no request.
    pub(crate) fn drain(&self) {
        self.inner.draining.send_replace(true);
    }

    /// Tells every tunnel, running or yet to run, to close.
    pub(crate) fn close(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Resolves once no tunnel is running.
    pub(crate) async fn closed(&self) {
        let mut open = self.inner.open.subscribe();
        let _ = open.wait_for(|n| *n == 0).await;
    }

    /// Tunnels running now.
    pub(crate) fn open(&self) -> usize {
        *self.inner.open.borrow()
    }
}

// === impl Upgrades ===

impl Upgrades {
    /// A client connection's, under `tunnels` (its listener's).
    pub(crate) fn new(tunnels: Tunnels) -> Self {
        Upgrades {
            tunnels,
            handed: Mutex::new(None),
        }
    }

    /// Hands over the tunnel of a handshake the upstream answered 101.
    pub(crate) fn hand_over(&self, tunnel: Tunnel) {
        let mut handed = self.handed.lock().unwrap_or_else(|e| e.into_inner());
        *handed = Some(tunnel);
    }

    /// Runs an HTTP/2 tunnel on a task of its own: its connection goes on serving other
    /// streams (and holds its connection slots while it is open).
    pub(crate) fn spawn(&self, tunnel: Tunnel) {
        let tunnels = self.tunnels.clone();
        tokio::spawn(async move { tunnel.run(&tunnels).await });
    }

    /// Runs the tunnel handed over, if any, until it ends. Called by the connection's task once
    /// hyper is done with the connection.
    pub(crate) async fn run(&self) {
        let tunnel = self.handed.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(tunnel) = tunnel {
            tunnel.run(&self.tunnels).await;
        }
    }
}

// === impl Tunnel ===

impl Tunnel {
    /// The tunnel of a 101: `client` and `upstream` are the two connections' upgrades.
    pub(crate) fn new(
        client: OnUpgrade,
        upstream: OnUpgrade,
        route: Arc<str>,
        idle_timeout: Duration,
        websocket: bool,
        place: Place,
    ) -> Self {
        Tunnel {
            client,
            upstream,
            route,
            idle_timeout,
            websocket,
            place,
            stream: None,
        }
    }

    /// The same, on an HTTP/2 stream (RFC 8441).
    pub(crate) fn on_stream(mut self, stream: Stream) -> Self {
        self.stream = Some(stream);
        self
    }

    /// Joins the two connections and relays bytes until the tunnel ends (see [`End`]).
    async fn run(self, tunnels: &Tunnels) {
        let Tunnel {
            client,
            upstream,
            route,
            idle_timeout,
            websocket,
            place,
            stream,
        } = self;
        let (client, upstream) = match (client.await, upstream.await) {
            (Ok(client), Ok(upstream)) => (client, upstream),
            (Err(err), _) | (_, Err(err)) => {
                tracing::debug!(%route, error = %err, "upgrade not completed");
                return;
            }
        };
        tunnels.inner.open.send_modify(|n| *n += 1);
        let _open = Open(tunnels);
        let closing = tunnels.inner.closing.subscribe();
        let (hold, quiet) = match stream {
            Some(Stream { hold, quiet }) => (Some(hold), Some(quiet)),
            None => (None, None),
        };
        let draining = tunnels.inner.draining.subscribe();
        let relay = Relay {
            idle_timeout,
            websocket,
        };
        let ends = Ends {
            closing,
            draining,
            quiet,
        };
        let (end, up, down, opened) = relay.run(client, upstream, ends).await;
        drop(place);
        drop(hold);
        tracing::debug!(
            %route,
            end = ?end,
            bytes_to_upstream = up,
            bytes_to_client = down,
            secs = format_args!("{:.3}", opened.elapsed().as_secs_f64()),
            "upgraded connection closed"
        );
    }
}

/// Counts a running tunnel in its [`Tunnels`] until dropped.
struct Open<'a>(&'a Tunnels);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.inner.open.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// How one tunnel relays.
struct Relay {
    idle_timeout: Duration,
    websocket: bool,
}

/// What ends a tunnel besides its peers and its idle timeout.
struct Ends {
    /// The listener's requests in flight are done.
    closing: watch::Receiver<bool>,
    /// Shutdown has begun…
    draining: watch::Receiver<bool>,
    /// …and (HTTP/2) the tunnel's connection carries no request any more.
    quiet: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Ends {
    /// Resolves when the tunnel is to close for shutdown.
    async fn shutdown(&mut self) {
        let quiet = async {
            let _ = self.draining.wait_for(|fired| *fired).await;
            match self.quiet.as_mut() {
                Some(quiet) => quiet.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.closing.wait_for(|fired| *fired) => {}
            () = quiet => {}
        }
    }
}

impl Relay {
    /// Relays between `client` and `upstream` until the end; why it ended, the bytes sent to
    /// the upstream and to the client, and when it opened.
    async fn run(
        self,
        client: Upgraded,
        upstream: Upgraded,
        mut ends: Ends,
    ) -> (End, u64, u64, Instant) {
        let (mut client_rd, mut client_wr) = tokio::io::split(TokioIo::new(client));
        let (mut upstream_rd, mut upstream_wr) = tokio::io::split(TokioIo::new(upstream));
        let activity = Activity::new();
        // Frames relayed to the upstream (from the client), and to the client.
        let (mut to_upstream, mut to_client) = (Frames::default(), Frames::default());
        let (mut up, mut down) = (0u64, 0u64);
        let end = {
            let both = async {
                tokio::try_join!(
                    pump(
                        &mut client_rd,
                        &mut upstream_wr,
                        &activity,
                        &mut to_upstream,
                        &mut up
                    ),
                    pump(
                        &mut upstream_rd,
                        &mut client_wr,
                        &activity,
                        &mut to_client,
                        &mut down
                    ),
                )
            };
            tokio::select! {
                _ = both => End::Closed,
                () = activity.idle_for(self.idle_timeout) => End::Idle,
                () = ends.shutdown() => End::Shutdown,
            }
        };
        if end != End::Closed {
            let frames = self.websocket;
            let to_client_frame =
                (frames && to_client.at_boundary()).then_some(&CLOSE_TO_CLIENT[..]);
            let masked = close_to_upstream();
            let to_upstream_frame = (frames && to_upstream.at_boundary()).then_some(&masked[..]);
            tokio::join!(
                close(&mut client_wr, to_client_frame),
                close(&mut upstream_wr, to_upstream_frame),
            );
        }
        (end, up, down, activity.opened)
    }
}

/// Relays `from` to `to` until `from` ends (then `to` is shut down for writing: a half-close
/// passes through) or either fails. Counts the bytes in `total` and the time of each read in
/// `activity`; `frames` follows the WebSocket framing of what was written.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    activity: &Activity,
    frames: &mut Frames,
    total: &mut u64,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        activity.touch();
        frames.torn = true;
        to.write_all(&buf[..n]).await?;
        // A TLS stream holds written bytes until flushed.
        to.flush().await?;
        frames.torn = false;
        frames.advance(&buf[..n]);
        *total += n as u64;
    }
}

/// Writes `frame` (if any) to `to`, then shuts it down, within [`CLOSE_WRITE`].
async fn close<W: AsyncWrite + Unpin>(to: &mut W, frame: Option<&[u8]>) {
    let closing = async {
        if let Some(frame) = frame {
            to.write_all(frame).await?;
        }
        to.shutdown().await
    };
    let _ = tokio::time::timeout(CLOSE_WRITE, closing).await;
}

/// A close frame (1001) as a client sends it: masked (RFC 6455 §5.3), with a key from the
/// process's random hasher seed (the key only has to be unpredictable to the page's script,
/// which cannot see this frame at all).
fn close_to_upstream() -> [u8; 8] {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0);
    let key = hasher.finish().to_le_bytes();
    [
        0x88,
        0x82,
        key[0],
        key[1],
        key[2],
        key[3],
        CLOSE_TO_CLIENT[2] ^ key[0],
        CLOSE_TO_CLIENT[3] ^ key[1],
    ]
}

// === impl Place ===

impl Place {
    /// A place under `max` counted in `gauge` (the route's `sluice_upgraded_connections`),
    /// and whether the route was at `max` already. Counted in either case: the caller gives
    /// the place back at once (dropping it) to refuse the upgrade, or, in shadow mode, keeps
    /// it and only logs.
    pub(crate) fn take(gauge: &Gauge, max: usize) -> (Place, bool) {
        let before = gauge.inc();
        let full = usize::try_from(before).unwrap_or(0) >= max;
        (Place(gauge.clone()), full)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.dec();
    }
}

// === impl Activity ===

impl Activity {
    fn new() -> Self {
        Activity {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// A byte was read from either side now.
    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing was read from either side for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = self.opened + last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

// === impl Frames ===

impl Frames {
    /// True when the bytes relayed so far end between two frames.
    fn at_boundary(&self) -> bool {
        !self.torn && self.have == 0 && self.payload_left == 0
    }

    /// Follows the frames in `bytes`, the next bytes relayed.
    fn advance(&mut self, mut bytes: &[u8]) {
        while let Some((&first, rest)) = bytes.split_first() {
            if self.payload_left > 0 {
                let n = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.payload_left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            self.header[self.have] = first;
            self.have += 1;
            bytes = rest;
            if let Some(payload) = self.header_done() {
                self.payload_left = payload;
                self.have = 0;
            }
        }
    }

    /// The payload length once the header read so far is whole.
    fn header_done(&self) -> Option<u64> {
        if self.have < 2 {
            return None;
        }
        let len7 = self.header[1] & 0x7F;
        let masked = self.header[1] & 0x80 != 0;
        let extended = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let need = 2 + extended + if masked { 4 } else { 0 };
        if self.have < need {
            return None;
        }
        Some(match extended {
            0 => u64::from(len7),
            2 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            _ => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(be)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frame boundaries are found across any split of the bytes: short, 16-bit and 64-bit
    /// lengths, masked or not, and a frame with no payload.
    #[test]
    fn frames_follow_boundaries_across_splits() {
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        // Unmasked text "hi".
        stream.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
        ends.push(stream.len());
        // Masked, 300 bytes (16-bit length).
        stream.extend_from_slice(&[0x82, 0x80 | 126, 0x01, 0x2C, 1, 2, 3, 4]);
        stream.extend(std::iter::repeat_n(7u8, 300));
        ends.push(stream.len());
        // Unmasked, 70000 bytes (64-bit length).
        stream.extend_from_slice(&[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        stream.extend(std::iter::repeat_n(9u8, 70_000));
        ends.push(stream.len());
        // A ping with no payload.
        stream.extend_from_slice(&[0x89, 0x00]);
        ends.push(stream.len());
        for chunk in [1, 2, 3, 7, 1000, stream.len()] {
            let mut frames = Frames::default();
            let mut at = 0;
            for piece in stream.chunks(chunk) {
                frames.advance(piece);
                at += piece.len();
                assert_eq!(
                    frames.at_boundary(),
                    ends.contains(&at),
                    "chunk {chunk}, at {at}"
                );
            }
        }
    }

    /// A write cut off leaves the boundary unknown: no close frame is added after it.
    #[test]
    fn a_torn_write_is_not_a_boundary() {
        let mut frames = Frames::default();
        assert!(frames.at_boundary());
        frames.torn = true;
        assert!(!frames.at_boundary());
    }

    /// The masked close frame unmasks to status 1001.
    #[test]
    fn close_to_upstream_is_masked_1001() {
        let frame = close_to_upstream();
        assert_eq!(&frame[..2], &[0x88, 0x82]);
        let key = &frame[2..6];
        assert_eq!([frame[6] ^ key[0], frame[7] ^ key[1]], [0x03, 0xE9]);
    }

    /// The gauge counts every place taken, says when `max` was reached, and comes back down.
    #[test]
    fn places_count_and_come_back() {
        let gauge = Gauge::default();
        let (a, full_a) = Place::take(&gauge, 2);
        let (b, full_b) = Place::take(&gauge, 2);
        let (c, full_c) = Place::take(&gauge, 2);
        assert_eq!((full_a, full_b, full_c), (false, false, true));
        assert_eq!(gauge.get(), 3);
        drop((a, b, c));
        assert_eq!(gauge.get(), 0);
        let (_zero, full) = Place::take(&gauge, 0);
        assert!(full, "max_upgraded 0 refuses every upgrade");
    }
}
