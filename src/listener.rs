//! The data-plane accept loop: HTTP/1.1 and HTTP/2 (prior knowledge) on one port, the
//! connection limit, header and idle timeouts, sizes, and graceful shutdown.
//!
//! A connection holds one of `max_connections` slots from accept until it closes, so every
//! wait a client controls is bounded here:
//! - until its first request head: `header_read_timeout` from accept, whatever stage it is in
//!   (TLS handshake, the first bytes that pick HTTP/1.1 or HTTP/2, the HTTP/2 handshake, a
//!   partial head). hyper's own HTTP/1.1 header timer only starts once the protocol is known.
//! - between requests: `idle_timeout` with no request in flight, on both protocols. Idle means
//!   no request, not no bytes: HTTP/2 PINGs (the client's or ours) do not keep a connection.
//!   hyper's HTTP/1.1 header timer also bounds the wait for each next head, so an HTTP/1.1
//!   keep-alive connection waits at most the shorter of the two.
//!
//! Either limit closes the connection gracefully (HTTP/2 GOAWAY, HTTP/1.1 close); one that
//! does not finish closing while nothing is in flight is dropped after [`LINGER`].
//!
//! Memory of an idle connection: hyper's HTTP/1.1 connection keeps an 8 KiB read buffer and an
//! 8 KiB write buffer for its whole life, idle or not. So hyper's connection is built only
//! once the client has sent its first bytes, and an HTTP/1.1 keep-alive connection with
//! nothing in flight for [`PARK_AFTER`] is *parked*: hyper's connection is ended without
//! closing the socket (its unread bytes kept), and a new one is built when the client sends
//! its next request. A parked connection holds its socket and its task only.

use std::convert::Infallible;
use std::fmt::Display;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use crate::error::Body;
use crate::proxy::{self, ConnInfo};
use crate::state::Shared;

/// How long a connection told to close may take to do so while nothing is in flight, before it
/// is dropped: a client that never acknowledges an HTTP/2 GOAWAY cannot keep its slot.
const LINGER: Duration = Duration::from_secs(1);

/// The watchdog's shortest period, whatever `idle_timeout` says.
const MIN_LOOK: Duration = Duration::from_millis(100);

/// How long an HTTP/1.1 keep-alive connection has nothing in flight before it is parked
/// (hyper's connection and its buffers released). Long against the gap between the requests of
/// a busy client, so that one pays nothing for it, and short enough that the buffers of
/// connections that made one request and went quiet are freed (and reused by the next ones)
/// before many more pile up: the process's footprint is set by how many hold buffers at once.
/// A connection is parked within twice this; a busy one costs a watchdog look this often.
const PARK_AFTER: Duration = Duration::from_millis(100);

/// What a client speaking HTTP/2 with prior knowledge sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A protocol builder for the limits of the current snapshot. Built per connection, so a
/// reload's new limits apply to new connections.
pub(crate) fn builder(server: &crate::config::ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // hyper answers a head that overflows its buffer with a bare 431; heads between
    // `max_header_bytes` and the buffer size get the JSON 431 from the pipeline.
    let buf = (server.max_header_bytes + 4096).max(8192);
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout)
        .max_buf_size(buf)
        .max_headers(1000)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(256);
    b
}

/// The HTTP/1.1 half of [`builder`], with the same settings, for connections known to speak
/// HTTP/1.1 (those that can be parked).
fn http1_builder(server: &crate::config::ServerConfig) -> http1::Builder {
    let mut b = http1::Builder::new();
    let buf = (server.max_header_bytes + 4096).max(8192);
    b.timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout)
        .max_buf_size(buf)
        .max_headers(1000)
        .keep_alive(true);
    b
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// The per-connection timeouts, read from the snapshot at accept.
#[derive(Clone, Copy)]
struct Limits {
    header_read: Duration,
    idle: Duration,
}

/// What one connection task needs besides its socket.
struct Conn {
    shared: Arc<Shared>,
    builder: auto::Builder<TokioExecutor>,
    http1: http1::Builder,
    limits: Limits,
    activity: Arc<Activity>,
    shutdown: watch::Receiver<bool>,
    /// Held until the task ends; the accept loop waits for every one to be dropped.
    _drain: watch::Receiver<()>,
}

/// Accepts until `shutdown` turns true, then waits for in-flight connections up to `grace`.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let max = shared.snapshot.load().config.server.max_connections;
    // TLS or not is decided when the listener starts; certificates follow each snapshot.
    let mut tls = shared.snapshot.load().tls.clone();
    let limit = Arc::new(Semaphore::new(max));
    let local = listener.local_addr().ok();
    // Every connection task holds a receiver; `closed()` resolves once all have ended.
    let (drain, _) = watch::channel(());
    loop {
        // Beyond `max_connections` new connections wait in the kernel's backlog.
        let permit = tokio::select! {
            p = Arc::clone(&limit).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = stopped(&mut shutdown) => break,
        };
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        let accepted = Instant::now();
        let _ = stream.set_nodelay(true);
        let snap = shared.snapshot.load();
        let server = &snap.config.server;
        let limits = Limits { header_read: server.header_read_timeout, idle: server.idle_timeout };
        let conn = Conn {
            shared: Arc::clone(&shared),
            builder: builder(server),
            http1: http1_builder(server),
            limits,
            activity: Arc::new(Activity::new(accepted)),
            shutdown: shutdown.clone(),
            _drain: drain.subscribe(),
        };
        if let Some(current) = &mut tls {
            if let Some(newest) = &snap.tls {
                if !Arc::ptr_eq(current, newest) {
                    *current = Arc::clone(newest);
                }
            }
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(current));
            tokio::spawn(async move {
                // The handshake counts against the time to the first request head.
                let deadline = accepted + limits.header_read;
                let stream = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
                serve_connection(conn, stream, ConnInfo::new(remote, true).with_local(local).with_slot(permit)).await;
            });
        } else {
            tokio::spawn(serve_connection(
                conn,
                stream,
                ConnInfo::new(remote, false).with_local(local).with_slot(permit),
            ));
        }
    }
    drop(listener);
    let grace = shared.snapshot.load().config.server.shutdown_grace;
    if tokio::time::timeout(grace, drain.closed()).await.is_err() {
        tracing::warn!(?grace, "shutdown grace elapsed; closing remaining connections");
    }
}

/// Serves one connection until it closes, the watchdog closes it, or the server shuts down.
async fn serve_connection<IO>(conn: Conn, mut io: IO, info: ConnInfo)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Conn { shared, builder, http1, limits, activity, mut shutdown, _drain } = conn;
    let info = Arc::new(info);
    let metrics = Arc::clone(&shared.metrics);
    let service = {
        let activity = Arc::clone(&activity);
        service_fn(move |mut req: Request<Incoming>| {
            let in_flight = activity.begin();
            // A tunnel outlives the connection's task: it holds the connection's slot itself.
            if req.headers().contains_key(header::UPGRADE) {
                req.extensions_mut().insert(Arc::clone(&info));
            }
            let handled = proxy::handle(Arc::clone(&shared), Arc::clone(&info), req);
            // Boxed: hyper keeps a slot of the future's size (about 7 KiB, the whole request
            // path) for every connection, idle or not; boxed, the slot is a pointer.
            Box::pin(async move {
                let resp = handled.await?;
                // In flight until the response body is sent (or dropped), not just its head.
                Ok::<_, Infallible>(resp.map(|body| Tracked::new(body, in_flight, limits.idle)))
            })
        })
    };
    // hyper's head timer bounded the wait for each next HTTP/1.1 head from the end of the
    // previous response; a parked connection has no hyper connection, so the watchdog does.
    let h1_limits = Limits { header_read: limits.header_read, idle: limits.idle.min(limits.header_read) };
    // No hyper state until the client has sent something.
    let Some(mut ahead) = read_ahead(&mut io, &activity, limits, &mut shutdown).await else {
        return;
    };
    if H2_PREFACE.starts_with(&ahead) {
        // HTTP/2 (or not yet told apart): hyper's auto-detecting connection, never parked.
        let io = Parkable::new(io, ahead, Arc::clone(&activity));
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(conn);
        let why = tokio::select! {
            r = conn.as_mut() => return log_end(r),
            wake = watchdog(&activity, limits, None) => wake.reason(),
            () = stopped(&mut shutdown) => "server shutting down",
        };
        tracing::debug!(reason = why, "closing connection");
        conn.as_mut().graceful_shutdown();
        tokio::select! {
            r = conn.as_mut() => log_end(r),
            () = linger(&activity) => tracing::debug!("connection not closed after graceful shutdown; dropped"),
        }
        return;
    }
    loop {
        let built = Instant::now();
        let parkable = Parkable::new(io, ahead, Arc::clone(&activity));
        let mut conn = http1.serve_connection(TokioIo::new(parkable), service.clone()).with_upgrades();
        let why = tokio::select! {
            r = &mut conn => return log_end(r),
            wake = watchdog(&activity, h1_limits, Some(built)) => wake,
            () = stopped(&mut shutdown) => Wake::Close("server shutting down"),
        };
        let Wake::Park = why else {
            tracing::debug!(reason = why.reason(), "closing connection");
            Pin::new(&mut conn).graceful_shutdown();
            tokio::select! {
                r = &mut conn => log_end(r),
                () = linger(&activity) => tracing::debug!("connection not closed after graceful shutdown; dropped"),
            }
            return;
        };
        // Nothing in flight and every response byte written: end hyper's connection without
        // closing the socket (an idle connection closes at once on a graceful shutdown; the
        // flag keeps its shutdown from reaching the socket) and take back what it had read.
        activity.parking.store(true, Ordering::Relaxed);
        Pin::new(&mut conn).graceful_shutdown();
        let ended = tokio::select! {
            r = &mut conn => r,
            () = linger(&activity) => return tracing::debug!("connection not parked after graceful shutdown; dropped"),
        };
        activity.parking.store(false, Ordering::Relaxed);
        if let Err(e) = ended {
            return log_end(Err::<(), _>(e));
        }
        // `None`: upgraded after all (the tunnel has the socket).
        let Some(parts) = conn.into_parts() else { return };
        let (socket, rest) = parts.io.into_inner().into_parts();
        io = socket;
        // Copied: `read_buf` shares hyper's whole read buffer, even when empty, which parking is
        // there to release.
        ahead = if parts.read_buf.is_empty() && rest.is_empty() {
            Bytes::new()
        } else {
            [parts.read_buf.as_ref(), rest.as_ref()].concat().into()
        };
        drop(parts.read_buf);
        if ahead.is_empty() {
            tracing::trace!("connection parked");
            metrics.connections_parked.inc();
            let next = read_ahead(&mut io, &activity, h1_limits, &mut shutdown).await;
            metrics.connections_parked.dec();
            match next {
                Some(bytes) => ahead = bytes,
                None => return,
            }
        }
    }
}

/// Waits, holding nothing but the socket, for the client's next bytes (at most a few: hyper
/// reads the rest itself). `None` when the client closed, the watchdog closes the connection
/// (`header_read` from accept before the first request, `idle` once idle) or the server shuts
/// down: the socket is then just dropped, as hyper does with an idle HTTP/1.1 connection.
async fn read_ahead<IO: AsyncRead + Unpin>(
    io: &mut IO,
    activity: &Activity,
    limits: Limits,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Bytes> {
    let mut first = [0u8; H2_PREFACE.len()];
    let read = tokio::select! {
        r = io.read(&mut first) => r,
        wake = watchdog(activity, limits, None) => {
            tracing::debug!(reason = wake.reason(), "closing connection");
            return None;
        }
        () = stopped(shutdown) => return None,
    };
    match read {
        Ok(0) => None,
        Ok(n) => Some(Bytes::copy_from_slice(&first[..n])),
        Err(e) => {
            tracing::debug!(error = %e, "connection ended with an error");
            None
        }
    }
}

/// The client's socket as hyper sees it: the bytes already read from it come first, and while
/// the connection is being parked, hyper's shutdown of it is not passed on. Also notes whether
/// the last write waited for the client, so that a connection with response bytes still in
/// hyper's buffer is not parked.
struct Parkable<IO> {
    io: IO,
    ahead: Bytes,
    activity: Arc<Activity>,
}

impl<IO> Parkable<IO> {
    fn new(io: IO, ahead: Bytes, activity: Arc<Activity>) -> Parkable<IO> {
        Parkable { io, ahead, activity }
    }

    /// The socket and the bytes read ahead that hyper did not take.
    fn into_parts(self) -> (IO, Bytes) {
        (self.io, self.ahead)
    }

    fn note_write<T>(&self, polled: Poll<T>) -> Poll<T> {
        self.activity.write_blocked.store(polled.is_pending(), Ordering::Relaxed);
        polled
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Parkable<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.ahead.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.ahead.len().min(buf.remaining());
        buf.put_slice(&self.ahead.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Parkable<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note_write(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.note_write(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.note_write(polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.activity.parking.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

fn log_end<E: Display>(r: Result<(), E>) {
    if let Err(e) = r {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// What the watchdog asks for.
#[derive(Clone, Copy)]
enum Wake {
    /// Close the connection, for this reason.
    Close(&'static str),
    /// Park it (HTTP/1.1 only): idle for [`PARK_AFTER`] with every response byte written.
    Park,
}

impl Wake {
    fn reason(self) -> &'static str {
        match self {
            Wake::Close(why) => why,
            Wake::Park => "parking",
        }
    }
}

/// Resolves when the connection is to be closed, with the reason: no complete request head
/// within `header_read` of accept, or no request in flight for `idle`; or, given `park` (the
/// instant hyper's HTTP/1.1 connection was built), when it is to be parked: idle for
/// [`PARK_AFTER`] after a request that ended on that connection, every response byte written.
///
/// The service does not wake the watchdog (that would cost every request a notification);
/// the watchdog looks again at least every `idle` (and every [`PARK_AFTER`] when it may park)
/// instead, and a deadline counts from the instant the state began, so a close is never late
/// by more than scheduling.
async fn watchdog(activity: &Activity, limits: Limits, park: Option<Instant>) -> Wake {
    let mut every = limits.idle.max(MIN_LOOK);
    if park.is_some() {
        every = every.min(PARK_AFTER);
    }
    loop {
        let now = Instant::now();
        let (deadline, wake) = match activity.state() {
            State::Busy => (now + every, Wake::Close("")),
            State::New => {
                (activity.accepted + limits.header_read, Wake::Close("no request head within header_read_timeout"))
            }
            State::IdleSince(t) => {
                let close = t + limits.idle;
                match park {
                    // Only once a request has ended on this hyper connection: hyper then ends
                    // it at once on a graceful shutdown, handing back any bytes of a next head
                    // it had read. Before that (it was built because bytes came, and the head
                    // is not complete yet) it would finish the request first; its head timer
                    // bounds that wait, as it always did.
                    Some(built) if t >= built && t + PARK_AFTER < close => {
                        if activity.write_blocked.load(Ordering::Relaxed) {
                            (now + every, Wake::Close(""))
                        } else {
                            (t + PARK_AFTER, Wake::Park)
                        }
                    }
                    _ => (close, Wake::Close("idle_timeout")),
                }
            }
        };
        if deadline <= now {
            return wake;
        }
        tokio::time::sleep_until(deadline.min(now + every)).await;
    }
}

/// After a graceful shutdown: resolves once nothing is in flight, at least [`LINGER`] later.
async fn linger(activity: &Activity) {
    loop {
        tokio::time::sleep(LINGER).await;
        if !matches!(activity.state(), State::Busy) {
            return;
        }
    }
}

/// Requests in flight on one connection and when it last had none, shared by the connection's
/// service and its watchdog. Atomics only: a request costs two read-modify-writes.
struct Activity {
    accepted: Instant,
    in_flight: AtomicUsize,
    /// Set while hyper's HTTP/1.1 connection is being ended to park the socket.
    parking: AtomicBool,
    /// The last write to the socket waited for the client (response bytes may be unsent).
    write_blocked: AtomicBool,
    /// When the last request ended, in microseconds since `accepted`, plus one; 0 before the
    /// first request.
    idle_since: AtomicU64,
}

enum State {
    /// No request yet.
    New,
    Busy,
    IdleSince(Instant),
}

impl Activity {
    fn new(accepted: Instant) -> Activity {
        Activity {
            accepted,
            in_flight: AtomicUsize::new(0),
            parking: AtomicBool::new(false),
            write_blocked: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }

    fn state(&self) -> State {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return State::Busy;
        }
        match self.idle_since.load(Ordering::Relaxed) {
            0 => State::New,
            t => State::IdleSince(self.accepted + Duration::from_micros(t - 1)),
        }
    }
}

/// One request in flight, until its response body is sent or dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let micros = u64::try_from(a.accepted.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
        // Recorded before the count drops, so the watchdog never sees idle without a time.
        a.idle_since.fetch_max(micros + 1, Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// A response body that keeps its request counted as in flight, and that gives up when its
/// source (the upstream) sends nothing for `idle_timeout` while the gateway waits for it: the
/// head is already out, so the only honest end is an aborted body (HTTP/1.1: the connection
/// closes before the promised length or the last chunk; HTTP/2: the stream is reset). Time
/// spent waiting for the client to take bytes does not count: the body is not polled then.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
    idle: Duration,
    /// Armed on the first wait for a frame, re-armed after every frame.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    progressed: bool,
}

impl Tracked {
    fn new(body: Body, in_flight: InFlight, idle: Duration) -> Tracked {
        Tracked { body, _in_flight: in_flight, idle, stall: None, progressed: false }
    }
}

/// The error that aborts a response body stalled for `idle_timeout`.
#[derive(Debug)]
struct BodyStalled(Duration);

impl Display for BodyStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no response body bytes from the upstream for {:?} (idle_timeout)", self.0)
    }
}

impl std::error::Error for BodyStalled {}

impl HttpBody for Tracked {
    type Data = <Body as HttpBody>::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            this.progressed = true;
            return Poll::Ready(frame);
        }
        match &mut this.stall {
            None => this.stall = Some(Box::pin(tokio::time::sleep(this.idle))),
            Some(stall) if this.progressed => stall.as_mut().reset(Instant::now() + this.idle),
            Some(_) => {}
        }
        this.progressed = false;
        match this.stall.as_mut().map(|s| s.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => {
                tracing::warn!(idle_timeout = ?this.idle, "response body stalled upstream; aborting it");
                Poll::Ready(Some(Err(Box::new(BodyStalled(this.idle)))))
            }
            _ => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
