//! The route table, and path normalization (from [`crate::path`]) for its callers.
//!
//! The normalized path is computed once, matched against the table, and is then the exact path
//! the upstream receives: there is no second spelling that could reach a route the table did not
//! authorize.
//!
//! Templates use API Gateway syntax: literal segments, `{name}` for one segment, `{name+}` for
//! one or more trailing segments. They compile into a trie of segments, so lookup cost depends on
//! the depth of the path, not on the number of routes.
//!
//! Matching is done on a folded key, because the upstreams behind a gateway are lenient: Express
//! (by default) and ASP.NET Core route `/ADMIN` to the handler of `/admin`, Express and Spring MVC
//! before 6 do the same for `/admin/`, Express, Spring, Flask and Go's `net/http` serve HEAD with
//! the GET handler, and Tomcat and Spring drop `;` path parameters. A spelling that the upstream
//! treats as a protected template must therefore meet that template's policy, never fall through
//! to a broader route:
//!
//! - literal segments compare ASCII case-insensitively (parameters are not compared at all);
//! - one trailing slash is ignored (`/admin/` matches `/admin`);
//! - `;` and `%3B` in the path are refused (400) rather than stripped: Tomcat turns
//!   `/public/..;/admin` into `/admin` *after* dot-segment removal, so stripping parameters in the
//!   gateway could not agree with it; refusing leaves one spelling per path (Spring Security's
//!   default firewall refuses the same characters, so such apps never saw them anyway);
//! - the path alone picks the template (most specific first); the method then picks among that
//!   template's routes. No route for the method: 405, never a broader template;
//! - HEAD is checked as GET when the template has no explicit HEAD route.
//!
//! The upstream still receives the normalized path as the client wrote it (`/ADMIN`, `/admin/`):
//! only the policy comes from the folded match.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderValue, Method};

use crate::config::{Methods, MockResponse, Pos, RouteAuth, RouteConfig};
use crate::path::Segment;
pub use crate::path::{normalize, PathError};
use crate::upstream::Upstream;

/// The routes of one path template, by method.
#[derive(Debug, Default)]
struct Endpoint {
    explicit: Vec<(Method, usize)>,
    any: Option<usize>,
}

impl Endpoint {
    /// An explicit method first, then (for HEAD) the template's GET route, then ANY.
    fn find(&self, method: &Method) -> Option<usize> {
        let explicit = |m: &Method| self.explicit.iter().find(|(x, _)| x == m).map(|(_, i)| *i);
        explicit(method).or_else(|| if method == Method::HEAD { explicit(&Method::GET) } else { None }).or(self.any)
    }

    /// The `allow` header of a 405: the explicit methods, and HEAD wherever GET is routed.
    fn allow(&self) -> HeaderValue {
        let mut names: Vec<&str> = self.explicit.iter().map(|(m, _)| m.as_str()).collect();
        if names.contains(&"GET") {
            names.push("HEAD");
        }
        names.sort_unstable();
        names.dedup();
        HeaderValue::from_str(&names.join(", ")).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

#[derive(Debug, Default)]
struct Node {
    /// Keyed by the ASCII-lower-cased literal.
    literals: HashMap<String, Node>,
    param: Option<Box<Node>>,
    greedy: Option<Endpoint>,
    here: Option<Endpoint>,
}

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Match<'t, R> {
    /// The route the request is for.
    Found(&'t R),
    /// The path has routes, none for this method; the value is the `allow` header.
    MethodNotAllowed(HeaderValue),
    NotFound,
}

/// A route as requests meet it, compiled once per snapshot: its template (the label of its
/// metrics and log lines), methods and policy, and where it sends what it accepts.
pub struct CompiledRoute {
    pub template: String,
    pub methods: Methods,
    pub auth: RouteAuth,
    pub target: Target,
    /// The header that carries the verified claims upstream (`claims_header`).
    pub claims_header: Option<http::HeaderName>,
    /// False in audit mode (`enforce = false`): a token or scope refusal is logged and counted,
    /// and the request forwarded anyway, without identity.
    pub enforce: bool,
}

/// Where a route sends a request that passed its checks.
pub enum Target {
    Upstream(Arc<Upstream>),
    Mock(MockResponse),
}

/// The compiled route table: a trie of templates whose leaves name routes, and what each route
/// compiled to. [`Table::build`] gives each route its position in the config (enough to check
/// and measure the table); [`Table::try_map`] turns those into what requests need.
#[derive(Debug)]
pub struct Table<R = usize> {
    root: Node,
    /// The routes, in config order; the trie refers to them by that position.
    routes: Vec<R>,
}

impl Table {
    /// Compiles the routes; two routes that could claim the same request with equal specificity
    /// (templates equal up to parameter names and ASCII case, a method in common) are an error
    /// reported at the later one.
    pub fn build(routes: &[RouteConfig]) -> Result<Table, Vec<(Pos, String)>> {
        let mut table = Table { root: Node::default(), routes: (0..routes.len()).collect() };
        let mut errors = Vec::new();
        for (idx, r) in routes.iter().enumerate() {
            let mut node = &mut table.root;
            let mut endpoint = None;
            for seg in &r.segments {
                match seg {
                    Segment::Literal(l) => node = node.literals.entry(l.clone()).or_default(),
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
                    r.at,
                    format!(
                        "route {:?} overlaps route {:?} (same path shape, up to parameter names and letter case, and method)",
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
}

impl<R> Table<R> {
    /// The same table, each route's value turned into `f(value)`; the first error stops it.
    pub fn try_map<S, E>(self, f: impl FnMut(R) -> Result<S, E>) -> Result<Table<S>, E> {
        let routes = self.routes.into_iter().map(f).collect::<Result<_, E>>()?;
        Ok(Table { root: self.root, routes })
    }

    /// Finds the route for a normalized path. The path alone picks the template: the most
    /// specific one (literal, then `{param}`, then `{proxy+}`, segment by segment), literals
    /// compared ASCII case-insensitively and one trailing slash ignored. The method then picks
    /// among that template's routes (explicit, HEAD as GET, then ANY); when none takes it, the
    /// answer is 405, never a less specific template.
    pub fn lookup(&self, path: &str, method: &Method) -> Match<'_, R> {
        let rest = path.strip_prefix('/').unwrap_or(path);
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let Some(endpoint) = walk(&self.root, rest) else {
            return Match::NotFound;
        };
        match endpoint.find(method) {
            Some(i) => Match::Found(&self.routes[i]),
            None => Match::MethodNotAllowed(endpoint.allow()),
        }
    }
}

/// ASCII lower case, copied only when needed.
fn fold(seg: &str) -> Cow<'_, str> {
    if seg.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(seg.to_ascii_lowercase())
    } else {
        Cow::Borrowed(seg)
    }
}

/// Depth-first over the trie in precedence order; `rest` is the path after the current node,
/// without its leading slash (empty when the path ends at this node). Returns the most specific
/// template whose shape matches, whatever its methods.
fn walk<'t>(node: &'t Node, rest: &str) -> Option<&'t Endpoint> {
    // The root path "/" is the only one that ends at the root node with nothing left.
    if rest.is_empty() {
        return node.here.as_ref();
    }
    let (seg, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    // A normalized path has no empty segment (repeated slashes are merged, the trailing one was
    // stripped by `lookup`); one that slipped through matches nothing.
    if seg.is_empty() {
        return None;
    }
    let next = |child: &'t Node| match tail {
        None => child.here.as_ref(),
        Some("") => None,
        Some(t) => walk(child, t),
    };
    if let Some(child) = node.literals.get(fold(seg).as_ref()) {
        if let Some(e) = next(child) {
            return Some(e);
        }
    }
    if let Some(child) = &node.param {
        if let Some(e) = next(child) {
            return Some(e);
        }
    }
    // `{proxy+}` takes one or more whole segments: `seg` is non-empty.
    node.greedy.as_ref()
}

/// Pairs `(broad, narrow)` of route indices where a path matches both templates and `narrow`
/// wins it by precedence: `broad` sits beneath `narrow`, so paths near `narrow`'s that the
/// table does not match exactly (`/admin.json`, `/admin/x` beside `/admin`) reach `broad`.
pub fn beneath(routes: &[RouteConfig]) -> Vec<(usize, usize)> {
    let mut pairs = Vec::new();
    for (b, broad) in routes.iter().enumerate() {
        for (n, narrow) in routes.iter().enumerate() {
            if b != n && loses_to(&broad.segments, &narrow.segments) {
                pairs.push((b, n));
            }
        }
    }
    pairs
}

const fn rank(s: &Segment) -> u8 {
    match s {
        Segment::Literal(_) => 2,
        Segment::Param => 1,
        Segment::Greedy => 0,
    }
}

/// Whether some path matches both templates and `narrow` takes it from `broad`.
fn loses_to(broad: &[Segment], narrow: &[Segment]) -> bool {
    for (i, (b, n)) in broad.iter().zip(narrow).enumerate() {
        match (b, n) {
            (Segment::Literal(x), Segment::Literal(y)) if x == y => {}
            (Segment::Literal(_), Segment::Literal(_)) => return false,
            (Segment::Param, Segment::Param) => {}
            // Same shape from here on: the same template, not one beneath the other.
            (Segment::Greedy, Segment::Greedy) => return false,
            // The first difference decides precedence for every path both match.
            _ => return rank(n) > rank(b) && overlap(&broad[i..], &narrow[i..]),
        }
    }
    false
}

/// Whether some path matches both segment lists.
fn overlap(a: &[Segment], b: &[Segment]) -> bool {
    match (a.first(), b.first()) {
        (None, None) => true,
        (None, Some(_)) | (Some(_), None) => false,
        // A greedy segment takes whatever non-empty rest the other has.
        (Some(Segment::Greedy), Some(_)) | (Some(_), Some(Segment::Greedy)) => true,
        (Some(Segment::Literal(x)), Some(Segment::Literal(y))) if x != y => false,
        _ => overlap(&a[1..], &b[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Action;
    use crate::path::parse_template;

    fn check_template(path: &str) -> Result<(), String> {
        parse_template(path).map(|_| ())
    }

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
        RouteConfig {
            path: path.to_owned(),
            segments: parse_template(path).expect("a valid template"),
            methods,
            auth: RouteAuth::None,
            action: Action::Upstream("u".to_owned()),
            claims_header: None,
            enforce: true,
            at: Pos::default(),
        }
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
        assert_eq!(t.lookup("/book/latest", &Method::GET), Match::Found(&1));
        assert_eq!(t.lookup("/book/7", &Method::GET), Match::Found(&0));
        assert_eq!(t.lookup("/book/7", &Method::POST), Match::Found(&3));
        assert_eq!(t.lookup("/x/y/z", &Method::DELETE), Match::Found(&2));
        assert_eq!(t.lookup("/", &Method::GET), Match::Found(&4));
        assert_eq!(t.lookup("/book/7/pages/2", &Method::GET), Match::Found(&5));
        // The path picks the template, the method only chooses among its routes: a method the
        // most specific template does not take is a 405, not a less specific template's request.
        let get_head = Match::MethodNotAllowed(HeaderValue::from_static("GET, HEAD"));
        assert_eq!(t.lookup("/book/latest", &Method::POST), get_head);
        assert_eq!(t.lookup("/book/7/pages/2", &Method::PUT), get_head);
    }

    #[test]
    fn literals_fold_case_and_one_trailing_slash() {
        let routes = vec![
            route("/admin", get()),           // 0
            route("/{proxy+}", Methods::Any), // 1
            route("/Users/{id}/Keys", get()), // 2
            route("/caf%C3%A9", get()),       // 3
            route("/files/{path+}", get()),   // 4
            route("/", Methods::Any),         // 5
        ];
        let t = Table::build(&routes).unwrap();
        for path in ["/admin", "/admin/", "/ADMIN", "/Admin/", "/aDmIn"] {
            assert_eq!(t.lookup(path, &Method::GET), Match::Found(&0), "{path}");
        }
        for path in ["/users/7/keys", "/USERS/Bob/KEYS/", "/users/B0B/keys"] {
            assert_eq!(t.lookup(path, &Method::GET), Match::Found(&2), "{path}");
        }
        assert_eq!(t.lookup("/CAF%C3%A9", &Method::GET), Match::Found(&3));
        assert_eq!(t.lookup("/Files/a/B/", &Method::GET), Match::Found(&4));
        // Still different paths: a suffix, an extra segment, an encoded character.
        for path in ["/admins", "/admin.json", "/admin/x", "/admin%20", "/files"] {
            assert_eq!(t.lookup(path, &Method::GET), Match::Found(&1), "{path}");
        }
        // The root is still only the root.
        assert_eq!(t.lookup("/", &Method::GET), Match::Found(&5));
    }

    #[test]
    fn head_is_checked_as_get_unless_listed() {
        let routes = vec![
            route("/a", get()),                             // 0
            route("/{proxy+}", Methods::Any),               // 1
            route("/b", get()),                             // 2
            route("/b", Methods::Only(vec![Method::HEAD])), // 3
            route("/c", Methods::Any),                      // 4
            route("/c", get()),                             // 5
            route("/d", Methods::Only(vec![Method::POST])), // 6
        ];
        let t = Table::build(&routes).unwrap();
        assert_eq!(t.lookup("/a", &Method::HEAD), Match::Found(&0));
        assert_eq!(t.lookup("/A/", &Method::HEAD), Match::Found(&0));
        assert_eq!(t.lookup("/b", &Method::HEAD), Match::Found(&3));
        assert_eq!(t.lookup("/b", &Method::GET), Match::Found(&2));
        // HEAD follows GET's policy, not the ANY beside it.
        assert_eq!(t.lookup("/c", &Method::HEAD), Match::Found(&5));
        assert_eq!(t.lookup("/c", &Method::POST), Match::Found(&4));
        assert_eq!(t.lookup("/d", &Method::HEAD), Match::MethodNotAllowed(HeaderValue::from_static("POST")));
        assert_eq!(t.lookup("/a", &Method::DELETE), Match::MethodNotAllowed(HeaderValue::from_static("GET, HEAD")));
        let custom = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(t.lookup("/a", &custom), Match::MethodNotAllowed(HeaderValue::from_static("GET, HEAD")));
    }

    #[test]
    fn path_parameters_are_refused() {
        for path in ["/admin;x=1", "/admin/;/", "/;/admin", "/a/..;/admin", "/admin%3B", "/admin%3bx", "/a;"] {
            assert_eq!(normalize(path), Err(PathError::ForbiddenCharacter), "{path}");
        }
        assert!(check_template("/a;b").is_err());
        assert!(check_template("/a%3Bb").is_err());
    }

    #[test]
    fn beneath_finds_broader_templates_that_share_paths() {
        let routes = vec![
            route("/admin", get()),           // 0
            route("/{proxy+}", Methods::Any), // 1
            route("/{x}", get()),             // 2
            route("/admin/{id}", get()),      // 3
            route("/ADMIN/{rest+}", get()),   // 4
            route("/other/{id}", get()),      // 5
            route("/admin/keys", get()),      // 6
        ];
        let mut got = beneath(&routes);
        got.sort_unstable();
        let want = vec![
            (1, 0), // "/{proxy+}" beneath every other template
            (1, 2),
            (1, 3),
            (1, 4),
            (1, 5),
            (1, 6),
            (2, 0), // "/{x}" beneath "/admin" only (one segment)
            (3, 6), // "/admin/{id}" beneath "/admin/keys"
            (4, 3), // "/admin/{rest+}" beneath "/admin/{id}" and "/admin/keys"
            (4, 6),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn not_found_and_method_not_allowed() {
        let routes = vec![route("/book", get()), route("/book", Methods::Only(vec![Method::POST]))];
        let t = Table::build(&routes).unwrap();
        assert_eq!(t.lookup("/user", &Method::GET), Match::NotFound);
        assert_eq!(t.lookup("/book/x", &Method::GET), Match::NotFound);
        assert_eq!(t.lookup("/", &Method::GET), Match::NotFound);
        assert_eq!(
            t.lookup("/book", &Method::DELETE),
            Match::MethodNotAllowed(HeaderValue::from_static("GET, HEAD, POST"))
        );
    }

    #[test]
    fn greedy_needs_at_least_one_segment() {
        let t = Table::build(&[route("/files/{path+}", get())]).unwrap();
        assert_eq!(t.lookup("/files/a/b/c", &Method::GET), Match::Found(&0));
        assert_eq!(t.lookup("/files/a/", &Method::GET), Match::Found(&0));
        assert_eq!(t.lookup("/files", &Method::GET), Match::NotFound);
        assert_eq!(t.lookup("/files/", &Method::GET), Match::NotFound);
    }

    #[test]
    fn overlaps_are_rejected() {
        let clash = [
            vec![route("/a/{x}", get()), route("/a/{y}", get())],
            vec![route("/a", Methods::Any), route("/a", Methods::Any)],
            vec![route("/a/{p+}", get()), route("/a/{q+}", get())],
            // literals compare case-insensitively, so these claim the same requests
            vec![route("/Admin", get()), route("/admin", get())],
            vec![route("/a/B/{x}", Methods::Any), route("/A/b/{y}", Methods::Any)],
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
        for bad in ["a", "/a/", "/a//b", "/{p+}/x", "/{}", "/a/{b", "/../a", "/a%2Fb", "/a;b", "/a%3B"] {
            assert!(check_template(bad).is_err(), "{bad}");
        }
        for good in ["/", "/a", "/a/{b}", "/a/{rest+}", "/caf%C3%A9"] {
            assert!(check_template(good).is_ok(), "{good}");
        }
    }
}
