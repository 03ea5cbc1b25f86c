//! `scopegate check`: the config is loaded and every file it names is read and compiled as a
//! start would (nothing is bound, nothing fetched), then summarized on one screen, with warnings
//! about legal but risky settings.

use std::path::Path;

use http::Method;

use crate::config::{Action, Config, ConfigError, Diag, KeySource, Methods, RouteAuth, RouteConfig};

/// What a valid config's check prints: the summary (stdout) and the warnings (stderr,
/// positioned like errors: `FILE:LINE:COL: warning: ...`).
pub struct Report {
    pub summary: String,
    pub warnings: Vec<Diag>,
}

/// Loads the config at `path` and runs the snapshot build's compile step on it. The warnings are
/// computed here only, not on every load: comparing every pair of routes is quadratic, and a
/// reload of a large table must stay cheap.
pub fn check(path: &Path) -> Result<Report, ConfigError> {
    let config = Config::load(path)?;
    crate::snapshot::compile(&config)?;
    let mut warnings = shadow_warnings(&config.routes, path);
    warnings.extend(audit_warnings(&config.routes, path));
    Ok(Report { summary: summary(&config), warnings })
}

/// The one-screen summary of a valid config.
fn summary(config: &Config) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "config {} is valid", config.path.display());
    let _ = writeln!(s, "listeners:");
    let _ = writeln!(s, "  data  {}", config.server.listen);
    match config.server.admin_listen {
        Some(a) => {
            let _ = writeln!(s, "  admin {a}");
        }
        None => {
            let _ = writeln!(s, "  admin (disabled)");
        }
    }
    let _ = writeln!(s, "issuers: {}", config.auth.issuers.len());
    for i in &config.auth.issuers {
        let src = match &i.source {
            KeySource::Uri(u) => format!("jwks_uri {u}"),
            KeySource::File(p) => format!("jwks_file {}", p.display()),
            KeySource::Discovery => "discovery".to_owned(),
            KeySource::Builtin => "built-in".to_owned(),
        };
        let algs: Vec<_> = i.algorithms.iter().map(|a| format!("{a:?}")).collect();
        let _ = writeln!(s, "  {} ({src}; {})", i.issuer, algs.join(","));
    }
    if let Some(b) = &config.issuer {
        let key = b.signing_key.as_ref().map_or("generated in memory".to_owned(), |p| p.display().to_string());
        let _ = writeln!(
            s,
            "built-in issuer: {} (key {key}; {} clients, {} scopes)",
            b.issuer,
            b.clients.len(),
            b.scopes.len()
        );
    }
    let _ = writeln!(s, "upstreams: {}", config.upstreams.len());
    for u in &config.upstreams {
        let _ = writeln!(s, "  {} -> {}{}", u.name, u.scheme_authority, u.path_prefix);
    }
    let _ = writeln!(s, "routes: {}", config.routes.len());
    for r in &config.routes {
        let methods = match &r.methods {
            Methods::Any => "ANY".to_owned(),
            Methods::Only(m) => m.iter().map(Method::as_str).collect::<Vec<_>>().join(","),
        };
        let auth = match &r.auth {
            RouteAuth::None => "public".to_owned(),
            RouteAuth::Jwt { any_of, all_of } => {
                let mut parts = vec!["jwt".to_owned()];
                if !any_of.is_empty() {
                    parts.push(format!("any of [{}]", any_of.join(" ")));
                }
                if !all_of.is_empty() {
                    parts.push(format!("all of [{}]", all_of.join(" ")));
                }
                parts.join(", ")
            }
        };
        let target = match &r.action {
            Action::Upstream(name) => format!("-> {name}"),
            Action::Mock(m) => format!("-> mock {}", m.status.as_u16()),
        };
        let _ = writeln!(s, "  {methods:<10} {:<30} {auth:<40} {target}", r.path);
    }
    s
}

/// One warning per route that sits beneath routes with a stronger policy: its template shares
/// paths with theirs and loses them by precedence, so a path near theirs that the table does not
/// match exactly (`/admin.json` or `/admin/x` next to `/admin`) is served under its weaker policy.
fn shadow_warnings(routes: &[RouteConfig], file: &Path) -> Vec<Diag> {
    let mut shadowed: Vec<Vec<usize>> = vec![Vec::new(); routes.len()];
    for (broad, narrow) in crate::route::beneath(routes) {
        let (b, n) = (&routes[broad], &routes[narrow]);
        if methods_meet(&b.methods, &n.methods) && !implies(&b.auth, &n.auth) {
            shadowed[broad].push(narrow);
        }
    }
    let label = |r: &RouteConfig| {
        let methods = match &r.methods {
            Methods::Any => "ANY".to_owned(),
            Methods::Only(m) => m.iter().map(Method::as_str).collect::<Vec<_>>().join(","),
        };
        format!("{methods} {:?}", r.path)
    };
    let mut out = Vec::new();
    for (broad, narrow) in shadowed.iter().enumerate() {
        if narrow.is_empty() {
            continue;
        }
        let b = &routes[broad];
        let kind = if b.auth == RouteAuth::None { "public route" } else { "route" };
        let names: Vec<String> =
            narrow.iter().map(|&n| format!("{} (line {})", label(&routes[n]), routes[n].at.line)).collect();
        out.push(Diag::at(
            file,
            b.at,
            format!(
                "warning: {kind} {} sits beneath {} with a stronger policy: {}; requests for nearby paths that the table \
                 does not match exactly (a suffix such as \".json\", a further segment) get this route's weaker \
                 policy, even where the upstream serves them as the protected path",
                label(b),
                if narrow.len() == 1 { "a route" } else { "routes" },
                names.join(", "),
            ),
        ));
    }
    out
}

/// One warning per route in audit mode (`enforce = false`, its own or `[auth] enforce`'s): it
/// forwards what it would refuse, which is meant for a rollout, not to stay.
fn audit_warnings(routes: &[RouteConfig], file: &Path) -> Vec<Diag> {
    routes
        .iter()
        .filter(|r| !r.enforce)
        .map(|r| {
            Diag::at(
                file,
                r.at,
                format!(
                    "warning: route {} is not enforcing (audit mode, enforce = false): requests its token or scope \
                     check refuses are logged as would_deny and forwarded anyway; set enforce = true once the \
                     rollout is done",
                    r.name()
                ),
            )
        })
        .collect()
}

/// Whether two routes can take the same method (HEAD is checked as GET).
fn methods_meet(a: &Methods, b: &Methods) -> bool {
    let fold = |m: &Method| if m == Method::HEAD { Method::GET } else { m.clone() };
    match (a, b) {
        (Methods::Any, _) | (_, Methods::Any) => true,
        (Methods::Only(x), Methods::Only(y)) => x.iter().any(|m| y.iter().any(|n| fold(m) == fold(n))),
    }
}

/// Whether every request that `a`'s policy accepts is also accepted by `b`'s (`a` is at least as
/// strict as `b`). Decided from the scope lists alone, without knowing which scopes exist.
fn implies(a: &RouteAuth, b: &RouteAuth) -> bool {
    match (a, b) {
        (_, RouteAuth::None) => true,
        (RouteAuth::None, RouteAuth::Jwt { .. }) => false,
        (RouteAuth::Jwt { any_of: a_any, all_of: a_all }, RouteAuth::Jwt { any_of: b_any, all_of: b_all }) => {
            // Scopes every token accepted by `a` has: its all-of, and its any-of when that has
            // only one choice.
            let forced = |s: &String| a_all.contains(s) || (a_any.len() == 1 && a_any.contains(s));
            let all_ok = b_all.iter().all(forced);
            let any_ok = b_any.is_empty()
                || b_any.iter().any(forced)
                || (!a_any.is_empty() && a_any.iter().all(|s| b_any.contains(s)));
            all_ok && any_ok
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_requirements_compare_by_strictness() {
        let jwt = |any: &[&str], all: &[&str]| RouteAuth::Jwt {
            any_of: any.iter().map(|s| (*s).to_owned()).collect(),
            all_of: all.iter().map(|s| (*s).to_owned()).collect(),
        };
        let admin = jwt(&["a"], &[]);
        assert!(implies(&admin, &admin));
        assert!(implies(&admin, &RouteAuth::None));
        assert!(!implies(&RouteAuth::None, &admin));
        assert!(!implies(&jwt(&[], &[]), &admin));
        assert!(implies(&jwt(&[], &["a", "b"]), &admin));
        assert!(implies(&jwt(&["a"], &["b"]), &jwt(&[], &["a", "b"])));
        assert!(!implies(&jwt(&["a", "c"], &[]), &admin));
        assert!(implies(&jwt(&["a", "c"], &[]), &jwt(&["a", "b", "c"], &[])));
        assert!(!implies(&jwt(&["a", "c"], &[]), &jwt(&[], &["a"])));
    }
}
