//! mailhook sink: turns bounces and complaints into a readable message posted to a
//! Slack-style incoming webhook (`webhook_url` in its config). Other events are accepted
//! and not sent anywhere. Use it as an address: `plugin:slack-sink`.

use mailhook_plugin_sdk::{Effect, Event, HttpRequest, Level, Value, json};
use serde::Deserialize;

/// The plugin's config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The incoming-webhook URL messages are POSTed to.
    webhook_url: String,
    /// Event types that post a message [default: bounce, complaint].
    #[serde(default = "default_events")]
    events: Vec<String>,
    /// Optional `channel` and `username` fields of the message.
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    username: Option<String>,
}

fn default_events() -> Vec<String> {
    vec!["bounce".to_owned(), "complaint".to_owned()]
}

fn deliver(event: Event) -> Result<Vec<Effect>, String> {
    let config: Config = mailhook_plugin_sdk::config()?;
    if !config.events.contains(&event.event_type) {
        return Ok(Vec::new());
    }
    let mut message = json!({ "text": text(&event) });
    if let Some(channel) = &config.channel {
        message["channel"] = channel.as_str().into();
    }
    if let Some(username) = &config.username {
        message["username"] = username.as_str().into();
    }
    Ok(vec![
        Effect::Log(
            Level::Info,
            format!("posting {} of {} to Slack", event.event_type, event.msg_id),
        ),
        Effect::Http(HttpRequest::post_json(config.webhook_url, &message)),
    ])
}

mailhook_plugin_sdk::export_sink!(deliver);

/// One line a person reads in a channel.
fn text(event: &Event) -> String {
    let payload = &event.payload;
    let str_at = |pointer: &str| payload.pointer(pointer).and_then(Value::as_str);
    let recipient = match payload.pointer("/email/to") {
        Some(Value::String(to)) => to.clone(),
        Some(Value::Array(all)) => all
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        _ => "an unknown recipient".to_owned(),
    };
    let subject = str_at("/email/subject")
        .map(|s| format!(" \"{s}\""))
        .unwrap_or_default();
    let test = if payload["test"] == true {
        " [test]"
    } else {
        ""
    };
    match event.event_type.as_str() {
        "bounce" => {
            let class = str_at("/status/class").unwrap_or("undetermined");
            let code = match payload.pointer("/status/smtp_code") {
                Some(Value::Number(n)) => format!(" {n}"),
                Some(Value::String(s)) => format!(" {s}"),
                _ => String::new(),
            };
            let why = str_at("/status/diagnostic")
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            format!(
                ":warning:{test} {class} bounce for {recipient}{subject} (account {}, MsgId {}){code}{why}",
                event.account, event.msg_id
            )
        }
        "complaint" => {
            let kind = str_at("/status/feedback_type").unwrap_or("abuse");
            format!(
                ":rotating_light:{test} complaint ({kind}) from {recipient}{subject} (account {}, MsgId {})",
                event.account, event.msg_id
            )
        }
        other => format!(
            ":envelope:{test} {other} for {recipient}{subject} (account {}, MsgId {})",
            event.account, event.msg_id
        ),
    }
}

#[cfg(test)]
mod tests {
    use mailhook_plugin_sdk::testing;

    use super::*;

    #[test]
    fn a_hard_bounce_posts_one_message() {
        testing::set_config(
            json!({"webhook_url": "https://hooks.example/T1/B2", "channel": "#mail"}),
        );
        let effects = deliver(Event::from_payload(json!({
            "event_id": "e1", "type": "bounce", "account": "acme", "msg_id": "<m1@x>", "test": false,
            "email": {"to": "ana@example.com", "subject": "Welcome"},
            "status": {"class": "hard", "smtp_code": 550, "diagnostic": "5.1.1 user unknown"}
        })))
        .unwrap();
        assert_eq!(effects.len(), 2);
        let Effect::Http(request) = &effects[1] else {
            panic!("{effects:?}")
        };
        assert_eq!(
            (request.method.as_str(), request.url.as_str()),
            ("POST", "https://hooks.example/T1/B2")
        );
        let body: Value = serde_json_from(&request.body);
        assert_eq!(
            body,
            json!({"text": ":warning: hard bounce for ana@example.com \"Welcome\" (account acme, MsgId <m1@x>) 550: 5.1.1 user unknown", "channel": "#mail"})
        );
    }

    #[test]
    fn complaints_post_and_deliveries_do_not() {
        testing::set_config(json!({"webhook_url": "https://hooks.example/x"}));
        let complaint = deliver(Event::from_payload(json!({
            "type": "complaint", "account": "a", "msg_id": "m", "email": {"to": "b@y.example"},
            "status": {"feedback_type": "abuse"}
        })))
        .unwrap();
        assert_eq!(complaint.len(), 2);
        let delivery = deliver(Event::from_payload(
            json!({"type": "delivery", "msg_id": "m"}),
        ))
        .unwrap();
        assert!(delivery.is_empty());
        testing::set_config(json!({}));
        assert!(
            deliver(Event::from_payload(json!({"type": "bounce"})))
                .unwrap_err()
                .contains("webhook_url")
        );
    }

    fn serde_json_from(bytes: &[u8]) -> Value {
        mailhook_plugin_sdk::serde_json::from_slice(bytes).unwrap()
    }
}
