//! Path normalization and route lookup.
//!
//! Input: the request path (up to the first newline; it must parse as an HTTP/1 request
//! target's path, as it would to reach the gateway), then bytes that pick the method and a
//! second spelling of the same path. Properties:
//! - normalization is idempotent: `normalize(normalize(x)) == normalize(x)`;
//! - an accepted output is absolute and has no `.`/`..` segment, no `//`, no escape of `/`, `\`
//!   or NUL (in any case), no raw `\` or NUL, and no escape of an unreserved character;
//! - a second spelling built from the output (unreserved characters percent-encoded in either
//!   hex case, `./`, `x/../`, doubled slashes) normalizes to the same path and therefore gets
//!   the same route from a fixed table;
//! - a route that was found has a template whose literal segments are in the path.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use scopegate::config::Config;
use scopegate::route::{normalize, Match, Table};

#[path = "../shared/paths.rs"]
mod paths;

fn fixture() -> &'static (Config, Table) {
    static T: OnceLock<(Config, Table)> = OnceLock::new();
    T.get_or_init(|| {
        let config = Config::parse(Path::new("/fuzz/routes.toml"), paths::ROUTES_TOML).expect("fixed routes load");
        let table = Table::build(&config.routes).expect("fixed routes compile");
        (config, table)
    })
}

fuzz_target!(|data: &[u8]| {
    let (path, rest) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let (method, respell) = rest.split_first().map_or((0, &[][..]), |(m, r)| (*m, r));
    // What hyper hands the gateway: a path that parsed as part of a request target.
    let Ok(pq) = http::uri::PathAndQuery::try_from(path) else {
        return;
    };
    let raw = pq.path();
    let Ok(normal) = normalize(raw) else {
        return;
    };
    paths::check_normal(raw, &normal);
    let (config, table) = fixture();
    let method = paths::METHODS[usize::from(method) % paths::METHODS.len()].clone();
    let found = table.lookup(&normal, &method);

    let other = paths::respell(&normal, respell);
    let other_normal =
        normalize(&other).unwrap_or_else(|e| panic!("respelling {other:?} of {normal:?} refused: {e:?}"));
    assert_eq!(other_normal, normal, "{other:?} and {normal:?} normalize differently");
    let again = table.lookup(&other_normal, &method);
    assert_eq!(found, again, "same normalized path {normal:?}, different routes");

    if let Match::Found(&i) = found {
        paths::check_template_matches(&config.routes[i].path, &normal);
    }
});
