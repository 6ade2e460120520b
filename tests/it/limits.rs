//! Limits: each request that crosses one gets its documented answer, and a slow client is cut
//! off while others are served.

use std::time::Duration;

use http::Method;
use mailhook_test_support::TestGateway;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn events(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"type": "open", "msg_id": format!("m{i}")}))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn each_intake_limit_answers_as_documented() {
    let gw = TestGateway::start(|c| {
        c.limits.batch_events_max = 20;
        c.limits.string_bytes_max = 256;
        c.limits.json_depth_max = 6;
        c.limits.intake_events_per_second = 10;
        c.limits.intake_burst_events = 30;
        c.limits.failures_limit_max = 50;
    })
    .await;

    let answer = gw.api.post_events(&events(21)).await;
    assert_eq!(answer.status, 400);
    assert!(
        answer.json()["error"]
            .as_str()
            .unwrap()
            .contains("limit is 20"),
        "{}",
        answer.json()
    );

    let long = json!({"type": "open", "msg_id": "m", "email": {"subject": "x".repeat(257)}});
    let answer = gw.api.post_events(&long).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["details"][0]["field"], "email.subject");

    let deep = json!({"type": "open", "msg_id": "m", "status": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}});
    let answer = gw.api.post_events(&deep).await;
    assert_eq!(answer.status, 400);
    assert!(
        answer.json()["error"]
            .as_str()
            .unwrap()
            .contains("json_depth_max")
    );

    // Rate: a burst of 30, then 10/s. 20 + 10 pass, the next batch is refused whole.
    assert_eq!(gw.api.post_events(&events(20)).await.status, 202);
    assert_eq!(gw.api.post_events(&events(10)).await.status, 202);
    let answer = gw.api.post_events(&json!([{"type": "open", "msg_id": "over"}, {"type": "open", "msg_id": "over", "account": "other"}])).await;
    assert_eq!(answer.status, 429);
    let retry_after: u64 = answer.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "retry-after {retry_after}");
    assert!(
        answer.json()["error"]
            .as_str()
            .unwrap()
            .contains("intake_events_per_second")
    );
    assert_eq!(
        gw.api.message("other", "over").await.status,
        404,
        "nothing of a refused batch is stored"
    );
    // Other accounts have their own bucket.
    assert_eq!(
        gw.api
            .post_events(&json!({"type": "open", "msg_id": "m", "account": "other"}))
            .await
            .status,
        202
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        gw.api.post_events(&events(5)).await.status,
        202,
        "refilled after Retry-After"
    );

    let answer = gw
        .api
        .admin(Method::GET, "/v1/accounts/default/failures?limit=51", None)
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["details"][0]["field"], "limit");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_trickles_in_gets_408_and_others_are_served_meanwhile() {
    let gw =
        TestGateway::start(|c| c.limits.request_read_timeout = Duration::from_millis(500)).await;
    let addr = gw.gateway().local_addr();
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n[",
        gw.api.intake_token
    );
    slow.write_all(head.as_bytes()).await.unwrap();

    // Meanwhile another client is served at once.
    let started = tokio::time::Instant::now();
    assert_eq!(gw.api.post_events(&events(1)).await.status, 202);
    assert!(started.elapsed() < Duration::from_millis(400));

    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(read.is_ok(), "the slow connection was answered and closed");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_read_timeout"), "{text}");
}

/// Deterministic pseudo-random numbers (xorshift), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mangled_bodies_and_paths_never_get_a_5xx() {
    let gw = TestGateway::start(|c| c.limits.intake_burst_events = 1_000_000).await;
    let valid = json!([
        {"type": "click", "msg_id": "<a@b>", "account": "acme", "event_id": "e-1", "timestamp": 1_795_780_800_000_i64,
         "email": {"subject": "Hi", "to": ["a@b.c"], "tags": ["x"], "metadata": {"k": [1, {"z": null}]}},
         "status": {"url": "https://x.example/?q=1", "ip": "203.0.113.9", "user_agent": "Mozilla/5.0"}}
    ])
    .to_string()
    .into_bytes();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let specials = [
        b'"', b'{', b'}', b'[', b']', b',', b':', b'\\', 0u8, 0xff, b'9', b'-', b'e',
    ];
    for round in 0..300 {
        let mut body = valid.clone();
        match round % 4 {
            0 => body.truncate(rng.below(body.len())),
            1 => {
                for _ in 0..=rng.below(4) {
                    let i = rng.below(body.len());
                    body[i] = specials[rng.below(specials.len())];
                }
            }
            2 => {
                let i = rng.below(body.len());
                body.insert(i, specials[rng.below(specials.len())]);
            }
            _ => body = (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
        }
        let answer = gw.api.post_events_raw(body.clone()).await;
        assert!(
            answer.status.is_success() || answer.status.is_client_error(),
            "round {round}: {} for {:?}: {}",
            answer.status,
            String::from_utf8_lossy(&body),
            String::from_utf8_lossy(&answer.body)
        );
    }
    for path in [
        "/v1/messages/%FF%FE",
        "/v1/accounts/%00/webhook",
        "/v1/accounts/a/failures?limit=-1",
        "/v1/../../etc/passwd",
        "/v1/accounts//webhook",
    ] {
        let answer = gw.api.admin(Method::GET, path, None).await;
        assert!(answer.status.is_client_error(), "{path}: {}", answer.status);
    }
    let answer = gw
        .api
        .admin(
            Method::PUT,
            "/v1/accounts/a/webhook",
            Some(&json!({"enabled": [], "addresses": {}, "events": 1})),
        )
        .await;
    assert_eq!(answer.status, 422);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_request_head_gets_431() {
    let gw = TestGateway::start(|c| c.limits.header_bytes_max = 8192).await;
    let mut stream = TcpStream::connect(gw.gateway().local_addr()).await.unwrap();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n",
        "p".repeat(10_000)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_loris_head_is_cut_off_while_others_are_served() {
    let gw =
        TestGateway::start(|c| c.limits.request_read_timeout = Duration::from_millis(500)).await;
    let addr = gw.gateway().local_addr();
    let mut loris = TcpStream::connect(addr).await.unwrap();
    loris
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    // Trickle a header byte every 100 ms: each byte arrives in time, the head never ends.
    let trickle = async {
        for _ in 0..30 {
            if loris.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let others = async {
        for _ in 0..5 {
            assert_eq!(
                gw.api
                    .send(Method::GET, "/healthz", None, None, "")
                    .await
                    .status,
                200
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::join!(trickle, others);
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), loris.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the slow client's connection was closed");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "cut off by the timeout, not by the trickle ending"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn past_connections_max_new_clients_wait_until_a_slot_frees() {
    let gw = TestGateway::start(|c| c.limits.connections_max = 2).await;
    let addr = gw.gateway().local_addr();
    let idle_a = TcpStream::connect(addr).await.unwrap();
    let _idle_b = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut third = TcpStream::connect(addr).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let waited =
        tokio::time::timeout(Duration::from_millis(300), third.read_to_end(&mut answer)).await;
    assert!(
        waited.is_err(),
        "the third connection is not served while two are open"
    );

    drop(idle_a);
    tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut answer))
        .await
        .expect("served once a slot frees")
        .unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
}
