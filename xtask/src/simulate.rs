//! `cargo xtask simulate`: the console's "Simulate Send Test" from a terminal.
//!
//! Without arguments it is a self-contained demo: it builds and starts the gateway on a
//! temporary data directory, starts a receiver on 127.0.0.1, saves the account's settings,
//! sends one test push of each event type, prints what the receiver got (headers and body),
//! checks the Standard Webhooks signature with its own HMAC code (not mailhook's), and exits
//! non-zero unless every push arrived, matched the endpoint's report and verified.
//!
//! With `--gateway URL --token T` it calls a running gateway's test endpoint instead, prints
//! the outcome and checks the signature of what the gateway reports it sent.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The six event types, in the contract's order.
pub const TYPES: [&str; 6] = ["send", "delivery", "open", "click", "bounce", "complaint"];

/// How long the gateway may take to answer `/healthz` after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// A test push answers within `delivery.test_timeout` (60 s at most); allow for the network.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(75);
/// Largest body the demo receiver reads.
const BODY_BYTES_MAX: usize = 1024 * 1024;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A running gateway to test, e.g. `http://127.0.0.1:8080`. Without it, a gateway is
    /// built and started here with a local receiver.
    #[arg(long, visible_alias = "url", value_name = "URL")]
    gateway: Option<String>,
    /// That gateway's admin token.
    #[arg(
        long,
        visible_alias = "admin-token",
        env = "MAILHOOK_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// The account whose webhook settings are tested.
    #[arg(long, default_value = "default")]
    account: String,
    /// The event type to push: send, delivery, open, click, bounce or complaint. Default:
    /// every type in the demo, `delivery` against `--gateway`.
    #[arg(long = "type", value_name = "TYPE")]
    event_type: Option<String>,
}

pub fn run(root: &Path, args: Args) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        let types: Vec<&str> = match &args.event_type {
            Some(t) => vec![t.as_str()],
            None if args.gateway.is_some() => vec!["delivery"],
            None => TYPES.to_vec(),
        };
        match &args.gateway {
            Some(url) => {
                let Some(token) = args.token.as_deref() else {
                    bail!("--gateway needs --token (or MAILHOOK_ADMIN_TOKEN): an admin token of that gateway");
                };
                remote(url.trim_end_matches('/'), token, &args.account, &types).await
            }
            None => {
                let bin = build_gateway(root)?;
                demo(&bin, &args.account, &types).await
            }
        }
    })
}

/// Builds the gateway binary and returns its path, as cargo reports it.
fn build_gateway(root: &Path) -> Result<PathBuf> {
    let mut build = crate::cargo(root);
    build.args([
        "build",
        "-p",
        "mailhook",
        "--bin",
        "mailhook",
        "--message-format=json-render-diagnostics",
    ]);
    eprintln!("$ {}", crate::show(&build));
    let output = build
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo build")?;
    if !output.status.success() {
        bail!("building the gateway failed: {}", output.status);
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "mailhook")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo built no `mailhook` executable")
}

/// The demo: a gateway and a receiver of our own, one test push per type.
pub async fn demo(bin: &Path, account: &str, types: &[&str]) -> Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let data_dir = dir.path().join("data");
    let listen = free_port()?;
    let mut config = toml::Table::new();
    config.insert("listen".into(), listen.to_string().into());
    config.insert(
        "data_dir".into(),
        data_dir.to_string_lossy().into_owned().into(),
    );
    // The receiver is on 127.0.0.1, which the SSRF guard refuses by default.
    config.insert(
        "security".into(),
        toml::Value::Table(toml::Table::from_iter([(
            "allow_private_addresses".to_owned(),
            true.into(),
        )])),
    );
    config.insert(
        "log".into(),
        toml::Value::Table(toml::Table::from_iter([(
            "level".to_owned(),
            "warn".into(),
        )])),
    );
    let config_path = dir.path().join("mailhook.toml");
    std::fs::write(&config_path, toml::to_string(&config)?)
        .with_context(|| format!("cannot write {}", config_path.display()))?;

    println!(
        "starting {} on {listen} (data in {})",
        bin.display(),
        data_dir.display()
    );
    let mut gateway = tokio::process::Command::new(bin)
        .arg("--config")
        .arg(&config_path)
        .arg("serve")
        .stdin(Stdio::null())
        // It prints the tokens it generates; the demo reads the admin one from its file.
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let http = HttpClient::new()?;
    let base = format!("http://{listen}");
    let started = tokio::time::Instant::now();
    while !http.healthy(&base).await {
        if let Some(status) = gateway.try_wait()? {
            bail!("the gateway exited during start: {status}");
        }
        if started.elapsed() > START_TIMEOUT {
            bail!("the gateway did not answer /healthz within {START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = std::fs::read_to_string(data_dir.join("admin_token"))
        .context("cannot read the generated admin token")?
        .trim()
        .to_owned();

    let receiver = DemoReceiver::start().await?;
    let outcome = run_demo(&http, &base, &token, account, types, &receiver).await;

    // SIGTERM: the gateway shuts down cleanly; the data dir goes with `dir`.
    if let Some(pid) = gateway.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(15), gateway.wait())
        .await
        .is_err()
    {
        let _ = gateway.kill().await;
    }
    outcome
}

async fn run_demo(
    http: &HttpClient,
    base: &str,
    token: &str,
    account: &str,
    types: &[&str],
    receiver: &DemoReceiver,
) -> Result<()> {
    // Subscribed to one type only, push on: test pushes of every type go out anyway.
    let settings = json!({"enabled": true, "addresses": [receiver.url()], "events": ["delivery"]});
    let path = format!("/v1/accounts/{account}/webhook");
    let (status, saved) = http
        .call(
            Method::PUT,
            &format!("{base}{path}"),
            token,
            Some(&settings),
        )
        .await?;
    if status != StatusCode::OK {
        bail!("saving the settings failed: {status} {saved}");
    }
    let secret = saved["secret"]
        .as_str()
        .context("the saved settings have no secret")?
        .to_owned();
    println!(
        "saved the webhook settings of account `{account}`: push on, primary {}, subscribed to delivery only",
        receiver.url()
    );

    let mut failed = Vec::new();
    for event_type in types {
        let before = receiver.count();
        let result = test_push(http, base, token, account, event_type).await?;
        print!("{}", describe(event_type, &result));
        let problem = if result["delivered"] != true {
            Some("not delivered".to_owned())
        } else {
            match receiver.wait_for(before + 1, Duration::from_secs(10)).await {
                None => Some("the receiver got nothing".to_owned()),
                Some(got) => {
                    print!("{}", describe_received(&got));
                    check_received(&result, &got, &secret)
                }
            }
        };
        match problem {
            None => println!("  signature: verified with the account's secret\n"),
            Some(problem) => {
                println!("  FAILED: {problem}\n");
                failed.push(*event_type);
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} test push(es) did not arrive verified: {}",
            failed.len(),
            types.len(),
            failed.join(", ")
        );
    }
    println!(
        "simulate: every test push ({}) arrived at the receiver, as reported, with a valid signature",
        types.join(", ")
    );
    Ok(())
}

/// A running gateway: one test push per type, checked against what the gateway reports.
async fn remote(base: &str, token: &str, account: &str, types: &[&str]) -> Result<()> {
    let http = HttpClient::new()?;
    let (status, settings) = http
        .call(
            Method::GET,
            &format!("{base}/v1/accounts/{account}/webhook"),
            token,
            None,
        )
        .await?;
    if status != StatusCode::OK {
        bail!("reading the settings of `{account}` failed: {status} {settings}");
    }
    let secret = settings["secret"].as_str().map(str::to_owned);
    let mut failed = Vec::new();
    for event_type in types {
        let result = test_push(&http, base, token, account, event_type).await?;
        print!("{}", describe(event_type, &result));
        let verified = match (&secret, result["headers"].as_object()) {
            (Some(secret), Some(headers)) => {
                let header = |name: &str| headers.get(name).and_then(Value::as_str).unwrap_or("");
                let body = serde_json::to_vec(&result["payload"])?;
                verify(
                    secret,
                    header("webhook-id"),
                    header("webhook-timestamp"),
                    &body,
                    header("webhook-signature"),
                )
            }
            _ => false,
        };
        if result["delivered"] == true && verified {
            println!("  signature: verified with the account's secret\n");
        } else {
            println!(
                "  FAILED: {}\n",
                if result["delivered"] != true {
                    "not delivered"
                } else {
                    "the reported signature does not verify (or no headers were reported)"
                }
            );
            failed.push(*event_type);
        }
    }
    if !failed.is_empty() {
        bail!("test push(es) failed: {}", failed.join(", "));
    }
    Ok(())
}

async fn test_push(
    http: &HttpClient,
    base: &str,
    token: &str,
    account: &str,
    event_type: &str,
) -> Result<Value> {
    let url = format!("{base}/v1/accounts/{account}/webhook/test");
    let (status, result) = http
        .call(
            Method::POST,
            &url,
            token,
            Some(&json!({"type": event_type})),
        )
        .await?;
    if status != StatusCode::OK {
        bail!("POST {url} answered {status}: {result}");
    }
    Ok(result)
}

/// The endpoint's answer, for a person.
fn describe(event_type: &str, result: &Value) -> String {
    let attempts = result["attempts"].as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    let verdict = if result["delivered"] == true {
        format!(
            "delivered to {} ({})",
            result["address"].as_str().unwrap_or("?"),
            result["url"].as_str().unwrap_or("?")
        )
    } else if result["timed_out"] == true {
        "not delivered yet: the endpoint stopped waiting".to_owned()
    } else {
        format!(
            "not delivered ({}): {}",
            result["state"].as_str().unwrap_or("?"),
            result["error"].as_str().unwrap_or("no error given")
        )
    };
    let _ = writeln!(
        out,
        "== {event_type}: {verdict}, {} attempt(s); event {} (MsgId {})",
        attempts.len(),
        result["event_id"].as_str().unwrap_or("?"),
        result["msg_id"].as_str().unwrap_or("?"),
    );
    for a in &attempts {
        let status = a["status"]
            .as_u64()
            .map_or("-".to_owned(), |s| s.to_string());
        let _ = writeln!(
            out,
            "  attempt {:>2}  {:<9} {:>4}  {:>5} ms  {}{}",
            a["number"].as_u64().unwrap_or(0),
            a["address"].as_str().unwrap_or("?"),
            status,
            a["duration_ms"].as_u64().unwrap_or(0),
            a["url"].as_str().unwrap_or(""),
            a["error"]
                .as_str()
                .map(|e| format!("  ({e})"))
                .unwrap_or_default(),
        );
    }
    let payload = serde_json::to_string_pretty(&result["payload"]).unwrap_or_default();
    let _ = writeln!(out, "  payload:\n{}", indent(&payload, 4));
    out
}

fn describe_received(got: &Received) -> String {
    let mut out = format!("  the receiver got POST {}:\n", got.path);
    for (name, value) in &got.headers {
        let _ = writeln!(out, "    {name}: {value}");
    }
    let _ = writeln!(out, "    {}", String::from_utf8_lossy(&got.body));
    out
}

/// What is wrong with what the receiver got, if anything: it must be the payload and headers
/// the endpoint reported, signed with the account's secret.
fn check_received(result: &Value, got: &Received, secret: &str) -> Option<String> {
    let reported = serde_json::to_vec(&result["payload"]).unwrap_or_default();
    if got.body != reported {
        return Some("the body differs from the payload the endpoint reported".to_owned());
    }
    if result["payload"]["test"] != true {
        return Some("the payload is not marked \"test\": true".to_owned());
    }
    if let Some(headers) = result["headers"].as_object() {
        for (name, value) in headers {
            if got.header(name) != value.as_str() {
                return Some(format!("header {name} differs from the one reported"));
            }
        }
    } else {
        return Some("the endpoint reported no headers".to_owned());
    }
    if got.header("webhook-id") != result["event_id"].as_str() {
        return Some("webhook-id is not the event id".to_owned());
    }
    let verified = verify(
        secret,
        got.header("webhook-id").unwrap_or(""),
        got.header("webhook-timestamp").unwrap_or(""),
        &got.body,
        got.header("webhook-signature").unwrap_or(""),
    );
    (!verified).then(|| "the signature does not verify".to_owned())
}

/// Standard Webhooks: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with the
/// base64 part of the `whsec_` secret; any of the space-separated signatures may match.
pub fn verify(secret: &str, id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let Ok(key) = STANDARD.decode(secret.strip_prefix("whsec_").unwrap_or(secret)) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
        return false;
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    header
        .split(' ')
        .any(|signature| signature.strip_prefix("v1,") == Some(expected.as_str()))
}

fn indent(text: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    text.lines()
        .map(|line| format!("{pad}{line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn free_port() -> Result<SocketAddr> {
    let listener =
        std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot find a free port")?;
    Ok(listener.local_addr()?)
}

/// A small JSON client, HTTP or HTTPS (Mozilla roots and the system's).
struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HttpClient {
    fn new() -> Result<HttpClient> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in rustls_native_certs::load_native_certs().certs {
            // A system certificate rustls cannot use is skipped, as a browser would.
            let _ = roots.add(cert);
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(HttpClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    async fn healthy(&self, base: &str) -> bool {
        let Ok(request) = Request::get(format!("{base}/healthz")).body(Full::new(Bytes::new()))
        else {
            return false;
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), self.client.request(request)).await,
            Ok(Ok(response)) if response.status() == StatusCode::OK
        )
    }

    async fn call(
        &self,
        method: Method,
        url: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(url)
            .header("authorization", format!("Bearer {token}"));
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let request = request
            .body(Full::new(bytes))
            .with_context(|| format!("invalid URL `{url}`"))?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(request))
            .await
            .with_context(|| format!("{method} {url}: no answer within {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("{method} {url}"))?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        Ok((status, value))
    }
}

/// One request the demo receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A webhook receiver on 127.0.0.1 that records every request and answers `200 ok`.
struct DemoReceiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    count: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl DemoReceiver {
    async fn start() -> Result<DemoReceiver> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("cannot start the receiver")?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let (counter, count) = watch::channel(0);
        let counter = Arc::new(counter);
        let log = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let (log, counter) = (log.clone(), counter.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (log, counter) = (log.clone(), counter.clone());
                        async move { record(request, &log, &counter).await }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(DemoReceiver {
            addr,
            received,
            count,
            task,
        })
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn count(&self) -> usize {
        *self.count.borrow()
    }

    /// The `n`th request (1-based) once it arrived, or `None` after `timeout`.
    async fn wait_for(&self, n: usize, timeout: Duration) -> Option<Received> {
        let mut count = self.count.clone();
        tokio::time::timeout(timeout, count.wait_for(|c| *c >= n))
            .await
            .ok()?
            .ok()?;
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(n - 1)
            .cloned()
    }
}

impl Drop for DemoReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    request: Request<Incoming>,
    log: &Mutex<Vec<Received>>,
    counter: &watch::Sender<usize>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let path = request.uri().path().to_owned();
    let headers = request
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match Limited::new(request.into_body(), BODY_BYTES_MAX)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let total = {
        let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
        log.push(Received {
            path,
            headers,
            body,
        });
        log.len()
    };
    counter.send_replace(total);
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_accepts_the_right_signature_among_several_and_nothing_else() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(b"msg_1.1700000000.{\"a\":1}");
        let good = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        let body = br#"{"a":1}"#;
        let table = [
            (good.clone(), "msg_1", "1700000000", &body[..], true),
            (
                format!("v1,bm9wZQ== {good}"),
                "msg_1",
                "1700000000",
                body,
                true,
            ),
            (good.clone(), "msg_2", "1700000000", body, false),
            (good.clone(), "msg_1", "1700000001", body, false),
            (good.clone(), "msg_1", "1700000000", br#"{"a":2}"#, false),
            (
                good.replace("v1,", "v2,"),
                "msg_1",
                "1700000000",
                body,
                false,
            ),
        ];
        for (header, id, timestamp, body, expected) in table {
            assert_eq!(
                verify(secret, id, timestamp, body, &header),
                expected,
                "{header} {id} {timestamp}"
            );
        }
        assert!(!verify(
            "whsec_not base64!",
            "msg_1",
            "1700000000",
            body,
            &good
        ));
    }

    /// `cargo xtask simulate` with no arguments, against the binary built next to this test
    /// (`cargo xtask test` and `cargo build -p mailhook` build it): every type arrives, as
    /// reported, with a signature that verifies.
    #[test]
    fn the_demo_pushes_every_type_and_verifies_each_one() {
        let exe = std::env::current_exe().unwrap();
        // target/<profile>/deps/xtask-<hash> -> target/<profile>/mailhook
        let bin = exe
            .parent()
            .and_then(Path::parent)
            .unwrap()
            .join("mailhook");
        assert!(
            bin.is_file(),
            "{} is missing: build it with `cargo build -p mailhook` (cargo xtask test does)",
            bin.display()
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(demo(&bin, "default", &TYPES))
            .expect("the demo passes");
    }
}
