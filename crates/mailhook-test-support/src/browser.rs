//! A real browser for the console's tests: Debian's headless Chromium driven over WebDriver
//! by its `chromedriver` (started here on a free port) and the fantoccini client.
//!
//! `cargo xtask test` installs `chromium` and `chromium-driver` when they are missing; other
//! paths can be given with `MAILHOOK_CHROMIUM` and `MAILHOOK_CHROMEDRIVER`. Screenshots go to
//! `<target dir>/console-screenshots/` (or `MAILHOOK_SCREENSHOTS`), kept as test artifacts.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::process::{Child, Command};

/// How long an element or a text may take to show up before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Width of the browser window; the height grows to the page for each screenshot.
const WINDOW_WIDTH: u32 = 1280;

/// A headless Chromium session with its own chromedriver and a throwaway profile.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: TempDir,
}

fn program(env: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.is_file(),
        "{} is missing: install Debian's chromium and chromium-driver \
         (`apt-get install -y chromium chromium-driver`; `cargo xtask test` does it) or set {env}",
        path.display()
    );
    path
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless Chromium session through it.
    pub async fn start() -> Browser {
        let chromium = program("MAILHOOK_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = program("MAILHOOK_CHROMEDRIVER", "/usr/bin/chromedriver");
        let port = crate::gateway::free_port().port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", chromedriver.display()));
        let profile = tempfile::tempdir().expect("temp dir for the browser profile");
        // Root in a container: no sandbox; no GPU; and nothing that reaches the network
        // on its own (updates, sync, QUIC probes), so the browser talks only to 127.0.0.1.
        let args = json!([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            format!("--window-size={WINDOW_WIDTH},900"),
            format!("--user-data-dir={}", profile.path().display()),
        ]);
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({"binary": chromium, "args": args}),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let client = loop {
            let attempt = ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await;
            match attempt {
                Ok(client) => break client,
                // chromedriver takes a moment to listen.
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!("no WebDriver session from chromedriver on {url}: {err}"),
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|err| panic!("cannot open {url}: {err}"));
    }

    /// Waits for the element and returns it.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("no element `{css}` within {WAIT:?}: {err}"))
    }

    /// Clicks the element once it is there.
    pub async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|err| panic!("cannot click `{css}`: {err}"));
    }

    /// Replaces the text of an input.
    pub async fn fill(&self, css: &str, text: &str) {
        let input = self.find(css).await;
        input.clear().await.expect("clear input");
        if !text.is_empty() {
            input.send_keys(text).await.expect("type into input");
        }
    }

    /// The value of an input, as the page holds it now.
    pub async fn value(&self, css: &str) -> String {
        self.find(css)
            .await
            .prop("value")
            .await
            .expect("read value")
            .unwrap_or_default()
    }

    pub async fn is_checked(&self, css: &str) -> bool {
        self.find(css)
            .await
            .is_selected()
            .await
            .expect("read checked")
    }

    /// Whether the element is there and shown.
    pub async fn is_shown(&self, css: &str) -> bool {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => element.is_displayed().await.unwrap_or(false),
            Err(_) => false,
        }
    }

    /// The visible text of the element.
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.expect("read text")
    }

    /// Waits until the element's visible text satisfies `check`; returns that text.
    pub async fn wait_text(&self, css: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = match self.client.find(Locator::Css(css)).await {
                Ok(element) => element.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if check(&text) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "`{css}` did not show the expected text within {WAIT:?}; it shows {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a script in the page and returns its value.
    pub async fn script(&self, source: &str) -> Value {
        self.client
            .execute(source, Vec::new())
            .await
            .unwrap_or_else(|err| panic!("script failed: {err}"))
    }

    /// A PNG of the whole page (the window grown to its height) saved as `name.png` in the
    /// screenshots folder; returns the path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        // The window's outer height is not quite the viewport's: grow it until the whole
        // page fits, from the top.
        let mut height = 900;
        for _ in 0..3 {
            let sizes = self
                .script(
                    "window.scrollTo(0, 0); \
                     return [document.documentElement.scrollHeight, window.innerHeight];",
                )
                .await;
            let page = sizes[0].as_u64().unwrap_or(900) as u32;
            let viewport = sizes[1].as_u64().unwrap_or(900) as u32;
            if viewport >= page {
                break;
            }
            height = (height + page - viewport).clamp(600, 6000);
            self.client
                .set_window_size(WINDOW_WIDTH, height)
                .await
                .expect("resize window");
        }
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir).expect("create screenshots folder");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        self.client
            .set_window_size(WINDOW_WIDTH, 900)
            .await
            .expect("resize window");
        path
    }

    /// Ends the session and chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
    }
}

/// `MAILHOOK_SCREENSHOTS`, else `console-screenshots` in the target dir this test binary was
/// built into (`<target>/debug/deps/it-...`), so CI finds them next to the build.
pub fn screenshots_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MAILHOOK_SCREENSHOTS") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current exe");
    let target = exe
        .ancestors()
        .nth(3)
        .map_or_else(|| Path::new("target").to_path_buf(), Path::to_path_buf);
    target.join("console-screenshots")
}
