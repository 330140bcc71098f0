use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use super::{id_page, parse_id, PageQuery};
use crate::admin::{self, AdminError};
use crate::billing::key_budget;
use crate::billing::money::Usd;
use crate::error::{ApiError, AppJson};
use crate::state::AppState;
use crate::store::keys::ApiKey;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    name: String,
    allowed_models: Option<Vec<String>>,
    rpm_limit: Option<i64>,
    tpm_limit: Option<i64>,
    expires_at: Option<String>,
    /// CIDR ranges or addresses; null or absent: any address.
    allowed_ips: Option<Vec<String>>,
    daily_limit: Option<Usd>,
    weekly_limit: Option<Usd>,
    monthly_limit: Option<Usd>,
    total_limit: Option<Usd>,
    #[serde(default)]
    max_concurrency: Value,
}

/// A key with its budgets as of now (SPEC §11.3).
fn key_json(st: &AppState, k: &ApiKey) -> Value {
    serde_json::to_value(key_budget::view(k, st.clock.now(), st.tz)).unwrap_or_default()
}

pub async fn create(
    State(st): State<AppState>,
    Path(user_id): Path<String>,
    AppJson(b): AppJson<CreateKey>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let user_id = parse_id("user", &user_id)?;
    let max_concurrency = admin::parse::json_int("max_concurrency", &b.max_concurrency)?;
    let created = admin::create_key(
        &st,
        user_id,
        admin::NewKey {
            name: b.name,
            allowed_models: b.allowed_models.unwrap_or_default(),
            rpm_limit: b.rpm_limit,
            tpm_limit: b.tpm_limit,
            expires_at: b.expires_at,
            allowed_ips: b.allowed_ips.unwrap_or_default(),
            budget: admin::BudgetInput {
                daily_limit: b.daily_limit,
                weekly_limit: b.weekly_limit,
                monthly_limit: b.monthly_limit,
                total_limit: b.total_limit,
            },
            max_concurrency,
        },
    )
    .await?;
    let mut v = key_json(&st, &created.key);
    v["key"] = Value::String(created.secret);
    Ok((StatusCode::CREATED, Json(v)))
}

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<i64>,
    cursor: Option<String>,
    user_id: Option<i64>,
}

pub async fn list(
    State(st): State<AppState>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(crate::error::query_rejection)?;
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    };
    let limit = page.limit()?;
    let rows = st.db.list_keys(q.user_id, page.id_cursor()?, limit).await?;
    let (now, tz) = (st.clock.now(), st.tz);
    let views: Vec<_> = rows.iter().map(|k| key_budget::view(k, now, tz)).collect();
    Ok(Json(id_page(views, limit, |k| k.key.id)))
}

pub async fn get(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id("key", &id)?;
    let key = st.db.get_key(id).await.map_err(AdminError::lookup("key"))?;
    Ok(Json(key_json(&st, &key)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    status: Option<String>,
    /// Absent: unchanged; null or `[]`: any address; a list: only those.
    #[serde(default, deserialize_with = "super::present")]
    allowed_ips: Option<Option<Vec<String>>>,
    /// Absent: unchanged; null: lifted; an amount: set.
    #[serde(default, deserialize_with = "super::present")]
    daily_limit: Option<Option<Usd>>,
    #[serde(default, deserialize_with = "super::present")]
    weekly_limit: Option<Option<Usd>>,
    #[serde(default, deserialize_with = "super::present")]
    monthly_limit: Option<Option<Usd>>,
    #[serde(default, deserialize_with = "super::present")]
    total_limit: Option<Option<Usd>>,
    /// Absent: kept; null: cleared.
    #[serde(default, deserialize_with = "super::present")]
    max_concurrency: Option<Value>,
}

/// Change what is given; every field is checked before anything is written.
pub async fn update(
    State(st): State<AppState>,
    Path(id): Path<String>,
    AppJson(b): AppJson<UpdateKey>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id("key", &id)?;
    let max_concurrency = b
        .max_concurrency
        .map(|v| admin::parse::json_int("max_concurrency", &v))
        .transpose()?;
    let patch = admin::KeyPatch {
        status: b.status,
        max_concurrency,
        budget: admin::BudgetPatch {
            daily_limit: b.daily_limit,
            weekly_limit: b.weekly_limit,
            monthly_limit: b.monthly_limit,
            total_limit: b.total_limit,
        },
        allowed_ips: b.allowed_ips,
    };
    // At least one field: a status change keeps its old contract (`status` required).
    if patch.is_empty() {
        return Err(AdminError::invalid("status", admin::Problem::Required).into());
    }
    let key = admin::update_key(&st, id, patch).await?;
    Ok(Json(key_json(&st, &key)))
}
