//! Property tests (proptest) for the parsers, on stable, run by `cargo test`: the same
//! invariants the fuzz targets under fuzz/ check with libFuzzer, with a modest case count.
//!
//! - path normalization: idempotent; no dot segment, `//`, escaped `/` `\` NUL, raw `\`, or
//!   escaped unreserved character in accepted output; a path with an encoded slash, backslash or
//!   NUL is refused; two spellings of one path normalize alike and get the same route;
//! - config: any text (and TOML built from the config's own keys) parses or fails with every
//!   error positioned inside the text, never panicking;
//! - JWKS: any document parses or fails without panicking, and every kept key allows only
//!   algorithms from the allow-list;
//! - the token endpoint's Basic credentials round-trip.

use std::path::Path;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::{header, HeaderMap, HeaderValue};
use proptest::prelude::*;
use scopegate::config::Config;
use scopegate::route::{normalize, Match, Table};

#[path = "../fuzz/shared/paths.rs"]
mod paths;

#[path = "../fuzz/shared/config.rs"]
mod config;

#[path = "../fuzz/shared/jwks.rs"]
mod jwks;

fn table() -> &'static (Config, Table) {
    static T: OnceLock<(Config, Table)> = OnceLock::new();
    T.get_or_init(|| {
        let config = Config::parse(Path::new("/props/routes.toml"), paths::ROUTES_TOML).expect("fixed routes load");
        let table = Table::build(&config.routes).expect("fixed routes compile");
        (config, table)
    })
}

/// Path segments that exercise every rule: dot segments, escapes of every kind and case,
/// backslashes, parameters, case, and the table's own literals.
const PIECES: &[&str] = &[
    "", ".", "..", "a", "b", "books", "special", "pages", "files", "Admin", "admin", "Users", "a%20b", "A%20B", "%41",
    "%7e", "%7E", "%2F", "%2f", "%5C", "%5c", "%00", "%25", "%252F", "%zz", "%4", "%", "\\", "x;y=1", "%3B", "~_-.",
    "%C3%A9", "1", "42",
];

fn path_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(prop::sample::select(PIECES), 0..8).prop_map(|v| format!("/{}", v.join("/"))),
        "/[a-zA-Z0-9./%\\\\;~_-]{0,24}",
        "[a-z./%]{0,6}",
    ]
}

/// The shared key material as JWK members: RSA, P-256 and Ed25519.
fn key_members() -> &'static [serde_json::Map<String, serde_json::Value>; 3] {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    static M: OnceLock<[serde_json::Map<String, serde_json::Value>; 3]> = OnceLock::new();
    M.get_or_init(|| {
        let jwks::Material { ec_point: point, ed25519: ed, rsa_n: n } = jwks::material();
        let obj = |v: serde_json::Value| v.as_object().cloned().expect("object");
        [
            obj(serde_json::json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode(&n), "e": "AQAB"})),
            obj(serde_json::json!({"kty": "EC", "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])})),
            obj(serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(&ed)})),
        ]
    })
}

/// A JWK: real key material of some type (or none), an optional `alg`, `use` and `kid`, then
/// arbitrary members that may override any of those.
fn jwk_strategy() -> impl Strategy<Value = serde_json::Value> {
    let extra = prop_oneof![
        prop::sample::select(vec!["RSA", "EC", "OKP", "oct"]).prop_map(|v| ("kty", serde_json::json!(v))),
        prop::sample::select(vec!["P-256", "P-384", "Ed25519"]).prop_map(|v| ("crv", serde_json::json!(v))),
        (prop::sample::select(vec!["n", "e", "x", "y"]), prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(k, b)| (k, serde_json::json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)))),
        (prop::sample::select(vec!["n", "e", "x", "y", "kid", "alg", "use"]), any::<i64>())
            .prop_map(|(k, v)| (k, serde_json::json!(v))),
    ];
    let alg = prop::sample::select(vec!["RS256", "PS384", "ES256", "ES384", "EdDSA", "HS256", "none", "rs256"]);
    (
        0..4usize,
        prop::option::of(alg),
        prop::option::of(prop::sample::select(vec!["sig", "enc"])),
        prop::option::of("[a-z0-9]{0,3}"),
        prop::collection::vec(extra, 0..3),
    )
        .prop_map(|(kind, alg, use_, kid, extra)| {
            let mut m = key_members().get(kind).cloned().unwrap_or_default();
            for (k, v) in [("alg", alg.map(str::to_owned)), ("use", use_.map(str::to_owned)), ("kid", kid)] {
                if let Some(v) = v {
                    m.insert(k.to_owned(), serde_json::json!(v));
                }
            }
            for (k, v) in extra {
                m.insert(k.to_owned(), v);
            }
            serde_json::Value::Object(m)
        })
}

/// TOML lines from the config's own vocabulary, so cases get past the TOML parser.
fn toml_strategy() -> impl Strategy<Value = String> {
    let table = prop::sample::select(vec![
        "[server]",
        "[auth]",
        "[[auth.issuers]]",
        "[upstreams.up]",
        "[[routes]]",
        "[routes.response]",
        "[issuer]",
        "[[issuer.clients]]",
        "[log]",
    ])
    .prop_map(str::to_owned);
    let key = prop::sample::select(vec![
        "listen",
        "request_timeout",
        "max_connections",
        "leeway",
        "issuer",
        "jwks_uri",
        "audiences",
        "algorithms",
        "url",
        "path",
        "methods",
        "scopes",
        "auth",
        "upstream",
        "status",
        "body",
        "client_id",
        "client_secret",
        "token_ttl",
        "format",
        "header",
    ]);
    let value = prop::sample::select(vec![
        "\"127.0.0.1:0\"",
        "\"30s\"",
        "\"-1s\"",
        "\"x\"",
        "0",
        "-1",
        "9223372036854775807",
        "true",
        "[]",
        "[\"RS256\"]",
        "[\"HS256\"]",
        "\"https://issuer.test/pool\"",
        "\"http://127.0.0.1:9\"",
        "\"/a/{id}\"",
        "\"/{p+}/x\"",
        "[\"GET\"]",
        "[\"get\"]",
        "\"none\"",
        "\"up\"",
        "\"é\"",
        "{ a = 1 }",
        "\"${UNSET_VAR}\"",
    ]);
    let line = prop_oneof![table, (key, value).prop_map(|(k, v)| format!("{k} = {v}")), "[^\n]{0,12}",];
    prop::collection::vec(line, 0..16).prop_map(|ls| ls.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn normalization_is_idempotent_and_clean(raw in path_strategy()) {
        if let Ok(normal) = normalize(&raw) {
            paths::check_normal(&raw, &normal);
        }
    }

    #[test]
    fn encoded_slash_backslash_and_nul_are_refused(raw in path_strategy()) {
        let upper = raw.to_ascii_uppercase();
        if ["%2F", "%5C", "%00", "\\"].iter().any(|s| upper.contains(s)) {
            prop_assert!(normalize(&raw).is_err(), "{:?} was accepted", raw);
        }
    }

    #[test]
    fn spellings_of_one_path_get_the_same_route(
        raw in path_strategy(),
        ops in prop::collection::vec(any::<u8>(), 0..10),
        method in 0..paths::METHODS.len(),
    ) {
        let Ok(normal) = normalize(&raw) else { return Ok(()) };
        let other = paths::respell(&normal, &ops);
        let other_normal = normalize(&other);
        prop_assert_eq!(other_normal.as_deref(), Ok(&*normal), "respelled as {:?}", other);
        let (config, table) = table();
        let method = &paths::METHODS[method];
        let found = table.lookup(&normal, method);
        prop_assert_eq!(&found, &table.lookup(&other_normal.unwrap_or_default(), method));
        if let Match::Found(&i) = found {
            paths::check_template_matches(&config.routes[i].path, &normal);
        }
    }

    #[test]
    fn config_text_never_panics_and_errors_are_positioned(text in "\\PC{0,200}") {
        if !config::reads_special_files(&text) {
            config::parse_and_check(&text);
        }
    }

    #[test]
    fn config_toml_never_panics_and_errors_are_positioned(text in toml_strategy()) {
        if !config::reads_special_files(&text) {
            config::parse_and_check(&text);
        }
    }

    #[test]
    fn jwks_bytes_never_panic(doc in prop::collection::vec(any::<u8>(), 0..200), mask in any::<u16>()) {
        jwks::check_keyset(&doc, &jwks::allowed(mask));
    }

    #[test]
    fn jwks_keys_allow_only_allowed_algorithms(keys in prop::collection::vec(jwk_strategy(), 0..4), mask in any::<u16>()) {
        let doc = serde_json::json!({ "keys": keys }).to_string();
        jwks::check_keyset(doc.as_bytes(), &jwks::allowed(mask));
    }

    #[test]
    fn basic_credentials_round_trip(id in "\\PC{0,20}", secret in "\\PC{0,20}", scheme in prop::sample::select(vec!["Basic", "basic", "BASIC"])) {
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let value = format!("{scheme} {}", STANDARD.encode(format!("{}:{}", enc(&id), enc(&secret))));
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&value).expect("ASCII"));
        let got = scopegate::issuer::basic_credentials(&headers).map_err(|e| format!("{e:?}"));
        prop_assert_eq!(got, Ok(Some((id, secret))));
    }

    /// What `curl --user id:secret` sends: the halves as they are, not form-encoded. Any
    /// character that form-encoding would not change the meaning of (`&`, `=`, `;`...) is
    /// taken literally, never as the end of a form field.
    #[test]
    fn unencoded_basic_credentials_are_taken_literally(id in "[a-zA-Z0-9&=;,!._~-]{1,20}", secret in "[a-zA-Z0-9&=;,:!._~-]{0,20}") {
        let value = format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")));
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&value).expect("ASCII"));
        let got = scopegate::issuer::basic_credentials(&headers).map_err(|e| format!("{e:?}"));
        prop_assert_eq!(got, Ok(Some((id, secret))));
    }
}
