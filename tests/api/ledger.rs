//! The ledger: every sink records the same amounts, exactly once; windows roll; nothing is
//! lost on shutdown; no oversell beyond what is in flight.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use futures_util::{stream, StreamExt};
use serde_json::{json, Value};
use tollgate::billing::cost::Tokens;
use tollgate::billing::money::Usd;
use tollgate::clock::Clock;
use tollgate::fake_upstream::FakeUpstream;
use tollgate::usage::{BillingStatus, UsageEvent, WindowStarts};

use crate::helpers::*;
use crate::proxy::{chat_body, claude_cost, funded_key, gpt_cost, messages_body};

fn event(id: &str, user: i64, key: i64, account: i64, up: Option<i64>, cost: i64) -> UsageEvent {
    UsageEvent {
        request_id: id.into(),
        created_at_ms: 1_000,
        day: "2026-01-01".into(),
        user_id: user,
        api_key_id: key,
        account_id: Some(account),
        user_package_id: up,
        windows: up.map(|_| WindowStarts {
            daily: 0,
            weekly: 0,
            monthly: 0,
        }),
        model: "gpt-test".into(),
        endpoint: "/v1/chat/completions".into(),
        stream: false,
        status: 200,
        tokens: Tokens {
            input: 3,
            output: 4,
            cache_read: 5,
            cache_write: 6,
        },
        cost_nanos: cost,
        billing_status: BillingStatus::Complete,
        latency_ms: 1,
        ttfb_ms: Some(1),
        error: None,
        reserved: 0,
        key_windows: None,
        key_reserved: 0,
    }
}

#[tokio::test]
async fn settling_the_same_batch_twice_counts_once() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    let (acc, _) = app.wire_upstream(&fake).await;
    let (uid, kid, _) = funded_key(&app, "idem").await;
    let up = app.state.db.list_user_packages(uid).await.unwrap()[0].id;
    let batch = vec![
        event("a", uid, kid, acc, Some(up), 100),
        event("b", uid, kid, acc, Some(up), 250),
    ];
    let first = app.state.db.settle(&batch, 0).await.unwrap();
    assert_eq!((first.applied, first.duplicates), (2, 0));
    let again = app.state.db.settle(&batch, 0).await.unwrap();
    assert_eq!((again.applied, again.duplicates), (0, 2));
    // A batch with one old and one new event applies only the new one.
    let mixed = vec![
        event("b", uid, kid, acc, Some(up), 250),
        event("c", uid, kid, acc, Some(up), 1),
    ];
    let m = app.state.db.settle(&mixed, 0).await.unwrap();
    assert_eq!((m.applied, m.fresh.clone()), (1, vec![1]));
    let l = app.state.db.ledger().await.unwrap();
    for sink in [l.request_logs, l.usage_daily, l.api_keys, l.accounts] {
        assert_eq!(
            (
                sink.requests,
                sink.cost,
                sink.input_tokens,
                sink.cache_write_tokens
            ),
            (3, 351, 9, 18)
        );
    }
    assert_eq!(l.user_packages_cost, 351);
    // Through the recorder too (same request ids again: nothing changes).
    app.state
        .recorder
        .record(event("a", uid, kid, acc, Some(up), 100));
    app.state
        .recorder
        .record(event("d", uid, kid, acc, Some(up), 7));
    app.wait_for_logs(4).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let l = app.state.db.ledger().await.unwrap();
    assert_eq!(
        (
            l.request_logs.requests,
            l.api_keys.cost,
            l.user_packages_cost
        ),
        (4, 358, 358)
    );
}

/// ≥ 300 requests, ≥ 32 in parallel, both protocols, stream and not, two users, three keys:
/// every sink holds exactly the total the test computes itself, and so do today's stats.
#[tokio::test]
async fn the_ledger_holds_under_concurrency() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let (u1, _, k1) = funded_key(&app, "ledger-a").await;
    let (k2_id, k2) = app.key(u1, json!({"name": "second"})).await;
    let (u2, _, k3) = funded_key(&app, "ledger-b").await;
    let _ = (k2_id, u2);
    let keys = [k1, k2, k3];
    const N: usize = 320;

    struct Plan {
        key: usize,
        anthropic: bool,
        stream: bool,
        prompt: i64,
        out: i64,
        cached: i64,
        write: i64,
    }
    let plans: Vec<Plan> = (0..N)
        .map(|i| {
            let anthropic = i % 2 == 1;
            Plan {
                key: i % 3,
                anthropic,
                stream: (i / 2) % 2 == 1,
                prompt: 10 + (i as i64 % 7) * 2,
                out: 4 + i as i64 % 5 * 2,
                cached: (i as i64 % 3) * 4,
                write: if anthropic {
                    (i as i64 % 2) * 20 + (i as i64 % 4) * 40
                } else {
                    0
                },
            }
        })
        .collect();
    let mut expect = (0i64, Tokens::default());
    for p in &plans {
        let c = if p.anthropic {
            claude_cost(p.prompt, p.out, p.cached, p.write)
        } else {
            gpt_cost(p.prompt, p.out, p.cached)
        };
        expect.0 += c;
        expect.1.input += p.prompt;
        expect.1.output += p.out;
        expect.1.cache_read += p.cached;
        expect.1.cache_write += p.write;
    }

    let results: Vec<(u16, String)> = stream::iter(plans.iter())
        .map(|p| {
            let (app, keys) = (&app, &keys);
            async move {
                let (path, body) = if p.anthropic {
                    ("/v1/messages", messages_body(p.stream))
                } else {
                    ("/v1/chat/completions", chat_body(p.stream))
                };
                let r = app
                    .http
                    .post(app.url(path))
                    .bearer_auth(&keys[p.key])
                    .header("x-fake-prompt-tokens", p.prompt.to_string())
                    .header("x-fake-completion-tokens", p.out.to_string())
                    .header("x-fake-cached-tokens", p.cached.to_string())
                    .header("x-fake-cache-write-tokens", p.write.to_string())
                    .header("x-fake-chunks", "2")
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let s = r.status().as_u16();
                (s, r.text().await.unwrap())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for (s, body) in &results {
        assert_eq!(*s, 200, "{body}");
    }
    app.wait_for_logs(N as i64).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let l = app.state.db.ledger().await.unwrap();
    for (name, sink) in [
        ("request_logs", l.request_logs),
        ("usage_daily", l.usage_daily),
        ("api_keys", l.api_keys),
        ("accounts", l.accounts),
    ] {
        assert_eq!(sink.requests, N as i64, "{name} requests");
        assert_eq!(sink.cost, expect.0, "{name} cost");
        assert_eq!(
            (
                sink.input_tokens,
                sink.output_tokens,
                sink.cache_read_tokens,
                sink.cache_write_tokens
            ),
            (
                expect.1.input,
                expect.1.output,
                expect.1.cache_read,
                expect.1.cache_write
            ),
            "{name} tokens"
        );
    }
    assert_eq!(l.user_packages_cost, expect.0, "user_packages");
    // Per user: each user's package usage equals its keys' costs.
    for uid in [u1, u2] {
        let ups: i64 = app
            .state
            .db
            .list_user_packages(uid)
            .await
            .unwrap()
            .iter()
            .map(|g| g.quota_used)
            .sum();
        let keys: i64 = app
            .state
            .db
            .list_keys(Some(uid), None, 100)
            .await
            .unwrap()
            .iter()
            .map(|k| k.used_cost)
            .sum();
        assert_eq!(ups, keys);
        assert!(ups > 0);
    }
    // Today's real-time counters (Redis on the MySQL run, in process on SQLite) agree.
    let (_, st) = app.get("/stats/today").await;
    assert_eq!(st["total"]["requests"], N as i64, "{st}");
    assert_eq!(st["total"]["cost"], Usd(expect.0).to_string());
    assert_eq!(st["total"]["input_tokens"], expect.1.input);
    assert_eq!(st["total"]["output_tokens"], expect.1.output);
    assert_eq!(st["total"]["cache_read_tokens"], expect.1.cache_read);
    assert_eq!(st["total"]["cache_write_tokens"], expect.1.cache_write);
    let by_user: i64 = st["by"]["user"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v["requests"].as_i64().unwrap())
        .sum();
    assert_eq!(by_user, N as i64);
    if let Some(prefix) = &app.redis_prefix {
        // The documented key layout, read straight from Redis.
        let client = redis::Client::open(redis_url().unwrap()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let day = tollgate::billing::windows::day_string(Utc::now(), chrono_tz::UTC);
        let key = format!("{prefix}stats:{day}:total:all");
        let cost: i64 = redis::cmd("HGET")
            .arg(&key)
            .arg("cost_nanos")
            .query_async(&mut c)
            .await
            .unwrap();
        let reqs: i64 = redis::cmd("HGET")
            .arg(&key)
            .arg("requests")
            .query_async(&mut c)
            .await
            .unwrap();
        let ttl: i64 = redis::cmd("TTL")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!((cost, reqs), (expect.0, N as i64));
        assert!(ttl > 39 * 86_400 && ttl <= 40 * 86_400, "ttl {ttl}");
    }
}

/// Charges on both sides of midnight in Asia/Shanghai land in the right daily window and the
/// right usage_daily day; weekly and monthly windows roll at their anchors; times come from
/// the gateway's clock.
#[tokio::test]
async fn windows_roll_over_at_local_midnight_and_anchors() {
    let sh = chrono_tz::Asia::Shanghai;
    let local = |y, m, d, h, mi| {
        sh.with_ymd_and_hms(y, m, d, h, mi, 0)
            .unwrap()
            .with_timezone(&Utc)
    };
    let start = local(2026, 1, 10, 9, 0);
    let clock = Clock::manual(local(2026, 1, 12, 23, 59));
    let app = spawn_with(Options {
        clock: Some(clock.clone()),
        timezone: "Asia/Shanghai".into(),
        ..Default::default()
    })
    .await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let uid = app.user("roll").await;
    let pid = app
        .package(json!({"name": "R", "type": "subscription", "daily_quota": "10", "weekly_quota": "50", "monthly_quota": "100", "duration_days": 90}))
        .await;
    let g = app.grant(uid, pid, Some(start)).await;
    let (_, key) = app.key(uid, json!({"name": "k"})).await;
    let one = gpt_cost(12, 8, 0);
    let mut sent = 0;
    let mut call = |at: chrono::DateTime<Utc>| {
        clock.set(at);
        sent += 1;
        let n = sent;
        let (app, key) = (&app, &key);
        async move {
            let r = app
                .http
                .post(app.url("/v1/chat/completions"))
                .bearer_auth(key)
                .json(&chat_body(false))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            app.wait_for_logs(n).await;
            app.state.db.get_user_package(g).await.unwrap()
        }
    };
    let before = call(local(2026, 1, 12, 23, 59)).await;
    assert_eq!(before.daily_used, one);
    assert_eq!(
        before.daily_window_start,
        Some(local(2026, 1, 12, 0, 0).timestamp_millis())
    );
    let after = call(local(2026, 1, 13, 0, 1)).await;
    assert_eq!(after.daily_used, one, "a new day starts from zero");
    assert_eq!(
        after.daily_window_start,
        Some(local(2026, 1, 13, 0, 0).timestamp_millis())
    );
    assert_eq!(after.weekly_used, 2 * one, "same week");
    assert_eq!(after.weekly_window_start, Some(start.timestamp_millis()));
    // Week 1 starts at the anchor + 7 days: 2026-01-17 09:00 local.
    let w0 = call(local(2026, 1, 17, 8, 59)).await;
    assert_eq!(w0.weekly_used, 3 * one);
    let w1 = call(local(2026, 1, 17, 9, 0)).await;
    assert_eq!(w1.weekly_used, one);
    assert_eq!(
        w1.weekly_window_start,
        Some(local(2026, 1, 17, 9, 0).timestamp_millis())
    );
    assert_eq!(w1.monthly_used, 4 * one);
    // Month 1 starts 2026-02-10 09:00 local.
    let m1 = call(local(2026, 2, 10, 9, 0)).await;
    assert_eq!(m1.monthly_used, one);
    assert_eq!(
        m1.monthly_window_start,
        Some(local(2026, 2, 10, 9, 0).timestamp_millis())
    );
    assert_eq!(m1.quota_used, 5 * one, "lifetime usage keeps counting");

    // usage_daily: days in the billing timezone.
    let (_, d) = app.get("/usage/daily").await;
    let days: Vec<(String, i64)> = d["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["day"].as_str().unwrap().to_string(),
                r["requests"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        days,
        vec![
            ("2026-01-12".to_string(), 1),
            ("2026-01-13".to_string(), 1),
            ("2026-01-17".to_string(), 2),
            ("2026-02-10".to_string(), 1)
        ]
    );
    let (_, d) = app.get("/usage/daily?from=2026-01-13&to=2026-01-17").await;
    assert_eq!(d["data"].as_array().unwrap().len(), 2);
    // Log times are the gateway clock's, not the database's.
    let (_, logs) = app.get("/logs?limit=1").await;
    assert_eq!(
        logs["data"][0]["created_at"],
        tollgate::clock::rfc3339(local(2026, 2, 10, 9, 0).timestamp_millis())
    );
}

#[tokio::test]
async fn usage_logs_and_stats_endpoints() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    let (acc, _) = app.wire_upstream(&fake).await;
    let (uid, kid, key) = funded_key(&app, "views").await;
    for _ in 0..5 {
        let r = app
            .http
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&chat_body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    app.wait_for_logs(5).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/logs?limit=2&user_id={uid}&cursor={c}"),
            None => format!("/logs?limit=2&user_id={uid}"),
        };
        let (s, page) = app.get(&path).await;
        assert_eq!(s, 200, "{page}");
        for r in page["data"].as_array().unwrap() {
            seen.push((
                r["created_at"].as_str().unwrap().to_string(),
                r["id"].as_i64().unwrap(),
            ));
            assert_eq!(r["api_key_id"], kid);
            assert_eq!(r["account_id"], acc);
            assert_eq!(r["model"], "gpt-test");
            assert_eq!(r["cost"], Usd(gpt_cost(12, 8, 0)).to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "newest first");
    assert_eq!(seen.iter().map(|x| x.1).collect::<HashSet<_>>().len(), 5);
    let (s, _) = app.get("/logs?cursor=garbage").await;
    assert_eq!(s, 400);

    let (_, d) = app.get(&format!("/usage/daily?api_key_id={kid}")).await;
    let row = &d["data"][0];
    assert_eq!(
        (row["requests"].as_i64(), row["input_tokens"].as_i64()),
        (Some(5), Some(60))
    );
    assert_eq!(row["cost"], Usd(5 * gpt_cost(12, 8, 0)).to_string());
    let (s, _) = app.get("/usage/daily?from=2026-13-01").await;
    assert_eq!(s, 400);

    let (_, st) = app.get("/stats/today").await;
    assert_eq!(st["total"]["requests"], 5);
    assert_eq!(
        st["by"]["key"][kid.to_string()]["cost"],
        Usd(5 * gpt_cost(12, 8, 0)).to_string()
    );
    assert_eq!(st["by"]["model"]["gpt-test"]["requests"], 5);
}

/// A quota package with room for about 10 requests, hit by 50 at once.
#[tokio::test]
async fn no_oversell_beyond_what_is_in_flight() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let uid = app.user("burst").await;
    let one = gpt_cost(12, 8, 0);
    let total = 10 * one;
    let pid = app
        .package(json!({"name": "ten", "type": "quota", "quota_total": Usd(total).to_string(), "duration_days": 30}))
        .await;
    let g = app.grant(uid, pid, None).await;
    let (_, key) = app.key(uid, json!({"name": "k"})).await;
    let mut body = chat_body(false);
    body["max_tokens"] = json!(8);
    let statuses: Vec<u16> = stream::iter(0..50)
        .map(|_| {
            let (app, key, body) = (&app, &key, &body);
            async move {
                app.http
                    .post(app.url("/v1/chat/completions"))
                    .bearer_auth(key)
                    .header("x-fake-header-delay-ms", "300")
                    .json(body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    let admitted = statuses.iter().filter(|s| **s == 200).count() as i64;
    let refused = statuses.iter().filter(|s| **s == 429).count() as i64;
    assert_eq!(admitted + refused, 50);
    app.wait_for_logs(admitted).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let used = app.state.db.get_user_package(g).await.unwrap().quota_used;
    let over = used - total;
    eprintln!(
        "oversell: quota {} USD, {admitted} admitted, {refused} refused, used {} USD, over by {} USD (bound: one request, {} USD)",
        Usd(total),
        Usd(used),
        Usd(over.max(0)),
        Usd(one)
    );
    assert_eq!(
        used,
        admitted * one,
        "every admitted request charged in full"
    );
    assert!(
        admitted >= 5,
        "reservations must not starve a package with room: {admitted}"
    );
    assert!(
        over < one,
        "over by {over} nano-dollars, more than one request in flight"
    );
    // Once settled, the package is either full or has room for the next request.
    let r = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), if used < total { 200 } else { 429 });
    let _: Value = r.json().await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_drains_the_recorder() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    let (acc, _) = app.wire_upstream(&fake).await;
    let (uid, kid, _) = funded_key(&app, "drain").await;
    let up = app.state.db.list_user_packages(uid).await.unwrap()[0].id;
    for i in 0..500 {
        app.state
            .recorder
            .record(event(&format!("drain-{i}"), uid, kid, acc, Some(up), 3));
    }
    let url = app.db_url.clone();
    let _keep = app.shutdown().await;
    let db = tollgate::store::Db::connect(&url, 1).await.unwrap();
    let l = db.ledger().await.unwrap();
    assert_eq!(
        (
            l.request_logs.requests,
            l.api_keys.cost,
            l.user_packages_cost
        ),
        (500, 1500, 1500)
    );
}
