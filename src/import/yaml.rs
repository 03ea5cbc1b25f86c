//! CloudFormation YAML (and JSON) to a JSON tree, with the short intrinsic-function tags
//! (`!Ref X`, `!Sub ...`, `!GetAtt A.B`, `!Join [...]`...) rewritten to their long JSON forms
//! (`{"Ref": "X"}`, `{"Fn::Sub": ...}`, `{"Fn::GetAtt": ["A", "B"]}`...), so the mapping code
//! reads one shape whatever the template was written in.
//!
//! The parser is `saphyr-parser` (YAML 1.2, event based, keeps each node's tag); the tree is
//! built here from its events, and plain scalars are typed by the YAML 1.2 core schema.

use std::borrow::Cow;
use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Tag};
use serde_json::{Map, Value};

/// Deepest nesting accepted; a template is nowhere near it, a hostile file could be.
const MAX_DEPTH: usize = 256;

/// Parses a template: JSON when it looks like JSON, else YAML (of which JSON is a subset, but
/// the JSON parser's messages are clearer for JSON files).
pub fn parse_document(text: &str) -> Result<Value, String> {
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    if trimmed.starts_with('{') {
        return serde_json::from_str(trimmed).map_err(|e| format!("not valid JSON: {e}"));
    }
    parse_yaml(trimmed)
}

enum Frame {
    Seq(Vec<Value>, usize, Option<Tag>),
    Map(Map<String, Value>, Option<String>, usize, Option<Tag>),
}

/// Parses the first YAML document of `text`.
pub fn parse_yaml(text: &str) -> Result<Value, String> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Value> = HashMap::new();
    let mut root: Option<Value> = None;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| format!("not valid YAML: {e}"))?;
        let finished: Option<(Value, usize)> = match event {
            Event::StreamStart | Event::DocumentStart(_) | Event::Nothing => None,
            Event::DocumentEnd | Event::StreamEnd => {
                if root.is_some() {
                    break;
                }
                None
            }
            Event::Alias(id) => {
                let v = anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| format!("line {}: an alias refers to an unknown anchor", span.start.line()))?;
                Some((v, 0))
            }
            Event::Scalar(s, style, anchor, tag) => Some((scalar(&s, style, tag.as_deref())?, anchor)),
            Event::SequenceStart(anchor, tag) => {
                if stack.len() >= MAX_DEPTH {
                    return Err("the document is nested too deeply".to_owned());
                }
                stack.push(Frame::Seq(Vec::new(), anchor, tag.map(Cow::into_owned)));
                None
            }
            Event::MappingStart(anchor, tag) => {
                if stack.len() >= MAX_DEPTH {
                    return Err("the document is nested too deeply".to_owned());
                }
                stack.push(Frame::Map(Map::new(), None, anchor, tag.map(Cow::into_owned)));
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq(items, anchor, tag)) => Some((tagged(Value::Array(items), tag.as_ref())?, anchor)),
                _ => return Err("unbalanced YAML sequence".to_owned()),
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map(map, None, anchor, tag)) => Some((tagged(Value::Object(map), tag.as_ref())?, anchor)),
                _ => return Err("unbalanced YAML mapping".to_owned()),
            },
        };
        let Some((value, anchor)) = finished else { continue };
        if anchor != 0 {
            anchors.insert(anchor, value.clone());
        }
        match stack.last_mut() {
            None => root = Some(value),
            Some(Frame::Seq(items, ..)) => items.push(value),
            Some(Frame::Map(map, key, ..)) => match key.take() {
                None => {
                    let k = match value {
                        Value::String(s) => s,
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Null => String::new(),
                        _ => return Err(format!("line {}: a mapping key must be a scalar", span.start.line())),
                    };
                    *key = Some(k);
                }
                Some(k) => {
                    map.insert(k, value);
                }
            },
        }
    }
    Ok(root.unwrap_or(Value::Null))
}

/// A scalar: tagged (`!Ref X`), quoted (always a string) or plain (typed by the core schema).
fn scalar(s: &str, style: ScalarStyle, tag: Option<&Tag>) -> Result<Value, String> {
    if let Some(tag) = tag {
        if tag.handle == "tag:yaml.org,2002:" || tag.handle == "!!" {
            return Ok(match tag.suffix.as_str() {
                "str" => Value::String(s.to_owned()),
                _ => plain(s),
            });
        }
        // `!GetAtt Resource.Attribute` is the one short form whose scalar is split.
        if tag.handle == "!" && tag.suffix == "GetAtt" {
            let (res, attr) = s.split_once('.').unwrap_or((s, ""));
            return tagged(Value::Array(vec![Value::from(res), Value::from(attr)]), Some(tag));
        }
        return tagged(Value::String(s.to_owned()), Some(tag));
    }
    Ok(match style {
        ScalarStyle::Plain => plain(s),
        _ => Value::String(s.to_owned()),
    })
}

/// YAML 1.2 core schema for plain scalars.
fn plain(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = s.parse::<i64>() {
        return Value::from(i);
    }
    let numeric = s.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
        && s.bytes().any(|b| b.is_ascii_digit());
    if numeric {
        if let Some(n) = s.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
            return Value::Number(n);
        }
    }
    Value::String(s.to_owned())
}

/// Applies a node's tag: CloudFormation's short forms become their long forms; YAML's own
/// core tags leave the node as it is; any other local tag `!Name` becomes `{"Fn::Name": node}`.
fn tagged(v: Value, tag: Option<&Tag>) -> Result<Value, String> {
    let Some(tag) = tag else { return Ok(v) };
    if tag.handle == "!!" || tag.handle == "tag:yaml.org,2002:" {
        return Ok(v);
    }
    if tag.handle != "!" || tag.suffix.is_empty() {
        return Err(format!("unknown YAML tag {}{}", tag.handle, tag.suffix));
    }
    let key = match tag.suffix.as_str() {
        "Ref" => "Ref".to_owned(),
        "Condition" => "Condition".to_owned(),
        name => format!("Fn::{name}"),
    };
    let mut m = Map::new();
    m.insert(key, v);
    Ok(Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn short_tags_become_long_forms() {
        let v = parse_yaml(
            "A: !Ref X\nB: !GetAtt Pool.Arn\nC: !Join ['/', [integrations, !Ref I]]\nD: !Sub 'a${B}'\nE: !If [c, 1, 2]\nF: True\nG: '1'\nH: !ImportValue x\n",
        )
        .unwrap();
        assert_eq!(
            v,
            json!({
                "A": {"Ref": "X"},
                "B": {"Fn::GetAtt": ["Pool", "Arn"]},
                "C": {"Fn::Join": ["/", ["integrations", {"Ref": "I"}]]},
                "D": {"Fn::Sub": "a${B}"},
                "E": {"Fn::If": ["c", 1, 2]},
                "F": true,
                "G": "1",
                "H": {"Fn::ImportValue": "x"},
            })
        );
    }

    #[test]
    fn anchors_and_bad_input() {
        let v = parse_yaml("a: &x [1, 2]\nb: *x\n").unwrap();
        assert_eq!(v, json!({"a": [1, 2], "b": [1, 2]}));
        assert!(parse_yaml("a: [1, 2\n").is_err());
        assert!(parse_yaml("a: !<tag:example.com:x> 1\n").is_err());
        assert!(parse_document("{\"a\": ").is_err());
        let deep = "[".repeat(10_000);
        assert!(parse_yaml(&deep).is_err());
    }
}
