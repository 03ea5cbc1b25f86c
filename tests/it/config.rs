//! Config validation through the real binary: `scopegate check --config PATH`.

use crate::common::*;

use std::path::{Path, PathBuf};

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\n--- stdout\n{}\n--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs the binary with a bounded timeout. `envs` are set, `unset` removed, for the child only.
async fn run_in(cwd: &Path, args: &[&str], envs: &[(&str, &str)], unset: &[&str]) -> Out {
    let mut cmd = binary_command();
    cmd.args(args).current_dir(cwd).env_remove("RUST_LOG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    for k in unset {
        cmd.env_remove(k);
    }
    let out = run_command(cmd, None).await;
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn check(path: &Path, envs: &[(&str, &str)], unset: &[&str]) -> Out {
    // Run from "/" so that relative paths in the file must resolve against its directory.
    run_in(Path::new("/"), &["check", "--config", path.to_str().unwrap()], envs, unset).await
}

/// A temp dir holding a valid jwks.json, and `gateway.toml` with `text`.
fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::generate(Algorithm::RS256, "cfg-k1");
    let jwks = serde_json::json!({ "keys": [key.jwk()] });
    std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// 1-based line of the only line containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    let hits: Vec<usize> = text.lines().enumerate().filter(|(_, l)| l.contains(needle)).map(|(i, _)| i + 1).collect();
    assert_eq!(hits.len(), 1, "{needle:?} must occur on exactly one line");
    hits[0]
}

/// 1-based column of `needle` on its line.
fn col_of(text: &str, needle: &str) -> usize {
    let line = text.lines().find(|l| l.contains(needle)).unwrap();
    line.find(needle).unwrap() + 1
}

/// Parses "PATH:LINE:COL:" (or "PATH:LINE:") at the start of `line`.
fn parse_pos(line: &str, path: &Path) -> Option<(usize, Option<usize>)> {
    let rest = line.strip_prefix(path.to_str().unwrap())?.strip_prefix(':')?;
    let l: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let rest = rest[l.len()..].strip_prefix(':')?;
    let c: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let col = if c.is_empty() {
        None
    } else {
        rest[c.len()..].strip_prefix(':')?;
        Some(c.parse().ok()?)
    };
    Some((l.parse().ok()?, col))
}

/// Exit 2 and stderr starting with `PATH:LINE:COL:` where COL is one of `cols`.
fn assert_error_at(out: &Out, path: &Path, line: usize, cols: &[usize]) {
    assert_eq!(out.code, Some(2), "{out:?}");
    let first = out.stderr.lines().next().unwrap_or("");
    match parse_pos(first, path) {
        Some((l, Some(c))) if l == line && cols.contains(&c) => {}
        got => panic!("stderr must start with {}:{line}:{cols:?}: got position {got:?}\n{out:?}", path.display()),
    }
}

const HEAD: &str = r#"[server]
listen = "127.0.0.1:0"
request_timeout = "30s"

[auth]
leeway = "60s"
scope_failure_status = 403

[[auth.issuers]]
issuer = "https://issuer.test/pool"
jwks_file = "jwks.json"
audiences = ["app-client"]

[upstreams.books]
url = "http://127.0.0.1:3000"
connect_timeout = "2s"
"#;

const ROUTES: &str = r#"
[[routes]]
path = "/book"
methods = ["GET"]
scopes = ["API/book.get"]
upstream = "books"

[[routes]]
path = "/book/{id}"
methods = ["POST"]
scopes_all = ["API/book.post", "API/book.admin"]
upstream = "books"

[[routes]]
path = "/health"
auth = "none"
response = { status = 200, content_type = "application/json", body = '{"ok":true}' }
"#;

fn valid() -> String {
    format!("{HEAD}{ROUTES}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_config_exits_0_with_summary() {
    let (_dir, path) = write_config(&valid());
    let out = check(&path, &[], &[]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let lower = out.stdout.to_ascii_lowercase();
    for word in ["listen", "route", "upstream", "issuer"] {
        assert!(lower.contains(word), "summary does not mention {word:?}: {out:?}");
    }
    for item in ["127.0.0.1:0", "https://issuer.test/pool", "books", "/book/{id}", "/health"] {
        assert!(out.stdout.contains(item), "summary lacks {item:?}: {out:?}");
    }
    assert!(out.stdout.lines().count() <= 60, "summary longer than a screen: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_path_defaults_to_env_then_cwd() {
    let (dir, path) = write_config(&valid());
    let empty = tempfile::tempdir().unwrap();

    // $SCOPEGATE_CONFIG
    let out = run_in(empty.path(), &["check"], &[("SCOPEGATE_CONFIG", path.to_str().unwrap())], &[]).await;
    assert_eq!(out.code, Some(0), "{out:?}");

    // ./gateway.toml
    let out = run_in(dir.path(), &["check"], &[], &[]).await;
    assert_eq!(out.code, Some(0), "{out:?}");

    // neither: error, exit 2
    let out = run_in(empty.path(), &["check"], &[], &[]).await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("gateway.toml"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_config_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let out = check(&path, &[], &[]).await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.starts_with(path.to_str().unwrap()), "stderr must start with the path: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_in_route_points_at_the_key() {
    let text = valid().replace("scopes = [\"API/book.get\"]", "scops = [\"API/book.get\"]");
    let (_dir, path) = write_config(&text);
    let out = check(&path, &[], &[]).await;
    assert_error_at(&out, &path, line_of(&text, "scops ="), &[1]);
    assert!(out.stderr.contains("scops"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_keys_elsewhere_are_errors_too() {
    for (what, from, to) in [
        ("auth", "leeway = \"60s\"", "leeway = \"60s\"\nforward_tokens = false"),
        ("server", "request_timeout = \"30s\"", "request_timeout = \"30s\"\nlisten_admin = \"127.0.0.1:0\""),
        ("issuer", "audiences = [\"app-client\"]", "audience = [\"app-client\"]"),
        ("upstream", "connect_timeout = \"2s\"", "connect_timout = \"2s\""),
    ] {
        let text = valid().replacen(from, to, 1);
        let key = to.lines().last().unwrap().split(' ').next().unwrap();
        let (_dir, path) = write_config(&text);
        let out = check(&path, &[], &[]).await;
        assert_error_at(&out, &path, line_of(&text, &format!("{key} =")), &[1]);
        assert!(out.stderr.contains(key), "{what}: {out:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_duration_is_reported_at_its_line() {
    let text = valid().replace("request_timeout = \"30s\"", "request_timeout = \"soon\"");
    let (_dir, path) = write_config(&text);
    let out = check(&path, &[], &[]).await;
    // the key or the value
    assert_error_at(&out, &path, line_of(&text, "\"soon\""), &[1, col_of(&text, "\"soon\"")]);

    let text = valid().replace("connect_timeout = \"2s\"", "connect_timeout = \"2 fortnights\"");
    let (_dir, path) = write_config(&text);
    let out = check(&path, &[], &[]).await;
    assert_error_at(&out, &path, line_of(&text, "fortnights"), &[1, col_of(&text, "\"2 fortnights\"")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unset_env_var_is_an_error() {
    const VAR: &str = "SCOPEGATE_TEST_SURELY_UNSET_7Q";
    let text = valid().replace("url = \"http://127.0.0.1:3000\"", &format!("url = \"http://${{{VAR}}}:3000\""));
    let (_dir, path) = write_config(&text);
    let out = check(&path, &[], &[VAR]).await;
    assert_eq!(out.code, Some(2), "{out:?}");
    let first = out.stderr.lines().next().unwrap_or("");
    let pos = parse_pos(first, &path);
    assert_eq!(
        pos.map(|p| p.0),
        Some(line_of(&text, VAR)),
        "stderr must start with PATH:LINE: of the ${{{VAR}}}: {out:?}"
    );
    assert!(out.stderr.contains(VAR), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_env_var_is_expanded() {
    const VAR: &str = "SCOPEGATE_TEST_EXPANDED_HOST";
    let text = valid()
        .replace("issuer = \"https://issuer.test/pool\"", &format!("issuer = \"https://${{{VAR}}}/pool\""))
        .replace("url = \"http://127.0.0.1:3000\"", &format!("url = \"http://${{{VAR}}}:3000\""));
    let (_dir, path) = write_config(&text);
    let out = check(&path, &[(VAR, "expanded-host.example")], &[]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("expanded-host.example"), "{out:?}");
    assert!(!out.stdout.contains("${"), "unexpanded variable in summary: {out:?}");

    // the same file without the variable is refused
    let out = check(&path, &[], &[VAR]).await;
    assert_eq!(out.code, Some(2), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undefined_upstream_is_reported_at_the_route() {
    let text = format!(
        "{}\n[[routes]]\npath = \"/user\"\nmethods = [\"GET\"]\nscopes = [\"API/user.get\"]\nupstream = \"nope\"\n",
        valid()
    );
    let (_dir, path) = write_config(&text);
    let out = check(&path, &[], &[]).await;
    assert_error_at(&out, &path, line_of(&text, "\"nope\""), &[1, col_of(&text, "\"nope\"")]);
    assert!(out.stderr.contains("nope"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_problems_are_both_reported() {
    let text = format!(
        "{}\n[[routes]]\npath = \"/a\"\nscopes = [\"s\"]\nupstream = \"ghost1\"\n\n[[routes]]\npath = \"/b\"\nscopes = [\"s\"]\nupstream = \"ghost2\"\n",
        valid()
    );
    let (_dir, path) = write_config(&text);
    let out = check(&path, &[], &[]).await;
    assert_eq!(out.code, Some(2), "{out:?}");
    for ghost in ["ghost1", "ghost2"] {
        let line = line_of(&text, ghost);
        let reported =
            out.stderr.lines().any(|l| l.contains(ghost) && parse_pos(l, &path).is_some_and(|(got, _)| got == line));
        assert!(reported, "{ghost} (line {line}) not reported as PATH:{line}:COL: {out:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_with_upstream_and_response_is_an_error() {
    let text = format!(
        "{}\n[[routes]]\npath = \"/both\"\nauth = \"none\"\nupstream = \"books\"\nresponse = {{ status = 200, content_type = \"text/plain\", body = \"x\" }}\n",
        valid()
    );
    let (_dir, path) = write_config(&text);
    let out = check(&path, &[], &[]).await;
    assert_eq!(out.code, Some(2), "{out:?}");
    let first = out.stderr.lines().next().unwrap_or("");
    let start = line_of(&text, "/both") - 1; // the [[routes]] header
    let end = line_of(&text, "body = \"x\"");
    match parse_pos(first, &path) {
        Some((l, Some(_))) if (start..=end).contains(&l) => {}
        got => panic!("want PATH:LINE:COL: within lines {start}..={end}, got {got:?}: {out:?}"),
    }
    // and a route with neither is an error as well
    let text = format!("{}\n[[routes]]\npath = \"/neither\"\nauth = \"none\"\n", valid());
    let (_dir, path) = write_config(&text);
    let out = check(&path, &[], &[]).await;
    assert_eq!(out.code, Some(2), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_broken_jwks_file_is_an_error() {
    let text = valid().replace("jwks_file = \"jwks.json\"", "jwks_file = \"missing-jwks.json\"");
    let (_dir, path) = write_config(&text);
    let out = check(&path, &[], &[]).await;
    assert_eq!(out.code, Some(2), "{out:?}");
    let first = out.stderr.lines().next().unwrap_or("");
    assert!(first.starts_with(path.to_str().unwrap()), "{out:?}");
    if let Some((line, _)) = parse_pos(first, &path) {
        assert_eq!(line, line_of(&text, "missing-jwks.json"), "{out:?}");
    }
    assert!(out.stderr.contains("missing-jwks.json"), "{out:?}");

    // exists but does not parse
    let (dir, path) = write_config(&valid());
    std::fs::write(dir.path().join("jwks.json"), "{ not json").unwrap();
    let out = check(&path, &[], &[]).await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("jwks.json"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_works() {
    let cwd = std::env::temp_dir();
    let out = run_in(&cwd, &["--help"], &[], &[]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    for word in ["check", "token", "hash-secret", "--config"] {
        assert!(out.stdout.contains(word), "--help lacks {word:?}: {out:?}");
    }
    let out = run_in(&cwd, &["check", "--help"], &[], &[]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("--config"), "{out:?}");
    for sub in ["token", "hash-secret"] {
        let out = run_in(&cwd, &[sub, "--help"], &[], &[]).await;
        assert_eq!(out.code, Some(0), "{sub} --help: {out:?}");
    }
}

/// `PATH:LINE:COL: warning: ...` lines of stderr, as (line, text).
fn warnings(out: &Out, path: &Path) -> Vec<(usize, String)> {
    out.stderr
        .lines()
        .filter_map(|l| {
            let (line, col) = parse_pos(l, path)?;
            col?;
            let text = l.splitn(4, ':').nth(3)?.trim_start();
            text.starts_with("warning:").then(|| (line, l.to_owned()))
        })
        .collect()
}

/// Lines `start..=end` of the `[[routes]]` block whose `path = ...` line contains `needle`.
fn route_block(text: &str, needle: &str) -> (usize, usize) {
    let path_line = line_of(text, needle);
    let lines: Vec<&str> = text.lines().collect();
    let start = (1..=path_line).rev().find(|&l| lines[l - 1].trim() == "[[routes]]").expect("[[routes]] header");
    let end = (path_line..=lines.len()).find(|&l| l == lines.len() || lines[l].trim() == "[[routes]]").unwrap();
    (start, end)
}

const ADMIN_ROUTES: &str = r#"
[[routes]]
path = "/admin"
methods = ["GET"]
scopes = ["API/admin"]
upstream = "books"

[[routes]]
path = "/admin/{id}/keys"
methods = ["DELETE"]
scopes_all = ["API/admin", "API/keys"]
upstream = "books"
"#;

/// A public (or weaker) route whose paths include a protected route's is legal, but spellings
/// outside the table (`/admin.json`, `/admin/x`) reach it: `check` says so, positioned, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_when_a_weaker_route_sits_beneath_protected_ones() {
    let catch_all = "\n[[routes]]\npath = \"/{proxy+}\"\nauth = \"none\"\nupstream = \"books\"\n";
    let text = format!("{HEAD}{ROUTES}{ADMIN_ROUTES}{catch_all}");
    let (_dir, path) = write_config(&text);
    let out = check(&path, &[], &[]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("is valid"), "{out:?}");
    let found = warnings(&out, &path);
    let (start, end) = route_block(&text, "/{proxy+}");
    let at_catch_all: Vec<&String> = found.iter().filter(|(l, _)| (start..=end).contains(l)).map(|(_, w)| w).collect();
    assert_eq!(at_catch_all.len(), 1, "want one warning at the catch-all (lines {start}..={end}): {out:?}");
    for protected in ["/admin", "/admin/{id}/keys", "/book", "/book/{id}"] {
        assert!(at_catch_all[0].contains(&format!("{protected}\"")), "warning does not name {protected}: {out:?}");
    }
    // /health is public itself: nothing to shadow.
    assert!(!at_catch_all[0].contains("/health"), "{out:?}");
    assert_eq!(found.len(), 1, "only the catch-all is beneath protected routes: {out:?}");

    // A JWT route with a weaker scope requirement is reported the same way; one that demands at
    // least what the narrower route does is not; nor is a valid config without such routes.
    let weaker = "\n[[routes]]\npath = \"/admin/{rest+}\"\nmethods = [\"ANY\"]\nupstream = \"books\"\n";
    let text = format!("{HEAD}{ROUTES}{ADMIN_ROUTES}{weaker}");
    let (_dir, path) = write_config(&text);
    let out = check(&path, &[], &[]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let found = warnings(&out, &path);
    let (start, end) = route_block(&text, "/admin/{rest+}");
    assert!(
        found.len() == 1 && (start..=end).contains(&found[0].0) && found[0].1.contains("/admin/{id}/keys\""),
        "want one warning at /admin/{{rest+}} naming /admin/{{id}}/keys: {out:?}"
    );

    let as_strict =
        "\n[[routes]]\npath = \"/admin/{rest+}\"\nscopes_all = [\"API/keys\", \"API/admin\"]\nupstream = \"books\"\n";
    for text in [format!("{HEAD}{ROUTES}{ADMIN_ROUTES}{as_strict}"), valid()] {
        let (_dir, path) = write_config(&text);
        let out = check(&path, &[], &[]).await;
        assert_eq!(out.code, Some(0), "{out:?}");
        assert!(!out.stderr.contains("warning"), "unexpected warning: {out:?}");
    }
}

/// Literal segments match whatever their ASCII case, so two templates that differ only in case
/// claim the same requests; a `;` can never match (requests with one are refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_that_fold_together_or_hold_a_semicolon_are_errors() {
    let text = format!(
        "{}\n[[routes]]\npath = \"/BOOK\"\nmethods = [\"GET\", \"PUT\"]\nscopes = [\"x\"]\nupstream = \"books\"\n",
        valid()
    );
    let (_dir, path) = write_config(&text);
    let out = check(&path, &[], &[]).await;
    assert_eq!(out.code, Some(2), "{out:?}");
    let (start, end) = route_block(&text, "\"/BOOK\"");
    let first = out.stderr.lines().next().unwrap_or("");
    assert!(
        parse_pos(first, &path).is_some_and(|(l, c)| c.is_some() && (start..=end).contains(&l)),
        "want an error within lines {start}..={end}: {out:?}"
    );

    for bad in ["/book;v=1", "/a/%3B"] {
        let text = format!("{}\n[[routes]]\npath = \"{bad}\"\nauth = \"none\"\nupstream = \"books\"\n", valid());
        let (_dir, path) = write_config(&text);
        let out = check(&path, &[], &[]).await;
        assert_error_at(&out, &path, line_of(&text, bad), &[1, col_of(&text, &format!("\"{bad}\""))]);
    }
}

/// Route methods are upper-case tokens, like the methods requests may use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_methods_are_upper_case_tokens() {
    for (methods, ok) in [
        (r#"["GET", "HEAD"]"#, true),
        (r#"["M-SEARCH"]"#, true),
        (r#"["PROPFIND"]"#, true),
        (r#"["Get"]"#, false),
        (r#"["get"]"#, false),
        (r#"["G T"]"#, false),
        (r#"["GET/"]"#, false),
        (r#"[""]"#, false),
    ] {
        let text = format!(
            "{}\n[[routes]]\npath = \"/m\"\nmethods = {methods}\nauth = \"none\"\nupstream = \"books\"\n",
            valid()
        );
        let (_dir, path) = write_config(&text);
        let out = check(&path, &[], &[]).await;
        if ok {
            assert_eq!(out.code, Some(0), "{methods}: {out:?}");
        } else {
            let line = line_of(&text, &format!("methods = {methods}"));
            assert_error_at(&out, &path, line, &(1..=80).collect::<Vec<_>>());
        }
    }
}

/// A `jwks_file` is read with the issuer's own `algorithms`: a file with no key usable for them
/// could never verify a token, so `check` refuses it at the `jwks_file` line (exit 2), and
/// accepts the same file once the algorithms match its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_file_without_a_key_for_the_issuers_algorithms_is_an_error() {
    // The file holds one RS256 key; the issuer allows ES256 only.
    let text = valid().replace("jwks_file = \"jwks.json\"", "jwks_file = \"jwks.json\"\nalgorithms = [\"ES256\"]");
    let (_dir, path) = write_config(&text);
    let out = check(&path, &[], &[]).await;
    assert_error_at(&out, &path, line_of(&text, "jwks_file"), &[1, col_of(&text, "\"jwks.json\"")]);
    assert!(out.stderr.contains("jwks.json") && out.stderr.contains("no usable"), "{out:?}");

    // An ES256 key in the file: the same config is valid.
    let (dir, path) = write_config(&text);
    let ec = TestKey::generate(Algorithm::ES256, "cfg-ec");
    std::fs::write(dir.path().join("jwks.json"), serde_json::json!({ "keys": [ec.jwk()] }).to_string()).unwrap();
    let out = check(&path, &[], &[]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo").arg(path).status().expect("run mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Every file the config names, and the config itself, is read only when it is a regular file
/// and only up to a bound: a FIFO (whose open blocks until a writer comes), a device such as
/// `/dev/zero` (which never ends) or an oversized file is an error at its line, at once, not a
/// `check` or a start that never returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_files_must_be_regular_and_bounded() {
    // A jwks_file that is a FIFO, a device, or longer than a JWKS document may be.
    for (what, target) in [("fifo", "jwks.fifo"), ("device", "/dev/zero"), ("oversized", "big.json")] {
        let text = valid().replace("jwks_file = \"jwks.json\"", &format!("jwks_file = \"{target}\""));
        let (dir, path) = write_config(&text);
        match what {
            "fifo" => mkfifo(&dir.path().join(target)),
            "oversized" => {
                let mut doc = " ".repeat(1 << 20);
                doc.push_str(r#"{"keys":[]}"#);
                std::fs::write(dir.path().join(target), doc).unwrap();
            }
            _ => {}
        }
        let out = check(&path, &[], &[]).await;
        assert_error_at(&out, &path, line_of(&text, "jwks_file"), &[1, col_of(&text, &format!("\"{target}\""))]);
        let why = if what == "oversized" { "larger than 1 MiB" } else { "not a regular file" };
        assert!(out.stderr.contains(why), "{what}: {out:?}");
    }

    // A TLS certificate that is a FIFO.
    let (dir, path) = write_config(&valid());
    mkfifo(&dir.path().join("cert.pem"));
    let key = TestKey::generate(Algorithm::ES256, "unused");
    std::fs::write(dir.path().join("key.pem"), key.public_key_pem()).unwrap();
    let text = valid().replace("[server]\n", "[server]\ntls = { cert = \"cert.pem\", key = \"key.pem\" }\n");
    assert_ne!(text, valid(), "the config has a [server] table");
    std::fs::write(&path, &text).unwrap();
    let out = check(&path, &[], &[]).await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("cert.pem") && out.stderr.contains("not a regular file"), "{out:?}");

    // The config itself.
    let fifo = dir.path().join("gateway.fifo");
    mkfifo(&fifo);
    let out = check(&fifo, &[], &[]).await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("not a regular file"), "{out:?}");
}
