//! Plugins in the delivery path: an account's transform chain, run before signing (so the
//! signed body is the transformed one), and sink plugins as addresses of the failover chain,
//! whose HTTP requests this crate's client makes (SSRF guard, timeouts, keep-alive).

use std::time::Duration;

use bytes::Bytes;
use mailhook_core::chain::Outcome;
use mailhook_plugin_host::{CallInput, PluginHost, Policy, Transformed};
use mailhook_store::Job;
use tokio::time::Instant;

use crate::client::{AttemptKind, AttemptResult, HttpClient};

/// What the transform chain made of an event.
pub(crate) enum Prepared {
    /// Push this body.
    Body(Bytes),
    /// A plugin dropped the event: record it as skipped with this reason.
    Dropped(String),
    /// A `fail_closed` plugin failed: the event is not pushed; this is the error.
    Failed(String),
}

fn input(job: &Job, payload: String) -> CallInput {
    CallInput {
        account: job.account.clone(),
        event_type: job.event_type.as_str().to_owned(),
        event_id: job.event_id.clone(),
        msg_id: job.msg_id.clone(),
        payload,
    }
}

/// The payload as a plugin's text. It is what intake rendered, JSON, so valid UTF-8: checked
/// with `str::from_utf8`, which reads it a word at a time. `from_utf8_lossy` reads it a byte
/// at a time and showed in perf on every event with a transform.
fn text(body: &[u8]) -> String {
    match std::str::from_utf8(body) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    }
}

/// Runs the account's transforms, in order, over the stored payload.
pub(crate) async fn transform(host: Option<&PluginHost>, job: &Job) -> Prepared {
    let Some(host) = host else {
        return Prepared::Body(Bytes::from_owner(job.body.clone()));
    };
    let chain = host.chain(&job.account);
    if chain.is_empty() {
        return Prepared::Body(Bytes::from_owner(job.body.clone()));
    }
    let mut payload = text(&job.body);
    for name in chain {
        // A `fail_open` plugin that fails leaves the payload as it was, so only then is a
        // copy kept; a `fail_closed` one ends the chain either way.
        let fail_open = host.policy(name) == Policy::FailOpen;
        let given = if fail_open {
            payload.clone()
        } else {
            std::mem::take(&mut payload)
        };
        match host.transform(name, input(job, given)).await {
            Ok(Transformed::Payload(next)) => payload = next,
            Ok(Transformed::Drop(reason)) => {
                let mut message = format!("dropped by plugin {name}");
                if !reason.is_empty() {
                    message.push_str(": ");
                    message.push_str(&reason);
                }
                return Prepared::Dropped(message);
            }
            Err(err) if fail_open => {
                tracing::warn!(
                    account = %job.account, event_id = %job.event_id, plugin = %name,
                    outcome = err.outcome.label(), error = %err.message,
                    "transform failed; fail_open: the event goes on without it"
                );
            }
            Err(err) => {
                tracing::warn!(
                    account = %job.account, event_id = %job.event_id, plugin = %name,
                    outcome = err.outcome.label(), error = %err.message,
                    "transform failed; fail_closed: the event is not pushed (replayable)"
                );
                return Prepared::Failed(format!(
                    "plugin {name} failed ({}): {}",
                    err.outcome.label(),
                    err.message
                ));
            }
        }
    }
    Prepared::Body(Bytes::from(payload))
}

/// One attempt on the address `plugin:<name>`: the sink decides the requests, this crate's
/// client makes them, in order. It succeeds when the plugin returned without error and
/// every request answered 2xx; the first failure ends it, with that request's error.
pub(crate) async fn sink_attempt(
    host: Option<&PluginHost>,
    client: &HttpClient,
    name: &str,
    job: &Job,
    body: &Bytes,
) -> AttemptResult {
    let started = Instant::now();
    let Some(host) = host else {
        return plugin_failed(
            format!("address plugin:{name} needs the plugin host, which is not running"),
            started,
        );
    };
    let payload = text(body);
    let requests = match host.sink(name, input(job, payload)).await {
        Ok(requests) => requests,
        Err(err) => {
            return plugin_failed(
                format!(
                    "plugin {name} failed ({}): {}",
                    err.outcome.label(),
                    err.message
                ),
                started,
            );
        }
    };
    let mut last = AttemptResult {
        outcome: Outcome::Delivered,
        kind: AttemptKind::Status(204),
        status: None,
        error: None,
        duration: Duration::ZERO,
    };
    for request in requests {
        last = client
            .plugin_request(
                &request.method,
                &request.url,
                &request.headers,
                Bytes::from(request.body),
            )
            .await;
        if let Some(error) = &last.error {
            last.error = Some(format!(
                "plugin {name}: request to its target failed: {error}"
            ));
            break;
        }
    }
    last.duration = started.elapsed();
    last
}

fn plugin_failed(error: String, started: Instant) -> AttemptResult {
    AttemptResult {
        outcome: Outcome::FAILED,
        kind: AttemptKind::Plugin,
        status: None,
        error: Some(error),
        duration: started.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::text;

    #[test]
    fn text_keeps_utf8_as_it_is_and_replaces_what_is_not() {
        assert_eq!(
            text("{\"to\":\"zoë@example.org\"}".as_bytes()),
            "{\"to\":\"zoë@example.org\"}"
        );
        assert_eq!(text(b"{\"to\":\"\xff\"}"), "{\"to\":\"\u{fffd}\"}");
    }
}
