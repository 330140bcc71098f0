//! The operator's console over the API (SPEC §11.6): the request-log filters (time range,
//! status class, billing status, model, user, key, account), and the CSV exports of the logs
//! and the daily usage, which take their JSON twins' filters and hold the same rows.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use serde_json::{json, Value};
use tollgate::billing::money::Usd;
use tollgate::clock::Clock;
use tollgate::fake_upstream::FakeUpstream;

use crate::helpers::*;

/// A user whose name needs CSV quoting (a comma and a quote).
const AWKWARD_USER: &str = "Smith, \"JJ\"";

struct World {
    app: TestApp,
    _fake: FakeUpstream,
    /// (id, key id, key) of the plain user and of the awkward one.
    plain: (i64, i64, String),
    awkward: (i64, i64, String),
    /// The OpenAI and Anthropic accounts.
    accounts: (i64, i64),
    /// When each of the five requests was made.
    times: Vec<DateTime<Utc>>,
}

async fn funded(app: &TestApp, name: &str) -> (i64, i64, String) {
    let user = app.user(name).await;
    let pkg = app
        .package(json!({"name": format!("{name}-q"), "type": "quota", "quota_total": "10", "duration_days": 30}))
        .await;
    app.grant(user, pkg, None).await;
    let (kid, key) = app.key(user, json!({"name": format!("{name}-key")})).await;
    (user, kid, key)
}

async fn send(app: &TestApp, key: &str, path: &str, model: &str, status: Option<&str>) -> u16 {
    let mut req = app.http.post(app.url(path)).bearer_auth(key).json(
        &json!({"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}),
    );
    if let Some(s) = status {
        req = req.header("x-fake-status", s);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    r.bytes().await.unwrap();
    status
}

/// Five requests ten minutes apart: a success on each provider (one by each user), an
/// upstream failure, a refusal at admission (an unknown model), and another success.
async fn world() -> World {
    let t0 = Utc::now().trunc_subsecs(0) - Duration::hours(3);
    let clock = Clock::manual(t0);
    let app = spawn_with(Options {
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    let fake = FakeUpstream::start().await.unwrap();
    let accounts = app.wire_upstream(&fake).await;
    let plain = funded(&app, "plain-user").await;
    let awkward = funded(&app, AWKWARD_USER).await;
    let mut times = Vec::new();
    let plan = [
        (&plain, "/v1/chat/completions", "gpt-test", None, 200),
        (&awkward, "/v1/messages", "claude-test", None, 200),
        (&plain, "/v1/chat/completions", "gpt-test", Some("500"), 0),
        (&awkward, "/v1/chat/completions", "no-such-model", None, 404),
        (&plain, "/v1/chat/completions", "gpt-test", None, 200),
    ];
    for (i, (who, path, model, fail, want)) in plan.into_iter().enumerate() {
        let at = t0 + Duration::minutes(10 * i as i64);
        clock.set(at);
        times.push(at);
        let got = send(&app, &who.2, path, model, fail).await;
        if want != 0 {
            assert_eq!(got, want, "request {i}");
        } else {
            assert!(got >= 500, "request {i}: {got}");
        }
    }
    app.wait_for_logs(4).await;
    // The refused row goes through the recorder too; wait for all five.
    for _ in 0..200 {
        let (_, v) = app.get("/logs").await;
        if v["data"].as_array().unwrap().len() == 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    World {
        app,
        _fake: fake,
        plain,
        awkward,
        accounts,
        times,
    }
}

async fn logs(app: &TestApp, query: &str) -> Vec<Value> {
    let (s, v) = app.get(&format!("/logs{query}")).await;
    assert_eq!(s, 200, "{query}: {v}");
    v["data"].as_array().unwrap().clone()
}

fn ids(rows: &[Value]) -> Vec<i64> {
    rows.iter().map(|r| r["id"].as_i64().unwrap()).collect()
}

fn q(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

#[tokio::test]
async fn each_log_filter_narrows_to_exactly_its_rows() {
    let w = world().await;
    let all = logs(&w.app, "").await;
    assert_eq!(all.len(), 5, "{all:?}");
    let t = |i: usize| q(&w.times[i].to_rfc3339());
    let time_of = |r: &Value| {
        DateTime::parse_from_rfc3339(r["created_at"].as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc)
    };
    let status = |r: &Value| r["status"].as_i64().unwrap();
    let billing = |r: &Value| r["billing_status"].as_str().unwrap().to_string();
    type Pred<'a> = Box<dyn Fn(&Value) -> bool + 'a>;
    let cases: Vec<(String, Pred)> = vec![
        (
            format!("?from={}&to={}", t(1), t(3)),
            Box::new(|r| time_of(r) >= w.times[1] && time_of(r) < w.times[3]),
        ),
        (
            format!("?from={}", t(3)),
            Box::new(|r| time_of(r) >= w.times[3]),
        ),
        (
            format!("?to={}", t(1)),
            Box::new(|r| time_of(r) < w.times[1]),
        ),
        (
            "?status_class=2xx".into(),
            Box::new(|r| (200..300).contains(&status(r))),
        ),
        (
            "?status_class=4xx".into(),
            Box::new(|r| (400..500).contains(&status(r))),
        ),
        (
            "?status_class=5xx".into(),
            Box::new(|r| (500..600).contains(&status(r))),
        ),
        (
            "?status_class=refused".into(),
            Box::new(|r| billing(r) == "refused"),
        ),
        (
            "?billing_status=void".into(),
            Box::new(|r| billing(r) == "void"),
        ),
        (
            "?billing_status=complete".into(),
            Box::new(|r| billing(r) == "complete"),
        ),
        (
            "?model=claude-test".into(),
            Box::new(|r| r["model"] == "claude-test"),
        ),
        (
            format!("?user_id={}", w.awkward.0),
            Box::new(|r| r["user_id"] == w.awkward.0),
        ),
        (
            format!("?api_key_id={}", w.plain.1),
            Box::new(|r| r["api_key_id"] == w.plain.1),
        ),
        (
            format!("?account_id={}", w.accounts.1),
            Box::new(|r| r["account_id"] == w.accounts.1),
        ),
        (
            format!("?user_id={}&status_class=2xx", w.plain.0),
            Box::new(|r| r["user_id"] == w.plain.0 && (200..300).contains(&status(r))),
        ),
        // An empty value (as an empty form field sends it) is no filter.
        (
            "?status_class=&billing_status=&from=&to=".into(),
            Box::new(|_| true),
        ),
    ];
    for (query, pred) in &cases {
        let want: Vec<i64> = all
            .iter()
            .filter(|r| pred(r))
            .map(|r| r["id"].as_i64().unwrap())
            .collect();
        let got = ids(&logs(&w.app, query).await);
        eprintln!("{query}: {} of {} rows", got.len(), all.len());
        assert_eq!(got, want, "{query}");
        if !query.contains("status_class=&") {
            assert!(
                !want.is_empty() && want.len() < all.len(),
                "{query} must narrow the list to some rows: {want:?}"
            );
        }
    }
    // Each class is what it says: the refusal is a 404 refused at admission, the failure a
    // void 5xx.
    let refused = logs(&w.app, "?status_class=refused").await;
    assert_eq!(refused.len(), 1);
    assert_eq!(
        (status(&refused[0]), refused[0]["model"].as_str()),
        (404, Some("no-such-model"))
    );
    let failed = logs(&w.app, "?status_class=5xx").await;
    assert_eq!(billing(&failed[0]), "void");

    // The filters combine with the cursor: paging through 2xx one row at a time.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (_, v) = w
            .app
            .get(&format!("/logs?status_class=2xx&limit=1&cursor={cursor}"))
            .await;
        seen.extend(ids(v["data"].as_array().unwrap()));
        match v["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, ids(&logs(&w.app, "?status_class=2xx").await));

    // Bad values: 400 naming the field.
    for (query, param) in [
        ("?status_class=3xx", "status_class"),
        ("?billing_status=free", "billing_status"),
        ("?from=yesterday", "from"),
        ("?to=2026-13-01T00:00:00Z", "to"),
    ] {
        let (s, v) = w.app.get(&format!("/logs{query}")).await;
        assert_eq!(s, 400, "{query}: {v}");
        assert_eq!(v["error"]["param"], param, "{query}: {v}");
        let (s, _) = w.app.get(&format!("/logs.csv{query}")).await;
        assert_eq!(s, 400, "{query} (CSV)");
    }
}

/// A CSV body split into records (RFC 4180: quoted fields, doubled quotes, CRLF).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(
        field.is_empty() && row.is_empty(),
        "the last record ends with CRLF"
    );
    rows
}

struct Csv {
    raw: Vec<u8>,
    header: Vec<String>,
    rows: Vec<BTreeMap<String, String>>,
}

async fn csv(app: &TestApp, path: &str) -> Csv {
    let r = app
        .http
        .get(app.url(&format!("/api/admin{path}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    assert_eq!(
        r.headers()["content-type"],
        "text/csv; charset=utf-8",
        "{path}"
    );
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment; filename="),
        "{path}"
    );
    // Streamed: no length known up front.
    assert!(r.headers().get("content-length").is_none(), "{path}");
    let raw = r.bytes().await.unwrap().to_vec();
    assert!(
        raw.starts_with(b"\xEF\xBB\xBF"),
        "{path}: a UTF-8 BOM first"
    );
    let text = std::str::from_utf8(&raw[3..]).unwrap();
    let mut records = parse_csv(text);
    let header = records.remove(0);
    let rows = records
        .into_iter()
        .map(|r| {
            assert_eq!(r.len(), header.len(), "{path}: {r:?}");
            header.iter().cloned().zip(r).collect()
        })
        .collect();
    Csv { raw, header, rows }
}

/// A JSON field as the CSV writes it.
fn as_cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Every JSON field of every row is the CSV's cell, in the same order; returns Σ cost.
fn assert_rows_equal(what: &str, json_rows: &[Value], csv: &Csv) -> Usd {
    assert_eq!(json_rows.len(), csv.rows.len(), "{what}: row count");
    let mut sum = 0i64;
    for (j, c) in json_rows.iter().zip(&csv.rows) {
        for (k, v) in j.as_object().unwrap() {
            assert_eq!(c.get(k), Some(&as_cell(v)), "{what}: field {k}");
        }
        sum += c["cost"].parse::<Usd>().unwrap().0;
    }
    let json_sum: i64 = json_rows
        .iter()
        .map(|r| r["cost"].as_str().unwrap().parse::<Usd>().unwrap().0)
        .sum();
    assert_eq!(sum, json_sum, "{what}: Σ cost to the nano-dollar");
    Usd(sum)
}

#[tokio::test]
async fn csv_exports_hold_their_json_twins_rows_with_a_bom_and_quoting() {
    let w = world().await;
    let log_header = [
        "id",
        "request_id",
        "created_at",
        "user_id",
        "username",
        "api_key_id",
        "key_name",
        "account_id",
        "account_name",
        "user_package_id",
        "model",
        "endpoint",
        "stream",
        "status",
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "cost",
        "billing_status",
        "latency_ms",
        "ttfb_ms",
        "error",
    ];
    let all = csv(&w.app, "/logs.csv").await;
    assert_eq!(all.header, log_header);
    let sum = assert_rows_equal("logs", &logs(&w.app, "").await, &all);
    eprintln!("logs.csv: {} rows, Σ cost {sum}", all.rows.len());
    assert!(sum.0 > 0);
    // The awkward name is quoted in the raw text and reads back whole.
    let quoted = "\"Smith, \"\"JJ\"\"\"";
    assert!(
        String::from_utf8_lossy(&all.raw).contains(quoted),
        "the name is quoted"
    );
    let awkward_rows: Vec<_> = all
        .rows
        .iter()
        .filter(|r| r["user_id"] == w.awkward.0.to_string())
        .collect();
    assert_eq!(awkward_rows.len(), 2);
    assert!(awkward_rows.iter().all(|r| r["username"] == AWKWARD_USER));
    assert!(all
        .rows
        .iter()
        .all(|r| r["key_name"].ends_with("-key") && !r["username"].is_empty()));

    // The same filters as the JSON twin.
    for query in [
        format!("?user_id={}", w.awkward.0),
        "?status_class=2xx&model=gpt-test".into(),
        format!(
            "?from={}&to={}",
            q(&w.times[1].to_rfc3339()),
            q(&w.times[4].to_rfc3339())
        ),
        "?billing_status=refused".into(),
    ] {
        let c = csv(&w.app, &format!("/logs.csv{query}")).await;
        let j = logs(&w.app, &query).await;
        assert!(!j.is_empty() && j.len() < 5, "{query}");
        let sum = assert_rows_equal(&query, &j, &c);
        eprintln!("logs.csv{query}: {} rows, Σ cost {sum}", c.rows.len());
    }

    // Daily usage: the rows of /usage/daily, with names.
    let daily_header = [
        "day",
        "user_id",
        "username",
        "api_key_id",
        "key_name",
        "account_id",
        "account_name",
        "model",
        "requests",
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "cost",
    ];
    for query in [
        String::new(),
        format!("?user_id={}", w.awkward.0),
        "?model=gpt-test".into(),
    ] {
        let c = csv(&w.app, &format!("/usage/daily.csv{query}")).await;
        assert_eq!(c.header, daily_header);
        let (s, j) = w.app.get(&format!("/usage/daily{query}")).await;
        assert_eq!(s, 200);
        let j = j["data"].as_array().unwrap().clone();
        assert!(!j.is_empty(), "{query}");
        let sum = assert_rows_equal(&format!("daily{query}"), &j, &c);
        eprintln!(
            "usage/daily.csv{query}: {} rows, Σ cost {sum}",
            c.rows.len()
        );
        if query.is_empty() {
            // The daily rows add up to the served logs' cost.
            let logs_sum: i64 = all
                .rows
                .iter()
                .map(|r| r["cost"].parse::<Usd>().unwrap().0)
                .sum();
            assert_eq!(sum.0, logs_sum, "Σ daily cost = Σ logs cost");
        }
    }
    let (s, v) = w.app.get("/usage/daily.csv?from=03-01-2026").await;
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("from")));
    // The exports need the admin token or a session, as the JSON twins do.
    let r = w
        .app
        .http
        .get(w.app.url("/api/admin/logs.csv"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// Rows straight into the database, `chunk` per INSERT (the export reads what the recorder
/// wrote; thousands of real requests would only make the test slow).
async fn insert_rows(app: &TestApp, table_cols: &str, rows: &[String]) {
    for chunk in rows.chunks(500) {
        let sql = format!("INSERT INTO {table_cols} VALUES {}", chunk.join(", "));
        match app.state.db.pool() {
            tollgate::store::Pool::Sqlite(p) => sqlx::query(&sql).execute(p).await.map(drop),
            tollgate::store::Pool::MySql(p) => sqlx::query(&sql).execute(p).await.map(drop),
        }
        .unwrap();
    }
}

/// `n` request logs of `user`/`key`, three per millisecond (so a page can end inside a run of
/// equal timestamps).
async fn insert_logs(app: &TestApp, user: i64, key: i64, n: usize) {
    let rows: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "('page-{i}', {}, {user}, {key}, 'gpt-test', '/v1/chat/completions', 200, \
                 'complete', {})",
                1_700_000_000_000i64 + (i / 3) as i64,
                1000 + i
            )
        })
        .collect();
    insert_rows(
        app,
        "request_logs (request_id, created_at, user_id, api_key_id, model, endpoint, status, \
         billing_status, cost)",
        &rows,
    )
    .await;
}

#[tokio::test]
async fn csv_exports_page_through_thousands_of_rows_in_order_none_missed_or_repeated() {
    let app = spawn_app().await;
    let user = app.user("pager").await;
    let (key, _) = app.key(user, json!({"name": "pager-key"})).await;
    let (key2, _) = app.key(user, json!({"name": "pager-key-2"})).await;
    // Two and a half pages of logs.
    let n = 2 * tollgate::store::usage::EXPORT_PAGE + 500;
    insert_logs(&app, user, key, n).await;
    // And of daily rows, varying every column of the order's key.
    let mut daily = Vec::new();
    for day in 1..=5 {
        for k in [key, key2] {
            for account in [7, 8] {
                for m in 0..125 {
                    daily.push(format!(
                        "('2026-03-0{day}', {user}, {k}, {account}, 'm-{m:03}', 1, {})",
                        daily.len() + 1
                    ));
                }
            }
        }
    }
    assert_eq!(daily.len(), n);
    insert_rows(
        &app,
        "usage_daily (day, user_id, api_key_id, account_id, model, requests, cost)",
        &daily,
    )
    .await;

    let logs = csv(&app, "/logs.csv").await;
    let got: Vec<(String, String)> = logs
        .rows
        .iter()
        .map(|r| (r["created_at"].clone(), r["request_id"].clone()))
        .collect();
    // Newest first by (created_at, id): ids were inserted in time order.
    let want: Vec<String> = (0..n).rev().map(|i| format!("page-{i}")).collect();
    assert_eq!(
        got.iter().map(|g| g.1.clone()).collect::<Vec<_>>(),
        want,
        "every log once, newest first"
    );
    assert!(logs.rows.iter().all(|r| r["key_name"] == "pager-key"));
    let cost: i64 = logs
        .rows
        .iter()
        .map(|r| r["cost"].parse::<Usd>().unwrap().0)
        .sum();
    assert_eq!(cost, (0..n as i64).map(|i| 1000 + i).sum::<i64>());
    eprintln!("logs.csv: {} rows, Σ cost {}", logs.rows.len(), Usd(cost));

    // A cursor inside a run of equal timestamps starts right after that row.
    let at = &logs.rows[1234];
    let cursor = format!(
        "{}_{}",
        DateTime::parse_from_rfc3339(&at["created_at"])
            .unwrap()
            .timestamp_millis(),
        at["id"]
    );
    let rest = csv(&app, &format!("/logs.csv?cursor={cursor}")).await;
    assert_eq!(rest.rows.len(), n - 1235);
    assert_eq!(rest.rows[0]["id"], logs.rows[1235]["id"]);

    let days = csv(&app, "/usage/daily.csv").await;
    let key_of = |r: &BTreeMap<String, String>| {
        (
            r["day"].clone(),
            r["api_key_id"].parse::<i64>().unwrap(),
            r["account_id"].parse::<i64>().unwrap(),
            r["model"].clone(),
        )
    };
    let got: Vec<_> = days.rows.iter().map(key_of).collect();
    let mut want = got.clone();
    want.sort();
    want.dedup();
    assert_eq!(got.len(), n, "every daily row");
    assert_eq!(got, want, "in key order, none repeated");
    eprintln!("usage/daily.csv: {} rows", days.rows.len());
}

#[tokio::test]
async fn a_stalled_csv_download_holds_no_database_connection() {
    // One connection: if the export kept its query open while the client stalls, nothing
    // else could reach the database.
    let app = spawn_with(Options {
        tweak: Some(Box::new(|c| {
            c.database.max_connections = 1;
            c.database.timeout_ms = 1000;
        })),
        ..Default::default()
    })
    .await;
    let user = app.user("stall").await;
    let (key, _) = app.key(user, json!({"name": "stall-key"})).await;
    // ~4 MB of CSV: more than the channel, hyper and the socket buffers hold.
    insert_logs(&app, user, key, 25_000).await;
    let mut download = app
        .http
        .get(app.url("/api/admin/logs.csv"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), 200);
    let first = download.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"\xEF\xBB\xBF"));
    // The client reads no more; the export waits on it.
    tokio::time::sleep(Duration::milliseconds(300).to_std().unwrap()).await;
    let t = std::time::Instant::now();
    let (s, v) = app.get("/users").await;
    eprintln!(
        "while the download stalls: GET /users {s} in {:?}, pool {:?}",
        t.elapsed(),
        app.state.db.pool_usage()
    );
    assert_eq!(s, 200, "{v}");
    // The download, read on, still holds every row.
    let mut lines = first.iter().filter(|b| **b == b'\n').count();
    while let Some(c) = download.chunk().await.unwrap() {
        lines += c.iter().filter(|b| **b == b'\n').count();
    }
    assert_eq!(lines, 25_000 + 1);
}
