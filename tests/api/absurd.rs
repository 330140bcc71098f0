//! A hostile upstream: absurd usage (SPEC §11.5) is recorded `disputed` at the request's
//! estimate, never charged as reported, never refunds, never overflows a counter, and never
//! stops the recorder for anyone else.

use serde_json::{json, Value};
use tollgate::billing::money::Usd;
use tollgate::fake_upstream::FakeUpstream;

use crate::helpers::*;
use crate::proxy::{chat_body, claude_cost, funded_key, gpt_cost, messages_body};

/// The bad values, each in one field; the other count is a normal 5.
const BAD: [&str; 5] = [
    "9223372036854775807",
    "-1000000",
    "\"abc\"",
    "1.5",
    "20000000",
];

fn usage(anthropic: bool, bad: &str, in_output: bool) -> String {
    let (i, o) = if anthropic {
        ("input_tokens", "output_tokens")
    } else {
        ("prompt_tokens", "completion_tokens")
    };
    if in_output {
        format!(r#"{{"{i}":5,"{o}":{bad}}}"#)
    } else {
        format!(r#"{{"{i}":{bad},"{o}":5}}"#)
    }
}

/// (package used, key used) of the user's only grant and key, in nano-dollars.
async fn used(app: &TestApp, uid: i64) -> (i64, i64) {
    let g = app.state.db.list_user_packages(uid).await.unwrap()[0].quota_used;
    let k = app.state.db.list_keys(Some(uid), None, 10).await.unwrap()[0].used_cost;
    (g, k)
}

#[tokio::test]
async fn absurd_usage_is_disputed_at_the_estimate_on_both_protocols() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let (uid, _, key) = funded_key(&app, "hostile").await;
    let mut sent = 0i64;
    for anthropic in [false, true] {
        for stream in [false, true] {
            for bad in BAD {
                for in_output in [false, true] {
                    let (path, body) = if anthropic {
                        ("/v1/messages", messages_body(stream))
                    } else {
                        ("/v1/chat/completions", chat_body(stream))
                    };
                    let before = used(&app, uid).await;
                    let r = app
                        .http
                        .post(app.url(path))
                        .bearer_auth(&key)
                        .header("x-fake-usage", usage(anthropic, bad, in_output))
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200, "{path} {bad}");
                    r.bytes().await.unwrap();
                    sent += 1;
                    app.wait_for_logs(sent).await;
                    let after = used(&app, uid).await;
                    assert!(
                        after.0 >= before.0 && after.1 >= before.1,
                        "no refund: {before:?} → {after:?} ({path}, stream {stream}, {bad})"
                    );
                }
            }
        }
    }
    let (status, logs) = app.get("/logs?limit=100").await;
    assert_eq!(status, 200, "{logs}");
    let rows = logs["data"].as_array().unwrap();
    assert_eq!(rows.len() as i64, sent);
    let mut total = 0i64;
    for r in rows {
        let n = |k: &str| r[k].as_i64().unwrap();
        assert_eq!(r["billing_status"], "disputed", "{r}");
        // The usage estimate: ~4 bytes a token of request and answer, no cached classes.
        assert_eq!((n("cache_read_tokens"), n("cache_write_tokens")), (0, 0));
        assert!(n("input_tokens") > 0 && n("input_tokens") < 100, "{r}");
        assert!(n("output_tokens") >= 0 && n("output_tokens") < 2_000, "{r}");
        let expect = if r["model"] == "claude-test" {
            claude_cost(n("input_tokens"), n("output_tokens"), 0, 0)
        } else {
            gpt_cost(n("input_tokens"), n("output_tokens"), 0)
        };
        assert_eq!(r["cost"], Value::String(Usd(expect).to_string()), "{r}");
        total += expect;
    }
    let l = app.state.db.ledger().await.unwrap();
    eprintln!(
        "absurd usage: {sent} requests, all disputed; charged {} USD in total",
        Usd(total)
    );
    for (name, sink) in [
        ("request_logs", l.request_logs),
        ("usage_daily", l.usage_daily),
        ("api_keys", l.api_keys),
        ("accounts", l.accounts),
    ] {
        assert_eq!((sink.requests, sink.cost), (sent, total), "{name}");
    }
    assert_eq!(l.user_packages_cost, total, "user_packages");
    assert_eq!(used(&app, uid).await, (total, total));

    // Another user's normal request afterwards: served and recorded as reported.
    let (uid2, _, key2) = funded_key(&app, "normal").await;
    let r = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key2)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.wait_for_logs(sent + 1).await;
    let (_, logs) = app.get(&format!("/logs?user_id={uid2}&limit=10")).await;
    let row = &logs["data"][0];
    assert_eq!(row["billing_status"], "complete", "{row}");
    assert_eq!(row["cost"], json!(Usd(gpt_cost(12, 8, 0)).to_string()));
    assert_eq!(
        used(&app, uid2).await,
        (gpt_cost(12, 8, 0), gpt_cost(12, 8, 0))
    );
    let l = app.state.db.ledger().await.unwrap();
    assert_eq!(l.api_keys.cost, total + gpt_cost(12, 8, 0));
    assert_eq!(l.accounts.cost, total + gpt_cost(12, 8, 0));
}

/// A journal line as the recorder writes it (`UsageEvent`'s JSON), with the given amounts.
fn journal_line(id: &str, uid: i64, kid: i64, acc: i64, tokens: i64, cost: i64) -> String {
    json!({
        "request_id": id, "created_at_ms": 1_000, "day": "2026-01-01", "user_id": uid,
        "api_key_id": kid, "account_id": acc, "user_package_id": null, "windows": null,
        "model": "gpt-test", "endpoint": "/v1/chat/completions", "stream": false,
        "status": 200,
        "tokens": {"input": tokens, "output": 5, "cache_read": 0, "cache_write": 0},
        "cost_nanos": cost, "billing_status": "complete", "latency_ms": 1, "ttfb_ms": 1,
        "error": null
    })
    .to_string()
}

/// A corrupted journal (hand-written lines with i64::MAX and negative amounts, replayed as
/// after a crash) reaches the settlement past the proxy's checks: it records those events
/// disputed at 0 with no tokens, applies the good line of another user exactly, keeps every
/// counter an exact integer, and keeps serving.
#[tokio::test]
async fn a_corrupted_journal_is_settled_without_overflow_or_refund() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    let (acc, _) = app.wire_upstream(&fake).await;
    let (uid, kid, key) = funded_key(&app, "corrupt").await;
    let (uid2, kid2, _) = funded_key(&app, "bystander").await;
    let lines = [
        journal_line("max", uid, kid, acc, i64::MAX, i64::MAX),
        journal_line("max-again", uid, kid, acc, 5, i64::MAX),
        journal_line("refund", uid, kid, acc, 5, -11_250_000_000),
        journal_line("good", uid2, kid2, acc, 7, 1_234),
    ];
    let dir = app.state.config.journal_path();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("replay-corrupt.jsonl"), lines.join("\n") + "\n").unwrap();
    // Applied now or by the recorder's own upkeep, whichever comes first.
    app.state.recorder.replay_journal().await.unwrap();
    app.wait_for_logs(4).await;

    let (_, logs) = app.get(&format!("/logs?user_id={uid}&limit=10")).await;
    let rows = logs["data"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{logs}");
    for r in rows {
        assert_eq!(r["billing_status"], "disputed", "{r}");
        assert_eq!(r["cost"], Value::String(Usd(0).to_string()), "{r}");
        assert_eq!(r["input_tokens"], 0, "{r}");
        assert!(
            r["error"].as_str().unwrap().starts_with("settlement: "),
            "{r}"
        );
    }
    let (_, logs) = app.get(&format!("/logs?user_id={uid2}&limit=10")).await;
    let good = &logs["data"][0];
    assert_eq!(
        (
            good["billing_status"].as_str(),
            good["input_tokens"].as_i64()
        ),
        (Some("complete"), Some(7)),
        "{good}"
    );
    // Every sink decodes as integers (a float would fail here) and agrees to the nano.
    let l = app.state.db.ledger().await.unwrap();
    for (name, sink) in [
        ("request_logs", l.request_logs),
        ("usage_daily", l.usage_daily),
        ("api_keys", l.api_keys),
        ("accounts", l.accounts),
    ] {
        assert_eq!(
            (
                sink.requests,
                sink.cost,
                sink.input_tokens,
                sink.output_tokens
            ),
            (4, 1_234, 7, 5),
            "{name}"
        );
    }
    eprintln!(
        "corrupted journal: 4 lines applied, 3 disputed at 0, sinks cost {} USD",
        Usd(l.accounts.cost)
    );
    // The corrupted user is still served, and recorded as reported.
    let r = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    app.wait_for_logs(5).await;
    let (_, logs) = app.get(&format!("/logs?user_id={uid}&limit=10")).await;
    assert_eq!(logs["data"][0]["billing_status"], "complete", "{logs}");
}
