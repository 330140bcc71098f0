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
