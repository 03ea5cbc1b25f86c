//! CloudFormation / SAM templates (and `cdk synth` output) to a [`Plan`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Map, Value};

use super::expr::{closing_brace, compact, mock_from, refs};
use super::{snake, Action, Client, Plan, Refusal, ResourceServer, Route, TrustedIssuer};

/// Resource types that have no counterpart in scopegate, with what to call them.
const UNMAPPED: &[(&str, &str)] = &[
    ("AWS::ApiGateway::ApiKey", "API key"),
    ("AWS::ApiGateway::UsagePlan", "usage plan"),
    ("AWS::ApiGateway::UsagePlanKey", "usage plan key"),
    ("AWS::ApiGateway::RequestValidator", "request validator"),
    ("AWS::ApiGateway::GatewayResponse", "gateway response"),
    ("AWS::ApiGateway::Model", "model (request/response schema)"),
    ("AWS::ApiGateway::DomainName", "custom domain name"),
    ("AWS::ApiGateway::BasePathMapping", "base path mapping"),
    ("AWS::ApiGateway::VpcLink", "VPC link"),
    ("AWS::ApiGateway::ClientCertificate", "client certificate"),
    ("AWS::ApiGatewayV2::DomainName", "custom domain name"),
    ("AWS::ApiGatewayV2::ApiMapping", "API mapping"),
    ("AWS::ApiGatewayV2::VpcLink", "VPC link"),
    ("AWS::ApiGatewayV2::IntegrationResponse", "integration response"),
    ("AWS::ApiGatewayV2::RouteResponse", "route response"),
    ("AWS::ApiGatewayV2::Model", "model (request/response schema)"),
];

pub(crate) struct Ctx<'a> {
    resources: BTreeMap<&'a str, &'a Value>,
    params: Map<String, Value>,
    mappings: Map<String, Value>,
    /// SAM's `Globals` section.
    globals: Map<String, Value>,
}

static NULL: Value = Value::Null;

impl<'a> Ctx<'a> {
    fn ty(&self, id: &str) -> Option<&'a str> {
        self.resources.get(id).and_then(|r| r.get("Type")).and_then(Value::as_str)
    }

    fn props(&self, id: &str) -> &'a Value {
        self.resources.get(id).and_then(|r| r.get("Properties")).unwrap_or(&NULL)
    }

    /// The name a person gave the resource: the construct id of a CDK app (from its
    /// `aws:cdk:path` metadata), else the logical id.
    fn name(&self, id: &str) -> String {
        let path = self
            .resources
            .get(id)
            .and_then(|r| r.get("Metadata"))
            .and_then(|m| m.get("aws:cdk:path"))
            .and_then(Value::as_str);
        if let Some(path) = path {
            let parts: Vec<&str> = path.split('/').collect();
            let last = parts.len().checked_sub(1).map_or("", |i| parts[i]);
            let pick =
                if matches!(last, "Resource" | "Default") && parts.len() >= 2 { parts[parts.len() - 2] } else { last };
            if !pick.is_empty() {
                return pick.to_owned();
            }
        }
        id.to_owned()
    }

    /// A value as a literal string, resolving what the template itself determines (`!Ref` of a
    /// parameter with a default or of a resource server, `!Sub`, `!Join`, `!Select`,
    /// `!FindInMap`); anything only known at deploy time is `Err(the expression)`.
    /// A resolved value that still holds `${...}` (a Serverless Framework variable, say) is
    /// not resolved either: the config would read it as an environment variable.
    pub(crate) fn resolve(&self, v: &Value) -> Result<String, String> {
        self.res(v, 0).ok().filter(|s| !s.contains("${")).ok_or_else(|| compact(v))
    }

    fn res(&self, v: &Value, depth: usize) -> Result<String, ()> {
        if depth > 32 {
            return Err(());
        }
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            Value::Object(m) if m.len() == 1 => {
                let (k, a) = m.iter().next().ok_or(())?;
                match k.as_str() {
                    "Ref" => self.res_ref(a.as_str().ok_or(())?, depth),
                    "Fn::Sub" => match a {
                        Value::String(s) => self.sub(s, None, depth),
                        Value::Array(x) if x.len() == 2 => self.sub(x[0].as_str().ok_or(())?, x[1].as_object(), depth),
                        _ => Err(()),
                    },
                    "Fn::Join" => {
                        let x = a.as_array().filter(|x| x.len() == 2).ok_or(())?;
                        let sep = x[0].as_str().ok_or(())?;
                        let items = self.res_list(&x[1], depth)?;
                        Ok(items.join(sep))
                    }
                    "Fn::Select" => {
                        let x = a.as_array().filter(|x| x.len() == 2).ok_or(())?;
                        let i: usize = self.res(&x[0], depth + 1)?.parse().map_err(|_| ())?;
                        self.res_list(&x[1], depth)?.into_iter().nth(i).ok_or(())
                    }
                    "Fn::FindInMap" => {
                        let x = a.as_array().filter(|x| x.len() >= 3).ok_or(())?;
                        let m = self.res(&x[0], depth + 1)?;
                        let k1 = self.res(&x[1], depth + 1)?;
                        let k2 = self.res(&x[2], depth + 1)?;
                        let found = self.mappings.get(&m).and_then(|m| m.get(&k1)).and_then(|m| m.get(&k2)).ok_or(())?;
                        self.res(found, depth + 1)
                    }
                    _ => Err(()),
                }
            }
            _ => Err(()),
        }
    }

    fn res_list(&self, v: &Value, depth: usize) -> Result<Vec<String>, ()> {
        match v {
            Value::Array(items) => items.iter().map(|i| self.res(i, depth + 1)).collect(),
            Value::Object(m) if m.contains_key("Fn::Split") => {
                let x = m["Fn::Split"].as_array().filter(|x| x.len() == 2).ok_or(())?;
                let sep = x[0].as_str().filter(|s| !s.is_empty()).ok_or(())?;
                Ok(self.res(&x[1], depth + 1)?.split(sep).map(str::to_owned).collect())
            }
            Value::Object(m) if m.contains_key("Ref") => {
                let name = m["Ref"].as_str().ok_or(())?;
                let d = self.params.get(name).and_then(|p| p.get("Default")).ok_or(())?;
                Ok(self.res(d, depth + 1)?.split(',').map(|s| s.trim().to_owned()).collect())
            }
            _ => Err(()),
        }
    }

    fn res_ref(&self, name: &str, depth: usize) -> Result<String, ()> {
        if let Some(d) = self.params.get(name).and_then(|p| p.get("Default")) {
            return self.res(d, depth + 1);
        }
        if self.ty(name) == Some("AWS::Cognito::UserPoolResourceServer") {
            // Ref of a resource server is its identifier.
            return self.res(self.props(name).get("Identifier").ok_or(())?, depth + 1);
        }
        Err(())
    }

    fn sub(&self, tpl: &str, vars: Option<&Map<String, Value>>, depth: usize) -> Result<String, ()> {
        let mut out = String::new();
        let mut rest = tpl;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            if let Some(lit) = after.strip_prefix('!') {
                // `${!Literal}` is the literal text `${Literal}`.
                out.push_str("${");
                rest = lit;
                continue;
            }
            let end = closing_brace(after).ok_or(())?;
            let name = &after[..end];
            match vars.and_then(|v| v.get(name)) {
                Some(v) => out.push_str(&self.res(v, depth + 1)?),
                None if name.contains('.') => return Err(()),
                None => out.push_str(&self.res_ref(name, depth)?),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

pub(crate) fn read(docs: &[(PathBuf, Value)], plan: &mut Plan) -> Result<(), Refusal> {
    let mut ctx = Ctx { resources: BTreeMap::new(), params: Map::new(), mappings: Map::new(), globals: Map::new() };
    for (path, doc) in docs {
        let Some(resources) = doc.get("Resources").and_then(Value::as_object) else {
            let hint = if doc.get("openapi").is_some() || doc.get("swagger").is_some() {
                " (it is an OpenAPI document: use `scopegate import openapi`)"
            } else {
                ""
            };
            return Err(Refusal(format!(
                "{}: not a CloudFormation template: it has no Resources{hint}",
                path.display()
            )));
        };
        for (id, r) in resources {
            if !r.get("Type").is_some_and(Value::is_string) {
                return Err(Refusal(format!(
                    "{}: resource {id} has no Type: not a CloudFormation template",
                    path.display()
                )));
            }
            if ctx.resources.insert(id.as_str(), r).is_some() {
                plan.not_mapped(format!("resource {id}: defined in more than one file; the first one is used"));
            }
        }
        for key in ["Parameters", "Mappings", "Globals"] {
            if let Some(m) = doc.get(key).and_then(Value::as_object) {
                let into = match key {
                    "Parameters" => &mut ctx.params,
                    "Mappings" => &mut ctx.mappings,
                    _ => &mut ctx.globals,
                };
                for (k, v) in m {
                    into.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
    }
    let sam = |t: &Value| t.as_str().is_some_and(|t| t.starts_with("AWS::Serverless-"));
    let macros = docs.iter().filter_map(|(_, d)| d.get("Transform")).any(|t| match t {
        Value::Array(a) => !a.iter().all(sam),
        t => !sam(t),
    });
    if macros {
        plan.not_mapped("Transform: macros are expanded at deploy time; only the resources as written are read");
    }

    let ids: Vec<&str> = ctx.resources.keys().copied().collect();
    for &id in &ids {
        let ty = ctx.ty(id).unwrap_or("");
        match ty {
            "AWS::Cognito::UserPoolResourceServer" => resource_server(&ctx, id, plan),
            "AWS::Cognito::UserPoolClient" => client(&ctx, id, plan),
            "AWS::ApiGateway::Authorizer" => rest_authorizer(&ctx, id, plan),
            "AWS::ApiGatewayV2::Authorizer" => http_authorizer(&ctx, id, plan),
            "AWS::ApiGateway::Method" => rest_method(&ctx, id, plan),
            "AWS::ApiGatewayV2::Route" => http_route(&ctx, id, plan),
            "AWS::ApiGateway::RestApi"
            | "AWS::ApiGatewayV2::Api"
            | "AWS::Serverless::Api"
            | "AWS::Serverless::HttpApi" => {
                let p = ctx.props(id);
                let body = p.get("Body").or_else(|| p.get("DefinitionBody"));
                if let Some(body) = body.filter(|b| b.is_object()) {
                    super::openapi::read(body, &format!("{ty} {id}"), plan)?;
                } else if p.get("BodyS3Location").is_some() || p.get("DefinitionUri").is_some() {
                    plan.not_mapped(format!(
                        "{ty} {id}: its definition is in S3; import that file with `scopegate import openapi`"
                    ));
                }
                if ty == "AWS::ApiGatewayV2::Api" && p.get("Target").is_some() {
                    plan.not_mapped(format!("{ty} {id}: quick-create Target"));
                }
            }
            "AWS::ApiGateway::Stage" | "AWS::ApiGatewayV2::Stage" => {
                let p = ctx.props(id);
                let vars = p.get("Variables").or_else(|| p.get("StageVariables"));
                if vars.and_then(Value::as_object).is_some_and(|m| !m.is_empty()) {
                    plan.not_mapped(format!("{ty} {id}: stage variables"));
                }
                if p.get("MethodSettings").is_some()
                    || p.get("DefaultRouteSettings").is_some()
                    || p.get("RouteSettings").is_some()
                {
                    plan.not_mapped(format!("{ty} {id}: throttling / method settings"));
                }
            }
            "AWS::Serverless::Function" => sam_function(&ctx, id, plan),
            _ => {
                if let Some((_, what)) = UNMAPPED.iter().find(|(t, _)| *t == ty) {
                    plan.not_mapped(format!("{ty} {id}: {what}"));
                }
            }
        }
    }

    // A client may only be allowed scopes that a resource server of the file defines.
    let defined: Vec<String> = plan
        .resource_servers
        .iter()
        .flat_map(|rs| rs.scopes.iter().map(move |s| format!("{}/{}", rs.identifier, s)))
        .collect();
    let mut dropped = Vec::new();
    for c in &mut plan.clients {
        c.allowed_scopes.retain(|s| {
            let ok = defined.contains(s);
            if !ok {
                dropped.push(format!(
                    "client {}: scope {s:?} is defined by no resource server in the input; not granted",
                    c.client_id
                ));
            }
            ok
        });
    }
    for d in dropped {
        plan.not_mapped(d);
    }
    Ok(())
}

fn resource_server(ctx: &Ctx<'_>, id: &str, plan: &mut Plan) {
    let p = ctx.props(id);
    let identifier = match p.get("Identifier").map(|v| ctx.resolve(v)) {
        Some(Ok(i)) if !i.is_empty() && !i.contains(' ') && !i.contains('/') => i,
        Some(Ok(i)) => {
            plan.not_mapped(format!("resource server {id}: identifier {i:?} has spaces or a /"));
            return;
        }
        Some(Err(e)) => {
            plan.not_mapped(format!("resource server {id}: identifier {e} is only known at deploy time"));
            return;
        }
        None => {
            plan.not_mapped(format!("resource server {id}: no Identifier"));
            return;
        }
    };
    let mut scopes = Vec::new();
    for s in p.get("Scopes").and_then(Value::as_array).into_iter().flatten() {
        match s.get("ScopeName").map(|n| ctx.resolve(n)) {
            Some(Ok(n)) if !n.is_empty() && !n.contains(' ') => scopes.push(n),
            Some(Ok(n)) => plan.not_mapped(format!("resource server {id}: scope name {n:?}")),
            Some(Err(e)) => {
                plan.not_mapped(format!("resource server {id}: scope name {e} is only known at deploy time"))
            }
            None => {}
        }
    }
    plan.resource_servers.push(ResourceServer {
        identifier,
        scopes,
        source: format!("AWS::Cognito::UserPoolResourceServer {id}"),
    });
}

fn client(ctx: &Ctx<'_>, id: &str, plan: &mut Plan) {
    let p = ctx.props(id);
    let flows: Vec<String> = p
        .get("AllowedOAuthFlows")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|f| ctx.resolve(f).ok()).collect())
        .unwrap_or_default();
    if !flows.iter().any(|f| f == "client_credentials") {
        plan.not_mapped(format!(
            "app client {id}: no client_credentials flow (flows {flows:?}); the built-in issuer only grants client credentials"
        ));
        return;
    }
    let mut client_id = p
        .get("ClientName")
        .and_then(|n| ctx.resolve(n).ok())
        .filter(|n| !n.is_empty() && !n.contains(':') && !n.chars().any(char::is_control))
        .unwrap_or_else(|| ctx.name(id));
    let base = client_id.clone();
    let mut n = 2;
    while plan.clients.iter().any(|c| c.client_id == client_id) {
        client_id = format!("{base}-{n}");
        n += 1;
    }
    let mut allowed_scopes = Vec::new();
    for s in p.get("AllowedOAuthScopes").and_then(Value::as_array).into_iter().flatten() {
        match ctx.resolve(s) {
            Ok(s) => allowed_scopes.push(s),
            Err(e) => {
                plan.not_mapped(format!("client {client_id}: scope {e} is only known at deploy time; not granted"))
            }
        }
    }
    if p.get("GenerateSecret").is_some_and(|g| g == &Value::Bool(false) || g == "false") {
        plan.not_mapped(format!(
            "client {client_id}: GenerateSecret is false in the template; the built-in issuer needs a secret, so one is generated"
        ));
    }
    plan.clients.push(Client { client_id, allowed_scopes, source: format!("AWS::Cognito::UserPoolClient {id}") });
}

/// `arn:aws:cognito-idp:REGION:ACCOUNT:userpool/POOL` → the pool's issuer URL.
fn pool_issuer(arn: &str) -> Option<String> {
    let parts: Vec<&str> = arn.split(':').collect();
    if parts.len() == 6 && parts[2] == "cognito-idp" {
        let pool = parts[5].strip_prefix("userpool/")?;
        return Some(format!("https://cognito-idp.{}.amazonaws.com/{pool}", parts[3]));
    }
    None
}

fn var_stem(ctx: &Ctx<'_>, id: &str) -> String {
    snake(&ctx.name(id)).to_ascii_uppercase()
}

fn rest_authorizer(ctx: &Ctx<'_>, id: &str, plan: &mut Plan) {
    let p = ctx.props(id);
    let ty = p.get("Type").and_then(|t| ctx.resolve(t).ok()).unwrap_or_default();
    if ty != "COGNITO_USER_POOLS" {
        plan.not_mapped(format!(
            "AWS::ApiGateway::Authorizer {id}: {ty} (Lambda) authorizer; its routes need any valid token instead"
        ));
        return;
    }
    for arn in p.get("ProviderARNs").and_then(Value::as_array).into_iter().flatten() {
        let issuer = ctx.resolve(arn).and_then(|a| pool_issuer(&a).ok_or(a));
        plan.issuers.push(TrustedIssuer {
            issuer,
            var: var_stem(ctx, id),
            audiences: Vec::new(),
            cognito: true,
            source: format!("AWS::ApiGateway::Authorizer {id} (COGNITO_USER_POOLS)"),
        });
    }
}

fn http_authorizer(ctx: &Ctx<'_>, id: &str, plan: &mut Plan) {
    let p = ctx.props(id);
    let ty = p.get("AuthorizerType").and_then(|t| ctx.resolve(t).ok()).unwrap_or_default();
    let Some(jwt) = p.get("JwtConfiguration").filter(|_| ty == "JWT") else {
        plan.not_mapped(format!(
            "AWS::ApiGatewayV2::Authorizer {id}: {ty} (Lambda) authorizer; its routes need any valid token instead"
        ));
        return;
    };
    let issuer = jwt.get("Issuer").map_or_else(|| Err("(none)".to_owned()), |i| ctx.resolve(i));
    let cognito = match &issuer {
        Ok(i) => i.starts_with("https://cognito-idp."),
        Err(e) => e.contains("cognito-idp."),
    };
    let audiences = jwt
        .get("Audience")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|x| ctx.resolve(x)).collect())
        .unwrap_or_default();
    plan.issuers.push(TrustedIssuer {
        issuer,
        var: var_stem(ctx, id),
        audiences,
        cognito,
        source: format!("AWS::ApiGatewayV2::Authorizer {id} (JWT)"),
    });
}

/// The path of a REST API resource (`ResourceId` / `ParentId` value); the root is "".
fn rest_path(ctx: &Ctx<'_>, v: &Value, depth: usize) -> Result<String, String> {
    if depth > 64 {
        return Err("the resource tree is too deep or has a cycle".to_owned());
    }
    if let Some(g) = v.get("Fn::GetAtt") {
        let attr =
            g.get(1).and_then(Value::as_str).or_else(|| g.as_str().and_then(|s| s.split_once('.')).map(|(_, a)| a));
        if attr == Some("RootResourceId") {
            return Ok(String::new());
        }
    }
    if let Some(id) = v.get("Ref").and_then(Value::as_str) {
        if ctx.ty(id) == Some("AWS::ApiGateway::Resource") {
            let p = ctx.props(id);
            let parent = rest_path(ctx, p.get("ParentId").unwrap_or(&NULL), depth + 1)?;
            let part = ctx.resolve(p.get("PathPart").unwrap_or(&NULL))?;
            if part.is_empty() || part.contains('/') {
                return Err(format!("resource {id} has path part {part:?}"));
            }
            return Ok(format!("{parent}/{part}"));
        }
    }
    Err(compact(v))
}

/// Route scopes, or `Err` naming one that cannot be resolved (the route is then left out:
/// dropping one alternative would change who gets in).
fn scopes(ctx: &Ctx<'_>, v: Option<&Value>) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for s in v.and_then(Value::as_array).into_iter().flatten() {
        let s = ctx.resolve(s)?;
        if s.is_empty() || s.contains(' ') {
            return Err(format!("{s:?}"));
        }
        if !out.contains(&s) {
            out.push(s);
        }
    }
    Ok(out)
}

/// What a method's `AuthorizationType` makes of the route: `None` public, else the scopes.
fn route_auth(ctx: &Ctx<'_>, what: &str, p: &Value, plan: &mut Plan) -> Result<Option<Vec<String>>, ()> {
    let ty = p
        .get("AuthorizationType")
        .and_then(|t| ctx.resolve(t).ok())
        .unwrap_or_else(|| "NONE".to_owned())
        .to_ascii_uppercase();
    match ty.as_str() {
        "NONE" => Ok(None),
        "COGNITO_USER_POOLS" | "JWT" => match scopes(ctx, p.get("AuthorizationScopes")) {
            Ok(s) => Ok(Some(s)),
            Err(e) => {
                plan.not_mapped(format!("{what}: scope {e} is only known at deploy time; route left out"));
                Err(())
            }
        },
        other => {
            plan.not_mapped(format!("{what}: {other} authorization; the route needs any valid token instead"));
            Ok(Some(Vec::new()))
        }
    }
}

fn rest_method(ctx: &Ctx<'_>, id: &str, plan: &mut Plan) {
    let p = ctx.props(id);
    let path = match rest_path(ctx, p.get("ResourceId").unwrap_or(&NULL), 0) {
        Ok(p) if p.is_empty() => "/".to_owned(),
        Ok(p) => p,
        Err(e) => {
            plan.not_mapped(format!("AWS::ApiGateway::Method {id}: its resource path is not known ({e})"));
            return;
        }
    };
    let method = match p.get("HttpMethod").map(|m| ctx.resolve(m)) {
        Some(Ok(m)) => m.to_ascii_uppercase(),
        _ => {
            plan.not_mapped(format!("AWS::ApiGateway::Method {id}: no HttpMethod"));
            return;
        }
    };
    let what = format!("method {method} {path} ({id})");
    if p.get("ApiKeyRequired").is_some_and(|v| v == &Value::Bool(true) || v == "true") {
        plan.not_mapped(format!("{what}: API key requirement"));
    }
    if p.get("RequestValidatorId").is_some() {
        plan.not_mapped(format!("{what}: request validator"));
    }
    let Ok(auth) = route_auth(ctx, &what, p, plan) else { return };
    let Some(integration) = p.get("Integration").filter(|i| i.is_object()) else {
        plan.not_mapped(format!("{what}: no Integration"));
        return;
    };
    let ity = integration.get("Type").and_then(|t| ctx.resolve(t).ok()).unwrap_or_default().to_ascii_uppercase();
    let action = match ity.as_str() {
        "MOCK" => mock(ctx, &what, integration, p.get("MethodResponses"), plan),
        "AWS_PROXY" | "AWS" => {
            if ity == "AWS" {
                plan.not_mapped(format!(
                    "{what}: AWS service integration with mapping templates; the upstream gets the request as sent"
                ));
            }
            Action::Upstream(lambda_upstream(ctx, id, integration.get("Uri"), plan))
        }
        "HTTP_PROXY" | "HTTP" => {
            if ity == "HTTP" {
                plan.not_mapped(format!(
                    "{what}: HTTP integration mapping templates; the upstream gets the request as sent"
                ));
            }
            Action::Upstream(http_upstream(ctx, id, integration.get("Uri"), &what, plan))
        }
        other => {
            plan.not_mapped(format!("{what}: integration type {other:?}"));
            return;
        }
    };
    let methods = vec![method];
    plan.routes.push(Route { path, methods, scopes: auth, action, source: format!("AWS::ApiGateway::Method {id}") });
}

fn mock(ctx: &Ctx<'_>, what: &str, integration: &Value, method_responses: Option<&Value>, plan: &mut Plan) -> Action {
    let responses = integration.get("IntegrationResponses").and_then(Value::as_array);
    // The default response is the one without a SelectionPattern (or with an empty one).
    let default = responses.and_then(|r| {
        r.iter()
            .find(|x| x.get("SelectionPattern").and_then(Value::as_str).is_none_or(str::is_empty))
            .or_else(|| r.first())
    });
    let status = default
        .and_then(|d| d.get("StatusCode"))
        .or_else(|| method_responses.and_then(|m| m.get(0)).and_then(|m| m.get("StatusCode")))
        .and_then(|s| ctx.resolve(s).ok());
    let headers: Vec<&String> = default
        .and_then(|d| d.get("ResponseParameters"))
        .and_then(Value::as_object)
        .map(|m| m.keys().filter(|k| !k.eq_ignore_ascii_case("method.response.header.Content-Type")).collect())
        .unwrap_or_default();
    if !headers.is_empty() {
        plan.not_mapped(format!("{what}: mock response headers {headers:?}"));
    }
    mock_from(status, default.and_then(|d| d.get("ResponseTemplates")), what, plan)
}

/// The upstream for a Lambda integration, named after the function.
fn lambda_upstream(ctx: &Ctx<'_>, method_id: &str, uri: Option<&Value>, plan: &mut Plan) -> String {
    let mut ids = Vec::new();
    if let Some(uri) = uri {
        refs(uri, &mut ids);
    }
    let func = ids.iter().find(|i| {
        matches!(ctx.ty(i), Some("AWS::Lambda::Function" | "AWS::Serverless::Function" | "AWS::Lambda::Alias"))
    });
    if let Some(f) = func {
        let name = snake(&ctx.name(f));
        let source = format!("Lambda function {f}");
        return plan.upstream(&name, None, &[f.as_str()], &source);
    }
    // A literal ARN: `...:function:NAME/invocations`.
    let literal = uri.and_then(|u| ctx.resolve(u).ok());
    if let Some(fname) =
        literal.as_deref().and_then(|u| u.split(":function:").nth(1)).map(|r| r.split(['/', ':']).next().unwrap_or(r))
    {
        let name = snake(fname);
        return plan.upstream(&name, None, &[fname], &format!("Lambda function {fname}"));
    }
    let name = snake(&ctx.name(method_id));
    plan.upstream(&name, None, &[method_id], &format!("integration of {method_id}"))
}

/// The upstream for an HTTP integration with a literal URL: its origin.
fn http_upstream(ctx: &Ctx<'_>, owner_id: &str, uri: Option<&Value>, what: &str, plan: &mut Plan) -> String {
    let stage_vars = uri.is_some_and(|u| serde_json::to_string(u).unwrap_or_default().contains("stageVariables."));
    match uri.map(|u| ctx.resolve(u)) {
        _ if stage_vars => {
            let shown = uri.map(compact).unwrap_or_default();
            plan.not_mapped(format!("{what}: stage variables in the integration URL {shown}"));
        }
        Some(Ok(u)) => {
            if let Ok(parsed) = u.parse::<http::Uri>() {
                if let (Some(scheme), Some(auth)) = (parsed.scheme_str(), parsed.authority()) {
                    if scheme == "http" || scheme == "https" {
                        let host = parsed.host().unwrap_or(auth.as_str());
                        let name = snake(host);
                        if !parsed.path().trim_matches('/').is_empty() {
                            plan.not_mapped(format!(
                                "{what}: integration path {:?}; the request path is forwarded as received",
                                parsed.path()
                            ));
                        }
                        return plan.upstream(
                            &name,
                            Some(format!("{scheme}://{auth}")),
                            &[owner_id],
                            &format!("HTTP integration {u}"),
                        );
                    }
                }
            }
            plan.not_mapped(format!("{what}: integration URI {u:?}"));
        }
        Some(Err(e)) => plan.not_mapped(format!("{what}: integration URI {e} is only known at deploy time")),
        None => {}
    }
    let name = snake(&ctx.name(owner_id));
    plan.upstream(&name, None, &[owner_id], &format!("integration {owner_id}"))
}

fn http_route(ctx: &Ctx<'_>, id: &str, plan: &mut Plan) {
    let p = ctx.props(id);
    let key = match p.get("RouteKey").map(|k| ctx.resolve(k)) {
        Some(Ok(k)) => k,
        _ => {
            plan.not_mapped(format!("AWS::ApiGatewayV2::Route {id}: RouteKey is not known"));
            return;
        }
    };
    let (methods, paths): (Vec<String>, Vec<String>) = if key == "$default" {
        (vec!["ANY".to_owned()], vec!["/".to_owned(), "/{proxy+}".to_owned()])
    } else {
        match key.split_once(' ') {
            Some((m, path)) if path.starts_with('/') => (vec![m.to_ascii_uppercase()], vec![path.to_owned()]),
            _ => {
                plan.not_mapped(format!(
                    "AWS::ApiGatewayV2::Route {id}: route key {key:?} (WebSocket routes are not mapped)"
                ));
                return;
            }
        }
    };
    let what = format!("route {key:?} ({id})");
    let Ok(auth) = route_auth(ctx, &what, p, plan) else { return };
    let mut ids = Vec::new();
    if let Some(t) = p.get("Target") {
        refs(t, &mut ids);
    }
    let integration = ids.into_iter().find(|i| ctx.ty(i) == Some("AWS::ApiGatewayV2::Integration"));
    let upstream = match integration {
        Some(i) => {
            let ip = ctx.props(&i);
            let ity =
                ip.get("IntegrationType").and_then(|t| ctx.resolve(t).ok()).unwrap_or_default().to_ascii_uppercase();
            if ity == "HTTP_PROXY" {
                let uri = ip.get("IntegrationUri");
                let literal_url = uri.and_then(|u| ctx.resolve(u).ok()).is_some_and(|u| u.starts_with("http"));
                if literal_url {
                    http_upstream(ctx, &i, uri, &what, plan)
                } else {
                    let name = snake(&ctx.name(&i));
                    plan.upstream(&name, None, &[i.as_str()], &format!("{ity} integration {i}"))
                }
            } else {
                let name = snake(&ctx.name(&i));
                plan.upstream(&name, None, &[i.as_str()], &format!("{ity} integration {i}"))
            }
        }
        None => match p.get("Target").map(|t| ctx.resolve(t)) {
            Some(Ok(t)) if t.starts_with("integrations/") => {
                let raw = &t["integrations/".len()..];
                plan.upstream(&snake(raw), None, &[raw], &format!("integration {raw} (not in the template)"))
            }
            _ => {
                plan.not_mapped(format!("{what}: no integration target"));
                return;
            }
        },
    };
    for path in paths {
        plan.routes.push(Route {
            path,
            methods: methods.clone(),
            scopes: auth.clone(),
            action: Action::Upstream(upstream.clone()),
            source: format!("AWS::ApiGatewayV2::Route {id} ({key})"),
        });
    }
}

/// The `Auth` of a SAM API: the event's API resource's, else the template's `Globals`.
fn sam_api_auth<'c>(ctx: &'c Ctx<'_>, event_props: &Value, http: bool) -> (Option<String>, &'c Value) {
    let key = if http { "ApiId" } else { "RestApiId" };
    let mut ids = Vec::new();
    if let Some(r) = event_props.get(key) {
        refs(r, &mut ids);
    }
    let api = ids.into_iter().find(|i| matches!(ctx.ty(i), Some("AWS::Serverless::Api" | "AWS::Serverless::HttpApi")));
    let auth = api.as_deref().and_then(|a| ctx.props(a).get("Auth"));
    let section = if http { "HttpApi" } else { "Api" };
    let global = ctx.globals.get(section).and_then(|g| g.get("Auth"));
    (api, auth.or(global).unwrap_or(&NULL))
}

/// The trusted issuer behind a SAM authorizer definition, if it is a Cognito or JWT one.
fn sam_issuer(ctx: &Ctx<'_>, def: &Value, stem: String, source: String) -> Option<TrustedIssuer> {
    if let Some(arn) = def.get("UserPoolArn") {
        let arn = arn.as_array().and_then(|a| a.first()).unwrap_or(arn);
        let issuer = ctx.resolve(arn).and_then(|a| pool_issuer(&a).ok_or(a));
        return Some(TrustedIssuer { issuer, var: stem, audiences: Vec::new(), cognito: true, source });
    }
    let jwt = def.get("JwtConfiguration")?;
    let issuer =
        jwt.get("issuer").or_else(|| jwt.get("Issuer")).map_or_else(|| Err("(none)".to_owned()), |i| ctx.resolve(i));
    let cognito =
        issuer.as_ref().map_or_else(|e| e.contains("cognito-idp."), |i| i.starts_with("https://cognito-idp."));
    let audiences = jwt
        .get("audience")
        .or_else(|| jwt.get("Audience"))
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|x| ctx.resolve(x)).collect())
        .unwrap_or_default();
    Some(TrustedIssuer { issuer, var: stem, audiences, cognito, source })
}

/// The API events of a SAM function (`Type: Api` / `HttpApi`): routes to the function.
fn sam_function(ctx: &Ctx<'_>, id: &str, plan: &mut Plan) {
    let events = ctx.props(id).get("Events").and_then(Value::as_object);
    for (ev, e) in events.into_iter().flatten() {
        let http = match e.get("Type").and_then(Value::as_str) {
            Some("Api") => false,
            Some("HttpApi") => true,
            _ => continue,
        };
        let p = e.get("Properties").unwrap_or(&NULL);
        let path = p.get("Path").map(|v| ctx.resolve(v));
        let method = p.get("Method").map(|v| ctx.resolve(v));
        let (methods, paths) = match (path, method) {
            (Some(Ok(path)), Some(Ok(m))) if path.starts_with('/') => {
                let m = m.to_ascii_uppercase();
                let m = if m == "X-AMAZON-APIGATEWAY-ANY-METHOD" { "ANY".to_owned() } else { m };
                (vec![m], vec![path])
            }
            (None, None) if http => (vec!["ANY".to_owned()], vec!["/".to_owned(), "/{proxy+}".to_owned()]),
            _ => {
                plan.not_mapped(format!("AWS::Serverless::Function {id}: event {ev}: Path or Method is not known"));
                continue;
            }
        };
        let what = format!("SAM event {ev} of {id} ({} {})", methods[0], paths[0]);
        let (api, api_auth) = sam_api_auth(ctx, p, http);
        let event_auth = p.get("Auth").unwrap_or(&NULL);
        let key_required = |a: &Value| a.get("ApiKeyRequired").is_some_and(|v| v == &Value::Bool(true));
        if key_required(event_auth) || key_required(api_auth) {
            plan.not_mapped(format!("{what}: API key requirement"));
        }
        let authorizer = event_auth
            .get("Authorizer")
            .or_else(|| api_auth.get("DefaultAuthorizer"))
            .and_then(|a| ctx.resolve(a).ok());
        let auth = match authorizer.as_deref() {
            None | Some("NONE") => None,
            Some("AWS_IAM") => {
                plan.not_mapped(format!("{what}: AWS_IAM authorization; the route needs any valid token instead"));
                Some(Vec::new())
            }
            Some(name) => {
                let def = api_auth.get("Authorizers").and_then(|a| a.get(name)).unwrap_or(&NULL);
                let stem = snake(&format!("{}_{name}", api.as_deref().unwrap_or("api"))).to_ascii_uppercase();
                let source = format!("SAM authorizer {name} of {}", api.as_deref().unwrap_or("the implicit API"));
                match sam_issuer(ctx, def, stem, source.clone()) {
                    Some(i) => {
                        if !plan.issuers.iter().any(|x| x.source == source) {
                            plan.issuers.push(i);
                        }
                    }
                    None => plan.not_mapped(format!(
                        "{what}: authorizer {name} is not a Cognito or JWT authorizer; the route needs any valid token instead"
                    )),
                }
                match scopes(ctx, event_auth.get("AuthorizationScopes").or_else(|| def.get("AuthorizationScopes"))) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        plan.not_mapped(format!("{what}: scope {e} is only known at deploy time; route left out"));
                        continue;
                    }
                }
            }
        };
        let upstream = plan.upstream(&snake(&ctx.name(id)), None, &[id], &format!("AWS::Serverless::Function {id}"));
        for path in paths {
            plan.routes.push(Route {
                path,
                methods: methods.clone(),
                scopes: auth.clone(),
                action: Action::Upstream(upstream.clone()),
                source: format!("AWS::Serverless::Function {id}, event {ev}"),
            });
        }
    }
}
