//! Just enough of the W3C WebDriver protocol to drive headless Chromium through chromedriver:
//! sessions, navigation, elements, typing, clicking, window size and screenshots.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    base: String,
    session: String,
    http: reqwest::Client,
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
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {"binary": chromium.display().to_string(), "args": args},
        }}});
        let mut browser = Browser {
            base,
            session: String::new(),
            http,
            driver: child,
            _profile: profile,
        };
        let v = browser.raw("POST", "/session", caps).await;
        browser.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_string();
        browser
    }

    async fn raw(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let resp = req.send().await.unwrap();
        let v: Value = resp.json().await.unwrap();
        if let Some(e) = v["value"]["error"].as_str() {
            panic!("WebDriver {method} {path}: {e}: {}", v["value"]["message"]);
        }
        v["value"].clone()
    }

    async fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        self.raw(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    pub async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url })).await;
    }

    pub async fn url(&self) -> String {
        self.cmd("GET", "/url", Value::Null)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn try_find(&self, css: &str) -> Option<String> {
        let v = self
            .cmd(
                "POST",
                "/elements",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v.as_array()
            .and_then(|a| a.first())
            .map(|e| e[ELEMENT].as_str().unwrap().to_string())
    }

    /// The first element matching `css`, waiting up to 10 s for it to appear.
    pub async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.try_find(css).await {
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

    pub async fn find_all(&self, css: &str) -> Vec<String> {
        let v = self
            .cmd(
                "POST",
                "/elements",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e[ELEMENT].as_str().unwrap().to_string())
            .collect()
    }

    pub async fn text_of(&self, element: &str) -> String {
        self.cmd("GET", &format!("/element/{element}/text"), Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn text(&self, css: &str) -> String {
        let e = self.find(css).await;
        self.text_of(&e).await
    }

    pub async fn property(&self, css: &str, name: &str) -> String {
        let e = self.find(css).await;
        let v = self
            .cmd("GET", &format!("/element/{e}/property/{name}"), Value::Null)
            .await;
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    }

    pub async fn displayed(&self, css: &str) -> bool {
        let e = self.find(css).await;
        self.cmd("GET", &format!("/element/{e}/displayed"), Value::Null)
            .await
            .as_bool()
            .unwrap_or(false)
    }

    /// Clear a field and type into it.
    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd("POST", &format!("/element/{e}/clear"), json!({}))
            .await;
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    pub async fn click_element(&self, element: &str) {
        self.cmd("POST", &format!("/element/{element}/click"), json!({}))
            .await;
    }

    pub async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.click_element(&e).await;
    }

    /// Choose the `<option>` of `select_css` whose text is `label`.
    pub async fn choose(&self, select_css: &str, label: &str) {
        for o in self.find_all(&format!("{select_css} option")).await {
            if self.text_of(&o).await.trim() == label {
                self.click_element(&o).await;
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
        self.cmd("POST", "/execute/sync", json!({"script": js, "args": []}))
            .await
    }

    pub async fn set_size(&self, width: u32, height: u32) {
        self.cmd(
            "POST",
            "/window/rect",
            json!({"width": width, "height": height}),
        )
        .await;
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
        let b64 = self.cmd("GET", "/screenshot", Value::Null).await;
        let png = decode_base64(b64.as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
        self.set_size(1280, 900).await;
    }

    pub async fn quit(mut self) {
        let _ = self.cmd("DELETE", "", Value::Null).await;
        self.session.clear();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A test that panicked still closes Chromium (through its driver) and the driver.
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

fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
