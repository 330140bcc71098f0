//! Key budgets (SPEC §11.3): daily, weekly, monthly and total spending limits on a key,
//! enforced at admission with reservations, charged in the settlement transaction, shown by the
//! admin API and `/v1/me` to the nano-dollar.

use std::time::Duration;

use chrono::{Days, Utc};
use futures_util::{stream, StreamExt};
use serde_json::{json, Value};
use tollgate::billing::money::Usd;
use tollgate::fake_upstream::FakeUpstream;
use tollgate::store::usage::LogFilter;
use tollgate::usage::BillingStatus;

use crate::helpers::*;
use crate::proxy::{chat_body, funded_key, gpt_cost, messages_body};

const PROMPT: i64 = 100;
const COMPLETION: i64 = 50;

/// What one chat request of these tests costs (gpt-test prices).
fn one() -> i64 {
    gpt_cost(PROMPT, COMPLETION, 0)
}

/// One request of `key` on `path` with the fake upstream's usage and delay; its response.
async fn send(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    key: &str,
    body: &Value,
    delay_ms: u64,
) -> reqwest::Response {
    http.post(format!("{base}{path}"))
        .bearer_auth(key)
        .header("x-fake-prompt-tokens", PROMPT.to_string())
        .header("x-fake-completion-tokens", COMPLETION.to_string())
        .header("x-fake-header-delay-ms", delay_ms.to_string())
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn chat(app: &TestApp, key: &str) -> reqwest::Response {
    send(
        &app.http,
        &app.base,
        "/v1/chat/completions",
        key,
        &chat_body(false),
        0,
    )
    .await
}

/// Σ cost of the key's request logs, and its logs (newest first), once the recorder has
/// applied at least `n` served (200) ones.
async fn logged(
    app: &TestApp,
    kid: i64,
    n: usize,
) -> (i64, Vec<tollgate::store::usage::RequestLog>) {
    for _ in 0..400 {
        let f = LogFilter {
            api_key_id: Some(kid),
            ..Default::default()
        };
        let rows = app.state.db.request_logs(&f, 1000).await.unwrap();
        if rows.iter().filter(|r| r.status == 200).count() >= n {
            return (rows.iter().map(|r| r.cost).sum(), rows);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("fewer than {n} log rows for key {kid}");
}

/// The key's budgets as `GET /api/admin/keys/{id}` shows them.
async fn budgets(app: &TestApp, kid: i64) -> Vec<Value> {
    let (s, v) = app.get(&format!("/keys/{kid}")).await;
    assert_eq!(s, 200, "{v}");
    v["budgets"].as_array().cloned().unwrap()
}

fn usd(v: i64) -> String {
    Usd(v).to_string()
}

/// Tomorrow's midnight (UTC, the test timezone), as the API writes it.
fn next_midnight() -> chrono::DateTime<Utc> {
    Utc::now()
        .date_naive()
        .checked_add_days(Days::new(1))
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
}

#[tokio::test]
async fn a_daily_key_budget_refuses_once_used_in_both_shapes() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let (_, kid, key) = funded_key(&app, "kb").await;
    // Room for two and a half requests: the third is admitted (used < limit), the fourth not.
    let limit = one() * 5 / 2;
    let (s, v) = app
        .patch(&format!("/keys/{kid}"), json!({"daily_limit": usd(limit)}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["daily_limit"], json!(usd(limit)));
    for i in 0..3 {
        let r = chat(&app, &key).await;
        assert_eq!(r.status().as_u16(), 200, "request {i}");
        let _ = r.bytes().await;
    }

    let r = chat(&app, &key).await;
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers()["x-should-retry"], "false");
    let v: Value = r.json().await.unwrap();
    eprintln!("OpenAI refusal: {v}");
    assert_eq!(v["error"]["code"], "key_budget_exceeded");
    assert_eq!(v["error"]["type"], "insufficient_quota");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("daily budget"), "{msg}");
    assert!(msg.contains(&next_midnight().to_rfc3339()), "{msg}");

    let r = send(
        &app.http,
        &app.base,
        "/v1/messages",
        &key,
        &messages_body(false),
        0,
    )
    .await;
    assert_eq!(r.status().as_u16(), 402);
    assert_eq!(r.headers()["x-should-retry"], "false");
    let v: Value = r.json().await.unwrap();
    eprintln!("Anthropic refusal: {v}");
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "billing_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("daily budget"));

    // Three served rows, and the refusals (one row per code and second, SPEC §11.4).
    let (cost, _) = logged(&app, kid, 3).await;
    let mut refused = Vec::new();
    for _ in 0..200 {
        let (_, rows) = logged(&app, kid, 3).await;
        refused = rows
            .into_iter()
            .filter(|r| r.error.as_deref() == Some("key_budget_exceeded"))
            .collect();
        if !refused.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(!refused.is_empty(), "a refused row is logged");
    for r in &refused {
        // The OpenAI refusal's row, or the Anthropic one's when it fell in another second.
        assert!([429, 402].contains(&r.status), "{}", r.status);
        assert_eq!(r.cost, 0);
        assert_eq!(r.billing_status, BillingStatus::Refused);
    }
    assert_eq!(cost, 3 * one(), "every served request charged in full");

    // The admin API, the list and /v1/me agree with the logs to the nano-dollar.
    let b = budgets(&app, kid).await;
    eprintln!("budgets: {}", json!(b));
    assert_eq!(b.len(), 1);
    assert_eq!(b[0]["window"], "daily");
    assert_eq!(b[0]["limit"], json!(usd(limit)));
    assert_eq!(b[0]["used"], json!(usd(cost)));
    assert_eq!(b[0]["remaining"], json!(usd(limit - cost)));
    let resets: chrono::DateTime<Utc> = b[0]["resets_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(resets, next_midnight());
    let (_, list) = app.get("/keys").await;
    let listed = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == json!(kid))
        .unwrap()
        .clone();
    assert_eq!(listed["budgets"], json!(b));
    let me: Value = app
        .http
        .get(app.url("/v1/me"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["key"]["budgets"], json!(b));
    assert_eq!(me["key"]["daily_limit"], json!(usd(limit)));
    let row = app.state.db.get_key(kid).await.unwrap();
    assert_eq!(row.budget.daily_used, cost);
    assert_eq!(row.used_cost, cost);
}

#[tokio::test]
async fn patch_to_null_lifts_a_budget_and_keeps_the_others() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let (uid, _, _) = funded_key(&app, "lift").await;
    // Created with every budget; the total and daily ones leave no room after one request.
    let (kid, key) = app
        .key(
            uid,
            json!({"name": "capped", "daily_limit": usd(one() / 2), "weekly_limit": "100", "monthly_limit": "200.5", "total_limit": usd(one())}),
        )
        .await;
    let b = budgets(&app, kid).await;
    let windows: Vec<&str> = b.iter().map(|w| w["window"].as_str().unwrap()).collect();
    assert_eq!(windows, ["daily", "weekly", "monthly", "total"]);
    assert_eq!(b[3]["resets_at"], Value::Null, "the total never resets");
    let r = chat(&app, &key).await;
    assert_eq!(r.status().as_u16(), 200);
    let _ = r.bytes().await;
    let r = chat(&app, &key).await;
    assert_eq!(r.status().as_u16(), 429);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("daily"),
        "{v}"
    );

    // Lifting the daily budget leaves the total one, which says it does not reset.
    let (s, v) = app
        .patch(&format!("/keys/{kid}"), json!({"daily_limit": null}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["daily_limit"], Value::Null);
    assert_eq!(v["weekly_limit"], json!(usd(100_000_000_000)));
    assert_eq!(v["monthly_limit"], json!(usd(200_500_000_000)));
    let r = chat(&app, &key).await;
    assert_eq!(r.status().as_u16(), 429);
    let v: Value = r.json().await.unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("total budget") && msg.contains("does not reset"),
        "{msg}"
    );

    // Lifting the total too: served again; the status is left as it was.
    let (s, v) = app
        .patch(&format!("/keys/{kid}"), json!({"total_limit": null}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "active");
    let r = chat(&app, &key).await;
    assert_eq!(r.status().as_u16(), 200);
    let _ = r.bytes().await;
    let (cost, _) = logged(&app, kid, 2).await;
    let b = budgets(&app, kid).await;
    assert_eq!(b.len(), 2);
    // Settled by now (the logs are in the same transaction as the key's counters).
    assert_eq!(b[0]["used"], json!(usd(cost)));
    assert_eq!(cost, 2 * one());
}

#[tokio::test]
async fn bad_budgets_are_refused_naming_the_field_and_nothing_is_written() {
    let app = spawn_app().await;
    let uid = app.user("val").await;
    let (kid, _) = app.key(uid, json!({"name": "k", "daily_limit": "1"})).await;
    let keys_before = app.get("/keys").await.1["data"].as_array().unwrap().len();
    let bad = [
        ("daily_limit", json!("-1")),
        ("weekly_limit", json!("lots")),
        ("monthly_limit", json!("0.0000000001")),
        ("total_limit", json!(-0.5)),
        ("daily_limit", json!(true)),
    ];
    for (field, value) in &bad {
        let (s, v) = app
            .post(
                &format!("/users/{uid}/keys"),
                json!({"name": "bad", *field: value}),
            )
            .await;
        eprintln!("POST {field}={value}: {s} {v}");
        assert_eq!(s, 400, "{field}={value}: {v}");
        assert_eq!(v["error"]["param"], json!(field), "{v}");
        let (s, v) = app
            .patch(
                &format!("/keys/{kid}"),
                json!({"status": "revoked", *field: value}),
            )
            .await;
        assert_eq!(s, 400, "{field}={value}: {v}");
        assert_eq!(v["error"]["param"], json!(field), "{v}");
    }
    let (s, v) = app.patch(&format!("/keys/{kid}"), json!({})).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        app.get("/keys").await.1["data"].as_array().unwrap().len(),
        keys_before,
        "no key created"
    );
    let (_, k) = app.get(&format!("/keys/{kid}")).await;
    assert_eq!(k["status"], "active", "the status was not written either");
    assert_eq!(k["daily_limit"], json!(usd(1_000_000_000)));
    assert_eq!(k["weekly_limit"], Value::Null);
    // Zero is a valid budget: nothing may be spent.
    let (s, v) = app
        .patch(&format!("/keys/{kid}"), json!({"total_limit": "0"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["total_limit"], json!(usd(0)));
}

/// As SPEC §11.1 figure 2, for a key budget: 20 settled requests of the key, then a daily
/// budget with room for 10 more, then 50 at once. The overshoot is at most 2 requests' cost
/// and at least half of the requests that fit are admitted.
#[tokio::test]
async fn concurrent_requests_do_not_oversell_a_key_budget() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let (_, kid, key) = funded_key(&app, "burst").await;
    for i in 0..20 {
        let r = chat(&app, &key).await;
        assert_eq!(r.status().as_u16(), 200, "warm-up {i}");
        let _ = r.bytes().await;
    }
    let (warm, _) = logged(&app, kid, 20).await;
    assert_eq!(warm, 20 * one());
    let limit = warm + 10 * one();
    let (s, v) = app
        .patch(&format!("/keys/{kid}"), json!({"daily_limit": usd(limit)}))
        .await;
    assert_eq!(s, 200, "{v}");

    let body = chat_body(false);
    let statuses: Vec<u16> = stream::iter(0..50)
        .map(|_| {
            let (app, key, body) = (&app, &key, &body);
            async move {
                let r = send(&app.http, &app.base, "/v1/chat/completions", key, body, 300).await;
                let s = r.status().as_u16();
                let _ = r.bytes().await;
                s
            }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    let admitted = statuses.iter().filter(|s| **s == 200).count() as i64;
    let refused = statuses.iter().filter(|s| **s == 429).count() as i64;
    assert_eq!(admitted + refused, 50, "{statuses:?}");
    let (cost, _) = logged(&app, kid, 20 + admitted as usize).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let row = app.state.db.get_key(kid).await.unwrap();
    let over = row.budget.daily_used - limit;
    eprintln!(
        "key budget burst: room for 10 requests of {} USD after 20 settled: {admitted} of 50 admitted, {refused} refused, over by {} USD = {:.2} requests (bound: 2 requests; at least 5 admitted)",
        Usd(one()),
        Usd(over.max(0)),
        over.max(0) as f64 / one() as f64
    );
    let served: i64 = {
        let f = LogFilter {
            api_key_id: Some(kid),
            status: Some(200),
            ..Default::default()
        };
        app.state.db.request_logs(&f, 1000).await.unwrap().len() as i64
    };
    assert_eq!(served, 20 + admitted);
    assert_eq!(row.budget.daily_used, cost, "daily used = Σ logged cost");
    assert_eq!(
        cost,
        (20 + admitted) * one(),
        "every request charged in full"
    );
    assert!(over <= 2 * one(), "over by {} USD", Usd(over));
    assert!(admitted >= 5, "under-selling: {admitted} of 10 that fit");
    let b = budgets(&app, kid).await;
    assert_eq!(b[0]["used"], json!(usd(cost)));
}

/// The key's window charge rolls like the package charge, on both databases (MySQL evaluates
/// SET left to right): a new window starts from the cost, a late event of a past window leaves
/// the current one alone, and the lifetime total counts every event.
#[tokio::test]
async fn key_windows_roll_in_the_settlement_statement() {
    use tollgate::billing::cost::Tokens;
    use tollgate::usage::{UsageEvent, WindowStarts};
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    let (account, _) = app.wire_upstream(&fake).await;
    let uid = app.user("roll").await;
    let (kid, _) = app.key(uid, json!({"name": "k"})).await;
    let day = 86_400_000;
    let (d1, w, m) = (10 * day, 7 * day, 3 * day);
    let ev = |id: &str, daily: i64, cost: i64| UsageEvent {
        request_id: id.into(),
        created_at_ms: daily,
        day: "2026-01-01".into(),
        user_id: uid,
        api_key_id: kid,
        account_id: Some(account),
        user_package_id: None,
        windows: None,
        model: "gpt-test".into(),
        endpoint: "/v1/chat/completions".into(),
        stream: false,
        status: 200,
        tokens: Tokens::default(),
        cost_nanos: cost,
        billing_status: BillingStatus::Complete,
        latency_ms: 1,
        ttfb_ms: None,
        error: None,
        reserved: 0,
        key_windows: Some(WindowStarts {
            daily,
            weekly: w,
            monthly: m,
        }),
        key_reserved: 0,
    };
    let db = &app.state.db;
    db.settle(&[ev("a", d1, 100), ev("b", d1, 20)], 0)
        .await
        .unwrap();
    let k = db.get_key(kid).await.unwrap().budget;
    assert_eq!((k.daily_used, k.daily_window_start), (120, Some(d1)));
    assert_eq!((k.weekly_used, k.monthly_used), (120, 120));
    // The next day: the daily window starts again from this cost; the week and month go on.
    db.settle(&[ev("c", d1 + day, 7)], 0).await.unwrap();
    let k = db.get_key(kid).await.unwrap().budget;
    assert_eq!((k.daily_used, k.daily_window_start), (7, Some(d1 + day)));
    assert_eq!((k.weekly_used, k.weekly_window_start), (127, Some(w)));
    // A late event of the day before: today's window is left alone, the week counts it.
    db.settle(&[ev("d", d1, 1000)], 0).await.unwrap();
    let key = db.get_key(kid).await.unwrap();
    eprintln!(
        "daily {} weekly {} monthly {} total {}",
        key.budget.daily_used, key.budget.weekly_used, key.budget.monthly_used, key.used_cost
    );
    assert_eq!(
        (key.budget.daily_used, key.budget.daily_window_start),
        (7, Some(d1 + day))
    );
    assert_eq!(key.budget.weekly_used, 1127);
    assert_eq!(key.budget.monthly_used, 1127);
    assert_eq!(key.used_cost, 1127);
}
