//! `server.send_timeout` at the socket: a connection whose client accepts no bytes for that long
//! while sluice has bytes to write is failed, and so closed — hyper has no write timeout, and a
//! client that stops reading would otherwise keep its connection, and what is queued on it,
//! forever (NGINX's `send_timeout`).
//!
//! The timer is armed only when a write would block, and disarmed by the next write that
//! progresses: a client that reads, however slowly, is never cut. (The response drain applies
//! the same timeout to responses, so their slots are freed even on an HTTP/2 connection that
//! still makes progress on other streams: see [`crate::body`].)

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A connection's I/O with a write stall limit.
#[derive(Debug)]
pub(crate) struct SendTimeout<I> {
    io: I,
    timeout: Duration,
    /// Made on the first stall and reset in place after that; `None` for a connection whose
    /// writes never blocked (most of them).
    stall: Option<Pin<Box<Sleep>>>,
    /// Whether `stall` runs for the current stall.
    armed: bool,
}

// === impl SendTimeout ===

impl<I> SendTimeout<I> {
    pub(crate) fn new(io: I, timeout: Duration) -> Self {
        SendTimeout {
            io,
            timeout,
            stall: None,
            armed: false,
        }
    }

    /// Handles the outcome of a write: progress disarms the timer; a blocked write arms it,
    /// and fails once it has run out.
    fn on_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(result) => {
                self.armed = false;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let deadline = Instant::now() + self.timeout;
                let stall = self
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !self.armed {
                    self.armed = true;
                    stall.as_mut().reset(deadline);
                }
                match stall.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client accepted no bytes within send_timeout",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for SendTimeout<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for SendTimeout<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.on_write(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.on_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.on_write(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.on_write(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Pins: a write that cannot progress fails after the timeout, and one that progresses in
    /// time does not.
    #[tokio::test(start_paused = true)]
    async fn stalled_writes_fail_after_the_timeout() {
        // A pipe with a 16-byte buffer that nobody reads.
        let (near, mut far) = tokio::io::duplex(16);
        let mut io = SendTimeout::new(near, Duration::from_secs(30));
        io.write_all(&[0; 16]).await.expect("fits the buffer");
        let started = Instant::now();
        let err = io.write_all(&[0; 16]).await.expect_err("nobody reads");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(30));

        // Reading keeps it alive: a reader that takes 16 bytes every 20 s never trips it.
        let (near, mut far2) = tokio::io::duplex(16);
        let mut io = SendTimeout::new(near, Duration::from_secs(30));
        let reader = tokio::spawn(async move {
            let mut buf = [0; 16];
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                tokio::io::AsyncReadExt::read_exact(&mut far2, &mut buf)
                    .await
                    .expect("data");
            }
        });
        io.write_all(&[0; 64])
            .await
            .expect("a slow reader is not cut");
        reader.await.expect("reader");
        drop(far.write_all(b"").await);
    }
}
