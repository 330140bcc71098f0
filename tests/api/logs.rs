//! Logs never contain a key's or an account's secret, or a prompt.

use std::time::Duration;

use serde_json::json;
use tollgate::fake_upstream::FakeUpstream;

use crate::helpers::*;

#[tokio::test]
async fn logs_never_contain_secrets_or_prompts() {
    let (url, _guard) = fresh_database(backend()).await;
    let logdir = tempfile::tempdir().unwrap();
    let logfile = logdir.path().join("stderr.log");
    let env = [("TOLLGATE_LOG__LEVEL", "debug".to_string())];
    let stderr = std::fs::File::create(&logfile).unwrap();
    let mut server = start_binary(&url, &env, stderr.into()).await;
    let base = server.base.clone();
    let http = reqwest::Client::new();
    let fake = FakeUpstream::start().await.unwrap();
    let acct_secret = "sk-acct-CANARY-5d41402abc4b2a76";
    let prompt = "PROMPT-CANARY-7f3e9a please keep this private";
    let key = seed_over_http(&base, &fake, acct_secret, json!({"name": "k"})).await;
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
    assert!(server.sigterm().await.success());
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
