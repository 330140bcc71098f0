//! HTTP: the router that puts the proxy, the admin API, the admin pages and the health
//! endpoints together, and the [`Frontend`] the listener calls (the proxy's endpoints without
//! the router's per-request work).
//!
//! One layer around every route (`edge`): the request id (`x-request-id` kept from the client
//! or made here, echoed back), a trace span carrying it, and the request counter of
//! `/metrics`. The proxy routes read their body with the configured limit themselves (413 in
//! the provider's shape).

use std::future::Future;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tracing::Instrument;

use crate::client_addr;
use crate::state::AppState;

pub mod admin;
pub mod api;
pub mod audit;
pub mod me;
pub mod session;

/// What the listener hands every request to: a `POST` to a proxied endpoint goes through
/// [`edge`]'s work straight to `proxy::handle`, everything else through the router (where
/// the same endpoints also answer, for callers of [`router`]). The proxy's requests skip the
/// router's per-request work: three boxed futures, three cloned services and the route
/// match, about 3,000 instructions an answer.
pub struct Frontend {
    state: AppState,
    router: Router,
}

impl Frontend {
    pub fn new(state: AppState) -> Frontend {
        let router = router(state.clone());
        Frontend { state, router }
    }

    pub fn call(&self, req: Request) -> impl Future<Output = Response> + Send + 'static {
        use futures_util::future::{Either, FutureExt};
        use tower::ServiceExt;
        let endpoint = (req.method() == Method::POST)
            .then(|| crate::proxy::endpoint_at(req.uri().path()))
            .flatten();
        match endpoint {
            Some(e) => {
                let st = self.state.clone();
                // Boxed once: the pipeline's future is kilobytes, hyper would move it inline.
                Either::Left(Box::pin(async move {
                    around(&st, req, e.path(), |req| {
                        crate::proxy::handle(st.clone(), e, req)
                    })
                    .await
                }))
            }
            None => Either::Right(
                self.router
                    .clone()
                    .oneshot(req)
                    .map(|r| r.unwrap_or_else(|never| match never {})),
            ),
        }
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(crate::proxy::router())
        .merge(me::router())
        .nest("/api/admin", api::router(state.clone()))
        .merge(admin::router(state.clone()))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(|| async { Redirect::to("/admin") }))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn_with_state(state.clone(), edge))
        .with_state(state)
}

/// Unknown paths under `/v1/` and `/api/admin/` answer in that surface's JSON error shape
/// (SPEC §11.7), naming what was asked; elsewhere a bare 404.
async fn unknown_route(method: Method, uri: axum::http::Uri) -> Response {
    let path = uri.path();
    if path.starts_with("/v1/") || path == "/v1" {
        let mut message = format!("Unknown endpoint: {method} {path}.");
        if path.starts_with("/v1/v1/") {
            message.push_str(
                " The path has /v1 twice: the client's base URL probably already ends in /v1 \
                 and should be the gateway's address with a single /v1.",
            );
        }
        return openai_error(StatusCode::NOT_FOUND, message, "unknown_endpoint");
    }
    if path.starts_with("/api/admin/") || path == "/api/admin" {
        return crate::error::ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "not_found_error",
            code: "unknown_endpoint",
            message: format!("no admin API endpoint {method} {path}"),
            param: None,
        }
        .into_response();
    }
    StatusCode::NOT_FOUND.into_response()
}

/// A known path with a method it does not take: 405 with a JSON body on the API surfaces.
async fn wrong_method(method: Method, uri: axum::http::Uri) -> Response {
    let path = uri.path();
    if path.starts_with("/v1/") {
        let message = format!("Method {method} is not allowed on {path}.");
        return openai_error(
            StatusCode::METHOD_NOT_ALLOWED,
            message,
            "method_not_allowed",
        );
    }
    if path.starts_with("/api/admin/") {
        return crate::error::ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            kind: "invalid_request_error",
            code: "method_not_allowed",
            message: format!("{method} is not allowed on {path}"),
            param: None,
        }
        .into_response();
    }
    StatusCode::METHOD_NOT_ALLOWED.into_response()
}

/// OpenAI's error shape (the one every `/v1/` client understands).
fn openai_error(status: StatusCode, message: String, code: &str) -> Response {
    let body = json!({"error": {
        "message": message,
        "type": "invalid_request_error",
        "param": null,
        "code": code,
    }});
    (status, Json(body)).into_response()
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every request passes through (one layer rather than four, since the proxy path pays
/// for each layer on every request):
/// - `x-request-id`: the client's, or a new UUID; set on the request and echoed back;
/// - the client address (`crate::client_addr`), kept as a `ClientAddr` extension;
/// - a trace span `http` with method, path, that id and the client address, and a debug line
///   when it is answered;
/// - `tollgate_http_requests_total` by route template (not the raw path) and status.
///
/// (An admin change drops the proxy's caches in the operation that makes it: `crate::admin`.)
async fn edge(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", |p| p.as_str());
    around(&st, req, route, |req| next.run(req)).await
}

/// The work of [`edge`] around `run`, which answers the request; `route` is the route
/// template the request counter is labelled with.
async fn around<F, Fut>(st: &AppState, mut req: Request, route: &str, run: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let id = match req.headers().get(X_REQUEST_ID) {
        Some(v) => v.clone(),
        None => {
            let v = HeaderValue::try_from(uuid::Uuid::new_v4().to_string())
                .expect("a UUID is a valid header value");
            req.headers_mut().insert(X_REQUEST_ID, v.clone());
            v
        }
    };
    // The one client address rule (SPEC §11.3), worked out once for the steps after this.
    let client = client_addr::of_request(
        req.extensions(),
        req.headers(),
        &st.config.server.trusted_proxies,
    );
    if let Some(ip) = client {
        req.extensions_mut().insert(client_addr::ClientAddr(ip));
    }
    let span = tracing::info_span!(
        "http",
        method = %req.method(),
        path = %req.uri().path(),
        request_id = %String::from_utf8_lossy(id.as_bytes()),
        client = %client.map_or_else(|| "-".to_string(), |ip| ip.to_string())
    );
    let started = std::time::Instant::now();
    let mut resp = run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    span.in_scope(|| {
        tracing::debug!(
            status,
            latency_ms = started.elapsed().as_millis() as u64,
            "answered"
        );
    });
    resp.headers_mut().entry(X_REQUEST_ID).or_insert(id);
    st.metrics.count_request(route, status);
    resp
}

/// With `metrics.token` set, a scrape must carry it as a bearer token (SPEC §11.7); compared in
/// constant time like every other secret.
fn metrics_allowed(st: &AppState, headers: &axum::http::HeaderMap) -> bool {
    let token = st.config.metrics.token.expose();
    if token.is_empty() {
        return true;
    }
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .is_some_and(|t| crate::secrets::constant_time_eq(t.trim(), token))
}

/// Prometheus text format.
async fn metrics(State(st): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    if !metrics_allowed(&st, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Bearer")],
            "metrics.token is set: send `Authorization: Bearer <metrics.token>`\n",
        )
            .into_response();
    }
    let r = st.recorder.metrics();
    let (size, idle) = st.db.pool_usage();
    let accounts_by_health = crate::proxy::probe::health_counts(&st)
        .await
        .inspect_err(|e| tracing::warn!(error = %e, "cannot count accounts for /metrics"))
        .ok();
    let text = st.metrics.render(&crate::metrics::Sampled {
        recorder_queue_depth: r.queue_depth.load(Relaxed) as u64,
        recorder_events_applied: r.applied.load(Relaxed),
        recorder_duplicates: r.duplicates.load(Relaxed),
        recorder_batches: r.batches.load(Relaxed),
        recorder_batch_seconds: r.batch_micros_total.load(Relaxed) as f64 / 1e6,
        settlement_failures: r.settle_failures.load(Relaxed),
        recorder_spilled: r.spilled.load(Relaxed),
        stats_failures: r.stats_failures.load(Relaxed),
        db_pool_connections: u64::from(size),
        db_pool_idle: idle as u64,
        accounts_by_health,
    });
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

/// The process is up.
async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Ready when the database answers; Redis down is reported as degraded, not as unready (the
/// proxy goes on without it). Answers within a second whatever either does.
async fn readyz(State(st): State<AppState>) -> impl IntoResponse {
    use std::time::Duration;
    let db = async {
        tokio::time::timeout(Duration::from_millis(800), st.db.ping())
            .await
            .is_ok_and(|r| r.is_ok())
    };
    let redis = async {
        match &st.redis {
            None => None,
            Some(c) => {
                let mut c = c.clone();
                let cmd = redis::cmd("PING");
                let ping = cmd.query_async::<String>(&mut c);
                Some(
                    tokio::time::timeout(Duration::from_millis(500), ping)
                        .await
                        .is_ok_and(|r| r.is_ok()),
                )
            }
        }
    };
    let (db, redis) = tokio::join!(db, redis);
    let (status, word) = match (db, redis) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        (true, Some(false)) => (StatusCode::OK, "degraded"),
        (true, _) => (StatusCode::OK, "ready"),
    };
    (
        status,
        Json(json!({
            "status": word,
            "database": if db { "ok" } else { "unreachable" },
            "redis": match redis { None => "not configured", Some(true) => "ok", Some(false) => "degraded" },
        })),
    )
}
