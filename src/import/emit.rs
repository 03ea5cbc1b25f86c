//! A [`Plan`] as a commented gateway.toml. Values go through the `toml` crate's own
//! formatting (escaping included); the layout and the comments are written here.

use std::fmt::Write as _;

use base64::Engine as _;

use super::{url_var, Action, ImportArgs, Outcome, Plan, Refusal, ResourceServer, TrustedIssuer};

/// A TOML value for `s`, escaped by the toml crate.
fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn list(items: &[String]) -> String {
    toml::Value::Array(items.iter().map(|s| toml::Value::String(s.clone())).collect()).to_string()
}

/// Text safe for a `#` comment: one line, no control characters.
fn comment(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn new_secret() -> Result<String, Refusal> {
    let mut bytes = [0u8; 24];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| Refusal("cannot generate a random client secret".to_owned()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Resource servers for the scopes the routes use, when the input defines none (an OpenAPI
/// export has no Cognito resources): `order/post.order` → server `order`, scope `post.order`.
fn derived_resource_servers(plan: &Plan) -> Vec<ResourceServer> {
    let mut out: Vec<ResourceServer> = Vec::new();
    for r in &plan.routes {
        for s in r.scopes.iter().flatten() {
            let Some((id, name)) = s.split_once('/') else { continue };
            if id.is_empty() || name.is_empty() {
                continue;
            }
            match out.iter_mut().find(|rs| rs.identifier == id) {
                Some(rs) => {
                    if !rs.scopes.iter().any(|x| x == name) {
                        rs.scopes.push(name.to_owned());
                    }
                }
                None => out.push(ResourceServer {
                    identifier: id.to_owned(),
                    scopes: vec![name.to_owned()],
                    source: "the scopes the routes require".to_owned(),
                }),
            }
        }
    }
    out
}

pub(crate) fn emit(args: &ImportArgs, inputs: &str, plan: Plan) -> Result<Outcome, Refusal> {
    let mut t = String::new();
    let mut secrets = Vec::new();
    let mut placeholders: Vec<(String, String)> = Vec::new();
    let format = match args.format {
        super::Format::Cloudformation => "cloudformation",
        super::Format::Openapi => "openapi",
    };
    let _ = writeln!(t, "# gateway.toml written by `scopegate import {format}` from {}.", comment(inputs));
    let _ = writeln!(t, "# Review it, then validate it with `scopegate check --config gateway.toml`.");
    let _ = writeln!(t, "# What the import could not map was printed as \"not mapped: ...\" lines.");
    if !plan.not_mapped.is_empty() {
        let _ = writeln!(t, "# Not mapped:");
        for l in &plan.not_mapped {
            let _ = writeln!(t, "#   - {}", comment(l));
        }
    }
    let _ = writeln!(t, "\n[server]\nlisten = \"0.0.0.0:8080\"\n");

    if args.keep_issuer {
        if plan.issuers.is_empty() {
            return Err(Refusal(
                "--keep-issuer: the input defines no Cognito user pool or JWT authorizer to keep trusting".to_owned(),
            ));
        }
        let _ = writeln!(t, "# Tokens are still issued by the stack's own issuer (your Cognito user pool or JWT");
        let _ = writeln!(t, "# authorizer's issuer); the gateway checks them against its published keys.");
        let _ = writeln!(t, "# Moving off Cognito instead: re-run the import without --keep-issuer to get the");
        let _ = writeln!(t, "# built-in issuer with your resource servers and app clients.");
        let mut seen: Vec<String> = Vec::new();
        for i in &plan.issuers {
            let issuer_value = match &i.issuer {
                Ok(url) => url.clone(),
                Err(_) => format!("${{{}_ISSUER}}", i.var),
            };
            if seen.contains(&issuer_value) {
                continue;
            }
            seen.push(issuer_value.clone());
            write_trusted(&mut t, i, &issuer_value, &mut placeholders);
        }
        if !plan.clients.is_empty() || !plan.resource_servers.is_empty() {
            let _ = writeln!(t, "# The stack's resource servers and app clients stay in Cognito:");
            for rs in &plan.resource_servers {
                let _ = writeln!(
                    t,
                    "#   resource server {} (scopes {})",
                    comment(&rs.identifier),
                    comment(&rs.scopes.join(" "))
                );
            }
            for c in &plan.clients {
                let _ = writeln!(
                    t,
                    "#   app client {} (scopes {})",
                    comment(&c.client_id),
                    comment(&c.allowed_scopes.join(" "))
                );
            }
            t.push('\n');
        }
    } else {
        let _ = writeln!(t, "# The built-in issuer takes Cognito's place: clients get tokens from POST /oauth2/token");
        let _ = writeln!(t, "# on this gateway (client_credentials, HTTP Basic or form credentials), and the gateway");
        let _ = writeln!(t, "# trusts them without an [[auth.issuers]] entry. Set `issuer` to the URL clients use.");
        let _ = writeln!(t, "# Keeping your real Cognito user pool instead: re-run the import with --keep-issuer,");
        let _ = writeln!(t, "# which writes [[auth.issuers]] for it.");
        for i in &plan.issuers {
            let shown = match &i.issuer {
                Ok(u) => u.clone(),
                Err(e) => e.clone(),
            };
            let _ = writeln!(t, "# Replaced: {} (issuer {})", comment(&i.source), comment(&shown));
        }
        let _ = writeln!(t, "[issuer]\nissuer = {}\ntoken_ttl = \"1h\"\n", q(&args.issuer));
        let derived;
        let servers = if plan.resource_servers.is_empty() {
            derived = derived_resource_servers(&plan);
            &derived
        } else {
            &plan.resource_servers
        };
        for rs in servers {
            let _ = writeln!(t, "# From {}", comment(&rs.source));
            let _ = writeln!(
                t,
                "[[issuer.resource_servers]]\nidentifier = {}\nscopes = {}\n",
                q(&rs.identifier),
                list(&rs.scopes)
            );
        }
        for c in &plan.clients {
            let secret = new_secret()?;
            let hash = crate::issuer::hash_secret(secret.as_bytes()).map_err(Refusal)?;
            let _ = writeln!(t, "# From {}. Its secret was printed once by the import;", comment(&c.source));
            let _ = writeln!(t, "# a new one: `scopegate hash-secret`, and replace the hash.");
            let _ = writeln!(
                t,
                "[[issuer.clients]]\nclient_id = {}\nclient_secret_hash = {}\nallowed_scopes = {}\n",
                q(&c.client_id),
                q(&hash),
                list(&c.allowed_scopes)
            );
            secrets.push((c.client_id.clone(), secret));
        }
        if plan.clients.is_empty() {
            let _ = writeln!(t, "# No client-credentials app client was found: add [[issuer.clients]] entries");
            let _ = writeln!(t, "# (client_secret_hash from `scopegate hash-secret`).\n");
        }
    }

    for (name, u) in &plan.upstreams {
        let _ = writeln!(t, "# {}", comment(&u.source));
        let url = match &u.url {
            Some(url) => q(url),
            None => {
                let var = url_var(name);
                placeholders.push((name.clone(), var.clone()));
                let _ = writeln!(t, "# Set {var}, or re-run the import with --upstream {name}=URL.");
                q(&format!("${{{var}}}"))
            }
        };
        let _ = writeln!(t, "[upstreams.{name}]\nurl = {url}\n");
    }

    for r in &plan.routes {
        let _ = writeln!(t, "# From {}", comment(&r.source));
        let _ = writeln!(t, "[[routes]]\npath = {}\nmethods = {}", q(&r.path), list(&r.methods));
        match &r.scopes {
            None => {
                let _ = writeln!(t, "auth = \"none\"");
            }
            Some(s) if s.is_empty() => {}
            Some(s) => {
                let _ = writeln!(t, "scopes = {}", list(s));
            }
        }
        match &r.action {
            Action::Upstream(u) => {
                let _ = writeln!(t, "upstream = {}", q(u));
            }
            Action::Mock { status, content_type, body } => {
                let mut m = toml::map::Map::new();
                m.insert("status".to_owned(), toml::Value::Integer(i64::from(*status)));
                m.insert("content_type".to_owned(), toml::Value::String(content_type.clone()));
                m.insert("body".to_owned(), toml::Value::String(body.clone()));
                let _ = writeln!(t, "response = {}", toml::Value::Table(m));
            }
        }
        t.push('\n');
    }
    Ok(Outcome { toml: t, secrets, not_mapped: plan.not_mapped, placeholders })
}

fn write_trusted(t: &mut String, i: &TrustedIssuer, issuer: &str, placeholders: &mut Vec<(String, String)>) {
    let _ = writeln!(t, "# From {}", comment(&i.source));
    if let Err(expr) = &i.issuer {
        let var = format!("{}_ISSUER", i.var);
        let _ = writeln!(t, "# The template computes the issuer at deploy time: {}", comment(expr));
        let _ = writeln!(t, "# Set {var} to it (for Cognito: https://cognito-idp.REGION.amazonaws.com/POOL_ID).");
        placeholders.push((format!("issuer of {}", i.source), var));
    }
    let _ = writeln!(t, "[[auth.issuers]]\nissuer = {}", q(issuer));
    if i.cognito {
        let _ = writeln!(t, "jwks_uri = {}", q(&format!("{issuer}/.well-known/jwks.json")));
    } else {
        let _ = writeln!(t, "discovery = true");
    }
    if !i.audiences.is_empty() {
        let mut auds = Vec::new();
        for (n, a) in i.audiences.iter().enumerate() {
            match a {
                Ok(a) => auds.push(a.clone()),
                Err(expr) => {
                    let var =
                        if n == 0 { format!("{}_AUDIENCE", i.var) } else { format!("{}_AUDIENCE_{}", i.var, n + 1) };
                    let _ = writeln!(t, "# audience computed at deploy time: {} (set {var})", comment(expr));
                    placeholders.push((format!("audience of {}", i.source), var.clone()));
                    auds.push(format!("${{{var}}}"));
                }
            }
        }
        let _ = writeln!(t, "audiences = {}", list(&auds));
    }
    t.push('\n');
}
