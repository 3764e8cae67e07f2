//! Answers being written: their bytes and the caller's slot stay held
//! until the last byte has gone to the connection, and a connection that
//! takes no bytes for the write timeout is closed. So a client that asks
//! for large answers and never reads them holds the caller's call limit
//! and the witness's memory bounds (docs/witness.md, "Limits") only until
//! the write timeout, never for as long as it likes. Nor can one that
//! reads a little, regularly: each answer must be written within the
//! write timeout plus its length at the minimum write rate
//! (`--min-write-bytes-per-sec`), or the connection is closed and what
//! the answer held released.

use crate::admit::{BodyBytes, CallerSlot};
use hyper::body::{Body, Bytes, Frame, SizeHint};
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// When the answer being written on a connection must be done by: set
/// by its body, enforced by the connection's `WriteTimeout`.
#[derive(Clone, Default)]
pub struct Deadline(Arc<Mutex<Option<Instant>>>);

impl Deadline {
    fn set(&self, when: Option<Instant>) {
        if let Ok(mut d) = self.0.lock() {
            *d = when;
        }
    }

    fn get(&self) -> Option<Instant> {
        self.0.lock().ok().and_then(|d| *d)
    }
}

/// Bytes handed to hyper per frame: hyper buffers a few frames at most,
/// so what it holds beyond this body's account stays small.
const FRAME: usize = 64 * 1024;

/// What an answer holds while it is written.
#[derive(Default)]
pub struct Hold {
    pub _slot: Option<CallerSlot>,
    pub bytes: Option<BodyBytes>,
}

/// An answer's body, released frame by frame; `Hold` goes when the last
/// frame has been taken (or the connection ends).
pub struct HeldBody {
    rest: Bytes,
    hold: Option<Hold>,
    deadline: Option<Deadline>,
}

impl HeldBody {
    /// `body`, to be written on the connection whose `deadline` this is
    /// within `timeout` plus its length at `min_rate` bytes per second.
    pub fn new(
        body: Bytes,
        hold: Hold,
        deadline: &Deadline,
        timeout: Duration,
        min_rate: u64,
    ) -> HeldBody {
        let secs = body.len() as f64 / min_rate.max(1) as f64;
        let allowed = timeout.saturating_add(Duration::from_secs_f64(secs.min(1e9)));
        deadline.set(Instant::now().checked_add(allowed));
        HeldBody {
            rest: body,
            hold: Some(hold),
            deadline: Some(deadline.clone()),
        }
    }

    pub fn empty() -> HeldBody {
        HeldBody {
            rest: Bytes::new(),
            hold: None,
            deadline: None,
        }
    }
}

impl Drop for HeldBody {
    fn drop(&mut self) {
        if let Some(d) = self.deadline.take() {
            d.set(None);
        }
    }
}

impl Body for HeldBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.rest.is_empty() {
            self.hold = None;
            if let Some(d) = self.deadline.take() {
                d.set(None);
            }
            return Poll::Ready(None);
        }
        let n = self.rest.len().min(FRAME);
        let chunk = self.rest.split_to(n);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

/// A connection's byte stream whose writes fail with `TimedOut` once
/// the peer has taken no bytes for `timeout`, or the answer being
/// written is past its deadline (hyper then closes it).
pub struct WriteTimeout<S> {
    inner: S,
    timeout: Duration,
    deadline: Deadline,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteTimeout<S> {
    pub fn new(inner: S, timeout: Duration, deadline: Deadline) -> WriteTimeout<S> {
        WriteTimeout {
            inner,
            timeout,
            deadline,
            stalled: None,
        }
    }

    /// Before a write: an answer past its deadline is cut, however much
    /// its reader has been taking.
    fn late(&self) -> Option<io::Error> {
        let d = self.deadline.get()?;
        (Instant::now() >= d).then(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took the answer slower than the minimum write rate",
            )
        })
    }

    /// After a write returned `r`: progress resets the clock; waiting
    /// starts it, and past the timeout the write fails.
    fn after<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => {
                let timeout = self.timeout;
                let deadline = self.deadline.get();
                let sleep = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if let Some(d) = deadline {
                    if d < sleep.deadline() {
                        sleep.as_mut().reset(d);
                    }
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client took no bytes of the answer for the write timeout",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

use std::future::Future;

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.late() {
            return Poll::Ready(Err(e));
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.after(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.late() {
            return Poll::Ready(Err(e));
        }
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.after(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.after(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
