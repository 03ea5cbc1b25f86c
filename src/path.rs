//! Request path normalization and route template syntax: what a path means, before any route
//! table looks at it. The config checks templates with it and the route table compiles them with
//! it; neither depends on the other.

use std::borrow::Cow;

/// Why a request path was refused (always answered 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    BadPercentEncoding,
    /// `%2F`, `%5C`, `%00`, a raw `\`, or a path parameter separator (`;` or `%3B`).
    ForbiddenCharacter,
    /// A `..` that climbs above the root.
    AboveRoot,
}

const fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

const fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalizes a request path (no query): decodes percent-encoded unreserved characters,
/// upper-cases the hex of the other escapes, removes `.` and `..` segments (RFC 3986 §5.2.4)
/// and merges repeated slashes. A trailing slash is kept (the upstream receives it), though the
/// route table matches `/a/` as `/a`. A `;` or `%3B` anywhere in the path is refused.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Most paths are already normal: no escapes, no backslash, no empty or dot segments.
    if !needs_work(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(bytes)?;
    let mut out = String::with_capacity(decoded.len());
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for seg in decoded.split('/').skip(1) {
        trailing_slash = false;
        match seg {
            "" | "." => trailing_slash = true,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

fn needs_work(b: &[u8]) -> bool {
    let mut prev_slash = false;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'%' | b'\\' | b';' => return true,
            b'/' if prev_slash => return true,
            b'.' if prev_slash => {
                // "/." followed by end, "/" or ".": a dot segment.
                match b.get(i + 1) {
                    None | Some(b'/') => return true,
                    Some(b'.') if matches!(b.get(i + 2), None | Some(b'/')) => return true,
                    _ => {}
                }
            }
            _ => {}
        }
        prev_slash = c == b'/';
    }
    false
}

fn decode_unreserved(b: &[u8]) -> Result<String, PathError> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' | b';' => return Err(PathError::ForbiddenCharacter),
            b'%' => {
                let (Some(hi), Some(lo)) = (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex))
                else {
                    return Err(PathError::BadPercentEncoding);
                };
                let v = hi << 4 | lo;
                match v {
                    b'/' | b'\\' | b';' | 0 => return Err(PathError::ForbiddenCharacter),
                    v if is_unreserved(v) => out.push(v),
                    v => {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        out.extend_from_slice(&[b'%', HEX[usize::from(v >> 4)], HEX[usize::from(v & 15)]]);
                    }
                }
                i += 3;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    // Only ASCII was written: the input came from a URI (ASCII) and escapes stay escaped.
    String::from_utf8(out).map_err(|_| PathError::BadPercentEncoding)
}

/// One segment of a parsed route template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Literal(String),
    Param,
    Greedy,
}

/// Parses a route template into its segments; returns why it is not one.
pub(crate) fn parse_template(path: &str) -> Result<Vec<Segment>, String> {
    if !path.starts_with('/') {
        return Err("must start with '/'".to_owned());
    }
    if path == "/" {
        return Ok(Vec::new());
    }
    if path.ends_with('/') {
        return Err("must not end with '/' (only the root \"/\" does)".to_owned());
    }
    let raw: Vec<&str> = path[1..].split('/').collect();
    let mut segs = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        if s.is_empty() {
            return Err("has an empty segment ('//')".to_owned());
        }
        if let Some(inner) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let (name, greedy) = match inner.strip_suffix('+') {
                Some(n) => (n, true),
                None => (inner, false),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("{s:?} is not a valid parameter (letters, digits, '_')"));
            }
            if greedy && i + 1 != raw.len() {
                return Err(format!("greedy parameter {s:?} must be the last segment"));
            }
            segs.push(if greedy { Segment::Greedy } else { Segment::Param });
            continue;
        }
        if s.contains(';') {
            return Err(format!(
                "segment {s:?} has a ';': requests with path parameters are refused, so it could never match"
            ));
        }
        if s.contains(['{', '}', '?', '#']) {
            return Err(format!("segment {s:?} has a character that is not allowed in a literal"));
        }
        if *s == "." || *s == ".." {
            return Err("must not have '.' or '..' segments".to_owned());
        }
        // Literals are stored normalized and folded, so they compare equal to folded requests.
        let slashed = format!("/{s}");
        let normal = normalize(&slashed).map_err(|e| format!("segment {s:?}: {e:?}"))?;
        if normal.matches('/').count() != 1 {
            return Err(format!("segment {s:?} is not a single path segment"));
        }
        segs.push(Segment::Literal(normal[1..].to_ascii_lowercase()));
    }
    Ok(segs)
}
