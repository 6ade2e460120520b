//! Sample events for the "Simulate Send Test": one realistic intake body per event type, so a
//! test push carries what a real one of that type would (subject, recipient, status details).
//!
//! The samples are intake bodies, not payloads: the API runs them through `parse_intake` and
//! the one `render_payload` like any event a mail system posts, so a test push cannot drift
//! from the real format. Addresses and IPs are from the documentation ranges (RFC 2606,
//! RFC 5737), so a receiver that acts on them reaches nobody.

use serde_json::{Value, json};

use crate::event::{AccountId, EventType};

/// The intake body of a sample event of `event_type` for `account`, with `msg_id` as its
/// MsgId. No `event_id` or `timestamp`: intake gives it a fresh id and the time of receipt.
pub fn sample_event(event_type: EventType, account: &AccountId, msg_id: &str) -> Value {
    json!({
        "type": event_type.as_str(),
        "msg_id": msg_id,
        "account": account.as_str(),
        "email": {
            "subject": "Your order #10472 has shipped",
            "from": "Acme Store <orders@acme.example>",
            "to": "ana.silva@example.com",
            "tags": ["order-shipped", "transactional"],
            "metadata": {"order_id": "10472", "campaign": "shipping-updates"},
        },
        "status": sample_status(event_type),
    })
}

/// The contract's usual `status` keys of each type, with plausible values.
fn sample_status(event_type: EventType) -> Value {
    match event_type {
        EventType::Send => json!({
            "result": "success",
            "code": 250,
            "message": "2.0.0 Ok: queued as 4XkP3s1Zq9z",
        }),
        EventType::Delivery => json!({
            "smtp_code": 250,
            "response": "250 2.0.0 OK 1764244800 x12si3456789qkb.42",
            "mx_host": "mx1.example.com",
        }),
        EventType::Open => json!({
            "ip": "203.0.113.24",
            "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
        }),
        EventType::Click => json!({
            "url": "https://acme.example/orders/10472?utm_source=email",
            "ip": "203.0.113.24",
            "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
        }),
        EventType::Bounce => json!({
            "class": "hard",
            "smtp_code": 550,
            "enhanced_code": "5.1.1",
            "diagnostic": "550 5.1.1 The email account that you tried to reach does not exist",
        }),
        EventType::Complaint => json!({
            "feedback_type": "abuse",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventId, IntakeLimits, parse_intake};

    /// The contract's usual `status` keys, per type: each sample has exactly these.
    const STATUS_KEYS: [(EventType, &[&str]); 6] = [
        (EventType::Send, &["result", "code", "message"]),
        (EventType::Delivery, &["smtp_code", "response", "mx_host"]),
        (EventType::Open, &["ip", "user_agent"]),
        (EventType::Click, &["url", "ip", "user_agent"]),
        (
            EventType::Bounce,
            &["class", "smtp_code", "enhanced_code", "diagnostic"],
        ),
        (EventType::Complaint, &["feedback_type"]),
    ];

    #[test]
    fn every_sample_passes_intake_with_the_usual_keys() {
        let account = AccountId::parse("acme").unwrap();
        let limits = IntakeLimits {
            batch_events_max: 1,
            string_bytes_max: 1024,
            json_depth_max: 8,
        };
        for (event_type, keys) in STATUS_KEYS {
            let body = sample_event(event_type, &account, "test-1");
            let mut new_id = || EventId::parse("e1").unwrap();
            let events = parse_intake(body.to_string().as_bytes(), limits, 5, &mut new_id)
                .unwrap_or_else(|err| panic!("{event_type}: {err:?}"));
            let event = &events[0];
            assert_eq!(event.event_type, event_type);
            assert_eq!(event.account, account);
            assert_eq!(event.msg_id.as_str(), "test-1");
            assert_eq!(event.timestamp_ms, 5, "time of receipt");
            assert!(!event.test, "intake never sets test; the API does");
            let status = event.status.to_map();
            let status: Vec<&str> = status.keys().map(String::as_str).collect();
            assert_eq!(status, keys, "{event_type}");
            let email = event.email.to_map();
            let email: Vec<&str> = email.keys().map(String::as_str).collect();
            assert_eq!(email, ["subject", "from", "to", "tags", "metadata"]);
        }
    }
}
