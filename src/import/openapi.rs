//! OpenAPI 3 / Swagger 2 exports of API Gateway APIs (with the `x-amazon-apigateway-*`
//! extensions) to a [`Plan`].

use std::collections::BTreeMap;

use serde_json::Value;

use super::expr::{compact, mock_from, refs};
use super::{snake, Action, Plan, Refusal, Route, TrustedIssuer};

const OPERATIONS: &[(&str, &str)] = &[
    ("get", "GET"),
    ("put", "PUT"),
    ("post", "POST"),
    ("delete", "DELETE"),
    ("options", "OPTIONS"),
    ("head", "HEAD"),
    ("patch", "PATCH"),
    ("trace", "TRACE"),
    ("x-amazon-apigateway-any-method", "ANY"),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scheme {
    /// Cognito user pool or JWT authorizer, or a plain oauth2 / openIdConnect scheme: scopes apply.
    Jwt,
    /// Lambda authorizer.
    Lambda,
    ApiKey,
    /// AWS_IAM (sigv4).
    Iam,
}

pub(crate) fn read(doc: &Value, source: &str, plan: &mut Plan) -> Result<(), Refusal> {
    let v3 = doc.get("openapi").and_then(Value::as_str).is_some_and(|v| v.starts_with('3'));
    let v2 = doc.get("swagger").and_then(Value::as_str).is_some_and(|v| v.starts_with('2'));
    if !v3 && !v2 {
        let hint = if doc.get("Resources").is_some() {
            " (it is a CloudFormation template: use `scopegate import cloudformation`)"
        } else {
            ""
        };
        return Err(Refusal(format!(
            "{source}: not an OpenAPI 3 or Swagger 2 document: no `openapi: 3.x` or `swagger: \"2.0\"`{hint}"
        )));
    }
    let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
        return Err(Refusal(format!("{source}: the OpenAPI document has no paths")));
    };
    let defs = if v3 { doc.pointer("/components/securitySchemes") } else { doc.get("securityDefinitions") };
    let mut schemes: BTreeMap<String, Scheme> = BTreeMap::new();
    for (name, s) in defs.and_then(Value::as_object).into_iter().flatten() {
        schemes.insert(name.clone(), scheme(name, s, source, plan));
    }
    for (k, _) in doc.as_object().into_iter().flatten() {
        if k.starts_with("x-amazon-apigateway-") && k != "x-amazon-apigateway-importexport-version" {
            plan.not_mapped(format!("{source}: {k}"));
        }
    }
    if let Some(base) = doc.get("basePath").and_then(Value::as_str).filter(|b| *b != "/") {
        plan.not_mapped(format!("{source}: basePath {base:?} (the stage); routes are written without it"));
    }
    let stage = doc
        .pointer("/servers/0/variables/basePath/default")
        .and_then(Value::as_str)
        .filter(|b| !b.trim_matches('/').is_empty());
    if let Some(stage) = stage {
        plan.not_mapped(format!("{source}: basePath {stage:?} (the stage); routes are written without it"));
    }
    let global = doc.get("security");
    for (path, item) in paths {
        if !path.starts_with('/') || path.contains("${") {
            plan.not_mapped(format!("{source}: path {path:?}"));
            continue;
        }
        for (key, method) in OPERATIONS {
            let Some(op) = item.get(*key).filter(|o| o.is_object()) else { continue };
            let what = format!("{method} {path} ({source})");
            if op.get("x-amazon-apigateway-request-validator").is_some() {
                plan.not_mapped(format!("{what}: request validator"));
            }
            let Ok(auth) = security(op.get("security").or(global), &schemes, &what, plan) else { continue };
            let Some(integration) = op.get("x-amazon-apigateway-integration").filter(|i| i.is_object()) else {
                plan.not_mapped(format!("{what}: no x-amazon-apigateway-integration; route left out"));
                continue;
            };
            let Some(action) = action(integration, &what, plan) else { continue };
            plan.routes.push(Route {
                path: path.clone(),
                methods: vec![(*method).to_owned()],
                scopes: auth,
                action,
                source: format!("{source}: {method} {path}"),
            });
        }
    }
    Ok(())
}

fn scheme(name: &str, s: &Value, source: &str, plan: &mut Plan) -> Scheme {
    let what = format!("{source}: security scheme {name}");
    if let Some(a) = s.get("x-amazon-apigateway-authorizer") {
        let ty = a.get("type").and_then(Value::as_str).unwrap_or("").to_ascii_lowercase();
        match ty.as_str() {
            "cognito_user_pools" => {
                for arn in a.get("providerARNs").and_then(Value::as_array).into_iter().flatten() {
                    let issuer = match arn.as_str() {
                        Some(arn) => cognito_issuer(arn).ok_or_else(|| arn.to_owned()),
                        None => Err(compact(arn)),
                    };
                    plan.issuers.push(TrustedIssuer {
                        issuer,
                        var: snake(name).to_ascii_uppercase(),
                        audiences: Vec::new(),
                        cognito: true,
                        source: what.clone(),
                    });
                }
                return Scheme::Jwt;
            }
            "jwt" => {
                let jwt = a.get("jwtConfiguration").unwrap_or(&Value::Null);
                let issuer = match jwt.get("issuer") {
                    Some(Value::String(s)) if !s.contains("${") => Ok(s.clone()),
                    Some(v) => Err(compact(v)),
                    None => Err("(none)".to_owned()),
                };
                let cognito = issuer.as_ref().is_ok_and(|i| i.starts_with("https://cognito-idp."));
                let audiences = jwt
                    .get("audience")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .map(|x| {
                                x.as_str().filter(|s| !s.contains("${")).map(str::to_owned).ok_or_else(|| compact(x))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                plan.issuers.push(TrustedIssuer {
                    issuer,
                    var: snake(name).to_ascii_uppercase(),
                    audiences,
                    cognito,
                    source: what,
                });
                return Scheme::Jwt;
            }
            _ => {
                plan.not_mapped(format!("{what}: {ty} (Lambda) authorizer; its routes need any valid token instead"));
                return Scheme::Lambda;
            }
        }
    }
    let auth_type = s.get("x-amazon-apigateway-authtype").and_then(Value::as_str).unwrap_or("");
    if auth_type.eq_ignore_ascii_case("awsSigv4") {
        plan.not_mapped(format!("{what}: AWS_IAM (SigV4) authorization; its routes need any valid token instead"));
        return Scheme::Iam;
    }
    match s.get("type").and_then(Value::as_str) {
        Some("apiKey") => {
            plan.not_mapped(format!("{what}: API key"));
            Scheme::ApiKey
        }
        _ => Scheme::Jwt,
    }
}

fn cognito_issuer(arn: &str) -> Option<String> {
    let parts: Vec<&str> = arn.split(':').collect();
    if parts.len() == 6 && parts[2] == "cognito-idp" {
        let pool = parts[5].strip_prefix("userpool/")?;
        return Some(format!("https://cognito-idp.{}.amazonaws.com/{pool}", parts[3]));
    }
    None
}

/// `None`: public; `Some(scopes)`: a token with one of them (or any token when empty).
fn security(
    sec: Option<&Value>,
    schemes: &BTreeMap<String, Scheme>,
    what: &str,
    plan: &mut Plan,
) -> Result<Option<Vec<String>>, ()> {
    let Some(alternatives) = sec.and_then(Value::as_array) else { return Ok(None) };
    if alternatives.is_empty() || alternatives.iter().any(|a| a.as_object().is_some_and(serde_json::Map::is_empty)) {
        return Ok(None);
    }
    let mut scopes = Vec::new();
    let mut other = false;
    for alt in alternatives {
        for (name, list) in alt.as_object().into_iter().flatten() {
            match schemes.get(name) {
                Some(Scheme::Jwt) => {
                    for s in list.as_array().into_iter().flatten().filter_map(Value::as_str) {
                        if s.is_empty() || s.contains(' ') || s.contains("${") {
                            // Dropping one of the alternatives would change who gets in.
                            plan.not_mapped(format!("{what}: scope {s:?}; route left out"));
                            return Err(());
                        }
                        if !scopes.iter().any(|x| x == s) {
                            scopes.push(s.to_owned());
                        }
                    }
                }
                Some(_) => other = true,
                None => {
                    plan.not_mapped(format!(
                        "{what}: security scheme {name} is not defined; the route needs any valid token"
                    ));
                    other = true;
                }
            }
        }
    }
    if other && scopes.is_empty() {
        plan.not_mapped(format!(
            "{what}: only API key / Lambda / IAM authorization; the route needs any valid token instead"
        ));
    }
    Ok(Some(scopes))
}

fn action(integration: &Value, what: &str, plan: &mut Plan) -> Option<Action> {
    let ty = integration.get("type").and_then(Value::as_str).unwrap_or("").to_ascii_lowercase();
    let uri = integration.get("uri");
    match ty.as_str() {
        "mock" => {
            let default = integration.pointer("/responses/default");
            let status = default.and_then(|d| d.get("statusCode")).and_then(|s| match s {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
            let headers: Vec<&String> = default
                .and_then(|d| d.get("responseParameters"))
                .and_then(Value::as_object)
                .map(|m| m.keys().filter(|k| !k.eq_ignore_ascii_case("method.response.header.Content-Type")).collect())
                .unwrap_or_default();
            if !headers.is_empty() {
                plan.not_mapped(format!("{what}: mock response headers {headers:?}"));
            }
            Some(mock_from(status, default.and_then(|d| d.get("responseTemplates")), what, plan))
        }
        "aws_proxy" | "aws" => {
            if ty == "aws" {
                plan.not_mapped(format!(
                    "{what}: AWS service integration with mapping templates; the upstream gets the request as sent"
                ));
            }
            let name = match uri {
                Some(Value::String(u)) => {
                    u.split(":function:").nth(1).map(|r| r.split(['/', ':']).next().unwrap_or(r).to_owned())
                }
                Some(v) => {
                    let mut ids = Vec::new();
                    refs(v, &mut ids);
                    ids.into_iter().find(|i| !i.starts_with("AWS::"))
                }
                None => None,
            };
            let Some(name) = name else {
                plan.not_mapped(format!(
                    "{what}: integration uri {} names no Lambda function; route left out",
                    uri.map(compact).unwrap_or_default()
                ));
                return None;
            };
            Some(Action::Upstream(plan.upstream(
                &snake(&name),
                None,
                &[name.as_str()],
                &format!("Lambda function {name}"),
            )))
        }
        "http_proxy" | "http" => {
            let parsed = uri.and_then(Value::as_str).and_then(|u| u.parse::<http::Uri>().ok());
            let origin = parsed
                .as_ref()
                .and_then(|p| Some((p.scheme_str()?.to_owned(), p.authority()?.clone(), p.host()?.to_owned())));
            let Some((scheme, authority, host)) = origin.filter(|(s, ..)| s == "http" || s == "https") else {
                plan.not_mapped(format!(
                    "{what}: integration uri {}; route left out",
                    uri.map(compact).unwrap_or_default()
                ));
                return None;
            };
            if uri.and_then(Value::as_str).is_some_and(|u| u.contains("stageVariables.")) {
                plan.not_mapped(format!("{what}: stage variables in the integration uri; route left out"));
                return None;
            }
            if ty == "http" {
                plan.not_mapped(format!(
                    "{what}: HTTP integration mapping templates; the upstream gets the request as sent"
                ));
            }
            if parsed.as_ref().is_some_and(|p| !p.path().trim_matches('/').is_empty()) {
                plan.not_mapped(format!(
                    "{what}: integration path {:?}; the request path is forwarded as received",
                    parsed.as_ref().map(http::Uri::path).unwrap_or("")
                ));
            }
            let url = format!("{scheme}://{authority}");
            Some(Action::Upstream(plan.upstream(
                &snake(&host),
                Some(url.clone()),
                &[],
                &format!("HTTP integration {url}"),
            )))
        }
        other => {
            plan.not_mapped(format!("{what}: integration type {other:?}; route left out"));
            None
        }
    }
}
