//! Headless Chromium through chromedriver, driven with `fantoccini`: a fresh profile per
//! session, and the few steps the UI tests need (each waiting for its element, as a user
//! would see the page).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

pub struct Browser {
    base: String,
    /// Kept for `Drop`: a test that panicked cannot await `quit`.
    session: String,
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

/// Where chromedriver and Chromium are: `TOLLGATE_TEST_CHROMEDRIVER` /
/// `TOLLGATE_TEST_CHROMIUM`, else Debian's paths.
pub fn binaries() -> (PathBuf, PathBuf) {
    let var = |k: &str, d: &str| {
        std::env::var(k)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| d.to_string())
    };
    (
        PathBuf::from(var("TOLLGATE_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")),
        PathBuf::from(var("TOLLGATE_TEST_CHROMIUM", "/usr/bin/chromium")),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    /// Start chromedriver on a free port and a headless Chromium session with a fresh profile.
    pub async fn start(driver: &Path, chromium: &Path) -> Browser {
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = match http.get(format!("{base}/status")).send().await {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|v| v["value"]["ready"].as_bool()),
                Err(_) => None,
            };
            if ready == Some(true) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1280,900",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let caps = json!({
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {"binary": chromium.display().to_string(), "args": args},
        });
        let Value::Object(caps) = caps else {
            unreachable!("capabilities are an object")
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&base)
            .await
            .unwrap_or_else(|e| panic!("no WebDriver session: {e}"));
        let session = client
            .session_id()
            .await
            .ok()
            .flatten()
            .expect("a new session has an id");
        Browser {
            base,
            session,
            client,
            driver: child,
            _profile: profile,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("WebDriver goto {url}: {e}"));
    }

    pub async fn url(&self) -> String {
        self.client.current_url().await.unwrap().to_string()
    }

    async fn find_all(&self, css: &str) -> Vec<Element> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("WebDriver find {css}: {e}"))
    }

    /// The first element matching `css`, waiting up to 10 s for it to appear.
    async fn find(&self, css: &str) -> Element {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.find_all(css).await.into_iter().next() {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no element {css} at {}",
                self.url().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn text(&self, css: &str) -> String {
        text_of(&self.find(css).await).await
    }

    pub async fn property(&self, css: &str, name: &str) -> String {
        let e = self.find(css).await;
        e.prop(name)
            .await
            .unwrap_or_else(|err| panic!("WebDriver property {name} of {css}: {err}"))
            .unwrap_or_else(|| "null".to_string())
    }

    pub async fn displayed(&self, css: &str) -> bool {
        self.find(css).await.is_displayed().await.unwrap_or(false)
    }

    /// Clear a field and type into it.
    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        e.clear().await.unwrap();
        e.send_keys(text)
            .await
            .unwrap_or_else(|err| panic!("WebDriver typing into {css}: {err}"));
    }

    pub async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("WebDriver click {css}: {e}"));
    }

    /// Choose the `<option>` of `select_css` whose text is `label`.
    pub async fn choose(&self, select_css: &str, label: &str) {
        for o in self.find_all(&format!("{select_css} option")).await {
            if text_of(&o).await.trim() == label {
                o.click().await.unwrap();
                return;
            }
        }
        panic!("no option {label:?} in {select_css}");
    }

    /// Click a submit button and wait until the browser is on a page whose path starts with
    /// `expect_path`.
    pub async fn submit(&self, button_css: &str, expect_path: &str) {
        self.click(button_css).await;
        self.wait_for_path(expect_path).await;
    }

    pub async fn wait_for_path(&self, expect_path: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let url = self.url().await;
            let path = url
                .splitn(4, '/')
                .nth(3)
                .map(|p| format!("/{p}"))
                .unwrap_or_default();
            if path.starts_with(expect_path) && self.ready().await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "still at {url}, expected {expect_path}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn ready(&self) -> bool {
        self.script("return document.readyState").await == "complete"
    }

    pub async fn script(&self, js: &str) -> Value {
        self.client
            .execute(js, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("WebDriver script {js:?}: {e}"))
    }

    /// Resize the window (headless: the viewport) to `width`×`height`.
    pub async fn resize(&self, width: u32, height: u32) {
        self.set_size(width, height).await;
    }

    async fn set_size(&self, width: u32, height: u32) {
        self.client.set_window_size(width, height).await.unwrap();
    }

    /// A PNG of the whole page at `width` (the window grows to the page's height, then is
    /// put back).
    pub async fn screenshot(&self, path: &Path, width: u32) {
        self.set_size(width, 900).await;
        let h = self
            .script("return Math.ceil(document.documentElement.scrollHeight)")
            .await
            .as_u64()
            .unwrap_or(900)
            .clamp(600, 6000) as u32;
        self.set_size(width, h + 140).await;
        let png = self.client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
        self.set_size(1280, 900).await;
    }

    pub async fn quit(mut self) {
        let _ = self.client.clone().close().await;
        self.session.clear();
    }
}

async fn text_of(e: &Element) -> String {
    e.text().await.unwrap_or_default()
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A test that panicked still closes Chromium (through its driver) and the driver: the
        // runtime that would run fantoccini's own shutdown is going away with the test.
        if !self.session.is_empty() {
            let url = format!("{}/session/{}", self.base, self.session);
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let _ = reqwest::Client::new()
                        .delete(url)
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await;
                });
            })
            .join();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
