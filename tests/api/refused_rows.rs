//! Refusals are visible (SPEC §11.4): a refusal for a known key is one `refused` log row (cost
//! 0, `error` = the code) and changes no other sink; repeats of one limit are coalesced; a bad
//! key writes nothing and is only counted in `/metrics`.

use std::time::Duration;

use serde_json::{json, Value};
use tollgate::fake_upstream::FakeUpstream;

use crate::helpers::*;
use crate::proxy::{chat_body, funded_key, messages_body};

async fn send(app: &TestApp, path: &str, key: &str, body: String) -> u16 {
    app.http
        .post(app.url(path))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The log rows of key `kid` once there are at least `n` (newest first).
async fn rows(app: &TestApp, kid: i64, n: usize) -> Vec<Value> {
    for _ in 0..200 {
        let (_, v) = app.get(&format!("/logs?api_key_id={kid}")).await;
        let rows = v["data"].as_array().cloned().unwrap_or_default();
        if rows.len() >= n {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("fewer than {n} log rows for key {kid}");
}

async fn metrics(app: &TestApp) -> String {
    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    r.text().await.unwrap()
}

fn refused_count(text: &str, code: &str) -> u64 {
    let needle = format!("tollgate_refused_total{{code=\"{code}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn each_refusal_of_a_known_key_is_one_refused_row_and_nothing_else() {
    let app = spawn_with(Options {
        tweak: Some(Box::new(|c| c.server.max_body_bytes = 4096)),
        ..Default::default()
    })
    .await;
    let fake = FakeUpstream::start().await.unwrap();
    let (oa, an) = app.wire_upstream(&fake).await;
    let (uid, _, _) = funded_key(&app, "ref").await;
    let nopkg = app.user("ref-nopkg").await;
    let chat = chat_body(false).to_string();
    let msg = messages_body(false).to_string();
    let big =
        json!({"model": "gpt-test", "messages": [{"role": "user", "content": "x".repeat(5000)}]})
            .to_string();
    let unpriced = json!({"model": "no-such-model", "messages": []}).to_string();
    // (owner, key settings, path, body, status, code): one key each, so none is coalesced.
    let cases: Vec<(i64, Value, &str, String, u16, &str)> = vec![
        (
            uid,
            json!({}),
            "/v1/chat/completions",
            "{nope".into(),
            400,
            "invalid_request_error",
        ),
        (
            uid,
            json!({"allowed_models": ["claude-test"]}),
            "/v1/chat/completions",
            chat.clone(),
            403,
            "model_not_allowed",
        ),
        (
            uid,
            json!({}),
            "/v1/chat/completions",
            unpriced,
            404,
            "model_not_found",
        ),
        (
            uid,
            json!({}),
            "/v1/chat/completions",
            big,
            413,
            "request_too_large",
        ),
        (
            nopkg,
            json!({}),
            "/v1/chat/completions",
            chat.clone(),
            429,
            "insufficient_quota",
        ),
        (
            nopkg,
            json!({}),
            "/v1/messages",
            msg,
            402,
            "insufficient_quota",
        ),
    ];
    let before = app.state.db.ledger().await.unwrap();
    for (i, (owner, extra, path, body, status, code)) in cases.into_iter().enumerate() {
        let mut settings = json!({"name": format!("k{i}")});
        settings
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (kid, key) = app.key(owner, settings).await;
        assert_eq!(send(&app, path, &key, body).await, status, "{code}");
        let got = rows(&app, kid, 1).await;
        assert_eq!(got.len(), 1, "{code}: {got:?}");
        let row = &got[0];
        assert_eq!(row["status"], status, "{row}");
        assert_eq!(row["error"], code, "{row}");
        assert_eq!(row["billing_status"], "refused", "{row}");
        assert_eq!(
            row["cost"],
            tollgate::billing::money::Usd(0).to_string(),
            "{row}"
        );
        let k = app.state.db.get_key(kid).await.unwrap();
        assert_eq!((k.request_count, k.used_cost), (0, 0), "{code}");
    }
    // A rate limit: the first request passes, the second is refused.
    let (kid, key) = app.key(uid, json!({"name": "rpm", "rpm_limit": 1})).await;
    assert_eq!(
        send(&app, "/v1/chat/completions", &key, chat.clone()).await,
        200
    );
    assert_eq!(send(&app, "/v1/chat/completions", &key, chat).await, 429);
    let got = rows(&app, kid, 2).await;
    let refused: Vec<_> = got
        .iter()
        .filter(|r| r["billing_status"] == "refused")
        .collect();
    assert_eq!(refused.len(), 1, "{got:?}");
    assert_eq!(refused[0]["error"], "rate_limit_exceeded");
    assert_eq!(refused[0]["status"], 429);
    // Every serving account disabled: 503, and its row.
    for id in [oa, an] {
        let (s, v) = app
            .patch(&format!("/accounts/{id}"), json!({"status": "disabled"}))
            .await;
        assert_eq!(s, 200, "{v}");
    }
    let (kid, key) = app.key(uid, json!({"name": "k503"})).await;
    let chat = chat_body(false).to_string();
    assert_eq!(send(&app, "/v1/chat/completions", &key, chat).await, 503);
    let got = rows(&app, kid, 1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["status"], 503);
    assert_eq!(got[0]["error"], "no_available_account");
    assert_eq!(got[0]["billing_status"], "refused");
    // Only the one served request reached a sink.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = app.state.db.ledger().await.unwrap();
    assert_eq!(after.usage_daily.requests, before.usage_daily.requests + 1);
    assert_eq!(
        after.request_logs.requests,
        before.request_logs.requests + 1
    );
    assert_eq!(after.request_logs, after.usage_daily);
    assert_eq!(after.api_keys, after.usage_daily);
    assert_eq!(after.accounts, after.usage_daily);
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test]
async fn a_burst_of_refusals_from_one_key_writes_a_few_rows_and_a_bad_key_none() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let (_, kid, key) = funded_key(&app, "burst").await;
    let unpriced = json!({"model": "no-such-model", "messages": []}).to_string();
    let before = metrics(&app).await;
    for _ in 0..100 {
        assert_eq!(
            send(&app, "/v1/chat/completions", &key, unpriced.clone()).await,
            404
        );
    }
    for _ in 0..5 {
        assert_eq!(
            send(&app, "/v1/chat/completions", "sk-nope", unpriced.clone()).await,
            401
        );
    }
    let got = rows(&app, kid, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = rows(&app, kid, got.len()).await;
    assert!(got.len() <= 5, "{} rows for 100 refusals", got.len());
    assert!(got.iter().all(|r| r["error"] == "model_not_found"));
    let after = metrics(&app).await;
    assert_eq!(
        refused_count(&after, "model_not_found") - refused_count(&before, "model_not_found"),
        100
    );
    assert_eq!(
        refused_count(&after, "invalid_api_key") - refused_count(&before, "invalid_api_key"),
        5
    );
    // Rows only for the known key: the bad key wrote nothing.
    let (_, all) = app.get("/logs").await;
    assert_eq!(all["data"].as_array().unwrap().len(), got.len(), "{all}");
    assert_eq!(
        app.state.db.ledger().await.unwrap().request_logs.requests,
        0
    );
}
