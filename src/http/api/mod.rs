//! The admin JSON API under `/api/admin`, authenticated by the admin token or an admin session.

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, patch, post, put};
use axum::Router;
use serde::Deserialize;

use crate::domain::Vocabulary;
use crate::error::ApiError;
use crate::secrets::constant_time_eq;
use crate::state::AppState;

mod accounts;
mod keys;
mod models;
mod packages;
mod usage;
mod users;

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/users", post(users::create).get(users::list))
        .route("/users/{id}", get(users::get).patch(users::update))
        .route(
            "/users/{id}/packages",
            post(packages::grant).get(packages::list_grants),
        )
        .route("/users/{id}/keys", post(keys::create))
        .route("/user-packages/{id}", patch(packages::update_grant))
        .route("/packages", post(packages::create).get(packages::list))
        .route("/packages/{id}", get(packages::get).patch(packages::update))
        .route("/keys", get(keys::list))
        .route("/keys/{id}", get(keys::get).patch(keys::update))
        .route("/accounts", post(accounts::create).get(accounts::list))
        .route("/accounts/{id}", get(accounts::get).patch(accounts::update))
        .route("/models", get(models::list))
        .route("/models/{*model}", put(models::put).get(models::get))
        .route("/usage/daily", get(usage::daily))
        .route("/logs", get(usage::logs))
        .route("/stats/today", get(usage::stats_today))
        .route_layer(middleware::from_fn_with_state(state, require_admin))
}

/// Admin token (`Authorization: Bearer …`) or an admin session cookie. A cookie is sent by
/// the browser on its own, so with a session a state-changing call must also carry the
/// session's CSRF token in `x-csrf-token` (the pages put it in `<meta name="csrf-token">`).
async fn require_admin(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = state.config.admin.api_token.expose();
    let bearer = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(b) = bearer {
        if !token.is_empty() && constant_time_eq(b.trim(), token) {
            return Ok(next.run(req).await);
        }
        return Err(ApiError::unauthorized());
    }
    if let Some((_, session)) = crate::http::admin::session_user(&state, req.headers()).await {
        let safe = matches!(
            *req.method(),
            axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
        );
        let sent = req
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok());
        if safe || sent.is_some_and(|t| constant_time_eq(t, &session.csrf_token)) {
            return Ok(next.run(req).await);
        }
        return Err(ApiError {
            status: axum::http::StatusCode::FORBIDDEN,
            kind: "permission_error",
            code: "csrf_token_invalid",
            message: "with a session cookie, send the session's CSRF token in `x-csrf-token` \
                      (from the page's <meta name=\"csrf-token\">)"
                .into(),
            param: None,
        });
    }
    Err(ApiError::unauthorized())
}

/// `limit` (default 100, at most 1000) and an opaque `cursor`.
#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

impl PageQuery {
    pub fn limit(&self) -> Result<i64, ApiError> {
        match self.limit {
            None => Ok(100),
            Some(n) if (1..=1000).contains(&n) => Ok(n),
            Some(_) => Err(ApiError::invalid("limit", "must be between 1 and 1000")),
        }
    }
    /// An id cursor.
    pub fn id_cursor(&self) -> Result<Option<i64>, ApiError> {
        self.cursor
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(|c| {
                c.parse::<i64>()
                    .map_err(|_| ApiError::invalid("cursor", "is not a cursor this API returned"))
            })
            .transpose()
    }
}

/// `{"data": [...], "next_cursor": ...}`; `next_cursor` is the last id when the page was full.
pub fn id_page<T: serde::Serialize>(
    rows: Vec<T>,
    limit: i64,
    id: impl Fn(&T) -> i64,
) -> serde_json::Value {
    let next = if rows.len() as i64 == limit {
        rows.last().map(|r| id(r).to_string())
    } else {
        None
    };
    serde_json::json!({"data": rows, "next_cursor": next})
}

/// Parse a status value of one vocabulary, naming the field on error.
pub fn status_in<T: Vocabulary>(value: &str) -> Result<T, ApiError> {
    value.parse().map_err(|_| {
        let allowed: Vec<&str> = T::ALL.iter().map(|v| v.as_str()).collect();
        ApiError::invalid("status", format!("must be one of: {}", allowed.join(", ")))
    })
}

/// A path id that must parse as a positive integer.
pub fn parse_id(what: &str, raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::not_found(what))
}

/// Optional RFC 3339 time → Unix ms.
pub fn parse_time(field: &str, v: Option<&str>) -> Result<Option<i64>, ApiError> {
    v.map(|s| {
        chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_millis())
            .map_err(|_| {
                ApiError::invalid(
                    field,
                    "must be an RFC 3339 time such as 2026-01-31T10:00:00Z",
                )
            })
    })
    .transpose()
}
