//! The token endpoint's client authentication: `Authorization: Basic` parsing.
//!
//! Input: first byte `r` -> the rest is the header value as sent (no panic, whatever it is);
//! anything else -> a client id and secret from structured data, encoded as RFC 6749 §2.3.1
//! says (form-urlencoded, joined by `:`, base64) under a scheme name in any case with extra
//! blanks: they must come back exactly.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::{header, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use scopegate::issuer::basic_credentials;

#[derive(Arbitrary, Debug)]
struct Creds {
    id: String,
    secret: String,
    scheme: u8,
    spaces: (u8, u8),
}

fn form(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    match data.split_first() {
        Some((b'r', rest)) => {
            if let Ok(v) = HeaderValue::from_bytes(rest) {
                headers.insert(header::AUTHORIZATION, v);
            }
            let _ = basic_credentials(&headers);
        }
        Some((_, rest)) => {
            let Ok(c) = Creds::arbitrary_take_rest(Unstructured::new(rest)) else {
                return;
            };
            let scheme = ["Basic", "basic", "BASIC", "bAsIc"][usize::from(c.scheme) % 4];
            let pad = |n: u8| " ".repeat(usize::from(n % 3));
            let value = format!(
                "{}{scheme} {}{}{}",
                pad(c.spaces.0),
                pad(c.spaces.1),
                STANDARD.encode(format!("{}:{}", form(&c.id), form(&c.secret))),
                pad(c.spaces.0)
            );
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&value).expect("ASCII header"));
            match basic_credentials(&headers) {
                Ok(Some((id, secret))) => {
                    assert_eq!((id.as_str(), secret.as_str()), (c.id.as_str(), c.secret.as_str()), "header {value:?}");
                }
                other => panic!("{value:?} for {:?}/{:?} parsed as {other:?}", c.id, c.secret),
            }
        }
        None => {
            assert!(matches!(basic_credentials(&headers), Ok(None)));
        }
    }
});
