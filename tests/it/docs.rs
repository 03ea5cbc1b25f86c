//! The repository documents its own contract: every key the config parser accepts is in
//! docs/configuration.md, and the committed JSON Schema is the one the binary prints.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn repo_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Follows a `$ref` into `$defs`, and into `items` / `additionalProperties` for tables that
/// repeat (`[[routes]]`) or are named (`[upstreams.NAME]`).
fn table<'a>(root: &'a Value, mut v: &'a Value) -> &'a Value {
    loop {
        if let Some(r) = v.get("$ref").and_then(Value::as_str) {
            let name = r.trim_start_matches("#/$defs/");
            v = &root["$defs"][name];
        } else if let Some(items) = v.get("items") {
            v = items;
        } else if let Some(ap) = v.get("additionalProperties").filter(|a| a.is_object()) {
            v = ap;
        } else {
            return v;
        }
    }
}

/// Every table of the file and its keys, as `path -> keys` (`upstreams.NAME`, `routes.response`).
fn schema_keys(root: &Value, v: &Value, path: &str, out: &mut BTreeMap<String, BTreeSet<String>>) {
    let t = table(root, v);
    let Some(props) = t.get("properties").and_then(Value::as_object) else { return };
    let mut here = BTreeSet::new();
    for (key, sub) in props {
        let named_tables = table(root, sub).get("properties").is_some();
        let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
        let child =
            if sub.get("additionalProperties").is_some_and(Value::is_object) { format!("{child}.NAME") } else { child };
        if named_tables {
            // A sub-table is documented under its own heading (a row for it is optional).
            schema_keys(root, sub, &child, out);
        } else {
            here.insert(key.clone());
        }
    }
    if !path.is_empty() {
        out.entry(path.to_owned()).or_default().extend(here);
    }
}

/// The keys documented per table: rows `| \`key\` | ...` under a heading naming the table.
fn documented_keys(md: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in md.lines() {
        if line.starts_with('#') {
            current = line.split('`').nth(1).map(|t| t.trim_matches(['[', ']']).to_owned());
            continue;
        }
        if let (Some(table), Some(rest)) = (&current, line.strip_prefix("| `")) {
            if let Some(key) = rest.split('`').next() {
                out.entry(table.clone()).or_default().insert(key.to_owned());
            }
        }
    }
    out
}

#[test]
fn every_key_the_parser_accepts_is_documented() {
    let schema: Value = serde_json::from_str(&scopegate::config::schema()).expect("schema is JSON");
    let mut want = BTreeMap::new();
    schema_keys(&schema, &schema, "", &mut want);
    // The walk must have found the file's tables, or this test would pass on nothing.
    for t in ["server", "server.tls", "auth", "auth.issuers", "upstreams.NAME", "routes", "routes.response", "issuer"] {
        assert!(want.contains_key(t), "schema walk missed [{t}]: {want:?}");
    }
    assert!(want["server"].contains("header_read_timeout") && want["routes"].contains("scopes_all"), "{want:?}");
    let have = documented_keys(&repo_file("docs/configuration.md"));
    let mut missing = Vec::new();
    for (table, keys) in &want {
        for key in keys {
            if !have.get(table).is_some_and(|k| k.contains(key)) {
                missing.push(format!("[{table}] {key}"));
            }
        }
    }
    assert!(missing.is_empty(), "keys the parser accepts but docs/configuration.md does not document: {missing:?}");
    let mut unknown = Vec::new();
    for (table, keys) in &have {
        for key in keys {
            let subtable = want.contains_key(&format!("{table}.{key}"));
            if !subtable && !want.get(table).is_some_and(|k| k.contains(key)) {
                unknown.push(format!("[{table}] {key}"));
            }
        }
    }
    assert!(unknown.is_empty(), "docs/configuration.md documents keys the parser refuses: {unknown:?}");
}

#[test]
fn the_committed_schema_is_what_the_binary_prints() {
    let out = Command::new(env!("CARGO_BIN_EXE_scopegate")).arg("schema").output().expect("run scopegate schema");
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(
        printed,
        repo_file("docs/gateway.schema.json"),
        "docs/gateway.schema.json is stale: regenerate it with `scopegate schema > docs/gateway.schema.json`"
    );
}
