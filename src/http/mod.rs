//! HTTP: the router that puts the proxy, the admin API, the admin pages and the health
//! endpoints together.
//!
//! Layers, outermost first: request id (set `x-request-id` if absent, echo it back) → trace
//! span carrying that id → routes. The proxy routes read their body with the configured limit
//! themselves (413 in the provider's shape).

use axum::extract::State;
use axum::http::{HeaderName, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::state::AppState;

pub mod admin;
pub mod api;
pub mod me;

pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .merge(crate::proxy::router())
        .merge(me::router())
        .nest("/api/admin", api::router(state.clone()))
        .merge(admin::router(state.clone()))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
            }),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}

/// The process is up.
async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// The database answers, and Redis too when configured.
async fn readyz(State(st): State<AppState>) -> impl IntoResponse {
    let db = st.db.ping().await.is_ok();
    let redis = match &st.redis {
        None => None,
        Some(c) => {
            let mut c = c.clone();
            Some(
                redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok(),
            )
        }
    };
    let ok = db && redis.unwrap_or(true);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if ok { "ready" } else { "unavailable" },
            "database": if db { "ok" } else { "unreachable" },
            "redis": match redis { None => "not configured", Some(true) => "ok", Some(false) => "unreachable" },
        })),
    )
}
