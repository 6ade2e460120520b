//! The event model: validated once at intake into types that cannot hold a bad value, and
//! rendered once into the exact JSON body every receiver gets.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
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
    pub email: JsonObject,
    pub status: JsonObject,
    /// For opens and clicks: human or machine, and the first of its MsgId or not.
    pub engagement: Option<Engagement>,
}

/// A JSON object passed through to receivers as intake got it (`email`, `status`), kept as
/// its compact JSON text.
///
/// Why text: intake checks a few well-known keys and the length of every string, and
/// otherwise only copies these objects into the pushed body. Parsing them into maps and
/// writing them out again was most of intake's CPU (perf, batched intake-only bench); kept
/// as text they are scanned, not built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonObject(String);

impl JsonObject {
    pub fn empty() -> JsonObject {
        JsonObject("{}".to_owned())
    }

    /// From a parsed map (tests, samples).
    pub fn from_map(map: &Map<String, Value>) -> JsonObject {
        JsonObject(Value::Object(map.clone()).to_string())
    }

    /// The compact JSON text: `{...}`.
    pub fn as_json(&self) -> &str {
        &self.0
    }

    /// The object parsed, for the few readers of its fields (machine detection).
    pub fn to_map(&self) -> Map<String, Value> {
        serde_json::from_str(&self.0).unwrap_or_default()
    }
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

impl Event {
    /// Opens and clicks carry an `engagement` object; other types do not.
    pub fn is_engagement(&self) -> bool {
        matches!(self.event_type, EventType::Open | EventType::Click)
    }

    /// Renders the JSON body pushed to receivers, field order as in the contract. Done once
    /// at intake: every attempt signs and sends these same bytes.
    pub fn render_payload(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160 + self.email.0.len() + self.status.0.len());
        let string = |out: &mut Vec<u8>, key: &str, value: &str| {
            out.extend_from_slice(key.as_bytes());
            serde_json::to_writer(&mut *out, value)
                .unwrap_or_else(|_| unreachable!("a string always serializes"));
        };
        string(&mut out, "{\"event_id\":", self.event_id.as_str());
        string(&mut out, ",\"type\":", self.event_type.as_str());
        string(&mut out, ",\"account\":", self.account.as_str());
        string(&mut out, ",\"msg_id\":", self.msg_id.as_str());
        string(
            &mut out,
            ",\"timestamp\":",
            &format_rfc3339_ms(self.timestamp_ms),
        );
        out.extend_from_slice(if self.test {
            b",\"test\":true"
        } else {
            b",\"test\":false"
        });
        out.extend_from_slice(b",\"email\":");
        out.extend_from_slice(self.email.0.as_bytes());
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(self.status.0.as_bytes());
        if let Some(engagement) = &self.engagement {
            out.extend_from_slice(b",\"engagement\":");
            serde_json::to_writer(&mut out, engagement)
                .unwrap_or_else(|_| unreachable!("engagement holds only JSON values"));
        }
        out.push(b'}');
        out
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
///
/// Nothing of the body is copied but what an event keeps: values are borrowed from it
/// (`RawValue`, borrowed strings) while they are checked.
pub fn parse_intake(
    body: &[u8],
    limits: IntakeLimits,
    now_ms: i64,
    new_event_id: &mut dyn FnMut() -> EventId,
) -> Result<Vec<Event>, IntakeError> {
    let json = |err: serde_json::Error| IntakeError::Json(err.to_string());
    // Parsed straight into its events' texts, each kept raw: one pass over the body, where
    // parsing it whole first and then its array again took two.
    let items: Vec<&RawValue> = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => serde_json::from_slice(body).map_err(json)?,
        Some(b'{') => vec![serde_json::from_slice(body).map_err(json)?],
        _ => {
            let value: &RawValue = serde_json::from_slice(body).map_err(json)?;
            return Err(IntakeError::Shape(raw_kind(value)));
        }
    };
    // Valid JSON now, so its depth can be counted without a parser's stack.
    let depth = json_depth(body);
    if depth > limits.json_depth_max {
        return Err(IntakeError::TooDeep {
            depth,
            max: limits.json_depth_max,
        });
    }
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

/// A JSON string borrowed from the body when it has no escapes, copied when it has.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Text<'de>, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                text: &'de str,
            ) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(text)))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(Visit)
    }
}

/// An object's members in order, values unparsed. A key given twice keeps its first place
/// and its last value, as a parsed map would. Not an `IndexMap`: hashing every member of
/// every event cost ~8% of intake's CPU (batched intake-only bench); an event has a handful
/// of members, so a scan finds repeats, and hashing starts only past `SCAN_MEMBERS_MAX`.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Members<'de>, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members: Vec<(Cow<'de, str>, &'de RawValue)> = Vec::new();
                // Past a few members, repeats are found by hashing, not by a scan: a body
                // of a million keys must not cost a million squared comparisons.
                let mut places: HashMap<Cow<'de, str>, usize> = HashMap::new();
                while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    let place = if places.is_empty() && members.len() < SCAN_MEMBERS_MAX {
                        members.iter().position(|(k, _)| *k == key)
                    } else {
                        if places.is_empty() {
                            let known = members.iter().enumerate();
                            places.extend(known.map(|(i, (k, _))| (k.clone(), i)));
                        }
                        places.get(&key).copied()
                    };
                    match place {
                        Some(i) => members[i].1 = value,
                        None => {
                            if !places.is_empty() {
                                places.insert(key.clone(), members.len());
                            }
                            members.push((key, value));
                        }
                    }
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// Members up to which a repeated key is found by a scan.
const SCAN_MEMBERS_MAX: usize = 16;

impl<'a> Members<'a> {
    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

/// A string field's text, or the message for what it holds instead.
fn string<'a>(name: &str, raw: &'a RawValue) -> Result<Cow<'a, str>, String> {
    text(raw).ok_or_else(|| format!("{name} must be a string, got {}", raw_kind(raw)))
}

/// The text of a JSON string value; `None` when `raw` is not a string.
fn text(raw: &RawValue) -> Option<Cow<'_, str>> {
    match raw_kind(raw) {
        "a string" => serde_json::from_str::<Text<'_>>(raw.get())
            .ok()
            .map(|t| t.0),
        _ => None,
    }
}

fn validate_event(
    index: usize,
    item: &RawValue,
    string_bytes_max: usize,
    now_ms: i64,
    new_event_id: &mut dyn FnMut() -> EventId,
) -> Result<Event, Vec<FieldError>> {
    let fields = match raw_kind(item) {
        "an object" => serde_json::from_str::<Members<'_>>(item.get())
            .map_err(|err| vec![FieldError::at(index, "", err.to_string())])?,
        other => {
            return Err(vec![FieldError::at(
                index,
                "",
                format!("each event must be a JSON object, got {other}"),
            )]);
        }
    };
    let mut errors = Vec::new();
    let mut fail =
        |field: &str, message: String| errors.push(FieldError::at(index, field, message));

    for (key, _) in &fields.0 {
        if !EVENT_FIELDS.contains(&key.as_ref()) {
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
        Some(raw) => string("type", raw).and_then(|text| {
            EventType::parse(&text).ok_or_else(|| EventType::unknown_message(&text))
        }),
    };
    let event_type = event_type.map_err(|m| fail("type", m)).ok();

    let msg_id = match fields.get("msg_id") {
        None => Err("msg_id is required".to_owned()),
        Some(raw) => string("msg_id", raw).and_then(|text| MsgId::parse(&text)),
    };
    let msg_id = msg_id.map_err(|m| fail("msg_id", m)).ok();

    let account = match fields.get("account") {
        None => Ok(AccountId::default_account()),
        Some(raw) => string("account", raw).and_then(|text| AccountId::parse(&text)),
    };
    let account = account.map_err(|m| fail("account", m)).ok();

    let event_id = match fields.get("event_id") {
        None => Ok(None),
        Some(raw) => string("event_id", raw).and_then(|text| EventId::parse(&text).map(Some)),
    };
    let event_id = event_id.map_err(|m| fail("event_id", m)).ok();

    let timestamp_ms = match fields.get("timestamp") {
        None => Ok(now_ms),
        Some(raw) => timestamp(raw),
    };
    let timestamp_ms = timestamp_ms.map_err(|m| fail("timestamp", m)).ok();

    let email = match fields.get("email") {
        None => Ok(JsonObject::empty()),
        Some(raw) => match raw_kind(raw) {
            "null" => Ok(JsonObject::empty()),
            "an object" => validate_email(raw)
                .and_then(|()| compact("email", raw).map_err(|m| ("email".to_owned(), m))),
            other => Err((
                "email".to_owned(),
                format!("email must be an object, got {other}"),
            )),
        },
    };
    let email = email.map_err(|(field, m)| fail(&field, m)).ok();

    let status = match fields.get("status") {
        None => Ok(JsonObject::empty()),
        Some(raw) => match raw_kind(raw) {
            "null" => Ok(JsonObject::empty()),
            "an object" => compact("status", raw),
            other => Err(format!("status must be an object, got {other}")),
        },
    };
    let status = status.map_err(|m| fail("status", m)).ok();
    for (name, object) in [("email", &email), ("status", &status)] {
        if let Some(object) = object
            && let Some((path, len)) = long_string(object, name, string_bytes_max)
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

/// The `timestamp` field: an RFC 3339 string or Unix milliseconds.
fn timestamp(raw: &RawValue) -> Result<i64, String> {
    match raw_kind(raw) {
        "a string" => {
            let text = text(raw).unwrap_or_default();
            parse_rfc3339_ms(&text).ok_or_else(|| {
                format!(
                    "timestamp `{}` is not an RFC 3339 date-time between 1970 and 9999 \
                     (e.g. 2026-11-27T12:00:00Z)",
                    truncate(&text, 64)
                )
            })
        }
        // A whole number written with a fraction (`1795780800123.0`, as some JSON encoders
        // write every number) is that whole number, as JSON Schema's `integer` says.
        "a number" => {
            let n: serde_json::Number = serde_json::from_str(raw.get())
                .map_err(|err| format!("timestamp {} is not a number: {err}", raw.get()))?;
            match n.as_i64().or_else(|| whole_ms(&n)) {
                Some(ms) if (0..=TIMESTAMP_MS_MAX).contains(&ms) => Ok(ms),
                _ => Err(format!(
                    "timestamp {n} is not Unix milliseconds between 0 and {TIMESTAMP_MS_MAX}"
                )),
            }
        }
        other => Err(format!(
            "timestamp must be an RFC 3339 string or Unix milliseconds, got {other}"
        )),
    }
}

/// Checks the well-known `email` keys; other keys pass through untouched.
fn validate_email(email: &RawValue) -> Result<(), (String, String)> {
    let members = serde_json::from_str::<Members<'_>>(email.get())
        .map_err(|err| ("email".to_owned(), format!("email: {err}")))?;
    let strings = |raw: &RawValue| {
        serde_json::from_str::<Vec<&RawValue>>(raw.get())
            .is_ok_and(|items| items.iter().all(|item| raw_kind(item) == "a string"))
    };
    for key in ["subject", "from"] {
        match members.get(key).map(raw_kind) {
            None | Some("null" | "a string") => {}
            Some(other) => {
                return Err((
                    format!("email.{key}"),
                    format!("email.{key} must be a string, got {other}"),
                ));
            }
        }
    }
    match members.get("to") {
        None => {}
        Some(raw) => match raw_kind(raw) {
            "null" | "a string" => {}
            "an array" if strings(raw) => {}
            other => {
                return Err((
                    "email.to".to_owned(),
                    format!("email.to must be a string or an array of strings, got {other}"),
                ));
            }
        },
    }
    match members.get("tags") {
        None => {}
        Some(raw) => match raw_kind(raw) {
            "null" => {}
            "an array" if strings(raw) => {}
            other => {
                return Err((
                    "email.tags".to_owned(),
                    format!("email.tags must be an array of strings, got {other}"),
                ));
            }
        },
    }
    match members.get("metadata").map(raw_kind) {
        None | Some("null" | "an object") => Ok(()),
        Some(other) => Err((
            "email.metadata".to_owned(),
            format!("email.metadata must be an object, got {other}"),
        )),
    }
}

/// The JSON text without the whitespace between tokens (strings are copied as they are).
///
/// Also refuses what a parser skipping over a value lets through but a receiver's parser
/// may reject the whole body for (a map built from the text refused both): a `\u` escape of
/// a lone surrogate, and a number beyond a 64-bit float (`1e999`).
fn compact(name: &str, raw: &RawValue) -> Result<JsonObject, String> {
    let text = raw.get().as_bytes();
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while let Some(&b) = text.get(i) {
        match b {
            b'"' => {
                let end = string_end(name, text, i)?;
                // A string is copied whole: most of a payload's bytes are in strings, and one
                // copy per string costs far less than a branch per byte (perf: this function
                // was ~2.4% of the gateway's CPU end to end when it went byte by byte).
                out.extend_from_slice(&text[i..end]);
                i = end;
            }
            b'-' | b'0'..=b'9' => {
                let len = text[i..]
                    .iter()
                    .take_while(|c| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                    .count();
                let number = &text[i..i + len];
                let finite = std::str::from_utf8(number)
                    .ok()
                    .and_then(|n| n.parse::<f64>().ok())
                    .is_some_and(f64::is_finite);
                if !finite {
                    return Err(format!(
                        "{name} holds the number `{}`, beyond what a 64-bit float holds",
                        truncate(&String::from_utf8_lossy(number), 64)
                    ));
                }
                out.extend_from_slice(number);
                i += len;
            }
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    // Only ASCII whitespace was left out of valid UTF-8.
    String::from_utf8(out)
        .map(JsonObject)
        .map_err(|err| format!("{name} is not UTF-8: {err}"))
}

/// The index just past the string that opens at `text[start]` (a `"`), checking its `\u`
/// escapes on the way. The text is valid JSON, so only escapes need a look: the plain runs
/// between them are skipped with one `memchr2` each.
fn string_end(name: &str, text: &[u8], start: usize) -> Result<usize, String> {
    let mut i = start + 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', &text[i..]).unwrap_or(text.len() - i);
        match text.get(i) {
            None => return Ok(text.len()),
            Some(b'"') => return Ok(i + 1),
            Some(_) if text.get(i + 1) == Some(&b'u') => {
                let unit = |at: usize| {
                    text.get(at..at + 4)
                        .and_then(|hex| std::str::from_utf8(hex).ok())
                        .and_then(|hex| u16::from_str_radix(hex, 16).ok())
                };
                i += match unit(i + 2) {
                    Some(0xD800..=0xDBFF)
                        if text.get(i + 6..i + 8) == Some(b"\\u")
                            && matches!(unit(i + 8), Some(0xDC00..=0xDFFF)) =>
                    {
                        12
                    }
                    Some(0xD800..=0xDFFF) => {
                        let escape = String::from_utf8_lossy(&text[i..(i + 6).min(text.len())]);
                        return Err(format!(
                            "{name} holds `{escape}`, half of a UTF-16 surrogate pair without the other half"
                        ));
                    }
                    _ => 6,
                };
            }
            // Any other escape is two bytes: `\"` and `\\` must not end the string.
            Some(_) => i += 2,
        }
        i = i.min(text.len());
    }
}

/// Nesting depth of arrays and objects in valid JSON text (a scalar is 0): the deepest
/// bracket outside strings. One pass, no stack, so a hostile body costs no more than its
/// length here.
fn json_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut i = 0;
    while let Some(&b) = text.get(i) {
        match b {
            b'"' => {
                i = skip_string(text, i);
                continue;
            }
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    deepest
}

/// The index just past the string that opens at `text[start]`: brackets inside strings do
/// not nest. Plain runs are skipped with one `memchr2` each, escapes two bytes at a time.
fn skip_string(text: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < text.len() {
        i += memchr::memchr2(b'"', b'\\', &text[i..]).unwrap_or(text.len() - i);
        match text.get(i) {
            Some(b'"') => return i + 1,
            Some(_) => i += 2,
            None => break,
        }
    }
    text.len()
}

/// The kind of a JSON value from its first byte (the text is valid JSON).
fn raw_kind(raw: &RawValue) -> &'static str {
    match raw.get().trim_start().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// A number with no fractional part within the timestamp range, as milliseconds.
fn whole_ms(n: &serde_json::Number) -> Option<i64> {
    let f = n.as_f64()?;
    (f.fract() == 0.0 && (0.0..=TIMESTAMP_MS_MAX as f64).contains(&f)).then_some(f as i64)
}

/// The first string or key over `max` bytes inside `object`, with its dotted path.
///
/// Cheap in the usual case: no string in a text of at most `max` bytes can be longer (an
/// escape only makes the text longer than the string), so only larger objects are parsed.
fn long_string(object: &JsonObject, prefix: &str, max: usize) -> Option<(String, usize)> {
    if object.0.len() <= max {
        return None;
    }
    long_string_in(&object.to_map(), prefix, max)
}

fn long_string_in(map: &Map<String, Value>, prefix: &str, max: usize) -> Option<(String, usize)> {
    for (key, value) in map {
        let path = format!("{prefix}.{}", truncate(key, 64));
        if key.len() > max {
            return Some((path, key.len()));
        }
        let found = match value {
            Value::String(text) if text.len() > max => Some((path.clone(), text.len())),
            Value::Object(inner) => long_string_in(inner, &path, max),
            Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| match item {
                Value::String(text) if text.len() > max => {
                    Some((format!("{path}[{i}]"), text.len()))
                }
                Value::Object(inner) => long_string_in(inner, &format!("{path}[{i}]"), max),
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
    fn email_and_status_pass_through_as_sent_without_the_whitespace_between_tokens() {
        let body = br#"{"type": "open", "msg_id": "m1", "event_id": "e1", "timestamp": 0,
            "email": { "subject" : "two  spaces\t\"quoted\" \u00e9" , "to" : [ "a@b.c" ] },
            "status": {"n": 1.50, "deep": {"x": [1, {"y": null}]}}}"#;
        let events = parse_intake(body, LIMITS, NOW, &mut || unreachable!()).unwrap();
        let rendered = String::from_utf8(events[0].render_payload()).unwrap();
        assert!(
            rendered.contains(
                r#""email":{"subject":"two  spaces\t\"quoted\" \u00e9","to":["a@b.c"]},"status":{"n":1.50,"deep":{"x":[1,{"y":null}]}}"#
            ),
            "{rendered}"
        );
        let parsed: Value = serde_json::from_slice(&events[0].render_payload()).unwrap();
        assert_eq!(parsed["email"]["subject"], "two  spaces\t\"quoted\" \u{e9}");
    }

    #[test]
    fn a_lone_surrogate_escape_is_refused_and_a_pair_passes() {
        let body = |text: &str| with_status(&format!(r#"{{"s": "{text}"}}"#));
        for lone in [r"\ud800", r"x\uDC00", r"\ud800\u0041", r"\ud800"] {
            let got = details_or_events(body(lone).as_bytes()).map(|_| ());
            let errors = got.expect_err(lone);
            assert_eq!(errors[0].field, "status", "{lone}");
            assert!(
                errors[0].message.contains("surrogate"),
                "{}",
                errors[0].message
            );
        }
        let events = details_or_events(body(r"\ud83d\ude00 \u00e9").as_bytes()).unwrap();
        let payload: Value = serde_json::from_slice(&events[0].render_payload()).unwrap();
        assert_eq!(payload["status"]["s"], "\u{1f600} \u{e9}");
    }

    #[test]
    fn a_number_beyond_a_float_is_refused_and_others_pass_as_written() {
        let body = |number: &str| with_status(&format!(r#"{{"n": {number}}}"#));
        for huge in ["1e999", "-1e400", &"9".repeat(400)] {
            let errors = details_or_events(body(huge).as_bytes())
                .map(|_| ())
                .expect_err(huge);
            assert_eq!(errors[0].field, "status", "{huge}");
            assert!(
                errors[0].message.contains("64-bit float"),
                "{}",
                errors[0].message
            );
        }
        for fine in ["0", "-0.5", "1E3", "12345678901234567890", "2.5e-300"] {
            let events = details_or_events(body(fine).as_bytes()).unwrap();
            let payload = String::from_utf8(events[0].render_payload()).unwrap();
            assert!(
                payload.contains(&format!(r#""status":{{"n":{fine}}}"#)),
                "{payload}"
            );
            serde_json::from_str::<Value>(&payload).unwrap();
        }
    }

    #[test]
    fn a_repeated_key_keeps_its_first_place_and_its_last_value_however_many_keys() {
        // Few members (found by a scan) and many (found by hashing) must agree.
        for extra in [0, 40] {
            let mut text = String::from(r#"{"msg_id": "first", "type": "send""#);
            for i in 0..extra {
                text.push_str(&format!(r#", "x{i}": 1"#));
            }
            text.push_str(r#", "msg_id": "last"}"#);
            let got = details_or_events(text.as_bytes());
            match got {
                Ok(events) => {
                    assert_eq!(extra, 0);
                    assert_eq!(events[0].msg_id.as_str(), "last");
                }
                Err(errors) => {
                    // Each unknown key once, in order; msg_id is not among them.
                    let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
                    let expected: Vec<String> = (0..extra).map(|i| format!("x{i}")).collect();
                    assert_eq!(fields, expected);
                }
            }
        }
    }

    /// One send event whose `status` is this JSON text.
    fn with_status(status: &str) -> String {
        format!(r#"{{"type": "send", "msg_id": "m", "event_id": "e", "status": {status}}}"#)
    }

    fn details_or_events(body: &[u8]) -> Result<Vec<Event>, Vec<FieldError>> {
        match parse_intake(body, LIMITS, NOW, &mut || EventId::parse("gen").unwrap()) {
            Ok(events) => Ok(events),
            Err(IntakeError::Invalid(errors)) => Err(errors),
            Err(other) => panic!("expected events or field errors, got {other:?}"),
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

        /// The fast paths skip whole string runs at a time: what they make of any JSON,
        /// spread over lines, must be what a serializer writes compactly, and the depth what
        /// the parsed value has.
        #[test]
        fn compact_and_depth_agree_with_serde_on_any_json(value in arbitrary_json()) {
            fn depth(value: &Value) -> usize {
                match value {
                    Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
                    Value::Object(members) => 1 + members.values().map(depth).max().unwrap_or(0),
                    _ => 0,
                }
            }
            let pretty = serde_json::to_string_pretty(&value).unwrap();
            let raw: &RawValue = serde_json::from_str(&pretty).unwrap();
            let compacted = compact("status", raw).unwrap();
            proptest::prop_assert_eq!(compacted.0, serde_json::to_string(&value).unwrap());
            proptest::prop_assert_eq!(json_depth(pretty.as_bytes()), depth(&value));
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut id = || EventId::parse("x").unwrap();
            let _ = parse_intake(&body, LIMITS, NOW, &mut id);
        }
    }
}
