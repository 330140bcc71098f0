//! SIGTERM under load, on the real binary: stop accepting, finish in-flight requests, drain
//! the recorder, exit 0; every request that got a 200 is recorded.

use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::{stream, StreamExt};
use serde_json::json;
use tollgate::fake_upstream::FakeUpstream;

use crate::helpers::*;
use crate::proxy::{chat_body, messages_body};

#[tokio::test]
async fn sigterm_under_load_records_every_200() {
    let (url, _guard) = fresh_database(backend()).await;
    let mut env = vec![];
    if backend() == Backend::MySql {
        env.push(("TOLLGATE_REDIS__URL", redis_url().unwrap()));
        env.push((
            "TOLLGATE_REDIS__KEY_PREFIX",
            format!("tgtest:{}:", uuid::Uuid::new_v4().simple()),
        ));
    }
    let mut server = start_binary(&url, &env, Stdio::null()).await;
    let base = server.base.clone();
    // The binary re-executed itself (same PID, so the SIGTERM below reaches the server) with
    // mimalloc's on-demand arena commit (README, "Memory").
    if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_none() {
        let environ = std::fs::read(format!("/proc/{}/environ", server.child.id())).unwrap();
        assert!(
            environ
                .split(|&b| b == 0)
                .any(|kv| kv == b"MIMALLOC_ARENA_EAGER_COMMIT=0"),
            "the serving process runs without MIMALLOC_ARENA_EAGER_COMMIT=0"
        );
    }
    let http = reqwest::Client::new();
    let fake = FakeUpstream::start().await.unwrap();
    let key = seed_over_http(&base, &fake, "sk-upstream", json!({"name": "k"})).await;

    // 200 requests, 24 at a time, each taking ~150 ms upstream; SIGTERM half a second in.
    let pid = server.child.id();
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
    let status = server.wait_exit().await;
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
        std::fs::read_dir(server.journal.path())
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "nothing left in the journal"
    );
}
