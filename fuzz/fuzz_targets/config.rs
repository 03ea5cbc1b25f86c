//! Config loading: arbitrary bytes, and TOML built from the config's own vocabulary (so the
//! fuzzer gets past the TOML parser into validation), never panic `Config::parse`; every
//! error is either about the whole file or carries a line and column inside the text.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

#[path = "../shared/config.rs"]
mod config;

const TABLES: &[&str] = &[
    "[server]",
    "[auth]",
    "[[auth.issuers]]",
    "[upstreams.up]",
    "[upstreams.other]",
    "[[routes]]",
    "[routes.response]",
    "[issuer]",
    "[[issuer.clients]]",
    "[server.tls]",
    "[log]",
    "[[issuer.resource_servers]]",
];

const KEYS: &[&str] = &[
    "admin_listen",
    "algorithms",
    "allowed_scopes",
    "audiences",
    "auth",
    "body",
    "ca_file",
    "cache_entries",
    "cert",
    "client_id",
    "client_secret",
    "client_secret_hash",
    "clients",
    "connect_timeout",
    "content_type",
    "discovery",
    "format",
    "forward_token",
    "header",
    "header_read_timeout",
    "identifier",
    "identity_headers",
    "issuer",
    "issuers",
    "jwks_file",
    "jwks_uri",
    "key",
    "kid_miss_cooldown",
    "leeway",
    "listen",
    "log",
    "max_connections",
    "max_header_bytes",
    "methods",
    "path",
    "refresh",
    "request_timeout",
    "resource_servers",
    "response",
    "routes",
    "scope_failure_status",
    "scopes",
    "scopes_all",
    "server",
    "shutdown_grace",
    "signing_key",
    "status",
    "tls",
    "token_ttl",
    "token_use",
    "upstream",
    "upstreams",
    "url",
];

const VALUES: &[&str] = &[
    "\"127.0.0.1:0\"",
    "\"0.0.0.0:8080\"",
    "\"30s\"",
    "\"1h\"",
    "\"0s\"",
    "\"-1s\"",
    "\"5 parsecs\"",
    "1",
    "0",
    "-1",
    "9223372036854775807",
    "1.5",
    "true",
    "\"json\"",
    "\"text\"",
    "\"https://issuer.test/pool\"",
    "\"http://127.0.0.1:9\"",
    "\"http://127.0.0.1:9/api\"",
    "\"ftp://x\"",
    "[\"RS256\", \"ES256\"]",
    "[\"HS256\"]",
    "[\"none\"]",
    "[]",
    "\"/books/{id}\"",
    "\"/{proxy+}\"",
    "\"/a/{b+}/c\"",
    "\"/a/{}\"",
    "\"/\"",
    "\"books\"",
    "[\"GET\"]",
    "[\"ANY\", \"GET\"]",
    "[\"get\"]",
    "[\"ANY\"]",
    "\"none\"",
    "\"jwt\"",
    "\"up\"",
    "\"missing\"",
    "[\"API/book.get\"]",
    "\"access\"",
    "\"\"",
    "\"é\"",
    "{ a = 1 }",
    "[[1]]",
    "\"keys.json\"",
    "\"${UNSET}\"",
];

#[derive(Arbitrary, Debug)]
enum Line {
    Table(u8),
    Pair(u8, u8),
    PairRaw(u8, String),
    Raw(String),
    Blank,
}

fuzz_target!(|data: &[u8]| {
    let text = match data.split_first() {
        // The bytes as they are (a file that is not UTF-8 is refused before parsing).
        Some((b'b', rest)) => match std::str::from_utf8(rest) {
            Ok(t) => t.to_owned(),
            Err(_) => return,
        },
        Some((_, rest)) => {
            let Ok(lines) = Vec::<Line>::arbitrary_take_rest(Unstructured::new(rest)) else {
                return;
            };
            let mut text = String::new();
            for l in lines {
                match l {
                    Line::Table(t) => text.push_str(TABLES[usize::from(t) % TABLES.len()]),
                    Line::Pair(k, v) => {
                        text.push_str(KEYS[usize::from(k) % KEYS.len()]);
                        text.push_str(" = ");
                        text.push_str(VALUES[usize::from(v) % VALUES.len()]);
                    }
                    Line::PairRaw(k, v) => {
                        text.push_str(KEYS[usize::from(k) % KEYS.len()]);
                        text.push_str(" = ");
                        text.push_str(&v);
                    }
                    Line::Raw(s) => text.push_str(&s),
                    Line::Blank => {}
                }
                text.push('\n');
            }
            text
        }
        None => return,
    };
    if config::reads_special_files(&text) {
        return;
    }
    config::parse_and_check(&text);
});
