//! The usage page's charts split by model (SPEC §11.6): per day, the top five models by cost
//! and "other" for the rest, each segment's exact value equal to the daily summaries.

use std::collections::BTreeMap;

use scraper::{Html, Selector};
use tollgate::billing::money::Usd;
use tollgate::store::{Db, Pool};

use crate::helpers::*;
use crate::web::*;

async fn exec(db: &Db, sql: &str) {
    match db.pool() {
        Pool::Sqlite(p) => sqlx::query(sql).execute(p).await.map(drop),
        Pool::MySql(p) => sqlx::query(sql).execute(p).await.map(drop),
    }
    .unwrap();
}

/// (chart id) → (day, series) → exact value, read from the page's SVG.
fn segments(html: &str, chart: &str) -> BTreeMap<(String, String), String> {
    let doc = Html::parse_document(html);
    let sel = Selector::parse(&format!("#{chart} rect.seg")).unwrap();
    doc.select(&sel)
        .map(|r| {
            let a = |n: &str| r.value().attr(n).unwrap().to_string();
            ((a("data-day"), a("data-series")), a("data-value"))
        })
        .collect()
}

#[tokio::test]
async fn usage_charts_stack_the_top_models_and_sum_the_rest_as_other() {
    let app = spawn_app().await;
    let db = &app.state.db;
    // Seven models on two days (two keys each, so a model's day is a sum of rows); by total
    // cost m1 > m2 > … > m7, so m6 and m7 are "other".
    let days = ["2026-03-01", "2026-03-02"];
    for (i, model) in ["m1", "m2", "m3", "m4", "m5", "m6", "m7"]
        .iter()
        .enumerate()
    {
        for (d, day) in days.iter().enumerate() {
            for key in [1, 2] {
                let cost = (7 - i as i64) * 1_000_000_007 + d as i64 * 13 + key;
                let requests = (i as i64 + 1) * 10 + d as i64 + key;
                exec(
                    db,
                    &format!(
                        "INSERT INTO usage_daily (day, user_id, api_key_id, account_id, model, \
                         requests, cost) VALUES ('{day}', 1, {key}, 1, '{model}', {requests}, {cost})"
                    ),
                )
                .await;
            }
        }
    }
    // What the charts must show, from the daily summaries of the JSON API.
    let (s, v) = app
        .get("/usage/daily?from=2026-03-01&to=2026-03-02&limit=1000")
        .await;
    assert_eq!(s, 200, "{v}");
    let mut want_cost: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut want_req: BTreeMap<(String, String), i64> = BTreeMap::new();
    for r in v["data"].as_array().unwrap() {
        let model = r["model"].as_str().unwrap();
        let series = if ["m6", "m7"].contains(&model) {
            "other"
        } else {
            model
        };
        let k = (r["day"].as_str().unwrap().to_string(), series.to_string());
        *want_cost.entry(k.clone()).or_default() += api_money(&r["cost"]).unwrap().0;
        *want_req.entry(k).or_default() += r["requests"].as_i64().unwrap();
    }
    assert_eq!(want_cost.len(), 12, "6 series × 2 days");

    let web = Web::new(&app.base);
    web.login().await;
    let page = web.get("/admin/usage?from=2026-03-01&to=2026-03-02").await;
    assert_eq!(page.status, 200);
    let cost = segments(&page.body, "chart-cost");
    let req = segments(&page.body, "chart-requests");
    println!("cost segments (day, series) → USD: {cost:?}");
    println!("request segments (day, series) → requests: {req:?}");
    let cost_nanos: BTreeMap<(String, String), i64> = cost
        .iter()
        .map(|(k, v)| (k.clone(), v.parse::<Usd>().unwrap().0))
        .collect();
    assert_eq!(cost_nanos, want_cost);
    let req_n: BTreeMap<(String, String), i64> = req
        .iter()
        .map(|(k, v)| (k.clone(), v.parse::<i64>().unwrap()))
        .collect();
    assert_eq!(req_n, want_req);
    // "other" is exactly m6 + m7 on each day.
    let key = |d: &str, s: &str| (d.to_string(), s.to_string());
    assert_eq!(
        req_n[&key("2026-03-01", "other")],
        (61 + 62) + (71 + 72),
        "m6 and m7 requests on day 1"
    );
    assert_eq!(
        cost[&key("2026-03-02", "other")],
        Usd(2 * 1_000_000_007
            + 13
            + 1
            + 2 * 1_000_000_007
            + 13
            + 2
            + 1_000_000_007
            + 13
            + 1
            + 1_000_000_007
            + 13
            + 2)
        .to_string()
    );
    // Series in order, largest cost first, "other" last; the legend names them.
    let doc = Html::parse_document(&page.body);
    let sel = Selector::parse("#chart-cost .legend li").unwrap();
    let legend: Vec<&str> = doc
        .select(&sel)
        .map(|l| l.value().attr("data-series").unwrap())
        .collect();
    assert_eq!(legend, ["m1", "m2", "m3", "m4", "m5", "other"]);
    assert!(page.body.contains("Other models"));
    assert!(
        page.body.contains("<title>2026-03-01 · m1: $"),
        "the tooltip names day, model and cost"
    );
}

/// (day, series) → a figure.
type BySeries = BTreeMap<(String, String), i64>;

/// For a chart split by users or keys: (day, series) → exact value from the daily summaries,
/// where the series is the id of a top group or "other".
fn want_by(rows: &[serde_json::Value], field: &str, top: &[i64]) -> (BySeries, BySeries) {
    let (mut cost, mut req) = (BTreeMap::new(), BTreeMap::new());
    for r in rows {
        let id = r[field].as_i64().unwrap();
        let series = if top.contains(&id) {
            id.to_string()
        } else {
            "other".to_string()
        };
        let k = (r["day"].as_str().unwrap().to_string(), series);
        *cost.entry(k.clone()).or_default() += api_money(&r["cost"]).unwrap().0;
        *req.entry(k).or_default() += r["requests"].as_i64().unwrap();
    }
    (cost, req)
}

/// A chart's segments as numbers (nano-dollars or requests), and its legend's texts.
fn parsed(html: &str, chart: &str) -> (BySeries, Vec<String>) {
    let values = segments(html, chart)
        .into_iter()
        .map(|(k, v)| {
            let n = if chart.ends_with("cost") {
                v.parse::<Usd>().unwrap().0
            } else {
                v.parse::<i64>().unwrap()
            };
            (k, n)
        })
        .collect();
    let doc = Html::parse_document(html);
    let sel = Selector::parse(&format!("#{chart} .legend li")).unwrap();
    let legend = doc
        .select(&sel)
        .map(|l| l.text().collect::<String>().trim().to_string())
        .collect();
    (values, legend)
}

#[tokio::test]
async fn usage_charts_by_user_and_key_stack_the_top_five_and_sum_the_rest_as_other() {
    let app = spawn_app().await;
    let db = &app.state.db;
    // Seven users with a key each, by cost u1 > u2 > … > u7; u1 also has a tiny second key, so
    // keys k6, k7 and k1-small are "other" among keys, u6 and u7 among users. Two models and
    // two days, so each segment sums several rows.
    let days = ["2026-04-01", "2026-04-02"];
    let mut users = Vec::new();
    let mut keys = Vec::new();
    for i in 0..7i64 {
        let u = app.user(&format!("cu{}", i + 1)).await;
        let (k, _) = app
            .key(u, serde_json::json!({"name": format!("k{}", i + 1)}))
            .await;
        users.push(u);
        keys.push((u, k, (7 - i) * 1_000_000_007));
    }
    let (small, _) = app
        .key(users[0], serde_json::json!({"name": "k1-small"}))
        .await;
    keys.push((users[0], small, 3));
    for (user, key, base) in &keys {
        for (d, day) in days.iter().enumerate() {
            for (m, model) in ["ma", "mb"].iter().enumerate() {
                let cost = base + d as i64 * 13 + m as i64;
                let requests = base % 97 + d as i64 + m as i64 + 1;
                exec(
                    db,
                    &format!(
                        "INSERT INTO usage_daily (day, user_id, api_key_id, account_id, model, \
                         requests, cost) VALUES ('{day}', {user}, {key}, 1, '{model}', \
                         {requests}, {cost})"
                    ),
                )
                .await;
            }
        }
    }
    let (s, v) = app
        .get("/usage/daily?from=2026-04-01&to=2026-04-02&limit=1000")
        .await;
    assert_eq!(s, 200, "{v}");
    let rows = v["data"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 8 * 2 * 2);

    let web = Web::new(&app.base);
    web.login().await;
    let page = web.get("/admin/usage?from=2026-04-01&to=2026-04-02").await;
    assert_eq!(page.status, 200);

    let top_keys: Vec<i64> = keys[..5].iter().map(|k| k.1).collect();
    for (field, top, prefix, names, other) in [
        (
            "user_id",
            users[..5].to_vec(),
            "chart-user",
            ["cu1", "cu2", "cu3", "cu4", "cu5"],
            "Other users",
        ),
        (
            "api_key_id",
            top_keys,
            "chart-key",
            ["k1", "k2", "k3", "k4", "k5"],
            "Other keys",
        ),
    ] {
        let (want_cost, want_req) = want_by(&rows, field, &top);
        assert_eq!(want_cost.len(), 12, "6 series × 2 days");
        let (cost, legend) = parsed(&page.body, &format!("{prefix}-cost"));
        let (req, _) = parsed(&page.body, &format!("{prefix}-requests"));
        println!("{prefix}-cost (day, series) → nano-USD: {cost:?}");
        println!("{prefix}-requests (day, series) → requests: {req:?}");
        println!("{prefix} legend: {legend:?}");
        assert_eq!(cost, want_cost, "{prefix}-cost equals the daily summaries");
        assert_eq!(
            req, want_req,
            "{prefix}-requests equals the daily summaries"
        );
        // The legend names the top five by username / key name, largest cost first, then other.
        assert_eq!(legend.len(), 6);
        for (l, n) in legend.iter().zip(names) {
            assert!(l.starts_with(&format!("{n} ")), "{l} names {n}");
        }
        assert!(legend[5].starts_with(other), "{}", legend[5]);
    }
    // "other" is exactly the rest, to the nano-dollar: users u6 + u7 on day 2 …
    let day2 = |s: &str| ("2026-04-02".to_string(), s.to_string());
    let (user_cost, _) = parsed(&page.body, "chart-user-cost");
    assert_eq!(
        user_cost[&day2("other")],
        (2 + 1) * 1_000_000_007 * 2 + 2 * (2 * 13 + 1)
    );
    // … and keys k6 + k7 + k1-small (3 nano-dollars a row) on day 2.
    let (key_cost, _) = parsed(&page.body, "chart-key-cost");
    assert_eq!(
        key_cost[&day2("other")],
        (2 + 1) * 1_000_000_007 * 2 + 2 * (2 * 13 + 1) + (3 + 13) * 2 + 1
    );
    assert!(
        page.body.contains("<title>2026-04-01 · cu1: $"),
        "the tooltip names day, user and cost"
    );
    assert!(page.body.contains("<title>2026-04-01 · k1: $"));
}
