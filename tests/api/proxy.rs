//! The proxy: forwarding, streaming, usage, cost, admission errors.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tollgate::fake_upstream::FakeUpstream;

use crate::helpers::*;

/// A user with a generous subscription and a key; returns (user, key id, secret).
pub async fn funded_key(app: &TestApp, name: &str) -> (i64, i64, String) {
    let uid = app.user(name).await;
    let pid = app
        .package(json!({"name": format!("{name}-pkg"), "type": "subscription", "daily_quota": "1000", "duration_days": 30}))
        .await;
    app.grant(uid, pid, None).await;
    let (kid, secret) = app.key(uid, json!({"name": "k"})).await;
    (uid, kid, secret)
}

pub fn chat_body(stream: bool) -> Value {
    json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "stream": stream})
}

pub fn messages_body(stream: bool) -> Value {
    json!({"model": "claude-test", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], "stream": stream})
}

/// gpt-test: $2.5 in, $10 out, $1.25 cached per 1M → nano-dollars.
pub fn gpt_cost(uncached_in: i64, out: i64, cached: i64) -> i64 {
    // $2.5 per 1M tokens = 2500 nano-dollars a token.
    uncached_in * 2500 + out * 10_000 + cached * 1250
}

/// claude-test: $3 in, $15 out, $0.3 cache read, $3.75 cache write per 1M → nano-dollars.
pub fn claude_cost(input: i64, out: i64, cache_read: i64, cache_write: i64) -> i64 {
    input * 3000 + out * 15_000 + cache_read * 300 + cache_write * 3750
}

async fn sse_text(resp: reqwest::Response) -> String {
    String::from_utf8(resp.bytes().await.unwrap().to_vec()).unwrap()
}

fn events(text: &str) -> Vec<&str> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .collect()
}

#[tokio::test]
async fn forwards_non_streaming_both_protocols_with_the_right_headers() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let (_, kid, key) = funded_key(&app, "hdr").await;

    let r = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("x-custom-header", "kept")
        .header("proxy-authorization", "Basic dropme")
        .header("x-fake-prompt-tokens", "40")
        .header("x-fake-cached-tokens", "24")
        .header("x-fake-completion-tokens", "10")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["usage"]["prompt_tokens"], 64);

    let r = app
        .http
        .post(app.url("/v1/messages"))
        .header("x-api-key", &key)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "prompt-caching-2024-07-31")
        .header("x-fake-cached-tokens", "100")
        .header("x-fake-cache-write-tokens", "40")
        .json(&messages_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "message");

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    let (oa, an) = (&reqs[0], &reqs[1]);
    assert_eq!(oa.path, "/v1/chat/completions");
    assert_eq!(
        oa.header("authorization"),
        Some("Bearer sk-upstream-openai-secret")
    );
    assert_eq!(oa.header("x-custom-header"), Some("kept"));
    assert_eq!(oa.header("proxy-authorization"), None);
    assert_eq!(oa.header("x-api-key"), None);
    assert!(
        oa.headers.iter().all(|(_, v)| !v.contains(&key)),
        "client key forwarded"
    );
    assert_eq!(oa.json(), chat_body(false), "body forwarded unchanged");
    assert_eq!(an.path, "/v1/messages");
    assert_eq!(an.header("x-api-key"), Some("sk-ant-upstream-secret"));
    assert_eq!(an.header("authorization"), None);
    assert_eq!(an.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        an.header("anthropic-beta"),
        Some("prompt-caching-2024-07-31")
    );
    assert!(an.headers.iter().all(|(_, v)| !v.contains(&key)));

    app.wait_for_logs(2).await;
    let (_, logs) = app.get(&format!("/logs?api_key_id={kid}")).await;
    let rows = logs["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let (an_log, oa_log) = (&rows[0], &rows[1]);
    assert_eq!(oa_log["input_tokens"], 40);
    assert_eq!(oa_log["cache_read_tokens"], 24);
    assert_eq!(oa_log["output_tokens"], 10);
    assert_eq!(
        oa_log["cost"],
        tollgate::billing::money::Usd(gpt_cost(40, 10, 24)).to_string()
    );
    assert_eq!(oa_log["billing_status"], "complete");
    assert_eq!(an_log["input_tokens"], 12);
    assert_eq!(an_log["cache_read_tokens"], 100);
    assert_eq!(an_log["cache_write_tokens"], 40);
    assert_eq!(
        an_log["cost"],
        tollgate::billing::money::Usd(claude_cost(12, 8, 100, 40)).to_string()
    );
}

#[tokio::test]
async fn streams_reach_the_client_chunk_by_chunk() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let (_, _, key) = funded_key(&app, "slow").await;
    for (path, body) in [
        ("/v1/chat/completions", chat_body(true)),
        ("/v1/messages", messages_body(true)),
    ] {
        let t0 = Instant::now();
        let r = app
            .http
            .post(app.url(path))
            .bearer_auth(&key)
            .header("x-fake-chunks", "3")
            .header("x-fake-chunk-delay-ms", "400")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let mut s = r.bytes_stream();
        let first = s.next().await.unwrap().unwrap();
        let first_at = t0.elapsed();
        assert!(!first.is_empty());
        while s.next().await.is_some() {}
        let total = t0.elapsed();
        assert!(total >= Duration::from_millis(1200), "{path}: {total:?}");
        assert!(
            first_at < Duration::from_millis(600),
            "{path}: first chunk only after {first_at:?} of {total:?}"
        );
    }
}

#[tokio::test]
async fn openai_stream_usage_is_asked_for_and_hidden_unless_the_client_asked() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let (_, kid, key) = funded_key(&app, "strm").await;

    // The client did not ask: upstream is asked anyway; the client sees no usage at all.
    let r = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("x-fake-chunks", "4")
        .header("x-fake-completion-tokens", "20")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    let through = sse_text(r).await;
    let sent = fake.requests().last().unwrap().json();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    // What the provider itself sends to a client that did not ask:
    let direct = reqwest::Client::new()
        .post(format!("{}/chat/completions", fake.openai_base_url()))
        .header("x-fake-chunks", "4")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    let direct = sse_text(direct).await;
    let norm = |s: &str| {
        events(s)
            .iter()
            .map(|e| {
                let data = e.trim_start_matches("data: ");
                match serde_json::from_str::<Value>(data) {
                    Ok(mut v) => {
                        if let Some(o) = v.as_object_mut() {
                            o.remove("id");
                            o.remove("created");
                        }
                        v.to_string()
                    }
                    Err(_) => data.to_string(),
                }
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(norm(&through), norm(&direct));
    assert!(!through.contains("\"usage\""));
    assert!(through.trim_end().ends_with("data: [DONE]"));

    // The client asked: it gets the usage chunk.
    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let asked = sse_text(r).await;
    let usage_events: Vec<_> = events(&asked)
        .into_iter()
        .filter(|e| e.contains("\"usage\":{"))
        .collect();
    assert_eq!(usage_events.len(), 1);

    app.wait_for_logs(2).await;
    let (_, logs) = app.get(&format!("/logs?api_key_id={kid}")).await;
    let rows = logs["data"].as_array().unwrap();
    assert_eq!(rows[1]["output_tokens"], 20);
    assert_eq!(rows[1]["input_tokens"], 12);
    assert_eq!(rows[1]["stream"], true);
    assert_eq!(rows[1]["billing_status"], "complete");
    assert_eq!(
        rows[1]["cost"],
        tollgate::billing::money::Usd(gpt_cost(12, 20, 0)).to_string()
    );
}

#[tokio::test]
async fn anthropic_stream_usage_is_not_double_counted() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let (_, kid, key) = funded_key(&app, "anth").await;
    let r = app
        .http
        .post(app.url("/v1/messages"))
        .header("x-api-key", &key)
        .header("x-fake-prompt-tokens", "30")
        .header("x-fake-cached-tokens", "200")
        .header("x-fake-cache-write-tokens", "20")
        .header("x-fake-completion-tokens", "16")
        .json(&messages_body(true))
        .send()
        .await
        .unwrap();
    let text = sse_text(r).await;
    assert!(text.contains("event: message_start"));
    assert!(text.contains("event: message_stop"));
    app.wait_for_logs(1).await;
    let (_, logs) = app.get(&format!("/logs?api_key_id={kid}")).await;
    let row = &logs["data"][0];
    assert_eq!(
        (
            row["input_tokens"].as_i64(),
            row["cache_read_tokens"].as_i64(),
            row["cache_write_tokens"].as_i64(),
            row["output_tokens"].as_i64()
        ),
        (Some(30), Some(200), Some(20), Some(16))
    );
    assert_eq!(
        row["cost"],
        tollgate::billing::money::Usd(claude_cost(30, 16, 200, 20)).to_string()
    );
}

async fn expect_error(
    app: &TestApp,
    path: &str,
    key: Option<&str>,
    body: reqwest::Body,
    status: u16,
    kind: &str,
    code: Option<&str>,
) -> Value {
    let mut req = app
        .http
        .post(app.url(path))
        .header("content-type", "application/json")
        .body(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status().as_u16(), status, "{path}");
    let retry = r.headers().get("retry-after").cloned();
    let v: Value = r.json().await.unwrap();
    if path.starts_with("/v1/messages") {
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], kind, "{v}");
    } else {
        assert_eq!(v["error"]["type"], kind, "{v}");
        assert_eq!(v["error"]["code"].as_str(), code, "{v}");
    }
    assert!(
        !v.to_string().contains("sk-upstream"),
        "no secrets in errors"
    );
    if status == 429 && kind.starts_with("rate") {
        assert!(retry.is_some(), "Retry-After on rate limits");
    }
    v
}

#[tokio::test]
async fn admission_errors_in_each_providers_shape_change_nothing() {
    let app = spawn_with(Options {
        tweak: Some(Box::new(|c| c.server.max_body_bytes = 4096)),
        ..Default::default()
    })
    .await;
    let fake = FakeUpstream::start().await.unwrap();
    let (oa_id, an_id) = app.wire_upstream(&fake).await;
    let (uid, kid, key) = funded_key(&app, "adm").await;
    let chat = || reqwest::Body::from(chat_body(false).to_string());
    let msg = || reqwest::Body::from(messages_body(false).to_string());
    const C: &str = "/v1/chat/completions";
    const M: &str = "/v1/messages";

    // Keys: missing, unknown.
    expect_error(
        &app,
        C,
        None,
        chat(),
        401,
        "invalid_request_error",
        Some("invalid_api_key"),
    )
    .await;
    expect_error(&app, M, None, msg(), 401, "authentication_error", None).await;
    expect_error(
        &app,
        C,
        Some("sk-nope"),
        chat(),
        401,
        "invalid_request_error",
        Some("invalid_api_key"),
    )
    .await;
    // Revoked.
    let (rid, revoked) = app.key(uid, json!({"name": "r"})).await;
    app.patch(&format!("/keys/{rid}"), json!({"status": "revoked"}))
        .await;
    expect_error(
        &app,
        C,
        Some(&revoked),
        chat(),
        401,
        "invalid_request_error",
        Some("invalid_api_key"),
    )
    .await;
    expect_error(
        &app,
        M,
        Some(&revoked),
        msg(),
        401,
        "authentication_error",
        None,
    )
    .await;
    // Expired.
    let (_, expired) = app
        .key(
            uid,
            json!({"name": "e", "expires_at": "2020-01-01T00:00:00Z"}),
        )
        .await;
    expect_error(
        &app,
        C,
        Some(&expired),
        chat(),
        401,
        "invalid_request_error",
        Some("invalid_api_key"),
    )
    .await;
    // Disabled user → like a revoked key.
    let other = app.user("disabled-user").await;
    let (_, dkey) = app.key(other, json!({"name": "d"})).await;
    app.patch(&format!("/users/{other}"), json!({"status": "disabled"}))
        .await;
    expect_error(
        &app,
        C,
        Some(&dkey),
        chat(),
        401,
        "invalid_request_error",
        Some("invalid_api_key"),
    )
    .await;
    // Model not allowed.
    let (_, narrow) = app
        .key(uid, json!({"name": "n", "allowed_models": ["claude-test"]}))
        .await;
    expect_error(
        &app,
        C,
        Some(&narrow),
        chat(),
        403,
        "invalid_request_error",
        Some("model_not_allowed"),
    )
    .await;
    let (_, narrow2) = app
        .key(uid, json!({"name": "n2", "allowed_models": ["gpt-test"]}))
        .await;
    expect_error(
        &app,
        M,
        Some(&narrow2),
        msg(),
        403,
        "permission_error",
        None,
    )
    .await;
    // Unpriced model; priced but unserved model.
    let unpriced =
        reqwest::Body::from(json!({"model": "no-such-model", "messages": []}).to_string());
    expect_error(
        &app,
        C,
        Some(&key),
        unpriced,
        404,
        "invalid_request_error",
        Some("model_not_found"),
    )
    .await;
    app.put("/models/orphan", json!({"input": 1, "output": 1}))
        .await;
    app.patch(
        &format!("/accounts/{oa_id}"),
        json!({"models": ["gpt-test"]}),
    )
    .await;
    let orphan = reqwest::Body::from(json!({"model": "orphan", "messages": []}).to_string());
    expect_error(
        &app,
        C,
        Some(&key),
        orphan,
        404,
        "invalid_request_error",
        Some("model_not_found"),
    )
    .await;
    let orphan = reqwest::Body::from(
        json!({"model": "orphan", "messages": [], "max_tokens": 1}).to_string(),
    );
    app.patch(
        &format!("/accounts/{an_id}"),
        json!({"models": ["claude-test"]}),
    )
    .await;
    expect_error(&app, M, Some(&key), orphan, 404, "not_found_error", None).await;
    // Bad JSON, missing model, wrong types.
    for bad in [
        "{nope",
        "[1,2]",
        "{\"messages\":[]}",
        "{\"model\": 5}",
        "{\"model\":\"gpt-test\",\"stream\":\"yes\"}",
    ] {
        expect_error(
            &app,
            C,
            Some(&key),
            reqwest::Body::from(bad),
            400,
            "invalid_request_error",
            Some("invalid_request_error"),
        )
        .await;
        expect_error(
            &app,
            M,
            Some(&key),
            reqwest::Body::from(bad),
            400,
            "invalid_request_error",
            None,
        )
        .await;
    }
    // Over the body limit.
    let big =
        json!({"model": "gpt-test", "messages": [{"role": "user", "content": "x".repeat(5000)}]})
            .to_string();
    let r = app
        .http
        .post(app.url(C))
        .bearer_auth(&key)
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("4096"));
    let r = app
        .http
        .post(app.url(M))
        .bearer_auth(&key)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    // No package with room: a user whose only package is a used-up quota.
    let poor = app.user("poor").await;
    let q = app.package(json!({"name": "tiny", "type": "quota", "quota_total": "0.000000001", "duration_days": 1})).await;
    let g = app.grant(poor, q, None).await;
    let (pkid, pkey) = app.key(poor, json!({"name": "p"})).await;
    // Spend it with one real request, then the next is refused.
    let r = app
        .http
        .post(app.url(C))
        .bearer_auth(&pkey)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.wait_for_logs(1).await;
    for _ in 0..100 {
        if app.state.db.get_user_package(g).await.unwrap().quota_used > 0
            && app.state.proxy.reservations.total() == 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let v = expect_error(
        &app,
        C,
        Some(&pkey),
        chat(),
        429,
        "insufficient_quota",
        Some("insufficient_quota"),
    )
    .await;
    assert!(
        v["error"]["message"].as_str().unwrap().contains("quota"),
        "{v}"
    );
    let v = expect_error(&app, M, Some(&pkey), msg(), 402, "billing_error", None).await;
    assert!(
        v["error"]["message"].as_str().unwrap().contains("tiny"),
        "{v}"
    );
    // A user with no package at all.
    let none = app.user("nopkg").await;
    let (_, nkey) = app.key(none, json!({"name": "x"})).await;
    expect_error(
        &app,
        C,
        Some(&nkey),
        chat(),
        429,
        "insufficient_quota",
        Some("insufficient_quota"),
    )
    .await;

    // None of that reached upstream or changed a sink: only the one paid request did.
    assert_eq!(fake.request_count(), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let l = app.state.db.ledger().await.unwrap();
    assert_eq!(l.request_logs.requests, 1);
    assert_eq!(app.state.db.get_key(kid).await.unwrap().request_count, 0);
    assert_eq!(app.state.db.get_key(pkid).await.unwrap().request_count, 1);
}

#[tokio::test]
async fn daily_window_exhaustion_names_the_window_and_reset() {
    let start = chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 5, 1, 8, 0, 0).unwrap();
    let clock = tollgate::clock::Clock::manual(start + chrono::Duration::hours(6));
    let app = spawn_with(Options {
        clock: Some(clock),
        timezone: "Asia/Shanghai".into(),
        ..Default::default()
    })
    .await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let uid = app.user("daily").await;
    // One request costs 0.00011; a daily quota of 0.0001 is used up by the first.
    let pid = app.package(json!({"name": "D", "type": "subscription", "daily_quota": "0.0001", "duration_days": 30})).await;
    app.grant(uid, pid, Some(start)).await;
    let (_, key) = app.key(uid, json!({"name": "k"})).await;
    let r = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.wait_for_logs(1).await;
    for _ in 0..100 {
        if app.state.proxy.reservations.total() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    let m = v["error"]["message"].as_str().unwrap();
    // Now is 2026-05-01 14:00 UTC = 22:00 Shanghai; the day resets at 2026-05-02 00:00 +08:00.
    assert!(
        m.contains("daily") && m.contains("2026-05-02T00:00:00+08:00"),
        "{m}"
    );
    assert_eq!(
        app.state.db.ledger().await.unwrap().user_packages_cost,
        110_000
    );
}

#[tokio::test]
async fn a_database_failure_is_503_gateway_unavailable_never_401_or_502() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let (_, _, key) = funded_key(&app, "dbdown").await;
    let (_, _, unused) = funded_key(&app, "dbdown2").await;
    // One request while the database is up: its key, the price and the accounts are cached.
    let r = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.wait_for_logs(1).await;

    app.state.db.close().await;
    let chat = || reqwest::Body::from(chat_body(false).to_string());
    let msg = || reqwest::Body::from(messages_body(false).to_string());
    // A key that is not cached cannot be checked.
    for (path, body, kind, code) in [
        (
            "/v1/chat/completions",
            chat(),
            "server_error",
            Some("gateway_unavailable"),
        ),
        ("/v1/messages", msg(), "overloaded_error", None),
    ] {
        expect_error(&app, path, Some(&unused), body, 503, kind, code).await;
    }
    // A known key, but a price that is not cached.
    expect_error(
        &app,
        "/v1/messages",
        Some(&key),
        msg(),
        503,
        "overloaded_error",
        None,
    )
    .await;
    // The model list reads the prices.
    let r = app
        .http
        .get(app.url("/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "server_error", "{v}");
    assert_eq!(v["error"]["code"], "gateway_unavailable", "{v}");
    assert_eq!(fake.request_count(), 1, "nothing more reached upstream");
}
