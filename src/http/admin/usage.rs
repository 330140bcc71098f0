//! Usage: daily cost and requests, charted, by user, key, model and account.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{Days, NaiveDate};
use serde::Deserialize;

use super::stacked::{self, Measure, StackedChart};
use super::view::{self, Money, Names};
use super::{format, render, respond, Ctx, PageError};
use crate::i18n::Tr;
use crate::state::AppState;
use crate::store::usage::UsageFilter;
use crate::store::views::{UsageGroup, UsageTotal};

/// The longest range the usage page draws, in days.
const MAX_DAYS: u64 = 366;
const DEFAULT_DAYS: u64 = 30;

#[derive(Default, Deserialize)]
pub struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
    user_id: Option<String>,
    api_key_id: Option<String>,
    account_id: Option<String>,
    model: Option<String>,
}

/// The filter choices: ids and names for the `<select>`s.
pub struct Choices {
    pub users: Vec<(i64, String)>,
    pub keys: Vec<(i64, String)>,
    pub accounts: Vec<(i64, String)>,
    pub models: Vec<String>,
}

impl Choices {
    pub async fn load(st: &AppState) -> crate::store::Result<Choices> {
        let users = st.db.user_options(1000).await?;
        let by_id: HashMap<i64, &str> = users.iter().map(|(i, n)| (*i, n.as_str())).collect();
        let keys = st
            .db
            .key_labels(None, 1000)
            .await?
            .into_iter()
            .map(|k| {
                let user = by_id.get(&k.user_id).copied().unwrap_or("?");
                (k.id, format!("{} ({}…) · {user}", k.name, k.key_prefix))
            })
            .collect();
        let accounts = st
            .db
            .list_accounts(None, 1000)
            .await?
            .into_iter()
            .map(|a| (a.id, a.name))
            .collect();
        let models = st
            .db
            .list_prices()
            .await?
            .into_iter()
            .map(|p| p.model)
            .collect();
        Ok(Choices {
            users,
            keys,
            accounts,
            models,
        })
    }
}

/// The filter as sent (strings, for the form and the links).
pub struct Filter {
    pub user_id: String,
    pub api_key_id: String,
    pub account_id: String,
    pub model: String,
}

fn id(v: &Option<String>) -> Option<i64> {
    v.as_deref().and_then(|s| s.trim().parse::<i64>().ok())
}

fn text(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// One group in a breakdown table.
struct Group {
    name: String,
    link: String,
    requests: String,
    tokens: String,
    cost: Money,
}

struct Breakdown {
    title: &'static str,
    rows: Vec<Group>,
}

#[derive(askama::Template)]
#[template(path = "admin/usage.html")]
struct UsagePage {
    ctx: Ctx,
    from: String,
    to: String,
    filter: Filter,
    choices: Choices,
    charts: Vec<StackedChart>,
    days: Vec<DayRow>,
    total_requests: String,
    total_tokens: String,
    total_cost: Money,
    breakdowns: Vec<Breakdown>,
    /// The CSV of the daily rows behind this page, with its filters.
    csv_url: String,
}

struct DayRow {
    day: String,
    requests: String,
    tokens: String,
    cost: Money,
}

fn tokens(t: &UsageTotal) -> i64 {
    t.input_tokens + t.output_tokens + t.cache_read_tokens + t.cache_write_tokens
}

pub async fn daily(State(st): State<AppState>, ctx: Ctx, Query(q): Query<UsageQuery>) -> Response {
    let lang = ctx.tr.lang;
    respond(&st, lang, usage_page(&st, ctx, q).await)
}

fn parse_day(v: &Option<String>) -> Option<NaiveDate> {
    v.as_deref()
        .and_then(|d| NaiveDate::parse_from_str(d.trim(), "%Y-%m-%d").ok())
}

async fn usage_page(st: &AppState, mut ctx: Ctx, q: UsageQuery) -> Result<Response, PageError> {
    let today = st.clock.now().with_timezone(&st.tz).date_naive();
    let to = parse_day(&q.to).unwrap_or(today);
    let mut from = parse_day(&q.from)
        .unwrap_or_else(|| to - Days::new(DEFAULT_DAYS - 1))
        .min(to);
    if (to - from).num_days() as u64 >= MAX_DAYS {
        from = to - Days::new(MAX_DAYS - 1);
    }
    let (from_s, to_s) = (from.to_string(), to.to_string());
    let f = UsageFilter {
        from: Some(from_s.clone()),
        to: Some(to_s.clone()),
        user_id: id(&q.user_id),
        api_key_id: id(&q.api_key_id),
        account_id: id(&q.account_id),
        model: text(&q.model),
    };
    let tr = ctx.tr;
    let by_day: HashMap<String, UsageTotal> = st
        .db
        .usage_totals(&f, UsageGroup::Day, MAX_DAYS as i64)
        .await?
        .into_iter()
        .map(|t| (t.label.clone(), t))
        .collect();
    let empty = UsageTotal::default();
    let mut days = Vec::new();
    let mut d = from;
    while d <= to {
        let key = d.to_string();
        days.push((
            key.clone(),
            by_day.get(&key).cloned().unwrap_or_else(|| empty.clone()),
        ));
        d = d + Days::new(1);
    }
    let total_requests: i64 = days.iter().map(|(_, t)| t.requests).sum();
    let total_tokens: i64 = days.iter().map(|(_, t)| tokens(t)).sum();
    let total_cost: i64 = days.iter().map(|(_, t)| t.cost).sum();

    let groups = [
        (UsageGroup::User, tr.t("usage.by_user")),
        (UsageGroup::Model, tr.t("usage.by_model")),
        (UsageGroup::Account, tr.t("usage.by_account")),
        (UsageGroup::Key, tr.t("usage.by_key")),
    ];
    let mut totals = Vec::new();
    for (g, title) in groups {
        totals.push((g, title, st.db.usage_totals(&f, g, 20).await?));
    }
    let user_ids: Vec<i64> = totals
        .iter()
        .filter(|(g, _, _)| *g == UsageGroup::User)
        .flat_map(|(_, _, rows)| rows.iter().map(|r| r.id))
        .collect();
    let key_ids: Vec<i64> = totals
        .iter()
        .filter(|(g, _, _)| *g == UsageGroup::Key)
        .flat_map(|(_, _, rows)| rows.iter().map(|r| r.id))
        .collect();
    let names = view::names(st, &user_ids, &key_ids).await?;
    let day_names: Vec<String> = days.iter().map(|(d, _)| d.clone()).collect();
    let mut charts = Vec::new();
    for g in [UsageGroup::Model, UsageGroup::User, UsageGroup::Key] {
        let top = totals.iter().find(|(t, _, _)| *t == g).map(|(_, _, r)| r);
        charts.extend(
            charts_by(
                st,
                &f,
                tr,
                g,
                top.map_or(&[][..], |r| &r[..]),
                &names,
                &day_names,
            )
            .await?,
        );
    }
    let filter = Filter {
        user_id: f.user_id.map(|v| v.to_string()).unwrap_or_default(),
        api_key_id: f.api_key_id.map(|v| v.to_string()).unwrap_or_default(),
        account_id: f.account_id.map(|v| v.to_string()).unwrap_or_default(),
        model: f.model.clone().unwrap_or_default(),
    };
    let base = [
        ("from", from_s.clone()),
        ("to", to_s.clone()),
        ("user_id", filter.user_id.clone()),
        ("api_key_id", filter.api_key_id.clone()),
        ("account_id", filter.account_id.clone()),
        ("model", filter.model.clone()),
    ];
    // A group's link narrows the current filter to that group.
    let narrowed = |name: &str, value: String| {
        let pairs: Vec<(&str, String)> = base
            .iter()
            .map(|(k, v)| (*k, if *k == name { value.clone() } else { v.clone() }))
            .collect();
        format!("/admin/usage{}", format::query(&pairs))
    };
    let breakdowns = totals
        .into_iter()
        .map(|(g, title, rows)| Breakdown {
            title,
            rows: rows
                .iter()
                .map(|r| {
                    let (name, link) = group_name(&names, g, r, &narrowed);
                    Group {
                        name,
                        link,
                        requests: format::count(r.requests),
                        tokens: format::count(tokens(r)),
                        cost: Money::nanos(r.cost),
                    }
                })
                .collect(),
        })
        .collect();
    let day_rows = days
        .iter()
        .rev()
        .filter(|(_, t)| t.requests > 0)
        .map(|(day, t)| DayRow {
            day: day.clone(),
            requests: format::count(t.requests),
            tokens: format::count(tokens(t)),
            cost: Money::nanos(t.cost),
        })
        .collect();
    ctx.section = "usage";
    ctx.here = format!("/admin/usage{}", format::query(&base));
    let csv_url = format!("/api/admin/usage/daily.csv{}", format::query(&base));
    Ok(render(
        StatusCode::OK,
        &UsagePage {
            ctx,
            from: from_s,
            to: to_s,
            filter,
            choices: Choices::load(st).await?,
            charts,
            days: day_rows,
            total_requests: format::count(total_requests),
            total_tokens: format::count(total_tokens),
            total_cost: Money::nanos(total_cost),
            breakdowns,
            csv_url,
        },
    ))
}

/// The cost and requests charts per day stacked by `g` (model, user or key): the top groups by
/// cost (`top`, largest first, as in the breakdown table), then "other".
async fn charts_by(
    st: &AppState,
    f: &UsageFilter,
    tr: Tr,
    g: UsageGroup,
    top: &[UsageTotal],
    names: &Names,
    days: &[String],
) -> Result<[StackedChart; 2], PageError> {
    let tr_keys = match g {
        UsageGroup::User => (
            ["chart-user-cost", "chart-user-requests"],
            [
                "usage.cost_per_day_by_user",
                "usage.requests_per_day_by_user",
            ],
            "chart.other_users",
        ),
        UsageGroup::Key => (
            ["chart-key-cost", "chart-key-requests"],
            ["usage.cost_per_day_by_key", "usage.requests_per_day_by_key"],
            "chart.other_keys",
        ),
        _ => (
            ["chart-cost", "chart-requests"],
            ["usage.cost_per_day", "usage.requests_per_day"],
            "chart.other",
        ),
    };
    let (ids, titles, other) = tr_keys;
    let rows = st.db.usage_by_day_and(f, g, MAX_DAYS as i64 * 1000).await?;
    let top: Vec<(String, String)> = top
        .iter()
        .take(stacked::TOP_MODELS)
        .map(|t| match g {
            UsageGroup::User => (t.id.to_string(), names.user(t.id)),
            UsageGroup::Key => (t.id.to_string(), names.key_name(t.id)),
            _ => (t.label.clone(), t.label.clone()),
        })
        .collect();
    let series = stacked::series(&top, &rows);
    Ok([Measure::Cost, Measure::Requests].map(|m| {
        let i = usize::from(m == Measure::Requests);
        StackedChart::new(
            ids[i],
            tr.t(titles[i]).into(),
            other,
            m,
            days,
            &series,
            &rows,
        )
    }))
}

fn group_name(
    names: &Names,
    g: UsageGroup,
    r: &UsageTotal,
    narrowed: &impl Fn(&str, String) -> String,
) -> (String, String) {
    match g {
        UsageGroup::User => (names.user(r.id), narrowed("user_id", r.id.to_string())),
        UsageGroup::Key => (names.key(r.id), narrowed("api_key_id", r.id.to_string())),
        UsageGroup::Account => (
            names.account(r.id),
            narrowed("account_id", r.id.to_string()),
        ),
        UsageGroup::Model => (r.label.clone(), narrowed("model", r.label.clone())),
        UsageGroup::Day => (r.label.clone(), String::new()),
    }
}
