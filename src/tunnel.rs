//! The byte relay behind a WebSocket upgrade: both directions copied until either side closes,
//! or until no byte has moved either way for the idle timeout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Relays bytes between the two upgraded connections. Ends when either side closes or fails,
/// or after `idle` with no byte read from either side; both connections are closed then.
pub async fn relay(client: Upgraded, upstream: Upgraded, idle: Duration) {
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let mut client = Touch { io: TokioIo::new(client), start, last: &last };
    let mut upstream = Touch { io: TokioIo::new(upstream), start, last: &last };
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "upgraded connection ended");
            }
        }
        () = idle_for(start, &last, idle) => tracing::debug!(?idle, "upgraded connection idle; closed"),
    }
}

/// Resolves once nothing was read for `idle` since the last read that `last` recorded.
async fn idle_for(start: Instant, last: &AtomicU64, idle: Duration) {
    loop {
        let deadline = start + Duration::from_micros(last.load(Ordering::Relaxed)) + idle;
        if deadline <= Instant::now() {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// An I/O that records when it last read a byte (microseconds since `start`), which is what
/// the idle check looks at. Writes need no record: every byte written was read on the other
/// side first.
struct Touch<'a, T> {
    io: T,
    start: Instant,
    last: &'a AtomicU64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Touch<'_, T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let micros = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.last.fetch_max(micros, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Touch<'_, T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
