use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{id_page, parse_id, PageQuery};
use crate::admin::{self, AdminError};
use crate::error::{ApiError, AppJson};
use crate::i18n::{Lang, Tr};
use crate::state::AppState;
use crate::store::accounts::Account;

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
    /// Any JSON here, so that a wrong shape gets `not_a_model_map` naming the field.
    model_map: Option<Value>,
}

impl From<AccountBody> for admin::AccountInput {
    fn from(b: AccountBody) -> Self {
        admin::AccountInput {
            name: b.name,
            provider: b.provider,
            base_url: b.base_url,
            api_key: b.api_key,
            models: b.models,
            priority: b.priority,
            weight: b.weight,
            status: b.status,
            model_map: b.model_map,
        }
    }
}

/// The account with its live health: `ok`, `cooling_down` with the seconds left, or
/// `auth_failed`; and its consecutive failed attempts.
fn with_health(st: &AppState, a: &Account) -> Value {
    let mut v = serde_json::to_value(a).unwrap_or_default();
    let h = &st.proxy.health;
    v["health"] = Value::from(h.label(a.id).to_string());
    v["cooldown_remaining_secs"] = h
        .cooldown_left(a.id)
        .map(Value::from)
        .unwrap_or(Value::Null);
    v["consecutive_failures"] = Value::from(h.failures(a.id));
    v
}

/// A written account with the cautions about its base URL (`warnings`, possibly empty), in
/// English as the API's refusals are.
fn with_warnings(st: &AppState, a: &Account) -> Value {
    let tr = Tr::new(Lang::En);
    let mut v = with_health(st, a);
    v["warnings"] = admin::base_url_warnings(a)
        .into_iter()
        .map(|w| json!({"field": w.field(), "code": w.code(), "message": format!("`{}`: {}", w.field(), w.text(tr))}))
        .collect();
    v
}

/// `POST /api/admin/accounts/{id}/test`: one probe now, `{"ok", "status", "latency_ms",
/// "error"}` (SPEC §11.2).
pub async fn test(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id("account", &id)?;
    let (_, p) = admin::test_account(&st, id).await?;
    Ok(Json(serde_json::to_value(p).unwrap_or_default()))
}

pub async fn create(
    State(st): State<AppState>,
    AppJson(b): AppJson<AccountBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let a = admin::create_account(&st, b.into()).await?;
    Ok((StatusCode::CREATED, Json(with_warnings(&st, &a))))
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
        .map_err(AdminError::lookup("account"))?;
    Ok(Json(with_health(&st, &a)))
}

pub async fn update(
    State(st): State<AppState>,
    Path(id): Path<String>,
    AppJson(b): AppJson<AccountBody>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id("account", &id)?;
    let a = admin::update_account(&st, id, b.into()).await?;
    Ok(Json(with_warnings(&st, &a)))
}
