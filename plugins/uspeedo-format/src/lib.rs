//! mailhook transform: reshapes mailhook's payload into the uSpeedo Email push envelope
//! (`{"MsgType": 2, "Data": [{...}]}`), so receivers written for that product work
//! unchanged. The field mapping is in this crate's README.

use mailhook_plugin_sdk::{Event, Map, Outcome, Value, json};
use serde::Deserialize;

/// The plugin's config (all optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// How `ReceiptTime` is written: `datetime` ("2026-11-27 12:00:00", UTC, the default),
    /// `unix` (seconds, a number) or `rfc3339` (mailhook's own timestamp).
    time_format: Option<String>,
}

fn transform(event: Event) -> Result<Outcome, String> {
    let config: Config = mailhook_plugin_sdk::config()?;
    Ok(Outcome::Payload(reshape(&event, &config)?))
}

mailhook_plugin_sdk::export_transform!(transform);

/// uSpeedo's event names for mailhook's types.
fn event_name(event_type: &str) -> &'static str {
    match event_type {
        "send" => "request",
        "delivery" => "deliver",
        "open" => "open",
        "click" => "click",
        "bounce" => "bounce",
        "complaint" => "complaint",
        _ => "unknown",
    }
}

fn reshape(event: &Event, config: &Config) -> Result<Value, String> {
    let payload = &event.payload;
    let email = &payload["email"];
    let status = &payload["status"];
    let text = |value: &Value| value.as_str().map(str::to_owned);

    let recipient = match &email["to"] {
        Value::String(to) => to.clone(),
        Value::Array(all) => all
            .iter()
            .find_map(|to| to.as_str())
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    };
    let domain = recipient
        .rsplit_once('@')
        .map(|(_, domain)| domain.trim_end_matches('>').to_ascii_lowercase())
        .unwrap_or_default();
    let failed = match event.event_type.as_str() {
        "bounce" => true,
        "send" => status["result"].as_str() == Some("failed"),
        _ => false,
    };
    let code = [&status["smtp_code"], &status["code"]]
        .into_iter()
        .find_map(|value| match value {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        })
        .unwrap_or(if failed { 1 } else { 0 });
    let description = [
        "response",
        "diagnostic",
        "message",
        "feedback_type",
        "enhanced_code",
    ]
    .into_iter()
    .find_map(|key| text(&status[key]))
    .unwrap_or_default();
    let session = text(&email["metadata"]["session_no"]).unwrap_or_else(|| event.event_id.clone());
    let timestamp = payload["timestamp"].as_str().unwrap_or_default();

    let mut data = Map::new();
    data.insert("SessionNo".into(), session.into());
    data.insert("MsgId".into(), event.msg_id.clone().into());
    data.insert("Event".into(), event_name(&event.event_type).into());
    data.insert("ReceiptTime".into(), receipt_time(timestamp, config)?);
    data.insert(
        "ReceiptResult".into(),
        if failed { "failed" } else { "success" }.into(),
    );
    data.insert("ReceiptCode".into(), code.into());
    data.insert("ReceiptDesc".into(), description.into());
    data.insert("RecipientEmail".into(), recipient.into());
    data.insert("Domain".into(), domain.into());
    if matches!(event.event_type.as_str(), "open" | "click") {
        let agent = status["user_agent"].as_str().unwrap_or_default();
        data.insert("Browser".into(), browser(agent).into());
        data.insert("OS".into(), operating_system(agent).into());
        data.insert("UserAgent".into(), agent.into());
        data.insert("IP".into(), text(&status["ip"]).unwrap_or_default().into());
    }
    if event.event_type == "click" {
        data.insert(
            "ClickedURL".into(),
            text(&status["url"]).unwrap_or_default().into(),
        );
    }
    Ok(json!({ "MsgType": 2, "Data": [Value::Object(data)] }))
}

fn receipt_time(timestamp: &str, config: &Config) -> Result<Value, String> {
    match config.time_format.as_deref().unwrap_or("datetime") {
        "rfc3339" => Ok(timestamp.into()),
        "datetime" => Ok(timestamp
            .get(..19)
            .map(|head| head.replacen('T', " ", 1))
            .unwrap_or_default()
            .into()),
        "unix" => Ok(unix_seconds(timestamp).map_or(Value::Null, Value::from)),
        other => Err(format!(
            "time_format `{other}` is not one of datetime, unix, rfc3339"
        )),
    }
}

/// Seconds since 1970 of mailhook's `YYYY-MM-DDTHH:MM:SS(.fff)Z` timestamps.
fn unix_seconds(timestamp: &str) -> Option<i64> {
    let number = |range: std::ops::Range<usize>| timestamp.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

fn browser(agent: &str) -> &'static str {
    let has = |needle: &str| agent.contains(needle);
    if agent.is_empty() {
        "Unknown"
    } else if has("Edg/") {
        "Edge"
    } else if has("Outlook") || has("Microsoft Office") {
        "Outlook"
    } else if has("Thunderbird") {
        "Thunderbird"
    } else if has("Firefox/") {
        "Firefox"
    } else if has("Chrome/") || has("CriOS/") {
        "Chrome"
    } else if has("Safari/") || has("AppleWebKit") {
        "Safari"
    } else {
        "Other"
    }
}

fn operating_system(agent: &str) -> &'static str {
    let has = |needle: &str| agent.contains(needle);
    if agent.is_empty() {
        "Unknown"
    } else if has("iPhone") || has("iPad") || has("iPod") {
        "iOS"
    } else if has("Android") {
        "Android"
    } else if has("Windows") {
        "Windows"
    } else if has("Mac OS X") || has("Macintosh") {
        "macOS"
    } else if has("Linux") {
        "Linux"
    } else {
        "Other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(payload: Value) -> Value {
        match transform(Event::from_payload(payload)).unwrap() {
            Outcome::Payload(value) => value,
            other => panic!("expected a payload, got {other:?}"),
        }
    }

    #[test]
    fn a_delivery_becomes_the_envelope() {
        let out = run(json!({
            "event_id": "evt-1", "type": "delivery", "account": "default", "msg_id": "<m1@x>",
            "timestamp": "2026-11-27T12:00:00.123Z", "test": false,
            "email": {"to": "Ana@Example.com", "subject": "Hi"},
            "status": {"smtp_code": 250, "response": "250 2.0.0 OK"}
        }));
        assert_eq!(
            out,
            json!({"MsgType": 2, "Data": [{
                "SessionNo": "evt-1", "MsgId": "<m1@x>", "Event": "deliver",
                "ReceiptTime": "2026-11-27 12:00:00", "ReceiptResult": "success",
                "ReceiptCode": 250, "ReceiptDesc": "250 2.0.0 OK",
                "RecipientEmail": "Ana@Example.com", "Domain": "example.com"
            }]})
        );
    }

    #[test]
    fn bounces_fail_and_clicks_carry_the_url_and_client() {
        let bounce = run(json!({
            "event_id": "e2", "type": "bounce", "msg_id": "m2", "timestamp": "2026-11-27T12:00:00Z",
            "email": {"to": ["b@y.example"], "metadata": {"session_no": "S-9"}},
            "status": {"class": "hard", "smtp_code": "550", "diagnostic": "user unknown"}
        }));
        let data = &bounce["Data"][0];
        assert_eq!(data["SessionNo"], "S-9");
        assert_eq!(data["Event"], "bounce");
        assert_eq!(data["ReceiptResult"], "failed");
        assert_eq!(data["ReceiptCode"], 550);
        assert_eq!(data["ReceiptDesc"], "user unknown");
        assert_eq!(data["Domain"], "y.example");

        let click = run(json!({
            "event_id": "e3", "type": "click", "msg_id": "m3", "timestamp": "2026-11-27T12:00:00Z",
            "email": {"to": "c@z.example"},
            "status": {"url": "https://shop.example/a", "ip": "198.51.100.7",
                       "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148 Safari/604.1"}
        }));
        let data = &click["Data"][0];
        assert_eq!(data["Event"], "click");
        assert_eq!(data["ClickedURL"], "https://shop.example/a");
        assert_eq!(
            (data["Browser"].as_str(), data["OS"].as_str()),
            (Some("Safari"), Some("iOS"))
        );
        assert_eq!(data["IP"], "198.51.100.7");
    }

    #[test]
    fn time_formats() {
        let config = |f: &str| Config {
            time_format: Some(f.to_owned()),
        };
        let at = "2026-11-27T12:00:00.123Z";
        assert_eq!(
            receipt_time(at, &config("unix")).unwrap(),
            json!(1_795_780_800)
        );
        assert_eq!(receipt_time(at, &config("rfc3339")).unwrap(), json!(at));
        assert!(receipt_time(at, &config("weird")).is_err());
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0));
    }
}
