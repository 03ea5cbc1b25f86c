//! gateway.toml: strict TOML -> raw structs ([`raw`]) -> validation ([`validate`]) -> the model,
//! an immutable [`Config`] of plain data.
//!
//! Unknown keys are errors (a typo must not silently disable security). Every string goes
//! through `${NAME}` expansion as it is deserialized, so an unset variable is reported at the
//! position of the string that names it. Parse errors stop at the first problem (that is how
//! TOML parsers work); validation then reports every problem it finds in one pass.
//!
//! This module reads one file, the config itself, and imports none of the modules that run it:
//! the files the config names are read when a snapshot is built from it.

mod diag;
mod model;
mod raw;
mod validate;

use std::path::Path;

#[cfg(test)]
use diag::line_col;
use diag::Diags;
pub use diag::{ConfigError, Diag, Pos, Span};
pub use model::*;
pub use raw::schema;
use raw::RawConfig;

impl Config {
    /// Reads, parses and validates the file: its syntax, types, ranges and the references
    /// between its sections. The files it names are read when a snapshot is built from it
    /// ([`crate::snapshot::compile`]). Used at start-up, by `check`, and by reloads.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let cannot = |e: &dyn std::fmt::Display| {
            ConfigError(vec![Diag { file: path.to_owned(), pos: None, message: format!("cannot read: {e}") }])
        };
        let bytes = crate::files::read(path).map_err(|e| cannot(&e))?;
        let text = String::from_utf8(bytes).map_err(|e| cannot(&e))?;
        Config::parse(path, &text)
    }

    /// Parses and validates `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut diags = Diags { file: path, text, list: Vec::new() };
        let raw: RawConfig = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let message = e.message().trim().to_owned();
                match e.span() {
                    Some(span) => diags.at(&span, message),
                    None => diags.whole(message),
                }
                return Err(ConfigError(diags.list));
            }
        };
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let config = validate::validate(raw, path, &base, &mut diags);
        match config {
            Some(config) if diags.list.is_empty() => Ok(config),
            _ => Err(ConfigError(diags.list)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::raw::expand_with;
    use super::*;

    fn errs(text: &str) -> Vec<String> {
        match Config::parse(Path::new("g.toml"), text) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn unknown_key_is_reported_at_its_position() {
        let e = errs("[server]\nlisten = \"127.0.0.1:0\"\nlisen = 1\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("g.toml:3:1: "), "{e:?}");
    }

    #[test]
    fn env_expansion_and_unset_variable() {
        let vars = |name: &str| (name == "SCOPEGATE_TEST_HOST").then(|| "127.0.0.1".to_owned());
        assert_eq!(expand_with("http://${SCOPEGATE_TEST_HOST}:1", vars).unwrap(), "http://127.0.0.1:1");
        assert!(expand_with("${SCOPEGATE_TEST_PORT}", vars).unwrap_err().contains("SCOPEGATE_TEST_PORT"));
        let e = errs("[upstreams.a]\nurl = \"http://${SCOPEGATE_SURELY_UNSET}\"\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("g.toml:2:7: ") && e[0].contains("SCOPEGATE_SURELY_UNSET"), "{e:?}");
    }

    #[test]
    fn bad_duration_is_positioned() {
        let e = errs("[server]\nrequest_timeout = \"soon\"\n");
        assert!(e[0].starts_with("g.toml:2:19: ") && e[0].contains("invalid duration"), "{e:?}");
    }

    #[test]
    fn every_validation_problem_is_reported() {
        let text = "[[routes]]\npath = \"/a\"\nupstream = \"nope\"\n\n[[routes]]\npath = \"b\"\nmethods = [\"get\"]\nresponse = {}\n";
        let e = errs(text);
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].starts_with("g.toml:3:12: "), "{e:?}");
        assert!(e[1].starts_with("g.toml:6:8: "), "{e:?}");
        assert!(e[2].starts_with("g.toml:7:12: "), "{e:?}");
    }

    #[test]
    fn defaults_apply() {
        let c = Config::parse(Path::new("g.toml"), "").unwrap();
        assert_eq!(c.server.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(c.server.max_header_bytes, 16384);
        assert_eq!(c.auth.leeway, Duration::from_secs(60));
        assert_eq!(c.auth.cache_entries, 65536);
        assert!(c.auth.forward_token && c.auth.identity_headers);
    }

    #[test]
    fn hs_and_none_are_never_allowed() {
        for alg in ["HS256", "none"] {
            let text = format!("[[auth.issuers]]\nissuer = \"i\"\njwks_uri = \"http://k\"\nalgorithms = [\"{alg}\"]\n");
            let e = errs(&text);
            assert!(e.len() == 1 && e[0].starts_with("g.toml:4:15: "), "{e:?}");
        }
    }
}
