//! The admin listener: `/metrics`, `/healthz`, `/readyz`. Plain HTTP/1.1, meant for
//! a loopback or pod-internal address.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::error::{json_response, Body, Reject};
use crate::state::Shared;

fn answer(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    let json = HeaderValue::from_static("application/json");
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Reject::MethodNotAllowed { allow: HeaderValue::from_static("GET, HEAD") }.into_response();
    }
    match req.uri().path() {
        "/healthz" => json_response(StatusCode::OK, &json, Bytes::from_static(br#"{"status":"ok"}"#)),
        "/readyz" => {
            if shared.ready() {
                json_response(StatusCode::OK, &json, Bytes::from_static(br#"{"status":"ready"}"#))
            } else {
                let why: &[u8] = if shared.is_draining() {
                    br#"{"status":"draining"}"#
                } else {
                    br#"{"status":"waiting for keys"}"#
                };
                json_response(StatusCode::SERVICE_UNAVAILABLE, &json, Bytes::from_static(why))
            }
        }
        "/metrics" => json_response(
            StatusCode::OK,
            &HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            Bytes::from(shared.metrics.render()),
        ),
        _ => Reject::NotFound.into_response(),
    }
}

/// Serves the admin endpoints until `shutdown` turns true.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = crate::listener::stopped(&mut shutdown) => break,
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let resp = answer(&shared, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            let _ = conn.await;
        });
    }
}
