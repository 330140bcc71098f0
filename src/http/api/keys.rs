use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use super::{id_page, parse_id, PageQuery};
use crate::admin::{self, AdminError};
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
}

pub async fn create(
    State(st): State<AppState>,
    Path(user_id): Path<String>,
    AppJson(b): AppJson<CreateKey>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let user_id = parse_id("user", &user_id)?;
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
        },
    )
    .await?;
    let mut v = serde_json::to_value(&created.key).unwrap_or_default();
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
    Ok(Json(id_page(rows, limit, |k| k.id)))
}

pub async fn get(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, ApiError> {
    let id = parse_id("key", &id)?;
    Ok(Json(
        st.db.get_key(id).await.map_err(AdminError::lookup("key"))?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    status: Option<String>,
    /// Absent: unchanged; null or `[]`: any address; a list: only those.
    #[serde(default, deserialize_with = "present")]
    allowed_ips: Option<Option<Vec<String>>>,
}

/// A field that is present, even as `null` (`Some(None)`), as opposed to absent (`None`).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// Change what is given; every field is checked before anything is written.
pub async fn update(
    State(st): State<AppState>,
    Path(id): Path<String>,
    AppJson(b): AppJson<UpdateKey>,
) -> Result<Json<ApiKey>, ApiError> {
    let id = parse_id("key", &id)?;
    if let Some(Some(ips)) = &b.allowed_ips {
        admin::parse::cidrs("allowed_ips", ips)?;
    }
    let mut key = None;
    if let Some(status) = &b.status {
        key = Some(admin::set_key_status(&st, id, status).await?);
    }
    if let Some(ips) = b.allowed_ips {
        key = Some(admin::set_key_allowed_ips(&st, id, ips).await?);
    }
    match key {
        Some(k) => Ok(Json(k)),
        None => Ok(Json(
            st.db.get_key(id).await.map_err(AdminError::lookup("key"))?,
        )),
    }
}
