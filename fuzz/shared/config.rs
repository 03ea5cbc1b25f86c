//! Shared by the `config` fuzz target and tests/props.rs: where a config error may point.
#![allow(dead_code)]

use std::path::Path;

use scopegate::config::Config;

/// Where parsed configs pretend to live: relative file names resolve to a directory that does
/// not exist.
pub const CONFIG_PATH: &str = "/nonexistent-scopegate-fuzz/gateway.toml";

/// Inputs that could make validation read a device or a pseudo-file (`jwks_file = "/dev/zero"`
/// reads forever); such a config is an operator's choice, not an attack, and is skipped.
pub fn reads_special_files(text: &str) -> bool {
    ["dev", "proc", "sys"].iter().any(|s| text.contains(s))
}

/// Parses `text`; panics when an error's position is not inside the text. Returns whether it
/// loaded.
pub fn parse_and_check(text: &str) -> bool {
    match Config::parse(Path::new(CONFIG_PATH), text) {
        Ok(_) => true,
        Err(e) => {
            assert!(!e.0.is_empty(), "an error without a diagnostic");
            let lines: Vec<&str> = text.split('\n').collect();
            for d in &e.0 {
                assert!(!d.message.is_empty(), "a diagnostic without a message");
                if let Some((line, col)) = d.pos {
                    assert!(line >= 1 && line <= lines.len(), "{d}: line {line} outside 1..={}", lines.len());
                    let width = lines[line - 1].chars().count();
                    assert!(col >= 1 && col <= width + 1, "{d}: column {col} outside 1..={}", width + 1);
                }
            }
            false
        }
    }
}
