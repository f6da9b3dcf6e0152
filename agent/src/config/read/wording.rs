//! serde's messages in an operator's words: what a value is as written in the file, what a
//! key expects, and the known key or name an unknown one is probably a misspelling of.

use serde_json::Value;

/// The name in backquotes right after `lead` at the start of `msg`.
pub(super) fn quoted_after<'a>(msg: &'a str, lead: &str) -> Option<&'a str> {
    let rest = msg.strip_prefix(lead)?.strip_prefix('`')?;
    rest.split_once('`').map(|(name, _)| name)
}

/// The names serde lists after "expected" (`a`, `a` or `b`, one of `a`, `b`, `c`).
pub(super) fn expected_names(msg: &str) -> Vec<&str> {
    let Some((_, list)) = msg.split_once(", expected ") else {
        return Vec::new();
    };
    list.split('`').skip(1).step_by(2).collect()
}

/// The message for a key no table of this kind has, with the keys it does have.
pub(super) fn unknown_key(field: &str, msg: &str) -> String {
    unknown_key_among(field, &expected_names(msg))
}

/// The message for an unknown key `field` of a table whose keys are `known`.
fn unknown_key_among(field: &str, known: &[&str]) -> String {
    if known.is_empty() {
        return format!("unknown key `{field}`; this table takes no keys");
    }
    let hint = closest(field, known)
        .map(|k| format!("did you mean `{k}`? "))
        .unwrap_or_default();
    format!(
        "unknown key `{field}`; {hint}known keys are {}",
        known.join(", ")
    )
}

/// A known name `word` is probably a misspelling of.
pub(in crate::config) fn closest<'a>(word: &str, names: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    names
        .iter()
        .map(|n| (distance(&word, &n.to_ascii_lowercase()), *n))
        .filter(|(d, n)| *d <= (n.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// A value as it would be written in the file, for messages.
pub(in crate::config) fn shown(v: &Value) -> String {
    match v {
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a table".into(),
        other => other.to_string(),
    }
}

/// What the enum key `field` is, for "... is not a decoder".
pub(super) fn enum_noun(field: &str) -> String {
    match field {
        "decoder" => "a decoder".into(),
        "role" => "a station role".into(),
        "" => "allowed here".into(),
        other => format!("a valid value for {other}"),
    }
}

/// Turns serde's wording into something an operator can act on (`field` is the key's last
/// name, for enums).
pub(super) fn humanize(msg: &str, field: &str) -> String {
    if let Some(v) = quoted_after(msg, "unknown variant ") {
        let names = expected_names(msg);
        return format!(
            "{v:?} is not {}; use one of {}",
            enum_noun(field),
            names.join(", ")
        );
    }
    match invalid(msg) {
        Some((found, expected)) => {
            format!("{} is not {}", found_text(found), expected_text(expected))
        }
        None => msg.to_string(),
    }
}

/// serde's "invalid type: FOUND, expected EXPECTED" (or "invalid value: ...").
fn invalid(msg: &str) -> Option<(&str, &str)> {
    ["invalid type: ", "invalid value: "]
        .iter()
        .find_map(|lead| {
            msg.strip_prefix(lead)
                .and_then(|rest| rest.rsplit_once(", expected "))
        })
}

/// The value of an "invalid type" message, as written in the file.
pub(super) fn found_of(msg: &str) -> Option<String> {
    invalid(msg).map(|(found, _)| found_text(found))
}

/// serde's "string \"x\"", "integer `5`", "sequence": as written in the file.
fn found_text(found: &str) -> String {
    if let Some(s) = found.strip_prefix("string ") {
        return s.to_string();
    }
    for lead in ["integer ", "floating point ", "boolean "] {
        if let Some(v) = found.strip_prefix(lead) {
            return v.trim_matches('`').to_string();
        }
    }
    match found {
        "sequence" => "a list".into(),
        "map" => "a table".into(),
        other => other.to_string(),
    }
}

/// serde's "u32", "a string", "a sequence": in words.
fn expected_text(expected: &str) -> String {
    let whole = |max: u64| format!("a whole number from 0 to {max}");
    match expected {
        "u8" => whole(u8::MAX.into()),
        "u16" => whole(u16::MAX.into()),
        "u32" => whole(u32::MAX.into()),
        "u64" | "usize" => "a whole number, 0 or more".into(),
        "a string" | "string or map" => "text in quotes".into(),
        "path string" => "a path in quotes".into(),
        "a boolean" => "true or false".into(),
        "a sequence" => "a list".into(),
        "a map" => "a table".into(),
        e if e.starts_with("struct ") => "a table".into(),
        other => other.to_string(),
    }
}
