//! A route's scope requirement against a verified principal (API Gateway semantics: any one
//! of `scopes`, and every one of `scopes_all`).

use crate::auth::verify::Principal;

pub fn allows(any_of: &[String], all_of: &[String], who: &Principal) -> bool {
    (any_of.is_empty() || any_of.iter().any(|s| who.has_scope(s))) && all_of.iter().all(|s| who.has_scope(s))
}
