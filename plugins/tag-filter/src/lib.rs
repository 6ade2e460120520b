//! mailhook transform: drops events whose `email.tags` do not match its config, so a
//! receiver only gets the mail streams it cares about. Events it keeps pass unchanged.

use mailhook_plugin_sdk::{Event, Outcome, Value};
use serde::Deserialize;

/// The plugin's config; every rule is optional, and an empty config keeps everything.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Keep only events with at least one of these tags.
    any: Vec<String>,
    /// Keep only events with every one of these tags.
    all: Vec<String>,
    /// Drop events with any of these tags.
    none: Vec<String>,
}

fn transform(event: Event) -> Result<Outcome, String> {
    let config: Config = mailhook_plugin_sdk::config()?;
    let tags: Vec<&str> = match event.payload.pointer("/email/tags") {
        Some(Value::Array(tags)) => tags.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    match verdict(&config, &tags) {
        None => Ok(Outcome::Payload(event.payload)),
        Some(reason) => Ok(Outcome::Drop(reason)),
    }
}

mailhook_plugin_sdk::export_transform!(transform);

/// `None` to keep the event, or why it is dropped.
fn verdict(config: &Config, tags: &[&str]) -> Option<String> {
    let has = |tag: &String| tags.contains(&tag.as_str());
    if !config.any.is_empty() && !config.any.iter().any(has) {
        return Some(format!("tags {tags:?} have none of {:?}", config.any));
    }
    if let Some(missing) = config.all.iter().find(|tag| !has(tag)) {
        return Some(format!("tags {tags:?} lack `{missing}`"));
    }
    if let Some(found) = config.none.iter().find(|tag| has(tag)) {
        return Some(format!("tag `{found}` is excluded"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(any: &[&str], all: &[&str], none: &[&str]) -> Config {
        let own = |tags: &[&str]| tags.iter().map(|t| t.to_string()).collect();
        Config {
            any: own(any),
            all: own(all),
            none: own(none),
        }
    }

    #[test]
    fn keeps_or_drops_by_the_rules() {
        let cases: [(Config, &[&str], bool); 8] = [
            (config(&[], &[], &[]), &[], true),
            (config(&["welcome"], &[], &[]), &["welcome", "eu"], true),
            (config(&["welcome"], &[], &[]), &["promo"], false),
            (config(&["welcome"], &[], &[]), &[], false),
            (config(&[], &["eu", "vip"], &[]), &["eu", "vip", "x"], true),
            (config(&[], &["eu", "vip"], &[]), &["eu"], false),
            (config(&[], &[], &["internal"]), &["internal"], false),
            (config(&["a"], &[], &["b"]), &["a", "b"], false),
        ];
        for (config, tags, kept) in cases {
            assert_eq!(
                verdict(&config, tags).is_none(),
                kept,
                "{config:?} {tags:?}"
            );
        }
    }

    #[test]
    fn the_drop_reason_names_the_rule() {
        use mailhook_plugin_sdk::{json, testing};
        testing::set_config(json!({"any": ["welcome"]}));
        let out = transform(Event::from_payload(
            json!({"type": "open", "email": {"tags": ["promo"]}}),
        ))
        .unwrap();
        assert_eq!(
            out,
            Outcome::Drop(r#"tags ["promo"] have none of ["welcome"]"#.to_owned())
        );
    }
}
