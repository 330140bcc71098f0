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

async fn metrics_text(app: &TestApp) -> String {
    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The value of one series (full name with labels) in a `/metrics` text; 0 when absent.
fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

async fn until_health(app: &TestApp, id: i64, want: &str, within: Duration) -> Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let acc = account(app, id).await;
        if acc["health"] == want || std::time::Instant::now() > deadline {
            return acc;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_cooling_account_is_probed_back_without_client_traffic_and_never_billed() {
    let app = spawn_with(Options {
        tweak: Some(Box::new(|c| {
            c.upstream.cooldown_secs = 60;
            c.upstream.failure_threshold = 1;
            c.upstream.probe_interval_secs = 1;
        })),
        ..Default::default()
    })
    .await;
    let fake = FakeUpstream::start().await.unwrap();
    let (oa, an) = app.wire_upstream(&fake).await;
    let (_, kid, key) = funded_key(&app, "probed").await;
    let cases = [
        (
            false,
            oa,
            ("authorization", "Bearer sk-upstream-openai-secret"),
        ),
        (true, an, ("x-api-key", "sk-ant-upstream-secret")),
    ];
    for (anthropic, id, (auth_header, secret)) in cases {
        fake.set_fail_status(Some(500));
        assert_eq!(send(&app, &key, anthropic).await.status(), 500);
        assert_eq!(account(&app, id).await["health"], "cooling_down");
        // Probes that fail, even with a refused secret, keep the cooldown as it is and never
        // mark the account auth_failed.
        fake.set_fail_status(Some(401));
        fake.clear_requests();
        tokio::time::sleep(Duration::from_millis(2300)).await;
        let acc = account(&app, id).await;
        assert_eq!(acc["health"], "cooling_down", "{acc}");
        let left = acc["cooldown_remaining_secs"].as_u64().unwrap();
        assert!((55..=60).contains(&left), "{acc}");
        assert!(fake.request_count() >= 1, "no probe was sent");
        // Upstream heals: the account is back with no client request.
        fake.set_fail_status(None);
        fake.clear_requests();
        let healed = std::time::Instant::now();
        let acc = until_health(&app, id, "ok", Duration::from_secs(5)).await;
        let back = healed.elapsed();
        println!(
            "{}: back in rotation {} ms after upstream healed (probe interval 1 s)",
            if anthropic { "anthropic" } else { "openai" },
            back.as_millis()
        );
        assert_eq!(acc["health"], "ok", "{acc}");
        assert_eq!(acc["consecutive_failures"], 0, "{acc}");
        assert!(back < Duration::from_millis(2500), "{back:?}");
        // What upstream saw: only the probe, a GET of the models list with the account's
        // secret (OpenAI: {base}/models with base …/v1; Anthropic: {base}/v1/models).
        let seen = fake.requests();
        assert!(!seen.is_empty());
        for r in &seen {
            assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/v1/models"));
            assert_eq!(r.header(auth_header), Some(secret));
            assert!(r.body.is_empty());
        }
    }
    // Never billed: the only usage rows are the two client requests'; the key spent nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, logs) = app.get("/logs?limit=100").await;
    let rows = logs["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{logs}");
    assert!(rows.iter().all(|r| r["status"] == 500), "{logs}");
    let (_, k) = app.get(&format!("/keys/{kid}")).await;
    assert_eq!(k["used_cost"], "0.000000000", "{k}");
    let text = metrics_text(&app).await;
    let (ok, failed) = (
        series(&text, "tollgate_probes_total{result=\"ok\"}"),
        series(&text, "tollgate_probes_total{result=\"failed\"}"),
    );
    println!("probes: {ok} ok, {failed} failed");
    assert!(ok >= 2.0 && failed >= 2.0, "{text}");
    assert_eq!(series(&text, "tollgate_accounts{health=\"ok\"}"), 2.0);
    assert_eq!(
        series(&text, "tollgate_accounts{health=\"cooling_down\"}"),
        0.0
    );
}

#[tokio::test]
async fn probes_can_be_turned_off() {
    let app = spawn_with(Options {
        tweak: Some(Box::new(|c| {
            c.upstream.cooldown_secs = 60;
            c.upstream.failure_threshold = 1;
            c.upstream.probe_interval_secs = 0;
        })),
        ..Default::default()
    })
    .await;
    let fake = FakeUpstream::start().await.unwrap();
    let (oa, _) = app.wire_upstream(&fake).await;
    let (_, _, key) = funded_key(&app, "unprobed").await;
    fake.set_fail_status(Some(500));
    assert_eq!(send(&app, &key, false).await.status(), 500);
    fake.set_fail_status(None);
    fake.clear_requests();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(fake.request_count(), 0);
    assert_eq!(account(&app, oa).await["health"], "cooling_down");
}

#[tokio::test]
async fn the_test_endpoint_probes_now_and_its_success_clears_every_health_state() {
    let app = spawn_with(Options {
        tweak: Some(Box::new(|c| c.upstream.probe_interval_secs = 0)),
        ..Default::default()
    })
    .await;
    let fake = FakeUpstream::start().await.unwrap();
    let (oa, an) = app.wire_upstream(&fake).await;
    let (_, _, key) = funded_key(&app, "tested").await;
    for (anthropic, id) in [(false, oa), (true, an)] {
        // Healthy upstream.
        let (s, v) = app.post(&format!("/accounts/{id}/test"), json!({})).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            (v["ok"].as_bool(), v["status"].as_u64()),
            (Some(true), Some(200)),
            "{v}"
        );
        assert!(v["latency_ms"].is_u64() && v["error"].is_null(), "{v}");
        println!("test of account {id}: {v}");
        // Upstream refuses the secret: a request marks the account auth_failed; a failed Test
        // reports upstream's status and message and changes nothing.
        fake.set_fail_status(Some(401));
        assert_eq!(send(&app, &key, anthropic).await.status(), 401);
        let (s, v) = app.post(&format!("/accounts/{id}/test"), json!({})).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            (v["ok"].as_bool(), v["status"].as_u64()),
            (Some(false), Some(401)),
            "{v}"
        );
        let error = v["error"].as_str().unwrap();
        assert!(
            error.contains("401") && error.contains("Fake upstream error"),
            "{v}"
        );
        let acc = account(&app, id).await;
        assert_eq!(acc["health"], "auth_failed", "{acc}");
        // last_error and its time are in the row.
        let mut acc = acc;
        for _ in 0..50 {
            if acc["last_error_at"].is_string() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            acc = account(&app, id).await;
        }
        let at = acc["last_error_at"].as_str().expect("last_error_at");
        assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok(), "{acc}");
        assert!(acc["last_error"].as_str().unwrap().contains("401"), "{acc}");
        let (_, list) = app.get("/accounts").await;
        let row = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == id)
            .unwrap()
            .clone();
        assert_eq!(row["last_error_at"], acc["last_error_at"], "{row}");
        // Upstream accepts again: a successful Test is the administrator's word.
        fake.set_fail_status(None);
        let (_, v) = app.post(&format!("/accounts/{id}/test"), json!({})).await;
        assert_eq!(v["ok"], true, "{v}");
        let acc = account(&app, id).await;
        assert_eq!(
            (acc["health"].as_str(), acc["consecutive_failures"].as_u64()),
            (Some("ok"), Some(0)),
            "{acc}"
        );
        assert_eq!(send(&app, &key, anthropic).await.status(), 200);
    }
    // Nothing listens: the error says so, with no status.
    let dead = {
        let f = FakeUpstream::start().await.unwrap();
        let url = f.openai_base_url();
        drop(f);
        url
    };
    let (s, a) = app
        .post(
            "/accounts",
            json!({"name": "dead", "provider": "openai", "base_url": dead, "api_key": "k"}),
        )
        .await;
    assert_eq!(s, 201, "{a}");
    let (s, v) = app
        .post(&format!("/accounts/{}/test", a["id"]), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["ok"].as_bool(), v["status"].as_u64()),
        (Some(false), None),
        "{v}"
    );
    assert!(v["error"].as_str().unwrap().contains("unreachable"), "{v}");
    // An unknown account is a 404 in the admin shape.
    let (s, v) = app.post("/accounts/999999/test", json!({})).await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = app.post("/accounts/abc/test", json!({})).await;
    assert_eq!((s, app.get("/accounts/abc").await.0), (404, 404), "{v}");
    let text = metrics_text(&app).await;
    assert_eq!(series(&text, "tollgate_probes_total{result=\"ok\"}"), 4.0);
    assert_eq!(
        series(&text, "tollgate_probes_total{result=\"failed\"}"),
        3.0
    );
}
