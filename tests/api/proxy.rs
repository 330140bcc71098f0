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
    assert_eq!(oa.query, None, "no query invented");
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
async fn query_strings_are_forwarded_unchanged() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let (_, _, key) = funded_key(&app, "query").await;
    let q = "api-version=2024-06-01&tag=a%20b&tag=c";
    let r = app
        .http
        .post(app.url(&format!("/v1/chat/completions?{q}")))
        .bearer_auth(&key)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .http
        .post(app.url("/v1/messages?beta=true"))
        .header("x-api-key", &key)
        .json(&messages_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let reqs = fake.requests();
    assert_eq!(reqs[0].path, "/v1/chat/completions");
    assert_eq!(reqs[0].query.as_deref(), Some(q));
    assert_eq!(reqs[1].path, "/v1/messages");
    assert_eq!(reqs[1].query.as_deref(), Some("beta=true"));
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

/// One refusal the proxy must give: the request, and what the answer must be.
struct Refusal {
    name: &'static str,
    path: &'static str,
    key: Option<String>,
    body: String,
    status: u16,
    /// `error.type` on both protocols.
    kind: &'static str,
    /// `error.code` (OpenAI routes only).
    code: Option<&'static str>,
    /// A text the message must contain.
    says: Option<&'static str>,
    /// The retry hint the answer must carry (SPEC §11.4).
    retry: Hint,
}

/// What a refusal tells the client about retrying.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Hint {
    /// `x-should-retry: false` and no `Retry-After`.
    Final,
    /// `Retry-After: N` with N ≥ 1, and no `x-should-retry: false`.
    After,
    /// Neither header.
    None,
}

/// Send one refusal case; the answer's body, or what was wrong with the answer.
async fn check_refusal(app: &TestApp, case: &Refusal) -> Result<Value, String> {
    let mut req = app
        .http
        .post(app.url(case.path))
        .header("content-type", "application/json")
        .body(case.body.clone());
    if let Some(k) = &case.key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let header = |n: &str| {
        r.headers()
            .get(n)
            .map(|v| v.to_str().unwrap_or("").to_string())
    };
    let hint = match (header("x-should-retry"), header("retry-after")) {
        (Some(f), None) if f == "false" => Some(Hint::Final),
        (None, Some(n)) if n.parse::<u64>().is_ok_and(|n| n >= 1) => Some(Hint::After),
        (None, None) => Some(Hint::None),
        _ => None,
    };
    let headers = (header("x-should-retry"), header("retry-after"));
    let v: Value = r
        .json()
        .await
        .map_err(|e| format!("body is not JSON: {e}"))?;
    let mut wrong = Vec::new();
    if status != case.status {
        wrong.push(format!("status {status}, want {}", case.status));
    }
    if case.path.starts_with("/v1/messages") {
        if v["type"] != "error" {
            wrong.push("type is not \"error\"".to_string());
        }
    } else if v["error"]["code"].as_str() != case.code {
        wrong.push(format!("code {}, want {:?}", v["error"]["code"], case.code));
    }
    if v["error"]["type"] != case.kind {
        wrong.push(format!(
            "error.type {}, want {}",
            v["error"]["type"], case.kind
        ));
    }
    if let Some(text) = case.says {
        if !v["error"]["message"].as_str().unwrap_or("").contains(text) {
            wrong.push(format!("message does not say {text:?}"));
        }
    }
    if v.to_string().contains("sk-upstream") {
        wrong.push("a secret in the error".to_string());
    }
    if hint != Some(case.retry) {
        wrong.push(format!(
            "retry hint (x-should-retry, retry-after) = {headers:?}, want {:?}",
            case.retry
        ));
    }
    if wrong.is_empty() {
        Ok(v)
    } else {
        Err(format!("{}: {} (body {v})", case.name, wrong.join("; ")))
    }
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

    // Keys that must be refused: revoked, expired, of a disabled user, limited to other models.
    let (rid, revoked) = app.key(uid, json!({"name": "r"})).await;
    app.patch(&format!("/keys/{rid}"), json!({"status": "revoked"}))
        .await;
    let (_, expired) = app
        .key(
            uid,
            json!({"name": "e", "expires_at": "2020-01-01T00:00:00Z"}),
        )
        .await;
    let other = app.user("disabled-user").await;
    let (_, disabled) = app.key(other, json!({"name": "d"})).await;
    app.patch(&format!("/users/{other}"), json!({"status": "disabled"}))
        .await;
    let (_, claude_only) = app
        .key(uid, json!({"name": "n", "allowed_models": ["claude-test"]}))
        .await;
    let (_, gpt_only) = app
        .key(uid, json!({"name": "n2", "allowed_models": ["gpt-test"]}))
        .await;
    // A priced model that no account serves.
    app.put("/models/orphan", json!({"input": 1, "output": 1}))
        .await;
    app.patch(
        &format!("/accounts/{oa_id}"),
        json!({"models": ["gpt-test"]}),
    )
    .await;
    app.patch(
        &format!("/accounts/{an_id}"),
        json!({"models": ["claude-test"]}),
    )
    .await;
    // A user whose only package is a quota spent by one real request, and one with none.
    let poor = app.user("poor").await;
    let q = app.package(json!({"name": "tiny", "type": "quota", "quota_total": "0.000000001", "duration_days": 1})).await;
    let g = app.grant(poor, q, None).await;
    let (pkid, pkey) = app.key(poor, json!({"name": "p"})).await;
    let r = app
        .http
        .post(app.url("/v1/chat/completions"))
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
    let none = app.user("nopkg").await;
    let (_, nkey) = app.key(none, json!({"name": "x"})).await;

    const C: &str = "/v1/chat/completions";
    const M: &str = "/v1/messages";
    let chat = chat_body(false).to_string();
    let msg = messages_body(false).to_string();
    let big =
        json!({"model": "gpt-test", "messages": [{"role": "user", "content": "x".repeat(5000)}]})
            .to_string();
    let k = |s: &str| Some(s.to_string());
    // 400 and 413 carry no hint; 401, 403, 404 and quota refusals are final.
    let hint = |status| match status {
        401 | 402 | 403 | 404 | 429 => Hint::Final,
        _ => Hint::None,
    };
    let openai = |name, key: Option<String>, body: &str, status, kind, code, says| Refusal {
        name,
        path: C,
        key,
        body: body.to_string(),
        status,
        kind,
        code: Some(code),
        says,
        retry: hint(status),
    };
    let anthropic = |name, key: Option<String>, body: &str, status, kind, says| Refusal {
        name,
        path: M,
        key,
        body: body.to_string(),
        status,
        kind,
        code: None,
        says,
        retry: hint(status),
    };
    const BAD_KEY: (u16, &str, &str) = (401, "invalid_request_error", "invalid_api_key");
    let mut cases = vec![
        openai(
            "openai: missing key",
            None,
            &chat,
            BAD_KEY.0,
            BAD_KEY.1,
            BAD_KEY.2,
            None,
        ),
        anthropic(
            "anthropic: missing key",
            None,
            &msg,
            401,
            "authentication_error",
            None,
        ),
        openai(
            "openai: unknown key",
            k("sk-nope"),
            &chat,
            BAD_KEY.0,
            BAD_KEY.1,
            BAD_KEY.2,
            None,
        ),
        openai(
            "openai: revoked key",
            k(&revoked),
            &chat,
            BAD_KEY.0,
            BAD_KEY.1,
            BAD_KEY.2,
            None,
        ),
        anthropic(
            "anthropic: revoked key",
            k(&revoked),
            &msg,
            401,
            "authentication_error",
            None,
        ),
        openai(
            "openai: expired key",
            k(&expired),
            &chat,
            BAD_KEY.0,
            BAD_KEY.1,
            BAD_KEY.2,
            None,
        ),
        openai(
            "openai: key of a disabled user",
            k(&disabled),
            &chat,
            BAD_KEY.0,
            BAD_KEY.1,
            BAD_KEY.2,
            None,
        ),
        openai(
            "openai: model not allowed",
            k(&claude_only),
            &chat,
            403,
            "invalid_request_error",
            "model_not_allowed",
            None,
        ),
        anthropic(
            "anthropic: model not allowed",
            k(&gpt_only),
            &msg,
            403,
            "permission_error",
            None,
        ),
        openai(
            "openai: unpriced model",
            k(&key),
            &json!({"model": "no-such-model", "messages": []}).to_string(),
            404,
            "invalid_request_error",
            "model_not_found",
            None,
        ),
        openai(
            "openai: priced model no account serves",
            k(&key),
            &json!({"model": "orphan", "messages": []}).to_string(),
            404,
            "invalid_request_error",
            "model_not_found",
            None,
        ),
        anthropic(
            "anthropic: priced model no account serves",
            k(&key),
            &json!({"model": "orphan", "messages": [], "max_tokens": 1}).to_string(),
            404,
            "not_found_error",
            None,
        ),
        openai(
            "openai: over the body limit",
            k(&key),
            &big,
            413,
            "invalid_request_error",
            "request_too_large",
            Some("4096"),
        ),
        anthropic(
            "anthropic: over the body limit",
            k(&key),
            &big,
            413,
            "request_too_large",
            None,
        ),
        openai(
            "openai: used-up quota",
            k(&pkey),
            &chat,
            429,
            "insufficient_quota",
            "insufficient_quota",
            Some("quota"),
        ),
        anthropic(
            "anthropic: used-up quota",
            k(&pkey),
            &msg,
            402,
            "billing_error",
            Some("tiny"),
        ),
        openai(
            "openai: no package at all",
            k(&nkey),
            &chat,
            429,
            "insufficient_quota",
            "insufficient_quota",
            None,
        ),
    ];
    // Bad JSON, missing model, wrong types.
    for (what, bad) in [
        ("not JSON", "{nope"),
        ("an array", "[1,2]"),
        ("no model", "{\"messages\":[]}"),
        ("model not a string", "{\"model\": 5}"),
        (
            "stream not a boolean",
            "{\"model\":\"gpt-test\",\"stream\":\"yes\"}",
        ),
    ] {
        let name = |p: &str| -> &'static str { format!("{p}: body {what}").leak() };
        cases.push(openai(
            name("openai"),
            k(&key),
            bad,
            400,
            "invalid_request_error",
            "invalid_request_error",
            None,
        ));
        cases.push(anthropic(
            name("anthropic"),
            k(&key),
            bad,
            400,
            "invalid_request_error",
            None,
        ));
    }
    let mut failures = Vec::new();
    for case in &cases {
        if let Err(e) = check_refusal(&app, case).await {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} refusals wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

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
    let (chat, msg) = (
        chat_body(false).to_string(),
        messages_body(false).to_string(),
    );
    let case = |name, path, key: &str, body: &str, kind, code| Refusal {
        name,
        path,
        key: Some(key.to_string()),
        body: body.to_string(),
        status: 503,
        kind,
        code,
        says: None,
        retry: Hint::After,
    };
    let cases = [
        // A key that is not cached cannot be checked.
        case(
            "openai: uncached key",
            "/v1/chat/completions",
            &unused,
            &chat,
            "server_error",
            Some("gateway_unavailable"),
        ),
        case(
            "anthropic: uncached key",
            "/v1/messages",
            &unused,
            &msg,
            "overloaded_error",
            None,
        ),
        // A known key, but a price that is not cached.
        case(
            "anthropic: uncached price",
            "/v1/messages",
            &key,
            &msg,
            "overloaded_error",
            None,
        ),
    ];
    let mut failures = Vec::new();
    for c in &cases {
        if let Err(e) = check_refusal(&app, c).await {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
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

/// A stream that reports no usage is charged from the text of its deltas (about four
/// characters a token), not from the bytes of its events: a 3-word answer is a handful of
/// tokens, not hundreds.
#[tokio::test]
async fn a_usage_less_stream_is_estimated_from_its_text() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let (_, kid, key) = funded_key(&app, "nousage").await;
    // (The fake's Anthropic stream always reports usage: its message_start carries it.)
    for (path, body) in [
        ("/v1/chat/completions", chat_body(true)),
        (
            "/v1/responses",
            json!({"model": "gpt-test", "input": "hi", "stream": true}),
        ),
    ] {
        let r = app
            .http
            .post(app.url(path))
            .bearer_auth(&key)
            .header("x-api-key", &key)
            .header("anthropic-version", "2023-06-01")
            .header("x-fake-no-usage", "1")
            .header("x-fake-chunks", "3")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = sse_text(r).await;
        assert!(text.len() > 300, "the events are far larger than the text");
    }
    app.wait_for_logs(2).await;
    let (_, v) = app.get(&format!("/logs?api_key_id={kid}")).await;
    let rows = v["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        assert_eq!(r["billing_status"], "estimated", "{r}");
        let out = r["output_tokens"].as_i64().unwrap();
        println!("usage-less stream {}: output_tokens = {out}", r["endpoint"]);
        assert!((1..=8).contains(&out), "3 words ≈ a handful of tokens: {r}");
    }
}
