//! JWKS documents: `KeySet::parse` on arbitrary bytes, under an allow-list the input picks,
//! never panics; a set that parses is not empty, and every key in it allows only algorithms
//! from the allow-list, never an HMAC one. Structured inputs build documents from real key
//! material (the committed fuzz keys) and arbitrary fields, so keys are actually kept.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

#[path = "../shared/jwks.rs"]
mod jwks;

const NAMES: [&str; 13] = [
    "HS256", "HS384", "HS512", "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA", "none",
];

#[derive(Arbitrary, Debug)]
enum Field {
    Kty(u8),
    Crv(u8),
    Alg(u8),
    Use(u8),
    Kid(String),
    EcPoint,
    EdKey,
    RsaKey,
    Other(String, String),
    B64(u8, Vec<u8>),
}

fn build(keys: &[Vec<Field>]) -> Vec<u8> {
    let jwks::Material { ec_point: ec, ed25519: ed, rsa_n: n } = jwks::material();
    let list: Vec<Value> = keys
        .iter()
        .map(|fields| {
            let mut m = Map::new();
            for f in fields {
                let (k, v) = match f {
                    Field::Kty(i) => ("kty".to_owned(), json!(["RSA", "EC", "OKP", "oct", "rsa"][usize::from(*i) % 5])),
                    Field::Crv(i) => {
                        ("crv".to_owned(), json!(["P-256", "P-384", "Ed25519", "X25519"][usize::from(*i) % 4]))
                    }
                    Field::Alg(i) => ("alg".to_owned(), json!(NAMES[usize::from(*i) % NAMES.len()])),
                    Field::Use(i) => ("use".to_owned(), json!(["sig", "enc", ""][usize::from(*i) % 3])),
                    Field::Kid(s) => ("kid".to_owned(), json!(s)),
                    Field::EcPoint => {
                        m.insert("x".into(), json!(URL_SAFE_NO_PAD.encode(&ec[1..33])));
                        ("y".to_owned(), json!(URL_SAFE_NO_PAD.encode(&ec[33..])))
                    }
                    Field::EdKey => ("x".to_owned(), json!(URL_SAFE_NO_PAD.encode(&ed))),
                    Field::RsaKey => {
                        m.insert("n".into(), json!(URL_SAFE_NO_PAD.encode(&n)));
                        ("e".to_owned(), json!("AQAB"))
                    }
                    Field::Other(k, v) => (k.clone(), json!(v)),
                    Field::B64(i, bytes) => {
                        (["n", "e", "x", "y"][usize::from(*i) % 4].to_owned(), json!(URL_SAFE_NO_PAD.encode(bytes)))
                    }
                };
                m.insert(k, v);
            }
            Value::Object(m)
        })
        .collect();
    json!({ "keys": list }).to_string().into_bytes()
}

fuzz_target!(|data: &[u8]| {
    // Two bytes of allow-list mask, one byte of mode, then the document or its structure.
    let [m0, m1, mode, rest @ ..] = data else {
        return;
    };
    let allowed = jwks::allowed(u16::from_le_bytes([*m0, *m1]));
    let doc = if *mode == b'j' {
        rest.to_vec()
    } else {
        match Vec::<Vec<Field>>::arbitrary_take_rest(Unstructured::new(rest)) {
            Ok(keys) => build(&keys),
            Err(_) => return,
        }
    };
    jwks::check_keyset(&doc, &allowed);
});
