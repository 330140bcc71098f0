//! Upstream accounts that heal themselves (SPEC §11.2): the failure threshold, never refusing
//! while an account might serve, and `auth_failed` on a refused secret.

use std::time::Duration;

use serde_json::{json, Value};
use tollgate::fake_upstream::FakeUpstream;

use crate::helpers::*;
use crate::proxy::{chat_body, funded_key, messages_body};

async fn send(app: &TestApp, key: &str, anthropic: bool) -> reqwest::Response {
    let (path, body) = if anthropic {
        ("/v1/messages", messages_body(false))
    } else {
        ("/v1/chat/completions", chat_body(false))
    };
    app.http
        .post(app.url(path))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn account(app: &TestApp, id: i64) -> Value {
    let (s, v) = app.get(&format!("/accounts/{id}")).await;
    assert_eq!(s, 200, "{v}");
    v
}

#[tokio::test]
async fn an_account_cools_down_after_the_threshold_and_still_serves_when_all_cool() {
    let app = spawn_with(Options {
        tweak: Some(Box::new(|c| c.upstream.cooldown_secs = 60)),
        ..Default::default()
    })
    .await;
    let fake = FakeUpstream::start().await.unwrap();
    let (oa, an) = app.wire_upstream(&fake).await;
    let (_, _, key) = funded_key(&app, "healing").await;
    for (anthropic, id) in [(false, oa), (true, an)] {
        fake.set_fail_status(Some(500));
        // Default threshold 3: two failures leave the account in rotation.
        for n in 1..=2 {
            assert_eq!(send(&app, &key, anthropic).await.status(), 500);
            let acc = account(&app, id).await;
            assert_eq!(
                (acc["health"].as_str(), acc["consecutive_failures"].as_u64()),
                (Some("ok"), Some(n)),
                "{acc}"
            );
        }
        assert_eq!(send(&app, &key, anthropic).await.status(), 500);
        let acc = account(&app, id).await;
        assert_eq!(acc["health"], "cooling_down", "{acc}");
        assert_eq!(acc["consecutive_failures"], 3, "{acc}");
        assert!(acc["cooldown_remaining_secs"].as_u64().unwrap() >= 59);
        // The only account is cooling down: the request still reaches upstream, and its
        // success brings the account back.
        fake.set_fail_status(None);
        let before = fake.request_count();
        assert_eq!(send(&app, &key, anthropic).await.status(), 200);
        assert_eq!(fake.request_count(), before + 1);
        let acc = account(&app, id).await;
        assert_eq!(
            (acc["health"].as_str(), acc["consecutive_failures"].as_u64()),
            (Some("ok"), Some(0)),
            "{acc}"
        );
        assert!(acc["cooldown_remaining_secs"].is_null(), "{acc}");
    }
}

#[tokio::test]
async fn a_refused_secret_takes_the_account_out_until_an_admin_edits_it() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    let (oa, an) = app.wire_upstream(&fake).await;
    let (_, _, key) = funded_key(&app, "revoked").await;
    for (anthropic, id, status) in [(false, oa, 401), (true, an, 403)] {
        fake.set_fail_status(Some(status));
        // The upstream's answer is passed on for the request that met it.
        let r = send(&app, &key, anthropic).await;
        assert_eq!(r.status(), status);
        let v: Value = r.json().await.unwrap();
        let upstream_message = v["error"]["message"].as_str().unwrap().to_string();
        let mut acc = account(&app, id).await;
        for _ in 0..50 {
            if acc["last_error"].is_string() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            acc = account(&app, id).await;
        }
        assert_eq!(acc["health"], "auth_failed", "{acc}");
        assert_eq!(acc["consecutive_failures"], 1, "{acc}");
        let last_error = acc["last_error"].as_str().unwrap();
        assert!(last_error.contains(&status.to_string()), "{acc}");
        assert!(last_error.contains(&upstream_message), "{acc}");
        // Left out: the only account serving the model is auth_failed → 503, upstream untouched.
        let before = fake.request_count();
        let r = send(&app, &key, anthropic).await;
        assert_eq!(r.status(), 503);
        let v: Value = r.json().await.unwrap();
        if anthropic {
            assert_eq!(
                (v["type"].as_str(), v["error"]["type"].as_str()),
                (Some("error"), Some("overloaded_error")),
                "{v}"
            );
        } else {
            assert_eq!(
                (v["error"]["code"].as_str(), v["error"]["type"].as_str()),
                (Some("no_available_account"), Some("server_error")),
                "{v}"
            );
        }
        assert_eq!(fake.request_count(), before);
        // Still out after its upstream recovers: only an administrator brings it back.
        fake.set_fail_status(None);
        assert_eq!(send(&app, &key, anthropic).await.status(), 503);
        let (s, v) = app
            .patch(
                &format!("/accounts/{id}"),
                json!({"api_key": "sk-new-secret"}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["health"], "ok", "{v}");
        assert_eq!(send(&app, &key, anthropic).await.status(), 200);
    }
    // Re-enabling is the other way back.
    fake.set_fail_status(Some(401));
    assert_eq!(send(&app, &key, false).await.status(), 401);
    assert_eq!(account(&app, oa).await["health"], "auth_failed");
    fake.set_fail_status(None);
    let (s, _) = app
        .patch(&format!("/accounts/{oa}"), json!({"status": "disabled"}))
        .await;
    assert_eq!(s, 200);
    let (s, v) = app
        .patch(&format!("/accounts/{oa}"), json!({"status": "active"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["health"], "ok", "{v}");
    assert_eq!(send(&app, &key, false).await.status(), 200);
}

#[tokio::test]
async fn every_serving_account_disabled_answers_503_in_each_shape() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    let (oa, an) = app.wire_upstream(&fake).await;
    let (_, _, key) = funded_key(&app, "disabled").await;
    for id in [oa, an] {
        let (s, _) = app
            .patch(&format!("/accounts/{id}"), json!({"status": "disabled"}))
            .await;
        assert_eq!(s, 200);
    }
    let r = send(&app, &key, false).await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["error"]["code"].as_str(), v["error"]["type"].as_str()),
        (Some("no_available_account"), Some("server_error")),
        "{v}"
    );
    let r = send(&app, &key, true).await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["type"].as_str(), v["error"]["type"].as_str()),
        (Some("error"), Some("overloaded_error")),
        "{v}"
    );
    assert_eq!(fake.request_count(), 0);
}
