//! Machine detection for opens and clicks: which rule, if any, says a proxy, prefetcher or
//! scanner did this rather than a person. Pure: the rules are data (`config/engagement-rules.toml`),
//! the event's own fields and the time since delivery are the inputs.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::EventType;

/// One named rule from the rules file. It matches when any of its patterns match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The `machine_reason` reported when this rule matches.
    pub name: String,
    /// `open`, `click` or both.
    pub applies_to: Vec<String>,
    /// The client IP (`status.ip`) is in one of these ranges.
    #[serde(default)]
    pub ip_cidrs: Vec<IpNet>,
    /// The user agent (`status.user_agent`) is exactly one of these.
    #[serde(default)]
    pub user_agent_equals: Vec<String>,
    /// The user agent contains one of these, compared without regard to case.
    #[serde(default)]
    pub user_agent_contains: Vec<String>,
    /// Where the patterns come from: a public source per pattern, for the reader.
    #[serde(default)]
    pub source: String,
}

/// The whole table, plus the two rules that need no patterns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// A click this soon after the email's delivery event is a link scanner (`fast_click`).
    #[serde(with = "humantime_serde")]
    pub fast_click_window: Duration,
    pub rules: Vec<Rule>,
}

/// What detection looks at.
pub struct Observed<'a> {
    pub event_type: EventType,
    pub status: &'a Map<String, Value>,
    /// The MsgId's delivery event time, when the store has one; for `fast_click`.
    pub delivered_at_ms: Option<i64>,
    pub timestamp_ms: i64,
}

impl Rules {
    /// Checks the rule table for mistakes a reader of the file would want named.
    pub fn validate(&self) -> Result<(), String> {
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.name.is_empty()
                || !rule
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_')
            {
                return Err(format!(
                    "rules[{i}].name `{}` must be lower-case letters and `_`",
                    rule.name
                ));
            }
            if let Some(bad) = rule
                .applies_to
                .iter()
                .find(|t| !matches!(t.as_str(), "open" | "click"))
            {
                return Err(format!(
                    "rules[{i}] ({}).applies_to: `{bad}` is not `open` or `click`",
                    rule.name
                ));
            }
        }
        Ok(())
    }

    /// The name of the first rule that calls this open or click a machine's, or `None` for a
    /// person. `prefetch` (the intake says the client fetched with HEAD or as a prefetch)
    /// comes first, the pattern rules next in file order, `fast_click` last.
    pub fn detect(&self, seen: &Observed<'_>) -> Option<String> {
        let kind = match seen.event_type {
            EventType::Open => "open",
            EventType::Click => "click",
            _ => return None,
        };
        if is_prefetch(seen.status) {
            return Some("prefetch".to_owned());
        }
        let ip = seen
            .status
            .get("ip")
            .and_then(Value::as_str)
            .and_then(|s| s.trim().parse::<IpAddr>().ok());
        let agent = seen
            .status
            .get("user_agent")
            .and_then(Value::as_str)
            .map(str::trim);
        let agent_lower = agent.map(str::to_ascii_lowercase);
        for rule in self
            .rules
            .iter()
            .filter(|r| r.applies_to.iter().any(|t| t == kind))
        {
            let by_ip = ip.is_some_and(|ip| rule.ip_cidrs.iter().any(|net| net.contains(&ip)));
            let by_equals = agent.is_some_and(|a| rule.user_agent_equals.iter().any(|u| u == a));
            let by_contains = agent_lower.as_deref().is_some_and(|a| {
                rule.user_agent_contains
                    .iter()
                    .any(|u| a.contains(&u.to_ascii_lowercase()))
            });
            if by_ip || by_equals || by_contains {
                return Some(rule.name.clone());
            }
        }
        let window_ms = self.fast_click_window.as_millis() as i64;
        match (seen.event_type, seen.delivered_at_ms) {
            (EventType::Click, Some(delivered))
                if window_ms > 0 && seen.timestamp_ms - delivered < window_ms =>
            {
                Some("fast_click".to_owned())
            }
            _ => None,
        }
    }
}

/// `status.method = "HEAD"` or `status.prefetch = true`: the mail system saw a fetch that no
/// person made.
fn is_prefetch(status: &Map<String, Value>) -> bool {
    let head = status
        .get("method")
        .and_then(Value::as_str)
        .is_some_and(|m| m.eq_ignore_ascii_case("HEAD"));
    head || status.get("prefetch") == Some(&Value::Bool(true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The shipped rules file, as the gateway loads it by default.
    fn shipped() -> Rules {
        let text = include_str!("../../../config/engagement-rules.toml");
        let rules: Rules = toml::from_str(text).expect("the shipped rules file parses");
        rules.validate().unwrap();
        rules
    }

    fn detect(
        rules: &Rules,
        t: EventType,
        status: Value,
        delivered_ago_ms: Option<i64>,
    ) -> Option<String> {
        let now = 1_795_780_800_000;
        let status = status.as_object().cloned().unwrap_or_default();
        rules.detect(&Observed {
            event_type: t,
            status: &status,
            delivered_at_ms: delivered_ago_ms.map(|d| now - d),
            timestamp_ms: now,
        })
    }

    #[test]
    fn real_user_agents_and_ips_from_the_cited_sources() {
        let rules = shipped();
        let open = EventType::Open;
        let click = EventType::Click;
        let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
        let iphone_mail = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148";
        let cases: Vec<(EventType, Value, Option<i64>, Option<&str>)> = vec![
            // Apple Mail Privacy Protection: Apple's own network and the bare user agent.
            (
                open,
                json!({"ip": "17.58.63.12", "user_agent": "Mozilla/5.0"}),
                None,
                Some("apple_mpp"),
            ),
            (
                open,
                json!({"ip": "17.252.10.4", "user_agent": iphone_mail}),
                None,
                Some("apple_mpp"),
            ),
            (
                open,
                json!({"ip": "203.0.113.9", "user_agent": "Mozilla/5.0"}),
                None,
                Some("apple_mpp"),
            ),
            // Google's and Yahoo's image proxies.
            (
                open,
                json!({"ip": "66.249.84.10", "user_agent": "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"}),
                None,
                Some("image_proxy"),
            ),
            (
                open,
                json!({"user_agent": "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"}),
                None,
                Some("image_proxy"),
            ),
            // Link scanners.
            (
                click,
                json!({"user_agent": "Mozilla/5.0 (compatible; BingPreview/1.0b) Barracuda Sentinel (EE)"}),
                None,
                Some("scanner"),
            ),
            (
                click,
                json!({"user_agent": "Proofpoint URL Defense"}),
                None,
                Some("scanner"),
            ),
            (
                click,
                json!({"user_agent": "Mimecast URL Protect"}),
                None,
                Some("scanner"),
            ),
            // Prefetch said by the intake, and a click within the window after delivery.
            (
                click,
                json!({"method": "HEAD", "user_agent": chrome}),
                None,
                Some("prefetch"),
            ),
            (open, json!({"prefetch": true}), None, Some("prefetch")),
            (
                click,
                json!({"user_agent": chrome, "ip": "198.51.100.7"}),
                Some(800),
                Some("fast_click"),
            ),
            // People.
            (
                open,
                json!({"ip": "198.51.100.7", "user_agent": iphone_mail}),
                None,
                None,
            ),
            (
                open,
                json!({"ip": "2001:db8::1", "user_agent": chrome}),
                None,
                None,
            ),
            (
                click,
                json!({"user_agent": chrome, "ip": "198.51.100.7"}),
                Some(60_000),
                None,
            ),
            (click, json!({"user_agent": chrome}), None, None),
            (open, json!({}), None, None),
            // Not an engagement type: never a machine.
            (
                EventType::Delivery,
                json!({"user_agent": "Mozilla/5.0"}),
                None,
                None,
            ),
        ];
        for (t, status, ago, expected) in cases {
            assert_eq!(
                detect(&rules, t, status.clone(), ago).as_deref(),
                expected,
                "{t} {status} ago={ago:?}"
            );
        }
    }

    #[test]
    fn a_rule_applies_only_to_its_types_and_bad_tables_are_named() {
        let rules = Rules {
            fast_click_window: Duration::ZERO,
            rules: vec![Rule {
                name: "only_clicks".into(),
                applies_to: vec!["click".into()],
                ip_cidrs: vec![],
                user_agent_equals: vec![],
                user_agent_contains: vec!["bot".into()],
                source: String::new(),
            }],
        };
        assert_eq!(
            detect(&rules, EventType::Open, json!({"user_agent": "Bot"}), None),
            None
        );
        assert_eq!(
            detect(&rules, EventType::Click, json!({"user_agent": "Bot"}), None).as_deref(),
            Some("only_clicks")
        );
        assert_eq!(
            detect(
                &rules,
                EventType::Click,
                json!({"user_agent": "x"}),
                Some(0)
            ),
            None,
            "window 0 is off"
        );
        let mut bad = rules.clone();
        bad.rules[0].applies_to = vec!["delivery".into()];
        assert!(bad.validate().unwrap_err().contains("applies_to"));
    }
}
