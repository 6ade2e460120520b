//! Fuzz target: secret parsing and signing. `Secret::parse` never panics; a parsed secret
//! exposes text that parses back to it; its signature is `v1,` and the base64 of an
//! HMAC-SHA256 recomputed here independently over `{id}.{timestamp}.{body}`; the header holds
//! one signature per secret.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use mailhook_core::signature::{Secret, signature_header};
use sha2::Sha256;

fuzz_target!(|data: &[u8]| {
    // Layout: secret text, id, body separated by the first two 0xFF bytes; the timestamp is
    // taken from the id's length and first bytes so every value of it is reachable.
    let mut parts = data.splitn(3, |b| *b == 0xFF);
    let secret_text = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let id = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let body = parts.next().unwrap_or_default();
    let timestamp = i64::from_le_bytes(std::array::from_fn(|i| {
        id.as_bytes().get(i).copied().unwrap_or(i as u8)
    }));

    let secret = match Secret::parse(&secret_text) {
        Ok(secret) => secret,
        // Still sign with a valid secret, so signing sees every id, timestamp and body.
        Err(_) => Secret::from_bytes([7; 32]),
    };
    assert_eq!(Secret::parse(&secret.expose()).as_ref(), Ok(&secret));
    let key = STANDARD
        .decode(&secret.expose()["whsec_".len()..])
        .expect("exposed secrets are base64");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    assert_eq!(secret.sign(&id, timestamp, body), expected);

    let other = Secret::from_bytes([9; 32]);
    let header = signature_header([&secret, &other], &id, timestamp, body);
    let signatures: Vec<&str> = header.split(' ').collect();
    assert_eq!(signatures.len(), 2);
    assert_eq!(signatures[0], expected);
});
