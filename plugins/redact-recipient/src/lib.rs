//! mailhook transform: masks, hashes or removes recipient addresses and IP addresses, for
//! receivers that must not see personal data. Which fields, and how, is its config (see
//! the README).

use std::borrow::Cow;

use mailhook_plugin_sdk::{RawEvent, RawOutcome, Value, serde_json, text};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The plugin's config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// `mask` (default: `a***@example.com`, `198.51.100.0`), `hash` (`sha256:<hex>` of
    /// salt + value) or `remove` (the field is deleted).
    mode: String,
    /// JSON pointers (RFC 6901) of the fields to redact; strings and arrays of strings.
    fields: Vec<String>,
    /// Prepended to each value before hashing, so hashes cannot be looked up in a table.
    salt: String,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            mode: "mask".to_owned(),
            fields: vec!["/email/to".to_owned(), "/status/ip".to_owned()],
            salt: String::new(),
        }
    }
}

/// Works on the payload's text: it runs on every event of the accounts that use it, and
/// parsing the whole payload into a `Value` and writing it out again was most of a call.
/// Only the fields named are parsed; the rest of the text is copied as it came.
fn transform(mut event: RawEvent) -> Result<RawOutcome, String> {
    let config: Config = mailhook_plugin_sdk::config()?;
    redact(&mut event.payload, &config)?;
    Ok(RawOutcome::Payload(event.payload))
}

mailhook_plugin_sdk::export_raw_transform!(transform);

fn redact(payload: &mut String, config: &Config) -> Result<(), String> {
    if !matches!(config.mode.as_str(), "mask" | "hash" | "remove") {
        return Err(format!(
            "mode `{}` is not one of mask, hash, remove",
            config.mode
        ));
    }
    for pointer in &config.fields {
        if !pointer.starts_with('/') {
            return Err(format!(
                "field `{pointer}` is not a JSON pointer (like /email/to)"
            ));
        }
        let Some(span) = text::locate(payload, pointer)? else {
            continue;
        };
        if config.mode == "remove" {
            payload.replace_range(span.member, "");
            continue;
        }
        let text = &payload[span.value.clone()];
        let redacted = match text.as_bytes()[0] {
            // A string, the usual case, is redacted without building a `Value`: this runs
            // on every event.
            b'"' => quoted(&redact_text(&unquoted(text, pointer)?, config)),
            b'[' => match serde_json::from_str::<Vec<Cow<str>>>(text) {
                Ok(items) => quoted_list(items.iter().map(|item| redact_text(item, config))),
                // Not only strings: what is not text stays as it is.
                Err(_) => {
                    let mut value: Value = serde_json::from_str(text)
                        .map_err(|err| format!("field `{pointer}` is not JSON: {err}"))?;
                    redact_value(&mut value, config);
                    value.to_string()
                }
            },
            // Only text holds addresses: numbers, objects and nulls are left as they are.
            _ => continue,
        };
        payload.replace_range(span.value, &redacted);
    }
    Ok(())
}

/// The text of the JSON string `quoted`; escapes are decoded only where there are any.
fn unquoted<'a>(quoted: &'a str, pointer: &str) -> Result<Cow<'a, str>, String> {
    if quoted.contains('\\') {
        return serde_json::from_str(quoted)
            .map(Cow::Owned)
            .map_err(|err| format!("field `{pointer}` is not JSON: {err}"));
    }
    Ok(Cow::Borrowed(&quoted[1..quoted.len() - 1]))
}

/// `items` as a JSON array of strings.
fn quoted_list(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    serde_json::to_string(&items).expect("strings always serialize")
}

/// `text` as a JSON string, escaped where it must be.
fn quoted(text: &str) -> String {
    serde_json::to_string(text).expect("a string always serializes")
}

fn redact_value(value: &mut Value, config: &Config) {
    match value {
        Value::String(text) => *text = redact_text(text, config),
        Value::Array(items) => items.iter_mut().for_each(|item| redact_value(item, config)),
        // Numbers, objects and nulls are left alone: only text holds addresses.
        _ => {}
    }
}

fn redact_text(text: &str, config: &Config) -> String {
    if config.mode == "hash" {
        // The bare address, lower case: one recipient hashes the same however it is written.
        let digest = Sha256::digest(format!("{}{}", config.salt, bare(text).to_lowercase()));
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        return format!("sha256:{hex}");
    }
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return mask_ip(ip);
    }
    mask_address(text)
}

/// The address without a display name: `Ana <ana@x>` -> `ana@x`.
fn bare(text: &str) -> &str {
    match (text.rfind('<'), text.rfind('>')) {
        (Some(start), Some(end)) if start < end => &text[start + 1..end],
        _ => text.trim(),
    }
}

/// `ana@example.com` -> `a***@example.com`; a display name goes: `Ana <ana@x>` -> `a***@x`.
fn mask_address(text: &str) -> String {
    match bare(text).rsplit_once('@') {
        Some((local, domain)) => {
            let first = local.chars().next().map_or(0, char::len_utf8);
            let mut masked = String::with_capacity(first + 4 + domain.len());
            masked.push_str(&local[..first]);
            masked.push_str("***@");
            masked.push_str(domain);
            masked
        }
        None => "***".to_owned(),
    }
}

/// An IPv4 address keeps its /24, an IPv6 address its /48.
fn mask_ip(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0")
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::", s[0], s[1], s[2])
        }
    }
}

#[cfg(test)]
mod tests {
    use mailhook_plugin_sdk::{json, testing};

    use super::*;

    fn run(config: Value, payload: Value) -> Value {
        testing::set_config(config);
        match transform(RawEvent::from_payload(&payload)).unwrap() {
            RawOutcome::Payload(text) => serde_json::from_str(&text).unwrap(),
            other => panic!("expected a payload, got {other:?}"),
        }
    }

    fn open() -> Value {
        json!({"event_id": "e1", "type": "open", "msg_id": "m1",
               "email": {"to": "Ana Lima <ana@example.com>", "from": "news@shop.example"},
               "status": {"ip": "198.51.100.77", "user_agent": "Mozilla/5.0"}})
    }

    #[test]
    fn masks_the_recipient_and_the_ip_by_default() {
        let out = run(json!({}), open());
        assert_eq!(out["email"]["to"], "a***@example.com");
        assert_eq!(out["email"]["from"], "news@shop.example");
        assert_eq!(out["status"]["ip"], "198.51.100.0");
        assert_eq!(out["status"]["user_agent"], "Mozilla/5.0");
    }

    #[test]
    fn hashes_or_removes_the_fields_named() {
        let out = run(
            json!({"mode": "hash", "salt": "s", "fields": ["/email/to"]}),
            open(),
        );
        let expected: String = Sha256::digest("sana@example.com")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(out["email"]["to"], format!("sha256:{expected}"));
        assert_eq!(out["status"]["ip"], "198.51.100.77");

        let out = run(
            json!({"mode": "remove", "fields": ["/email/to", "/status/ip"]}),
            open(),
        );
        assert_eq!(out["email"], json!({"from": "news@shop.example"}));
        assert_eq!(out["status"], json!({"user_agent": "Mozilla/5.0"}));
    }

    #[test]
    fn arrays_ipv6_and_bad_config() {
        let out = run(
            json!({}),
            json!({"email": {"to": ["x@a.example", "y@b.example"]}, "status": {"ip": "2001:db8:1:2::7"}}),
        );
        assert_eq!(
            out["email"]["to"],
            json!(["x***@a.example", "y***@b.example"])
        );
        assert_eq!(out["status"]["ip"], "2001:db8:1::");
        testing::set_config(json!({"mode": "scramble"}));
        assert!(transform(RawEvent::from_payload(&open())).is_err());
        testing::set_config(json!({"mode": "scramble", "fields": []}));
        assert!(transform(RawEvent::from_payload(&open())).is_err());
        // A recipient given twice: masking one would leave the other for a receiver whose
        // parser takes it, so the call fails (and, fail_closed, nothing is pushed).
        testing::set_config(json!({}));
        let mut twice = RawEvent::from_payload(&open());
        twice.payload =
            r#"{"email": {"to": "ana@example.com", "to": "bob@example.com"}}"#.to_owned();
        assert!(transform(twice).unwrap_err().contains("twice"));
        testing::set_config(json!({"fields": ["email.to"]}));
        assert!(transform(RawEvent::from_payload(&open())).is_err());
    }

    #[test]
    fn escaped_recipients_are_read_and_written_as_json() {
        let mut event = RawEvent::from_payload(&open());
        event.payload = r#"{"email":{"to":"\"Ana\" <ana@ex\u0061mple.com>","cc":["\"B\" <b@x.example>", 7]},"status":{"ip":"198.51.100.77"}}"#.to_owned();
        testing::set_config(json!({"fields": ["/email/to", "/email/cc", "/status/ip"]}));
        let RawOutcome::Payload(out) = transform(event).unwrap() else {
            panic!("expected a payload");
        };
        let out: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(out["email"]["to"], "a***@example.com");
        // A list with something other than text: the text is masked, the rest kept.
        assert_eq!(out["email"]["cc"], json!(["b***@x.example", 7]));
        assert_eq!(out["status"]["ip"], "198.51.100.0");
    }

    #[test]
    fn the_rest_of_the_payload_is_copied_byte_for_byte() {
        testing::set_config(json!({}));
        let mut event = RawEvent::from_payload(&open());
        event.payload =
            r#"{"type":"open", "n":1.50, "email":{"to":"ana@example.com","x":"\u00e9"},"status":{"ip":7}}"#
                .to_owned();
        let RawOutcome::Payload(out) = transform(event).unwrap() else {
            panic!("expected a payload");
        };
        assert_eq!(
            out,
            r#"{"type":"open", "n":1.50, "email":{"to":"a***@example.com","x":"\u00e9"},"status":{"ip":7}}"#
        );
    }
}
