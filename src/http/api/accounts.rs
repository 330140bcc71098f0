use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use super::{id_page, parse_id, status_in, PageQuery};
use crate::config::Secret;
use crate::domain::{AccountHealth, AccountStatus, Provider};
use crate::error::{ApiError, AppJson};
use crate::state::AppState;
use crate::store::accounts::{Account, AccountFields};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountBody {
    name: Option<String>,
    provider: Option<String>,
    base_url: Option<String>,
    api_key: Option<String>,
    models: Option<Vec<String>>,
    priority: Option<i64>,
    weight: Option<i64>,
    status: Option<String>,
}

/// Validate the fields present; `creating` requires name, provider, base_url and api_key.
fn fields(b: AccountBody, creating: bool) -> Result<AccountFields, ApiError> {
    let required = |field: &str, v: &Option<String>| {
        if creating && v.is_none() {
            Err(ApiError::invalid(field, "is required"))
        } else {
            Ok(())
        }
    };
    required("name", &b.name)?;
    required("provider", &b.provider)?;
    required("base_url", &b.base_url)?;
    required("api_key", &b.api_key)?;
    if let Some(n) = &b.name {
        if n.trim().is_empty() || n.chars().count() > 128 {
            return Err(ApiError::invalid("name", "must be 1 to 128 characters"));
        }
    }
    let provider = b
        .provider
        .as_deref()
        .map(|p| {
            p.parse::<Provider>()
                .map_err(|_| ApiError::invalid("provider", "must be `openai` or `anthropic`"))
        })
        .transpose()?;
    if let Some(u) = &b.base_url {
        let ok = url::Url::parse(u)
            .map(|x| matches!(x.scheme(), "http" | "https") && x.host().is_some())
            .unwrap_or(false);
        if !ok {
            return Err(ApiError::invalid(
                "base_url",
                "must be an http(s) URL such as https://api.openai.com/v1",
            ));
        }
    }
    if matches!(&b.api_key, Some(k) if k.trim().is_empty()) {
        return Err(ApiError::invalid("api_key", "must not be empty"));
    }
    if matches!(b.weight, Some(w) if !(1..=1000).contains(&w)) {
        return Err(ApiError::invalid("weight", "must be between 1 and 1000"));
    }
    if let Some(m) = &b.models {
        if m.iter().any(|x| x.trim().is_empty()) {
            return Err(ApiError::invalid("models", "model names must not be empty"));
        }
    }
    let status = b
        .status
        .as_deref()
        .map(status_in::<AccountStatus>)
        .transpose()?;
    Ok(AccountFields {
        name: b.name.map(|s| s.trim().to_string()),
        provider,
        base_url: b.base_url.map(|u| u.trim_end_matches('/').to_string()),
        secret: b.api_key.map(Secret::new),
        models: b.models,
        priority: b.priority,
        weight: b.weight,
        status,
    })
}

/// The account with its live health: `ok`, or `cooling_down` with the seconds left.
fn with_health(st: &AppState, a: &Account) -> Value {
    let mut v = serde_json::to_value(a).unwrap_or_default();
    let left = st.proxy.health.cooldown_left(a.id);
    v["health"] = Value::from(
        if left.is_some() {
            AccountHealth::CoolingDown
        } else {
            AccountHealth::Ok
        }
        .as_str(),
    );
    v["cooldown_remaining_secs"] = left.map(Value::from).unwrap_or(Value::Null);
    v
}

pub async fn create(
    State(st): State<AppState>,
    AppJson(b): AppJson<AccountBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let f = fields(b, true)?;
    let a = st.db.create_account(&f, st.now_ms()).await?;
    Ok((StatusCode::CREATED, Json(with_health(&st, &a))))
}

pub async fn list(
    State(st): State<AppState>,
    q: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(crate::error::query_rejection)?;
    let limit = q.limit()?;
    let rows = st.db.list_accounts(q.id_cursor()?, limit).await?;
    let rows: Vec<Value> = rows.iter().map(|a| with_health(&st, a)).collect();
    Ok(Json(id_page(rows, limit, |a| {
        a["id"].as_i64().unwrap_or(0)
    })))
}

pub async fn get(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id("account", &id)?;
    let a = st
        .db
        .get_account(id)
        .await
        .map_err(|_| ApiError::not_found("account"))?;
    Ok(Json(with_health(&st, &a)))
}

pub async fn update(
    State(st): State<AppState>,
    Path(id): Path<String>,
    AppJson(b): AppJson<AccountBody>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id("account", &id)?;
    let f = fields(b, false)?;
    st.db
        .get_account(id)
        .await
        .map_err(|_| ApiError::not_found("account"))?;
    let a = st.db.update_account(id, &f, st.now_ms()).await?;
    Ok(Json(with_health(&st, &a)))
}
