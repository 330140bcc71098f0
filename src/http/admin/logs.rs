//! The request logs: the list (filters kept in the URL, cursor pagination, a CSV download of
//! the same filters) and a page per request with every field.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::usage::{Choices, Filter};
use super::view::{self, Log};
use super::{format, render, respond, Ctx, PageError};
use crate::billing::cost::{checked_cost, Tokens};
use crate::domain::BillingStatus;
use crate::state::AppState;
use crate::store::usage::{LogFilter, RequestLog, StatusClass};

const DEFAULT_LIMIT: i64 = 50;

#[derive(Default, Deserialize)]
pub struct LogsQuery {
    user_id: Option<String>,
    api_key_id: Option<String>,
    account_id: Option<String>,
    model: Option<String>,
    status: Option<String>,
    status_class: Option<String>,
    billing_status: Option<String>,
    /// `<input type="datetime-local">`, wall clock of the billing timezone.
    from: Option<String>,
    to: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
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

/// One `<option>`: value and label.
pub struct Choice {
    pub value: &'static str,
    pub label: &'static str,
}

#[derive(askama::Template)]
#[template(path = "admin/logs.html")]
struct LogsPage {
    ctx: Ctx,
    filter: Filter,
    status: String,
    status_class: String,
    billing_status: String,
    from: String,
    to: String,
    classes: Vec<Choice>,
    billing_statuses: Vec<Choice>,
    choices: Choices,
    logs: Vec<Log>,
    first_url: String,
    next_url: String,
    csv_url: String,
}

pub async fn list(State(st): State<AppState>, ctx: Ctx, Query(q): Query<LogsQuery>) -> Response {
    let lang = ctx.tr.lang;
    respond(&st, lang, list_page(&st, ctx, q).await)
}

/// A time typed in the form as RFC 3339 and Unix ms; an error message naming the field when
/// it is not a time.
fn form_time(ctx: &Ctx, field: &str, v: &str) -> Result<Option<(String, i64)>, String> {
    let bad = || view::form_error(ctx.tr, field, "form.not_a_time");
    let Some(rfc) = format::local_input_to_rfc3339(v, ctx.tz).map_err(|_| bad())? else {
        return Ok(None);
    };
    let ms = chrono::DateTime::parse_from_rfc3339(&rfc)
        .map_err(|_| bad())?
        .timestamp_millis();
    Ok(Some((rfc, ms)))
}

async fn list_page(st: &AppState, mut ctx: Ctx, q: LogsQuery) -> Result<Response, PageError> {
    let limit = q
        .limit
        .as_deref()
        .and_then(|l| l.parse::<i64>().ok())
        .filter(|l| (1..=500).contains(l))
        .unwrap_or(DEFAULT_LIMIT);
    let before = q.cursor.as_deref().and_then(|c| {
        let (a, b) = c.split_once('_')?;
        Some((a.parse::<i64>().ok()?, b.parse::<i64>().ok()?))
    });
    let from_s = text(&q.from).unwrap_or_default();
    let to_s = text(&q.to).unwrap_or_default();
    let mut status = StatusCode::OK;
    let mut time = |field: &str, v: &str| match form_time(&ctx, field, v) {
        Ok(t) => t,
        Err(e) => {
            ctx.set_error(e);
            status = StatusCode::BAD_REQUEST;
            None
        }
    };
    let from = time("from", &from_s);
    let to = time("to", &to_s);
    let class = text(&q.status_class).and_then(|c| StatusClass::parse(&c));
    let billing = text(&q.billing_status).and_then(|b| b.parse::<BillingStatus>().ok());
    let f = LogFilter {
        user_id: id(&q.user_id),
        api_key_id: id(&q.api_key_id),
        account_id: id(&q.account_id),
        model: text(&q.model),
        status: id(&q.status),
        before,
        from: from.as_ref().map(|t| t.1),
        to: to.as_ref().map(|t| t.1),
        status_class: class,
        billing_status: billing,
    };
    // An unreadable time shows its error and no rows, rather than rows it did not filter.
    let rows = if status == StatusCode::OK {
        st.db.request_logs(&f, limit).await?
    } else {
        Vec::new()
    };
    let names = view::names_for_logs(st, &rows).await?;
    let filter = Filter {
        user_id: f.user_id.map(|v| v.to_string()).unwrap_or_default(),
        api_key_id: f.api_key_id.map(|v| v.to_string()).unwrap_or_default(),
        account_id: f.account_id.map(|v| v.to_string()).unwrap_or_default(),
        model: f.model.clone().unwrap_or_default(),
    };
    let status_s = f.status.map(|s| s.to_string()).unwrap_or_default();
    let class_s = class.map(|c| c.as_str().to_string()).unwrap_or_default();
    let billing_s = billing.map(|b| b.as_str().to_string()).unwrap_or_default();
    let limit_s = if limit == DEFAULT_LIMIT {
        String::new()
    } else {
        limit.to_string()
    };
    // Every filter, for the page's own links (the form's values) and the CSV (instants).
    let pairs = |from: String, to: String| {
        vec![
            ("user_id", filter.user_id.clone()),
            ("api_key_id", filter.api_key_id.clone()),
            ("account_id", filter.account_id.clone()),
            ("model", filter.model.clone()),
            ("status", status_s.clone()),
            ("status_class", class_s.clone()),
            ("billing_status", billing_s.clone()),
            ("from", from),
            ("to", to),
        ]
    };
    let url = |cursor: String| {
        let mut p = pairs(from_s.clone(), to_s.clone());
        p.push(("limit", limit_s.clone()));
        p.push(("cursor", cursor));
        format!("/admin/logs{}", format::query(&p))
    };
    let csv_url = format!(
        "/api/admin/logs.csv{}",
        format::query(&pairs(
            from.map(|t| t.0).unwrap_or_default(),
            to.map(|t| t.0).unwrap_or_default()
        ))
    );
    let next_url = if rows.len() as i64 == limit {
        rows.last()
            .map(|r| url(format!("{}_{}", r.created_at, r.id)))
            .unwrap_or_default()
    } else {
        String::new()
    };
    let first_url = if before.is_some() {
        url(String::new())
    } else {
        String::new()
    };
    ctx.section = "logs";
    ctx.here = url(q.cursor.clone().unwrap_or_default());
    let tr = ctx.tr;
    let logs = rows
        .iter()
        .map(|l| Log::new(tr, l, &names, st.tz))
        .collect();
    let classes = StatusClass::NAMES
        .iter()
        .map(|&value| Choice {
            value,
            label: tr.t(&format!("logs.class_{}", value)),
        })
        .collect();
    let billing_statuses = BillingStatus::ALL
        .iter()
        .map(|&b| Choice {
            value: b.as_str(),
            label: tr.vocab(b),
        })
        .collect();
    Ok(render(
        status,
        &LogsPage {
            ctx,
            choices: Choices::load(st).await?,
            filter,
            status: status_s,
            status_class: class_s,
            billing_status: billing_s,
            from: from_s,
            to: to_s,
            classes,
            billing_statuses,
            logs,
            first_url,
            next_url,
            csv_url,
        },
    ))
}

/// The cost of one token class: its amount, exact.
pub struct CostPart {
    pub label: &'static str,
    pub tokens: String,
    pub cost: String,
}

#[derive(askama::Template)]
#[template(path = "admin/log.html")]
struct LogDetailPage {
    ctx: Ctx,
    log: Log,
    id: i64,
    time_utc: String,
    api_key_id: i64,
    key: String,
    account_id: Option<i64>,
    user_package_id: String,
    total_tokens: String,
    latency_ms: String,
    ttfb_ms: String,
    /// Each token class with its cost, when the stored cost can be split (see [`cost_parts`]).
    parts: Vec<CostPart>,
    /// Each token class without a cost, when it cannot.
    tokens_only: Vec<CostPart>,
}

pub async fn detail(State(st): State<AppState>, ctx: Ctx, Path(id): Path<String>) -> Response {
    let lang = ctx.tr.lang;
    respond(&st, lang, detail_page(&st, ctx, &id).await)
}

/// The request's cost split by token class. Prices are not kept per request, so the split is
/// shown only when it is certainly the one charged: the model's price has not changed since
/// the request (`updated_at` ≤ its time) and it gives exactly the stored cost (an estimated
/// or disputed charge, or a later price, does not).
async fn cost_parts(st: &AppState, l: &RequestLog, tokens: &Tokens) -> Option<[String; 4]> {
    let price = st.db.get_price(&l.model).await.ok()??;
    if price.updated_at > l.created_at {
        return None;
    }
    let c = checked_cost(tokens, &price.price())?;
    if c.total.0 != l.cost {
        return None;
    }
    Some([c.input, c.output, c.cache_read, c.cache_write].map(|d| format!("${}", d.normalize())))
}

async fn detail_page(st: &AppState, mut ctx: Ctx, raw: &str) -> Result<Response, PageError> {
    let id = raw
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or(PageError::NotFound)?;
    let l = st.db.request_log(id).await?.ok_or(PageError::NotFound)?;
    let names = view::names_for_logs(st, std::slice::from_ref(&l)).await?;
    let tr = ctx.tr;
    let tokens = Tokens {
        input: l.input_tokens,
        output: l.output_tokens,
        cache_read: l.cache_read_tokens,
        cache_write: l.cache_write_tokens,
    };
    let classes = [
        ("logs.input", tokens.input),
        ("logs.output", tokens.output),
        ("logs.cache_read", tokens.cache_read),
        ("logs.cache_write", tokens.cache_write),
    ];
    let costs = cost_parts(st, &l, &tokens).await;
    let part = |i: usize, cost: String| CostPart {
        label: tr.t(classes[i].0),
        tokens: format::count(classes[i].1),
        cost,
    };
    let (parts, tokens_only) = match costs {
        Some(c) => (
            c.into_iter().enumerate().map(|(i, c)| part(i, c)).collect(),
            Vec::new(),
        ),
        None => (Vec::new(), (0..4).map(|i| part(i, String::new())).collect()),
    };
    ctx.section = "logs";
    ctx.here = format!("/admin/logs/{id}");
    Ok(render(
        StatusCode::OK,
        &LogDetailPage {
            log: Log::new(tr, &l, &names, st.tz),
            id: l.id,
            time_utc: crate::clock::from_ms(l.created_at).to_rfc3339(),
            api_key_id: l.api_key_id,
            key: names.key(l.api_key_id),
            account_id: l.account_id,
            user_package_id: l
                .user_package_id
                .map_or_else(|| "—".into(), |p| p.to_string()),
            total_tokens: format::count(tokens.total()),
            latency_ms: format!("{} ms", format::count(l.latency_ms)),
            ttfb_ms: l
                .ttfb_ms
                .map_or_else(|| "—".into(), |t| format!("{} ms", format::count(t))),
            parts,
            tokens_only,
            ctx,
        },
    ))
}
