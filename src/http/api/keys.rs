use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use super::{id_page, parse_id, parse_time, status_in, PageQuery};
use crate::domain::KeyStatus;
use crate::error::{ApiError, AppJson};
use crate::secrets::new_api_key;
use crate::state::AppState;
use crate::store::keys::{ApiKey, NewKey};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    name: String,
    allowed_models: Option<Vec<String>>,
    rpm_limit: Option<i64>,
    tpm_limit: Option<i64>,
    expires_at: Option<String>,
}

pub async fn create(
    State(st): State<AppState>,
    Path(user_id): Path<String>,
    AppJson(b): AppJson<CreateKey>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let user_id = parse_id("user", &user_id)?;
    let name = b.name.trim();
    if name.is_empty() || name.chars().count() > 128 {
        return Err(ApiError::invalid("name", "must be 1 to 128 characters"));
    }
    for (field, v) in [("rpm_limit", b.rpm_limit), ("tpm_limit", b.tpm_limit)] {
        if matches!(v, Some(n) if n <= 0) {
            return Err(ApiError::invalid(field, "must be a positive whole number"));
        }
    }
    let models = b.allowed_models.unwrap_or_default();
    if models.iter().any(|m| m.trim().is_empty()) {
        return Err(ApiError::invalid(
            "allowed_models",
            "model names must not be empty",
        ));
    }
    let expires_at = parse_time("expires_at", b.expires_at.as_deref())?;
    st.db
        .get_user(user_id)
        .await
        .map_err(|_| ApiError::not_found("user"))?;
    let (secret, prefix, hash) = new_api_key();
    let key = st
        .db
        .create_key(
            &NewKey {
                user_id,
                name,
                key_prefix: &prefix,
                key_hash: &hash,
                expires_at,
                allowed_models: &models,
                rpm_limit: b.rpm_limit,
                tpm_limit: b.tpm_limit,
            },
            st.now_ms(),
        )
        .await?;
    let mut v = serde_json::to_value(&key).unwrap_or_default();
    v["key"] = Value::String(secret);
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
    Ok(Json(id_page(rows, limit, |k| k.id)))
}

pub async fn get(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, ApiError> {
    let id = parse_id("key", &id)?;
    Ok(Json(
        st.db
            .get_key(id)
            .await
            .map_err(|_| ApiError::not_found("key"))?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    status: String,
}

pub async fn update(
    State(st): State<AppState>,
    Path(id): Path<String>,
    AppJson(b): AppJson<UpdateKey>,
) -> Result<Json<ApiKey>, ApiError> {
    let id = parse_id("key", &id)?;
    let status = status_in::<KeyStatus>(&b.status)?;
    st.db
        .get_key(id)
        .await
        .map_err(|_| ApiError::not_found("key"))?;
    let key = st.db.set_key_status(id, status, st.now_ms()).await?;
    Ok(Json(key))
}
