//! Bearer-token authentication: extract -> verify (keys from `jwks`) -> scope.

pub mod extract;
pub mod jwks;
pub mod key_cache;
pub mod scope;
pub mod verify;
