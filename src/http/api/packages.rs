use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{id_page, parse_id, parse_time, status_in, PageQuery};
use crate::billing::balance::package_status;
use crate::billing::money::Usd;
use crate::domain::{CatalogueStatus, GrantStatus, PackageKind};
use crate::error::{ApiError, AppJson};
use crate::state::AppState;
use crate::store::packages::{NewPackage, Package};

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

fn positive(field: &str, v: Option<Usd>) -> Result<Option<i64>, ApiError> {
    match v {
        Some(u) if u.0 <= 0 => Err(ApiError::invalid(field, "must be greater than 0")),
        other => Ok(other.map(|u| u.0)),
    }
}

pub async fn create(
    State(st): State<AppState>,
    AppJson(b): AppJson<CreatePackage>,
) -> Result<(StatusCode, Json<Package>), ApiError> {
    let name = b.name.trim();
    if name.is_empty() || name.chars().count() > 128 {
        return Err(ApiError::invalid("name", "must be 1 to 128 characters"));
    }
    let daily = positive("daily_quota", b.daily_quota)?;
    let weekly = positive("weekly_quota", b.weekly_quota)?;
    let monthly = positive("monthly_quota", b.monthly_quota)?;
    let total = positive("quota_total", b.quota_total)?;
    let kind = match b.kind.as_str() {
        "subscription" => {
            if daily.is_none() && weekly.is_none() && monthly.is_none() {
                return Err(ApiError::invalid(
                    "daily_quota",
                    "a subscription needs at least one of daily_quota, weekly_quota, monthly_quota",
                ));
            }
            if total.is_some() {
                return Err(ApiError::invalid(
                    "quota_total",
                    "is for `quota` packages; a subscription has daily/weekly/monthly quotas",
                ));
            }
            PackageKind::Subscription
        }
        "quota" => {
            if total.is_none() {
                return Err(ApiError::invalid(
                    "quota_total",
                    "is required for a `quota` package",
                ));
            }
            if daily.is_some() || weekly.is_some() || monthly.is_some() {
                return Err(ApiError::invalid(
                    "type",
                    "a `quota` package has only quota_total; use `subscription` for windowed limits",
                ));
            }
            PackageKind::Quota
        }
        _ => {
            return Err(ApiError::invalid(
                "type",
                "must be `subscription` or `quota`",
            ))
        }
    };
    if !(1..=36_500).contains(&b.duration_days) {
        return Err(ApiError::invalid(
            "duration_days",
            "must be between 1 and 36500",
        ));
    }
    let p = st
        .db
        .create_package(
            &NewPackage {
                name,
                kind,
                daily_quota: daily,
                weekly_quota: weekly,
                monthly_quota: monthly,
                quota_total: total,
                duration_days: b.duration_days,
            },
            st.now_ms(),
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
            .map_err(|_| ApiError::not_found("package"))?,
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
    let status = status_in::<CatalogueStatus>(&b.status)?;
    st.db
        .get_package(id)
        .await
        .map_err(|_| ApiError::not_found("package"))?;
    Ok(Json(
        st.db.set_package_status(id, status, st.now_ms()).await?,
    ))
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
    st.db
        .get_user(user_id)
        .await
        .map_err(|_| ApiError::not_found("user"))?;
    let starts_at = parse_time("starts_at", b.starts_at.as_deref())?;
    let pkg = st.db.get_package(b.package_id).await.map_err(|_| {
        ApiError::invalid(
            "package_id",
            format!("package {} does not exist", b.package_id),
        )
    })?;
    if pkg.status != CatalogueStatus::Active {
        return Err(ApiError::invalid("package_id", "this package is disabled"));
    }
    let now = st.now_ms();
    let starts_at = starts_at.unwrap_or(now);
    let expires_at = starts_at + pkg.duration_days * 86_400_000;
    let up = st
        .db
        .grant_package(user_id, &pkg, starts_at, expires_at, now)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!(package_status(&up, st.clock.now(), st.tz))),
    ))
}

pub async fn list_grants(
    State(st): State<AppState>,
    Path(user_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let user_id = parse_id("user", &user_id)?;
    st.db
        .get_user(user_id)
        .await
        .map_err(|_| ApiError::not_found("user"))?;
    let now = st.clock.now();
    let rows: Vec<_> = st
        .db
        .list_user_packages(user_id)
        .await?
        .iter()
        .map(|g| package_status(g, now, st.tz))
        .collect();
    Ok(Json(json!({"data": rows, "next_cursor": null})))
}

pub async fn update_grant(
    State(st): State<AppState>,
    Path(id): Path<String>,
    AppJson(b): AppJson<StatusBody>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id("user package", &id)?;
    let status = status_in::<GrantStatus>(&b.status)?;
    st.db
        .get_user_package(id)
        .await
        .map_err(|_| ApiError::not_found("user package"))?;
    let up = st
        .db
        .set_user_package_status(id, status, st.now_ms())
        .await?;
    Ok(Json(json!(package_status(&up, st.clock.now(), st.tz))))
}
