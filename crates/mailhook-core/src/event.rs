//! The event model: validated once at intake into types that cannot hold a bad value, and
//! rendered once into the exact JSON body every receiver gets.

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{FieldError, IntakeError};
use crate::time::{TIMESTAMP_MS_MAX, format_rfc3339_ms, parse_rfc3339_ms};

/// The six kinds of event in an email's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Send,
    Delivery,
    Open,
    Click,
    Bounce,
    Complaint,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::Send,
        EventType::Delivery,
        EventType::Open,
        EventType::Click,
        EventType::Bounce,
        EventType::Complaint,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Send => "send",
            EventType::Delivery => "delivery",
            EventType::Open => "open",
            EventType::Click => "click",
            EventType::Bounce => "bounce",
            EventType::Complaint => "complaint",
        }
    }

    pub fn parse(text: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == text)
    }

    /// The message a user sees for a type that is not one of the six.
    pub fn unknown_message(text: &str) -> String {
        format!(
            "unknown event type `{}`; expected one of send, delivery, open, click, bounce, complaint",
            truncate(text, 64)
        )
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An account name: `[A-Za-z0-9_.-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct AccountId(String);

impl AccountId {
    pub const LEN_MAX: usize = 64;

    pub fn parse(text: &str) -> Result<AccountId, String> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
        if text.is_empty() || text.len() > Self::LEN_MAX || !text.chars().all(ok_char) {
            return Err(format!(
                "account `{}` must be 1 to 64 characters of A-Z, a-z, 0-9, `_`, `.`, `-`",
                truncate(text, 80)
            ));
        }
        Ok(AccountId(text.to_owned()))
    }

    pub fn default_account() -> AccountId {
        AccountId("default".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! bounded_text {
    ($name:ident, $field:literal, $max:literal) => {
        #[doc = concat!("The `", $field, "` field: 1 to ", stringify!($max), " characters.")]
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const LEN_MAX: usize = $max;

            pub fn parse(text: &str) -> Result<$name, String> {
                let chars = text.chars().count();
                if chars == 0 || chars > Self::LEN_MAX {
                    return Err(format!(
                        concat!(
                            $field,
                            " must be 1 to ",
                            stringify!($max),
                            " characters, got {}"
                        ),
                        chars
                    ));
                }
                if text.chars().any(char::is_control) {
                    return Err(concat!($field, " must not contain control characters").to_owned());
                }
                Ok($name(text.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

bounded_text!(MsgId, "msg_id", 256);
bounded_text!(EventId, "event_id", 128);

/// A validated event, ready to be stored and pushed.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_id: EventId,
    pub event_type: EventType,
    pub account: AccountId,
    pub msg_id: MsgId,
    pub timestamp_ms: i64,
    pub test: bool,
    pub email: Map<String, Value>,
    pub status: Map<String, Value>,
    /// For opens and clicks: human or machine, and the first of its MsgId or not.
    pub engagement: Option<Engagement>,
}

/// The statistical truth about an open or click, pushed as the payload's `engagement`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Engagement {
    /// The first open (or click) of this MsgId; decided by the store when it is written.
    pub unique: bool,
    /// A proxy, prefetcher or scanner did this, not a person.
    pub machine: bool,
    /// The name of the rule that said so (`apple_mpp`, `image_proxy`, `scanner`, ...).
    pub machine_reason: Option<String>,
}

impl Engagement {
    pub fn detected(machine_reason: Option<&str>) -> Engagement {
        Engagement {
            unique: false,
            machine: machine_reason.is_some(),
            machine_reason: machine_reason.map(str::to_owned),
        }
    }
}

/// The body a receiver gets, field order as in the contract.
#[derive(Serialize)]
struct Payload<'a> {
    event_id: &'a EventId,
    #[serde(rename = "type")]
    event_type: EventType,
    account: &'a AccountId,
    msg_id: &'a MsgId,
    timestamp: String,
    test: bool,
    email: &'a Map<String, Value>,
    status: &'a Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    engagement: Option<&'a Engagement>,
}

impl Event {
    /// Opens and clicks carry an `engagement` object; other types do not.
    pub fn is_engagement(&self) -> bool {
        matches!(self.event_type, EventType::Open | EventType::Click)
    }

    /// Renders the JSON body pushed to receivers. Done once at intake: every attempt signs
    /// and sends these same bytes.
    pub fn render_payload(&self) -> Vec<u8> {
        let payload = Payload {
            event_id: &self.event_id,
            event_type: self.event_type,
            account: &self.account,
            msg_id: &self.msg_id,
            timestamp: format_rfc3339_ms(self.timestamp_ms),
            test: self.test,
            email: &self.email,
            status: &self.status,
            engagement: self.engagement.as_ref(),
        };
        serde_json::to_vec(&payload)
            .unwrap_or_else(|_| unreachable!("payload holds only JSON values"))
    }
}

/// The top-level fields an intake event may have.
pub const EVENT_FIELDS: [&str; 7] = [
    "type",
    "msg_id",
    "account",
    "event_id",
    "timestamp",
    "email",
    "status",
];

/// Limits applied while parsing an intake body.
#[derive(Debug, Clone, Copy)]
pub struct IntakeLimits {
    pub batch_events_max: usize,
    /// Longest string (or object key) anywhere in `email` and `status`, in bytes.
    pub string_bytes_max: usize,
    /// Deepest nesting of arrays and objects in the whole body (a batch array is level 1).
    pub json_depth_max: usize,
}

/// Parses an intake body (one event object, or an array of them) into validated events.
///
/// All or nothing: any invalid field rejects the whole body, and every problem found is
/// reported with its index and field. `new_event_id` supplies ids for events without one;
/// `now_ms` is the default timestamp.
pub fn parse_intake(
    body: &[u8],
    limits: IntakeLimits,
    now_ms: i64,
    new_event_id: &mut dyn FnMut() -> EventId,
) -> Result<Vec<Event>, IntakeError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|err| IntakeError::Json(err.to_string()))?;
    let depth = json_depth(&value);
    if depth > limits.json_depth_max {
        return Err(IntakeError::TooDeep {
            depth,
            max: limits.json_depth_max,
        });
    }
    let items = match value {
        Value::Array(items) => items,
        Value::Object(_) => vec![value],
        other => return Err(IntakeError::Shape(json_kind(&other))),
    };
    if items.is_empty() {
        return Err(IntakeError::Empty);
    }
    if items.len() > limits.batch_events_max {
        return Err(IntakeError::TooMany {
            count: items.len(),
            max: limits.batch_events_max,
        });
    }
    let mut events = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        match validate_event(index, item, limits.string_bytes_max, now_ms, new_event_id) {
            Ok(event) => events.push(event),
            Err(mut errs) => errors.append(&mut errs),
        }
    }
    if errors.is_empty() {
        Ok(events)
    } else {
        Err(IntakeError::Invalid(errors))
    }
}

fn validate_event(
    index: usize,
    item: Value,
    string_bytes_max: usize,
    now_ms: i64,
    new_event_id: &mut dyn FnMut() -> EventId,
) -> Result<Event, Vec<FieldError>> {
    let Value::Object(mut fields) = item else {
        return Err(vec![FieldError::at(
            index,
            "",
            format!("each event must be a JSON object, got {}", json_kind(&item)),
        )]);
    };
    let mut errors = Vec::new();
    let mut fail =
        |field: &str, message: String| errors.push(FieldError::at(index, field, message));

    for key in fields.keys() {
        if !EVENT_FIELDS.contains(&key.as_str()) {
            fail(
                key,
                format!(
                    "unknown field `{}`; allowed: {}",
                    truncate(key, 64),
                    EVENT_FIELDS.join(", ")
                ),
            );
        }
    }

    let event_type = match fields.get("type") {
        None => Err("type is required".to_owned()),
        Some(Value::String(text)) => {
            EventType::parse(text).ok_or_else(|| EventType::unknown_message(text))
        }
        Some(other) => Err(format!("type must be a string, got {}", json_kind(other))),
    };
    let event_type = event_type.map_err(|m| fail("type", m)).ok();

    let msg_id = match fields.get("msg_id") {
        None => Err("msg_id is required".to_owned()),
        Some(Value::String(text)) => MsgId::parse(text),
        Some(other) => Err(format!("msg_id must be a string, got {}", json_kind(other))),
    };
    let msg_id = msg_id.map_err(|m| fail("msg_id", m)).ok();

    let account = match fields.get("account") {
        None => Ok(AccountId::default_account()),
        Some(Value::String(text)) => AccountId::parse(text),
        Some(other) => Err(format!(
            "account must be a string, got {}",
            json_kind(other)
        )),
    };
    let account = account.map_err(|m| fail("account", m)).ok();

    let event_id = match fields.get("event_id") {
        None => Ok(None),
        Some(Value::String(text)) => EventId::parse(text).map(Some),
        Some(other) => Err(format!(
            "event_id must be a string, got {}",
            json_kind(other)
        )),
    };
    let event_id = event_id.map_err(|m| fail("event_id", m)).ok();

    let timestamp_ms = match fields.get("timestamp") {
        None => Ok(now_ms),
        Some(Value::String(text)) => parse_rfc3339_ms(text).ok_or_else(|| {
            format!(
                "timestamp `{}` is not an RFC 3339 date-time between 1970 and 9999 \
                 (e.g. 2026-11-27T12:00:00Z)",
                truncate(text, 64)
            )
        }),
        // A whole number written with a fraction (`1795780800123.0`, as some JSON encoders
        // write every number) is that whole number, as JSON Schema's `integer` says.
        Some(Value::Number(n)) => match n.as_i64().or_else(|| whole_ms(n)) {
            Some(ms) if (0..=TIMESTAMP_MS_MAX).contains(&ms) => Ok(ms),
            _ => Err(format!(
                "timestamp {n} is not Unix milliseconds between 0 and {TIMESTAMP_MS_MAX}"
            )),
        },
        Some(other) => Err(format!(
            "timestamp must be an RFC 3339 string or Unix milliseconds, got {}",
            json_kind(other)
        )),
    };
    let timestamp_ms = timestamp_ms.map_err(|m| fail("timestamp", m)).ok();

    let email = match fields.remove("email") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(email)) => validate_email(&email).map(|()| email),
        Some(other) => Err((
            "email".to_owned(),
            format!("email must be an object, got {}", json_kind(&other)),
        )),
    };
    let email = email.map_err(|(field, m)| fail(&field, m)).ok();

    let status = match fields.remove("status") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(status)) => Ok(status),
        Some(other) => Err(format!(
            "status must be an object, got {}",
            json_kind(&other)
        )),
    };
    let status = status.map_err(|m| fail("status", m)).ok();
    for (name, map) in [("email", &email), ("status", &status)] {
        if let Some(map) = map
            && let Some((path, len)) = long_string(map, name, string_bytes_max)
        {
            fail(
                &path,
                format!(
                    "{path} is {len} bytes long, the limit is {string_bytes_max} (limits.string_bytes_max)"
                ),
            );
        }
    }

    match (
        event_type,
        msg_id,
        account,
        event_id,
        timestamp_ms,
        email,
        status,
    ) {
        (
            Some(event_type),
            Some(msg_id),
            Some(account),
            Some(event_id),
            Some(timestamp_ms),
            Some(email),
            Some(status),
        ) if errors.is_empty() => Ok(Event {
            event_id: event_id.unwrap_or_else(new_event_id),
            event_type,
            account,
            msg_id,
            timestamp_ms,
            test: false,
            email,
            status,
            // Filled in by intake's machine detection (see `engagement.rs`) before storing.
            engagement: matches!(event_type, EventType::Open | EventType::Click)
                .then(|| Engagement::detected(None)),
        }),
        _ => Err(errors),
    }
}

/// A number with no fractional part within the timestamp range, as milliseconds.
fn whole_ms(n: &serde_json::Number) -> Option<i64> {
    let f = n.as_f64()?;
    (f.fract() == 0.0 && (0.0..=TIMESTAMP_MS_MAX as f64).contains(&f)).then_some(f as i64)
}

/// Checks the well-known `email` keys; other keys pass through untouched.
fn validate_email(email: &Map<String, Value>) -> Result<(), (String, String)> {
    for key in ["subject", "from"] {
        match email.get(key) {
            None | Some(Value::Null | Value::String(_)) => {}
            Some(other) => {
                return Err((
                    format!("email.{key}"),
                    format!("email.{key} must be a string, got {}", json_kind(other)),
                ));
            }
        }
    }
    match email.get("to") {
        None | Some(Value::Null | Value::String(_)) => {}
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {}
        Some(other) => {
            return Err((
                "email.to".to_owned(),
                format!(
                    "email.to must be a string or an array of strings, got {}",
                    json_kind(other)
                ),
            ));
        }
    }
    match email.get("tags") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {}
        Some(other) => {
            return Err((
                "email.tags".to_owned(),
                format!(
                    "email.tags must be an array of strings, got {}",
                    json_kind(other)
                ),
            ));
        }
    }
    match email.get("metadata") {
        None | Some(Value::Null | Value::Object(_)) => Ok(()),
        Some(other) => Err((
            "email.metadata".to_owned(),
            format!("email.metadata must be an object, got {}", json_kind(other)),
        )),
    }
}

/// Nesting depth of arrays and objects (a scalar is 0). Iterative, so a hostile body cannot
/// exhaust the stack here (serde_json itself refuses more than 128 levels while parsing).
fn json_depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 1usize)];
    while let Some((value, level)) = stack.pop() {
        match value {
            Value::Array(items) => {
                deepest = deepest.max(level);
                stack.extend(items.iter().map(|v| (v, level + 1)));
            }
            Value::Object(fields) => {
                deepest = deepest.max(level);
                stack.extend(fields.values().map(|v| (v, level + 1)));
            }
            _ => {}
        }
    }
    deepest
}

/// The first string or key over `max` bytes inside `map`, with its dotted path.
fn long_string(map: &Map<String, Value>, prefix: &str, max: usize) -> Option<(String, usize)> {
    for (key, value) in map {
        let path = format!("{prefix}.{}", truncate(key, 64));
        if key.len() > max {
            return Some((path, key.len()));
        }
        let found = match value {
            Value::String(text) if text.len() > max => Some((path.clone(), text.len())),
            Value::Object(inner) => long_string(inner, &path, max),
            Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| match item {
                Value::String(text) if text.len() > max => {
                    Some((format!("{path}[{i}]"), text.len()))
                }
                Value::Object(inner) => long_string(inner, &format!("{path}[{i}]"), max),
                _ => None,
            }),
            _ => None,
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

/// The JSON name of a value's kind, for error messages.
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Cuts user input quoted back in an error message to a readable length.
pub fn truncate(text: &str, chars_max: usize) -> String {
    if text.chars().count() <= chars_max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(chars_max).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: IntakeLimits = IntakeLimits {
        batch_events_max: 1000,
        string_bytes_max: 100,
        json_depth_max: 6,
    };
    const NOW: i64 = 1_795_780_800_000;

    fn parse(value: Value) -> Result<Vec<Event>, IntakeError> {
        let mut n = 0;
        parse_intake(value.to_string().as_bytes(), LIMITS, NOW, &mut || {
            n += 1;
            EventId::parse(&format!("gen-{n}")).unwrap()
        })
    }

    fn details(value: Value) -> Vec<(Option<usize>, String)> {
        match parse(value) {
            Err(IntakeError::Invalid(errors)) => {
                errors.into_iter().map(|e| (e.index, e.field)).collect()
            }
            other => panic!("expected field errors, got {other:?}"),
        }
    }

    #[test]
    fn accepts_a_minimal_event_with_defaults() {
        let events = parse(json!({"type": "delivery", "msg_id": "m1"})).unwrap();
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e.account.as_str(), "default");
        assert_eq!(e.event_id.as_str(), "gen-1");
        assert_eq!(e.timestamp_ms, NOW);
        assert!(!e.test);
    }

    #[test]
    fn a_whole_number_with_a_fraction_is_a_timestamp_and_a_fraction_is_not() {
        let events =
            parse(json!({"type": "send", "msg_id": "m", "timestamp": 1_795_780_800_123.0}))
                .unwrap();
        assert_eq!(events[0].timestamp_ms, 1_795_780_800_123);
        for bad in [json!(1.5), json!(-1.0), json!(1e300)] {
            let input = json!({"type": "send", "msg_id": "m", "timestamp": bad});
            assert_eq!(details(input), vec![(Some(0), "timestamp".to_owned())]);
        }
    }

    #[test]
    fn renders_the_contract_payload() {
        let events = parse(json!({
            "type": "bounce", "msg_id": "m1", "account": "acme", "event_id": "e1",
            "timestamp": 1_795_780_800_123_i64,
            "email": {"subject": "Hi", "to": "a@b.c"},
            "status": {"class": "hard", "smtp_code": 550}
        }))
        .unwrap();
        let body = String::from_utf8(events[0].render_payload()).unwrap();
        assert_eq!(
            body,
            r#"{"event_id":"e1","type":"bounce","account":"acme","msg_id":"m1","timestamp":"2026-11-27T12:00:00.123Z","test":false,"email":{"subject":"Hi","to":"a@b.c"},"status":{"class":"hard","smtp_code":550}}"#
        );
    }

    /// An input and the `(index, field)` of each error it must produce.
    type Case = (Value, Vec<(Option<usize>, &'static str)>);

    #[test]
    fn reports_every_bad_field_with_its_index() {
        let cases: Vec<Case> = vec![
            (json!({"msg_id": "m"}), vec![(Some(0), "type")]),
            (
                json!({"type": "opened", "msg_id": "m"}),
                vec![(Some(0), "type")],
            ),
            (json!({"type": "open"}), vec![(Some(0), "msg_id")]),
            (
                json!({"type": "open", "msg_id": ""}),
                vec![(Some(0), "msg_id")],
            ),
            (
                json!({"type": "open", "msg_id": "x".repeat(257)}),
                vec![(Some(0), "msg_id")],
            ),
            (
                json!({"type": "open", "msg_id": "m", "account": "a b"}),
                vec![(Some(0), "account")],
            ),
            (
                json!({"type": "open", "msg_id": "m", "event_id": 5}),
                vec![(Some(0), "event_id")],
            ),
            (
                json!({"type": "open", "msg_id": "m", "timestamp": "noon"}),
                vec![(Some(0), "timestamp")],
            ),
            (
                json!({"type": "open", "msg_id": "m", "timestamp": -1}),
                vec![(Some(0), "timestamp")],
            ),
            (
                json!({"type": "open", "msg_id": "m", "email": []}),
                vec![(Some(0), "email")],
            ),
            (
                json!({"type": "open", "msg_id": "m", "email": {"tags": [1]}}),
                vec![(Some(0), "email.tags")],
            ),
            (
                json!({"type": "open", "msg_id": "m", "status": "ok"}),
                vec![(Some(0), "status")],
            ),
            (
                json!({"type": "open", "msg_id": "m", "colour": "red"}),
                vec![(Some(0), "colour")],
            ),
            (
                json!([{"type": "open", "msg_id": "m"}, {"type": "open", "msg_id": "m"}, 7, {"type": 1, "msg_id": "m"}]),
                vec![(Some(2), ""), (Some(3), "type")],
            ),
        ];
        for (input, expected) in cases {
            let expected: Vec<_> = expected
                .into_iter()
                .map(|(i, f)| (i, f.to_owned()))
                .collect();
            assert_eq!(details(input.clone()), expected, "input: {input}");
        }
    }

    #[test]
    fn long_strings_and_deep_nesting_are_refused_by_name() {
        let long = "x".repeat(101);
        let cases = [
            (
                json!({"type": "open", "msg_id": "m", "email": {"subject": long}}),
                "email.subject",
            ),
            (
                json!({"type": "open", "msg_id": "m", "status": {"a": {"b": [long]}}}),
                "status.a.b[0]",
            ),
            (
                json!({"type": "open", "msg_id": "m", "email": {"metadata": {long.clone(): 1}}}),
                "email.metadata.",
            ),
        ];
        for (input, field) in cases {
            let got = details(input);
            assert!(got[0].1.starts_with(field), "{got:?} for {field}");
        }
        let deep = json!([{"type": "open", "msg_id": "m", "status": {"a": {"b": {"c": {"d": {"e": 1}}}}}}]);
        assert!(matches!(
            parse(deep),
            Err(IntakeError::TooDeep { depth: 7, max: 6 })
        ));
        let mut nested = String::new();
        for _ in 0..100_000 {
            nested.push('[');
        }
        let mut id = || EventId::parse("x").unwrap();
        assert!(matches!(
            parse_intake(nested.as_bytes(), LIMITS, NOW, &mut id),
            Err(IntakeError::Json(_))
        ));
    }

    #[test]
    fn rejects_bodies_of_the_wrong_shape() {
        assert!(matches!(parse(json!([])), Err(IntakeError::Empty)));
        assert!(matches!(
            parse(json!("x")),
            Err(IntakeError::Shape("a string"))
        ));
        let big: Vec<Value> = (0..1001)
            .map(|i| json!({"type": "open", "msg_id": i.to_string()}))
            .collect();
        assert!(matches!(
            parse(Value::Array(big)),
            Err(IntakeError::TooMany {
                count: 1001,
                max: 1000
            })
        ));
        let mut id = || EventId::parse("x").unwrap();
        assert!(matches!(
            parse_intake(b"{", LIMITS, NOW, &mut id),
            Err(IntakeError::Json(_))
        ));
    }

    /// Any JSON value, nested a few levels, with keys drawn mostly from the event's own.
    fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let key = prop_oneof![
            proptest::sample::select(vec![
                "type",
                "msg_id",
                "account",
                "event_id",
                "timestamp",
                "email",
                "status",
                "subject",
                "to",
                "tags",
                "metadata"
            ])
            .prop_map(str::to_owned),
            ".{0,12}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            proptest::sample::select(vec![
                "open",
                "click",
                "delivery",
                "2026-11-27T12:00:00Z",
                "",
                "default"
            ])
            .prop_map(Value::from),
            ".{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 64, 8, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::vec((key.clone(), inner), 0..8)
                    .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_json(value in arbitrary_json()) {
            let mut id = || EventId::parse("x").unwrap();
            if let Ok(events) = parse_intake(value.to_string().as_bytes(), LIMITS, NOW, &mut id) {
                for event in events {
                    let body: Value = serde_json::from_slice(&event.render_payload()).unwrap();
                    proptest::prop_assert_eq!(&body["type"], &Value::from(event.event_type.as_str()));
                }
            }
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut id = || EventId::parse("x").unwrap();
            let _ = parse_intake(&body, LIMITS, NOW, &mut id);
        }
    }
}
