//! Faults on the real binary (SPEC §11.5): `kill -9` under load, the database cut and hung,
//! Redis cut and hung, no room for usage. MySQL and Redis faults go through a TCP fault proxy
//! of the test's own (`faultproxy`); the shared servers are never stopped. Each scenario
//! prints its figures: tried / answered / recorded / lost.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tollgate::fake_upstream::FakeUpstream;
use tollgate::store::{Db, Pool};

use crate::faultproxy::{FaultProxy, Mode};
use crate::helpers::*;
use crate::proxy::{chat_body, messages_body};

const MYSQL_TARGET: &str = "127.0.0.1:3306";

/// One request of the load.
#[derive(Debug)]
struct Outcome {
    /// When it was sent, since the load started.
    at: Duration,
    latency: Duration,
    /// None: no answer (connection refused or broken).
    status: Option<u16>,
    /// The whole body arrived.
    complete: bool,
    request_id: Option<String>,
    body: String,
}

/// `clients` loops sending requests (both protocols, streamed and not) until `stop`.
fn drive(
    base: String,
    key: String,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Outcome>> {
    tokio::spawn(async move {
        let t0 = Instant::now();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let (http, base, key, stop) =
                    (http.clone(), base.clone(), key.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    let mut i = c;
                    while !stop.load(Ordering::Relaxed) {
                        i += clients;
                        let (path, body) = if i % 2 == 0 {
                            ("/v1/chat/completions", chat_body(i % 4 == 0))
                        } else {
                            ("/v1/messages", messages_body(i % 4 == 1))
                        };
                        let sent = Instant::now();
                        let at = sent - t0;
                        let r = http
                            .post(format!("{base}{path}"))
                            .bearer_auth(&key)
                            .header("x-fake-chunks", "2")
                            .header("x-fake-chunk-delay-ms", "5")
                            .json(&body)
                            .send()
                            .await;
                        let o = match r {
                            Err(_) => Outcome {
                                at,
                                latency: sent.elapsed(),
                                status: None,
                                complete: false,
                                request_id: None,
                                body: String::new(),
                            },
                            Ok(r) => {
                                let status = r.status().as_u16();
                                let request_id = r
                                    .headers()
                                    .get("x-tollgate-request-id")
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_string);
                                let body = r.bytes().await;
                                Outcome {
                                    at,
                                    latency: sent.elapsed(),
                                    status: Some(status),
                                    complete: body.is_ok(),
                                    request_id,
                                    body: body
                                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                                        .unwrap_or_default(),
                                }
                            }
                        };
                        let refused = o.status.is_none();
                        out.push(o);
                        // Bounded load: the other tests run alongside.
                        let pause = if refused { 20 } else { 5 };
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                    out
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    })
}

/// The request ids of the 2xx answers the client received whole.
fn answered(outcomes: &[Outcome]) -> Vec<String> {
    outcomes
        .iter()
        .filter(|o| o.status.is_some_and(|s| (200..300).contains(&s)) && o.complete)
        .map(|o| {
            o.request_id
                .clone()
                .expect("a proxied answer names its request")
        })
        .collect()
}

async fn logged_ids(db: &Db) -> HashSet<String> {
    let q = "SELECT request_id FROM request_logs";
    let ids: Vec<String> = match db.pool() {
        Pool::Sqlite(p) => sqlx::query_scalar(q).fetch_all(p).await.unwrap(),
        Pool::MySql(p) => sqlx::query_scalar(q).fetch_all(p).await.unwrap(),
    };
    let n = ids.len();
    let set: HashSet<String> = ids.into_iter().collect();
    assert_eq!(set.len(), n, "a request is logged twice");
    set
}

/// Wait (up to `secs`) until every answered request is logged; returns how many are not.
async fn lost_after(db: &Db, answered: &[String], secs: u64) -> usize {
    let t0 = Instant::now();
    loop {
        let logged = logged_ids(db).await;
        let lost = answered.iter().filter(|id| !logged.contains(*id)).count();
        if lost == 0 || t0.elapsed() > Duration::from_secs(secs) {
            return lost;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Σ request_logs.cost = Σ usage_daily.cost = Σ api_keys.used_cost = Σ accounts.total_cost =
/// Σ user_packages.quota_used; returns (requests logged, cost).
async fn sinks_agree(db: &Db) -> (i64, i64) {
    let l = db.ledger().await.unwrap();
    let c = l.request_logs.cost;
    assert_eq!(
        (
            l.usage_daily.cost,
            l.api_keys.cost,
            l.accounts.cost,
            l.user_packages_cost
        ),
        (c, c, c, c),
        "the sinks disagree: {l:?}"
    );
    (l.request_logs.requests, c)
}

/// The binary's settings for these tests: its journal, and Redis (direct) on MySQL runs.
fn env_with(
    journal: &std::path::Path,
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&'static str, String)> = vec![(
        "TOLLGATE_RECORDER__JOURNAL_PATH",
        journal.display().to_string(),
    )];
    if backend() == Backend::MySql && !extra.iter().any(|(k, _)| *k == "TOLLGATE_REDIS__URL") {
        env.push(("TOLLGATE_REDIS__URL", redis_url().unwrap()));
    }
    env.push((
        "TOLLGATE_REDIS__KEY_PREFIX",
        format!("tgtest:{}:", uuid::Uuid::new_v4().simple()),
    ));
    env.extend(extra.iter().cloned());
    env
}

/// Is this a MySQL run? Otherwise say loudly that the scenario needs it (the MySQL pass of
/// `.ci/run` runs it).
fn mysql_only(name: &str) -> bool {
    if backend() == Backend::MySql {
        return true;
    }
    eprintln!("SKIPPING on SQLite: {name} needs a networked database (TOLLGATE_TEST_BACKEND=mysql; run by .ci/run's MySQL pass)");
    false
}

fn journal_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_answered() {
    let (url, _guard) = fresh_database(backend()).await;
    let journal = tempfile::tempdir().unwrap();
    let env = env_with(journal.path(), &[]);
    let mut server = start_binary(&url, &env, Stdio::null()).await;
    let fake = FakeUpstream::start().await.unwrap();
    let key = seed_over_http(&server.base, &fake, "sk-upstream", json!({"name": "k"})).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = drive(server.base.clone(), key, 8, stop.clone());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    server.child.kill().unwrap(); // SIGKILL
    let _ = server.child.wait();
    stop.store(true, Ordering::Relaxed);
    let outcomes = load.await.unwrap();
    let ids = answered(&outcomes);
    let db = Db::connect(&url, 2).await.unwrap();
    let before = logged_ids(&db).await;
    let missing = ids.iter().filter(|id| !before.contains(*id)).count();

    // Restart on the same database and journal: the journal is replayed before it serves.
    let mut again = start_binary(&url, &env, Stdio::null()).await;
    let lost = lost_after(&db, &ids, 10).await;
    let (recorded, _) = sinks_agree(&db).await;
    eprintln!(
        "kill -9: tried {}, answered {}, recorded {recorded}, lost {lost} ({missing} answered were only in the journal at the kill)",
        outcomes.len(),
        ids.len()
    );
    assert!(ids.len() > 50, "the load ran: {} answered", ids.len());
    assert_eq!(lost, 0, "answered requests missing from request_logs");
    assert!(again.sigterm().await.success());
    assert_eq!(
        journal_files(journal.path()),
        0,
        "the journal is applied and gone"
    );
}

/// How a phase of a fault scenario went.
fn report(name: &str, outcomes: &[Outcome], phases: &[(&str, Duration, Duration)]) {
    for (label, from, to) in phases {
        let in_phase: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.at >= *from && o.at < *to)
            .collect();
        let count = |s: u16| in_phase.iter().filter(|o| o.status == Some(s)).count();
        let max = in_phase.iter().map(|o| o.latency).max().unwrap_or_default();
        eprintln!(
            "{name} {label}: {} requests, {} × 200, {} × 503, {} other, max latency {} ms",
            in_phase.len(),
            count(200),
            count(503),
            in_phase.len() - count(200) - count(503),
            max.as_millis()
        );
    }
}

/// `/readyz` within 1 s: (status, body).
async fn readyz(base: &str) -> (u16, Value) {
    let t0 = Instant::now();
    let r = reqwest::Client::new()
        .get(format!("{base}/readyz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "/readyz took {:?}",
        t0.elapsed()
    );
    (s, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_cut_and_hung_under_load() {
    if !mysql_only("database_cut_and_hung_under_load") {
        return;
    }
    let (url, _guard) = fresh_database(backend()).await;
    let proxy = FaultProxy::start(MYSQL_TARGET).await;
    let via = proxy.url(&url, MYSQL_TARGET);
    let journal = tempfile::tempdir().unwrap();
    let env = env_with(
        journal.path(),
        &[("TOLLGATE_DATABASE__TIMEOUT_MS", "1000".into())],
    );
    let mut server = start_binary(&via, &env, Stdio::null()).await;
    let fake = FakeUpstream::start().await.unwrap();
    let key = seed_over_http(&server.base, &fake, "sk-upstream", json!({"name": "k"})).await;

    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let load = drive(server.base.clone(), key, 8, stop.clone());
    let s = Duration::from_secs;
    let phases = [
        ("up", s(0), s(2)),
        ("cut", s(2), s(8)),
        ("restored", s(8), s(11)),
        ("hung", s(11), s(17)),
        ("restored again", s(17), s(20)),
    ];
    for (label, from, to) in phases {
        let mode = match label {
            "cut" => Mode::Cut,
            "hung" => Mode::Hang,
            _ => Mode::Pass,
        };
        tokio::time::sleep(from.saturating_sub(t0.elapsed())).await;
        proxy.set(mode);
        if mode != Mode::Pass {
            // Readiness follows the database, fast, once the caches' grace is over.
            tokio::time::sleep(s(5)).await;
            let (st, v) = readyz(&server.base).await;
            assert_eq!(
                (st, v["database"].as_str()),
                (503, Some("unreachable")),
                "{v}"
            );
        }
        tokio::time::sleep(to.saturating_sub(t0.elapsed())).await;
    }
    stop.store(true, Ordering::Relaxed);
    let outcomes = load.await.unwrap();
    report("database", &outcomes, &phases);
    for o in &outcomes {
        let st = o.status.expect("the gateway always answers");
        assert!(st == 200 || st == 503, "{st}: {}", o.body);
        if st == 503 {
            assert!(
                o.body.contains("gateway_unavailable") || o.body.contains("overloaded_error"),
                "{}",
                o.body
            );
        }
    }
    let during = |label: &str| {
        let (_, from, to) = phases.iter().find(|p| p.0 == label).unwrap();
        outcomes
            .iter()
            .filter(|o| o.at >= *from && o.at < *to)
            .collect::<Vec<_>>()
    };
    // The caches carry the first seconds of an outage; past them, 503 at once.
    for label in ["cut", "hung"] {
        let p = during(label);
        assert!(
            p.iter().any(|o| o.status == Some(200)),
            "{label}: no request served from the caches"
        );
        assert!(p.iter().any(|o| o.status == Some(503)), "{label}: no 503");
    }
    let slow = during("hung")
        .iter()
        .filter(|o| o.latency > Duration::from_millis(2500))
        .count();
    assert!(slow <= 16, "{slow} requests waited on the hung database");
    assert!(
        during("restored again")
            .iter()
            .any(|o| o.status == Some(200)),
        "serving again after the database returned"
    );
    let ids = answered(&outcomes);
    let db = Db::connect(&url, 2).await.unwrap();
    let lost = lost_after(&db, &ids, 20).await;
    let (recorded, _) = sinks_agree(&db).await;
    eprintln!(
        "database outage: tried {}, answered {}, recorded {recorded}, lost {lost}",
        outcomes.len(),
        ids.len()
    );
    assert_eq!(lost, 0);
    assert!(server.sigterm().await.success());
    assert_eq!(
        journal_files(journal.path()),
        0,
        "the journal is applied and gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cut_and_hung_under_load() {
    let Some(redis) = redis_url() else {
        return;
    };
    let target = redis
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let (url, _guard) = fresh_database(backend()).await;
    let proxy = FaultProxy::start(&target).await;
    let journal = tempfile::tempdir().unwrap();
    let env = env_with(
        journal.path(),
        &[("TOLLGATE_REDIS__URL", proxy.url(&redis, &target))],
    );
    let mut server = start_binary(&url, &env, Stdio::null()).await;
    let fake = FakeUpstream::start().await.unwrap();
    let key = seed_over_http(
        &server.base,
        &fake,
        "sk-upstream",
        json!({"name": "k", "rpm_limit": 1_000_000}),
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let load = drive(server.base.clone(), key, 8, stop.clone());
    let s = Duration::from_secs;
    let phases = [
        ("up", s(0), s(2)),
        ("cut", s(2), s(6)),
        ("restored", s(6), s(8)),
        ("hung", s(8), s(12)),
        ("restored again", s(12), s(15)),
    ];
    for (label, from, to) in phases {
        let mode = match label {
            "cut" => Mode::Cut,
            "hung" => Mode::Hang,
            _ => Mode::Pass,
        };
        tokio::time::sleep(from.saturating_sub(t0.elapsed())).await;
        proxy.set(mode);
        if mode != Mode::Pass {
            tokio::time::sleep(s(1)).await;
            let (st, v) = readyz(&server.base).await;
            assert_eq!(st, 200, "Redis down is not unready: {v}");
            assert_eq!(v["redis"], "degraded", "{v}");
            assert_eq!(v["database"], "ok", "{v}");
        }
        tokio::time::sleep(to.saturating_sub(t0.elapsed())).await;
    }
    stop.store(true, Ordering::Relaxed);
    let outcomes = load.await.unwrap();
    report("redis", &outcomes, &phases);
    for o in &outcomes {
        assert_eq!(o.status, Some(200), "{}", o.body);
        // The key's RPM limit is counted in Redis: a hung Redis must not hold requests long.
        assert!(o.latency < Duration::from_millis(500), "{:?}", o.latency);
    }
    let ids = answered(&outcomes);
    let db = Db::connect(&url, 2).await.unwrap();
    let lost = lost_after(&db, &ids, 20).await;
    let (recorded, cost) = sinks_agree(&db).await;
    // Today's real-time counters are caught up from the database.
    let http = reqwest::Client::new();
    let t1 = Instant::now();
    let stats = loop {
        let v: Value = http
            .get(format!("{}/api/admin/stats/today", server.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["total"]["requests"] == recorded || t1.elapsed() > s(10) {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "redis outage: tried {}, answered {}, recorded {recorded}, lost {lost}; stats today: {} requests",
        outcomes.len(),
        ids.len(),
        stats["total"]["requests"]
    );
    assert_eq!(lost, 0);
    assert_eq!(stats["total"]["requests"], recorded, "{stats}");
    assert_eq!(
        stats["total"]["cost"],
        tollgate::billing::money::Usd(cost).to_string(),
        "{stats}"
    );
    assert!(server.sigterm().await.success());
}

#[tokio::test]
async fn an_unwritable_journal_path_stops_startup() {
    let (url, _guard) = fresh_database(backend()).await;
    let dir = tempfile::tempdir().unwrap();
    // A folder under a regular file cannot be made, even by root.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"not a folder").unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .arg("serve")
            .arg("--config")
            .arg(format!("{}/config.toml", env!("CARGO_MANIFEST_DIR")))
            .env("TOLLGATE_SERVER__LISTEN", "127.0.0.1:0")
            .env("TOLLGATE_DATABASE__URL", &url)
            .env("TOLLGATE_RECORDER__JOURNAL_PATH", blocker.join("journal"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started anyway: {stderr}");
    assert!(stderr.contains("recorder.journal_path"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_room_for_usage_refuses_new_requests() {
    if !mysql_only("no_room_for_usage_refuses_new_requests") {
        return;
    }
    let (url, _guard) = fresh_database(backend()).await;
    let proxy = FaultProxy::start(MYSQL_TARGET).await;
    let via = proxy.url(&url, MYSQL_TARGET);
    let journal = tempfile::tempdir().unwrap();
    let env = env_with(
        journal.path(),
        &[
            ("TOLLGATE_DATABASE__TIMEOUT_MS", "1000".into()),
            // Room for about a hundred events.
            ("TOLLGATE_RECORDER__JOURNAL_MAX_BYTES", "60000".into()),
        ],
    );
    let mut server = start_binary(&via, &env, Stdio::null()).await;
    let fake = FakeUpstream::start().await.unwrap();
    let key = seed_over_http(&server.base, &fake, "sk-upstream", json!({"name": "k"})).await;

    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let load = drive(server.base.clone(), key, 8, stop.clone());
    let s = Duration::from_secs;
    let phases = [
        ("up", s(0), s(2)),
        ("database cut", s(2), s(6)),
        ("restored", s(6), s(14)),
    ];
    tokio::time::sleep(s(2)).await;
    proxy.set(Mode::Cut);
    tokio::time::sleep(s(6).saturating_sub(t0.elapsed())).await;
    proxy.set(Mode::Pass);
    tokio::time::sleep(s(14).saturating_sub(t0.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    let outcomes = load.await.unwrap();
    report("no room", &outcomes, &phases);
    let unrecordable = outcomes
        .iter()
        .filter(|o| o.status == Some(503) && o.body.contains("cannot record usage"))
        .count();
    assert!(unrecordable > 0, "no request was refused for want of room");
    for o in &outcomes {
        let st = o.status.expect("the gateway always answers");
        assert!(st == 200 || st == 503, "{st}: {}", o.body);
    }
    assert!(
        outcomes
            .iter()
            .any(|o| o.at > s(10) && o.status == Some(200)),
        "serving again once the database took the events"
    );
    let ids = answered(&outcomes);
    let db = Db::connect(&url, 2).await.unwrap();
    let lost = lost_after(&db, &ids, 20).await;
    let (recorded, _) = sinks_agree(&db).await;
    eprintln!(
        "no room for usage: tried {}, answered {}, refused for want of room {unrecordable}, recorded {recorded}, lost {lost}",
        outcomes.len(),
        ids.len()
    );
    assert_eq!(lost, 0);
    assert!(server.sigterm().await.success());
    assert_eq!(
        journal_files(journal.path()),
        0,
        "the journal is applied and gone"
    );
}

/// A queue with room for almost nothing: what it cannot take is applied from the journal,
/// once, and the journal is gone afterwards.
#[tokio::test]
async fn events_the_queue_has_no_room_for_are_applied_from_the_journal() {
    let journal = tempfile::tempdir().unwrap();
    let dir = journal.path().to_path_buf();
    let app = spawn_with(Options {
        tweak: Some(Box::new(move |c| {
            c.recorder.queue_capacity = 2;
            c.recorder.journal_path = dir.display().to_string();
        })),
        ..Default::default()
    })
    .await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let (_, _, key) = crate::proxy::funded_key(&app, "tiny-queue").await;
    const N: usize = 200;
    let statuses: Vec<u16> = futures_util::stream::iter(0..N)
        .map(|i| {
            let (app, key) = (&app, &key);
            async move {
                let r = app
                    .http
                    .post(app.url("/v1/chat/completions"))
                    .bearer_auth(key)
                    .json(&chat_body(i % 2 == 0))
                    .send()
                    .await
                    .unwrap();
                let s = r.status().as_u16();
                r.bytes().await.unwrap();
                s
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    app.wait_for_logs(N as i64).await;
    let spilled = app.state.recorder.metrics().spilled.load(Ordering::Relaxed);
    let (recorded, _) = sinks_agree(&app.state.db).await;
    eprintln!("tiny queue: {N} answered, {spilled} applied from the journal, {recorded} recorded");
    assert_eq!(recorded, N as i64);
    assert!(spilled > 0, "the queue never overflowed");
    let _db = app.shutdown().await;
    assert_eq!(
        journal_files(journal.path()),
        0,
        "the journal is applied and gone"
    );
}

/// One chat request with `key`: (status, body, latency).
async fn one_chat(http: &reqwest::Client, base: &str, key: &str) -> (u16, String, Duration) {
    let t0 = Instant::now();
    let r = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.text().await.unwrap(), t0.elapsed())
}

/// A key nobody has: its lookup always needs the database (never in the key cache).
fn unknown_key() -> String {
    format!("tg-{}", uuid::Uuid::new_v4().simple())
}

/// A database that accepts connections but hangs mid-query (the fault proxy holds every
/// established connection) holds a request at most `database.statement_timeout_ms`: requests
/// that need the database answer 503 `gateway_unavailable` within 3× the bound (the
/// connection wait, `database.timeout_ms`, is set far longer so only the statement bound can
/// explain it); a key in the caches is still served; after the restore, all is well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_database_is_bounded_by_the_statement_timeout() {
    if !mysql_only("a_hung_database_is_bounded_by_the_statement_timeout") {
        return;
    }
    const BOUND_MS: u64 = 500;
    let (url, _guard) = fresh_database(backend()).await;
    let proxy = FaultProxy::start(MYSQL_TARGET).await;
    let via = proxy.url(&url, MYSQL_TARGET);
    let journal = tempfile::tempdir().unwrap();
    let env = env_with(
        journal.path(),
        &[
            ("TOLLGATE_DATABASE__TIMEOUT_MS", "10000".into()),
            (
                "TOLLGATE_DATABASE__STATEMENT_TIMEOUT_MS",
                BOUND_MS.to_string(),
            ),
        ],
    );
    let mut server = start_binary(&via, &env, Stdio::null()).await;
    let fake = FakeUpstream::start().await.unwrap();
    let key = seed_over_http(&server.base, &fake, "sk-upstream", json!({"name": "k"})).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    // Warm the caches for `key`.
    for _ in 0..3 {
        assert_eq!(one_chat(&http, &server.base, &key).await.0, 200);
    }

    proxy.set(Mode::Hang);
    // Within the caches' grace, a key they hold needs no database read.
    let (cached, body, cached_took) = one_chat(&http, &server.base, &key).await;
    assert_eq!(
        cached, 200,
        "a cached key is served while the database hangs: {body}"
    );
    let mut worst = Duration::ZERO;
    for i in 0..6 {
        let (s, body, took) = one_chat(&http, &server.base, &unknown_key()).await;
        assert_eq!(s, 503, "request {i}: {body}");
        assert!(body.contains("gateway_unavailable"), "{body}");
        worst = worst.max(took);
    }
    eprintln!(
        "hung database: statement bound {BOUND_MS} ms, slowest 503 {} ms, cached request 200 in {} ms",
        worst.as_millis(),
        cached_took.as_millis()
    );
    assert!(
        worst < Duration::from_millis(3 * BOUND_MS),
        "a request waited {worst:?} on the hung database"
    );

    proxy.set(Mode::Pass);
    let t0 = Instant::now();
    loop {
        let (s, body, _) = one_chat(&http, &server.base, &unknown_key()).await;
        if s == 401 {
            assert!(body.contains("invalid_api_key"), "{body}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "not back: {s} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(one_chat(&http, &server.base, &key).await.0, 200);
    assert!(server.sigterm().await.success());
}

/// A database outage under load logs a bounded number of lines: the first failure, at most
/// one summary per 5 s, the recovery once; not one line per failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_logs_a_bounded_number_of_lines() {
    if !mysql_only("a_database_outage_logs_a_bounded_number_of_lines") {
        return;
    }
    let (url, _guard) = fresh_database(backend()).await;
    let proxy = FaultProxy::start(MYSQL_TARGET).await;
    let via = proxy.url(&url, MYSQL_TARGET);
    let journal = tempfile::tempdir().unwrap();
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let env = env_with(
        journal.path(),
        &[
            ("TOLLGATE_DATABASE__TIMEOUT_MS", "300".into()),
            ("TOLLGATE_DATABASE__STATEMENT_TIMEOUT_MS", "300".into()),
            ("TOLLGATE_LOG__FORMAT", "text".into()),
        ],
    );
    let mut server = start_binary(&via, &env, Stdio::from(log)).await;
    let fake = FakeUpstream::start().await.unwrap();
    let _key = seed_over_http(&server.base, &fake, "sk-upstream", json!({"name": "k"})).await;
    let lines = |p: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("WARN"))
            .map(String::from)
            .collect()
    };
    let before = lines(&log_path).len();

    proxy.set(Mode::Cut);
    // 4 clients for 7 s, each request needing the database (an uncached key).
    let stop_at = Instant::now() + Duration::from_secs(7);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let base = server.base.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                let mut failed = 0usize;
                while Instant::now() < stop_at {
                    let (s, _, _) = one_chat(&http, &base, &unknown_key()).await;
                    if s == 503 {
                        failed += 1;
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = 0;
    for c in clients {
        failed += c.await.unwrap();
    }
    proxy.set(Mode::Pass);
    let http = reqwest::Client::new();
    let t0 = Instant::now();
    while one_chat(&http, &server.base, &unknown_key()).await.0 != 401 {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the database did not come back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(server.sigterm().await.success());
    let text = std::fs::read_to_string(&log_path).unwrap();
    let during = lines(&log_path).len() - before;
    let recovered = text
        .matches("the database answers the request path again")
        .count();
    eprintln!(
        "database outage logs: {failed} requests failed (503) in 7 s, {during} warn/error lines logged, recovery logged {recovered}×"
    );
    for l in lines(&log_path).iter().skip(before) {
        eprintln!("  {l}");
    }
    assert!(failed >= 100, "the load ran: {failed} failed requests");
    assert!(
        during <= 8,
        "{during} warn/error lines for {failed} failures"
    );
    assert_eq!(recovered, 1, "the recovery is logged once");
}
