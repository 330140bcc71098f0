//! SIGTERM under load, on the real binary: stop accepting, finish in-flight requests, drain
//! the recorder, exit 0; every request that got a 200 is recorded.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};
use serde_json::json;
use tollgate::fake_upstream::FakeUpstream;

use crate::helpers::*;
use crate::proxy::{chat_body, messages_body};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

#[tokio::test]
async fn sigterm_under_load_records_every_200() {
    let (url, _guard) = fresh_database(backend()).await;
    let journal = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--config")
        .arg(format!("{}/config.toml", env!("CARGO_MANIFEST_DIR")))
        .env("TOLLGATE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("TOLLGATE_DATABASE__URL", &url)
        .env("TOLLGATE_ADMIN__API_TOKEN", ADMIN_TOKEN)
        .env("TOLLGATE_ADMIN__INITIAL_PASSWORD", "initial-admin-pass")
        .env("TOLLGATE_RECORDER__JOURNAL_PATH", journal.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if backend() == Backend::MySql {
        cmd.env("TOLLGATE_REDIS__URL", redis_url().unwrap()).env(
            "TOLLGATE_REDIS__KEY_PREFIX",
            format!("tgtest:{}:", uuid::Uuid::new_v4().simple()),
        );
    }
    let mut server = Server(cmd.spawn().unwrap());
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let t0 = Instant::now();
    while http.get(format!("{base}/readyz")).send().await.is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "server did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin = |m: reqwest::Method, p: &str, b: serde_json::Value| {
        http.request(m, format!("{base}/api/admin{p}"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&b)
            .send()
    };
    let fake = FakeUpstream::start().await.unwrap();
    admin(reqwest::Method::POST, "/accounts", json!({"name": "o", "provider": "openai", "base_url": fake.openai_base_url(), "api_key": "x"})).await.unwrap();
    admin(reqwest::Method::POST, "/accounts", json!({"name": "a", "provider": "anthropic", "base_url": fake.anthropic_base_url(), "api_key": "y"})).await.unwrap();
    admin(
        reqwest::Method::PUT,
        "/models/gpt-test",
        json!({"input": "2.5", "output": "10"}),
    )
    .await
    .unwrap();
    admin(
        reqwest::Method::PUT,
        "/models/claude-test",
        json!({"input": "3", "output": "15"}),
    )
    .await
    .unwrap();
    let u: serde_json::Value = admin(reqwest::Method::POST, "/users", json!({"username": "load"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let uid = u["id"].as_i64().unwrap();
    let p: serde_json::Value = admin(
        reqwest::Method::POST,
        "/packages",
        json!({"name": "big", "type": "quota", "quota_total": "1000", "duration_days": 3}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    admin(
        reqwest::Method::POST,
        &format!("/users/{uid}/packages"),
        json!({"package_id": p["id"]}),
    )
    .await
    .unwrap();
    let k: serde_json::Value = admin(
        reqwest::Method::POST,
        &format!("/users/{uid}/keys"),
        json!({"name": "k"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let key = k["key"].as_str().unwrap().to_string();

    // 200 requests, 24 at a time, each taking ~150 ms upstream; SIGTERM half a second in.
    let pid = server.0.id();
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
    });
    let results: Vec<Option<u16>> = stream::iter(0..200)
        .map(|i| {
            let (http, base, key) = (&http, &base, &key);
            async move {
                let (path, body) = if i % 2 == 0 {
                    ("/v1/chat/completions", chat_body(i % 4 == 0))
                } else {
                    ("/v1/messages", messages_body(i % 4 == 1))
                };
                let r = http
                    .post(format!("{base}{path}"))
                    .bearer_auth(key)
                    .header("x-fake-chunks", "3")
                    .header("x-fake-chunk-delay-ms", "50")
                    .json(&body)
                    .send()
                    .await
                    .ok()?;
                let s = r.status().as_u16();
                // A 200 counts only if its whole body arrived.
                r.bytes().await.ok()?;
                Some(s)
            }
        })
        .buffer_unordered(24)
        .collect()
        .await;
    killer.await.unwrap();
    let ok = results.iter().filter(|r| **r == Some(200)).count() as i64;
    let t1 = Instant::now();
    let status = loop {
        if let Some(s) = server.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(30),
            "server did not exit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status:?}");
    assert!(
        ok > 0 && ok < 200,
        "the signal should land mid-run: {ok} of 200 succeeded"
    );
    let db = tollgate::store::Db::connect(&url, 1).await.unwrap();
    let l = db.ledger().await.unwrap();
    eprintln!(
        "shutdown: {ok} requests got 200; {} recorded",
        l.request_logs.requests
    );
    assert_eq!(
        l.request_logs.requests, ok,
        "every 200 is recorded, nothing else"
    );
    assert_eq!(l.request_logs.cost, l.user_packages_cost);
    assert_eq!(l.request_logs.cost, l.api_keys.cost);
    assert!(
        std::fs::read_dir(journal.path())
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "nothing left in the journal"
    );
}
