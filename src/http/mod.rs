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
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(state.clone(), forget_cached_after_admin_writes))
        .layer(axum::middleware::from_fn_with_state(state.clone(), count_requests))
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

/// Count every response by its route template (not the raw path) and status.
async fn count_requests(
    State(st): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let resp = next.run(req).await;
    st.metrics.count_request(&route, resp.status().as_u16());
    resp
}

/// An admin change (API or form) applies to the proxy at once on this instance.
async fn forget_cached_after_admin_writes(
    State(st): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let admin_write = req.method() != axum::http::Method::GET
        && req.method() != axum::http::Method::HEAD
        && (req.uri().path().starts_with("/api/admin/") || req.uri().path().starts_with("/admin/"));
    let resp = next.run(req).await;
    if admin_write {
        st.proxy.forget_cached();
    }
    resp
}

/// Prometheus text format.
async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    use std::sync::atomic::Ordering::Relaxed;
    let r = st.recorder.metrics();
    let (size, idle) = st.db.pool_usage();
    let batches = r.batches.load(Relaxed);
    let text = st.metrics.render(&[
        (
            "tollgate_recorder_queue_depth",
            "gauge",
            "Usage events waiting to be settled.",
            r.queue_depth.load(Relaxed) as f64,
        ),
        (
            "tollgate_recorder_events_applied_total",
            "counter",
            "Usage events settled in the database.",
            r.applied.load(Relaxed) as f64,
        ),
        (
            "tollgate_recorder_duplicates_total",
            "counter",
            "Usage events skipped as already applied.",
            r.duplicates.load(Relaxed) as f64,
        ),
        (
            "tollgate_recorder_batches_total",
            "counter",
            "Settlement transactions committed.",
            batches as f64,
        ),
        (
            "tollgate_recorder_batch_seconds_sum",
            "counter",
            "Total time spent in settlement transactions.",
            r.batch_micros_total.load(Relaxed) as f64 / 1e6,
        ),
        (
            "tollgate_settlement_failures_total",
            "counter",
            "Settlement transactions that failed (and were retried).",
            r.settle_failures.load(Relaxed) as f64,
        ),
        (
            "tollgate_recorder_spilled_total",
            "counter",
            "Usage events written to the on-disk journal.",
            r.spilled.load(Relaxed) as f64,
        ),
        (
            "tollgate_stats_failures_total",
            "counter",
            "Real-time stats updates that failed.",
            r.stats_failures.load(Relaxed) as f64,
        ),
        (
            "tollgate_db_pool_connections",
            "gauge",
            "Connections open in the database pool.",
            size as f64,
        ),
        (
            "tollgate_db_pool_idle",
            "gauge",
            "Idle connections in the database pool.",
            idle as f64,
        ),
    ]);
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
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
