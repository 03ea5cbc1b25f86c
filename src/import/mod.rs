//! `scopegate import`: writes a gateway.toml from what an API Gateway + Cognito user already
//! has: a CloudFormation / SAM template (YAML or JSON; a CDK app's `cdk synth` output is one) or
//! an OpenAPI 3 / Swagger 2 export of an API Gateway API.
//!
//! Each reader turns its input into a [`Plan`] (routes, upstreams, resource servers, app
//! clients, trusted issuers, and what could not be mapped); [`emit`] writes the plan as a
//! commented gateway.toml. A refusal (unreadable input, no API in it, an output file in the
//! way) writes nothing.

mod cloudformation;
mod emit;
mod expr;
mod openapi;
mod yaml;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

pub use yaml::parse_document;

/// What `scopegate import` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// CloudFormation or SAM template, YAML or JSON (also `cdk synth` output)
    Cloudformation,
    /// OpenAPI 3 or Swagger 2 export of an API Gateway API
    Openapi,
}

/// `scopegate import FORMAT FILE... [--upstream NAME=URL]... [-o PATH]`
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Input format
    #[arg(value_enum)]
    pub format: Format,
    /// Template or export files; several files are read as one stack (e.g. the stacks of one CDK app)
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Upstream URL for an integration, by the upstream name the import prints (or the integration's logical id)
    #[arg(long = "upstream", value_name = "NAME=URL")]
    pub upstreams: Vec<String>,
    /// Where to write gateway.toml [default: standard output]
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Overwrite the -o file if it exists
    #[arg(long)]
    pub force: bool,
    /// `iss` of the built-in issuer's tokens
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    pub issuer: String,
    /// Keep trusting the stack's own token issuer (the Cognito user pool or JWT authorizer issuer)
    /// through [[auth.issuers]] instead of moving its resource servers and clients to the built-in issuer
    #[arg(long)]
    pub keep_issuer: bool,
}

/// A route to write.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub path: String,
    /// `["ANY"]` or upper-case methods.
    pub methods: Vec<String>,
    /// `None`: a public route; `Some(scopes)`: a token is needed, with one of `scopes` if any.
    pub scopes: Option<Vec<String>>,
    pub action: Action,
    /// Where it came from, for the comment above it.
    pub source: String,
}

#[derive(Debug, Clone)]
pub(crate) enum Action {
    /// Key into [`Plan::upstreams`].
    Upstream(String),
    Mock {
        status: u16,
        content_type: String,
        body: String,
    },
}

/// An upstream to write; `url: None` is written as a `${NAME_URL}` placeholder.
#[derive(Debug, Clone, Default)]
pub(crate) struct Upstream {
    pub url: Option<String>,
    /// Logical ids / names the user may give to `--upstream` besides the upstream's name.
    pub aliases: Vec<String>,
    pub source: String,
}

#[derive(Debug, Clone)]
pub(crate) struct ResourceServer {
    pub identifier: String,
    pub scopes: Vec<String>,
    pub source: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Client {
    pub client_id: String,
    pub allowed_scopes: Vec<String>,
    pub source: String,
}

/// A token issuer the stack trusts (Cognito user pool authorizer, JWT authorizer).
#[derive(Debug, Clone)]
pub(crate) struct TrustedIssuer {
    /// The issuer URL, or `Err(expression)` when the template only computes it at deploy time.
    pub issuer: Result<String, String>,
    /// Placeholder variable stem for what could not be resolved, e.g. `JWT_AUTHORIZER`.
    pub var: String,
    pub audiences: Vec<Result<String, String>>,
    /// A Cognito user pool: keys at `{issuer}/.well-known/jwks.json`, access tokens for scopes.
    pub cognito: bool,
    pub source: String,
}

#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub routes: Vec<Route>,
    pub upstreams: BTreeMap<String, Upstream>,
    pub resource_servers: Vec<ResourceServer>,
    pub clients: Vec<Client>,
    pub issuers: Vec<TrustedIssuer>,
    pub not_mapped: Vec<String>,
}

impl Plan {
    pub(crate) fn not_mapped(&mut self, line: impl Into<String>) {
        let line = line.into();
        if !self.not_mapped.contains(&line) {
            self.not_mapped.push(line);
        }
    }

    /// Adds (or reuses) an upstream.
    pub(crate) fn upstream(&mut self, name: &str, url: Option<String>, aliases: &[&str], source: &str) -> String {
        let u = self.upstreams.entry(name.to_owned()).or_insert_with(|| Upstream {
            url: None,
            aliases: Vec::new(),
            source: source.to_owned(),
        });
        if u.url.is_none() {
            u.url = url;
        }
        for a in aliases {
            if !u.aliases.iter().any(|x| x == a) && *a != name {
                u.aliases.push((*a).to_owned());
            }
        }
        name.to_owned()
    }
}

/// Turns a logical id or name into an upstream name: `OrderLambdaIntegration` →
/// `order_lambda_integration`, `get-order` → `get_order`.
pub(crate) fn snake(name: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = name.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_alphanumeric() {
            let boundary = c.is_ascii_uppercase()
                && i > 0
                && (chars[i - 1].is_ascii_lowercase()
                    || chars[i - 1].is_ascii_digit()
                    || (chars[i - 1].is_ascii_uppercase() && chars.get(i + 1).is_some_and(char::is_ascii_lowercase)));
            if boundary && !out.ends_with('_') && !out.is_empty() {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    let out = out.trim_end_matches('_').to_owned();
    if out.is_empty() {
        "upstream".to_owned()
    } else {
        out
    }
}

/// The environment variable an upstream's placeholder URL reads.
pub(crate) fn url_var(name: &str) -> String {
    format!("{}_URL", name.to_ascii_uppercase().replace('-', "_"))
}

/// A refusal: message for stderr; the exit code is 2.
#[derive(Debug)]
pub struct Refusal(pub String);

/// What a successful import produced.
pub struct Outcome {
    /// The gateway.toml text.
    pub toml: String,
    /// `(client_id, secret)` for each generated client secret.
    pub secrets: Vec<(String, String)>,
    /// `not mapped: ...` lines.
    pub not_mapped: Vec<String>,
    /// Upstreams written with a placeholder URL: `(name, variable)`.
    pub placeholders: Vec<(String, String)>,
}

/// Reads the inputs and builds the gateway.toml text; writes nothing.
pub fn build(args: &ImportArgs) -> Result<Outcome, Refusal> {
    let mut docs = Vec::new();
    for f in &args.files {
        let text = std::fs::read_to_string(f).map_err(|e| Refusal(format!("{}: cannot read: {e}", f.display())))?;
        let doc = parse_document(&text).map_err(|e| Refusal(format!("{}: {e}", f.display())))?;
        if !doc.is_object() {
            return Err(Refusal(format!(
                "{}: not a {} document (no mapping at the top)",
                f.display(),
                kind(args.format)
            )));
        }
        docs.push((f.clone(), doc));
    }
    let mut plan = Plan::default();
    match args.format {
        Format::Cloudformation => cloudformation::read(&docs, &mut plan)?,
        Format::Openapi => {
            for (path, doc) in &docs {
                openapi::read(doc, &display_name(path), &mut plan)?;
            }
        }
    }
    dedupe_routes(&mut plan);
    if plan.routes.is_empty() {
        return Err(Refusal(format!(
            "no API found: {} defines no API Gateway route or method (nothing to write)",
            names(&args.files)
        )));
    }
    apply_upstream_flags(&args.upstreams, &mut plan)?;
    if !args.issuer.starts_with("http://") && !args.issuer.starts_with("https://") || args.issuer.ends_with('/') {
        return Err(Refusal(format!(
            "--issuer {:?}: must be an http:// or https:// URL without a trailing /",
            args.issuer
        )));
    }
    emit::emit(args, &names(&args.files), plan)
}

/// `/a/{id}/{rest+}` → `/a/{}/{+}`: two routes of one shape and method would overlap.
fn shape(path: &str) -> String {
    path.split('/')
        .map(|seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) if name.ends_with('+') => "{+}",
            Some(_) => "{}",
            None => seg,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Keeps the first of routes that would answer the same requests (the same API read twice,
/// say), and reports the others.
fn dedupe_routes(plan: &mut Plan) {
    let mut seen: Vec<(String, String, String)> = Vec::new();
    let mut dropped = Vec::new();
    plan.routes.retain(|r| {
        let mut keep = true;
        for m in &r.methods {
            let key = (shape(&r.path), m.clone());
            if let Some((_, _, first)) = seen.iter().find(|(p, mm, _)| *p == key.0 && *mm == key.1) {
                dropped.push(format!("{m} {} from {}: the same route as from {first}; left out", r.path, r.source));
                keep = false;
            }
        }
        if keep {
            for m in &r.methods {
                seen.push((shape(&r.path), m.clone(), r.source.clone()));
            }
        }
        keep
    });
    for d in dropped {
        plan.not_mapped(d);
    }
}

fn kind(f: Format) -> &'static str {
    match f {
        Format::Cloudformation => "CloudFormation",
        Format::Openapi => "OpenAPI",
    }
}

fn display_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn names(files: &[PathBuf]) -> String {
    files.iter().map(|f| display_name(f)).collect::<Vec<_>>().join(", ")
}

fn apply_upstream_flags(flags: &[String], plan: &mut Plan) -> Result<(), Refusal> {
    for flag in flags {
        let Some((name, url)) = flag.split_once('=') else {
            return Err(Refusal(format!("--upstream {flag:?}: expected NAME=URL")));
        };
        let valid = (url.starts_with("http://") || url.starts_with("https://"))
            && url.parse::<http::Uri>().is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()));
        if !valid {
            return Err(Refusal(format!("--upstream {name}: {url:?} is not an http:// or https:// URL")));
        }
        let key = plan
            .upstreams
            .iter()
            .find(|(n, u)| *n == name || snake(name) == **n || u.aliases.iter().any(|a| a == name))
            .map(|(n, _)| n.clone());
        let Some(key) = key else {
            let known: Vec<&str> = plan.upstreams.keys().map(String::as_str).collect();
            return Err(Refusal(format!(
                "--upstream {name}: no integration of that name (the upstreams are: {})",
                known.join(", ")
            )));
        };
        if let Some(u) = plan.upstreams.get_mut(&key) {
            u.url = Some(url.to_owned());
        }
    }
    Ok(())
}

/// `scopegate import`: exit 0 written, 2 refused (nothing written).
pub fn main(args: &ImportArgs) -> u8 {
    if let Some(out) = &args.output {
        if out.exists() && !args.force {
            eprintln!("{}: exists; pass --force to overwrite it (nothing written)", out.display());
            return 2;
        }
    }
    let outcome = match build(args) {
        Ok(o) => o,
        Err(Refusal(msg)) => {
            eprintln!("scopegate import: {msg}");
            return 2;
        }
    };
    match &args.output {
        Some(out) => {
            if let Err(e) = write_new(out, outcome.toml.as_bytes(), args.force) {
                eprintln!("{}: cannot write: {e} (nothing written)", out.display());
                return 2;
            }
            eprintln!("wrote {}", out.display());
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            if stdout.write_all(outcome.toml.as_bytes()).and_then(|()| stdout.flush()).is_err() {
                return 2;
            }
        }
    }
    report(&outcome);
    0
}

/// Prints, on stderr, the secrets (once), the placeholders and what was not mapped.
fn report(o: &Outcome) {
    let mut err = std::io::stderr().lock();
    for (id, secret) in &o.secrets {
        let _ = writeln!(err, "client secret for {id:?} (shown only now; gateway.toml keeps its hash): {secret}");
    }
    for (name, var) in &o.placeholders {
        if name.contains(' ') {
            let _ = writeln!(err, "{name}: written as ${{{var}}}; set {var}");
        } else {
            let _ = writeln!(err, "upstream {name}: url is ${{{var}}}; set {var} or re-run with --upstream {name}=URL");
        }
    }
    for line in &o.not_mapped {
        let _ = writeln!(err, "not mapped: {line}");
    }
}

/// Writes `path` through a temporary file in the same directory, so a failed write leaves
/// nothing behind; without `force` an existing file is never replaced.
fn write_new(path: &Path, bytes: &[u8], force: bool) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.import-{}", display_name(path), uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        if force {
            std::fs::rename(&tmp, path)
        } else {
            // hard_link fails if `path` appeared meanwhile: never overwrite without --force.
            std::fs::hard_link(&tmp, path)
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_names() {
        assert_eq!(snake("OrderLambdaIntegration"), "order_lambda_integration");
        assert_eq!(snake("get-order"), "get_order");
        assert_eq!(snake("ProxyLambda"), "proxy_lambda");
        assert_eq!(snake("APIHandler"), "api_handler");
        assert_eq!(snake("petstore.example.com"), "petstore_example_com");
        assert_eq!(snake("--"), "upstream");
    }

    #[test]
    fn overlapping_routes_are_kept_once() {
        let route = |path: &str, m: &str, source: &str| Route {
            path: path.to_owned(),
            methods: vec![m.to_owned()],
            scopes: None,
            action: Action::Upstream("u".to_owned()),
            source: source.to_owned(),
        };
        let mut plan = Plan {
            routes: vec![
                route("/a/{id}", "GET", "first"),
                route("/a/{x}", "GET", "second"),
                route("/a/{x}", "POST", "third"),
                route("/a/{p+}", "GET", "fourth"),
            ],
            ..Plan::default()
        };
        dedupe_routes(&mut plan);
        let kept: Vec<&str> = plan.routes.iter().map(|r| r.source.as_str()).collect();
        assert_eq!(kept, ["first", "third", "fourth"]);
        assert_eq!(plan.not_mapped.len(), 1);
        assert!(plan.not_mapped[0].contains("GET /a/{x} from second: the same route as from first"));
    }
}
