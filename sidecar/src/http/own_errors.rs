//! JSON bodies for the answers hyper makes itself.
//!
//! hyper answers some malformed requests before any handler runs — a bad
//! request line or header (400), a header section larger than the read
//! buffer (431), a URI too long (414) — with an empty body, then closes
//! the connection. This wrapper around a connection's byte stream gives
//! those answers the API's JSON error body. Every answer the handlers make
//! carries an `x-request-id` header, so a response head without one can
//! only be hyper's own. The wrapper follows the outgoing stream response
//! by response using `content-length` (every handler answer has one, HEAD
//! answers included), so it only ever looks at response heads, never
//! inside bodies. (hyper offers no hook for these answers; reading request
//! heads ourselves would mean parsing HTTP twice.)

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub const REQUEST_ID: &str = "x-request-id";

pub struct OwnErrors<S> {
    inner: S,
    /// Bytes of the current response (head and body) still to pass.
    left: u64,
    /// A JSON answer replacing hyper's, and how much of it was written.
    replacement: Vec<u8>,
    sent: usize,
}

impl<S> OwnErrors<S> {
    pub fn new(inner: S) -> OwnErrors<S> {
        OwnErrors {
            inner,
            left: 0,
            replacement: Vec::new(),
            sent: 0,
        }
    }
}

/// A response head at the start of `b`: its length, status, whether a
/// handler made it, and its body length.
struct Head {
    len: usize,
    status: u16,
    ours: bool,
    body: u64,
}

fn head(b: &[u8]) -> Option<Head> {
    let end = b.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = std::str::from_utf8(&b[..end]).ok()?;
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let (mut ours, mut body) = (false, 0);
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let k = k.trim();
            if k.eq_ignore_ascii_case(REQUEST_ID) {
                ours = true;
            } else if k.eq_ignore_ascii_case("content-length") {
                body = v.trim().parse().ok()?;
            }
        }
    }
    Some(Head {
        len: end,
        status,
        ours,
        body,
    })
}

/// The JSON answer for one of hyper's own error statuses.
fn answer(status: u16) -> Vec<u8> {
    let (code, reason, message) = match status {
        431 => (
            "headers_too_large",
            "Request Header Fields Too Large",
            "the request's header section is too large",
        ),
        414 => (
            "uri_too_long",
            "URI Too Long",
            "the request's URI is too long",
        ),
        _ => (
            "bad_request",
            "Bad Request",
            "the request is not well-formed HTTP/1.1",
        ),
    };
    let body = serde_json::json!({"error": {"code": code, "message": message, "retryable": false}})
        .to_string();
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl<S: AsyncWrite + Unpin> OwnErrors<S> {
    /// Writes out a pending replacement answer.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.sent < self.replacement.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.replacement[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        Poll::Ready(Ok(()))
    }

    fn write(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.drain(cx))?;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        if self.left == 0 {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            match head(first) {
                Some(h) if !h.ours && h.status >= 400 => {
                    self.replacement = answer(h.status);
                    self.sent = 0;
                    // hyper's head counts as written; the replacement goes
                    // out now and on the flush that follows.
                    if let Poll::Ready(Err(e)) = self.drain(cx) {
                        return Poll::Ready(Err(e));
                    }
                    return Poll::Ready(Ok(h.len));
                }
                Some(h) => self.left = h.len as u64 + h.body,
                // Not a head we can read: pass this write through as is.
                None => self.left = total as u64,
            }
        }
        let mut room = self.left;
        let mut limited = Vec::with_capacity(bufs.len());
        for b in bufs {
            if room == 0 {
                break;
            }
            let take = (b.len() as u64).min(room) as usize;
            limited.push(IoSlice::new(&b[..take]));
            room -= take as u64;
        }
        let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &limited))?;
        self.left -= n as u64;
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for OwnErrors<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for OwnErrors<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().write(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().write(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        ready!(me.drain(cx))?;
        Pin::new(&mut me.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        ready!(me.drain(cx))?;
        Pin::new(&mut me.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_read_and_hypers_own_are_told_apart() {
        let ours = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\nx-request-id: 1\r\ncontent-length: 12\r\n\r\n{\"error\":{}}";
        let h = head(ours).unwrap();
        assert!(h.ours && h.status == 404 && h.body == 12);
        let hypers =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let h = head(hypers).unwrap();
        assert!(!h.ours && h.status == 431 && h.len == hypers.len());
        let a = String::from_utf8(answer(431)).unwrap();
        let (_, body) = a.split_once("\r\n\r\n").unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "headers_too_large");
        assert!(head(b"HTTP/1.1 200 OK\r\ncontent-len").is_none());
    }
}
