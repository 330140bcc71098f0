//! Every refusal has a body (SPEC §11.7): bad bodies get the gateway's own 400 and never reach
//! upstream; unknown routes and wrong methods answer in their surface's JSON error shape.

use serde_json::Value;
use tollgate::fake_upstream::FakeUpstream;

use crate::helpers::*;
use crate::proxy::funded_key;

async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut r = app
        .http
        .request(method, app.url(path))
        .header("content-type", "application/json")
        .body(body);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, v)
}

#[tokio::test]
async fn invalid_utf8_and_deep_json_never_reach_upstream() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let (_, _, key) = funded_key(&app, "bodies").await;
    let mut utf8 = br#"{"model":"gpt-test","messages":[{"role":"user","content":"caf"#.to_vec();
    utf8.push(0xe9); // Latin-1 é: not UTF-8
    utf8.extend_from_slice(br#""}]}"#);
    let deep = |model: &str, n: usize| {
        format!(
            r#"{{"model":"{model}","max_tokens":8,"messages":[{{"role":"user","content":"hi"}}],"metadata":{}{}}}"#,
            "[".repeat(n),
            "]".repeat(n)
        )
        .into_bytes()
    };
    for (path, body, want) in [
        ("/v1/chat/completions", utf8.clone(), "not valid UTF-8"),
        ("/v1/messages", utf8.clone(), "not valid UTF-8"),
        (
            "/v1/chat/completions",
            deep("gpt-test", 128),
            "deeper than 128",
        ),
        ("/v1/messages", deep("claude-test", 5000), "deeper than 128"),
    ] {
        let (status, v) = send(&app, reqwest::Method::POST, path, Some(&key), body).await;
        assert_eq!(status, 400, "{path}: {v}");
        let message = if path == "/v1/messages" {
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], "invalid_request_error");
            v["error"]["message"].as_str().unwrap().to_string()
        } else {
            assert_eq!(v["error"]["type"], "invalid_request_error");
            v["error"]["message"].as_str().unwrap().to_string()
        };
        assert!(message.contains(want), "{path}: {message}");
    }
    assert_eq!(fake.request_count(), 0, "nothing reached upstream");
    // 128 levels in all (the body object and 127 arrays) are the gateway's to pass on: it
    // reaches upstream (whose own parser, serde_json here, stops at 127 and answers 400 itself).
    let (status, v) = send(
        &app,
        reqwest::Method::POST,
        "/v1/chat/completions",
        Some(&key),
        deep("gpt-test", 127),
    )
    .await;
    assert_eq!(fake.request_count(), 1, "{status} {v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("We could not parse"));
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_in_json() {
    let app = spawn_app().await;
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;

    let (status, v) = send(&app, post.clone(), "/v1/chat/complete", None, vec![]).await;
    assert_eq!(status, 404);
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["code"], "unknown_endpoint");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains("POST /v1/chat/complete"), "{m}");
    assert!(!m.contains("twice"), "{m}");

    let (status, v) = send(&app, post.clone(), "/v1/v1/chat/completions", None, vec![]).await;
    assert_eq!(status, 404);
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("POST /v1/v1/chat/completions") && m.contains("/v1 twice"),
        "{m}"
    );

    let (status, v) = send(&app, get.clone(), "/v1/chat/completions", None, vec![]).await;
    assert_eq!(status, 405, "{v}");
    assert_eq!(v["error"]["code"], "method_not_allowed");
    assert!(v["error"]["message"].as_str().unwrap().contains("GET"));

    let (status, v) = app.get("/no-such-thing").await;
    assert_eq!(status, 404);
    assert_eq!(v["error"]["code"], "unknown_endpoint", "{v}");
    assert_eq!(v["error"]["type"], "not_found_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("GET /api/admin/no-such-thing"));

    let (status, v) = app.admin(reqwest::Method::DELETE, "/users", None).await;
    assert_eq!(status, 405, "{v}");
    assert_eq!(v["error"]["code"], "method_not_allowed");

    // The root leads to the console.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirects.get(app.url("/")).send().await.unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    assert_eq!(r.headers()["location"], "/admin");
}
