//! `POST /v1/accounts/{account}/webhook/test`, the "Simulate Send Test": a sample event of
//! the chosen type goes through intake's own validation, rendering and storing, marked
//! `test`, and the real dispatcher pushes it along the real failover chain; the request
//! waits (at most `delivery.test_timeout`) and answers with what happened.

use std::time::Duration;

use http::{Response, StatusCode};
use mailhook_core::event::{EventType, IntakeLimits, parse_intake};
use mailhook_core::sample::sample_event;
use mailhook_core::time::format_rfc3339_ms;
use mailhook_core::{AccountId, EventId, FieldError};
use mailhook_delivery::now_ms;
use mailhook_delivery::test_push::{SentAttempt, TEST_WATCHES_MAX};
use mailhook_store::{AttemptRecord, EventState, new_event};
use serde_json::{Map, Value, json};

use super::{Api, Result, field_error};
use crate::response::{ApiError, Body, json};

/// How often a waiting request reads the event back from the store. The dispatcher of this
/// node reports at once; this only catches a push that another node sharing the store
/// claimed, so it can be slow, and one indexed read per waiting request per 500 ms is cheap.
const STORE_RECHECK: Duration = Duration::from_millis(500);

impl Api {
    pub(super) async fn test_push(
        &self,
        account: &AccountId,
        body: &Value,
    ) -> Result<Response<Body>> {
        let event_type = test_type(body)?;
        let settings = self.store.get_settings(account).await?;
        if settings.is_none_or(|s| s.settings.addresses.is_empty()) {
            return Err(field_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "addresses",
                format!(
                    "account `{account}` has no webhook address; save at least one before a test push"
                ),
            ));
        }

        // A sample as a mail system would post it, through intake's own steps: the same
        // validation, machine detection, rendering and storing. Not its rate limit or its
        // metrics: a test is not traffic.
        let msg_id = format!("test-{}", uuid::Uuid::now_v7());
        let sample = sample_event(event_type, account, &msg_id);
        let limits = IntakeLimits {
            batch_events_max: 1,
            string_bytes_max: self.config.string_bytes_max,
            json_depth_max: self.config.json_depth_max,
        };
        let mut new_id = || {
            EventId::parse(&uuid::Uuid::now_v7().to_string())
                .unwrap_or_else(|_| unreachable!("a UUID is a valid event id"))
        };
        let mut events = parse_intake(sample.to_string().as_bytes(), limits, now_ms(), &mut new_id)
            .map_err(|err| {
                // The samples are tested to pass intake; this is a bug, not bad input.
                tracing::error!(error = %err, "a test push sample failed intake validation");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot build the sample event",
                )
            })?;
        for event in &mut events {
            event.test = true;
        }
        self.detect_machines(&mut events).await?;
        let Some((event_id, rendered)) = events
            .first()
            .map(|e| (e.event_id.to_string(), e.render_payload()))
        else {
            unreachable!("a sample is one event")
        };
        // Watch before storing: the dispatcher may be done before the insert returns.
        let mut watch = self
            .tests
            .watch(account.as_str(), &event_id)
            .map_err(|_| ApiError {
                retry_after_secs: Some(1),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "{TEST_WATCHES_MAX} test pushes are already in progress; retry in a moment"
                    ),
                )
            })?;
        self.store
            .insert_events(events.into_iter().map(new_event).collect())
            .await?;
        self.bus.ring();
        tracing::info!(%account, %event_id, event_type = event_type.as_str(), "test push queued");

        let deadline = tokio::time::Instant::now() + self.config.test_timeout;
        let mut timed_out = false;
        loop {
            if watch.progress().settled.is_some() {
                break;
            }
            tokio::select! {
                () = watch.changed() => {}
                () = tokio::time::sleep(STORE_RECHECK) => {
                    let stored = self.store.event(account, &event_id).await?;
                    if stored.is_some_and(|e| e.state != EventState::Pending) {
                        break;
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    timed_out = true;
                    break;
                }
            }
        }

        let progress = watch.progress();
        drop(watch);
        let stored = self.store.event(account, &event_id).await?;
        // This node's reports hold the headers and attempts not written yet; the store holds
        // attempts another node made. Take whichever saw more.
        let stored_attempts = stored.as_ref().map_or(&[][..], |e| &e.attempts[..]);
        let attempts: Vec<Value> = if progress.attempts.len() >= stored_attempts.len() {
            progress
                .attempts
                .iter()
                .map(|a| attempt_json(&a.record))
                .collect()
        } else {
            stored_attempts.iter().map(attempt_json).collect()
        };
        let (state, delivered_to, detail) = match (&progress.settled, &stored) {
            (Some(settled), _) => (settled.state, settled.delivered_to, settled.detail.clone()),
            (None, Some(stored)) => (stored.state, stored.delivered_to, stored.detail.clone()),
            (None, None) => (EventState::Pending, None, None),
        };
        let last_sent: Option<&SentAttempt> = progress.attempts.last();
        // The bytes the receiver got, when this node sent them; else the body as rendered.
        let payload_bytes = match last_sent {
            Some(sent) => sent.body.to_vec(),
            None => rendered,
        };
        let payload: Value = serde_json::from_slice(&payload_bytes).unwrap_or(Value::Null);
        let headers = last_sent.map(|sent| {
            sent.headers
                .iter()
                .map(|(name, value)| (name.clone(), Value::String(value.clone())))
                .collect::<Map<String, Value>>()
        });
        let delivered = state == EventState::Delivered;
        let url = delivered
            .then(|| last_sent.map(|s| s.record.url.clone()))
            .flatten()
            .or_else(|| {
                delivered
                    .then(|| stored_attempts.last().map(|a| a.url.clone()))
                    .flatten()
            });
        let next_attempt_at = if state == EventState::Pending {
            progress
                .next_attempt_at_ms
                .or_else(|| stored.as_ref().and_then(|e| e.due_at_ms))
                .map(format_rfc3339_ms)
        } else {
            None
        };
        Ok(json(
            StatusCode::OK,
            &json!({
                "event_id": event_id,
                "msg_id": msg_id,
                "account": account,
                "type": event_type.as_str(),
                "delivered": delivered,
                "state": state.as_str(),
                "address": delivered_to.map(|r| r.as_str()),
                "url": url,
                "error": detail,
                "attempts": attempts,
                "payload": payload,
                "headers": headers,
                "next_attempt_at": next_attempt_at,
                "timed_out": timed_out,
            }),
        ))
    }
}

/// The test push's event type: `{"type": "click"}`, or `delivery` for `{}` and no body.
fn test_type(body: &Value) -> Result<EventType> {
    let Value::Object(fields) = body else {
        return Err(field_error(
            StatusCode::BAD_REQUEST,
            "",
            "body must be an object: {\"type\": \"delivery\"} or {}".into(),
        ));
    };
    if let Some(key) = fields.keys().find(|k| k.as_str() != "type") {
        return Err(field_error(
            StatusCode::BAD_REQUEST,
            key,
            format!(
                "unknown field `{}`; allowed: type",
                mailhook_core::event::truncate(key, 64)
            ),
        ));
    }
    match fields.get("type") {
        None | Some(Value::Null) => Ok(EventType::Delivery),
        Some(Value::String(text)) => EventType::parse(text).ok_or_else(|| {
            let message = EventType::unknown_message(text);
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message.clone())
                .with_details(vec![FieldError::new("type", message)])
        }),
        Some(other) => {
            let message = format!(
                "type must be a string, got {}",
                mailhook_core::event::json_kind(other)
            );
            Err(
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message.clone())
                    .with_details(vec![FieldError::new("type", message)]),
            )
        }
    }
}

fn attempt_json(a: &AttemptRecord) -> Value {
    json!({
        "number": a.number,
        "address": a.role.as_str(),
        "url": a.url,
        "status": a.status,
        "error": a.error,
        "duration_ms": a.duration_ms,
        "at": format_rfc3339_ms(a.at_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a body comes to: the type, or the status and the field named.
    type Expected = Result<EventType, (u16, &'static str)>;

    #[test]
    fn the_type_defaults_to_delivery_and_bad_bodies_name_the_field() {
        let table: [(Value, Expected); 7] = [
            (json!({}), Ok(EventType::Delivery)),
            (json!({"type": null}), Ok(EventType::Delivery)),
            (json!({"type": "click"}), Ok(EventType::Click)),
            (json!({"type": "clicked"}), Err((422, "type"))),
            (json!({"type": 3}), Err((422, "type"))),
            (json!({"kind": "click"}), Err((400, "kind"))),
            (json!(["click"]), Err((400, ""))),
        ];
        for (body, expected) in table {
            let got = test_type(&body).map_err(|e| (e.status.as_u16(), e.details[0].field.clone()));
            let expected = expected.map_err(|(status, field)| (status, field.to_owned()));
            assert_eq!(got, expected, "{body}");
        }
    }
}
