use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin::parse;
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

pub async fn daily(
    State(st): State<AppState>,
    q: Result<Query<DailyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(crate::error::query_rejection)?;
    let f = UsageFilter {
        from: parse::day("from", q.from)?,
        to: parse::day("to", q.to)?,
        user_id: q.user_id,
        api_key_id: q.api_key_id,
        account_id: q.account_id,
        model: q.model,
    };
    let rows = st.db.usage_daily(&f, limit(q.limit)?).await?;
    Ok(Json(json!({"data": rows})))
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
}

/// Log cursors are `{created_at_ms}_{id}` of the last row returned.
pub async fn logs(
    State(st): State<AppState>,
    q: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(crate::error::query_rejection)?;
    let limit = limit(q.limit)?;
    let before = parse::log_cursor(q.cursor.as_deref())?;
    let f = LogFilter {
        user_id: q.user_id,
        api_key_id: q.api_key_id,
        account_id: q.account_id,
        model: q.model,
        status: q.status,
        before,
    };
    let rows = st.db.request_logs(&f, limit).await?;
    let next = if rows.len() as i64 == limit {
        rows.last().map(|r| format!("{}_{}", r.created_at, r.id))
    } else {
        None
    };
    Ok(Json(json!({"data": rows, "next_cursor": next})))
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
