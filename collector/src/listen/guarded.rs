//! [`Guarded`]: an accepted connection that closes itself when no byte has moved for the idle timeout, or when its gate evicts it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::Slot;
use crate::metrics::{Refusal, metrics};

/// A connection that closes itself when idle for too long or when its gate evicts it.
pub struct Guarded<S> {
    inner: S,
    slot: Slot,
    idle: Duration,
    /// When a byte last moved either way. Moving only records the time; the timer is pushed
    /// back lazily when it fires, so the hot path never re-registers it per read or write.
    last_moved: Instant,
    deadline: Pin<Box<Sleep>>,
    evicted: Pin<Box<WaitForCancellationFutureOwned>>,
    closed: bool,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, slot: Slot) -> Self {
        let idle = slot.0.gate.limits.timeouts.idle;
        Self {
            inner,
            evicted: Box::pin(slot.evicted()),
            slot,
            idle,
            last_moved: Instant::now(),
            deadline: Box::pin(tokio::time::sleep(idle)),
            closed: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn slot(&self) -> &Slot {
        &self.slot
    }

    /// `Some(error)` if the connection must end now.
    fn check(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.closed {
            return Some(io::ErrorKind::TimedOut.into());
        }
        if self.evicted.as_mut().poll(cx).is_ready() {
            self.closed = true;
            return Some(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed to make room for another connection",
            ));
        }
        while self.deadline.as_mut().poll(cx).is_ready() {
            let due = self.last_moved + self.idle;
            if due > Instant::now() {
                // Bytes moved since the timer was set: wait out the rest from then.
                self.deadline.as_mut().reset(due);
                continue;
            }
            self.closed = true;
            metrics().refused(self.slot.listener(), Refusal::Idle);
            return Some(io::Error::new(io::ErrorKind::TimedOut, "idle too long"));
        }
        None
    }

    fn moved(&mut self) {
        self.last_moved = Instant::now();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.check(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
