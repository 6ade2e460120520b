//! Test plugin: reports whether this call found the plugin's memory as a fresh instance has
//! it, then dirties it. The host resets a plugin's memory after every call (only the pages a
//! call wrote, when the kernel can say which): a call that sees what an earlier one wrote
//! would be one account's event leaking into another's.
//!
//! It adds `"witness": {"calls": n, "static_clean": bool, "heap_clean": bool}`: `calls` counts
//! the calls this instance served (always 1 with a fresh instance), `static_clean` says a
//! 64 KiB static buffer was all zeros, `heap_clean` that a 1 MiB zeroed allocation was (the
//! allocator trusts fresh memory to be zero and skips the zeroing).

use std::sync::atomic::{AtomicU32, Ordering};

use mailhook_plugin_sdk::{Event, Outcome, json};

static CALLS: AtomicU32 = AtomicU32::new(0);
static mut BUFFER: [u8; 64 * 1024] = [0; 64 * 1024];

fn transform(mut event: Event) -> Result<Outcome, String> {
    let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
    // SAFETY: a plugin instance runs one call at a time, on one thread.
    let buffer = unsafe { &mut *std::ptr::addr_of_mut!(BUFFER) };
    let static_clean = std::hint::black_box(&buffer[..]).iter().all(|b| *b == 0);
    buffer.fill(0xAB);
    let mut heap = vec![0u8; 1024 * 1024];
    let heap_clean = std::hint::black_box(&heap[..]).iter().all(|b| *b == 0);
    heap.fill(0xCD);
    std::hint::black_box(&heap);
    let object = event
        .payload
        .as_object_mut()
        .ok_or("the payload is not a JSON object")?;
    object.insert(
        "witness".to_owned(),
        json!({"calls": calls, "static_clean": static_clean, "heap_clean": heap_clean}),
    );
    Ok(Outcome::Payload(event.payload))
}

mailhook_plugin_sdk::export_transform!(transform);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_call_in_the_same_memory_is_seen() {
        let event = || Event::from_payload(json!({"type": "delivery"}));
        let witness = |outcome| match outcome {
            Ok(Outcome::Payload(payload)) => payload["witness"].clone(),
            other => panic!("unexpected {other:?}"),
        };
        // Here (a host test) the statics live on: the second call finds what the first
        // wrote, as a plugin would if the host reused its memory without a reset.
        assert_eq!(
            witness(transform(event())),
            json!({"calls": 1, "static_clean": true, "heap_clean": true})
        );
        let second = witness(transform(event()));
        assert_eq!(second["calls"], 2);
        assert_eq!(second["static_clean"], false);
    }
}
