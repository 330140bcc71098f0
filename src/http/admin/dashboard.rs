//! The dashboard: today's real-time totals, who and what spent the most today, and the last
//! two weeks of daily cost.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::Days;

use super::view::{self, Chart, Money};
use super::{format, render, respond, Ctx, PageError};
use crate::billing::money::Usd;
use crate::recorder::stats::Counters;
use crate::state::AppState;
use crate::store::usage::UsageFilter;
use crate::store::views::UsageGroup;

const CHART_DAYS: u64 = 14;
const TOP: usize = 5;

struct Top {
    name: String,
    link: String,
    requests: String,
    cost: Money,
}

struct Top3 {
    title: &'static str,
    rows: Vec<Top>,
}

#[derive(askama::Template)]
#[template(path = "admin/dashboard.html")]
struct DashboardPage {
    ctx: Ctx,
    day: String,
    stats_ok: bool,
    requests: String,
    input_tokens: String,
    output_tokens: String,
    cache_tokens: String,
    cost: Money,
    users: String,
    active_keys: String,
    active_accounts: String,
    active_packages: String,
    tops: Vec<Top3>,
    charts: Vec<Chart>,
}

pub async fn page(State(st): State<AppState>, ctx: Ctx) -> Response {
    let lang = ctx.tr.lang;
    respond(&st, lang, build(&st, ctx).await)
}

async fn build(st: &AppState, mut ctx: Ctx) -> Result<Response, PageError> {
    let now = st.clock.now();
    let day = crate::billing::windows::day_string(now, st.tz);
    let (stats, stats_ok) = match st.stats.day(&day).await {
        Ok(s) => (s, true),
        Err(e) => {
            tracing::warn!(error = %e, "could not read today's stats");
            (Default::default(), false)
        }
    };
    let total = stats
        .get("total")
        .and_then(|t| t.get("all"))
        .copied()
        .unwrap_or_default();
    let counts = st.db.counts(now.timestamp_millis()).await?;
    let top = |dim: &str| -> Vec<(String, Counters)> {
        let mut v: Vec<(String, Counters)> = stats
            .get(dim)
            .map(|m| m.iter().map(|(k, c)| (k.clone(), *c)).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| b.1.cost_nanos.cmp(&a.1.cost_nanos).then(a.0.cmp(&b.0)));
        v.truncate(TOP);
        v
    };
    let (top_users, top_models, top_accounts) = (top("user"), top("model"), top("account"));
    let ids = |v: &[(String, Counters)]| -> Vec<i64> {
        v.iter().filter_map(|(k, _)| k.parse().ok()).collect()
    };
    let names = view::names(st, &ids(&top_users), &[]).await?;
    let tr = ctx.tr;
    let row = |name: String, link: String, c: &Counters| Top {
        name,
        link,
        requests: format::count(c.requests),
        cost: Money::nanos(c.cost_nanos),
    };
    let id_of = |k: &str| k.parse::<i64>().unwrap_or(0);
    let tops = vec![
        Top3 {
            title: tr.t("dashboard.top_users"),
            rows: top_users
                .iter()
                .map(|(k, c)| row(names.user(id_of(k)), format!("/admin/users/{k}"), c))
                .collect(),
        },
        Top3 {
            title: tr.t("dashboard.top_models"),
            rows: top_models
                .iter()
                .map(|(k, c)| {
                    let link = format!("/admin/logs?model={}", format::query_escape(k));
                    row(k.clone(), link, c)
                })
                .collect(),
        },
        Top3 {
            title: tr.t("dashboard.top_accounts"),
            rows: top_accounts
                .iter()
                .map(|(k, c)| row(names.account(id_of(k)), format!("/admin/accounts/{k}"), c))
                .collect(),
        },
    ];
    let today = now.with_timezone(&st.tz).date_naive();
    let from = today - Days::new(CHART_DAYS - 1);
    let f = UsageFilter {
        from: Some(from.to_string()),
        to: Some(today.to_string()),
        ..Default::default()
    };
    let by_day: std::collections::HashMap<String, i64> = st
        .db
        .usage_totals(&f, UsageGroup::Day, CHART_DAYS as i64)
        .await?
        .into_iter()
        .map(|t| (t.label, t.cost))
        .collect();
    let points: Vec<(String, f64, String)> = (0..CHART_DAYS)
        .map(|i| {
            let d = (from + Days::new(i)).to_string();
            let cost = by_day.get(&d).copied().unwrap_or(0);
            (
                d.get(5..).unwrap_or(&d).to_string(),
                cost as f64 / 1e9,
                format::usd(Usd(cost)),
            )
        })
        .collect();
    let chart = Chart::bars(
        tr.t("dashboard.cost_14_days").into(),
        1200,
        &points,
        0.0,
        |v| format::usd(Usd((v * 1e9).round() as i64)),
    );
    ctx.section = "dashboard";
    ctx.here = "/admin".into();
    Ok(render(
        StatusCode::OK,
        &DashboardPage {
            ctx,
            day,
            stats_ok,
            requests: format::count(total.requests),
            input_tokens: format::count(total.input_tokens),
            output_tokens: format::count(total.output_tokens),
            cache_tokens: format::count(total.cache_read_tokens + total.cache_write_tokens),
            cost: Money::nanos(total.cost_nanos),
            users: format::count(counts.users),
            active_keys: format::count(counts.active_keys),
            active_accounts: format::count(counts.active_accounts),
            active_packages: format::count(counts.active_packages),
            tops,
            charts: vec![chart],
        },
    ))
}
