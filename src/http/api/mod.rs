//! The admin JSON API under `/api/admin`, authenticated by the admin token or an admin session.

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, patch, post, put};
use axum::Router;
use serde::Deserialize;

use crate::admin::parse;
use crate::error::ApiError;
use crate::http::session;
use crate::state::AppState;

mod accounts;
mod csv;
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
        .route("/accounts/{id}/test", post(accounts::test))
        .route("/models", get(models::list))
        .route("/models/{*model}", put(models::put).get(models::get))
        .route("/usage/daily", get(usage::daily))
        .route("/usage/daily.csv", get(usage::daily_csv))
        .route("/logs", get(usage::logs))
        .route("/logs.csv", get(usage::logs_csv))
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
    if let Some(b) = session::bearer(req.headers()) {
        if session::is_admin_token(&state, b) {
            return Ok(next.run(req).await);
        }
        return Err(ApiError::unauthorized());
    }
    if let Some((_, s)) = session::session_user(&state, req.headers()).await? {
        let safe = matches!(
            *req.method(),
            axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
        );
        let sent = req
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok());
        if safe || session::csrf_matches(&s, sent) {
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
        Ok(parse::limit(self.limit)?)
    }
    /// An id cursor.
    pub fn id_cursor(&self) -> Result<Option<i64>, ApiError> {
        Ok(parse::id_cursor(self.cursor.as_deref())?)
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

/// A path id that must parse as a positive integer.
pub fn parse_id(what: &str, raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::not_found(what))
}

/// For PATCH fields where null means "clear": a field that is present, null included, is
/// `Some` (an absent one stays `None` through `#[serde(default)]`).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}
