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

/// Streams that outlive `server.shutdown_grace_secs` are closed when it ends and recorded
/// `partial` with the usage seen so far; the process exits within grace + 10 s.
#[tokio::test]
async fn streams_outliving_the_grace_are_closed_and_recorded_partial() {
    let (url, _guard) = fresh_database(backend()).await;
    let mut env = vec![("TOLLGATE_SERVER__SHUTDOWN_GRACE_SECS", "1".to_string())];
    if backend() == Backend::MySql {
        env.push(("TOLLGATE_REDIS__URL", redis_url().unwrap()));
        env.push((
            "TOLLGATE_REDIS__KEY_PREFIX",
            format!("tgtest:{}:", uuid::Uuid::new_v4().simple()),
        ));
    }
    let mut server = start_binary(&url, &env, Stdio::null()).await;
    let base = server.base.clone();
    let fake = FakeUpstream::start().await.unwrap();
    let key = seed_over_http(&base, &fake, "sk-upstream", json!({"name": "k"})).await;
    let http = reqwest::Client::new();
    // Two streams of ~60 s each (300 deltas, 200 ms apart): Anthropic reports its input in
    // `message_start`, OpenAI nothing until the end.
    let mut streams = vec![];
    for (path, body) in [
        ("/v1/messages", messages_body(true)),
        ("/v1/chat/completions", chat_body(true)),
    ] {
        let mut r = http
            .post(format!("{base}{path}"))
            .bearer_auth(&key)
            .header("x-fake-chunks", "300")
            .header("x-fake-chunk-delay-ms", "200")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // The stream is under way: its first events arrived.
        let first = r.chunk().await.unwrap().unwrap();
        assert!(!first.is_empty());
        streams.push(tokio::spawn(async move {
            let mut n = first.len();
            loop {
                match r.chunk().await {
                    Ok(Some(c)) => n += c.len(),
                    Ok(None) | Err(_) => return n,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = std::time::Instant::now();
    let status = server.sigterm().await;
    let took = t0.elapsed();
    assert!(status.success(), "exit status {status:?}");
    for s in streams {
        let bytes = tokio::time::timeout(Duration::from_secs(5), s)
            .await
            .expect("the stream was closed")
            .unwrap();
        assert!(bytes > 0);
    }
    eprintln!(
        "shutdown with open streams: exited {:.1} s after SIGTERM (grace 1 s)",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(11), "took {took:?}");
    assert!(
        took >= Duration::from_millis(900),
        "the grace was given: {took:?}"
    );
    let db = tollgate::store::Db::connect(&url, 1).await.unwrap();
    let rows = db
        .request_logs(&tollgate::store::usage::LogFilter::default(), 10)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "both streams are recorded");
    for r in &rows {
        let billing = format!("{:?}", r.billing_status).to_lowercase();
        assert!(billing.contains("partial"), "{r:?}");
        assert!(
            r.error.as_deref().unwrap_or("").contains("shut down"),
            "{r:?}"
        );
        if r.model == "claude-test" {
            // message_start's usage: 12 in, 1 out.
            assert_eq!((r.input_tokens, r.output_tokens), (12, 1), "{r:?}");
            assert_eq!(r.cost, crate::proxy::claude_cost(12, 1, 0, 0));
        } else {
            // No usage yet: estimated from what passed.
            assert!(r.input_tokens > 0 && r.output_tokens > 0, "{r:?}");
            assert_eq!(
                r.cost,
                crate::proxy::gpt_cost(r.input_tokens, r.output_tokens, 0)
            );
        }
    }
    let l = db.ledger().await.unwrap();
    assert_eq!(l.request_logs.cost, l.api_keys.cost);
    assert_eq!(l.request_logs.cost, l.user_packages_cost);
    assert_eq!(l.request_logs.cost, l.accounts.cost);
}
