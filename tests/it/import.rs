//! `scopegate import` through the real binary: the templates of the seed articles (an HTTP API
//! with a JWT authorizer in CloudFormation YAML, and two CDK apps' synthesized templates) and
//! API Gateway OpenAPI exports, each mapping rule, each refusal (exit 2, nothing written), and
//! the round trip: import, start the binary on the result, fetch a token from its built-in
//! issuer with the printed secret, and call the routes.

use crate::common::*;

use std::path::{Path, PathBuf};
use std::process::Output;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/import").join(name)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `scopegate import ARGS...` (bounded: the command is short-lived).
fn import(args: &[&str]) -> Output {
    let mut c = binary_command();
    c.arg("import").args(args);
    run_bounded(c)
}

/// An import that must succeed: `(gateway.toml text, stderr)`, written with `-o`.
fn import_ok(args: &[&str]) -> (String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("gateway.toml");
    let mut all: Vec<&str> = args.to_vec();
    let out_s = out.to_str().expect("utf-8 path").to_owned();
    all.extend(["-o", &out_s]);
    let o = import(&all);
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "import {args:?} failed:\n{stderr}");
    assert!(o.stdout.is_empty(), "with -o nothing goes to stdout: {}", text(&o.stdout));
    (std::fs::read_to_string(&out).expect("gateway.toml written"), stderr)
}

fn parse(toml_text: &str) -> toml::Value {
    toml::from_str(toml_text).unwrap_or_else(|e| panic!("generated TOML does not parse: {e}\n{toml_text}"))
}

fn strs(v: &toml::Value) -> Vec<String> {
    v.as_array().expect("array").iter().map(|s| s.as_str().expect("string").to_owned()).collect()
}

fn routes(doc: &toml::Value) -> Vec<toml::Value> {
    doc.get("routes").and_then(toml::Value::as_array).cloned().unwrap_or_default()
}

/// The route for `method path`.
fn route<'a>(routes: &'a [toml::Value], method: &str, path: &str) -> &'a toml::Value {
    routes
        .iter()
        .find(|r| r["path"].as_str() == Some(path) && strs(&r["methods"]).iter().any(|m| m == method))
        .unwrap_or_else(|| panic!("no route {method} {path} in {routes:#?}"))
}

/// The secret the import printed (on stderr) for `client`.
fn secret_for(stderr: &str, client: &str) -> String {
    let prefix = format!("client secret for {client:?} ");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&prefix)).collect();
    assert_eq!(lines.len(), 1, "one secret line for {client}:\n{stderr}");
    lines[0].rsplit(": ").next().expect("secret").trim().to_owned()
}

/// Environment variables named by placeholder lines (`... ${VAR} ...; set VAR ...`).
fn placeholder_vars(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.split("; set ").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap_or("").to_owned())
        .collect()
}

/// `scopegate check` on `toml_text` with `env`.
fn check(toml_text: &str, env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, toml_text).expect("write");
    let mut c = binary_command();
    c.arg("check").arg("--config").arg(&path);
    for (k, v) in env {
        c.env(k, v);
    }
    run_bounded(c)
}

fn assert_checks(toml_text: &str, env: &[(&str, &str)]) {
    let o = check(toml_text, env);
    assert_eq!(o.status.code(), Some(0), "scopegate check failed:\n{}\n---\n{toml_text}", text(&o.stderr));
}

/// Asserts a refusal: exit 2, `needle` in the message, and `-o` not created.
fn assert_refused(args: &[&str], needle: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("gateway.toml");
    let mut all: Vec<&str> = args.to_vec();
    let out_s = out.to_str().expect("utf-8 path").to_owned();
    all.extend(["-o", &out_s]);
    let o = import(&all);
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "import {args:?} must be refused:\n{stderr}");
    assert!(stderr.contains(needle), "refusal of {args:?} must say {needle:?}:\n{stderr}");
    assert!(!out.exists(), "a refused import wrote {}", out.display());
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("read_dir").collect();
    assert!(left.is_empty(), "a refused import left files behind: {left:?}");
}

/// A template written by the test into a temp dir.
fn temp_file(dir: &tempfile::TempDir, name: &str, body: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, body).expect("write template");
    p.to_str().expect("utf-8").to_owned()
}

// ---------------------------------------------------------------------------------------------
// The binary, started on an imported config

/// Starts the binary on `toml_text` with its listener moved to 127.0.0.1:0 (the harness learns
/// the port from the "scopegate listening" log line).
async fn start_binary(toml_text: &str) -> Binary {
    let toml_text = toml_text.replace("listen = \"0.0.0.0:8080\"", "listen = \"127.0.0.1:0\"");
    assert!(toml_text.contains("listen = \"127.0.0.1:0\""), "no listen line to move:\n{toml_text}");
    Binary::start(&toml_text).await
}

/// The access token from a 200 answer of /oauth2/token.
fn access_token(r: &Resp) -> String {
    assert_eq!(r.status, 200, "token request: {r:?}");
    let v: Value = serde_json::from_str(&r.body).expect("token JSON");
    assert_eq!(v["token_type"], "Bearer", "{v}");
    v["access_token"].as_str().expect("access_token").to_owned()
}

// ---------------------------------------------------------------------------------------------
// Round trips

/// The HTTP API article's flow: Basic client credentials at /oauth2/token, then POST (the
/// client's scope) answers from its Lambda's stand-in and GET (a scope the client lacks) is 401.
#[tokio::test]
async fn seed_http_api_round_trip_post_answers_get_is_401() {
    let order = Upstream::start("order").await;
    let get_order = Upstream::start("get-order").await;
    let (toml_text, stderr) = import_ok(&[
        "cloudformation",
        fixture("jwt-authorizer-http-api.yaml").to_str().expect("utf-8"),
        "--upstream",
        &format!("order_lambda_integration={}", order.url),
        "--upstream",
        &format!("GetOrderLambdaIntegration={}", get_order.url),
    ]);
    let secret = secret_for(&stderr, "omw-user-pool");
    assert!(!toml_text.contains(&secret), "the plain secret must not be in gateway.toml");
    let gw = start_binary(&toml_text).await;

    let auth = format!("Basic {}", STANDARD.encode(format!("omw-user-pool:{secret}")));
    let r = send_to(
        gw.addr,
        "POST",
        "/oauth2/token",
        &[("authorization", &auth), ("content-type", "application/x-www-form-urlencoded")],
        "grant_type=client_credentials",
    )
    .await;
    let token = access_token(&r);
    let bearer = format!("Bearer {token}");

    let r = send_to(gw.addr, "POST", "/api/v1/order", &[("authorization", &bearer)], "{}").await;
    assert_eq!(r.status, 200, "POST /api/v1/order with order/post.order: {r:?}\n{}", gw.log());
    assert_eq!(order.count(), 1, "the POST reached the order upstream");
    assert_eq!(order.last().expect("request").target, "/api/v1/order");

    let r = send_to(gw.addr, "GET", "/api/v1/order", &[("authorization", &bearer)], "").await;
    assert_eq!((r.status, r.body.as_str()), (401, UNAUTHORIZED), "GET needs order/get.order");
    let r = send_to(gw.addr, "POST", "/api/v1/order", &[], "{}").await;
    assert_eq!((r.status, r.body.as_str()), (401, UNAUTHORIZED), "no token");
    assert_eq!(get_order.count(), 0, "nothing reached the GET upstream");
    assert_eq!(order.count(), 1);

    // A wrong secret gets no token.
    let bad = format!("Basic {}", STANDARD.encode("omw-user-pool:not-the-secret"));
    let r = send_to(
        gw.addr,
        "POST",
        "/oauth2/token",
        &[("authorization", &bad), ("content-type", "application/x-www-form-urlencoded")],
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(r.status, 401, "wrong secret: {r:?}");
}

/// The first CDK article (two stacks, REST API, MOCK integration): the token is asked for with
/// its scope, and sent without a `Bearer ` prefix as in the article's curl.
#[tokio::test]
async fn cdk_rest_api_round_trip_mock_answers() {
    let (toml_text, stderr) = import_ok(&[
        "cloudformation",
        fixture("cdk-client-credentials-cognito.template.json").to_str().expect("utf-8"),
        fixture("cdk-client-credentials-api.template.json").to_str().expect("utf-8"),
    ]);
    let secret = secret_for(&stderr, "awesome-app-client");
    let gw = start_binary(&toml_text).await;

    let r = send_to(gw.addr, "GET", "/awesomeapi", &[], "").await;
    assert_eq!((r.status, r.body.as_str()), (401, UNAUTHORIZED), "no token: {r:?}");

    let auth = format!("Basic {}", STANDARD.encode(format!("awesome-app-client:{secret}")));
    let body = form(&[("grant_type", "client_credentials"), ("scope", "awesomeapi-resource-server/awesomeapi.read")]);
    let r = send_to(
        gw.addr,
        "POST",
        "/oauth2/token",
        &[("authorization", &auth), ("content-type", "application/x-www-form-urlencoded")],
        &body,
    )
    .await;
    let token = access_token(&r);
    let r = send_to(gw.addr, "GET", "/awesomeapi", &[("authorization", &token)], "").await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    assert_eq!(r.body, r#"{"statusCode":200,"message":"Hello From Protected Resource"}"#);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let r = send_to(gw.addr, "POST", "/awesomeapi", &[("authorization", &token)], "").await;
    assert_ne!(r.status, 200, "only GET was defined: {r:?}");
}

/// The second CDK article (`{proxy+}` ANY to a Lambda): form-posted credentials, and any path
/// under the proxy resource reaches the upstream given with --upstream.
#[tokio::test]
async fn cdk_proxy_round_trip_form_credentials() {
    let up = Upstream::start("proxy").await;
    let (toml_text, stderr) = import_ok(&[
        "cloudformation",
        fixture("cdk-oauth2-api.template.json").to_str().expect("utf-8"),
        "--upstream",
        &format!("proxy_lambda={}", up.url),
    ]);
    let secret = secret_for(&stderr, "ThirdPartyClientName");
    let gw = start_binary(&toml_text).await;
    let body = form(&[
        ("grant_type", "client_credentials"),
        ("client_id", "ThirdPartyClientName"),
        ("client_secret", &secret),
    ]);
    let r = send_to(gw.addr, "POST", "/oauth2/token", &[("content-type", "application/x-www-form-urlencoded")], &body)
        .await;
    let token = access_token(&r);
    let bearer = format!("Bearer {token}");
    let r = send_to(gw.addr, "DELETE", "/things/42", &[("authorization", &bearer)], "").await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = up.last().expect("upstream got the request");
    assert_eq!((got.method.as_str(), got.target.as_str()), ("DELETE", "/things/42"));
    let r = send_to(gw.addr, "GET", "/things/42", &[], "").await;
    assert_eq!((r.status, r.body.as_str()), (401, UNAUTHORIZED));
    assert_eq!(up.count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Mapping rules

#[test]
fn cognito_resource_servers_and_client_credentials_clients() {
    let (toml_text, stderr) =
        import_ok(&["cloudformation", fixture("jwt-authorizer-http-api.yaml").to_str().expect("utf-8")]);
    let doc = parse(&toml_text);
    let issuer = &doc["issuer"];
    assert_eq!(issuer["issuer"].as_str(), Some("http://127.0.0.1:8080"), "default built-in issuer");
    let rs = issuer["resource_servers"].as_array().expect("resource servers");
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0]["identifier"].as_str(), Some("order"));
    assert_eq!(strs(&rs[0]["scopes"]), ["post.order"]);
    let clients = issuer["clients"].as_array().expect("clients");
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0]["client_id"].as_str(), Some("omw-user-pool"), "ClientName is the client_id");
    assert_eq!(strs(&clients[0]["allowed_scopes"]), ["order/post.order"]);
    let hash = clients[0]["client_secret_hash"].as_str().expect("hash");
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(clients[0].get("client_secret").is_none(), "no plain secret in the file");
    let secret = secret_for(&stderr, "omw-user-pool");
    assert!(secret.len() >= 32, "a long random secret: {secret}");
    assert!(!toml_text.contains(&secret));
    // A second import generates another secret.
    let (_, stderr2) = import_ok(&["cloudformation", fixture("jwt-authorizer-http-api.yaml").to_str().expect("utf-8")]);
    assert_ne!(secret_for(&stderr2, "omw-user-pool"), secret);
}

/// CDK writes a client's scope as `Fn::Join` of `Ref` to the resource server and the scope
/// name; the client is named after its construct id.
#[test]
fn cdk_client_scope_join_of_resource_server_ref_resolves() {
    let (toml_text, _) = import_ok(&[
        "cloudformation",
        fixture("cdk-client-credentials-cognito.template.json").to_str().expect("utf-8"),
        fixture("cdk-client-credentials-api.template.json").to_str().expect("utf-8"),
    ]);
    let doc = parse(&toml_text);
    let c = &doc["issuer"]["clients"][0];
    assert_eq!(c["client_id"].as_str(), Some("awesome-app-client"));
    assert_eq!(strs(&c["allowed_scopes"]), ["awesomeapi-resource-server/awesomeapi.read"]);
    let routes = routes(&doc);
    assert_eq!(routes.len(), 1, "{routes:#?}");
    let r = route(&routes, "GET", "/awesomeapi");
    assert_eq!(strs(&r["scopes"]), ["awesomeapi-resource-server/awesomeapi.read"]);
    let resp = &r["response"];
    assert_eq!(resp["status"].as_integer(), Some(200));
    assert_eq!(resp["body"].as_str(), Some(r#"{"statusCode":200,"message":"Hello From Protected Resource"}"#));
    assert!(r.get("upstream").is_none());
}

#[test]
fn issuer_flag_sets_the_built_in_issuer() {
    let (toml_text, _) = import_ok(&[
        "cloudformation",
        fixture("jwt-authorizer-http-api.yaml").to_str().expect("utf-8"),
        "--issuer",
        "https://auth.example.com",
    ]);
    assert_eq!(parse(&toml_text)["issuer"]["issuer"].as_str(), Some("https://auth.example.com"));
    assert_refused(
        &[
            "cloudformation",
            fixture("jwt-authorizer-http-api.yaml").to_str().expect("utf-8"),
            "--issuer",
            "auth.example.com/",
        ],
        "--issuer",
    );
}

/// --keep-issuer: the HTTP API's JWT authorizer becomes [[auth.issuers]]; its issuer and
/// audience, computed at deploy time in the template, become placeholders `check` names.
#[test]
fn keep_issuer_maps_jwt_authorizer_to_auth_issuers() {
    let (toml_text, stderr) = import_ok(&[
        "cloudformation",
        fixture("jwt-authorizer-http-api.yaml").to_str().expect("utf-8"),
        "--keep-issuer",
    ]);
    let doc = parse(&toml_text);
    assert!(doc.get("issuer").is_none(), "no built-in issuer with --keep-issuer");
    assert!(!stderr.contains("client secret for"), "no secret is generated: {stderr}");
    let i = &doc["auth"]["issuers"][0];
    assert_eq!(i["issuer"].as_str(), Some("${JWT_AUTHORIZER_ISSUER}"));
    assert_eq!(
        i["jwks_uri"].as_str(),
        Some("${JWT_AUTHORIZER_ISSUER}/.well-known/jwks.json"),
        "a Cognito issuer's keys"
    );
    assert_eq!(strs(&i["audiences"]), ["${JWT_AUTHORIZER_AUDIENCE}"]);
    assert!(
        toml_text.contains("--keep-issuer") && toml_text.contains("built-in issuer"),
        "the file says how to switch"
    );

    let mut env = vec![
        ("ORDER_LAMBDA_INTEGRATION_URL", "http://127.0.0.1:9"),
        ("GET_ORDER_LAMBDA_INTEGRATION_URL", "http://127.0.0.1:9"),
        ("JWT_AUTHORIZER_AUDIENCE", "4f2hmhnhvjujjor0kila8e8iu9"),
    ];
    let o = check(&toml_text, &env);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("environment variable JWT_AUTHORIZER_ISSUER is not set"), "{}", text(&o.stderr));
    assert_eq!(placeholder_vars(&stderr).len(), 4, "two upstreams, the issuer and the audience:\n{stderr}");
    env.push(("JWT_AUTHORIZER_ISSUER", "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Abc"));
    assert_checks(&toml_text, &env);
}

#[test]
fn keep_issuer_with_literal_issuer_from_openapi_jwt_authorizer() {
    let (toml_text, _) =
        import_ok(&["openapi", fixture("http-api-export.oas30.yaml").to_str().expect("utf-8"), "--keep-issuer"]);
    let doc = parse(&toml_text);
    let i = &doc["auth"]["issuers"][0];
    let iss = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_N8F22Uslo";
    assert_eq!(i["issuer"].as_str(), Some(iss));
    assert_eq!(i["jwks_uri"].as_str(), Some(format!("{iss}/.well-known/jwks.json").as_str()));
    assert_eq!(strs(&i["audiences"]), ["4f2hmhnhvjujjor0kila8e8iu9"]);
    // A non-Cognito issuer is found through discovery.
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = std::fs::read_to_string(fixture("http-api-export.oas30.yaml")).expect("fixture").replace(
        "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_N8F22Uslo",
        "https://login.example.com/realms/api",
    );
    let f = temp_file(&dir, "other.yaml", &yaml);
    let (toml_text, _) = import_ok(&["openapi", &f, "--keep-issuer"]);
    let i = &parse(&toml_text)["auth"]["issuers"][0];
    assert_eq!(i["discovery"].as_bool(), Some(true));
    assert!(i.get("jwks_uri").is_none());
}

const REST_TREE: &str = r#"
AWSTemplateFormatVersion: "2010-09-09"
Parameters:
  Version:
    Type: String
    Default: v1
Resources:
  Api:
    Type: AWS::ApiGateway::RestApi
    Properties: { Name: shop }
  V1:
    Type: AWS::ApiGateway::Resource
    Properties: { RestApiId: !Ref Api, ParentId: !GetAtt Api.RootResourceId, PathPart: !Ref Version }
  Orders:
    Type: AWS::ApiGateway::Resource
    Properties: { RestApiId: !Ref Api, ParentId: !Ref V1, PathPart: orders }
  OrderId:
    Type: AWS::ApiGateway::Resource
    Properties: { RestApiId: !Ref Api, ParentId: !Ref Orders, PathPart: "{id}" }
  Files:
    Type: AWS::ApiGateway::Resource
    Properties: { RestApiId: !Ref Api, ParentId: !Ref V1, PathPart: "{proxy+}" }
  Loop1:
    Type: AWS::ApiGateway::Resource
    Properties: { RestApiId: !Ref Api, ParentId: !Ref Loop2, PathPart: a }
  Loop2:
    Type: AWS::ApiGateway::Resource
    Properties: { RestApiId: !Ref Api, ParentId: !Ref Loop1, PathPart: b }
  Pool:
    Type: AWS::Cognito::UserPool
  Authorizer:
    Type: AWS::ApiGateway::Authorizer
    Properties: { RestApiId: !Ref Api, Type: COGNITO_USER_POOLS, ProviderARNs: [!GetAtt Pool.Arn], IdentitySource: method.request.header.Authorization }
  OrderFn:
    Type: AWS::Lambda::Function
    Properties: { Runtime: nodejs22.x, Handler: index.handler, Code: { ZipFile: "x" }, Role: arn:aws:iam::123456789012:role/x }
  GetOrder:
    Type: AWS::ApiGateway::Method
    Properties:
      RestApiId: !Ref Api
      ResourceId: !Ref OrderId
      HttpMethod: GET
      AuthorizationType: COGNITO_USER_POOLS
      AuthorizerId: !Ref Authorizer
      AuthorizationScopes: [shop/orders.read, shop/orders.admin]
      Integration:
        Type: AWS_PROXY
        IntegrationHttpMethod: POST
        Uri: !Sub "arn:${AWS::Partition}:apigateway:${AWS::Region}:lambda:path/2015-03-31/functions/${OrderFn.Arn}/invocations"
  AnyOrders:
    Type: AWS::ApiGateway::Method
    Properties:
      RestApiId: !Ref Api
      ResourceId: !Ref Orders
      HttpMethod: ANY
      AuthorizationType: COGNITO_USER_POOLS
      AuthorizerId: !Ref Authorizer
      Integration:
        Type: AWS_PROXY
        IntegrationHttpMethod: POST
        Uri: !Join ["", ["arn:aws:apigateway:us-east-1:lambda:path/2015-03-31/functions/", !GetAtt OrderFn.Arn, "/invocations"]]
  RootHealth:
    Type: AWS::ApiGateway::Method
    Properties:
      RestApiId: !Ref Api
      ResourceId: !GetAtt Api.RootResourceId
      HttpMethod: GET
      AuthorizationType: NONE
      Integration:
        Type: MOCK
        RequestTemplates: { application/json: '{"statusCode": 200}' }
        IntegrationResponses:
          - StatusCode: "500"
            SelectionPattern: ".*error.*"
          - StatusCode: "202"
            ResponseTemplates: { application/json: '{"ok":true}' }
            ResponseParameters: { method.response.header.Access-Control-Allow-Origin: "'*'" }
  FilesGet:
    Type: AWS::ApiGateway::Method
    Properties:
      RestApiId: !Ref Api
      ResourceId: !Ref Files
      HttpMethod: get
      AuthorizationType: AWS_IAM
      Integration:
        Type: HTTP_PROXY
        IntegrationHttpMethod: GET
        Uri: https://files.example.com:8443/{proxy}
  Teapot:
    Type: AWS::ApiGateway::Method
    Properties:
      RestApiId: !Ref Api
      ResourceId: !Ref V1
      HttpMethod: POST
      Integration:
        Type: MOCK
      MethodResponses:
        - StatusCode: "418"
  Vtl:
    Type: AWS::ApiGateway::Method
    Properties:
      RestApiId: !Ref Api
      ResourceId: !Ref V1
      HttpMethod: PUT
      Integration:
        Type: MOCK
        IntegrationResponses:
          - StatusCode: "200"
            ResponseTemplates: { application/json: "$input.json('$')" }
  LoopMethod:
    Type: AWS::ApiGateway::Method
    Properties: { RestApiId: !Ref Api, ResourceId: !Ref Loop1, HttpMethod: GET, Integration: { Type: MOCK } }
"#;

/// `AWS::ApiGateway::Resource` trees and `AWS::ApiGateway::Method`s: paths from PathPart and
/// ParentId (root, nested, `{id}`, `{proxy+}`), ANY, authorization types, scopes, Lambda, HTTP
/// and MOCK integrations; a cyclic tree is reported, not followed.
#[test]
fn rest_api_resource_tree_and_methods() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = temp_file(&dir, "rest.yaml", REST_TREE);
    let (toml_text, stderr) = import_ok(&["cloudformation", &f]);
    let doc = parse(&toml_text);
    let routes = routes(&doc);

    let r = route(&routes, "GET", "/v1/orders/{id}");
    assert_eq!(strs(&r["scopes"]), ["shop/orders.read", "shop/orders.admin"]);
    assert_eq!(r["upstream"].as_str(), Some("order_fn"), "named after the Lambda function");
    let r = route(&routes, "ANY", "/v1/orders");
    assert!(r.get("scopes").is_none() && r.get("auth").is_none(), "Cognito without scopes: any valid token");
    assert_eq!(r["upstream"].as_str(), Some("order_fn"), "the same function is one upstream");
    let r = route(&routes, "GET", "/");
    assert_eq!(r["auth"].as_str(), Some("none"));
    assert_eq!(r["response"]["status"].as_integer(), Some(202), "the default integration response");
    assert_eq!(r["response"]["body"].as_str(), Some(r#"{"ok":true}"#));
    let r = route(&routes, "GET", "/v1/{proxy+}");
    assert_eq!(r["upstream"].as_str(), Some("files_example_com"));
    assert!(r.get("auth").is_none(), "AWS_IAM is never made public");
    let r = route(&routes, "POST", "/v1");
    assert_eq!(r["response"]["status"].as_integer(), Some(418), "status from MethodResponses");
    let r = route(&routes, "PUT", "/v1");
    assert_eq!(r["response"]["body"].as_str(), Some(""), "a VTL template is not copied");
    assert!(!routes.iter().any(|r| r["path"].as_str().is_some_and(|p| p.contains("/a") || p.contains("/b"))));

    let ups = &doc["upstreams"];
    assert_eq!(ups["order_fn"]["url"].as_str(), Some("${ORDER_FN_URL}"));
    assert_eq!(ups["files_example_com"]["url"].as_str(), Some("https://files.example.com:8443"));
    for needle in [
        "not mapped: method GET /v1/{proxy+} (FilesGet): AWS_IAM authorization",
        "not mapped: method PUT /v1 (Vtl): mock response template uses VTL",
        "not mapped: AWS::ApiGateway::Method LoopMethod: its resource path is not known",
        "not mapped: method GET / (RootHealth): mock response headers [\"method.response.header.Access-Control-Allow-Origin\"]",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
    assert_checks(&toml_text, &[("ORDER_FN_URL", "http://127.0.0.1:9")]);

    // --keep-issuer: the Cognito authorizer's pool ARN is only known at deploy time.
    let (toml_text, _) = import_ok(&["cloudformation", &f, "--keep-issuer"]);
    let i = &parse(&toml_text)["auth"]["issuers"][0];
    assert_eq!(i["issuer"].as_str(), Some("${AUTHORIZER_ISSUER}"));
    assert_eq!(i["jwks_uri"].as_str(), Some("${AUTHORIZER_ISSUER}/.well-known/jwks.json"));
}

const HTTP_API: &str = r#"
Resources:
  Api:
    Type: AWS::ApiGatewayV2::Api
    Properties: { Name: http, ProtocolType: HTTP }
  Auth:
    Type: AWS::ApiGatewayV2::Authorizer
    Properties:
      ApiId: !Ref Api
      AuthorizerType: JWT
      IdentitySource: ["$request.header.Authorization"]
      JwtConfiguration: { Issuer: "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Pool", Audience: [abc] }
  Backend:
    Type: AWS::ApiGatewayV2::Integration
    Properties: { ApiId: !Ref Api, IntegrationType: HTTP_PROXY, IntegrationMethod: ANY, IntegrationUri: "http://backend.internal:3000", PayloadFormatVersion: "1.0" }
  Default:
    Type: AWS::ApiGatewayV2::Route
    Properties: { ApiId: !Ref Api, RouteKey: $default, Target: !Sub "integrations/${Backend}" }
  Item:
    Type: AWS::ApiGatewayV2::Route
    Properties:
      ApiId: !Ref Api
      RouteKey: "DELETE /items/{id}"
      AuthorizationType: JWT
      AuthorizerId: !Ref Auth
      AuthorizationScopes: [items/delete]
      Target: !Join ["/", [integrations, !Ref Backend]]
"#;

/// `AWS::ApiGatewayV2::Route`: `$default`, a method + path key, JWT scopes, an HTTP_PROXY
/// integration (its URL becomes the upstream's) referenced by `!Sub` and `!Join`.
#[test]
fn http_api_routes_and_default_route() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = temp_file(&dir, "http.yaml", HTTP_API);
    let (toml_text, stderr) = import_ok(&["cloudformation", &f]);
    let doc = parse(&toml_text);
    let routes = routes(&doc);
    for path in ["/", "/{proxy+}"] {
        let r = route(&routes, "ANY", path);
        assert_eq!(r["auth"].as_str(), Some("none"), "$default without authorization");
        assert_eq!(r["upstream"].as_str(), Some("backend_internal"));
    }
    let r = route(&routes, "DELETE", "/items/{id}");
    assert_eq!(strs(&r["scopes"]), ["items/delete"]);
    assert_eq!(doc["upstreams"]["backend_internal"]["url"].as_str(), Some("http://backend.internal:3000"));
    assert!(
        toml_text.contains("Replaced: AWS::ApiGatewayV2::Authorizer Auth"),
        "the file names the issuer it replaced"
    );
    assert!(!stderr.contains("upstream backend_internal: url is"), "no placeholder for a known URL");
    assert_checks(&toml_text, &[]);
    let (toml_text, _) = import_ok(&["cloudformation", &f, "--keep-issuer"]);
    let i = &parse(&toml_text)["auth"]["issuers"][0];
    assert_eq!(i["issuer"].as_str(), Some("https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Pool"));
    assert_eq!(strs(&i["audiences"]), ["abc"]);
    assert_checks(&toml_text, &[]);
}

/// Integrations without a URL become `${NAME_URL}` placeholders; `check` names the variable;
/// --upstream fills them in by upstream name or logical id.
#[test]
fn upstream_placeholders_and_flags() {
    let seed = fixture("jwt-authorizer-http-api.yaml");
    let seed = seed.to_str().expect("utf-8");
    let (toml_text, stderr) = import_ok(&["cloudformation", seed]);
    let doc = parse(&toml_text);
    assert_eq!(doc["upstreams"]["order_lambda_integration"]["url"].as_str(), Some("${ORDER_LAMBDA_INTEGRATION_URL}"));
    assert_eq!(
        doc["upstreams"]["get_order_lambda_integration"]["url"].as_str(),
        Some("${GET_ORDER_LAMBDA_INTEGRATION_URL}")
    );
    assert!(stderr.contains("--upstream order_lambda_integration=URL"), "{stderr}");
    let o = check(&toml_text, &[("GET_ORDER_LAMBDA_INTEGRATION_URL", "http://127.0.0.1:9")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("ORDER_LAMBDA_INTEGRATION_URL is not set"), "{}", text(&o.stderr));
    assert_checks(
        &toml_text,
        &[
            ("GET_ORDER_LAMBDA_INTEGRATION_URL", "http://127.0.0.1:9"),
            ("ORDER_LAMBDA_INTEGRATION_URL", "http://127.0.0.1:9"),
        ],
    );

    let (toml_text, _) = import_ok(&[
        "cloudformation",
        seed,
        "--upstream",
        "OrderLambdaIntegration=http://10.0.0.5:8080/base",
        "--upstream",
        "get_order_lambda_integration=https://orders.example.com",
    ]);
    let doc = parse(&toml_text);
    assert_eq!(doc["upstreams"]["order_lambda_integration"]["url"].as_str(), Some("http://10.0.0.5:8080/base"));
    assert_eq!(doc["upstreams"]["get_order_lambda_integration"]["url"].as_str(), Some("https://orders.example.com"));
    assert_checks(&toml_text, &[]);
}

const UNMAPPABLE: &str = r#"
Resources:
  Api:
    Type: AWS::ApiGateway::RestApi
    Properties: { Name: keyed }
  Key:
    Type: AWS::ApiGateway::ApiKey
  Plan:
    Type: AWS::ApiGateway::UsagePlan
  PlanKey:
    Type: AWS::ApiGateway::UsagePlanKey
  Validator:
    Type: AWS::ApiGateway::RequestValidator
    Properties: { RestApiId: !Ref Api, ValidateRequestBody: true }
  LambdaAuth:
    Type: AWS::ApiGateway::Authorizer
    Properties: { RestApiId: !Ref Api, Type: TOKEN, AuthorizerUri: "arn:aws:apigateway:us-east-1:lambda:path/x" }
  Stage:
    Type: AWS::ApiGateway::Stage
    Properties: { RestApiId: !Ref Api, StageName: prod, Variables: { backend: "b.example.com" } }
  Reports:
    Type: AWS::ApiGateway::Resource
    Properties: { RestApiId: !Ref Api, ParentId: !GetAtt Api.RootResourceId, PathPart: reports }
  ReportsGet:
    Type: AWS::ApiGateway::Method
    Properties:
      RestApiId: !Ref Api
      ResourceId: !Ref Reports
      HttpMethod: GET
      AuthorizationType: CUSTOM
      AuthorizerId: !Ref LambdaAuth
      ApiKeyRequired: true
      RequestValidatorId: !Ref Validator
      Integration: { Type: HTTP_PROXY, IntegrationHttpMethod: GET, Uri: "http://${stageVariables.backend}/reports" }
  Client:
    Type: AWS::Cognito::UserPoolClient
    Properties: { AllowedOAuthFlows: [code], AllowedOAuthScopes: [openid] }
  Client2:
    Type: AWS::Cognito::UserPoolClient
    Properties:
      ClientName: m2m
      AllowedOAuthFlows: [client_credentials]
      AllowedOAuthScopes: [other/thing.read, !Sub "${Unknown}/x", !If [IsProd, a/b, c/d]]
"#;

/// What has no counterpart is listed as "not mapped: ..." (exit 0); a route behind a Lambda
/// authorizer still needs a token; a client keeps only the scopes the input defines.
#[test]
fn unmappable_things_are_listed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = temp_file(&dir, "keyed.yaml", UNMAPPABLE);
    let (toml_text, stderr) = import_ok(&["cloudformation", &f]);
    for needle in [
        "not mapped: AWS::ApiGateway::ApiKey Key: API key",
        "not mapped: AWS::ApiGateway::UsagePlan Plan: usage plan",
        "not mapped: AWS::ApiGateway::UsagePlanKey PlanKey",
        "not mapped: AWS::ApiGateway::RequestValidator Validator: request validator",
        "not mapped: AWS::ApiGateway::Authorizer LambdaAuth: TOKEN (Lambda) authorizer",
        "not mapped: AWS::ApiGateway::Stage Stage: stage variables",
        "not mapped: method GET /reports (ReportsGet): API key requirement",
        "not mapped: method GET /reports (ReportsGet): request validator",
        "not mapped: method GET /reports (ReportsGet): CUSTOM authorization; the route needs any valid token",
        "not mapped: method GET /reports (ReportsGet): stage variables in the integration URL",
        "not mapped: app client Client: no client_credentials flow",
        "not mapped: client m2m: scope {\"Fn::Sub\":\"${Unknown}/x\"} is only known at deploy time",
        "not mapped: client m2m: scope \"other/thing.read\" is defined by no resource server",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
    let doc = parse(&toml_text);
    let all = routes(&doc);
    let r = route(&all, "GET", "/reports");
    assert!(r.get("auth").is_none(), "a Lambda-authorized route is not made public");
    let clients = doc["issuer"]["clients"].as_array().expect("clients");
    assert_eq!(clients.len(), 1);
    assert!(strs(&clients[0]["allowed_scopes"]).is_empty());
    assert!(toml_text.contains("#   - AWS::ApiGateway::ApiKey Key: API key"), "the file lists them too");
    assert_checks(&toml_text, &[("REPORTS_GET_URL", "http://127.0.0.1:9")]);
}

/// Strings from the input are written through TOML escaping: quotes, backslashes, newlines,
/// non-ASCII, and `${` (which the config would read as a variable) never reaches a value.
#[test]
fn strings_are_escaped() {
    let template = r#"{
      "Resources": {
        "Rs": {"Type": "AWS::Cognito::UserPoolResourceServer", "Properties": {"Identifier": "api", "Scopes": [{"ScopeName": "read"}]}},
        "C": {"Type": "AWS::Cognito::UserPoolClient", "Properties": {"ClientName": "quo\"te\\back ünï", "AllowedOAuthFlows": ["client_credentials"], "AllowedOAuthScopes": ["api/read"]}},
        "Api": {"Type": "AWS::ApiGateway::RestApi"},
        "R": {"Type": "AWS::ApiGateway::Resource", "Properties": {"ParentId": {"Fn::GetAtt": ["Api", "RootResourceId"]}, "PathPart": "x"}},
        "M": {"Type": "AWS::ApiGateway::Method", "Properties": {"ResourceId": {"Ref": "R"}, "HttpMethod": "GET", "AuthorizationType": "NONE",
          "Integration": {"Type": "MOCK", "IntegrationResponses": [{"StatusCode": "200", "ResponseTemplates": {"application/json": "{\"a\": \"line1\nline2 'q' \\\"dq\\\" \\\\ tab\t\"}"}}]}}}
      }
    }"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let f = temp_file(&dir, "esc.json", template);
    let (toml_text, stderr) = import_ok(&["cloudformation", &f]);
    let doc = parse(&toml_text);
    assert_eq!(doc["issuer"]["clients"][0]["client_id"].as_str(), Some("quo\"te\\back ünï"));
    let body = doc["routes"][0]["response"]["body"].as_str().expect("body");
    assert_eq!(body, "{\"a\": \"line1\nline2 'q' \\\"dq\\\" \\\\ tab\t\"}");
    assert_checks(&toml_text, &[]);
    let secret = secret_for(&stderr, "quo\"te\\back ünï");
    assert!(!secret.is_empty());
}

/// Without -o the file goes to stdout and everything else to stderr.
#[test]
fn without_output_the_file_goes_to_stdout() {
    let o = import(&["cloudformation", fixture("jwt-authorizer-http-api.yaml").to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(0));
    let stdout = text(&o.stdout);
    let stderr = text(&o.stderr);
    parse(&stdout);
    assert!(stdout.contains("[[issuer.clients]]"));
    let secret = secret_for(&stderr, "omw-user-pool");
    assert!(!stdout.contains(&secret));
}

const SAM: &str = r#"
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Globals:
  HttpApi:
    Auth:
      DefaultAuthorizer: Jwt
      Authorizers:
        Jwt:
          IdentitySource: $request.header.Authorization
          JwtConfiguration:
            issuer: https://cognito-idp.us-east-2.amazonaws.com/us-east-2_Sam
            audience: [samclient]
Resources:
  Pool:
    Type: AWS::Cognito::UserPool
  Api:
    Type: AWS::Serverless::Api
    Properties:
      StageName: prod
      Auth:
        DefaultAuthorizer: Cognito
        Authorizers:
          Cognito:
            UserPoolArn: !GetAtt Pool.Arn
  OrdersFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.handler
      Runtime: python3.12
      Events:
        List:
          Type: Api
          Properties:
            RestApiId: !Ref Api
            Path: /orders
            Method: get
            Auth:
              AuthorizationScopes: [orders/read]
        Open:
          Type: Api
          Properties:
            RestApiId: !Ref Api
            Path: /ping
            Method: any
            Auth: { Authorizer: NONE }
        Queue:
          Type: SQS
          Properties: { Queue: arn:aws:sqs:us-east-1:123456789012:q }
  HttpFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.handler
      Runtime: python3.12
      Events:
        Items:
          Type: HttpApi
          Properties:
            Path: /items/{id}
            Method: DELETE
            Auth:
              AuthorizationScopes: [items/delete]
"#;

/// SAM: `Api` / `HttpApi` events of `AWS::Serverless::Function` become routes to the function,
/// with the authorizer from the API resource or the template's Globals.
#[test]
fn sam_function_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = temp_file(&dir, "sam.yaml", SAM);
    let (toml_text, stderr) = import_ok(&["cloudformation", &f]);
    assert!(!stderr.contains("Transform"), "the SAM transform is understood: {stderr}");
    let doc = parse(&toml_text);
    let routes = routes(&doc);
    assert_eq!(routes.len(), 3, "{routes:#?}");
    let r = route(&routes, "GET", "/orders");
    assert_eq!(strs(&r["scopes"]), ["orders/read"]);
    assert_eq!(r["upstream"].as_str(), Some("orders_function"));
    let r = route(&routes, "ANY", "/ping");
    assert_eq!(r["auth"].as_str(), Some("none"));
    let r = route(&routes, "DELETE", "/items/{id}");
    assert_eq!(strs(&r["scopes"]), ["items/delete"]);
    assert_eq!(r["upstream"].as_str(), Some("http_function"));
    assert_checks(
        &toml_text,
        &[("ORDERS_FUNCTION_URL", "http://127.0.0.1:9"), ("HTTP_FUNCTION_URL", "http://127.0.0.1:9")],
    );

    let (toml_text, _) = import_ok(&["cloudformation", &f, "--keep-issuer"]);
    let doc = parse(&toml_text);
    let issuers = doc["auth"]["issuers"].as_array().expect("issuers");
    assert_eq!(issuers.len(), 2, "{issuers:#?}");
    assert!(issuers.iter().any(|i| i["issuer"].as_str() == Some("${API_COGNITO_ISSUER}")));
    let jwt = issuers
        .iter()
        .find(|i| i["issuer"].as_str() == Some("https://cognito-idp.us-east-2.amazonaws.com/us-east-2_Sam"))
        .expect("the Globals JWT authorizer");
    assert_eq!(strs(&jwt["audiences"]), ["samclient"]);
}

// ---------------------------------------------------------------------------------------------
// OpenAPI

#[test]
fn openapi_rest_export() {
    let (toml_text, stderr) = import_ok(&["openapi", fixture("rest-api-export.oas30.json").to_str().expect("utf-8")]);
    let doc = parse(&toml_text);
    let routes = routes(&doc);
    let r = route(&routes, "GET", "/orders");
    assert_eq!(strs(&r["scopes"]), ["orders/orders.read"]);
    assert_eq!(r["upstream"].as_str(), Some("list_orders"), "named after the Lambda function in the uri");
    let r = route(&routes, "POST", "/orders");
    assert_eq!(strs(&r["scopes"]), ["orders/orders.write", "orders/orders.admin"]);
    let r = route(&routes, "GET", "/orders/{id}");
    assert_eq!(r["upstream"].as_str(), Some("orders_internal_example"));
    assert_eq!(
        doc["upstreams"]["orders_internal_example"]["url"].as_str(),
        Some("http://orders.internal.example:8080")
    );
    let r = route(&routes, "GET", "/health");
    assert_eq!(r["auth"].as_str(), Some("none"), "no security: public");
    assert_eq!(r["response"]["body"].as_str(), Some(r#"{"status":"ok"}"#));
    let r = route(&routes, "ANY", "/{proxy+}");
    assert!(r.get("auth").is_none(), "Lambda authorizer: still a token");
    let r = route(&routes, "GET", "/reports");
    assert!(r.get("auth").is_none(), "API key: still a token");
    // No Cognito resources in an export: resource servers from the scopes the routes use.
    let rs = &doc["issuer"]["resource_servers"][0];
    assert_eq!(rs["identifier"].as_str(), Some("orders"));
    assert_eq!(strs(&rs["scopes"]), ["orders.read", "orders.write", "orders.admin"]);
    for needle in [
        "security scheme api_key: API key",
        "security scheme legacy-authorizer: token (Lambda) authorizer",
        "x-amazon-apigateway-request-validators",
        "x-amazon-apigateway-gateway-responses",
        "POST /orders (rest-api-export.oas30.json): request validator",
        "basePath \"prod\"",
    ] {
        assert!(
            stderr.contains(&format!("not mapped: rest-api-export.oas30.json: {needle}")) || stderr.contains(needle),
            "missing {needle:?}:\n{stderr}"
        );
    }
    let vars = placeholder_vars(&stderr);
    assert_eq!(vars.len(), 4, "{stderr}");
    let env: Vec<(&str, &str)> = vars.iter().map(|v| (v.as_str(), "http://127.0.0.1:9")).collect();
    assert_checks(&toml_text, &env);

    // --keep-issuer: the Cognito pool ARN gives the issuer.
    let (toml_text, _) =
        import_ok(&["openapi", fixture("rest-api-export.oas30.json").to_str().expect("utf-8"), "--keep-issuer"]);
    let i = &parse(&toml_text)["auth"]["issuers"][0];
    assert_eq!(i["issuer"].as_str(), Some("https://cognito-idp.us-east-1.amazonaws.com/us-east-1_AbCdEfGhI"));
}

#[test]
fn swagger2_export_mock_routes() {
    let (toml_text, stderr) =
        import_ok(&["openapi", fixture("rest-api-export.swagger2.json").to_str().expect("utf-8")]);
    let doc = parse(&toml_text);
    let routes = routes(&doc);
    let r = route(&routes, "GET", "/book");
    assert_eq!(strs(&r["scopes"]), ["API/book.get"]);
    assert_eq!(
        r["response"]["body"].as_str(),
        Some(r#"{"Result":"Success","Description":"your GET for /book is completed"}"#)
    );
    assert!(
        stderr.contains("not mapped: POST /book (rest-api-export.swagger2.json): mock response template uses VTL"),
        "{stderr}"
    );
    assert!(stderr.contains("basePath \"/prod\""), "{stderr}");
    assert_checks(&toml_text, &[]);

    // The same export twice: each route once (two would overlap), the rest reported.
    let f = fixture("rest-api-export.swagger2.json");
    let f = f.to_str().expect("utf-8");
    let (toml_text, stderr) = import_ok(&["openapi", f, f]);
    assert_eq!(parse(&toml_text)["routes"].as_array().expect("routes").len(), 2);
    assert!(stderr.contains("GET /book: the same route as from"), "{stderr}");
    assert_checks(&toml_text, &[]);
}

#[test]
fn openapi_http_export() {
    let (toml_text, stderr) = import_ok(&["openapi", fixture("http-api-export.oas30.yaml").to_str().expect("utf-8")]);
    let doc = parse(&toml_text);
    let routes = routes(&doc);
    assert_eq!(strs(&route(&routes, "POST", "/api/v1/order")["scopes"]), ["order/post.order"]);
    assert_eq!(route(&routes, "GET", "/public/status")["auth"].as_str(), Some("none"));
    assert_eq!(doc["upstreams"]["status_example_com"]["url"].as_str(), Some("https://status.example.com"));
    let vars = placeholder_vars(&stderr);
    let env: Vec<(&str, &str)> = vars.iter().map(|v| (v.as_str(), "http://127.0.0.1:9")).collect();
    assert_checks(&toml_text, &env);
}

/// A REST API whose definition is an inline OpenAPI `Body` in the template.
#[test]
fn cloudformation_inline_openapi_body() {
    let t = r#"
Resources:
  Api:
    Type: AWS::ApiGateway::RestApi
    Properties:
      Body:
        openapi: "3.0.1"
        info: { title: inline, version: "1" }
        paths:
          /ping:
            get:
              x-amazon-apigateway-integration:
                type: mock
                responses: { default: { statusCode: "200", responseTemplates: { application/json: '{"pong":true}' } } }
"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let f = temp_file(&dir, "inline.yaml", t);
    let (toml_text, _) = import_ok(&["cloudformation", &f]);
    let all = routes(&parse(&toml_text));
    let r = route(&all, "GET", "/ping");
    assert_eq!(r["response"]["body"].as_str(), Some(r#"{"pong":true}"#));
    assert_checks(&toml_text, &[]);
}

// ---------------------------------------------------------------------------------------------
// Refusals: exit 2, a clear message, nothing written

#[test]
fn refusals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seed = fixture("jwt-authorizer-http-api.yaml");
    let seed = seed.to_str().expect("utf-8");
    let not_template = temp_file(&dir, "data.json", r#"{"name": "not a template", "items": [1, 2]}"#);
    let list = temp_file(&dir, "list.yaml", "- a\n- b\n");
    let broken = temp_file(&dir, "broken.yaml", "Resources:\n  A: [unclosed\n");
    let bad_tag = temp_file(&dir, "tag.yaml", "Resources:\n  A: !<tag:example.com,2000:x> 1\n");
    let no_type = temp_file(&dir, "notype.yaml", "Resources:\n  A:\n    Properties: {}\n");
    let oas = fixture("rest-api-export.oas30.json");
    let oas = oas.to_str().expect("utf-8");
    let cognito_only = fixture("cdk-client-credentials-cognito.template.json");
    let cognito_only = cognito_only.to_str().expect("utf-8");
    let missing = dir.path().join("missing.yaml");
    let missing = missing.to_str().expect("utf-8");

    assert_refused(&["yaml", seed], "invalid value 'yaml'");
    assert_refused(&["cloudformation", not_template.as_str()], "not a CloudFormation template");
    assert_refused(&["cloudformation", list.as_str()], "no mapping at the top");
    assert_refused(&["cloudformation", broken.as_str()], "not valid YAML");
    assert_refused(&["cloudformation", bad_tag.as_str()], "unknown YAML tag");
    assert_refused(&["cloudformation", no_type.as_str()], "has no Type");
    assert_refused(&["cloudformation", oas], "use `scopegate import openapi`");
    assert_refused(&["openapi", seed], "use `scopegate import cloudformation`");
    assert_refused(&["openapi", not_template.as_str()], "not an OpenAPI 3 or Swagger 2 document");
    assert_refused(&["cloudformation", cognito_only], "no API found");
    assert_refused(&["cloudformation", missing], "cannot read");
    assert_refused(&["cloudformation", seed, "--upstream", "nosuch=http://127.0.0.1:1"], "no integration of that name");
    assert_refused(&["cloudformation", seed, "--upstream", "order_lambda_integration"], "expected NAME=URL");
    assert_refused(
        &["cloudformation", seed, "--upstream", "order_lambda_integration=ftp://x"],
        "is not an http:// or https:// URL",
    );
    assert_refused(&["cloudformation", seed, "--keep-issuer", "--issuer", "x"], "--issuer");
    assert_refused(&["cloudformation"], "required");
}

#[test]
fn keep_issuer_without_an_authorizer_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = "Resources:\n  Api: { Type: AWS::ApiGatewayV2::Api }\n  R: { Type: AWS::ApiGatewayV2::Route, Properties: { RouteKey: GET /x, Target: integrations/abc } }\n";
    let f = temp_file(&dir, "t.yaml", t);
    assert_refused(&["cloudformation", &f, "--keep-issuer"], "defines no Cognito user pool or JWT authorizer");
}

/// An existing -o file is kept without --force, replaced with it.
#[test]
fn existing_output_needs_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("gateway.toml");
    std::fs::write(&out, "# mine\n").expect("write");
    let out_s = out.to_str().expect("utf-8");
    let seed = fixture("jwt-authorizer-http-api.yaml");
    let seed = seed.to_str().expect("utf-8");
    let o = import(&["cloudformation", seed, "-o", out_s]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("exists; pass --force"), "{}", text(&o.stderr));
    assert!(!text(&o.stderr).contains("client secret"), "no secret is printed for a refused import");
    assert_eq!(std::fs::read_to_string(&out).expect("read"), "# mine\n", "the file is untouched");
    assert_eq!(std::fs::read_dir(dir.path()).expect("read_dir").count(), 1, "no temporary file left");
    let o = import(&["cloudformation", seed, "-o", out_s, "--force"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(std::fs::read_to_string(&out).expect("read").contains("[[routes]]"));
}
