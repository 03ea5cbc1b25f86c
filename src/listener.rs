//! The data-plane accept loop: HTTP/1.1 and HTTP/2 (prior knowledge) on one port, the
//! connection limit, header timeouts and sizes, and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::proxy::{self, ConnInfo, Shared};

/// A protocol builder for the limits of the current snapshot. Built per connection, so a
/// reload's new limits apply to new connections.
fn builder(shared: &Shared) -> auto::Builder<TokioExecutor> {
    let server = shared.snapshot.load().config.server.clone();
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

/// Resolves once `shutdown` turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Accepts until `shutdown` turns true, then waits for in-flight connections up to `grace`.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let max = shared.snapshot.load().config.server.max_connections;
    let limit = Arc::new(Semaphore::new(max));
    let graceful = GracefulShutdown::new();
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
        let _ = stream.set_nodelay(true);
        let info = Arc::new(ConnInfo { remote, tls: false });
        let shared_c = Arc::clone(&shared);
        let service =
            service_fn(move |req| proxy::handle(Arc::clone(&shared_c), Arc::clone(&info), req));
        let conn = builder(&shared)
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let grace = shared.snapshot.load().config.server.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "shutdown grace elapsed; closing remaining connections"
        );
    }
}
