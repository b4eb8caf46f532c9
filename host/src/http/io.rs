//! One API connection's socket as the HTTP server uses it: writes that stay blocked past
//! the send timeout fail (the client took nothing while its buffers were full), and an
//! event stream's connection gets a bounded kernel send buffer.

use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::slots::Slot;

/// A connection's socket with the send timeout.
pub struct Guarded<S> {
    inner: S,
    slot: Arc<Slot>,
    send_timeout: Duration,
    sse_buffer: usize,
    /// Whether the event stream's send buffer was set.
    buffer_set: bool,
    /// Runs while writes are blocked; reset by any progress.
    blocked: Option<Pin<Box<Sleep>>>,
}

impl<S: AsFd> Guarded<S> {
    pub fn new(inner: S, slot: Arc<Slot>, send_timeout: Duration, sse_buffer: usize) -> Self {
        Self {
            inner,
            slot,
            send_timeout,
            sse_buffer,
            buffer_set: false,
            blocked: None,
        }
    }

    /// Before a write: once the connection carries an event stream, its kernel send
    /// buffer is bounded, so a client that stops reading blocks the writes after about
    /// that much (not after the megabytes the kernel would otherwise take).
    fn bound_buffer(&mut self) {
        if self.buffer_set || !self.slot.is_streaming() {
            return;
        }
        self.buffer_set = true;
        if let Err(e) = socket2::SockRef::from(&self.inner).set_send_buffer_size(self.sse_buffer) {
            tracing::debug!(error = %e, "cannot bound an event stream's send buffer");
        }
    }

    /// After a write or flush: progress ends a blocked spell; a spell longer than the
    /// send timeout fails the write.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.blocked = None;
            return polled;
        }
        let timeout = self.send_timeout;
        let blocked = self
            .blocked
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if blocked.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.slot.set_stalled();
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client took nothing of what was sent for {} ms",
                timeout.as_millis()
            ),
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + AsFd + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.bound_buffer();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.bound_buffer();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: usize = 64 * 1024;

    /// Writes all of `buf` (tokio's `write_all` needs a feature the host does not use).
    async fn write_all<S: AsyncWrite + AsFd + Unpin>(
        guarded: &mut Guarded<S>,
        mut buf: &[u8],
    ) -> io::Result<()> {
        while !buf.is_empty() {
            let n = std::future::poll_fn(|cx| Pin::new(&mut *guarded).poll_write(cx, buf)).await?;
            buf = &buf[n..];
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_write_blocked_past_the_timeout_fails_and_progress_resets_it() {
        let (ours, theirs) = tokio::net::UnixStream::pair().expect("a socket pair");
        let slot = Arc::new(Slot::default());
        let mut guarded = Guarded::new(ours, slot.clone(), Duration::from_millis(300), 4096);
        let chunk = vec![b'x'; CHUNK];
        // Writes go through while the other end reads, however long it all takes.
        let reader = tokio::spawn(async move {
            let mut buf = vec![0; CHUNK];
            let mut total = 0;
            while total < 8 * CHUNK {
                theirs.readable().await.expect("readable");
                match theirs.try_read(&mut buf) {
                    Ok(n) => total += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("read: {e}"),
                }
            }
            theirs
        });
        for _ in 0..8 {
            write_all(&mut guarded, &chunk)
                .await
                .expect("the reader takes it");
        }
        let theirs = reader.await.expect("the reader");
        assert!(!slot.is_stalled());
        // Nobody reads: the buffers fill, then a write fails after the timeout.
        let started = std::time::Instant::now();
        let err = loop {
            if let Err(e) = write_all(&mut guarded, &chunk).await {
                break e;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(slot.is_stalled());
        drop(theirs);
    }
}
