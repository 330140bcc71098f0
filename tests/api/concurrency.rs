//! Concurrency caps (SPEC §11.3): at most `max_concurrency` requests of a key, and of all a
//! user's keys, in flight; the rest refused with 429 and `Retry-After: 1`; a slot comes back
//! when the answer ends, the client goes away or upstream fails. With Redis (the MySQL pass)
//! the slots are leases shared by every instance, and a dead instance's expire by themselves.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tollgate::fake_upstream::FakeUpstream;
use tollgate::proxy::concurrency::Holder;

use crate::helpers::*;
use crate::proxy::{chat_body, funded_key, messages_body};

/// One answer: status, `Retry-After`, JSON body (Null for a stream).
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

async fn call(app: &TestApp, key: &str, path: &str, body: &Value, hdrs: &[(&str, &str)]) -> Answer {
    let mut r = app.http.post(app.url(path)).bearer_auth(key).json(body);
    for (k, v) in hdrs {
        r = r.header(*k, *v);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let text = r.text().await.unwrap();
    Answer {
        status,
        retry_after,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

/// `n` requests at once, each answered after `delay_ms` upstream.
async fn burst(
    app: &TestApp,
    keys: &[&str],
    path: &str,
    body: &Value,
    delay_ms: u64,
) -> Vec<Answer> {
    let delay = delay_ms.to_string();
    let calls = keys.iter().map(|k| {
        let hdrs = [("x-fake-header-delay-ms", delay.as_str())];
        let body = body.clone();
        async move { call(app, k, path, &body, &hdrs).await }
    });
    futures_util::future::join_all(calls).await
}

/// Requests of `holder` in flight: the Redis set's size when shared, else the in-process count.
async fn in_flight(app: &TestApp, holder: Holder) -> i64 {
    let Some(prefix) = &app.redis_prefix else {
        return app.state.proxy.concurrency.local_in_flight(holder);
    };
    let set = match holder {
        Holder::Key(id) => format!("{prefix}cc:key:{id}"),
        Holder::User(id) => format!("{prefix}cc:user:{id}"),
    };
    let mut conn = app.state.redis.clone().unwrap();
    redis::cmd("ZCARD")
        .arg(set)
        .query_async::<i64>(&mut conn)
        .await
        .unwrap()
}

/// Wait (up to 2 s) until `holder` has nothing in flight; how long it took.
async fn wait_released(app: &TestApp, holder: Holder) -> Duration {
    let t0 = Instant::now();
    while in_flight(app, holder).await != 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "{holder:?}: slots not released"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t0.elapsed()
}

/// What the proxy knows of an active key with `max` concurrent requests, its user uncapped.
fn key_with_cap(id: i64, user_id: i64, max: i64) -> tollgate::store::keys::KeyAuth {
    use tollgate::domain::{KeyStatus, UserStatus};
    tollgate::store::keys::KeyAuth {
        id,
        user_id,
        status: KeyStatus::Active,
        expires_at: None,
        allowed_models: None,
        rpm_limit: None,
        tpm_limit: None,
        user_status: UserStatus::Active,
        max_concurrency: Some(max),
        user_max_concurrency: None,
        created_at: 0,
        limits: Default::default(),
        allowed_ips: None,
        key_prefix: String::new(),
    }
}

fn assert_refused_openai(a: &Answer, who: &str) {
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(a.retry_after.as_deref(), Some("1"));
    assert_eq!(a.body["error"]["type"], "rate_limit_exceeded", "{}", a.body);
    assert_eq!(a.body["error"]["code"], "concurrency_limit_exceeded");
    let m = a.body["error"]["message"].as_str().unwrap();
    assert!(m.contains(who) && m.contains("max_concurrency"), "{m}");
}

fn assert_refused_anthropic(a: &Answer) {
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(a.retry_after.as_deref(), Some("1"));
    assert_eq!(a.body["type"], "error");
    assert_eq!(a.body["error"]["type"], "rate_limit_error", "{}", a.body);
}

#[tokio::test]
async fn exactly_n_in_flight_the_rest_refused_then_the_slots_are_back() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let (_, kid, key) = funded_key(&app, "capped").await;
    let (s, v) = app
        .patch(&format!("/keys/{kid}"), json!({"max_concurrency": 2}))
        .await;
    assert_eq!((s, &v["max_concurrency"]), (200, &json!(2)), "{v}");
    let keys = [key.as_str(); 5];
    let mut upstream_seen = 0;
    for (path, body) in [
        ("/v1/chat/completions", chat_body(false)),
        ("/v1/messages", messages_body(true)),
    ] {
        let answers = burst(&app, &keys, path, &body, 1500).await;
        let ok = answers.iter().filter(|a| a.status == 200).count();
        let refused: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
        println!(
            "{path}: 5 at once under max_concurrency 2: {ok} answered, {} refused",
            refused.len()
        );
        assert_eq!(ok, 2, "{path}");
        assert_eq!(refused.len(), 3, "{path}");
        for a in refused {
            if path == "/v1/messages" {
                assert_refused_anthropic(a);
            } else {
                assert_refused_openai(a, "this API key");
            }
        }
        upstream_seen += 2;
        assert_eq!(
            fake.request_count(),
            upstream_seen,
            "refused requests never reach upstream"
        );
        let took = wait_released(&app, Holder::Key(kid)).await;
        println!(
            "{path}: slots back {} ms after the answers",
            took.as_millis()
        );
        // Both slots are free again: two more at once both go through.
        let again = burst(&app, &keys[..2], path, &body, 300).await;
        assert!(
            again.iter().all(|a| a.status == 200),
            "{path}: slots not back"
        );
        upstream_seen += 2;
        wait_released(&app, Holder::Key(kid)).await;
    }
    // Refusals are logged as refused rows (at most one per key, code and second: one a burst).
    app.wait_for_logs(8).await;
    let t0 = Instant::now();
    let refused = loop {
        let (_, logs) = app.get(&format!("/logs?api_key_id={kid}")).await;
        let refused: Vec<Value> = logs["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["error"] == "concurrency_limit_exceeded")
            .cloned()
            .collect();
        if refused.len() >= 2 {
            break refused;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "refused rows: {logs}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for r in refused {
        assert_eq!(r["billing_status"], "refused", "{r}");
        assert_eq!(r["status"], 429);
        assert_eq!(r["cost"], tollgate::billing::money::Usd(0).to_string());
    }
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_frees_its_slot() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let (_, kid, key) = funded_key(&app, "leaver").await;
    app.patch(&format!("/keys/{kid}"), json!({"max_concurrency": 1}))
        .await;
    for (path, body) in [
        ("/v1/chat/completions", chat_body(true)),
        ("/v1/messages", messages_body(true)),
    ] {
        let r = app
            .http
            .post(app.url(path))
            .bearer_auth(&key)
            .header("x-fake-chunks", "50")
            .header("x-fake-chunk-delay-ms", "100")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let mut s = r.bytes_stream();
        s.next().await.unwrap().unwrap();
        assert_eq!(in_flight(&app, Holder::Key(kid)).await, 1);
        let busy = call(&app, &key, path, &body, &[]).await;
        assert_eq!(busy.status, 429, "{path}: the stream holds the only slot");
        assert_eq!(busy.retry_after.as_deref(), Some("1"));
        drop(s);
        let took = wait_released(&app, Holder::Key(kid)).await;
        println!(
            "{path}: slot back {} ms after the client went away",
            took.as_millis()
        );
        let next = call(&app, &key, path, &body, &[]).await;
        assert_eq!(next.status, 200, "{path}: slot not back");
        wait_released(&app, Holder::Key(kid)).await;
    }
}

#[tokio::test]
async fn an_upstream_failure_frees_its_slot() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let (_, kid, key) = funded_key(&app, "failing").await;
    app.patch(&format!("/keys/{kid}"), json!({"max_concurrency": 1}))
        .await;
    let body = chat_body(false);
    let failing = call(
        &app,
        &key,
        "/v1/chat/completions",
        &body,
        &[("x-fake-status", "500"), ("x-fake-header-delay-ms", "600")],
    );
    let meanwhile = async {
        tokio::time::sleep(Duration::from_millis(250)).await;
        call(&app, &key, "/v1/chat/completions", &body, &[]).await
    };
    let (failed, meanwhile) = tokio::join!(failing, meanwhile);
    assert_eq!(failed.status, 500, "{}", failed.body);
    assert_refused_openai(&meanwhile, "this API key");
    let took = wait_released(&app, Holder::Key(kid)).await;
    println!("slot back {} ms after upstream's 500", took.as_millis());
    let next = call(&app, &key, "/v1/chat/completions", &body, &[]).await;
    assert_eq!(
        next.status, 200,
        "slot not back after the failure: {}",
        next.body
    );
}

#[tokio::test]
async fn a_users_cap_spans_its_keys_and_null_clears_it() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let (uid, _, key_a) = funded_key(&app, "team").await;
    let (_, key_b) = app.key(uid, json!({"name": "second"})).await;
    let (s, v) = app
        .patch(&format!("/users/{uid}"), json!({"max_concurrency": 2}))
        .await;
    assert_eq!((s, &v["max_concurrency"]), (200, &json!(2)), "{v}");
    let keys = [
        key_a.as_str(),
        key_b.as_str(),
        key_a.as_str(),
        key_b.as_str(),
    ];
    let answers = burst(&app, &keys, "/v1/chat/completions", &chat_body(false), 1500).await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    println!("4 at once over two keys, user max_concurrency 2: {ok} answered");
    assert_eq!(ok, 2);
    for a in answers.iter().filter(|a| a.status != 200) {
        assert_refused_openai(a, "the user of this API key");
    }
    wait_released(&app, Holder::User(uid)).await;
    // Cleared: the four go through.
    let (s, v) = app
        .patch(&format!("/users/{uid}"), json!({"max_concurrency": null}))
        .await;
    assert_eq!((s, &v["max_concurrency"]), (200, &Value::Null), "{v}");
    let answers = burst(&app, &keys, "/v1/chat/completions", &chat_body(false), 300).await;
    assert!(answers.iter().all(|a| a.status == 200));
}

#[tokio::test]
async fn max_concurrency_is_validated_and_nothing_written() {
    let app = spawn_app().await;
    let uid = app.user("validated").await;
    let (kid, _) = app
        .key(uid, json!({"name": "k", "max_concurrency": 10000}))
        .await;
    let (_, k) = app.get(&format!("/keys/{kid}")).await;
    assert_eq!(k["max_concurrency"], 10000);
    for bad in [
        json!(0),
        json!(-1),
        json!(1.5),
        json!("3"),
        json!(10001),
        json!(true),
    ] {
        let (s, v) = app
            .post(
                &format!("/users/{uid}/keys"),
                json!({"name": "bad", "max_concurrency": bad}),
            )
            .await;
        assert_eq!(s, 400, "{bad}: {v}");
        assert_eq!(v["error"]["param"], "max_concurrency", "{bad}: {v}");
        for (path, status) in [
            (format!("/keys/{kid}"), "revoked"),
            (format!("/users/{uid}"), "disabled"),
        ] {
            let (s, v) = app
                .patch(&path, json!({"status": status, "max_concurrency": bad}))
                .await;
            assert_eq!(s, 400, "{path} {bad}: {v}");
            assert_eq!(v["error"]["param"], "max_concurrency", "{v}");
            assert!(v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("max_concurrency"));
        }
    }
    let (_, keys) = app.get(&format!("/keys?user_id={uid}")).await;
    assert_eq!(keys["data"].as_array().unwrap().len(), 1, "no key created");
    let (_, k) = app.get(&format!("/keys/{kid}")).await;
    assert_eq!(
        (&k["max_concurrency"], &k["status"]),
        (&json!(10000), &json!("active"))
    );
    let (_, u) = app.get(&format!("/users/{uid}")).await;
    assert_eq!(
        (&u["max_concurrency"], &u["status"]),
        (&Value::Null, &json!("active"))
    );
    // A patch without it keeps it; null clears it.
    let (s, k) = app
        .patch(&format!("/keys/{kid}"), json!({"status": "revoked"}))
        .await;
    assert_eq!((s, &k["max_concurrency"]), (200, &json!(10000)), "{k}");
    let (s, k) = app
        .patch(&format!("/keys/{kid}"), json!({"max_concurrency": null}))
        .await;
    assert_eq!(
        (s, &k["max_concurrency"], &k["status"]),
        (200, &Value::Null, &json!("revoked"))
    );
}

/// Two instances on one Redis share the slots; a lease whose instance died (never released,
/// never refreshed) expires by itself.
#[tokio::test]
async fn redis_leases_are_shared_and_a_dead_instances_expire() {
    use tollgate::proxy::concurrency::Concurrency;
    let Some((conn, prefix)) = redis_with_prefix().await else {
        return;
    };
    let instance = || {
        Concurrency::redis(
            conn.clone(),
            prefix.clone(),
            Duration::from_millis(500),
            Duration::from_millis(600),
        )
    };
    let (a, b) = (instance(), instance());
    let key = key_with_cap(7, 70, 1);
    let held = a.acquire(&key).await.unwrap().expect("a slot");
    assert!(b.acquire(&key).await.is_err(), "the other instance sees it");
    // Held past its TTL: refreshed, so still held.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(b.acquire(&key).await.is_err(), "a live lease is refreshed");
    drop(held);
    let t0 = Instant::now();
    let again = loop {
        if let Ok(s) = b.acquire(&key).await {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(1), "release not seen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    println!(
        "released on one instance, free on the other after {} ms",
        t0.elapsed().as_millis()
    );
    drop(again);
    // A dead instance: its lease is in the set, nobody refreshes or removes it.
    let mut c = conn.clone();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let set = format!("{prefix}cc:key:7");
    let t: (i64, i64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
    let now_ms = t.0 * 1000 + t.1 / 1000;
    let _: () = redis::cmd("ZADD")
        .arg(&set)
        .arg(now_ms + 400)
        .arg("dead-instance-lease")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        a.acquire(&key).await.is_err(),
        "the dead lease holds the slot"
    );
    let t0 = Instant::now();
    let revived = loop {
        if let Ok(s) = a.acquire(&key).await {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "dead lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "a dead instance's lease (TTL 400 ms) expired after {} ms",
        t0.elapsed().as_millis()
    );
    assert!(revived.is_some());
}

/// Redis hung: within `redis.timeout_ms` the caps are counted in process (still enforced),
/// and shared again once Redis answers.
#[tokio::test]
async fn with_redis_hung_the_caps_hold_in_process() {
    use crate::faultproxy::{redis_through_proxy, Mode};
    use tollgate::proxy::concurrency::Concurrency;
    let Some(url) = redis_url() else { return };
    let (proxy, conn) = redis_through_proxy(&url).await;
    let prefix = format!("tgtest:{}:", uuid::Uuid::new_v4().simple());
    let caps = Concurrency::redis(
        conn,
        prefix.clone(),
        Duration::from_millis(50),
        Duration::from_secs(30),
    );
    let key = key_with_cap(8, 80, 1);
    proxy.set(Mode::Hang);
    let t0 = Instant::now();
    let held = caps.acquire(&key).await.unwrap().expect("a slot");
    let took = t0.elapsed();
    println!(
        "Redis hung: slot counted in process after {} ms",
        took.as_millis()
    );
    assert!(
        took < Duration::from_millis(500),
        "bounded by redis.timeout_ms"
    );
    assert_eq!(caps.local_in_flight(Holder::Key(8)), 1);
    assert!(
        caps.acquire(&key).await.is_err(),
        "the cap holds in process"
    );
    drop(held);
    assert_eq!(caps.local_in_flight(Holder::Key(8)), 0);
    // Redis back: the slot is a lease again.
    proxy.set(Mode::Pass);
    let direct = redis::Client::open(url).unwrap();
    let mut c = direct.get_multiplexed_async_connection().await.unwrap();
    let t0 = Instant::now();
    let shared = loop {
        let s = caps.acquire(&key).await.unwrap().expect("a slot");
        let n: i64 = redis::cmd("ZCARD")
            .arg(format!("{prefix}cc:key:8"))
            .query_async(&mut c)
            .await
            .unwrap();
        if n == 1 {
            break s;
        }
        drop(s);
        assert!(t0.elapsed() < Duration::from_secs(5), "never shared again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(caps.local_in_flight(Holder::Key(8)), 0);
    drop(shared);
}
