//! Logs never contain a key's or an account's secret, or a prompt.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tollgate::fake_upstream::FakeUpstream;

use crate::helpers::*;

#[tokio::test]
async fn logs_never_contain_secrets_or_prompts() {
    let (url, _guard) = fresh_database(backend()).await;
    let journal = tempfile::tempdir().unwrap();
    let logfile = journal.path().join("stderr.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.arg("serve")
        .env("TOLLGATE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("TOLLGATE_DATABASE__URL", &url)
        .env("TOLLGATE_ADMIN__API_TOKEN", ADMIN_TOKEN)
        .env("TOLLGATE_RECORDER__JOURNAL_PATH", journal.path())
        .env("TOLLGATE_LOG__LEVEL", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&logfile).unwrap());
    let mut child = cmd.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let t0 = Instant::now();
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(t0.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fake = FakeUpstream::start().await.unwrap();
    let acct_secret = "sk-acct-CANARY-5d41402abc4b2a76";
    let prompt = "PROMPT-CANARY-7f3e9a please keep this private";
    let admin = |m: reqwest::Method, p: String, b: serde_json::Value| {
        http.request(m, format!("{base}/api/admin{p}"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&b)
            .send()
    };
    admin(reqwest::Method::POST, "/accounts".into(), json!({"name": "o", "provider": "openai", "base_url": fake.openai_base_url(), "api_key": acct_secret})).await.unwrap();
    admin(reqwest::Method::POST, "/accounts".into(), json!({"name": "a", "provider": "anthropic", "base_url": fake.anthropic_base_url(), "api_key": acct_secret})).await.unwrap();
    admin(
        reqwest::Method::PUT,
        "/models/gpt-test".into(),
        json!({"input": 1, "output": 1}),
    )
    .await
    .unwrap();
    admin(
        reqwest::Method::PUT,
        "/models/claude-test".into(),
        json!({"input": 1, "output": 1}),
    )
    .await
    .unwrap();
    let u: serde_json::Value = admin(
        reqwest::Method::POST,
        "/users".into(),
        json!({"username": "logs"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let uid = u["id"].as_i64().unwrap();
    let p: serde_json::Value = admin(
        reqwest::Method::POST,
        "/packages".into(),
        json!({"name": "p", "type": "quota", "quota_total": 5, "duration_days": 1}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    admin(
        reqwest::Method::POST,
        format!("/users/{uid}/packages"),
        json!({"package_id": p["id"]}),
    )
    .await
    .unwrap();
    let k: serde_json::Value = admin(
        reqwest::Method::POST,
        format!("/users/{uid}/keys"),
        json!({"name": "k"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let key = k["key"].as_str().unwrap().to_string();
    for (path, stream) in [
        ("/v1/chat/completions", false),
        ("/v1/chat/completions", true),
        ("/v1/messages", false),
        ("/v1/messages", true),
    ] {
        let model = if path == "/v1/messages" {
            "claude-test"
        } else {
            "gpt-test"
        };
        let r = http
            .post(format!("{base}{path}"))
            .bearer_auth(&key)
            .json(&json!({"model": model, "max_tokens": 8, "stream": stream, "messages": [{"role": "user", "content": prompt}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    // Failures are logged too: a wrong key, and an upstream that errors.
    http.post(format!("{base}/v1/chat/completions"))
        .bearer_auth(format!("{key}x"))
        .json(&json!({"model": "gpt-test"}))
        .send()
        .await
        .unwrap();
    fake.set_fail_status(Some(500));
    http.post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": prompt}]}))
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let log = std::fs::read_to_string(&logfile).unwrap();
    assert!(log.lines().count() > 10, "the run logged something:\n{log}");
    assert!(log.contains("request_id"), "logs carry request ids");
    assert!(
        log.contains("upstream attempt failed"),
        "failures are logged"
    );
    for (what, secret) in [
        ("the API key", key.as_str()),
        ("the key without its prefix", &key[3..]),
        ("the account secret", acct_secret),
        ("the prompt", "PROMPT-CANARY-7f3e9a"),
        ("the admin token", ADMIN_TOKEN),
    ] {
        assert!(!log.contains(secret), "the log contains {what}");
    }
}
