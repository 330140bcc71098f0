//! The first hour (issue 15 point 8), through the real binary: what `serve` and `demo` print,
//! the access log, plain logs when stderr is a file, and the demo cleaning up after itself.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate::fake_upstream::FakeUpstream;

use crate::helpers::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait until `file` contains `needle` (the process writes it as it starts).
async fn wait_for_text(file: &Path, needle: &str) -> String {
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "never printed {needle:?}; printed:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The word after `marker` in `text`.
fn word_after<'a>(text: &'a str, marker: &str) -> &'a str {
    let at = text
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} not in:\n{text}"));
    text[at + marker.len()..].split_whitespace().next().unwrap()
}

struct Spawned {
    child: std::process::Child,
    base: String,
    dir: tempfile::TempDir,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Spawned {
    fn start(args: &[&str], env: &[(&str, String)]) -> Spawned {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.args(args)
            .arg("--config")
            .arg(format!("{}/config.toml", env!("CARGO_MANIFEST_DIR")))
            .env("TOLLGATE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            // The demo's temporary data goes under this test's own directory.
            .env("TMPDIR", dir.path())
            .env(
                "TOLLGATE_RECORDER__JOURNAL_PATH",
                dir.path().join("journal"),
            )
            .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Spawned {
            child: cmd.spawn().unwrap(),
            base: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    fn stdout(&self) -> std::path::PathBuf {
        self.dir.path().join("stdout")
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap()
    }

    async fn sigterm(&mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let t0 = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(t0.elapsed() < Duration::from_secs(30), "did not exit");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn serve(db_url: &str, access: bool) -> Spawned {
    let env = [
        ("TOLLGATE_DATABASE__URL", db_url.to_string()),
        ("TOLLGATE_ADMIN__API_TOKEN", ADMIN_TOKEN.to_string()),
        (
            "TOLLGATE_ADMIN__INITIAL_PASSWORD",
            "initial-admin-pass".into(),
        ),
        ("TOLLGATE_LOG__ACCESS", access.to_string()),
    ];
    let s = Spawned::start(&["serve"], &env);
    wait_for_text(&s.stdout(), "Admin console:").await;
    s
}

/// A chat completion with `key`; its status, once the body is read.
async fn chat(http: &reqwest::Client, base: &str, key: &str, model: &str) -> u16 {
    let r = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    r.bytes().await.unwrap();
    status
}

/// `GET /api/admin{path}` with `token`, as JSON.
async fn admin_get(http: &reqwest::Client, base: &str, token: &str, path: &str) -> Value {
    http.get(format!("{base}/api/admin{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn serve_prints_its_admin_url_and_logs_one_plain_line_per_request() {
    let (url, _guard) = fresh_database(backend()).await;
    let fake = FakeUpstream::start().await.unwrap();
    let mut s = serve(&url, true).await;
    let printed = std::fs::read_to_string(s.stdout()).unwrap();
    assert!(
        printed.contains(&format!("Admin console: {}/admin", s.base)),
        "{printed}"
    );
    let key = seed_over_http(&s.base, &fake, "sk-acct", json!({"name": "k"})).await;
    let http = reqwest::Client::new();
    assert_eq!(chat(&http, &s.base, &key, "gpt-test").await, 200);
    // A refusal of a known key (unpriced model) is a line too.
    assert_eq!(chat(&http, &s.base, &key, "no-such-model").await, 404);
    // The logged cost, as the admin API shows it.
    let t0 = Instant::now();
    let row = loop {
        let v = admin_get(&http, &s.base, ADMIN_TOKEN, "/logs").await;
        let rows = v["data"].as_array().cloned().unwrap_or_default();
        if let Some(row) = rows.iter().find(|r| r["status"] == 200) {
            break row.clone();
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no log row: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let cost = row["cost"].as_str().unwrap().to_string();
    assert_ne!(cost, "0", "{row}");
    // One timestamp style in the API: `Z`, never `+00:00`.
    let created = row["created_at"].as_str().unwrap();
    assert!(created.ends_with('Z'), "{created}");
    let user = row["user_id"].as_i64().unwrap();
    for path in [
        "/users".to_string(),
        format!("/users/{user}"),
        format!("/users/{user}/packages"),
        "/keys".into(),
        "/accounts".into(),
        "/packages".into(),
        "/models".into(),
        "/logs".into(),
        "/audit".into(),
    ] {
        let text = admin_get(&http, &s.base, ADMIN_TOKEN, &path)
            .await
            .to_string();
        assert!(text.contains("Z\""), "{path} shows no timestamp: {text}");
        assert!(
            !text.contains("+00:00"),
            "{path} mixes timestamp styles: {text}"
        );
    }
    s.sigterm().await;
    let logs = s.stderr_text();
    assert!(!logs.contains('\x1b'), "colour codes in a redirected log");
    assert!(!logs.contains(&key), "the key's secret is never logged");
    let access: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("tollgate::access"))
        .collect();
    println!("access lines:\n{}", access.join("\n"));
    assert_eq!(access.len(), 2, "{logs}");
    // The line names the request_logs row (the span before it carries the x-request-id).
    let request_id = row["request_id"].as_str().unwrap();
    let ok = access
        .iter()
        .find(|l| l.contains(&format!("tollgate::access: request_id={request_id} ")))
        .expect("the answered request's line");
    for part in [
        "status=200",
        "model=gpt-test",
        &format!("cost={cost}"),
        "latency_ms=",
        "key_id=",
        // The key's visible prefix, never its secret.
        &format!("key={} ", &key[..tollgate::secrets::KEY_PREFIX_LEN]),
    ] {
        assert!(ok.contains(part), "{part} not in {ok}");
    }
    assert!(
        access
            .iter()
            .any(|l| l.contains("status=404") && l.contains("billing=\"refused\"")),
        "{access:?}"
    );

    // Off by configuration: no access line at all.
    let (url, _guard2) = fresh_database(backend()).await;
    let mut s = serve(&url, false).await;
    let key = seed_over_http(&s.base, &fake, "sk-acct", json!({"name": "k"})).await;
    assert_eq!(chat(&http, &s.base, &key, "gpt-test").await, 200);
    s.sigterm().await;
    assert!(!s.stderr_text().contains("tollgate::access"));
}

#[tokio::test]
async fn the_demo_prices_what_the_coding_agents_ask_for_and_removes_its_data() {
    let mut s = Spawned::start(&["demo"], &[]);
    let printed = wait_for_text(&s.stdout(), "Ctrl-C to stop.").await;
    println!("{printed}");
    let secret = word_after(&printed, "ANTHROPIC_AUTH_TOKEN=").to_string();
    let token = word_after(&printed, "API token: ").to_string();
    let data = word_after(&printed, "Demo data: ").to_string();
    assert!(printed.contains(&format!("ANTHROPIC_BASE_URL={} ", s.base)));
    assert!(printed.contains(&format!("base_url = \"{}/v1\"", s.base)));
    assert!(printed.contains("wire_api = \"responses\""));
    assert!(printed.contains(&format!("Admin console: {}/admin", s.base)));
    assert!(Path::new(&data).exists(), "{data}");
    let http = reqwest::Client::new();
    // As Claude Code calls: a bearer token on /v1/messages, streaming, its default models.
    for model in ["claude-sonnet-4-5", "claude-opus-4-8", "claude-haiku-4-5"] {
        let r = http
            .post(format!("{}/v1/messages", s.base))
            .bearer_auth(&secret)
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": model, "max_tokens": 64000, "stream": true,
                "messages": [{"role": "user", "content": "hello"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{model}");
        r.bytes().await.unwrap();
    }
    // As Codex 0.171 calls: the Responses API, its default model.
    let r = http
        .post(format!("{}/v1/responses", s.base))
        .bearer_auth(&secret)
        .json(&json!({"model": "gpt-6.2-sol", "stream": true, "input": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    // Every one of them was priced: a cost above zero, billed complete.
    let t0 = Instant::now();
    loop {
        let v = admin_get(&http, &s.base, &token, "/logs").await;
        let rows = v["data"].as_array().cloned().unwrap_or_default();
        if rows.len() == 4 {
            for row in &rows {
                assert_eq!(row["billing_status"], "complete", "{row}");
                assert_ne!(row["cost"], "0", "{row}");
            }
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.sigterm().await;
    assert!(!Path::new(&data).exists(), "the demo left {data} behind");
}
