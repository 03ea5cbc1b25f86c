//! The verified claims in the shape API Gateway hands a Lambda proxy integration as
//! `requestContext.authorizer`, for a route's `claims_header`: code moved off Lambda keeps
//! reading its claims the same way.
//!
//! - `aws-rest` (Cognito user pool authorizer): `{"claims":{...}}`, every claim a string;
//!   `exp` and `iat` written as Java's `Date.toString` does (`Thu May 04 03:50:06 UTC 2023`).
//! - `aws-http` (JWT authorizer): `{"jwt":{"claims":{...},"scopes":[...]}}`, every claim a
//!   string, and the token's scopes as an array.
//!
//! A claim that is an array or an object is written as its JSON text.

use http::HeaderValue;
use serde_json::{Map, Value};

use crate::auth::verify::Principal;
use crate::config::Compat;

/// The header value for `who` under `compat`; `None` when the principal kept no claims, or
/// under `compat = "none"` (validation refuses `claims_header` there).
pub fn authorizer_header(compat: Compat, who: &Principal) -> Option<HeaderValue> {
    let payload: Map<String, Value> = serde_json::from_slice(who.claims()?).ok()?;
    let rest = compat == Compat::AwsRest;
    let claims: Map<String, Value> = payload
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s,
                Value::Number(n) if rest && (k == "exp" || k == "iat") => match n.as_f64() {
                    Some(t) => java_date(t as i64),
                    None => n.to_string(),
                },
                other => other.to_string(),
            };
            (k, Value::String(text))
        })
        .collect();
    let value = match compat {
        Compat::None => return None,
        Compat::AwsRest => serde_json::json!({ "claims": claims }),
        Compat::AwsHttp => {
            serde_json::json!({ "jwt": { "claims": claims, "scopes": who.scopes().collect::<Vec<_>>() } })
        }
    };
    // serde_json escapes control characters; what is left is a valid header value.
    HeaderValue::from_str(&value.to_string()).ok()
}

/// `secs` since the epoch as Java's `Date.toString` in UTC: `Thu May 04 03:50:06 UTC 2023`.
pub fn java_date(secs: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{} {} {:02} {:02}:{:02}:{:02} UTC {}",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        year
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_written_like_java() {
        assert_eq!(java_date(1_683_172_206), "Thu May 04 03:50:06 UTC 2023");
        assert_eq!(java_date(0), "Thu Jan 01 00:00:00 UTC 1970");
        assert_eq!(java_date(951_782_400), "Tue Feb 29 00:00:00 UTC 2000");
        assert_eq!(java_date(4_102_444_799), "Thu Dec 31 23:59:59 UTC 2099");
    }
}
