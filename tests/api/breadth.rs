//! Protocol breadth, upstream routing, limits, disconnects, timeouts, key holders' view,
//! metrics.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tollgate::billing::money::Usd;
use tollgate::fake_upstream::FakeUpstream;

use crate::helpers::*;
use crate::proxy::{chat_body, claude_cost, funded_key, gpt_cost, messages_body};

async fn logs_of(app: &TestApp, kid: i64) -> Vec<Value> {
    let (_, v) = app.get(&format!("/logs?api_key_id={kid}")).await;
    v["data"].as_array().unwrap().clone()
}

#[tokio::test]
async fn every_endpoint_is_forwarded_and_charged() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let (_, kid, key) = funded_key(&app, "breadth").await;
    let post = |path: &'static str, body: Value, hdrs: Vec<(&'static str, &'static str)>| {
        let (app, key) = (&app, &key);
        async move {
            let mut r = app.http.post(app.url(path)).bearer_auth(key).json(&body);
            for (k, v) in hdrs {
                r = r.header(k, v);
            }
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            r.text().await.unwrap()
        }
    };
    let cached = vec![("x-fake-cached-tokens", "8")];
    // 1. Responses, not streaming: input_tokens include the cached ones.
    let t = post(
        "/v1/responses",
        json!({"model": "gpt-test", "input": "hi"}),
        cached.clone(),
    )
    .await;
    assert!(t.contains("\"object\":\"response\""));
    // 2. Responses streaming, each terminal event.
    for term in ["completed", "incomplete", "failed"] {
        let h = vec![("x-fake-cached-tokens", "8"), ("x-fake-terminal", term)];
        let t = post(
            "/v1/responses",
            json!({"model": "gpt-test", "input": "hi", "stream": true}),
            h,
        )
        .await;
        assert!(t.contains(&format!("response.{term}")));
    }
    // 3. Legacy completions, 4. embeddings.
    post(
        "/v1/completions",
        json!({"model": "gpt-test", "prompt": "hi"}),
        vec![],
    )
    .await;
    post(
        "/v1/completions",
        json!({"model": "gpt-test", "prompt": "hi", "stream": true}),
        vec![],
    )
    .await;
    let t = post(
        "/v1/embeddings",
        json!({"model": "gpt-test", "input": ["a", "b"]}),
        vec![("x-fake-prompt-tokens", "6")],
    )
    .await;
    assert!(t.contains("\"embedding\""));
    // 5. count_tokens: forwarded, not charged.
    let t = post(
        "/v1/messages/count_tokens",
        json!({"model": "claude-test", "messages": []}),
        vec![("x-fake-prompt-tokens", "77")],
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&t).unwrap()["input_tokens"],
        77
    );
    assert_eq!(
        fake.requests().last().unwrap().path,
        "/v1/messages/count_tokens"
    );
    app.wait_for_logs(8).await;
    let rows = logs_of(&app, kid).await;
    let by_endpoint = |e: &str| {
        rows.iter()
            .filter(|r| r["endpoint"] == e)
            .cloned()
            .collect::<Vec<_>>()
    };
    let responses = by_endpoint("/v1/responses");
    assert_eq!(responses.len(), 4);
    for r in &responses {
        assert_eq!(
            (
                r["input_tokens"].as_i64(),
                r["cache_read_tokens"].as_i64(),
                r["output_tokens"].as_i64()
            ),
            (Some(12), Some(8), Some(8)),
            "{r}"
        );
        assert_eq!(r["cost"], Usd(gpt_cost(12, 8, 8)).to_string());
        assert_eq!(r["billing_status"], "complete");
    }
    for r in by_endpoint("/v1/completions") {
        assert_eq!(r["cost"], Usd(gpt_cost(12, 8, 0)).to_string(), "{r}");
    }
    let emb = &by_endpoint("/v1/embeddings")[0];
    assert_eq!(
        (emb["input_tokens"].as_i64(), emb["output_tokens"].as_i64()),
        (Some(6), Some(0))
    );
    assert_eq!(
        emb["cost"],
        Usd(6 * 2500).to_string(),
        "embeddings at the input price"
    );
    let ct = &by_endpoint("/v1/messages/count_tokens")[0];
    assert_eq!(
        (ct["cost"].as_str(), ct["billing_status"].as_str()),
        (Some("0.000000000"), Some("void"))
    );
    let total: i64 = 4 * gpt_cost(12, 8, 8) + 2 * gpt_cost(12, 8, 0) + 6 * 2500;
    let l = app.state.db.ledger().await.unwrap();
    assert_eq!(
        (l.request_logs.cost, l.api_keys.cost, l.user_packages_cost),
        (total, total, total)
    );

    // GET /v1/models: the models this key may use.
    let r = app
        .http
        .get(app.url("/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        (v["object"].as_str(), ids),
        (Some("list"), vec!["claude-test", "gpt-test"])
    );
    let uid = app.state.db.get_key(kid).await.unwrap().user_id;
    let (_, narrow) = app
        .key(uid, json!({"name": "n", "allowed_models": ["claude-test"]}))
        .await;
    let v: Value = app
        .http
        .get(app.url("/v1/models"))
        .bearer_auth(&narrow)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    assert_eq!(v["data"][0]["id"], "claude-test");
    let r = app
        .http
        .get(app.url("/v1/models"))
        .bearer_auth("sk-wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

async fn two_upstreams(
    app: &TestApp,
    weights: (i64, i64),
    priorities: (i64, i64),
) -> (FakeUpstream, FakeUpstream, i64, i64) {
    let (a, b) = (
        FakeUpstream::start().await.unwrap(),
        FakeUpstream::start().await.unwrap(),
    );
    let mut ids = vec![];
    for (f, w, p, n) in [
        (&a, weights.0, priorities.0, "A"),
        (&b, weights.1, priorities.1, "B"),
    ] {
        let (s, v) = app
            .post("/accounts", json!({"name": n, "provider": "openai", "base_url": f.openai_base_url(), "api_key": "k", "weight": w, "priority": p}))
            .await;
        assert_eq!(s, 201);
        ids.push(v["id"].as_i64().unwrap());
    }
    app.put(
        "/models/gpt-test",
        json!({"input": "2.5", "output": "10", "cache_read": "1.25"}),
    )
    .await;
    (a, b, ids[0], ids[1])
}

async fn chat(app: &TestApp, key: &str) -> reqwest::Response {
    app.http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn weights_and_priorities_choose_the_account() {
    let app = spawn_app().await;
    let (a, b, _, _) = two_upstreams(&app, (3, 1), (0, 0)).await;
    let (_, _, key) = funded_key(&app, "weights").await;
    for _ in 0..400 {
        assert_eq!(chat(&app, &key).await.status(), 200);
    }
    let share = a.request_count() as f64 / 400.0;
    eprintln!("weight 3:1 → A got {:.1} %", share * 100.0);
    assert!((0.68..=0.82).contains(&share), "A share {share}");
    assert_eq!(a.request_count() + b.request_count(), 400);
    // A higher priority wins every time.
    let app2 = spawn_app().await;
    let (c, d, _, _) = two_upstreams(&app2, (1, 100), (5, 1)).await;
    let (_, _, key2) = funded_key(&app2, "prio").await;
    for _ in 0..30 {
        assert_eq!(chat(&app2, &key2).await.status(), 200);
    }
    assert_eq!((c.request_count(), d.request_count()), (30, 0));
}

#[tokio::test]
async fn a_failing_account_is_skipped_cooled_down_and_recovers() {
    let t0 = chrono::Utc::now();
    let clock = tollgate::clock::Clock::manual(t0);
    let app = spawn_with(Options {
        tweak: Some(Box::new(|c| {
            c.upstream.cooldown_secs = 1;
            c.upstream.failure_threshold = 1;
        })),
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    let (a, b, a_id, _) = two_upstreams(&app, (1, 1), (0, 0)).await;
    let (_, kid, key) = funded_key(&app, "failover").await;
    a.set_fail_status(Some(500));
    for _ in 0..40 {
        assert_eq!(
            chat(&app, &key).await.status(),
            200,
            "every request still succeeds"
        );
    }
    assert_eq!(b.request_count(), 40);
    assert!(a.request_count() >= 1, "A was tried");
    assert!(
        a.request_count() < 10,
        "and then cooled down, not hammered: {}",
        a.request_count()
    );
    let (_, acc) = app.get(&format!("/accounts/{a_id}")).await;
    assert!(acc["last_error"].as_str().unwrap().contains("500"), "{acc}");
    assert_eq!(acc["health"], "cooling_down", "{acc}");
    assert!(acc["cooldown_remaining_secs"].as_u64().unwrap() >= 1);
    // Recovery: A answers again after its cooldown.
    a.set_fail_status(None);
    clock.set(t0 + chrono::Duration::milliseconds(1100));
    let before = a.request_count();
    for _ in 0..20 {
        assert_eq!(chat(&app, &key).await.status(), 200);
    }
    assert!(a.request_count() > before, "A serves again");
    let (_, acc) = app.get(&format!("/accounts/{a_id}")).await;
    assert_eq!(acc["health"], "ok", "{acc}");
    app.wait_for_logs(60).await;
    let rows = logs_of(&app, kid).await;
    assert!(rows.iter().all(|r| r["status"] == 200));
}

#[tokio::test]
async fn all_accounts_failing_answer_in_the_providers_shape() {
    let app = spawn_with(Options {
        tweak: Some(Box::new(|c| {
            c.upstream.cooldown_secs = 60;
            c.upstream.failure_threshold = 1;
        })),
        ..Default::default()
    })
    .await;
    let (a, b, _, _) = two_upstreams(&app, (1, 1), (0, 0)).await;
    let (_, kid, key) = funded_key(&app, "allfail").await;
    a.set_fail_status(Some(503));
    b.set_fail_status(Some(503));
    // Upstream's own error after retries: passed through as is.
    let r = chat(&app, &key).await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].is_string(), "{v}");
    assert_eq!(a.request_count() + b.request_count(), 2, "both tried once");
    // Both cooling down now: the one whose cooldown ends first is still tried (SPEC §11.2;
    // no_available_account is for accounts that are all disabled or auth_failed, see
    // tests/api/health.rs), and its error passed through.
    let r = chat(&app, &key).await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].is_string(), "{v}");
    assert_eq!(a.request_count() + b.request_count(), 3, "one probe");
    // Unreachable upstreams (nothing listens): 502 upstream_unreachable, billing void.
    let app2 = spawn_app().await;
    let dead = {
        let f = FakeUpstream::start().await.unwrap();
        let url = f.openai_base_url();
        drop(f);
        url
    };
    app2.post(
        "/accounts",
        json!({"name": "dead", "provider": "openai", "base_url": dead, "api_key": "k"}),
    )
    .await;
    let dead_an = dead.trim_end_matches("/v1").to_string();
    app2.post(
        "/accounts",
        json!({"name": "dead2", "provider": "anthropic", "base_url": dead_an, "api_key": "k"}),
    )
    .await;
    app2.put("/models/gpt-test", json!({"input": "1", "output": "1"}))
        .await;
    app2.put("/models/claude-test", json!({"input": "1", "output": "1"}))
        .await;
    let (_, kid2, key2) = funded_key(&app2, "dead").await;
    let r = chat(&app2, &key2).await;
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["error"]["code"].as_str(), v["error"]["type"].as_str()),
        (Some("upstream_unreachable"), Some("server_error"))
    );
    let r = app2
        .http
        .post(app2.url("/v1/messages"))
        .bearer_auth(&key2)
        .json(&messages_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["type"].as_str(), v["error"]["type"].as_str()),
        (Some("error"), Some("api_error"))
    );
    app2.wait_for_logs(2).await;
    for r in logs_of(&app2, kid2).await {
        assert_eq!(
            (r["billing_status"].as_str(), r["cost"].as_str()),
            (Some("void"), Some("0.000000000"))
        );
        assert!(r["account_id"].is_null());
    }
    let _ = kid;
}

#[tokio::test]
async fn rpm_and_tpm_limits_answer_429_with_retry_after() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let (uid, _, _) = funded_key(&app, "limits").await;
    let (_, rpm_key) = app.key(uid, json!({"name": "rpm", "rpm_limit": 3})).await;
    for _ in 0..3 {
        assert_eq!(chat(&app, &rpm_key).await.status(), 200);
    }
    let r = chat(&app, &rpm_key).await;
    assert_eq!(r.status(), 429);
    // A rate limit passes: the client may retry, and is told when.
    assert!(!r.headers().contains_key("x-should-retry"));
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    let r = app
        .http
        .post(app.url("/v1/messages"))
        .bearer_auth(&rpm_key)
        .json(&messages_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    // TPM: each request is 20 tokens; a limit of 30 admits two, then refuses.
    let (_, tpm_key) = app.key(uid, json!({"name": "tpm", "tpm_limit": 30})).await;
    assert_eq!(chat(&app, &tpm_key).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(chat(&app, &tpm_key).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = chat(&app, &tpm_key).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
}

/// Two gateway instances sharing one database and one Redis: the RPM holds across both.
#[tokio::test]
async fn rate_limits_hold_across_instances_with_redis() {
    let Some(_) = redis_url() else { return };
    let one = spawn_with(Options {
        redis: true,
        ..Default::default()
    })
    .await;
    let two = spawn_with(Options {
        redis: true,
        database: Some(one.db_url.clone()),
        redis_prefix: one.redis_prefix.clone(),
        ..Default::default()
    })
    .await;
    let fake = FakeUpstream::start().await.unwrap();
    one.wire_upstream(&fake).await;
    let (uid, _, _) = funded_key(&one, "shared").await;
    let (_, key) = one.key(uid, json!({"name": "rpm4", "rpm_limit": 4})).await;
    for app in [&one, &two, &one, &two] {
        assert_eq!(chat(app, &key).await.status(), 200);
    }
    assert_eq!(chat(&two, &key).await.status(), 429);
    assert_eq!(chat(&one, &key).await.status(), 429);
}

#[tokio::test]
async fn a_client_that_disconnects_is_charged_for_what_upstream_produced() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let (_, kid, key) = funded_key(&app, "dropper").await;
    for (path, body) in [
        ("/v1/messages", messages_body(true)),
        ("/v1/chat/completions", chat_body(true)),
    ] {
        let r = app
            .http
            .post(app.url(path))
            .bearer_auth(&key)
            .header("x-fake-chunks", "20")
            .header("x-fake-chunk-delay-ms", "100")
            .header("x-fake-prompt-tokens", "400")
            .json(&body)
            .send()
            .await
            .unwrap();
        let mut s = r.bytes_stream();
        s.next().await.unwrap().unwrap();
        drop(s);
    }
    let t0 = Instant::now();
    while fake.cancelled_streams() < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "upstream streams were not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fake.completed_streams(), 0);
    app.wait_for_logs(2).await;
    let rows = logs_of(&app, kid).await;
    let an = rows
        .iter()
        .find(|r| r["endpoint"] == "/v1/messages")
        .unwrap();
    assert_eq!(
        an["billing_status"], "partial",
        "usage reported so far: {an}"
    );
    assert_eq!(an["input_tokens"], 400);
    assert_eq!(an["cost"], Usd(claude_cost(400, 1, 0, 0)).to_string());
    assert_eq!(an["error"], "client disconnected");
    let oa = rows
        .iter()
        .find(|r| r["endpoint"] == "/v1/chat/completions")
        .unwrap();
    assert_eq!(
        oa["billing_status"], "estimated",
        "no usage yet from OpenAI: {oa}"
    );
    assert!(oa["cost"].as_str().unwrap() != "0.000000000");
    assert!(oa["input_tokens"].as_i64().unwrap() > 0);
    let l = app.state.db.ledger().await.unwrap();
    assert_eq!(l.user_packages_cost, l.request_logs.cost);
}

#[tokio::test]
async fn upstream_timeouts_answer_504_and_idle_streams_end() {
    let start = chrono::Utc::now();
    let clock = tollgate::clock::Clock::manual(start);
    let app = spawn_with(Options {
        clock: Some(clock.clone()),
        tweak: Some(Box::new(|c| {
            c.upstream.first_byte_timeout_secs = 1;
            c.upstream.idle_timeout_secs = 1;
            c.upstream.max_attempts = 1;
            c.upstream.cooldown_secs = 1;
        })),
        ..Default::default()
    })
    .await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let (_, kid, key) = funded_key(&app, "slowpoke").await;
    let t0 = Instant::now();
    let r = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("x-fake-header-delay-ms", "3000")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert!(t0.elapsed() < Duration::from_millis(2500));
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["error"]["code"].as_str(), v["error"]["type"].as_str()),
        (Some("upstream_timeout"), Some("server_error"))
    );
    let r = app
        .http
        .post(app.url("/v1/messages"))
        .bearer_auth(&key)
        .header("x-fake-header-delay-ms", "3000")
        .json(&messages_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "api_error");
    // Idle: one event, then silence; the stream is ended after 1 s and charged for what came.
    clock.set(start + chrono::Duration::milliseconds(1100)); // the timed-out account's cooldown ends
    let t0 = Instant::now();
    let r = app
        .http
        .post(app.url("/v1/messages"))
        .bearer_auth(&key)
        .header("x-fake-stall-after", "1")
        .json(&messages_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("message_start") && !text.contains("message_stop"));
    assert!(t0.elapsed() < Duration::from_secs(3));
    app.wait_for_logs(3).await;
    let rows = logs_of(&app, kid).await;
    let idle = rows.iter().find(|r| r["stream"] == true).unwrap();
    assert_eq!(idle["billing_status"], "partial");
    assert!(idle["error"].as_str().unwrap().contains("idle"), "{idle}");
    let timeouts: Vec<_> = rows.iter().filter(|r| r["status"] == 504).collect();
    assert_eq!(timeouts.len(), 2);
    assert!(timeouts
        .iter()
        .all(|r| r["billing_status"] == "void" && r["cost"] == "0.000000000"));
}

#[tokio::test]
async fn key_holders_see_their_balance() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let uid = app.user("holder").await;
    let sub = app.package(json!({"name": "S", "type": "subscription", "daily_quota": "2", "monthly_quota": "30", "duration_days": 30})).await;
    let q = app
        .package(json!({"name": "Q", "type": "quota", "quota_total": "10", "duration_days": 30}))
        .await;
    app.grant(uid, sub, None).await;
    app.grant(uid, q, None).await;
    let (_, key) = app.key(uid, json!({"name": "mine"})).await;
    assert_eq!(chat(&app, &key).await.status(), 200);
    app.wait_for_logs(1).await;
    let one = gpt_cost(12, 8, 0);
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
    assert_eq!(me["user"]["username"], "holder");
    assert_eq!(me["key"]["used_cost"], Usd(one).to_string());
    assert_eq!(me["key"]["request_count"], 1);
    assert!(me["key"].get("key_hash").is_none());
    assert_eq!(
        me["balances"]["subscription_daily_balance"],
        Usd(2_000_000_000 - one).to_string()
    );
    assert_eq!(
        me["balances"]["subscription_monthly_balance"],
        Usd(30_000_000_000 - one).to_string()
    );
    assert_eq!(me["balances"]["quota_balance"], "10.000000000");
    let pk = me["packages"].as_array().unwrap();
    assert_eq!(pk.len(), 2);
    let s = pk.iter().find(|p| p["type"] == "subscription").unwrap();
    assert_eq!(s["windows"][0]["window"], "daily");
    assert!(s["windows"][0]["resets_at"].is_string());
    // Legacy endpoints: limit = monthly 30 + quota 10; used = the subscription's month so far.
    let sub: Value = app
        .http
        .get(app.url("/v1/dashboard/billing/subscription"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sub["object"], "billing_subscription");
    assert_eq!(sub["hard_limit_usd"], 40.0);
    let usage: Value = app
        .http
        .get(app.url("/v1/dashboard/billing/usage?start_date=2026-01-01&end_date=2026-12-31"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        (usage["total_usage"].as_f64().unwrap() - one as f64 / 1e9 * 100.0).abs() < 1e-9,
        "{usage}"
    );
    let r = app.http.get(app.url("/v1/me")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn metrics_expose_requests_latency_overhead_and_the_recorder() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let (_, _, key) = funded_key(&app, "metrics").await;
    for _ in 0..3 {
        assert_eq!(chat(&app, &key).await.status(), 200);
    }
    assert_eq!(chat(&app, "sk-bad").await.status(), 401);
    app.wait_for_logs(3).await;
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |needle: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("{needle} missing:\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        value("tollgate_http_requests_total{route=\"/v1/chat/completions\",status=\"200\"}"),
        3.0
    );
    assert_eq!(
        value("tollgate_http_requests_total{route=\"/v1/chat/completions\",status=\"401\"}"),
        1.0
    );
    assert_eq!(value("tollgate_upstream_latency_seconds_count"), 3.0);
    assert_eq!(value("tollgate_gateway_overhead_seconds_count"), 3.0);
    assert!(value("tollgate_gateway_overhead_seconds_sum") > 0.0);
    assert_eq!(value("tollgate_recorder_events_applied_total"), 3.0);
    assert!(value("tollgate_recorder_batches_total") >= 1.0);
    assert_eq!(value("tollgate_recorder_queue_depth"), 0.0);
    assert_eq!(value("tollgate_settlement_failures_total"), 0.0);
    assert!(value("tollgate_db_pool_connections") >= 1.0);
}

/// A revocation takes effect at once on the instance that made it, and on every other
/// instance within 5 seconds (their key cache lives 2 s).
#[tokio::test]
async fn revocation_reaches_every_instance_within_five_seconds() {
    let one = spawn_app().await;
    let two = spawn_with(Options {
        database: Some(one.db_url.clone()),
        redis_prefix: one.redis_prefix.clone(),
        ..Default::default()
    })
    .await;
    let fake = FakeUpstream::start().await.unwrap();
    one.wire_upstream(&fake).await;
    let (_, kid, key) = funded_key(&one, "revoke").await;
    assert_eq!(chat(&one, &key).await.status(), 200);
    assert_eq!(chat(&two, &key).await.status(), 200);
    let (s, _) = one
        .patch(&format!("/keys/{kid}"), json!({"status": "revoked"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        chat(&one, &key).await.status(),
        401,
        "at once where it was revoked"
    );
    let t0 = Instant::now();
    loop {
        if chat(&two, &key).await.status() == 401 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the other instance still accepts the key"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = two.shutdown().await;
}

/// Connecting to an upstream that never completes the TCP handshake (its accept queue is
/// full) hits `upstream.connect_timeout_secs`: 504 upstream_timeout.
#[tokio::test]
async fn connect_timeout_answers_504() {
    let app = spawn_with(Options {
        tweak: Some(Box::new(|c| {
            c.upstream.connect_timeout_secs = 1;
            c.upstream.max_attempts = 1;
        })),
        ..Default::default()
    })
    .await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = sock.local_addr().unwrap();
    let _listener = sock.listen(1).unwrap();
    // Fill the accept queue so further handshakes are left unanswered.
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    app.post("/accounts", json!({"name": "blackhole", "provider": "openai", "base_url": format!("http://{addr}/v1"), "api_key": "k"}))
        .await;
    app.put("/models/gpt-test", json!({"input": "1", "output": "1"}))
        .await;
    let (_, _, key) = funded_key(&app, "connect").await;
    let t0 = Instant::now();
    let r = chat(&app, &key).await;
    let took = t0.elapsed();
    assert_eq!(r.status(), 504, "after {took:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_timeout");
}

/// Two gateway *processes* sharing one database and one Redis: a key's RPM holds across both.
#[tokio::test]
async fn rate_limits_hold_across_two_gateway_processes() {
    let Some(redis) = redis_url() else { return };
    let (url, _guard) = fresh_database(backend()).await;
    let env = [
        ("TOLLGATE_REDIS__URL", redis),
        (
            "TOLLGATE_REDIS__KEY_PREFIX",
            format!("tgtest:{}:", uuid::Uuid::new_v4().simple()),
        ),
        // Past its timeout a call is counted in process (the fallback has its own tests):
        // 50 ms is not enough for two fresh processes on a loaded CI machine.
        ("TOLLGATE_REDIS__TIMEOUT_MS", "2000".to_string()),
    ];
    let one = start_binary(&url, &env, std::process::Stdio::null()).await;
    let two = start_binary(&url, &env, std::process::Stdio::null()).await;
    let fake = FakeUpstream::start().await.unwrap();
    let http = reqwest::Client::new();
    let key = seed_over_http(&one.base, &fake, "k", json!({"name": "k", "rpm_limit": 4})).await;
    let call = |base: &str| {
        http.post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&chat_body(false))
            .send()
    };
    // RPM counts fixed minutes of the wall clock: the six calls must fall in one minute.
    let into_minute_ms = chrono::Utc::now().timestamp_millis().rem_euclid(60_000) as u64;
    if into_minute_ms > 45_000 {
        tokio::time::sleep(Duration::from_millis(60_000 - into_minute_ms + 100)).await;
    }
    for base in [&one.base, &two.base, &one.base, &two.base] {
        assert_eq!(call(base).await.unwrap().status(), 200);
    }
    let r = call(&two.base).await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(call(&one.base).await.unwrap().status(), 429);
    drop(two);
    drop(one);
}
