//! Instant propagation (SPEC §11.2, issue 12 point 7): two gateway processes on one database
//! and one Redis; an admin write on the first takes effect on the second within 1 s. Each
//! delay is printed. Needs Redis (CI requires it; without TOLLGATE_TEST_REDIS_URL it says
//! SKIPPING), on whichever backend the run uses.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use serde_json::json;
use tollgate::fake_upstream::FakeUpstream;

use crate::helpers::*;

/// The bound SPEC §11.2 sets.
const BOUND: Duration = Duration::from_secs(1);

/// The chat call these measurements repeat, on the shared admin-API client.
impl Admin {
    /// A chat completion for `gpt-test` with `key`: (status, body text).
    async fn chat(&self, key: &str) -> (u16, String) {
        let r = self
            .http
            .post(format!("{}/v1/chat/completions", self.base))
            .bearer_auth(key)
            .json(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

type Change<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;
type Check = fn(u16, &str) -> bool;

/// One measurement: instance two is seen in the `before` state with freshly loaded caches
/// (a write on two itself drops them first, so without propagation two would keep `before`
/// for its cache TTL); `change` runs on instance one; then two is asked every 5 ms until it
/// no longer answers `before`. Its first other answer must be `after`. Returns the delay.
async fn step(
    what: &str,
    two: &Admin,
    key: &str,
    before: Check,
    after: Check,
    change: Change<'_>,
) -> Duration {
    // A write on two (a price nobody uses) drops two's caches; the next request reloads them.
    let unused = format!("/models/unused-{}", uuid::Uuid::new_v4().simple());
    two.call(
        reqwest::Method::PUT,
        &unused,
        json!({"input": "1", "output": "1"}),
    )
    .await;
    let (s, b) = two.chat(key).await;
    assert!(
        before(s, &b),
        "{what}: before the change two answered {s} {b}"
    );
    change.await;
    let t0 = Instant::now();
    loop {
        let (s, b) = two.chat(key).await;
        if !before(s, &b) {
            assert!(
                after(s, &b),
                "{what}: after the change two answered {s} {b}"
            );
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{what}: instance two never saw the change"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delay = t0.elapsed();
    println!(
        "propagation: {what} took {} ms on the second instance",
        delay.as_millis()
    );
    delay
}

#[tokio::test]
async fn an_admin_write_on_one_instance_takes_effect_on_the_other_within_a_second() {
    let Some(redis) = redis_url() else { return };
    let (url, _guard) = fresh_database(backend()).await;
    let env = [
        ("TOLLGATE_REDIS__URL", redis),
        (
            "TOLLGATE_REDIS__KEY_PREFIX",
            format!("tgtest:{}:", uuid::Uuid::new_v4().simple()),
        ),
        ("TOLLGATE_RECORDER__FLUSH_INTERVAL_MS", "10".to_string()),
    ];
    let p1 = start_binary(&url, &env, std::process::Stdio::null()).await;
    let p2 = start_binary(&url, &env, std::process::Stdio::null()).await;
    let (one, two) = (Admin::new(&p1.base), Admin::new(&p2.base));
    let fake = FakeUpstream::start().await.unwrap();
    use reqwest::Method as M;

    let user = one
        .call(M::POST, "/users", json!({"username": "prop"}))
        .await;
    let uid = user["id"].as_i64().unwrap();
    let created = one
        .call(M::POST, &format!("/users/{uid}/keys"), json!({"name": "k"}))
        .await;
    let key = created["key"].as_str().unwrap().to_string();
    let kid = created["id"].as_i64().unwrap();

    let no_price: Check = |s, b| s == 404 && b.contains("has no price");
    let no_account: Check = |s, b| s == 404 && b.contains("no upstream account serves");
    let no_quota: Check = |s, b| s == 429 && b.contains("insufficient_quota");
    let ok: Check = |s, _| s == 200;
    let refused: Check = |s, _| s == 401;
    let mut delays = Vec::new();

    delays.push((
        "a new price",
        step(
            "a new price",
            &two,
            &key,
            no_price,
            no_account,
            Box::pin(async {
                one.call(
                    M::PUT,
                    "/models/gpt-test",
                    json!({"input": "2.5", "output": "10"}),
                )
                .await;
            }),
        )
        .await,
    ));
    delays.push((
        "a new account",
        step(
            "a new account",
            &two,
            &key,
            no_account,
            no_quota,
            Box::pin(async {
                one.call(
                    M::POST,
                    "/accounts",
                    json!({"name": "oa", "provider": "openai", "base_url": fake.openai_base_url(), "api_key": "sk-up"}),
                )
                .await;
            }),
        )
        .await,
    ));
    let package = one
        .call(
            M::POST,
            "/packages",
            json!({"name": "p", "type": "quota", "quota_total": "100", "duration_days": 30}),
        )
        .await;
    delays.push((
        "a new grant",
        step(
            "a new grant",
            &two,
            &key,
            no_quota,
            ok,
            Box::pin(async {
                one.call(
                    M::POST,
                    &format!("/users/{uid}/packages"),
                    json!({"package_id": package["id"]}),
                )
                .await;
            }),
        )
        .await,
    ));
    delays.push((
        "a revoked key",
        step(
            "a revoked key",
            &two,
            &key,
            ok,
            refused,
            Box::pin(async {
                one.call(
                    M::PATCH,
                    &format!("/keys/{kid}"),
                    json!({"status": "revoked"}),
                )
                .await;
            }),
        )
        .await,
    ));
    // A second key of the user, then the user disabled.
    let created = one
        .call(
            M::POST,
            &format!("/users/{uid}/keys"),
            json!({"name": "k2"}),
        )
        .await;
    let key2 = created["key"].as_str().unwrap().to_string();
    delays.push((
        "a disabled user",
        step(
            "a disabled user",
            &two,
            &key2,
            ok,
            refused,
            Box::pin(async {
                one.call(
                    M::PATCH,
                    &format!("/users/{uid}"),
                    json!({"status": "disabled"}),
                )
                .await;
            }),
        )
        .await,
    ));
    let slow: Vec<String> = delays
        .iter()
        .filter(|(_, d)| *d >= BOUND)
        .map(|(w, d)| format!("{w}: {} ms", d.as_millis()))
        .collect();
    assert!(slow.is_empty(), "slower than {BOUND:?}: {slow:?}");
    drop(p2);
    drop(p1);
}

/// Subscribers to the invalidation channel of `prefix`, as Redis counts them.
async fn subscribers(conn: &mut redis::aio::ConnectionManager, prefix: &str) -> i64 {
    let (_, n): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(format!("{prefix}invalidate"))
        .query_async(conn)
        .await
        .unwrap();
    n
}

/// Wait (up to 10 s) until `n` instances are subscribed; how long it took.
async fn until_subscribers(
    conn: &mut redis::aio::ConnectionManager,
    prefix: &str,
    n: i64,
) -> Duration {
    let t0 = Instant::now();
    while subscribers(conn, prefix).await != n {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "never {n} subscribers"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t0.elapsed()
}

/// The second instance reaches Redis through a fault proxy that cuts every connection: its
/// subscription is lost, comes back by itself once Redis is reachable, and propagation is
/// instant again.
#[tokio::test]
async fn the_subscriber_comes_back_after_redis_drops_it() {
    use crate::faultproxy::{FaultProxy, Mode};
    let Some(redis) = redis_url() else { return };
    let target = redis
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let proxy = FaultProxy::start(&target).await;
    let (url, _guard) = fresh_database(backend()).await;
    let prefix = format!("tgtest:{}:", uuid::Uuid::new_v4().simple());
    let env = |redis_url: String| {
        [
            ("TOLLGATE_REDIS__URL", redis_url),
            ("TOLLGATE_REDIS__KEY_PREFIX", prefix.clone()),
            ("TOLLGATE_RECORDER__FLUSH_INTERVAL_MS", "10".to_string()),
        ]
    };
    let p1 = start_binary(&url, &env(redis.clone()), std::process::Stdio::null()).await;
    let p2 = start_binary(
        &url,
        &env(proxy.url(&redis, &target)),
        std::process::Stdio::null(),
    )
    .await;
    let mut conn = redis::aio::ConnectionManager::new(redis::Client::open(redis.as_str()).unwrap())
        .await
        .unwrap();
    until_subscribers(&mut conn, &prefix, 2).await;

    let (one, two) = (Admin::new(&p1.base), Admin::new(&p2.base));
    let fake = FakeUpstream::start().await.unwrap();
    use reqwest::Method as M;
    one.call(
        M::PUT,
        "/models/gpt-test",
        json!({"input": "2.5", "output": "10"}),
    )
    .await;
    one.call(
        M::POST,
        "/accounts",
        json!({"name": "oa", "provider": "openai", "base_url": fake.openai_base_url(), "api_key": "sk-up"}),
    )
    .await;
    let uid = one
        .call(M::POST, "/users", json!({"username": "prop"}))
        .await["id"]
        .as_i64()
        .unwrap();
    let created = one
        .call(M::POST, &format!("/users/{uid}/keys"), json!({"name": "k"}))
        .await;
    let key = created["key"].as_str().unwrap().to_string();

    proxy.set(Mode::Cut);
    let lost = until_subscribers(&mut conn, &prefix, 1).await;
    println!(
        "propagation: the cut subscriber was gone after {} ms",
        lost.as_millis()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.set(Mode::Pass);
    let back = until_subscribers(&mut conn, &prefix, 2).await;
    println!(
        "propagation: the subscriber was back {} ms after Redis was reachable again",
        back.as_millis()
    );
    assert!(
        back < Duration::from_secs(3),
        "reconnect backoff is at most 2 s"
    );

    let package = one
        .call(
            M::POST,
            "/packages",
            json!({"name": "p", "type": "quota", "quota_total": "100", "duration_days": 30}),
        )
        .await;
    let no_quota: Check = |s, b| s == 429 && b.contains("insufficient_quota");
    let ok: Check = |s, _| s == 200;
    let delay = step(
        "a new grant after the reconnect",
        &two,
        &key,
        no_quota,
        ok,
        Box::pin(async {
            one.call(
                M::POST,
                &format!("/users/{uid}/packages"),
                json!({"package_id": package["id"]}),
            )
            .await;
        }),
    )
    .await;
    assert!(delay < BOUND, "{delay:?}");
    drop(p2);
    drop(p1);
}
