//! Finding a value in JSON text by its JSON pointer, without parsing the document.
//!
//! Why: a transform that changes one or two fields (a recipient, an IP) spends most of its
//! call building a `serde_json::Value` of the whole payload and writing it out again, on
//! every event. With [`locate`] it parses only the value it changes and splices the new text
//! in; everything else is copied as it is. Used through [`crate::RawEvent`] and
//! [`crate::export_raw_transform!`].

use std::borrow::Cow;
use std::ops::Range;

/// Where the value at a pointer lies in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The value's own bytes: replace this range with other JSON text to change it.
    pub value: Range<usize>,
    /// The member (`"key": value`) or array element with one comma next to it: remove this
    /// range to delete it and keep the text valid JSON. Empty for the pointer `""`, the whole
    /// document, which cannot be removed.
    pub member: Range<usize>,
}

/// The span of the value `pointer` (RFC 6901, like `/email/to` or `/tags/0`) names in the
/// JSON text `json`, or `None` when there is no such value. An error when the text is not
/// JSON along the way (the rest of the document is not checked), when an object on the way
/// has the key twice, or when the pointer is not a pointer.
pub fn locate(json: &str, pointer: &str) -> Result<Option<Span>, String> {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(format!(
            "`{pointer}` is not a JSON pointer (it must start with `/`, like /email/to)"
        ));
    }
    let bytes = json.as_bytes();
    let start = skip_space(bytes, 0);
    if pointer.is_empty() || start == bytes.len() {
        let end = skip_value(bytes, start)?;
        return Ok(Some(Span {
            value: start..end,
            member: start..start,
        }));
    }
    // Only the containers on the way down are walked, not the whole document first.
    let mut open = start;
    let mut found = None;
    for token in pointer[1..].split('/') {
        // Decoded only when it has an escape: most pointers have none, and a plugin that
        // locates two fields per event paid four allocations and searches for nothing.
        let token = if token.contains('~') {
            Cow::Owned(token.replace("~1", "/").replace("~0", "~"))
        } else {
            Cow::Borrowed(token)
        };
        let entry = match bytes.get(open) {
            Some(b'{') => find_entry(json, open, |_, key| {
                key.map_or(Ok(false), |key| key_matches(json, key, &token))
            })?,
            Some(b'[') => match token.parse::<usize>() {
                // `01` is not an index in RFC 6901; `-` (past the end) names nothing to read.
                Ok(wanted) if token == wanted.to_string() => {
                    find_entry(json, open, |index, _| Ok(index == wanted))?
                }
                _ => None,
            },
            _ => None,
        };
        match entry {
            Some(entry) => {
                open = entry.value.start;
                found = Some(entry);
            }
            None => return Ok(None),
        }
    }
    Ok(found)
}

/// Walks the entries of the object or array opening at `open` and returns the span of the
/// first one `wanted` accepts. `wanted` is given the entry's index and, in an object, the
/// range of its quoted key.
fn find_entry(
    json: &str,
    open: usize,
    mut wanted: impl FnMut(usize, Option<Range<usize>>) -> Result<bool, String>,
) -> Result<Option<Span>, String> {
    let bytes = json.as_bytes();
    let close = if bytes[open] == b'{' { b'}' } else { b']' };
    let mut at = skip_space(bytes, open + 1);
    if bytes.get(at) == Some(&close) {
        return Ok(None);
    }
    // Where the comma before this entry begins: removing an entry after the first takes
    // that comma with it.
    let mut previous_end = None;
    let mut found = None;
    for index in 0.. {
        let start = at;
        let key = if close == b'}' {
            if bytes.get(at) != Some(&b'"') {
                return Err(not_json(at, "an object key"));
            }
            let key_end = skip_string(bytes, at)?;
            at = skip_space(bytes, key_end);
            if bytes.get(at) != Some(&b':') {
                return Err(not_json(at, "`:` after an object key"));
            }
            at = skip_space(bytes, at + 1);
            Some(start..key_end)
        } else {
            None
        };
        let value = at..skip_value(bytes, at)?;
        let next = next_entry(bytes, value.end, close)?;
        if wanted(index, key.clone())? {
            let Some(key) = key else {
                return Ok(Some(entry(start, value, previous_end, next)));
            };
            // An object is read to its end: a key given twice is refused, because which of
            // the two a receiver's parser takes is not defined (RFC 8259), so an edit of one
            // (a redaction) could leave the other in place.
            if found.is_some() {
                return Err(format!(
                    "the payload has the key {} twice in one object; which one a receiver \
                     reads is not defined, so it is not edited",
                    &json[key]
                ));
            }
            found = Some(entry(start, value.clone(), previous_end, next));
        }
        match next {
            Some(next) => {
                previous_end = Some(value.end);
                at = next;
            }
            None => return Ok(found),
        }
    }
    Ok(found)
}

/// After an entry's value ending at `value_end`: where the next entry of the object or array
/// starts, or `None` at its `close`.
fn next_entry(bytes: &[u8], value_end: usize, close: u8) -> Result<Option<usize>, String> {
    let at = skip_space(bytes, value_end);
    match bytes.get(at) {
        Some(b',') => Ok(Some(skip_space(bytes, at + 1))),
        Some(&b) if b == close => Ok(None),
        _ => Err(not_json(at, &format!("`,` or `{}`", close as char))),
    }
}

/// The span of an entry (a member from its key, or an element) starting at `start`. Its
/// removable range takes the comma before it, or for the first entry the comma after it.
fn entry(
    start: usize,
    value: Range<usize>,
    previous_end: Option<usize>,
    next: Option<usize>,
) -> Span {
    let member = match (previous_end, next) {
        (Some(previous_end), _) => previous_end..value.end,
        (None, Some(next)) => start..next,
        (None, None) => start..value.end,
    };
    Span { value, member }
}

/// Whether the quoted key at `quoted` is `key`; escapes are decoded only where there are any.
fn key_matches(json: &str, quoted: Range<usize>, key: &str) -> Result<bool, String> {
    let inner = &json[quoted.start + 1..quoted.end - 1];
    if !inner.contains('\\') {
        return Ok(inner == key);
    }
    let decoded: String = serde_json::from_str(&json[quoted.clone()])
        .map_err(|err| not_json(quoted.start, &format!("a valid key ({err})")))?;
    Ok(decoded == key)
}

fn skip_space(bytes: &[u8], mut at: usize) -> usize {
    while matches!(bytes.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

/// The end (exclusive) of the string whose opening quote is at `at`.
fn skip_string(bytes: &[u8], at: usize) -> Result<usize, String> {
    let mut i = at + 1;
    loop {
        i = next_quote_or_backslash(bytes, i);
        match bytes.get(i) {
            Some(b'"') => return Ok(i + 1),
            Some(_) => i += 2,
            None => return Err(not_json(at, "the end of a string")),
        }
    }
}

/// The index of the first `"` or `\\` at or after `from`, or the length. Eight bytes at a
/// time: most of a payload's bytes are inside strings, and a plugin has no SIMD, so a loop
/// per byte (under fuel metering) was most of what finding a field cost.
fn next_quote_or_backslash(bytes: &[u8], from: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut i = from;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        // A zero byte in `word ^ (ONES * c)` is a byte equal to `c`; this test has no false
        // negatives, and a false positive only sends us to the byte loop below.
        let quotes = word ^ (ONES * u64::from(b'"'));
        let slashes = word ^ (ONES * u64::from(b'\\'));
        let found =
            (quotes.wrapping_sub(ONES) & !quotes | slashes.wrapping_sub(ONES) & !slashes) & HIGHS;
        if found != 0 {
            break;
        }
        i += 8;
    }
    bytes[i.min(bytes.len())..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\')
        .map_or(bytes.len(), |n| i + n)
}

/// The end (exclusive) of the value starting at `at`.
fn skip_value(bytes: &[u8], at: usize) -> Result<usize, String> {
    match bytes.get(at) {
        Some(b'"') => skip_string(bytes, at),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut i = at;
            while let Some(&b) = bytes.get(i) {
                match b {
                    b'"' => {
                        i = skip_string(bytes, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            Err(not_json(at, "the end of an object or array"))
        }
        Some(_) => {
            // A number, `true`, `false` or `null`: up to the next delimiter.
            let end = bytes[at..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .map_or(bytes.len(), |n| at + n);
            if end == at {
                Err(not_json(at, "a value"))
            } else {
                Ok(end)
            }
        }
        None => Err(not_json(at, "a value")),
    }
}

fn not_json(at: usize, expected: &str) -> String {
    format!("the payload is not JSON: expected {expected} at byte {at}")
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// Every pointer of a document, the root's `""` included.
    fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
        out.push(at.clone());
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let token = key.replace('~', "~0").replace('/', "~1");
                    pointers(child, format!("{at}/{token}"), out);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    pointers(child, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    fn documents() -> Vec<String> {
        let doc = json!({
            "event_id": "e1", "type": "open", "n": -1.5e3, "ok": true, "none": null,
            "email": {"to": ["x@a.example", "y@b.example"], "from": "a \"b\" \\ c",
                      "tags": [], "empty": {}},
            "a/b": {"m~n": [1, [2, {"deep": "}]"}], 3]},
            "": "empty key",
            "esc\u{e9}\n": 7,
        });
        vec![
            doc.to_string(),
            serde_json::to_string_pretty(&doc).unwrap(),
            // Escapes in keys, whitespace everywhere.
            " { \"k\\u0065y\" : [ 1 , 2 ] , \"z\" : { } } ".to_owned(),
            "[{\"a\":1}, [ ], \"s\", 0]".to_owned(),
        ]
    }

    #[test]
    fn each_pointer_finds_the_value_serde_json_finds() {
        for text in documents() {
            let doc: Value = serde_json::from_str(&text).unwrap();
            let mut all = Vec::new();
            pointers(&doc, String::new(), &mut all);
            for pointer in &all {
                let span = locate(&text, pointer).unwrap().expect(pointer);
                let found: Value = serde_json::from_str(&text[span.value.clone()]).unwrap();
                assert_eq!(Some(&found), doc.pointer(pointer), "{pointer} in {text}");

                // Replacing the value's text is `pointer_mut` assignment.
                let mut replaced = text.clone();
                replaced.replace_range(span.value.clone(), "\"X\"");
                let mut expected = doc.clone();
                *expected.pointer_mut(pointer).unwrap() = json!("X");
                assert_eq!(serde_json::from_str::<Value>(&replaced).unwrap(), expected);

                if pointer.is_empty() {
                    continue;
                }
                // Removing the member's text is removing the key or element.
                let mut removed = text.clone();
                removed.replace_range(span.member.clone(), "");
                let (parent, key) = pointer.rsplit_once('/').unwrap();
                let key = key.replace("~1", "/").replace("~0", "~");
                let mut expected = doc.clone();
                match expected.pointer_mut(parent).unwrap() {
                    Value::Object(map) => {
                        map.shift_remove(&key);
                    }
                    Value::Array(items) => {
                        items.remove(key.parse().unwrap());
                    }
                    _ => unreachable!(),
                }
                let removed: Value = serde_json::from_str(&removed)
                    .unwrap_or_else(|err| panic!("{pointer}: {err} in {removed}"));
                assert_eq!(removed, expected, "{pointer} in {text}");
            }
        }
    }

    #[test]
    fn strings_end_at_their_closing_quote_wherever_it_falls_in_a_word() {
        for len in 0..40 {
            for escape_at in 0..=len {
                // `len` plain bytes with an escaped quote or backslash at `escape_at`.
                let mut inner = "é".repeat(len / 2) + &"a".repeat(len % 2);
                let at = inner
                    .char_indices()
                    .nth(escape_at)
                    .map_or(inner.len(), |(i, _)| i);
                let escape = if escape_at % 2 == 0 { "\\\"" } else { "\\\\" };
                inner.insert_str(at, escape);
                let text = format!("\"{inner}\", 1");
                let end = skip_string(text.as_bytes(), 0).unwrap();
                assert_eq!(&text[end..], ", 1", "{text}");
                let parsed: String = serde_json::from_str(&text[..end]).unwrap();
                assert!(parsed.contains(['"', '\\']), "{text}");
            }
            let open = format!("\"{}", "x".repeat(len));
            assert!(skip_string(open.as_bytes(), 0).is_err(), "{open}");
        }
    }

    #[test]
    fn absent_values_and_bad_input() {
        let text = r#"{"a": {"b": [1, 2]}, "s": "t"}"#;
        for pointer in [
            "/x", "/a/x", "/a/b/2", "/a/b/-", "/a/b/01", "/s/0", "/a/b/0/c",
        ] {
            assert_eq!(locate(text, pointer).unwrap(), None, "{pointer}");
        }
        assert!(
            locate(text, "a/b")
                .unwrap_err()
                .contains("not a JSON pointer")
        );
        // A repeated key on the way is refused, wherever the repeat is.
        for twice in [
            r#"{"e": {"to": "a@x", "to": "b@y"}}"#,
            r#"{"e": {"to": "a@x"}, "e": {"to": "b@y"}}"#,
        ] {
            let err = locate(twice, "/e/to").unwrap_err();
            assert!(err.contains("twice"), "{twice}: {err}");
        }
        assert!(
            locate(r#"{"e": 1, "to": 2, "e": 3}"#, "/to")
                .unwrap()
                .is_some()
        );
        for broken in [
            r#"{"a": "#,
            r#"{"a" 1}"#,
            r#"{"a": "x"#,
            r#"{"a": [1 2]}"#,
            "",
        ] {
            let err = locate(broken, "/a/0").unwrap_err();
            assert!(
                err.starts_with("the payload is not JSON"),
                "{broken}: {err}"
            );
        }
    }
}
