//! A large request and a large response stream through the gateway without being buffered:
//! the test watches this process's resident memory (VmRSS), so it runs in a test binary of its
//! own; in the shared integration binary (tests/it) other tests would allocate meanwhile.

#[path = "it/common/mod.rs"]
mod common;
use common::*;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;

const MIB: u64 = 1024 * 1024;

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Samples VmRSS on a plain thread until stopped; returns the peak seen.
struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start() -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = vm_rss_kib();
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(vm_rss_kib());
                std::thread::sleep(Duration::from_millis(5));
            }
            peak.max(vm_rss_kib())
        });
        RssSampler { stop, handle }
    }
    fn peak_kib(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("sampler thread")
    }
}

type ClientBody = BoxBody<Bytes, Infallible>;

/// `total` bytes in 64 KiB chunks, produced lazily from one shared buffer.
fn generated_body(total: u64) -> ClientBody {
    const CHUNK: u64 = 64 * 1024;
    let chunk = Bytes::from(vec![b'y'; CHUNK as usize]);
    let n = total.div_ceil(CHUNK);
    let frames = (0..n).map(move |i| {
        let len = if i + 1 == n { total - i * CHUNK } else { CHUNK };
        Ok::<_, Infallible>(Frame::data(chunk.slice(0..len as usize)))
    });
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_without_buffering() {
    bounded(240, "test", async {
        let key = TestKey::generate(Algorithm::RS256, "fwd-k8");
        let jwks = JwksServer::start(vec![key.jwk()]).await;
        let books = Upstream::start("books").await;
        let route =
            |path: &str, method: &str| route_toml(path, &[method], &[&scopes(&["API/book.get"]), &forward_to("books")]);
        let toml = server_toml(r#"request_timeout = "200s""#)
            + &issuer_toml(ISS, &jwks_uri(&jwks.url), &["RS256"], "")
            + &upstream_toml("books", &books.url)
            + &route("/upload", "POST")
            + &route("/big", "GET");
        let gw = Gateway::start(&toml).await;
        let auth = format!("Bearer {}", key.sign(&claims(ISS, "client-1", "API/book.get API/book.post")));
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<ClientBody>();

        // Warm up: one small request so connection pools and lazy statics exist before measuring.
        let req = hyper::Request::post(format!("{}/upload", gw.url))
            .header("authorization", &auth)
            .body(generated_body(1024))
            .unwrap();
        let resp = client.request(req).await.expect("warm-up request");
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
        wait_count(&books, 1).await;
        assert_eq!(books.last().unwrap().body_len, 1024);

        // 64 MiB upload, chunked, generated on the fly.
        let upload = 64 * MIB;
        let before = vm_rss_kib();
        let sampler = RssSampler::start();
        let req = hyper::Request::post(format!("{}/upload", gw.url))
            .header("authorization", &auth)
            .body(generated_body(upload))
            .unwrap();
        let resp = client.request(req).await.expect("upload request");
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
        let peak = sampler.peak_kib();
        wait_count(&books, 2).await;
        let r = books.last().unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.target, "/upload");
        assert_eq!(r.body_len, upload, "upstream got {} bytes", r.body_len);
        let growth = peak.saturating_sub(before) * 1024;
        eprintln!("64 MiB upload: RSS {before} KiB -> peak {peak} KiB");
        assert!(growth < 32 * MIB, "RSS grew by {} MiB while streaming a 64 MiB request body", growth / MIB);

        // 256 MiB download, counted and dropped chunk by chunk.
        let download: u64 = 256 * MIB;
        let before = vm_rss_kib();
        let sampler = RssSampler::start();
        let req = hyper::Request::get(format!("{}/big?bytes={download}", gw.url))
            .header("authorization", &auth)
            .body(Empty::<Bytes>::new().boxed())
            .unwrap();
        let resp = client.request(req).await.expect("download request");
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut received: u64 = 0;
        let mut wrong_bytes = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("download body error");
            if let Some(data) = frame.data_ref() {
                received += data.len() as u64;
                wrong_bytes += data.iter().filter(|&&b| b != b'x').count() as u64;
            }
        }
        let peak = sampler.peak_kib();
        assert_eq!(received, download, "response truncated or padded");
        assert_eq!(wrong_bytes, 0, "response content altered");
        assert_eq!(books.last().unwrap().target, format!("/big?bytes={download}"));
        let growth = peak.saturating_sub(before) * 1024;
        eprintln!("256 MiB download: RSS {before} KiB -> peak {peak} KiB");
        assert!(growth < 64 * MIB, "RSS grew by {} MiB while streaming a 256 MiB response", growth / MIB);
        drop(client);
        gw.stop().await;
    })
    .await;
}
