//! Criterion benchmark of the verified-token cache's lookup (issue #14, the 10,000-token case):
//! the cache as the gateway has it (`quick_cache`, keyed by the whole token string) against the
//! same cache keyed by the token's SHA-256 digest (hash once, compare 32 bytes), each with one
//! token and with 10,000 distinct tokens looked up in rotation.
//!
//! Tokens are random base64url strings of a realistic RS256 access-token length (about 700
//! bytes), so the figures are the cache's own cost, not a signature check's.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use quick_cache::sync::Cache;

const TOKEN_LEN: usize = 700;

fn tokens(n: usize) -> Vec<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = fastrand::Rng::with_seed(14);
    (0..n).map(|_| (0..TOKEN_LEN).map(|_| ALPHABET[rng.usize(..ALPHABET.len())] as char).collect()).collect()
}

fn digest(token: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("token_cache_hit");
    for n in [1usize, 10_000] {
        let toks = tokens(n);
        // Principal stand-in: what the cache hands back is an Arc either way.
        let by_string: Cache<String, Arc<u64>> = Cache::new(65_536);
        let by_digest: Cache<[u8; 32], Arc<u64>> = Cache::new(65_536);
        for (i, t) in toks.iter().enumerate() {
            by_string.insert(t.clone(), Arc::new(i as u64));
            by_digest.insert(digest(t), Arc::new(i as u64));
        }
        group.bench_with_input(BenchmarkId::new("string_key", n), &toks, |b, toks| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % toks.len();
                black_box(by_string.get(black_box(toks[i].as_str())))
            })
        });
        group.bench_with_input(BenchmarkId::new("sha256_key", n), &toks, |b, toks| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % toks.len();
                black_box(by_digest.get(&digest(black_box(toks[i].as_str()))))
            })
        });
    }
    group.bench_function("sha256_700_bytes", |b| {
        let t = &tokens(1)[0];
        b.iter(|| black_box(digest(black_box(t))))
    });
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
