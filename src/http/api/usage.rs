use axum::extract::{Query, State};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::csv;
use crate::admin::parse;
use crate::domain::BillingStatus;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::usage::{LogFilter, UsageFilter};

#[derive(Deserialize)]
pub struct DailyQuery {
    from: Option<String>,
    to: Option<String>,
    user_id: Option<i64>,
    api_key_id: Option<i64>,
    account_id: Option<i64>,
    model: Option<String>,
    limit: Option<i64>,
}

fn limit(v: Option<i64>) -> Result<i64, ApiError> {
    Ok(parse::limit(v)?)
}

type Q<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

fn usage_filter(q: DailyQuery) -> Result<UsageFilter, ApiError> {
    Ok(UsageFilter {
        from: parse::day("from", q.from)?,
        to: parse::day("to", q.to)?,
        user_id: q.user_id,
        api_key_id: q.api_key_id,
        account_id: q.account_id,
        model: q.model,
    })
}

pub async fn daily(State(st): State<AppState>, q: Q<DailyQuery>) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(crate::error::query_rejection)?;
    let limit = limit(q.limit)?;
    let rows = st.db.usage_daily(&usage_filter(q)?, limit).await?;
    Ok(Json(json!({"data": rows})))
}

/// `GET /usage/daily.csv`: the filters of `/usage/daily`, every matching row (no `limit`).
pub async fn daily_csv(State(st): State<AppState>, q: Q<DailyQuery>) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(crate::error::query_rejection)?;
    limit(q.limit)?;
    let rows = st.db.usage_daily_stream(usage_filter(q)?);
    Ok(csv::response(
        "usage-daily.csv",
        csv::DAILY_COLUMNS,
        rows,
        |r| csv::json_row(&r.row, &r.names),
    ))
}

#[derive(Deserialize)]
pub struct LogsQuery {
    user_id: Option<i64>,
    api_key_id: Option<i64>,
    account_id: Option<i64>,
    model: Option<String>,
    status: Option<i64>,
    limit: Option<i64>,
    cursor: Option<String>,
    /// RFC 3339; created at or after.
    from: Option<String>,
    /// RFC 3339; created before.
    to: Option<String>,
    status_class: Option<String>,
    billing_status: Option<String>,
}

/// An empty query value (as an empty form field sends it) is no filter.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

fn log_filter(q: &LogsQuery) -> Result<LogFilter, ApiError> {
    Ok(LogFilter {
        user_id: q.user_id,
        api_key_id: q.api_key_id,
        account_id: q.account_id,
        model: q.model.clone(),
        status: q.status,
        before: parse::log_cursor(q.cursor.as_deref())?,
        from: parse::time("from", given(&q.from))?,
        to: parse::time("to", given(&q.to))?,
        status_class: given(&q.status_class)
            .map(|v| parse::status_class("status_class", v))
            .transpose()?,
        billing_status: given(&q.billing_status)
            .map(|v| parse::one_of::<BillingStatus>("billing_status", v))
            .transpose()?,
    })
}

/// Log cursors are `{created_at_ms}_{id}` of the last row returned.
pub async fn logs(State(st): State<AppState>, q: Q<LogsQuery>) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(crate::error::query_rejection)?;
    let limit = limit(q.limit)?;
    let f = log_filter(&q)?;
    let rows = st.db.request_logs(&f, limit).await?;
    let next = if rows.len() as i64 == limit {
        rows.last().map(|r| format!("{}_{}", r.created_at, r.id))
    } else {
        None
    };
    Ok(Json(json!({"data": rows, "next_cursor": next})))
}

/// `GET /logs.csv`: the filters of `/logs` (a `cursor` starts after that row), every matching
/// row, newest first (no `limit`).
pub async fn logs_csv(State(st): State<AppState>, q: Q<LogsQuery>) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(crate::error::query_rejection)?;
    limit(q.limit)?;
    let rows = st.db.request_logs_stream(log_filter(&q)?);
    Ok(csv::response(
        "request-logs.csv",
        csv::LOG_COLUMNS,
        rows,
        |r| csv::json_row(&r.row, &r.names),
    ))
}

/// Today's real-time counters (Redis or in process), by dimension; money as decimal strings.
pub async fn stats_today(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    let day = crate::billing::windows::day_string(st.clock.now(), st.tz);
    let stats = st.stats.day(&day).await.map_err(ApiError::internal)?;
    let mut dims = serde_json::Map::new();
    for (dim, ids) in stats {
        let mut m = serde_json::Map::new();
        for (id, c) in ids {
            m.insert(id, counters_json(&c));
        }
        dims.insert(dim, Value::Object(m));
    }
    let total = dims
        .get("total")
        .and_then(|t| t.get("all"))
        .cloned()
        .unwrap_or_else(|| counters_json(&Default::default()));
    Ok(Json(json!({"day": day, "total": total, "by": dims})))
}

fn counters_json(c: &crate::recorder::stats::Counters) -> Value {
    json!({
        "requests": c.requests,
        "input_tokens": c.input_tokens,
        "output_tokens": c.output_tokens,
        "cache_read_tokens": c.cache_read_tokens,
        "cache_write_tokens": c.cache_write_tokens,
        "cost": crate::billing::money::Usd(c.cost_nanos),
    })
}
