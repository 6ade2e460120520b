//! Standard Webhooks signing: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed
//! with the base64-decoded part of the account's `whsec_` secret.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Random bytes in a generated secret (Standard Webhooks allows 24 to 64).
pub const SECRET_BYTES: usize = 32;
const PREFIX: &str = "whsec_";

/// A signing secret. Its `Debug` form hides the key so it never lands in a log by accident.
#[derive(Clone)]
pub struct Secret {
    key: Vec<u8>,
    /// HMAC keyed once: each signature starts from a copy of it instead of hashing the
    /// padded key again (two of the ~ten SHA-256 blocks of a typical push).
    keyed: Hmac<Sha256>,
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.key == other.key
    }
}

impl Eq for Secret {}

impl Secret {
    /// Builds a secret from random bytes the caller drew from the OS's secure source.
    pub fn from_bytes(key: [u8; SECRET_BYTES]) -> Secret {
        Secret::keyed(key.to_vec())
    }

    fn keyed(key: Vec<u8>) -> Secret {
        let keyed = Hmac::<Sha256>::new_from_slice(&key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        Secret { key, keyed }
    }

    /// Parses `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Secret, String> {
        let encoded = text
            .strip_prefix(PREFIX)
            .ok_or("secret must start with `whsec_`")?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|err| format!("secret is not valid base64: {err}"))?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!(
                "secret must hold 24 to 64 bytes, it holds {}",
                key.len()
            ));
        }
        Ok(Secret::keyed(key))
    }

    /// The `whsec_...` text shown to the account owner.
    pub fn expose(&self) -> String {
        format!("{PREFIX}{}", STANDARD.encode(&self.key))
    }

    /// `v1,<base64 signature>` of one message.
    pub fn sign(&self, webhook_id: &str, timestamp_secs: i64, body: &[u8]) -> String {
        let mut mac = self.keyed.clone();
        mac.update(webhook_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp_secs.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(whsec_…)")
    }
}

/// The `webhook-signature` header value: one signature per secret in force, space-separated
/// (two while a rotated secret is in its grace period).
pub fn signature_header<'a>(
    secrets: impl IntoIterator<Item = &'a Secret>,
    webhook_id: &str,
    timestamp_secs: i64,
    body: &[u8],
) -> String {
    let mut header = String::new();
    for secret in secrets {
        if !header.is_empty() {
            header.push(' ');
        }
        header.push_str(&secret.sign(webhook_id, timestamp_secs, body));
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_with_the_standard_webhooks_library() {
        let secret = Secret::from_bytes([7; SECRET_BYTES]);
        let body = br#"{"event_id":"e1","type":"open"}"#;
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let header = signature_header([&secret], "e1", ts, body);
        let verifier = standardwebhooks::Webhook::new(&secret.expose()).unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("webhook-id", "e1".parse().unwrap());
        headers.insert("webhook-timestamp", ts.to_string().parse().unwrap());
        headers.insert("webhook-signature", header.parse().unwrap());
        verifier.verify(body, &headers).unwrap();
        headers.insert("webhook-signature", "v1,AAAA".parse().unwrap());
        assert!(verifier.verify(body, &headers).is_err());
    }

    #[test]
    fn parses_what_it_exposes_and_hides_it_in_debug() {
        let secret = Secret::from_bytes([1; SECRET_BYTES]);
        assert_eq!(Secret::parse(&secret.expose()).unwrap(), secret);
        assert!(!format!("{secret:?}").contains(&secret.expose()[6..]));
        assert!(Secret::parse("nope").is_err());
        assert!(Secret::parse("whsec_AAAA").is_err());
    }

    #[test]
    fn several_secrets_give_several_signatures() {
        let a = Secret::from_bytes([1; SECRET_BYTES]);
        let b = Secret::from_bytes([2; SECRET_BYTES]);
        let header = signature_header([&a, &b], "id", 1, b"{}");
        let parts: Vec<_> = header.split(' ').collect();
        assert_eq!(parts, vec![a.sign("id", 1, b"{}"), b.sign("id", 1, b"{}")]);
    }
}
