//! The raw receiver's connections: HTTP/1.1 read and written by hand, so a reply can
//! misbehave where hyper would not let it (a body that never ends or trickles, a TCP reset
//! mid-body, a status line with a wrong HTTP version).
//!
//! It understands what the gateway sends: a request head, then a body of `content-length`
//! bytes, with keep-alive. Anything else ends the connection.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use hyper::{StatusCode, Version};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{BODY_BYTES_MAX, Recorded, Reply, Shared};

/// Longest request head read (request line and headers).
const HEAD_BYTES_MAX: usize = 64 * 1024;

/// One chunk of an endless body.
const ENDLESS_CHUNK_BYTES: usize = 16 * 1024;

/// What `content-length` a reset-mid-body response announces, and how much it sends first.
const RESET_ANNOUNCED_BYTES: usize = 64 * 1024;
const RESET_SENT_BYTES: usize = 100;

/// Serves one connection until the client closes it, a reply ends it, or the receiver stops.
pub(super) async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    let mut stream = BufReader::new(stream);
    loop {
        let Some(request) = read_request(&mut stream).await else {
            return;
        };
        let reply = shared.record(request);
        if !carry_out(&shared, &mut stream, reply).await {
            return;
        }
    }
}

/// Reads one request; `None` when the connection ends or the request is not one this
/// receiver understands.
async fn read_request(stream: &mut BufReader<TcpStream>) -> Option<Recorded> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let read = (&mut *stream)
            .take((HEAD_BYTES_MAX - before) as u64)
            .read_until(b'\n', &mut head)
            .await
            .ok()?;
        if read == 0 {
            return None;
        }
        if head.ends_with(b"\r\n\r\n") || head == b"\r\n" {
            break;
        }
        if head.len() >= HEAD_BYTES_MAX {
            return None;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?;
    let version = match request_line.next()? {
        "HTTP/1.0" => Version::HTTP_10,
        "HTTP/1.1" => Version::HTTP_11,
        _ => return None,
    };
    let path = target.split('?').next().unwrap_or(target).to_owned();
    let mut headers = Vec::new();
    let mut length = 0usize;
    for line in lines.filter(|line| !line.is_empty()) {
        let (name, value) = line.split_once(':')?;
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim().to_owned();
        if name == "content-length" {
            length = value.parse().ok()?;
        }
        if name == "transfer-encoding" {
            // Chunked requests are not understood here.
            return None;
        }
        headers.push((name, value));
    }
    if length > BODY_BYTES_MAX {
        return None;
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(Recorded {
        method,
        path,
        headers,
        body: Bytes::from(body),
        at: Instant::now(),
        replied: 0,
        version,
        client_cert: None,
    })
}

/// Writes `reply`; whether the connection may serve another request.
async fn carry_out(shared: &Shared, stream: &mut BufReader<TcpStream>, mut reply: Reply) -> bool {
    loop {
        let written = match reply {
            Reply::Delay(delay, then) => {
                tokio::time::sleep(delay).await;
                reply = *then;
                continue;
            }
            Reply::Status(code) => respond(shared, stream, code, &[]).await,
            Reply::StatusWithHeaders(code, headers) => {
                respond(shared, stream, code, &headers).await
            }
            Reply::Drop => return false,
            Reply::Hang => return std::future::pending().await,
            Reply::Reset => {
                reset(stream);
                return false;
            }
            Reply::WrongVersion(version) => {
                let head = format!("{version} 200 OK\r\ncontent-length: 2\r\n\r\nok");
                send(shared, stream, head.as_bytes()).await
            }
            Reply::Endless(code) => {
                let head = head(code, &[("transfer-encoding", "chunked")]);
                if send(shared, stream, head.as_bytes()).await.is_err() {
                    return false;
                }
                let chunk = chunk(&vec![b'x'; ENDLESS_CHUNK_BYTES]);
                // Until the client stops reading and closes: then the write fails.
                while send(shared, stream, &chunk).await.is_ok() {}
                return false;
            }
            Reply::Trickle(code, every) => {
                let head = head(code, &[("transfer-encoding", "chunked")]);
                if send(shared, stream, head.as_bytes()).await.is_err() {
                    return false;
                }
                let byte = chunk(b"x");
                loop {
                    tokio::time::sleep(every.max(Duration::from_millis(1))).await;
                    if send(shared, stream, &byte).await.is_err() {
                        return false;
                    }
                }
            }
            Reply::HugeBody(code, bytes) => {
                let length = bytes.to_string();
                let head = head(code, &[("content-length", &length)]);
                if send(shared, stream, head.as_bytes()).await.is_err() {
                    return false;
                }
                let block = vec![b'x'; ENDLESS_CHUNK_BYTES];
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(block.len());
                    if send(shared, stream, &block[..n]).await.is_err() {
                        return false;
                    }
                    left -= n;
                }
                Ok(())
            }
            Reply::ResetMidBody(code) => {
                let length = RESET_ANNOUNCED_BYTES.to_string();
                let head = head(code, &[("content-length", &length)]);
                let _ = send(shared, stream, head.as_bytes()).await;
                let _ = send(shared, stream, &[b'x'; RESET_SENT_BYTES]).await;
                // Let the bytes leave before the reset discards what is still queued.
                tokio::time::sleep(Duration::from_millis(50)).await;
                reset(stream);
                return false;
            }
        };
        return written.is_ok();
    }
}

/// A status line and headers, as the hyper receiver's `response` would send them (without
/// the body headers, which the caller adds).
fn head(code: u16, headers: &[(&str, &str)]) -> String {
    let reason = StatusCode::from_u16(code)
        .ok()
        .and_then(|status| status.canonical_reason())
        .unwrap_or("Status");
    let mut text = format!("HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text
}

/// `code` with the hyper receiver's body (`ok` or `status <code>`) and `extra` headers.
async fn respond(
    shared: &Shared,
    stream: &mut BufReader<TcpStream>,
    code: u16,
    extra: &[(String, String)],
) -> std::io::Result<()> {
    let body = if (200..300).contains(&code) {
        "ok".to_owned()
    } else {
        format!("status {code}")
    };
    let length = body.len().to_string();
    let mut headers: Vec<(&str, &str)> = extra
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    headers.push(("content-length", &length));
    let mut bytes = head(code, &headers).into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    send(shared, stream, &bytes).await
}

/// One chunk of a chunked body.
fn chunk(data: &[u8]) -> Vec<u8> {
    let mut bytes = format!("{:x}\r\n", data.len()).into_bytes();
    bytes.extend_from_slice(data);
    bytes.extend_from_slice(b"\r\n");
    bytes
}

async fn send(
    shared: &Shared,
    stream: &mut BufReader<TcpStream>,
    bytes: &[u8],
) -> std::io::Result<()> {
    let socket = stream.get_mut();
    socket.write_all(bytes).await?;
    socket.flush().await?;
    shared
        .bytes_sent
        .fetch_add(bytes.len() as u64, Ordering::SeqCst);
    Ok(())
}

/// Closes with a TCP RST rather than a FIN: the client sees "connection reset".
fn reset(stream: &BufReader<TcpStream>) {
    // With a zero linger, closing sends RST and drops what is queued; the caller drops the
    // stream right after.
    let _ = stream.get_ref().set_zero_linger();
}
