//! JWKS documents: `KeySet::parse` on arbitrary bytes, under an allow-list the input picks,
//! never panics; a set that parses is not empty, and every key in it allows only algorithms
//! from the allow-list, never an HMAC one. Structured inputs build documents from real key
//! material (the committed fuzz keys) and arbitrary fields, so keys are actually kept.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use scopegate::auth::jwks::KeySet;
use serde_json::{json, Map, Value};

const ALL: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

const NAMES: [&str; 13] = [
    "HS256", "HS384", "HS512", "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA", "none",
];

/// Public key material: a P-256 point, an Ed25519 key, and a 2048-bit RSA modulus (any odd
/// number of the right size parses as a key).
fn material() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
    let ec = EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, include_bytes!("../keys/es256.pk8.der"))
        .expect("P-256 PKCS#8");
    let ed = Ed25519KeyPair::from_pkcs8_maybe_unchecked(include_bytes!("../keys/ed25519.pk8.der")).expect("Ed25519");
    let mut n = vec![0xc5u8; 256];
    n[255] |= 1;
    (ec.public_key().as_ref().to_vec(), ed.public_key().as_ref().to_vec(), n)
}

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
    let (ec, ed, n) = material();
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
    let mask = u16::from_le_bytes([*m0, *m1]);
    let allowed: Vec<Algorithm> =
        ALL.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, a)| *a).collect();
    let doc = if *mode == b'j' {
        rest.to_vec()
    } else {
        match Vec::<Vec<Field>>::arbitrary_take_rest(Unstructured::new(rest)) {
            Ok(keys) => build(&keys),
            Err(_) => return,
        }
    };
    let Ok(set) = KeySet::parse(&doc, &allowed) else {
        return;
    };
    assert!(!set.is_empty(), "an empty set parsed");
    let mut count = 0;
    for key in set.all() {
        count += 1;
        let algs: Vec<Algorithm> = key.algorithms().collect();
        assert!(!algs.is_empty(), "a key that allows nothing was kept");
        for a in algs {
            assert!(allowed.contains(&a), "key allows {a:?}, outside the allow-list {allowed:?}");
            assert!(!matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512), "an HMAC key was kept");
            assert!(key.allows(a));
        }
        for a in ALL {
            if !allowed.contains(&a) {
                assert!(!key.allows(a), "key allows {a:?}, outside the allow-list {allowed:?}");
            }
        }
    }
    assert_eq!(count, set.len());
});
