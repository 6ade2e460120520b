//! An account's webhook settings and the rules a save must pass.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::error::FieldError;
use crate::event::{EventType, json_kind, truncate};
use crate::net::AddressPolicy;

/// At most one primary and two backups, as the seed says.
pub const ADDRESSES_MAX: usize = 3;
/// Longest address accepted.
pub const ADDRESS_LEN_MAX: usize = 2048;

/// An absolute `http` or `https` URL with a host.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct WebhookUrl(String);

/// How an address names a sink plugin: `plugin:<name>`.
pub const PLUGIN_PREFIX: &str = "plugin:";
/// Longest plugin name.
pub const PLUGIN_NAME_LEN_MAX: usize = 64;

/// A plugin name: 1 to 64 of `a-z`, `0-9`, `_`, `-`, starting with a letter or digit.
pub fn check_plugin_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-');
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !first_ok || name.len() > PLUGIN_NAME_LEN_MAX || !name.chars().all(ok_char) {
        return Err(format!(
            "plugin name `{}` must be 1 to {PLUGIN_NAME_LEN_MAX} characters of a-z, 0-9, `_`, `-`, \
             starting with a letter or digit",
            truncate(name, 80)
        ));
    }
    Ok(())
}

impl WebhookUrl {
    /// An absolute `http`/`https` URL, or `plugin:<name>` for a sink plugin.
    pub fn parse(text: &str) -> Result<WebhookUrl, String> {
        if let Some(name) = text.strip_prefix(PLUGIN_PREFIX) {
            check_plugin_name(name)?;
            return Ok(WebhookUrl(text.to_owned()));
        }
        if text.len() > ADDRESS_LEN_MAX {
            return Err(format!(
                "address is {} bytes long, the limit is {ADDRESS_LEN_MAX}",
                text.len()
            ));
        }
        let url = url::Url::parse(text)
            .map_err(|err| format!("`{}` is not an absolute URL: {err}", truncate(text, 100)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "`{}` has scheme `{}`; only http and https are allowed",
                truncate(text, 100),
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("`{}` has no host", truncate(text, 100)));
        }
        if url.fragment().is_some() {
            return Err(format!(
                "`{}` has a #fragment, which is never sent",
                truncate(text, 100)
            ));
        }
        Ok(WebhookUrl(url.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The sink plugin's name when this address is `plugin:<name>`.
    pub fn plugin(&self) -> Option<&str> {
        self.0.strip_prefix(PLUGIN_PREFIX)
    }

    /// Refuses an address whose host is, on its face, internal: an IP literal the policy
    /// blocks, or `localhost`. Names are checked again at every connect, whatever they
    /// resolve to then; this only catches at save time what can never work.
    pub fn check_policy(&self, policy: &AddressPolicy) -> Result<(), String> {
        // A sink's own requests are checked by the same guard when they connect.
        if policy.allow_private || self.plugin().is_some() {
            return Ok(());
        }
        let Ok(url) = url::Url::parse(&self.0) else {
            return Ok(());
        };
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => std::net::IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => std::net::IpAddr::V6(ip),
            Some(url::Host::Domain(name)) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if name == "localhost" || name.ends_with(".localhost") {
                    return Err(format!(
                        "`{self}` points to localhost; allowed only with security.allow_private_addresses"
                    ));
                }
                return Ok(());
            }
            None => return Ok(()),
        };
        policy.check(ip).map_err(|reason| {
            format!(
                "`{self}` points to {reason}; allowed only with security.allow_private_addresses \
                 or a matching security.allowed_cidrs entry"
            )
        })
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The role of an address in the failover chain, as sent in `mailhook-address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Primary,
    Backup1,
    Backup2,
}

impl Role {
    pub fn of_index(index: usize) -> Role {
        match index {
            0 => Role::Primary,
            1 => Role::Backup1,
            _ => Role::Backup2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Backup1 => "backup-1",
            Role::Backup2 => "backup-2",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        [Role::Primary, Role::Backup1, Role::Backup2]
            .into_iter()
            .find(|r| r.as_str() == text)
    }
}

/// What an account asked for: push on or off, where to, and which event types.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WebhookSettings {
    pub enabled: bool,
    pub addresses: Vec<WebhookUrl>,
    pub events: Vec<EventType>,
}

/// Fields a client may send back unchanged from a GET; they are read-only and ignored.
const READ_ONLY_FIELDS: [&str; 2] = ["secret", "updated_at"];

/// Validates a settings body (`{"enabled", "addresses", "events"}`), reporting every problem.
/// Addresses that the SSRF `policy` refuses on their face are problems too. A `plugin:<name>`
/// address passes on its syntax alone; see [`validate_settings_with_sinks`].
pub fn validate_settings(
    body: &Value,
    policy: &AddressPolicy,
) -> Result<WebhookSettings, Vec<FieldError>> {
    validate_settings_with_sinks(body, policy, None)
}

/// Like [`validate_settings`]; with `sinks`, a `plugin:<name>` address must name one of them
/// (the sink plugins the gateway is configured with).
pub fn validate_settings_with_sinks(
    body: &Value,
    policy: &AddressPolicy,
    sinks: Option<&[String]>,
) -> Result<WebhookSettings, Vec<FieldError>> {
    let Value::Object(fields) = body else {
        return Err(vec![FieldError::new(
            "",
            format!("settings must be a JSON object, got {}", json_kind(body)),
        )]);
    };
    let mut errors = Vec::new();
    for key in fields.keys() {
        if !["enabled", "addresses", "events"].contains(&key.as_str())
            && !READ_ONLY_FIELDS.contains(&key.as_str())
        {
            errors.push(FieldError::new(
                key.clone(),
                format!(
                    "unknown field `{}`; allowed: enabled, addresses, events",
                    truncate(key, 64)
                ),
            ));
        }
    }

    let enabled = match fields.get("enabled") {
        Some(Value::Bool(b)) => Some(*b),
        None => {
            errors.push(FieldError::new(
                "enabled",
                "enabled is required (true or false)",
            ));
            None
        }
        Some(other) => {
            errors.push(FieldError::new(
                "enabled",
                format!("enabled must be true or false, got {}", json_kind(other)),
            ));
            None
        }
    };

    let mut addresses = Vec::new();
    match fields.get("addresses") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            if items.len() > ADDRESSES_MAX {
                errors.push(FieldError::new(
                    "addresses",
                    format!(
                        "{} addresses given; at most {ADDRESSES_MAX} are allowed (1 primary and 2 backups)",
                        items.len()
                    ),
                ));
            }
            for (i, item) in items.iter().enumerate() {
                let field = format!("addresses[{i}]");
                match item {
                    Value::String(text) => match WebhookUrl::parse(text.trim()).and_then(|url| {
                        url.check_policy(policy)?;
                        check_sink(&url, sinks)?;
                        Ok(url)
                    }) {
                        Ok(url) if addresses.contains(&url) => {
                            errors.push(FieldError::new(field, format!("`{url}` is listed twice")));
                        }
                        Ok(url) => addresses.push(url),
                        Err(message) => errors.push(FieldError::new(field, message)),
                    },
                    other => errors.push(FieldError::new(
                        field,
                        format!("address must be a string, got {}", json_kind(other)),
                    )),
                }
            }
        }
        Some(other) => errors.push(FieldError::new(
            "addresses",
            format!(
                "addresses must be an array of URLs, got {}",
                json_kind(other)
            ),
        )),
    }

    let mut events = Vec::new();
    match fields.get("events") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let field = format!("events[{i}]");
                match item {
                    Value::String(text) => match EventType::parse(text) {
                        Some(t) if !events.contains(&t) => events.push(t),
                        Some(_) => {}
                        None => {
                            errors.push(FieldError::new(field, EventType::unknown_message(text)))
                        }
                    },
                    other => errors.push(FieldError::new(
                        field,
                        format!("event type must be a string, got {}", json_kind(other)),
                    )),
                }
            }
        }
        Some(other) => errors.push(FieldError::new(
            "events",
            format!(
                "events must be an array of event types, got {}",
                json_kind(other)
            ),
        )),
    }

    if enabled == Some(true) && errors.is_empty() {
        if addresses.is_empty() {
            errors.push(FieldError::new(
                "addresses",
                "push is enabled but no address is configured; add at least one",
            ));
        }
        if events.is_empty() {
            errors.push(FieldError::new(
                "events",
                "push is enabled but no event type is subscribed; pick at least one",
            ));
        }
    }
    match enabled {
        Some(enabled) if errors.is_empty() => Ok(WebhookSettings {
            enabled,
            addresses,
            events,
        }),
        _ => Err(errors),
    }
}

/// A `plugin:<name>` address must name a configured sink, when the sinks are known.
fn check_sink(url: &WebhookUrl, sinks: Option<&[String]>) -> Result<(), String> {
    match (url.plugin(), sinks) {
        (Some(name), Some(sinks)) if !sinks.iter().any(|sink| sink == name) => Err(format!(
            "`{url}` names no configured sink plugin; sinks: {}",
            if sinks.is_empty() {
                "none (see [[plugins.load]] with kind = \"sink\")".to_owned()
            } else {
                sinks.join(", ")
            }
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const GUARDED: AddressPolicy = AddressPolicy {
        allow_private: false,
        allowed: Vec::new(),
    };

    fn fields(body: Value) -> Vec<String> {
        validate_settings(&body, &GUARDED)
            .expect_err("should be rejected")
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn accepts_a_full_chain() {
        let s = validate_settings(
            &json!({
            "enabled": true,
            "addresses": ["https://a.example/hook", "http://b.example:8080/x?y=1", "https://c.example"],
            "events": ["delivery", "bounce", "delivery"],
            "secret": "ignored"
        }),
            &GUARDED,
        )
        .unwrap();
        assert_eq!(s.addresses.len(), 3);
        assert_eq!(s.addresses[2].as_str(), "https://c.example/");
        assert_eq!(s.events, vec![EventType::Delivery, EventType::Bounce]);
    }

    #[test]
    fn internal_literals_pass_only_when_the_policy_allows_them() {
        let body = json!({"enabled": true, "addresses": ["http://127.0.0.1:9/hook", "http://10.1.2.3/"], "events": ["open"]});
        let open = AddressPolicy {
            allow_private: true,
            allowed: vec![],
        };
        assert!(validate_settings(&body, &open).is_ok());
        let listed = AddressPolicy {
            allow_private: false,
            allowed: vec![
                "127.0.0.0/8".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap(),
            ],
        };
        assert!(validate_settings(&body, &listed).is_ok());
        let err = validate_settings(&body, &GUARDED).unwrap_err();
        assert!(err[0].message.contains("loopback"), "{err:?}");
    }

    #[test]
    fn disabled_settings_may_be_empty() {
        let s = validate_settings(
            &json!({"enabled": false, "addresses": [], "events": []}),
            &GUARDED,
        )
        .unwrap();
        assert!(!s.enabled);
    }

    #[test]
    fn names_each_problem() {
        let a = |n: usize| -> Vec<String> {
            (0..n).map(|i| format!("https://h{i}.example/")).collect()
        };
        let cases: Vec<(Value, Vec<&str>)> = vec![
            (
                json!({"enabled": true, "addresses": a(4), "events": ["open"]}),
                vec!["addresses"],
            ),
            (
                json!({"enabled": true, "addresses": ["not a url"], "events": ["open"]}),
                vec!["addresses[0]"],
            ),
            (
                json!({"enabled": true, "addresses": ["ftp://x.example/"], "events": ["open"]}),
                vec!["addresses[0]"],
            ),
            (
                json!({"enabled": true, "addresses": ["/relative"], "events": ["open"]}),
                vec!["addresses[0]"],
            ),
            (
                json!({"enabled": true, "addresses": ["https://x.example/", "https://x.example/"], "events": ["open"]}),
                vec!["addresses[1]"],
            ),
            (
                json!({"enabled": true, "addresses": a(1), "events": ["opened"]}),
                vec!["events[0]"],
            ),
            (
                json!({"enabled": true, "addresses": [], "events": ["open"]}),
                vec!["addresses"],
            ),
            (
                json!({"enabled": true, "addresses": a(1), "events": []}),
                vec!["events"],
            ),
            (
                json!({"enabled": true, "addresses": ["http://10.0.0.1/hook", "http://[::1]:80/", "http://localhost:9/", "http://169.254.169.254/latest"], "events": ["open"]}),
                vec![
                    "addresses",
                    "addresses[0]",
                    "addresses[1]",
                    "addresses[2]",
                    "addresses[3]",
                ],
            ),
            (
                json!({"addresses": a(1), "events": ["open"]}),
                vec!["enabled"],
            ),
            (
                json!({"enabled": "yes", "addresses": a(1), "events": ["open"]}),
                vec!["enabled"],
            ),
            (
                json!({"enabled": false, "addresses": a(1), "events": ["open"], "url": "x"}),
                vec!["url"],
            ),
            (json!([]), vec![""]),
            (
                json!({"enabled": true, "addresses": ["plugin:Bad Name"], "events": ["open"]}),
                vec!["addresses[0]"],
            ),
            (
                json!({"enabled": true, "addresses": ["plugin:"], "events": ["open"]}),
                vec!["addresses[0]"],
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(fields(body.clone()), expected, "body: {body}");
        }
    }

    #[test]
    fn sink_plugins_are_addresses_next_to_urls() {
        let body = json!({"enabled": true, "addresses": ["plugin:slack-sink", "https://b.example/"], "events": ["bounce"]});
        let s = validate_settings(&body, &GUARDED).unwrap();
        assert_eq!(s.addresses[0].as_str(), "plugin:slack-sink");
        assert_eq!(s.addresses[0].plugin(), Some("slack-sink"));
        assert_eq!(s.addresses[1].plugin(), None);

        let sinks = vec!["slack-sink".to_owned()];
        assert!(validate_settings_with_sinks(&body, &GUARDED, Some(&sinks)).is_ok());
        let other = json!({"enabled": true, "addresses": ["plugin:nope"], "events": ["bounce"]});
        let err = validate_settings_with_sinks(&other, &GUARDED, Some(&sinks)).unwrap_err();
        assert_eq!(err[0].field, "addresses[0]");
        assert!(err[0].message.contains("slack-sink"), "{err:?}");

        for (name, ok) in [
            ("a", true),
            ("uspeedo-format", true),
            ("x_1", true),
            ("-x", false),
            ("A", false),
            ("a.b", false),
        ] {
            assert_eq!(check_plugin_name(name).is_ok(), ok, "{name}");
        }
        assert!(check_plugin_name(&"a".repeat(65)).is_err());
    }
}
