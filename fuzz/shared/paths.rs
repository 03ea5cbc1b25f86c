//! Shared by the `path` fuzz target (and mirrored in tests/props.rs): the fixed route table,
//! the checks on a normalized path, and respelling a path without changing its meaning.
#![allow(dead_code)]

use http::Method;

pub const ROUTES_TOML: &str = r#"
[upstreams.up]
url = "http://127.0.0.1:9"

[[routes]]
path = "/"
methods = ["GET"]
auth = "none"
upstream = "up"

[[routes]]
path = "/books"
methods = ["GET", "POST"]
auth = "none"
upstream = "up"

[[routes]]
path = "/books/{id}"
methods = ["GET", "DELETE"]
auth = "none"
upstream = "up"

[[routes]]
path = "/books/{id}/pages/{page}"
auth = "none"
upstream = "up"

[[routes]]
path = "/books/special"
methods = ["GET"]
auth = "none"
upstream = "up"

[[routes]]
path = "/files/{proxy+}"
auth = "none"
upstream = "up"

[[routes]]
path = "/Admin/Users"
methods = ["POST"]
auth = "none"
upstream = "up"

[[routes]]
path = "/a%20b/{x}"
methods = ["GET"]
auth = "none"
upstream = "up"
"#;

pub static METHODS: [Method; 5] = [Method::GET, Method::POST, Method::DELETE, Method::PUT, Method::HEAD];

const fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Everything an accepted (normalized) path must satisfy; `raw` is the input, for messages.
pub fn check_normal(raw: &str, normal: &str) {
    assert!(normal.starts_with('/'), "{raw:?} -> {normal:?}: not absolute");
    assert!(!normal.contains("//"), "{raw:?} -> {normal:?}: contains //");
    assert!(!normal.contains('\\'), "{raw:?} -> {normal:?}: contains a backslash");
    assert!(!normal.contains('\0'), "{raw:?} -> {normal:?}: contains NUL");
    let segments: Vec<&str> = normal[1..].split('/').collect();
    for s in &segments {
        assert!(*s != ".." && *s != ".", "{raw:?} -> {normal:?}: dot segment");
    }
    let b = normal.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (hi, lo) = (b.get(i + 1).copied(), b.get(i + 2).copied());
            let (Some(h), Some(l)) = (hi.and_then(hex), lo.and_then(hex)) else {
                panic!("{raw:?} -> {normal:?}: bad escape at {i}");
            };
            let v = h << 4 | l;
            assert!(!matches!(v, b'/' | b'\\' | 0), "{raw:?} -> {normal:?}: escaped / \\ or NUL at {i}");
            assert!(!is_unreserved(v), "{raw:?} -> {normal:?}: escaped unreserved character at {i}");
            assert!(
                !b[i + 1..i + 3].iter().any(u8::is_ascii_lowercase),
                "{raw:?} -> {normal:?}: lower-case escape at {i}"
            );
            i += 3;
        } else {
            i += 1;
        }
    }
    let again = scopegate::route::normalize(normal).unwrap_or_else(|e| panic!("{normal:?} refused: {e:?}"));
    assert_eq!(again, normal, "normalize is not idempotent on {raw:?}");
}

/// Another spelling of a normalized path: per segment (driven by `ops`), percent-encode its
/// unreserved characters (upper or lower hex), add a `./` or a `x/../` before it, or double the
/// slash. It must normalize back to `normal`.
pub fn respell(normal: &str, ops: &[u8]) -> String {
    let mut out: Vec<u8> = Vec::new();
    let mut ops = ops.iter().copied();
    for seg in normal[1..].split('/') {
        let op = ops.next().unwrap_or(0);
        out.push(b'/');
        match op % 5 {
            1 => out.extend_from_slice(b"./"),
            2 => out.extend_from_slice(b"zz/../"),
            3 => out.push(b'/'),
            _ => {}
        }
        let encode = op % 5 == 4 || op & 0x80 != 0;
        let lower = op & 0x40 != 0;
        let bytes = seg.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let c = bytes[i];
            if c == b'%' {
                // An escape the normalizer kept: copied as is.
                let end = (i + 3).min(bytes.len());
                out.extend_from_slice(&bytes[i..end]);
                i = end;
                continue;
            }
            if encode && is_unreserved(c) {
                let e = if lower { format!("%{c:02x}") } else { format!("%{c:02X}") };
                out.extend_from_slice(e.as_bytes());
            } else {
                out.push(c);
            }
            i += 1;
        }
    }
    String::from_utf8(out).expect("only ASCII was added between whole characters")
}

/// A found route's template fits the path: same number of segments (a `{x+}` takes one or
/// more), and each literal segment equals the path's (ASCII case and `;params` aside, so the
/// check holds whether or not matching folds those).
pub fn check_template_matches(template: &str, normal: &str) {
    let t: Vec<&str> = template[1..].split('/').collect();
    let mut p: Vec<&str> = normal[1..].split('/').collect();
    if p.len() > 1 && p.last() == Some(&"") {
        p.pop();
    }
    let greedy = t.last().is_some_and(|s| s.ends_with("+}"));
    if greedy {
        assert!(p.len() >= t.len(), "{normal:?} matched {template:?} with too few segments");
    } else {
        assert_eq!(p.len(), t.len(), "{normal:?} matched {template:?} with a different segment count");
    }
    for (ts, ps) in t.iter().zip(&p) {
        if ts.starts_with('{') {
            assert!(!ps.is_empty(), "{normal:?} matched {template:?} with an empty parameter");
            continue;
        }
        let ps = ps.split(';').next().unwrap_or("");
        assert!(ts.eq_ignore_ascii_case(ps), "{normal:?} matched {template:?}: {ts:?} != {ps:?}");
    }
}
