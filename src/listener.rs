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

use crate::config::TlsConfig;
use crate::proxy::{self, ConnInfo, Shared};

/// Builds the rustls server config from PEM files: TLS 1.2 and 1.3 with rustls' modern cipher
/// suites (aws-lc-rs), ALPN h2 then http/1.1.
pub fn tls_config(t: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("tls cert {}: {e}", t.cert.display()))?;
    if certs.is_empty() {
        return Err(format!("tls cert {}: no certificate in the file", t.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&t.key).map_err(|e| format!("tls key {}: {e}", t.key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls {} / {}: {e}", t.cert.display(), t.key.display()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

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
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Accepts until `shutdown` turns true, then waits for in-flight connections up to `grace`.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let max = shared.snapshot.load().config.server.max_connections;
    // TLS or not is decided when the listener starts; certificates follow each snapshot.
    let mut tls = shared.snapshot.load().tls.clone();
    let limit = Arc::new(Semaphore::new(max));
    let local = listener.local_addr().ok();
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
        let shared_c = Arc::clone(&shared);
        let builder = builder(&shared);
        // The services below box each request's future: hyper keeps a slot of the future's
        // size (about 2.4 KiB) for every connection, idle or not; boxed, the slot is a pointer.
        if let Some(current) = &mut tls {
            if let Some(newest) = &shared.snapshot.load().tls {
                if !Arc::ptr_eq(current, newest) {
                    *current = Arc::clone(newest);
                }
            }
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(current));
            let handshake_timeout = shared.snapshot.load().config.server.header_read_timeout;
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
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
                let info = Arc::new(ConnInfo::new(remote, true).with_local(local));
                let service =
                    service_fn(move |req| Box::pin(proxy::handle(Arc::clone(&shared_c), Arc::clone(&info), req)));
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                if let Err(e) = watcher.watch(conn.into_owned()).await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                drop(permit);
            });
        } else {
            let info = Arc::new(ConnInfo::new(remote, false).with_local(local));
            let service = service_fn(move |req| Box::pin(proxy::handle(Arc::clone(&shared_c), Arc::clone(&info), req)));
            let conn =
                graceful.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned());
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                drop(permit);
            });
        }
    }
    drop(listener);
    let grace = shared.snapshot.load().config.server.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(?grace, "shutdown grace elapsed; closing remaining connections");
    }
}
