//! Every answer the gateway writes itself comes from the outcome types here, each mapped to
//! status, headers and a JSON body in one exhaustive `match`: [`Reject`] for the request path
//! and the admin listener (`{"message":...}`), [`TokenError`] for the built-in issuer's token
//! endpoint (RFC 6749 `{"error":...}`). A new variant cannot ship without its answer.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// Why a token was refused. Logged and counted; never shown to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    Missing,
    Malformed,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    WrongTokenUse,
    DisallowedAlg,
    UnknownKid,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 10] = [
        AuthFailure::Missing,
        AuthFailure::Malformed,
        AuthFailure::BadSignature,
        AuthFailure::Expired,
        AuthFailure::NotYetValid,
        AuthFailure::WrongIssuer,
        AuthFailure::WrongAudience,
        AuthFailure::WrongTokenUse,
        AuthFailure::DisallowedAlg,
        AuthFailure::UnknownKid,
    ];

    /// The `error_description` of an `aws-http` answer: short, generic, never a secret (in
    /// the HTTP API JWT authorizer's own words where it has published them).
    pub fn aws_description(self) -> &'static str {
        match self {
            AuthFailure::Missing => "the token is missing",
            AuthFailure::Malformed => "the token is malformed",
            AuthFailure::BadSignature => "the token signature is invalid",
            AuthFailure::Expired => "the token has expired",
            AuthFailure::NotYetValid => "the token is not valid yet",
            AuthFailure::WrongIssuer => "the token does not have a valid issuer",
            AuthFailure::WrongAudience => "the token does not have a valid audience",
            AuthFailure::WrongTokenUse => "the token is not of the expected type",
            AuthFailure::DisallowedAlg => "the token signing method is not allowed",
            AuthFailure::UnknownKid => "the token signing key is unknown",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing_token",
            AuthFailure::Malformed => "malformed_token",
            AuthFailure::BadSignature => "bad_signature",
            AuthFailure::Expired => "expired",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::WrongIssuer => "wrong_issuer",
            AuthFailure::WrongAudience => "wrong_audience",
            AuthFailure::WrongTokenUse => "wrong_token_use",
            AuthFailure::DisallowedAlg => "disallowed_alg",
            AuthFailure::UnknownKid => "unknown_kid",
        }
    }
}

pub use crate::config::{Compat, ScopeFailureStatus};

/// `x-amzn-ErrorType` of an `aws-rest` answer.
pub const X_AMZN_ERROR_TYPE: HeaderName = HeaderName::from_static("x-amzn-errortype");
/// The request id under its `aws-rest` name, on every answer.
pub const X_AMZN_REQUEST_ID: HeaderName = HeaderName::from_static("x-amzn-requestid");
/// The request id under its `aws-http` name, on every answer.
pub const APIGW_REQUEST_ID: HeaderName = HeaderName::from_static("apigw-requestid");

/// A request the gateway answers itself instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    BadRequest,
    NotFound,
    MethodNotAllowed {
        allow: HeaderValue,
    },
    HeaderTooLarge,
    Unauthorized(AuthFailure),
    InsufficientScope(ScopeFailureStatus),
    /// The token's issuer has never had keys: it cannot be judged yet.
    KeysUnavailable,
    BadGateway,
    GatewayTimeout,
}

pub type Body = http_body_util::Either<crate::pool::UpstreamBody, Full<Bytes>>;

const UNAUTHORIZED: &str = r#"{"message":"Unauthorized"}"#;
const MISSING_AUTHENTICATION_TOKEN: &str = r#"{"message":"Missing Authentication Token"}"#;

impl Reject {
    /// The failure reason for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Reject::BadRequest => "bad_request",
            Reject::NotFound => "not_found",
            Reject::MethodNotAllowed { .. } => "method_not_allowed",
            Reject::HeaderTooLarge => "header_too_large",
            Reject::Unauthorized(f) => f.as_str(),
            Reject::InsufficientScope(_) => "insufficient_scope",
            Reject::KeysUnavailable => "keys_unavailable",
            Reject::BadGateway => "upstream_unreachable",
            Reject::GatewayTimeout => "upstream_timeout",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Reject::BadRequest => StatusCode::BAD_REQUEST,
            Reject::NotFound => StatusCode::NOT_FOUND,
            Reject::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Reject::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Reject::Unauthorized(_) | Reject::InsufficientScope(ScopeFailureStatus::Unauthorized) => {
                StatusCode::UNAUTHORIZED
            }
            Reject::InsufficientScope(ScopeFailureStatus::Forbidden) => StatusCode::FORBIDDEN,
            Reject::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Reject::BadGateway => StatusCode::BAD_GATEWAY,
            Reject::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn body(&self) -> &'static str {
        match self {
            Reject::BadRequest => r#"{"message":"Bad Request"}"#,
            Reject::NotFound => r#"{"message":"Not Found"}"#,
            Reject::MethodNotAllowed { .. } => r#"{"message":"Method Not Allowed"}"#,
            Reject::HeaderTooLarge => r#"{"message":"Request Header Fields Too Large"}"#,
            Reject::Unauthorized(_) | Reject::InsufficientScope(ScopeFailureStatus::Unauthorized) => UNAUTHORIZED,
            Reject::InsufficientScope(ScopeFailureStatus::Forbidden) => r#"{"message":"Forbidden"}"#,
            Reject::KeysUnavailable => r#"{"message":"Service Unavailable"}"#,
            Reject::BadGateway => r#"{"message":"Bad Gateway"}"#,
            Reject::GatewayTimeout => r#"{"message":"Gateway Timeout"}"#,
        }
    }

    /// The complete answer: status, JSON body, and the headers each outcome owes the client.
    pub fn into_response(self) -> Response<Body> {
        let mut resp = Response::new(Body::Right(Full::new(Bytes::from_static(self.body().as_bytes()))));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match self {
            // RFC 6750 §3: no error code when the request carried no token at all.
            Reject::Unauthorized(AuthFailure::Missing) => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Reject::Unauthorized(_) => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(r#"Bearer error="invalid_token""#));
            }
            Reject::InsufficientScope(_) => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(r#"Bearer error="insufficient_scope""#));
            }
            Reject::MethodNotAllowed { allow } => {
                h.insert(header::ALLOW, allow);
            }
            Reject::KeysUnavailable => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            Reject::BadRequest
            | Reject::NotFound
            | Reject::HeaderTooLarge
            | Reject::BadGateway
            | Reject::GatewayTimeout => {}
        }
        resp
    }
}

impl Reject {
    /// The answer under `server.compat`: `none` is [`Reject::into_response`]; the AWS modes
    /// change the answers API Gateway writes differently (refused tokens and scopes, unmatched
    /// routes) and keep the others. The request id header each mode owes is added by the caller
    /// to every response, refused or not.
    pub fn into_compat_response(self, compat: Compat) -> Response<Body> {
        match compat {
            Compat::None => self.into_response(),
            Compat::AwsRest => self.into_aws_rest_response(),
            Compat::AwsHttp => self.into_aws_http_response(),
        }
    }

    /// REST API with a Cognito user pool authorizer: every refused token or scope is
    /// `401 Unauthorized` (whatever `auth.scope_failure_status` says), an unmatched method or
    /// resource is `403 Missing Authentication Token`; each names its `x-amzn-ErrorType`.
    fn into_aws_rest_response(self) -> Response<Body> {
        let (status, body, error_type) = match self {
            Reject::Unauthorized(_) | Reject::InsufficientScope(_) => {
                (StatusCode::UNAUTHORIZED, UNAUTHORIZED, "UnauthorizedException")
            }
            Reject::NotFound | Reject::MethodNotAllowed { .. } => {
                (StatusCode::FORBIDDEN, MISSING_AUTHENTICATION_TOKEN, "MissingAuthenticationTokenException")
            }
            Reject::BadRequest
            | Reject::HeaderTooLarge
            | Reject::KeysUnavailable
            | Reject::BadGateway
            | Reject::GatewayTimeout => return self.into_response(),
        };
        let mut resp =
            json_response(status, &HeaderValue::from_static("application/json"), Bytes::from_static(body.as_bytes()));
        resp.headers_mut().insert(X_AMZN_ERROR_TYPE, HeaderValue::from_static(error_type));
        resp
    }

    /// HTTP API with a JWT authorizer: a refused token is `401 Unauthorized` with a
    /// `www-authenticate` that says why in generic words, a missing scope is `403 Forbidden`
    /// (whatever `auth.scope_failure_status` says), an unmatched route `404 Not Found`.
    fn into_aws_http_response(self) -> Response<Body> {
        let json = HeaderValue::from_static("application/json");
        match self {
            Reject::Unauthorized(f) => {
                let mut resp =
                    json_response(StatusCode::UNAUTHORIZED, &json, Bytes::from_static(UNAUTHORIZED.as_bytes()));
                let www =
                    format!(r#"Bearer scope="" error="invalid_token" error_description="{}""#, f.aws_description());
                if let Ok(v) = HeaderValue::from_str(&www) {
                    resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
                resp
            }
            Reject::InsufficientScope(_) => {
                json_response(StatusCode::FORBIDDEN, &json, Bytes::from_static(br#"{"message":"Forbidden"}"#))
            }
            Reject::NotFound | Reject::MethodNotAllowed { .. } => {
                json_response(StatusCode::NOT_FOUND, &json, Bytes::from_static(br#"{"message":"Not Found"}"#))
            }
            Reject::BadRequest
            | Reject::HeaderTooLarge
            | Reject::KeysUnavailable
            | Reject::BadGateway
            | Reject::GatewayTimeout => self.into_response(),
        }
    }
}

/// Why the token endpoint refused to issue a token: an RFC 6749 §5.2 error, or the gateway's
/// own failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    InvalidRequest,
    InvalidClient {
        /// The client authenticated with HTTP Basic: the answer names the scheme.
        basic: bool,
    },
    UnsupportedGrantType,
    InvalidScope,
    /// Too many secret checks at once (503 with `retry-after`).
    TemporarilyUnavailable,
    /// The token could not be signed: the gateway's fault, answered 500.
    ServerError,
}

/// `retry-after` of a token request refused because the secret checks are busy.
const BUSY_RETRY_AFTER: &str = "1";

impl TokenError {
    /// The status and the `error` code of the JSON body.
    pub fn status_and_code(self) -> (StatusCode, &'static str) {
        match self {
            TokenError::InvalidRequest => (StatusCode::BAD_REQUEST, "invalid_request"),
            TokenError::InvalidClient { .. } => (StatusCode::UNAUTHORIZED, "invalid_client"),
            TokenError::UnsupportedGrantType => (StatusCode::BAD_REQUEST, "unsupported_grant_type"),
            TokenError::InvalidScope => (StatusCode::BAD_REQUEST, "invalid_scope"),
            TokenError::TemporarilyUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
            TokenError::ServerError => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        }
    }

    /// The complete answer: never cached (RFC 6749 §5.1), and the headers each outcome owes.
    pub fn into_response(self) -> Response<Body> {
        let (status, code) = self.status_and_code();
        let body = Bytes::from(format!(r#"{{"error":"{code}"}}"#));
        let mut resp = json_response(status, &HeaderValue::from_static("application/json"), body);
        let h = resp.headers_mut();
        no_store(h);
        match self {
            TokenError::InvalidClient { basic: true } => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(r#"Basic realm="scopegate""#));
            }
            TokenError::TemporarilyUnavailable => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static(BUSY_RETRY_AFTER));
            }
            TokenError::InvalidRequest
            | TokenError::InvalidClient { basic: false }
            | TokenError::UnsupportedGrantType
            | TokenError::InvalidScope
            | TokenError::ServerError => {}
        }
        resp
    }
}

/// The token endpoint's answers, good or bad, are never stored by a cache.
pub(crate) fn no_store(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// A JSON answer the gateway writes itself, outside the outcome tables (mock routes, the
/// issuer's and the admin listener's successful answers).
pub fn json_response(status: StatusCode, content_type: &HeaderValue, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Body::Right(Full::new(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, content_type.clone());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn parts(r: Reject) -> (u16, String, Option<String>, Option<String>) {
        let resp = r.into_response();
        let status = resp.status().as_u16();
        let www = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
        let ct = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap(), www, ct)
    }

    #[tokio::test]
    async fn every_reject_has_its_answer() {
        let json = Some("application/json".to_owned());
        let rows: Vec<(Reject, u16, &str, Option<&str>)> = vec![
            (Reject::BadRequest, 400, r#"{"message":"Bad Request"}"#, None),
            (Reject::NotFound, 404, r#"{"message":"Not Found"}"#, None),
            (
                Reject::MethodNotAllowed { allow: HeaderValue::from_static("GET") },
                405,
                r#"{"message":"Method Not Allowed"}"#,
                None,
            ),
            (Reject::HeaderTooLarge, 431, r#"{"message":"Request Header Fields Too Large"}"#, None),
            (Reject::Unauthorized(AuthFailure::Missing), 401, UNAUTHORIZED, Some("Bearer")),
            (
                Reject::InsufficientScope(ScopeFailureStatus::Unauthorized),
                401,
                UNAUTHORIZED,
                Some(r#"Bearer error="insufficient_scope""#),
            ),
            (
                Reject::InsufficientScope(ScopeFailureStatus::Forbidden),
                403,
                r#"{"message":"Forbidden"}"#,
                Some(r#"Bearer error="insufficient_scope""#),
            ),
            (Reject::KeysUnavailable, 503, r#"{"message":"Service Unavailable"}"#, None),
            (Reject::BadGateway, 502, r#"{"message":"Bad Gateway"}"#, None),
            (Reject::GatewayTimeout, 504, r#"{"message":"Gateway Timeout"}"#, None),
        ];
        for (reject, status, body, www) in rows {
            let got = parts(reject.clone()).await;
            assert_eq!(got.0, status, "{reject:?}");
            assert_eq!(got.1, body, "{reject:?}");
            assert_eq!(got.2.as_deref(), www, "{reject:?}");
            assert_eq!(got.3, json, "{reject:?}");
        }
        for f in AuthFailure::ALL.into_iter().filter(|f| *f != AuthFailure::Missing) {
            let got = parts(Reject::Unauthorized(f)).await;
            assert_eq!((got.0, got.1.as_str()), (401, UNAUTHORIZED));
            assert_eq!(got.2.as_deref(), Some(r#"Bearer error="invalid_token""#));
        }
    }

    #[tokio::test]
    async fn compat_modes_change_only_their_answers() {
        let all = [
            Reject::BadRequest,
            Reject::NotFound,
            Reject::MethodNotAllowed { allow: HeaderValue::from_static("GET") },
            Reject::HeaderTooLarge,
            Reject::Unauthorized(AuthFailure::Expired),
            Reject::InsufficientScope(ScopeFailureStatus::Forbidden),
            Reject::InsufficientScope(ScopeFailureStatus::Unauthorized),
            Reject::KeysUnavailable,
            Reject::BadGateway,
            Reject::GatewayTimeout,
        ];
        for r in all {
            let none = r.clone().into_compat_response(Compat::None);
            let own = r.clone().into_response();
            assert_eq!((none.status(), none.headers()), (own.status(), own.headers()), "{r:?}");
            let rest = r.clone().into_compat_response(Compat::AwsRest);
            let http = r.clone().into_compat_response(Compat::AwsHttp);
            let rest_type = rest.headers().get("x-amzn-errortype").map(|v| v.to_str().unwrap().to_owned());
            let http_www = http.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
            match &r {
                Reject::Unauthorized(_) => {
                    assert_eq!(
                        (rest.status(), rest_type.as_deref()),
                        (StatusCode::UNAUTHORIZED, Some("UnauthorizedException"))
                    );
                    assert_eq!(http.status(), StatusCode::UNAUTHORIZED);
                    assert_eq!(
                        http_www.as_deref(),
                        Some(r#"Bearer scope="" error="invalid_token" error_description="the token has expired""#)
                    );
                }
                Reject::InsufficientScope(_) => {
                    assert_eq!(
                        (rest.status(), rest_type.as_deref()),
                        (StatusCode::UNAUTHORIZED, Some("UnauthorizedException"))
                    );
                    assert_eq!((http.status(), http_www), (StatusCode::FORBIDDEN, None));
                }
                Reject::NotFound | Reject::MethodNotAllowed { .. } => {
                    assert_eq!(
                        (rest.status(), rest_type.as_deref()),
                        (StatusCode::FORBIDDEN, Some("MissingAuthenticationTokenException"))
                    );
                    assert_eq!((http.status(), http.headers().get("allow")), (StatusCode::NOT_FOUND, None));
                }
                _ => {
                    for resp in [rest, http] {
                        assert_eq!((resp.status(), resp.headers()), (own.status(), own.headers()), "{r:?}");
                    }
                }
            }
        }
        for f in AuthFailure::ALL {
            // Fixed text: a valid header value, no quote to break out of the parameter.
            assert!(!f.aws_description().contains('"') && HeaderValue::from_str(f.aws_description()).is_ok());
        }
    }

    #[tokio::test]
    async fn every_token_error_has_its_answer() {
        let basic = Some(r#"Basic realm="scopegate""#);
        // (outcome, status, error code, www-authenticate, retry-after)
        type Row = (TokenError, u16, &'static str, Option<&'static str>, Option<&'static str>);
        let rows: Vec<Row> = vec![
            (TokenError::InvalidRequest, 400, "invalid_request", None, None),
            (TokenError::InvalidClient { basic: false }, 401, "invalid_client", None, None),
            (TokenError::InvalidClient { basic: true }, 401, "invalid_client", basic, None),
            (TokenError::UnsupportedGrantType, 400, "unsupported_grant_type", None, None),
            (TokenError::InvalidScope, 400, "invalid_scope", None, None),
            (TokenError::TemporarilyUnavailable, 503, "temporarily_unavailable", None, Some("1")),
            (TokenError::ServerError, 500, "server_error", None, None),
        ];
        for (e, status, code, www, retry) in rows {
            let resp = e.into_response();
            let h = resp.headers().clone();
            let header = |name: &str| h.get(name).map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(resp.status().as_u16(), status, "{e:?}");
            assert_eq!(header("www-authenticate").as_deref(), www, "{e:?}");
            assert_eq!(header("retry-after").as_deref(), retry, "{e:?}");
            assert_eq!(header("cache-control").as_deref(), Some("no-store"), "{e:?}");
            assert_eq!(header("content-type").as_deref(), Some("application/json"), "{e:?}");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, format!(r#"{{"error":"{code}"}}"#).as_bytes(), "{e:?}");
        }
    }
}
