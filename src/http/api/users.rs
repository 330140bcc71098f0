use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{id_page, parse_id, PageQuery};
use crate::admin::{self, AdminError};
use crate::billing::balance::{balances, with_reserved};
use crate::error::{ApiError, AppJson};
use crate::state::AppState;
use crate::store::users::User;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    username: String,
    role: Option<String>,
    password: Option<String>,
}

pub async fn create(
    State(st): State<AppState>,
    AppJson(body): AppJson<CreateUser>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let user = admin::create_user(
        &st,
        admin::NewUser {
            username: body.username,
            role: body.role,
            password: body.password,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(user_json(&st, user).await?)))
}

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<i64>,
    cursor: Option<String>,
    q: Option<String>,
}

/// The user object with the four balances (SPEC §6), for one user.
async fn user_json(st: &AppState, user: User) -> Result<Value, ApiError> {
    let now = st.clock.now();
    let grants = st
        .db
        .active_user_packages(&[user.id], now.timestamp_millis())
        .await?;
    Ok(with_balances(&user, &balances(&grants, now, st.tz)))
}

fn with_balances(user: &User, b: &crate::billing::balance::Balances) -> Value {
    let mut v = serde_json::to_value(user).unwrap_or_default();
    if let (Some(o), Ok(Value::Object(bal))) = (v.as_object_mut(), serde_json::to_value(b)) {
        o.extend(bal);
    }
    v
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
    let search = q.q.as_deref().filter(|s| !s.is_empty());
    let users = st.db.list_users(search, page.id_cursor()?, limit).await?;
    let now = st.clock.now();
    let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
    let grants = st
        .db
        .active_user_packages(&ids, now.timestamp_millis())
        .await?;
    let mut by_user: HashMap<i64, Vec<_>> = HashMap::new();
    for g in grants {
        by_user.entry(g.user_id).or_default().push(g);
    }
    let rows: Vec<Value> = users
        .iter()
        .map(|u| {
            let b = balances(by_user.get(&u.id).into_iter().flatten(), now, st.tz);
            with_balances(u, &b)
        })
        .collect();
    Ok(Json(id_page(rows, limit, |v| {
        v["id"].as_i64().unwrap_or(0)
    })))
}

pub async fn get(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id("user", &id)?;
    let user = st
        .db
        .get_user(id)
        .await
        .map_err(AdminError::lookup("user"))?;
    let now = st.clock.now();
    let grants = st.db.list_user_packages(id).await?;
    let packages = with_reserved(&grants, now, st.tz, &st.proxy.reservations).await;
    let keys = st.db.list_keys(Some(id), None, 1000).await?;
    // `balances` counts only the grants active now.
    let mut v = with_balances(&user, &balances(&grants, now, st.tz));
    v["packages"] = json!(packages);
    v["keys"] = json!(keys);
    Ok(Json(v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    status: Option<String>,
    password: Option<String>,
    /// Absent: kept; null: cleared.
    #[serde(default, deserialize_with = "super::present")]
    max_concurrency: Option<Value>,
}

pub async fn update(
    State(st): State<AppState>,
    Path(id): Path<String>,
    AppJson(body): AppJson<UpdateUser>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id("user", &id)?;
    let max_concurrency = body
        .max_concurrency
        .map(|v| admin::parse::json_int("max_concurrency", &v))
        .transpose()?;
    let user = admin::update_user(
        &st,
        id,
        admin::UserPatch {
            status: body.status,
            password: body.password,
            max_concurrency,
        },
    )
    .await?;
    Ok(Json(user_json(&st, user).await?))
}
