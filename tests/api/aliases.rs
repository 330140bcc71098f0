//! Model aliases (SPEC §11.2, issue 12 point 6): an account's `model_map` sends the client's
//! model name upstream as the account's own, and the answer never shows the upstream name.

use serde_json::{json, Value};
use tollgate::fake_upstream::FakeUpstream;

use crate::helpers::*;

const GPT_ALIAS: &str = "gpt-alias";
const GPT_UPSTREAM: &str = "gpt-upstream-secret-name";
const CLAUDE_ALIAS: &str = "claude-sonnet-4";
const CLAUDE_UPSTREAM: &str = "claude-upstream-secret-name";

/// Accounts on both protocols that know the client names by others; prices for the client
/// names only; a key allowed only the client names. Returns the key.
async fn aliased_gateway(app: &TestApp, fake: &FakeUpstream) -> String {
    for (name, provider, url, alias, upstream) in [
        (
            "oa",
            "openai",
            fake.openai_base_url(),
            GPT_ALIAS,
            GPT_UPSTREAM,
        ),
        (
            "an",
            "anthropic",
            fake.anthropic_base_url(),
            CLAUDE_ALIAS,
            CLAUDE_UPSTREAM,
        ),
    ] {
        // The models list names something else: the alias alone makes it serve the client name.
        let (s, v) = app
            .post(
                "/accounts",
                json!({"name": name, "provider": provider, "base_url": url, "api_key": "sk-up",
                       "models": ["unrelated-model"], "model_map": {alias: upstream}}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["model_map"], json!({alias: upstream}), "{v}");
    }
    for model in [GPT_ALIAS, CLAUDE_ALIAS] {
        let (s, v) = app
            .put(
                &format!("/models/{model}"),
                json!({"input": "1", "output": "2"}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
    let uid = app.user("alias-user").await;
    let pid = app
        .package(json!({"name": "p", "type": "quota", "quota_total": "100", "duration_days": 30}))
        .await;
    app.grant(uid, pid, None).await;
    let (_, key) = app
        .key(
            uid,
            json!({"name": "k", "allowed_models": [GPT_ALIAS, CLAUDE_ALIAS]}),
        )
        .await;
    key
}

/// Every `model` member of an answer (the body's own, and the one an event wraps), with the
/// count of them; the caller checks there was at least one.
fn model_fields(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for m in [&v["model"], &v["message"]["model"], &v["response"]["model"]] {
        if let Some(s) = m.as_str() {
            out.push(s.to_string());
        }
    }
    out
}

/// The JSON payloads of an SSE body's events.
fn sse_payloads(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| {
            e.lines()
                .find_map(|l| l.strip_prefix("data: "))
                .and_then(|d| serde_json::from_str(d).ok())
        })
        .collect()
}

#[tokio::test]
async fn aliases_reach_upstream_by_its_name_and_answer_by_the_clients_on_both_protocols() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    let key = aliased_gateway(&app, &fake).await;
    let cases = [
        ("/v1/chat/completions", GPT_ALIAS, GPT_UPSTREAM, false),
        ("/v1/chat/completions", GPT_ALIAS, GPT_UPSTREAM, true),
        ("/v1/responses", GPT_ALIAS, GPT_UPSTREAM, false),
        ("/v1/responses", GPT_ALIAS, GPT_UPSTREAM, true),
        ("/v1/messages", CLAUDE_ALIAS, CLAUDE_UPSTREAM, false),
        ("/v1/messages", CLAUDE_ALIAS, CLAUDE_UPSTREAM, true),
    ];
    for (path, alias, upstream, stream) in cases {
        let case = format!("{path} stream={stream}");
        fake.clear_requests();
        let body = match path {
            "/v1/responses" => json!({"model": alias, "input": "hi", "stream": stream}),
            "/v1/messages" => {
                json!({"model": alias, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], "stream": stream})
            }
            _ => {
                json!({"model": alias, "messages": [{"role": "user", "content": "hi"}], "stream": stream})
            }
        };
        let r = app
            .http
            .post(app.url(path))
            .bearer_auth(&key)
            .header("x-api-key", &key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{case}");
        let text = r.text().await.unwrap();
        // The upstream was asked for its own name, the rest of the body as the client sent it.
        let sent = fake.requests();
        assert_eq!(sent.len(), 1, "{case}");
        let got = sent[0].json();
        assert_eq!(got["model"], upstream, "{case}: upstream got {got}");
        assert_eq!(got["max_tokens"], body["max_tokens"], "{case}");
        // The client never sees the upstream name; every model member carries its own.
        assert!(
            !text.contains(upstream),
            "{case}: the upstream name leaked: {text}"
        );
        let models: Vec<String> = if stream {
            sse_payloads(&text).iter().flat_map(model_fields).collect()
        } else {
            model_fields(&serde_json::from_str(&text).unwrap())
        };
        assert!(!models.is_empty(), "{case}: no model member in {text}");
        assert!(models.iter().all(|m| m == alias), "{case}: {models:?}");
        println!("{case}: {} model members, all `{alias}`", models.len());
    }
    // Logs, prices and the key's allowed models use the client's name.
    app.wait_for_logs(cases.len() as i64).await;
    let (_, logs) = app.get("/logs?limit=100").await;
    let rows = logs["data"].as_array().unwrap();
    assert_eq!(rows.len(), cases.len(), "{logs}");
    for row in rows {
        let m = row["model"].as_str().unwrap();
        assert!(m == GPT_ALIAS || m == CLAUDE_ALIAS, "{row}");
        assert_ne!(row["cost"], "0", "priced by the client's name: {row}");
    }
    // The upstream name itself is neither served by these accounts nor allowed to the key.
    let r = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": GPT_UPSTREAM, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "{}", r.text().await.unwrap());
}

#[tokio::test]
async fn without_an_alias_the_model_goes_and_comes_back_as_it_was() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    // An account with aliases for other names serves the rest unchanged (empty models list).
    let (s, v) = app
        .post(
            "/accounts",
            json!({"name": "oa", "provider": "openai", "base_url": fake.openai_base_url(),
                   "api_key": "sk-up", "model_map": {"other": "other-upstream"}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    app.put("/models/gpt-test", json!({"input": "1", "output": "2"}))
        .await;
    let (_, _, key) = crate::proxy::funded_key(&app, "plain").await;
    let r = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&crate::proxy::chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert_eq!(fake.requests()[0].json()["model"], "gpt-test");
    let models: Vec<String> = sse_payloads(&text).iter().flat_map(model_fields).collect();
    assert!(!models.is_empty());
    assert!(models.iter().all(|m| m == "gpt-test"), "{models:?}");
}

#[tokio::test]
async fn a_model_map_that_is_not_one_is_refused_naming_the_field_and_nothing_is_written() {
    let app = spawn_app().await;
    let account = |map: Value| {
        json!({"name": "a", "provider": "openai", "base_url": "https://up.example/v1",
               "api_key": "sk-x", "model_map": map})
    };
    let bad = [
        json!("claude=claude-x"),
        json!(["a", "b"]),
        json!(3),
        json!({"a": ""}),
        json!({"a": "   "}),
        json!({"": "b"}),
        json!({"a": 3}),
        json!({"a": null}),
        json!({"a": {"b": "c"}}),
    ];
    for map in &bad {
        let (s, v) = app.post("/accounts", account(map.clone())).await;
        assert_eq!(s, 400, "{map}: {v}");
        assert_eq!(v["error"]["param"], "model_map", "{map}: {v}");
        assert_eq!(v["error"]["code"], "invalid_value", "{map}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.starts_with("`model_map`: must be a JSON object"),
            "{msg}"
        );
    }
    let (_, list) = app.get("/accounts").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0, "{list}");

    // On edit: refused, the stored map kept; `{}` clears it.
    let (s, v) = app.post("/accounts", account(json!({" a ": " b "}))).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["model_map"], json!({"a": "b"}), "names are trimmed");
    let id = v["id"].as_i64().unwrap();
    for map in &bad {
        let (s, v) = app
            .patch(&format!("/accounts/{id}"), json!({"model_map": map}))
            .await;
        assert_eq!(s, 400, "{map}: {v}");
        assert_eq!(v["error"]["param"], "model_map", "{v}");
    }
    let (_, v) = app.get(&format!("/accounts/{id}")).await;
    assert_eq!(v["model_map"], json!({"a": "b"}), "{v}");
    // Other edits keep it.
    let (s, v) = app
        .patch(&format!("/accounts/{id}"), json!({"weight": 3}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model_map"], json!({"a": "b"}), "{v}");
    let (s, v) = app
        .patch(&format!("/accounts/{id}"), json!({"model_map": {}}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model_map"], json!({}), "{v}");
}
