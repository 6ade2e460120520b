//! The subscription filter: does this event get pushed for this account, and if not, why.

use crate::event::EventType;
use crate::settings::WebhookSettings;

/// Why an event was recorded as `skipped` instead of pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    NotConfigured,
    Disabled,
    NotSubscribed(EventType),
    NoAddresses,
}

impl SkipReason {
    pub fn message(self) -> String {
        match self {
            SkipReason::NotConfigured => "webhook not configured for this account".to_owned(),
            SkipReason::Disabled => "push is disabled for this account".to_owned(),
            SkipReason::NotSubscribed(t) => format!("event type `{t}` is not subscribed"),
            SkipReason::NoAddresses => "no webhook address configured".to_owned(),
        }
    }
}

/// Decides whether an event is pushed. Test pushes ("Simulate Send Test") bypass the switch
/// and the subscription but still need an address.
pub fn decide(
    settings: Option<&WebhookSettings>,
    event_type: EventType,
    test: bool,
) -> Result<(), SkipReason> {
    let settings = settings.ok_or(SkipReason::NotConfigured)?;
    if !test {
        if !settings.enabled {
            return Err(SkipReason::Disabled);
        }
        if !settings.events.contains(&event_type) {
            return Err(SkipReason::NotSubscribed(event_type));
        }
    }
    if settings.addresses.is_empty() {
        return Err(SkipReason::NoAddresses);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::WebhookUrl;

    #[test]
    fn table() {
        let on = WebhookSettings {
            enabled: true,
            addresses: vec![WebhookUrl::parse("https://a.example/").unwrap()],
            events: vec![EventType::Delivery],
        };
        let off = WebhookSettings {
            enabled: false,
            ..on.clone()
        };
        let empty = WebhookSettings {
            addresses: vec![],
            ..off.clone()
        };
        let cases = [
            (
                None,
                EventType::Delivery,
                false,
                Err(SkipReason::NotConfigured),
            ),
            (Some(&on), EventType::Delivery, false, Ok(())),
            (
                Some(&on),
                EventType::Open,
                false,
                Err(SkipReason::NotSubscribed(EventType::Open)),
            ),
            (
                Some(&off),
                EventType::Delivery,
                false,
                Err(SkipReason::Disabled),
            ),
            (Some(&off), EventType::Open, true, Ok(())),
            (
                Some(&empty),
                EventType::Open,
                true,
                Err(SkipReason::NoAddresses),
            ),
        ];
        for (settings, t, test, expected) in cases {
            assert_eq!(
                decide(settings, t, test),
                expected,
                "{settings:?} {t} test={test}"
            );
        }
    }
}
