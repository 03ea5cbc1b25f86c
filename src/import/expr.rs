//! Helpers both readers share: CloudFormation expressions met in a template or in the OpenAPI
//! body it embeds (references, a short rendering for messages), and mock integrations.

use serde_json::Value;

use super::{Action, Plan};

/// Index of the `}` that closes a `${` whose content starts `s` (nested `${...}` counted, as
/// Serverless variables nest them).
pub(crate) fn closing_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = s.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'{' if i > 0 && bytes[i - 1] == b'$' => depth += 1,
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// A short one-line rendering of a template expression, for messages.
pub(crate) fn compact(v: &Value) -> String {
    let s = serde_json::to_string(v).unwrap_or_default();
    if s.chars().count() > 160 {
        let cut: String = s.chars().take(157).collect();
        format!("{cut}...")
    } else {
        s
    }
}

/// Logical ids a value refers to: `Ref`, `Fn::GetAtt` and `${Name}` / `${Name.Attr}` in `Fn::Sub`.
pub(crate) fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, a) in m {
                match (k.as_str(), a) {
                    ("Ref", Value::String(s)) => out.push(s.clone()),
                    ("Fn::GetAtt", Value::Array(x)) => {
                        if let Some(s) = x.first().and_then(Value::as_str) {
                            out.push(s.to_owned());
                        }
                    }
                    ("Fn::GetAtt", Value::String(s)) => out.push(s.split('.').next().unwrap_or("").to_owned()),
                    ("Fn::Sub", _) => {
                        let tpl = a.as_str().or_else(|| a.get(0).and_then(Value::as_str)).unwrap_or("");
                        let mut rest = tpl;
                        while let Some(i) = rest.find("${") {
                            let after = &rest[i + 2..];
                            let Some(end) = closing_brace(after) else { break };
                            let name = &after[..end];
                            if !name.starts_with('!') {
                                out.push(name.split('.').next().unwrap_or("").to_owned());
                            }
                            rest = &after[end + 1..];
                        }
                        if let Some(vars) = a.get(1) {
                            refs(vars, out);
                        }
                    }
                    _ => refs(a, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| refs(i, out)),
        _ => {}
    }
}

/// A mapping template is written as the body only when it is literal text.
fn literal_template(t: &str) -> bool {
    !t.contains('$') && !t.contains("#set") && !t.contains("#if") && !t.contains("#foreach")
}

pub(crate) fn mock_from(status: Option<String>, templates: Option<&Value>, what: &str, plan: &mut Plan) -> Action {
    let status = status.and_then(|s| s.parse::<u16>().ok()).filter(|s| (200..=999).contains(s)).unwrap_or(200);
    let template = templates.and_then(|t| t.get("application/json")).and_then(Value::as_str);
    let body = match template {
        Some(t) if literal_template(t) => t.to_owned(),
        Some(_) => {
            plan.not_mapped(format!("{what}: mock response template uses VTL; answered with an empty body"));
            String::new()
        }
        None => String::new(),
    };
    Action::Mock { status, content_type: "application/json".to_owned(), body }
}
