use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{id_page, parse_id, PageQuery};
use crate::admin::{self, AdminError};
use crate::billing::balance::{with_reserved, PackageStatus};
use crate::billing::money::Usd;
use crate::error::{ApiError, AppJson};
use crate::state::AppState;
use crate::store::packages::Package;
use crate::store::packages::UserPackage;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePackage {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    daily_quota: Option<Usd>,
    weekly_quota: Option<Usd>,
    monthly_quota: Option<Usd>,
    quota_total: Option<Usd>,
    duration_days: i64,
}

pub async fn create(
    State(st): State<AppState>,
    AppJson(b): AppJson<CreatePackage>,
) -> Result<(StatusCode, Json<Package>), ApiError> {
    let p = admin::create_package(
        &st,
        admin::NewPackage {
            name: b.name,
            kind: b.kind,
            daily_quota: b.daily_quota,
            weekly_quota: b.weekly_quota,
            monthly_quota: b.monthly_quota,
            quota_total: b.quota_total,
            duration_days: b.duration_days,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(p)))
}

pub async fn list(
    State(st): State<AppState>,
    q: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(crate::error::query_rejection)?;
    let limit = q.limit()?;
    let rows = st.db.list_packages(q.id_cursor()?, limit).await?;
    Ok(Json(id_page(rows, limit, |p| p.id)))
}

pub async fn get(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Package>, ApiError> {
    let id = parse_id("package", &id)?;
    Ok(Json(
        st.db
            .get_package(id)
            .await
            .map_err(AdminError::lookup("package"))?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusBody {
    status: String,
}

pub async fn update(
    State(st): State<AppState>,
    Path(id): Path<String>,
    AppJson(b): AppJson<StatusBody>,
) -> Result<Json<Package>, ApiError> {
    let id = parse_id("package", &id)?;
    Ok(Json(admin::set_package_status(&st, id, &b.status).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    package_id: i64,
    starts_at: Option<String>,
}

pub async fn grant(
    State(st): State<AppState>,
    Path(user_id): Path<String>,
    AppJson(b): AppJson<GrantBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let user_id = parse_id("user", &user_id)?;
    let up = admin::grant_package(
        &st,
        user_id,
        admin::NewGrant {
            package_id: b.package_id,
            starts_at: b.starts_at,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(json!(one_status(&st, &up).await))))
}

pub async fn list_grants(
    State(st): State<AppState>,
    Path(user_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let user_id = parse_id("user", &user_id)?;
    st.db
        .get_user(user_id)
        .await
        .map_err(AdminError::lookup("user"))?;
    let now = st.clock.now();
    let grants = st.db.list_user_packages(user_id).await?;
    let rows = with_reserved(&grants, now, st.tz, &st.proxy.reservations).await;
    Ok(Json(json!({"data": rows, "next_cursor": null})))
}

pub async fn update_grant(
    State(st): State<AppState>,
    Path(id): Path<String>,
    AppJson(b): AppJson<StatusBody>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id("user package", &id)?;
    let up = admin::set_grant_status(&st, id, &b.status).await?;
    Ok(Json(json!(one_status(&st, &up).await)))
}

/// One grant as the API shows it, with its reservations.
async fn one_status(st: &AppState, up: &UserPackage) -> PackageStatus {
    let grants = std::slice::from_ref(up);
    let mut v = with_reserved(grants, st.clock.now(), st.tz, &st.proxy.reservations).await;
    v.remove(0)
}
