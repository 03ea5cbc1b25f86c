//! Path normalization and the route table.
//!
//! The normalized path is computed once, matched against the table, and is then the exact path
//! the upstream receives: there is no second spelling that could reach a route the table did not
//! authorize.
//!
//! Templates use API Gateway syntax: literal segments, `{name}` for one segment, `{name+}` for
//! one or more trailing segments. They compile into a trie of segments, so lookup cost depends on
//! the depth of the path, not on the number of routes.

use std::borrow::Cow;
use std::collections::HashMap;

use http::{HeaderValue, Method};

use crate::config::{Methods, RouteConfig, Span};

/// Why a request path was refused (always answered 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    BadPercentEncoding,
    /// `%2F`, `%5C`, `%00` or a raw `\`.
    ForbiddenCharacter,
    /// A `..` that climbs above the root.
    AboveRoot,
}

const fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

const fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalizes a request path (no query): decodes percent-encoded unreserved characters,
/// upper-cases the hex of the other escapes, removes `.` and `..` segments (RFC 3986 §5.2.4)
/// and merges repeated slashes. A trailing slash is kept: `/a/` and `/a` are different paths.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Most paths are already normal: no escapes, no backslash, no empty or dot segments.
    if !needs_work(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(bytes)?;
    let mut out = String::with_capacity(decoded.len());
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for seg in decoded.split('/').skip(1) {
        trailing_slash = false;
        match seg {
            "" | "." => trailing_slash = true,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

fn needs_work(b: &[u8]) -> bool {
    let mut prev_slash = false;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'%' | b'\\' => return true,
            b'/' if prev_slash => return true,
            b'.' if prev_slash => {
                // "/." followed by end, "/" or ".": a dot segment.
                match b.get(i + 1) {
                    None | Some(b'/') => return true,
                    Some(b'.') if matches!(b.get(i + 2), None | Some(b'/')) => return true,
                    _ => {}
                }
            }
            _ => {}
        }
        prev_slash = c == b'/';
    }
    false
}

fn decode_unreserved(b: &[u8]) -> Result<String, PathError> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => return Err(PathError::ForbiddenCharacter),
            b'%' => {
                let (Some(hi), Some(lo)) = (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex))
                else {
                    return Err(PathError::BadPercentEncoding);
                };
                let v = hi << 4 | lo;
                match v {
                    b'/' | b'\\' | 0 => return Err(PathError::ForbiddenCharacter),
                    v if is_unreserved(v) => out.push(v),
                    v => {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        out.extend_from_slice(&[b'%', HEX[usize::from(v >> 4)], HEX[usize::from(v & 15)]]);
                    }
                }
                i += 3;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    // Only ASCII was written: the input came from a URI (ASCII) and escapes stay escaped.
    String::from_utf8(out).map_err(|_| PathError::BadPercentEncoding)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
    Greedy,
}

/// Checks a route template; returns why it is not one.
pub fn check_template(path: &str) -> Result<(), String> {
    parse_template(path).map(|_| ())
}

fn parse_template(path: &str) -> Result<Vec<Segment>, String> {
    if !path.starts_with('/') {
        return Err("must start with '/'".to_owned());
    }
    if path == "/" {
        return Ok(Vec::new());
    }
    if path.ends_with('/') {
        return Err("must not end with '/' (only the root \"/\" does)".to_owned());
    }
    let raw: Vec<&str> = path[1..].split('/').collect();
    let mut segs = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        if s.is_empty() {
            return Err("has an empty segment ('//')".to_owned());
        }
        if let Some(inner) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let (name, greedy) = match inner.strip_suffix('+') {
                Some(n) => (n, true),
                None => (inner, false),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("{s:?} is not a valid parameter (letters, digits, '_')"));
            }
            if greedy && i + 1 != raw.len() {
                return Err(format!("greedy parameter {s:?} must be the last segment"));
            }
            segs.push(if greedy { Segment::Greedy } else { Segment::Param });
            continue;
        }
        if s.contains(['{', '}', '?', '#']) {
            return Err(format!("segment {s:?} has a character that is not allowed in a literal"));
        }
        if *s == "." || *s == ".." {
            return Err("must not have '.' or '..' segments".to_owned());
        }
        // Literals are stored in normalized form, so they compare equal to normalized requests.
        let slashed = format!("/{s}");
        let normal = normalize(&slashed).map_err(|e| format!("segment {s:?}: {e:?}"))?;
        if normal.matches('/').count() != 1 {
            return Err(format!("segment {s:?} is not a single path segment"));
        }
        segs.push(Segment::Literal(normal[1..].to_owned()));
    }
    Ok(segs)
}

/// The routes of one path template, by method.
#[derive(Debug, Default)]
struct Endpoint {
    explicit: Vec<(Method, usize)>,
    any: Option<usize>,
}

impl Endpoint {
    fn find(&self, method: &Method) -> Option<usize> {
        self.explicit.iter().find(|(m, _)| m == method).map(|(_, i)| *i).or(self.any)
    }
}

#[derive(Debug, Default)]
struct Node {
    literals: HashMap<String, Node>,
    param: Option<Box<Node>>,
    greedy: Option<Endpoint>,
    here: Option<Endpoint>,
}

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Match {
    /// Index of the route in the config's route list.
    Found(usize),
    /// The path has routes, none for this method; the value is the `allow` header.
    MethodNotAllowed(HeaderValue),
    NotFound,
}

/// The compiled route table.
#[derive(Debug, Default)]
pub struct Table {
    root: Node,
    /// Methods per route, for the `allow` header of a 405.
    methods: Vec<Methods>,
}

impl Table {
    /// Compiles the routes; two routes that could claim the same request with equal specificity
    /// are an error reported at the later one.
    pub fn build(routes: &[RouteConfig]) -> Result<Table, Vec<(Span, String)>> {
        let mut table = Table::default();
        let mut errors = Vec::new();
        // Where each endpoint's routes were declared, to name the earlier route in an overlap.
        for (idx, r) in routes.iter().enumerate() {
            table.methods.push(r.methods.clone());
            let segs = match parse_template(&r.path) {
                Ok(s) => s,
                Err(e) => {
                    errors.push((r.span.clone(), format!("route path {:?}: {e}", r.path)));
                    continue;
                }
            };
            let mut node = &mut table.root;
            let mut endpoint = None;
            for seg in segs {
                match seg {
                    Segment::Literal(l) => node = node.literals.entry(l).or_default(),
                    Segment::Param => node = node.param.get_or_insert_with(Box::default),
                    Segment::Greedy => endpoint = Some(node.greedy.get_or_insert_with(Endpoint::default)),
                }
            }
            let endpoint = match endpoint {
                Some(e) => e,
                None => node.here.get_or_insert_with(Endpoint::default),
            };
            let clash = match &r.methods {
                Methods::Any => endpoint.any.replace(idx),
                Methods::Only(ms) => {
                    let mut clash = None;
                    for m in ms {
                        if let Some(&(_, other)) = endpoint.explicit.iter().find(|(x, _)| x == m) {
                            clash = Some(other);
                        } else {
                            endpoint.explicit.push((m.clone(), idx));
                        }
                    }
                    clash
                }
            };
            if let Some(other) = clash {
                errors.push((
                    r.span.clone(),
                    format!(
                        "route {:?} overlaps route {:?} (same path shape and method with equal specificity)",
                        r.path, routes[other].path
                    ),
                ));
            }
        }
        if errors.is_empty() {
            Ok(table)
        } else {
            Err(errors)
        }
    }

    /// Finds the route for a normalized path: the most specific template first (literal, then
    /// `{param}`, then `{proxy+}`, segment by segment), then an explicit method before ANY.
    pub fn lookup(&self, path: &str, method: &Method) -> Match {
        let rest = path.strip_prefix('/').unwrap_or(path);
        let mut allowed: Option<Vec<usize>> = None;
        if let Some(i) = walk(&self.root, rest, method, &mut allowed) {
            return Match::Found(i);
        }
        match allowed {
            None => Match::NotFound,
            Some(routes) => Match::MethodNotAllowed(self.allow_header(&routes)),
        }
    }

    fn allow_header(&self, routes: &[usize]) -> HeaderValue {
        let mut names: Vec<&str> = Vec::new();
        for &r in routes {
            if let Methods::Only(ms) = &self.methods[r] {
                names.extend(ms.iter().map(Method::as_str));
            }
        }
        names.sort_unstable();
        names.dedup();
        HeaderValue::from_str(&names.join(", ")).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// Depth-first over the trie in precedence order; `rest` is the path after the current node,
/// without its leading slash (empty when the path ends at this node).
fn walk(node: &Node, rest: &str, method: &Method, allowed: &mut Option<Vec<usize>>) -> Option<usize> {
    let note = |e: &Endpoint, allowed: &mut Option<Vec<usize>>| -> Option<usize> {
        let found = e.find(method);
        if found.is_none() {
            allowed.get_or_insert_with(Vec::new).extend(e.explicit.iter().map(|(_, i)| *i));
        }
        found
    };
    // The root path "/" is the only one that ends at the root node with nothing left.
    if rest.is_empty() {
        return node.here.as_ref().and_then(|e| note(e, allowed));
    }
    let (seg, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    if !seg.is_empty() {
        let next = |child: &Node, allowed: &mut Option<Vec<usize>>| match tail {
            None => child.here.as_ref().and_then(|e| note(e, allowed)),
            // A trailing slash leaves an empty last segment that no template has.
            Some("") => None,
            Some(t) => walk(child, t, method, allowed),
        };
        if let Some(child) = node.literals.get(seg) {
            if let Some(i) = next(child, allowed) {
                return Some(i);
            }
        }
        if let Some(child) = &node.param {
            if let Some(i) = next(child, allowed) {
                return Some(i);
            }
        }
    }
    // `{proxy+}` takes one or more whole segments: the rest must be non-empty.
    match &node.greedy {
        Some(e) if !seg.is_empty() => note(e, allowed),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Action, RouteAuth};

    #[test]
    fn normalization_table() {
        let ok = [
            ("/book", "/book"),
            ("/", "/"),
            ("/%62ook", "/book"),
            ("/book/../user", "/user"),
            ("/book/%2e%2e/user", "/user"),
            ("/book/.%2E/user", "/user"),
            ("//book", "/book"),
            ("/book//x", "/book/x"),
            ("/book/", "/book/"),
            ("/book/.", "/book/"),
            ("/./book", "/book"),
            ("/a/b/..", "/a/"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
            ("/a%7e%41", "/a~A"),
            ("/..a", "/..a"),
            ("/a.", "/a."),
        ];
        for (input, want) in ok {
            assert_eq!(normalize(input).as_deref(), Ok(want), "{input}");
        }
        let bad = [
            ("book", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("/book%2Fx", PathError::ForbiddenCharacter),
            ("/book%2fx", PathError::ForbiddenCharacter),
            ("/book%5Cx", PathError::ForbiddenCharacter),
            ("/book\\x", PathError::ForbiddenCharacter),
            ("/book%00", PathError::ForbiddenCharacter),
            ("/..", PathError::AboveRoot),
            ("/../book", PathError::AboveRoot),
            ("/%2e%2e/book", PathError::AboveRoot),
            ("/a/../../b", PathError::AboveRoot),
            ("/a%zz", PathError::BadPercentEncoding),
            ("/a%4", PathError::BadPercentEncoding),
        ];
        for (input, want) in bad {
            assert_eq!(normalize(input), Err(want), "{input}");
        }
    }

    #[test]
    fn normal_paths_are_not_copied() {
        assert!(matches!(normalize("/book/123/x.json"), Ok(Cow::Borrowed(_))));
    }

    fn route(path: &str, methods: Methods) -> RouteConfig {
        RouteConfig { path: path.to_owned(), methods, auth: RouteAuth::None, action: Action::Upstream(0), span: 0..0 }
    }

    fn get() -> Methods {
        Methods::Only(vec![Method::GET])
    }

    #[test]
    fn precedence_literal_param_greedy_then_method() {
        let routes = vec![
            route("/book/{id}", get()),           // 0
            route("/book/latest", get()),         // 1
            route("/{proxy+}", Methods::Any),     // 2
            route("/book/{id}", Methods::Any),    // 3
            route("/", get()),                    // 4
            route("/book/{id}/pages/{n}", get()), // 5
        ];
        let t = Table::build(&routes).unwrap();
        assert_eq!(t.lookup("/book/latest", &Method::GET), Match::Found(1));
        assert_eq!(t.lookup("/book/7", &Method::GET), Match::Found(0));
        assert_eq!(t.lookup("/book/7", &Method::POST), Match::Found(3));
        assert_eq!(t.lookup("/book/latest", &Method::POST), Match::Found(3));
        assert_eq!(t.lookup("/x/y/z", &Method::DELETE), Match::Found(2));
        assert_eq!(t.lookup("/", &Method::GET), Match::Found(4));
        assert_eq!(t.lookup("/book/7/pages/2", &Method::GET), Match::Found(5));
        assert_eq!(t.lookup("/book/7/pages/2", &Method::PUT), Match::Found(2));
    }

    #[test]
    fn not_found_and_method_not_allowed() {
        let routes = vec![route("/book", get()), route("/book", Methods::Only(vec![Method::POST]))];
        let t = Table::build(&routes).unwrap();
        assert_eq!(t.lookup("/user", &Method::GET), Match::NotFound);
        assert_eq!(t.lookup("/book/", &Method::GET), Match::NotFound);
        assert_eq!(t.lookup("/", &Method::GET), Match::NotFound);
        assert_eq!(t.lookup("/book", &Method::DELETE), Match::MethodNotAllowed(HeaderValue::from_static("GET, POST")));
    }

    #[test]
    fn greedy_needs_at_least_one_segment() {
        let t = Table::build(&[route("/files/{path+}", get())]).unwrap();
        assert_eq!(t.lookup("/files/a/b/c", &Method::GET), Match::Found(0));
        assert_eq!(t.lookup("/files/a/", &Method::GET), Match::Found(0));
        assert_eq!(t.lookup("/files", &Method::GET), Match::NotFound);
        assert_eq!(t.lookup("/files/", &Method::GET), Match::NotFound);
    }

    #[test]
    fn overlaps_are_rejected() {
        let clash = [
            vec![route("/a/{x}", get()), route("/a/{y}", get())],
            vec![route("/a", Methods::Any), route("/a", Methods::Any)],
            vec![route("/a/{p+}", get()), route("/a/{q+}", get())],
        ];
        for routes in clash {
            assert!(Table::build(&routes).is_err(), "{routes:?}");
        }
        let fine = vec![
            route("/a/{x}", get()),
            route("/a/{y}", Methods::Only(vec![Method::POST])),
            route("/a/{z}", Methods::Any),
        ];
        assert!(Table::build(&fine).is_ok());
    }

    #[test]
    fn templates_are_checked() {
        for bad in ["a", "/a/", "/a//b", "/{p+}/x", "/{}", "/a/{b", "/../a", "/a%2Fb"] {
            assert!(check_template(bad).is_err(), "{bad}");
        }
        for good in ["/", "/a", "/a/{b}", "/a/{rest+}", "/caf%C3%A9"] {
            assert!(check_template(good).is_ok(), "{good}");
        }
    }
}
