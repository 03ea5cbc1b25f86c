//! The token path: compact JWS split, header and claims parsing, signature and claim checks,
//! against a fixed key set (an ES256 key and an Ed25519 key, committed under fuzz/keys/).
//!
//! Input: first byte `r` -> the rest is the token as sent; anything else -> the rest drives a
//! structured token (header and claim values picked from good and bad choices, signed with one
//! of the keys or not at all, then optionally bytes overwritten), so the fuzzer reaches both
//! acceptance and every refusal. The all-zero structure is a valid token.
//!
//! Property: whatever the verifier accepts
//! - splits into three parts whose signature verifies, with aws-lc-rs directly, over
//!   `header.claims` with the key that the header's `kid` names (or either key when there is
//!   none) under the algorithm the header's `alg` names;
//! - carries `iss` equal to the issuer, a numeric `exp` in the future, `nbf`/`iat` (when present)
//!   not in the future, `token_use` "access", and an audience the issuer accepts;
//! - becomes a principal of that issuer whose expiry is not after the token's.
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbitrary::{Arbitrary, Unstructured};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use scopegate::auth::jwks::{IssuerKeys, KeySet};
use scopegate::auth::verify::Verifier;
use scopegate::config::{IssuerConfig, KeySource, Pos};
use scopegate::metrics::Metrics;
use serde_json::{json, Map, Value};

const ISS: &str = "https://issuer.fuzz/pool";
const AUD: &str = "api://fuzz";

struct Fixture {
    ec: EcdsaKeyPair,
    ed: Ed25519KeyPair,
    verifier: Verifier,
    rt: tokio::runtime::Runtime,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let ec =
            EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, include_bytes!("../keys/es256.pk8.der"))
                .expect("P-256 PKCS#8");
        let ed = Ed25519KeyPair::from_pkcs8_maybe_unchecked(include_bytes!("../keys/ed25519.pk8.der"))
            .expect("Ed25519 PKCS#8");
        let point = ec.public_key().as_ref();
        let jwks = json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "ec", "alg": "ES256", "use": "sig",
             "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed",
             "x": URL_SAFE_NO_PAD.encode(ed.public_key().as_ref())},
        ]});
        let cfg = IssuerConfig {
            issuer: ISS.to_owned(),
            source: KeySource::Builtin,
            audiences: vec![AUD.to_owned()],
            token_use: Some("access".to_owned()),
            // RS256 is allowed but no key has it: a token naming it must never pass.
            algorithms: vec![Algorithm::ES256, Algorithm::EdDSA, Algorithm::RS256],
            refresh: Duration::from_secs(300),
            // One unknown-kid wait per process (in paused time), then none.
            kid_miss_cooldown: Duration::from_secs(86_400),
            at: Pos::default(),
        };
        let all = [Algorithm::ES256, Algorithm::EdDSA, Algorithm::RS256];
        let keys = KeySet::parse(jwks.to_string().as_bytes(), &all).expect("fixed JWKS");
        assert_eq!(keys.len(), 2);
        let metrics = Arc::new(Metrics::new(prometheus::Registry::new()).expect("metrics"));
        let issuers = HashMap::from([(ISS.to_owned(), IssuerKeys::fixed(cfg, keys))]);
        // No leeway, no cache: every input is judged on its own, at the current time.
        let verifier = Verifier::new(issuers, Duration::ZERO, 0, metrics);
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime");
        Fixture { ec, ed, verifier, rt }
    })
}

#[derive(Arbitrary, Debug)]
enum SignWith {
    Ec,
    Ed,
    Garbage(Vec<u8>),
    Nothing,
}

#[derive(Arbitrary, Debug)]
enum Alg {
    Matching,
    Es256,
    EdDsa,
    Rs256,
    Hs256,
    None,
    Other(String),
    Number(i64),
}

#[derive(Arbitrary, Debug)]
enum Kid {
    Matching,
    Absent,
    Ec,
    Ed,
    Null,
    Other(String),
}

#[derive(Arbitrary, Debug, Clone)]
enum Val {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
    List(Vec<String>),
    Object(Vec<(String, String)>),
}

impl Val {
    fn json(&self) -> Value {
        match self {
            Val::Str(s) => json!(s),
            Val::Int(i) => json!(i),
            Val::Float(f) => json!(f),
            Val::Bool(b) => json!(b),
            Val::Null => Value::Null,
            Val::List(l) => json!(l),
            Val::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), json!(v))).collect()),
        }
    }
}

/// A claim or header value: the good one, absent, or something else.
#[derive(Arbitrary, Debug)]
enum Pick {
    Good,
    Absent,
    Other(Val),
}

#[derive(Arbitrary, Debug)]
enum Time {
    /// now + 60 + n seconds
    Later(u16),
    Absent,
    /// now - n seconds
    Earlier(u16),
    /// now + n seconds
    Soon(u8),
    Other(Val),
}

/// For `nbf` and `iat`: the good choice comes first here.
#[derive(Arbitrary, Debug)]
enum Issued {
    /// now - n seconds
    Earlier(u16),
    Absent,
    /// now + 60 + n seconds
    Later(u16),
    /// now + n seconds
    Soon(u8),
    Other(Val),
}

impl Issued {
    fn time(&self) -> Time {
        match self {
            Issued::Earlier(n) => Time::Earlier(*n),
            Issued::Absent => Time::Absent,
            Issued::Later(n) => Time::Later(*n),
            Issued::Soon(n) => Time::Soon(*n),
            Issued::Other(v) => Time::Other(v.clone()),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Token {
    sign_with: SignWith,
    alg: Alg,
    kid: Kid,
    header_extra: Vec<(String, Val)>,
    iss: Pick,
    exp: Time,
    nbf: Issued,
    iat: Issued,
    aud: Pick,
    client_id: Pick,
    token_use: Pick,
    scope: Pick,
    claims_extra: Vec<(String, Val)>,
    /// Bytes written over the finished token: (position, ASCII byte).
    overwrite: Vec<(u16, u8)>,
}

/// `SCOPEGATE_FUZZ_TRACE=1` prints each token and the verdict (to check what the seeds reach).
fn trace() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var_os("SCOPEGATE_FUZZ_TRACE").is_some())
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn build(t: &Token, f: &Fixture) -> String {
    let now = now();
    let mut header = Map::new();
    let alg = match &t.alg {
        Alg::Matching => json!(match t.sign_with {
            SignWith::Ed => "EdDSA",
            _ => "ES256",
        }),
        Alg::Es256 => json!("ES256"),
        Alg::EdDsa => json!("EdDSA"),
        Alg::Rs256 => json!("RS256"),
        Alg::Hs256 => json!("HS256"),
        Alg::None => json!("none"),
        Alg::Other(s) => json!(s),
        Alg::Number(n) => json!(n),
    };
    header.insert("alg".into(), alg);
    let kid = match &t.kid {
        Kid::Matching => Some(json!(match t.sign_with {
            SignWith::Ed => "ed",
            _ => "ec",
        })),
        Kid::Absent => None,
        Kid::Ec => Some(json!("ec")),
        Kid::Ed => Some(json!("ed")),
        Kid::Null => Some(Value::Null),
        Kid::Other(s) => Some(json!(s)),
    };
    if let Some(k) = kid {
        header.insert("kid".into(), k);
    }
    for (k, v) in &t.header_extra {
        header.insert(k.clone(), v.json());
    }
    let mut claims = Map::new();
    let mut put = |name: &str, pick: &Pick, good: Value| match pick {
        Pick::Good => {
            claims.insert(name.into(), good);
        }
        Pick::Absent => {}
        Pick::Other(v) => {
            claims.insert(name.into(), v.json());
        }
    };
    put("iss", &t.iss, json!(ISS));
    put("aud", &t.aud, json!(AUD));
    put("client_id", &t.client_id, json!("client-1"));
    put("token_use", &t.token_use, json!("access"));
    put("scope", &t.scope, json!("books.read books.write"));
    for (name, time) in [("exp", &t.exp), ("nbf", &t.nbf.time()), ("iat", &t.iat.time())] {
        let v = match time {
            Time::Later(n) => json!(now + 60 + u64::from(*n)),
            Time::Absent => continue,
            Time::Earlier(n) => json!(now.saturating_sub(u64::from(*n))),
            Time::Soon(n) => json!(now + u64::from(*n)),
            Time::Other(v) => v.json(),
        };
        claims.insert(name.into(), v);
    }
    for (k, v) in &t.claims_extra {
        claims.insert(k.clone(), v.json());
    }
    let input = format!("{}.{}", b64(&Value::Object(header)), b64(&Value::Object(claims)));
    let signature = match &t.sign_with {
        SignWith::Ec => f.ec.sign(&SystemRandom::new(), input.as_bytes()).expect("sign").as_ref().to_vec(),
        SignWith::Ed => f.ed.sign(input.as_bytes()).as_ref().to_vec(),
        SignWith::Garbage(g) => g.clone(),
        SignWith::Nothing => Vec::new(),
    };
    let mut token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)).into_bytes();
    for &(at, byte) in &t.overwrite {
        if let Some(b) = token.get_mut(usize::from(at)) {
            *b = byte & 0x7f;
        }
    }
    String::from_utf8(token).expect("ASCII")
}

/// Checks an accepted token independently of the verifier.
fn check_accepted(token: &str, f: &Fixture, before: u64, principal_issuer: &str, principal_exp: u64) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "accepted a token that is not three parts: {token:?}");
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).expect("accepted header is base64url"))
            .expect("accepted header is JSON");
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("accepted claims are base64url"))
            .expect("accepted claims are JSON");
    let signature = URL_SAFE_NO_PAD.decode(parts[2]).expect("accepted signature is base64url");
    let message = &token.as_bytes()[..parts[0].len() + 1 + parts[1].len()];

    let alg = header["alg"].as_str().expect("accepted alg is a string");
    let kid = header.get("kid").and_then(Value::as_str);
    let (algorithm, public, key_kid): (&dyn sig::VerificationAlgorithm, &[u8], &str) = match alg {
        "ES256" => (&sig::ECDSA_P256_SHA256_FIXED, f.ec.public_key().as_ref(), "ec"),
        "EdDSA" => (&sig::ED25519, f.ed.public_key().as_ref(), "ed"),
        other => panic!("accepted a token with alg {other:?}, for which there is no key"),
    };
    if let Some(kid) = kid {
        assert_eq!(kid, key_kid, "accepted a {alg} token whose kid names another key");
    }
    UnparsedPublicKey::new(algorithm, public)
        .verify(message, &signature)
        .unwrap_or_else(|_| panic!("accepted a token whose signature does not verify: {token:?}"));

    assert_eq!(claims["iss"].as_str(), Some(ISS), "accepted without the issuer's iss");
    let exp = claims["exp"].as_f64().expect("accepted without a numeric exp");
    assert!(exp > before as f64, "accepted an expired token (exp {exp}, now {before})");
    let after = now() as f64;
    for name in ["nbf", "iat"] {
        if let Some(v) = claims.get(name).filter(|v| !v.is_null()) {
            let t = v.as_f64().unwrap_or_else(|| panic!("accepted a non-numeric {name}"));
            assert!(t <= after, "accepted a token with {name} in the future");
        }
    }
    assert_eq!(claims["token_use"].as_str(), Some("access"), "accepted without token_use access");
    let aud_ok = match claims.get("aud").filter(|v| !v.is_null()) {
        Some(Value::String(s)) => s == AUD,
        Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(AUD)),
        Some(other) => panic!("accepted an aud of {other}"),
        None => claims["client_id"].as_str() == Some(AUD),
    };
    assert!(aud_ok, "accepted a token for another audience");
    assert_eq!(principal_issuer, ISS);
    assert!(principal_exp as f64 <= exp, "principal outlives its token");
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let token = match data.split_first() {
        Some((b'r', rest)) => match std::str::from_utf8(rest) {
            Ok(t) => t.to_owned(),
            Err(_) => return,
        },
        Some((_, rest)) => match Token::arbitrary(&mut Unstructured::new(rest)) {
            Ok(t) => build(&t, f),
            Err(_) => return,
        },
        None => return,
    };
    let before = now();
    let result = f.rt.block_on(f.verifier.verify(&token));
    if trace() {
        eprintln!("{token}\n  -> {:?}", result.as_ref().map(|p| p.sub()).map_err(|e| format!("{e:?}")));
    }
    if let Ok(p) = result {
        check_accepted(&token, f, before, p.issuer(), p.exp);
    }
});
