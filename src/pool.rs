//! Keep-alive connections to one plain-HTTP upstream, on hyper's HTTP/1.1 client connections.
//!
//! This is the hot path of every forwarded request, so it does only what it must: take the
//! most recently used idle connection (LIFO keeps the fewest connections warm), send, and put
//! the connection back when the response body has been read to its end. A connection is never
//! shared by two requests at once. Idle connections beyond [`MAX_IDLE`] are closed, and a
//! sweeper closes those idle longer than the idle timeout, like NGINX's upstream `keepalive`.
//!
//! An upstream may close an idle connection just as a request is written on it (Node's
//! `keepAliveTimeout` is 5 s). A request that can be sent again safely, an idempotent method
//! without a body, is then sent once more on a new connection, like NGINX's
//! `proxy_next_upstream`; any other request gets the error.
//!
//! HTTPS upstreams (TLS, ALPN, HTTP/2) go through hyper-util's pooled client instead.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Idle keep-alive connections kept per upstream.
pub const MAX_IDLE: usize = 128;
/// An idle connection is closed after this long unused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Why a request got no response from the upstream.
#[derive(Debug)]
pub enum SendError {
    Connect(std::io::Error),
    ConnectTimeout,
    Http(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "connect: {e}"),
            SendError::ConnectTimeout => f.write_str("connect: timed out"),
            SendError::Http(e) => write!(f, "{e}"),
        }
    }
}

/// A request body as the pool sends it: the client's, or none (a request sent again).
pub enum ReqBody {
    Client(Incoming),
    Empty,
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Client(b) => Pin::new(b).poll_frame(cx),
            ReqBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Client(b) => b.is_end_stream(),
            ReqBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Client(b) => b.size_hint(),
            ReqBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// What it takes to send a request again: everything but its body, which it does not have.
struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Replay {
    /// `Some` for a request that may be sent twice (RFC 9110 §9.2.2): an idempotent method and
    /// no body. A streamed body cannot be sent again, and a POST or PATCH must not be.
    fn of(req: &Request<ReqBody>) -> Option<Replay> {
        let idempotent = matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
        );
        (idempotent && req.body().is_end_stream()).then(|| Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        })
    }

    fn into_request(self) -> Request<ReqBody> {
        let mut req = Request::new(ReqBody::Empty);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        req
    }
}

/// True for an error that says the connection went away under the request (closed, reset, or
/// ended before a whole response head), rather than that the upstream answered garbage.
fn connection_lost(e: &hyper::Error) -> bool {
    !(e.is_parse() || e.is_parse_status() || e.is_parse_too_large() || e.is_user() || e.is_timeout())
}

struct Idle {
    sender: SendRequest<ReqBody>,
    since: Instant,
}

pub struct H1Pool {
    /// `host:port`, as `TcpStream::connect` takes it.
    addr: String,
    /// The `Host` header every request gets: the upstream's host, and its port unless 80.
    host: HeaderValue,
    connect_timeout: Duration,
    /// Oldest at the front; checkout and return at the back.
    idle: Mutex<VecDeque<Idle>>,
    sweeping: AtomicBool,
}

impl H1Pool {
    pub fn new(authority: &http::uri::Authority, connect_timeout: Duration) -> Result<H1Pool, String> {
        let port = authority.port_u16().unwrap_or(80);
        // As HTTP clients write it: no user info, no default port.
        let host = match port {
            80 => authority.host().to_owned(),
            _ => format!("{}:{port}", authority.host()),
        };
        let host = HeaderValue::from_str(&host).map_err(|e| format!("{authority}: {e}"))?;
        Ok(H1Pool {
            addr: format!("{}:{port}", authority.host()),
            host,
            connect_timeout,
            idle: Mutex::new(VecDeque::new()),
            sweeping: AtomicBool::new(false),
        })
    }

    /// Sends `req` (origin-form URI) on an idle connection, or on a new one when none is
    /// left. A request that a reused connection could not take (it closed in the meantime)
    /// goes to the next one. A request that was sent on a reused connection which then broke
    /// before a response head arrived is sent once more, on a new connection, when that is
    /// safe (see [`Replay::of`]); any other request that was sent is never sent twice.
    pub async fn send(self: &Arc<Self>, req: Request<Incoming>) -> Result<Response<UpstreamBody>, SendError> {
        let mut req = req.map(ReqBody::Client);
        req.headers_mut().insert(header::HOST, self.host.clone());
        while let Some(mut sender) = self.checkout() {
            // The copy costs a header map clone; only a reused connection needs it, and only
            // for a request that may be sent again.
            let replay = Replay::of(&req);
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap(resp, sender)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => {
                        let e = e.into_error();
                        match replay {
                            Some(replay) if connection_lost(&e) => {
                                tracing::debug!(upstream = %self.addr, error = %e, "reused upstream connection lost; sending the request again on a new one");
                                req = replay.into_request();
                                break;
                            }
                            _ => return Err(SendError::Http(e)),
                        }
                    }
                },
            }
        }
        // Boxed: connecting is the rare path, and its future would size every request's.
        let mut sender = Box::pin(self.connect()).await?;
        let resp = sender.send_request(req).await.map_err(SendError::Http)?;
        Ok(self.wrap(resp, sender))
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        // The queue stays consistent whatever panicked while holding it.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently returned connection that can take a request now. One whose last
    /// exchange is not over (the upstream answered before the request body was all sent, and
    /// the client has not sent the rest) stays where it is until it is ready, closes, or the
    /// sweeper retires it; waiting for it could take as long as that client likes.
    fn checkout(&self) -> Option<SendRequest<ReqBody>> {
        let mut idle = self.idle();
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            if idle[i].sender.is_closed() {
                idle.remove(i);
            } else if idle[i].sender.is_ready() {
                return idle.remove(i).map(|entry| entry.sender);
            }
        }
        None
    }

    fn put_back(&self, sender: SendRequest<ReqBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE {
            idle.push_back(Idle { sender, since: Instant::now() });
        }
    }

    fn sweep(&self) {
        let now = Instant::now();
        self.idle().retain(|i| !i.sender.is_closed() && now.duration_since(i.since) < IDLE_TIMEOUT);
    }

    async fn connect(self: &Arc<Self>) -> Result<SendRequest<ReqBody>, SendError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr.as_str()))
            .await
            .map_err(|_| SendError::ConnectTimeout)?
            .map_err(SendError::Connect)?;
        stream.set_nodelay(true).map_err(SendError::Connect)?;
        let (sender, conn) = http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(SendError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        self.start_sweeper();
        Ok(sender)
    }

    /// One sweeper per pool, started with its first connection; it ends with the pool.
    fn start_sweeper(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool: Weak<H1Pool> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match pool.upgrade() {
                    Some(pool) => pool.sweep(),
                    None => break,
                }
            }
        });
    }

    fn wrap(self: &Arc<Self>, resp: Response<Incoming>, sender: SendRequest<ReqBody>) -> Response<UpstreamBody> {
        // After a 101 the connection belongs to the upgraded stream.
        let pooled = (resp.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| (sender, Arc::clone(self)));
        resp.map(|inner| UpstreamBody { inner, pooled })
    }

    #[cfg(test)]
    fn idle_len(&self) -> usize {
        self.idle().len()
    }
}

/// An upstream response body. When it came from an [`H1Pool`] connection, the connection goes
/// back to the pool once the body has been read to its end; a body dropped before its end
/// takes its connection with it (hyper closes it).
pub struct UpstreamBody {
    inner: Incoming,
    pooled: Option<(SendRequest<ReqBody>, Arc<H1Pool>)>,
}

impl UpstreamBody {
    /// A body not tied to a pooled connection (hyper-util's client keeps its own pool).
    pub fn unpooled(inner: Incoming) -> UpstreamBody {
        UpstreamBody { inner, pooled: None }
    }

    fn release(&mut self) {
        if let Some((sender, pool)) = self.pooled.take() {
            pool.put_back(sender);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Err(_))) => self.pooled = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // hyper stops polling a body whose length says it is complete, so the end is seen
        // here more often than in `poll_frame`.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A one-connection-at-a-time upstream answering every request on a connection with a
    /// small body; it counts the connections it accepted.
    async fn upstream(accepted: Arc<std::sync::atomic::AtomicUsize>) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    loop {
                        let Ok(n) = s.read(&mut buf).await else { return };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if s.write_all(resp).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    async fn get(pool: &Arc<H1Pool>) -> Response<UpstreamBody> {
        get_with(pool, b"GET /x HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n").await
    }

    /// Sends `raw` to a real server connection and forwards the request it parses through
    /// `pool`. The client side stays open (leaked) so a body it leaves unfinished stays so.
    async fn get_with(pool: &Arc<H1Pool>, raw: &[u8]) -> Response<UpstreamBody> {
        // `Incoming` cannot be built by hand: take one from a real server connection.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tx = std::sync::Mutex::new(Some(tx));
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                if let Some(tx) = tx.lock().unwrap().take() {
                    let _ = tx.send(req);
                }
                async { Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Empty::<Bytes>::new())) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
        });
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(raw).await.unwrap();
        std::mem::forget(c);
        let req = rx.await.unwrap();
        let (mut parts, body) = req.into_parts();
        parts.uri = "/x".parse().unwrap();
        pool.send(Request::from_parts(parts, body)).await.unwrap()
    }

    async fn read_to_end(resp: Response<UpstreamBody>) -> Bytes {
        use http_body_util::BodyExt;
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_connection_is_reused_only_after_its_body_ended() {
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let addr = upstream(Arc::clone(&accepted)).await;
        let authority: http::uri::Authority = addr.to_string().parse().unwrap();
        let pool = Arc::new(H1Pool::new(&authority, Duration::from_secs(1)).unwrap());

        // Two responses held unread at once need two connections.
        let (a, b) = (get(&pool).await, get(&pool).await);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(pool.idle_len(), 0);
        assert_eq!(read_to_end(a).await, "ok");
        assert_eq!(read_to_end(b).await, "ok");
        assert_eq!(pool.idle_len(), 2);

        // Read one at a time, twenty requests share those two connections.
        for _ in 0..20 {
            assert_eq!(read_to_end(get(&pool).await).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        // A body dropped unread takes its connection with it.
        drop(get(&pool).await);
        assert_eq!(pool.idle_len(), 1);
    }

    #[test]
    fn host_header_and_connect_address() {
        for (authority, host, addr) in [
            ("example.internal", "example.internal", "example.internal:80"),
            ("example.internal:80", "example.internal", "example.internal:80"),
            ("user@example.internal:8080", "example.internal:8080", "example.internal:8080"),
            ("[::1]:3000", "[::1]:3000", "[::1]:3000"),
        ] {
            let pool = H1Pool::new(&authority.parse().unwrap(), Duration::from_secs(1)).unwrap();
            assert_eq!((pool.host.to_str().unwrap(), pool.addr.as_str()), (host, addr), "{authority}");
        }
    }

    #[tokio::test]
    async fn a_connection_still_sending_a_request_body_is_not_handed_out() {
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let addr = upstream(Arc::clone(&accepted)).await;
        let authority: http::uri::Authority = addr.to_string().parse().unwrap();
        let pool = Arc::new(H1Pool::new(&authority, Duration::from_secs(1)).unwrap());
        // The upstream answers before the request body is complete (as with a 413), and the
        // client never sends the rest: that connection cannot take another request.
        let early = get_with(&pool, b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\npartial").await;
        assert_eq!(read_to_end(early).await, "ok");
        let next = tokio::time::timeout(Duration::from_secs(5), get(&pool)).await.expect("next request waited");
        assert_eq!(read_to_end(next).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
