//! The one bearer token of a request, or none.

use http::{HeaderMap, HeaderName};

use crate::error::AuthFailure;

/// Reads the token from `header`. A `Bearer ` prefix (any case) is optional, as with Cognito.
/// An absent or blank header is `Missing`; a header sent twice is ambiguous and `Malformed`.
pub fn bearer<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<&'a str, AuthFailure> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Err(AuthFailure::Missing);
    };
    if values.next().is_some() {
        return Err(AuthFailure::Malformed);
    }
    let value = value.to_str().map_err(|_| AuthFailure::Malformed)?.trim();
    let token = match value.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("bearer ") => value[7..].trim_start(),
        _ if value.eq_ignore_ascii_case("bearer") => "",
        _ => value,
    };
    if token.is_empty() {
        return Err(AuthFailure::Missing);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("authorization", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn prefix_is_optional_and_case_insensitive() {
        let name = HeaderName::from_static("authorization");
        for (v, want) in [
            ("Bearer abc", Ok("abc")),
            ("bearer abc", Ok("abc")),
            ("BEARER   abc ", Ok("abc")),
            ("abc", Ok("abc")),
            ("Bearer", Err(AuthFailure::Missing)),
            ("Bearer ", Err(AuthFailure::Missing)),
            ("", Err(AuthFailure::Missing)),
        ] {
            assert_eq!(bearer(&with(&[v]), &name), want, "{v:?}");
        }
        assert_eq!(bearer(&with(&[]), &name), Err(AuthFailure::Missing));
        assert_eq!(bearer(&with(&["a", "b"]), &name), Err(AuthFailure::Malformed));
    }
}
