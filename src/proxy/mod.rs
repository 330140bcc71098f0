//! The proxy: authenticate the key, admit the request (model, price, account, limits, a package
//! with room), forward it to an upstream account, stream the answer back while reading its
//! usage, and hand one usage event to the recorder. It never calls admin code and never waits
//! on the recording.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use std::future::Future;

use crate::billing::admission::{self, Reservations};
use crate::billing::balance::window_starts;
use crate::billing::cost::{cost, Price, Tokens};
use crate::billing::windows::day_string;
use crate::cache::{self, TtlCache};
use crate::domain::{KeyStatus, Provider, UserStatus};
use crate::secrets::sha256_hex;
use crate::state::AppState;
use crate::store::accounts::Account;
use crate::store::keys::KeyAuth;
use crate::store::packages::UserPackage;
use crate::usage::{BillingStatus, UsageEvent, WindowStarts};

pub mod client;
pub mod error;
pub mod limits;
pub mod tap;
pub mod upstream;

use client::{UpstreamBody, UpstreamResponse};
use error::{Failure, Protocol, ProxyError};
use tap::SseTap;

/// The proxied endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Responses,
    Completions,
    Embeddings,
    Messages,
    CountTokens,
}

impl Endpoint {
    pub fn protocol(self) -> Protocol {
        match self {
            Endpoint::Messages | Endpoint::CountTokens => Protocol::Anthropic,
            _ => Protocol::OpenAi,
        }
    }
    pub fn provider(self) -> Provider {
        match self.protocol() {
            Protocol::OpenAi => Provider::OpenAi,
            Protocol::Anthropic => Provider::Anthropic,
        }
    }
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Responses => "/v1/responses",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Messages => "/v1/messages",
            Endpoint::CountTokens => "/v1/messages/count_tokens",
        }
    }
    /// The upstream URL, following each provider SDK's base_url convention: openai base URLs
    /// include `/v1`, anthropic ones do not.
    pub fn upstream_url(self, base_url: &str) -> String {
        let base = base_url.trim_end_matches('/');
        match self.protocol() {
            Protocol::OpenAi => format!("{base}{}", &self.path()[3..]),
            Protocol::Anthropic => format!("{base}{}", self.path()),
        }
    }
    fn charged(self) -> bool {
        self != Endpoint::CountTokens
    }
}

/// Each user's active grants (for `cache::TTL`; dropped by admin writes and journal replay).
/// The value is (the settlement sequence number before the load, the grants).
pub type GrantCache = TtlCache<i64, (u64, Vec<UserPackage>)>;

/// Proxy-only state, built once at startup.
pub struct ProxyState {
    pub http: client::UpstreamClient,
    pub health: upstream::Health,
    pub limiter: limits::Limiter,
    pub reservations: Arc<Reservations>,
    pub grants: Arc<GrantCache>,
    keys: TtlCache<String, Option<KeyAuth>>,
    prices: TtlCache<String, Option<Price>>,
    accounts: TtlCache<Provider, Vec<Account>>,
}

impl ProxyState {
    pub fn new(
        cfg: &crate::config::UpstreamConfig,
        limiter: limits::Limiter,
        reservations: Arc<Reservations>,
        grants: Arc<GrantCache>,
    ) -> anyhow::Result<ProxyState> {
        let http = client::UpstreamClient::new(Duration::from_secs(cfg.connect_timeout_secs));
        Ok(ProxyState {
            http,
            health: upstream::Health::default(),
            limiter,
            reservations,
            grants,
            keys: TtlCache::new(cache::TTL),
            prices: TtlCache::new(cache::TTL),
            accounts: TtlCache::new(cache::TTL),
        })
    }
}

impl ProxyState {
    /// Drop every cached key, price, account list and grant list (after an admin change, so it
    /// takes effect at once on this instance; other instances follow within `cache::TTL`).
    pub fn forget_cached(&self) {
        self.keys.clear();
        self.prices.clear();
        self.accounts.clear();
        self.grants.clear();
    }
}

pub fn router() -> Router<AppState> {
    let route = |e: Endpoint| {
        post(
            move |State(st): State<AppState>, req: Request| async move { handle(st, e, req).await },
        )
    };
    Router::new()
        .route("/v1/chat/completions", route(Endpoint::ChatCompletions))
        .route("/v1/responses", route(Endpoint::Responses))
        .route("/v1/completions", route(Endpoint::Completions))
        .route("/v1/embeddings", route(Endpoint::Embeddings))
        .route("/v1/messages", route(Endpoint::Messages))
        .route("/v1/messages/count_tokens", route(Endpoint::CountTokens))
        .route("/v1/models", get(models))
}

/// The API key from `Authorization: Bearer …` or `x-api-key`.
pub fn client_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim());
    }
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// Authenticate a key: missing, unknown, revoked, expired or of a disabled user → 401.
pub async fn authenticate(
    st: &AppState,
    headers: &HeaderMap,
    protocol: Protocol,
) -> Result<KeyAuth, ProxyError> {
    let fail = |m: &str| ProxyError::new(protocol, Failure::InvalidKey(m.to_string()));
    let secret = client_key(headers).ok_or_else(|| {
        fail("missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`")
    })?;
    let hash = sha256_hex(secret);
    let key = st
        .proxy
        .keys
        .get_or_load(&hash, || st.db.find_key_auth(&hash))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "key lookup failed");
            fail("the gateway cannot check API keys right now; try again")
        })?
        .as_ref()
        .clone()
        .ok_or_else(|| fail("invalid API key: check the key you were given"))?;
    if key.status != KeyStatus::Active || key.user_status != UserStatus::Active {
        return Err(fail("this API key has been revoked or its user disabled"));
    }
    if key.expires_at.is_some_and(|t| t <= st.now_ms()) {
        return Err(fail("this API key has expired: ask for a new one"));
    }
    Ok(key)
}

/// `GET /v1/models`: the models this key may use, in OpenAI's list shape.
async fn models(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let key = match authenticate(&st, &headers, Protocol::OpenAi).await {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let allowed = crate::store::column_to_list(&key.allowed_models);
    let prices = match st.db.list_prices().await {
        Ok(p) => p,
        Err(e) => return crate::error::ApiError::internal(e).into_response(),
    };
    let data: Vec<Value> = prices
        .into_iter()
        .filter(|p| allowed.is_empty() || allowed.contains(&p.model))
        .map(|p| {
            serde_json::json!({"id": p.model, "object": "model", "created": p.updated_at / 1000, "owned_by": "tollgate"})
        })
        .collect();
    axum::Json(serde_json::json!({"object": "list", "data": data})).into_response()
}

/// Everything known about a request once admitted; produces its usage event.
struct Ticket {
    st: AppState,
    request_id: String,
    endpoint: Endpoint,
    user_id: i64,
    api_key_id: i64,
    tpm_limited: bool,
    account_id: Option<i64>,
    user_package_id: Option<i64>,
    windows: Option<WindowStarts>,
    model: String,
    stream: bool,
    price: Price,
    reserved: i64,
    started: Instant,
    created_at_ms: i64,
    day: String,
    request_bytes: usize,
    ttfb_ms: Option<i64>,
}

impl Ticket {
    /// Emit the usage event. `tokens` None = nothing billable.
    fn finish(
        &mut self,
        status: u16,
        tokens: Option<Tokens>,
        billing: BillingStatus,
        error: Option<String>,
    ) {
        let tokens = if self.endpoint.charged() {
            tokens.unwrap_or_default()
        } else {
            Tokens::default()
        };
        let billing = if self.endpoint.charged() {
            billing
        } else {
            BillingStatus::Void
        };
        let cost_nanos = cost(&tokens, &self.price).total.nanos();
        let st = &self.st;
        if let Some(up) = self.user_package_id {
            // The reservation now holds the actual cost until the recorder settles it.
            st.proxy.reservations.add(up, cost_nanos - self.reserved);
        }
        if self.tpm_limited && tokens.total() > 0 {
            let st2 = st.clone();
            let (key, n, now) = (self.api_key_id, tokens.total(), st.now_ms());
            tokio::spawn(async move { st2.proxy.limiter.add_tokens(key, n, now).await });
        }
        let event = UsageEvent {
            request_id: std::mem::take(&mut self.request_id),
            created_at_ms: self.created_at_ms,
            day: std::mem::take(&mut self.day),
            user_id: self.user_id,
            api_key_id: self.api_key_id,
            account_id: self.account_id,
            user_package_id: self.user_package_id,
            windows: self.windows,
            model: std::mem::take(&mut self.model),
            endpoint: self.endpoint.path().to_string(),
            stream: self.stream,
            status,
            tokens,
            cost_nanos,
            billing_status: billing,
            latency_ms: self.started.elapsed().as_millis() as i64,
            ttfb_ms: self.ttfb_ms,
            error,
            reserved: if self.user_package_id.is_some() {
                cost_nanos
            } else {
                0
            },
        };
        st.recorder.record(event);
    }

    /// Nothing reached upstream: release the reservation and log the failure.
    fn fail_before_upstream(&mut self, status: u16, error: String) {
        self.account_id = None;
        self.finish(status, None, BillingStatus::Void, Some(error));
    }

    /// A rough usage figure when upstream reported none: ~4 bytes a token.
    fn estimate(&self, output_bytes: usize) -> Tokens {
        Tokens {
            input: (self.request_bytes / 4) as i64,
            output: (output_bytes / 4) as i64,
            cache_read: 0,
            cache_write: 0,
        }
    }
}

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
];

/// Headers sent upstream: the client's, minus its credentials, hop-by-hop headers and those
/// the HTTP client sets itself; `accept-encoding` is dropped so usage can be read.
fn upstream_headers(client: &HeaderMap, account: &Account) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(client.len() + 2);
    let conn_listed: Vec<String> = client
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for (name, value) in client {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n)
            || conn_listed.iter().any(|c| c == n)
            || matches!(
                n,
                "host"
                    | "authorization"
                    | "x-api-key"
                    | "content-length"
                    | "accept-encoding"
                    | "cookie"
            )
        {
            continue;
        }
        h.append(name.clone(), value.clone());
    }
    let auth = match account.provider {
        Provider::Anthropic => ("x-api-key", account.secret.expose().to_string()),
        Provider::OpenAi => (
            "authorization",
            format!("Bearer {}", account.secret.expose()),
        ),
    };
    if let Ok(v) = HeaderValue::from_str(&auth.1) {
        h.insert(HeaderName::from_static(auth.0), v);
    }
    if account.provider == Provider::Anthropic && !h.contains_key("anthropic-version") {
        h.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
    }
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h
}

/// Response headers for the client: upstream's minus hop-by-hop and length (we may re-frame).
fn client_headers(upstream: &HeaderMap, request_id: &str) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(upstream.len() + 1);
    for (name, value) in upstream {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || n == "content-length" {
            continue;
        }
        h.append(name.clone(), value.clone());
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-tollgate-request-id", v);
    }
    h
}

fn invalid(protocol: Protocol, m: impl Into<String>) -> ProxyError {
    ProxyError::new(protocol, Failure::InvalidRequest(m.into()))
}

/// The request fields the gateway reads (borrowed, unparsed until needed).
#[derive(serde::Deserialize)]
struct RequestHead<'a> {
    #[serde(borrow)]
    model: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    stream: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    stream_options: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    max_tokens: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    max_completion_tokens: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    max_output_tokens: Option<&'a serde_json::value::RawValue>,
}

/// An estimate of what a request will cost, reserved against its package at admission.
fn estimate_cost(head: &RequestHead, bytes: usize, price: &Price) -> i64 {
    let max_out = [
        head.max_tokens,
        head.max_completion_tokens,
        head.max_output_tokens,
    ]
    .into_iter()
    .find_map(|r| r.and_then(|r| serde_json::from_str::<i64>(r.get()).ok()))
    .unwrap_or(256)
    .clamp(0, 1_000_000);
    let t = Tokens {
        input: (bytes / 4) as i64,
        output: max_out,
        cache_read: 0,
        cache_write: 0,
    };
    cost(&t, price).total.nanos()
}

async fn handle(st: AppState, endpoint: Endpoint, req: Request) -> Response {
    match admit_and_forward(st, endpoint, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn admit_and_forward(
    st: AppState,
    endpoint: Endpoint,
    req: Request,
) -> Result<Response, ProxyError> {
    let started = Instant::now();
    let protocol = endpoint.protocol();
    let fail = |f: Failure| ProxyError::new(protocol, f);
    let (parts, body) = req.into_parts();
    let key = authenticate(&st, &parts.headers, protocol).await?;

    let limit = st.config.server.max_body_bytes;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| fail(Failure::TooLarge(limit)))?;
    // Only the fields the gateway needs are read; the rest is checked to be JSON and skipped.
    let head: RequestHead = serde_json::from_slice(&bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => invalid(protocol, "the request body must be a JSON object"),
            _ => invalid(protocol, format!("the request body is not valid JSON: {e}")),
        }
    })?;
    let model = match head.model.map(|r| serde_json::from_str::<String>(r.get())) {
        Some(Ok(m)) if !m.is_empty() => m,
        Some(_) => return Err(invalid(protocol, "`model` must be a non-empty string")),
        None => return Err(invalid(protocol, "`model` is required")),
    };
    let stream = match head
        .stream
        .map(|r| serde_json::from_str::<Option<bool>>(r.get()))
    {
        None => false,
        Some(Ok(b)) => b.unwrap_or(false),
        Some(Err(_)) => return Err(invalid(protocol, "`stream` must be true or false")),
    };

    let allowed = crate::store::column_to_list(&key.allowed_models);
    if !allowed.is_empty() && !allowed.contains(&model) {
        return Err(fail(Failure::ModelNotAllowed(format!(
            "this API key may not use model `{model}`; it may use: {}",
            allowed.join(", ")
        ))));
    }
    let db_err = |e: crate::store::StoreError| {
        tracing::error!(error = %e, "database error on the proxy path");
        fail(Failure::Unreachable(
            "the gateway's database is unavailable; try again".into(),
        ))
    };
    let price = st
        .proxy
        .prices
        .get_or_load(&model, || async {
            Ok(st.db.get_price(&model).await?.map(|p| p.price()))
        })
        .await
        .map_err(db_err)?
        .ok_or_else(|| {
            fail(Failure::ModelNotFound(format!(
                "model `{model}` is not available on this gateway (it has no price)"
            )))
        })?;
    let provider = endpoint.provider();
    let accounts = st
        .proxy
        .accounts
        .get_or_load(&provider, || st.db.active_accounts(provider))
        .await
        .map_err(db_err)?;
    let serving: Vec<&Account> = accounts.iter().filter(|a| a.serves(&model)).collect();
    if serving.is_empty() {
        return Err(fail(Failure::ModelNotFound(format!(
            "no upstream account serves model `{model}`"
        ))));
    }
    let healthy: Vec<&Account> = serving
        .into_iter()
        .filter(|a| !st.proxy.health.cooling(a.id))
        .collect();
    if healthy.is_empty() {
        return Err(fail(Failure::NoAccount(format!(
            "every upstream account for model `{model}` is cooling down after errors; retry shortly"
        ))));
    }

    let now = st.clock.now();
    let now_ms = now.timestamp_millis();
    if let Some(rpm) = key.rpm_limit {
        st.proxy
            .limiter
            .hit_rpm(key.id, rpm, now_ms)
            .await
            .map_err(|retry_after| {
                fail(Failure::RateLimited {
                    message: format!(
                        "this API key is over its limit of {rpm} requests per minute; retry after {retry_after} s"
                    ),
                    retry_after,
                })
            })?;
    }
    if let Some(tpm) = key.tpm_limit {
        st.proxy
            .limiter
            .check_tpm(key.id, tpm, now_ms)
            .await
            .map_err(|retry_after| {
                fail(Failure::RateLimited {
                    message: format!(
                        "this API key is over its limit of {tpm} tokens per minute; retry after {retry_after} s"
                    ),
                    retry_after,
                })
            })?;
    }

    let (user_package_id, windows, reserved) = if endpoint.charged() {
        let res = &st.proxy.reservations;
        let user = [key.user_id];
        let cached = st
            .proxy
            .grants
            .get_or_load(&key.user_id, || async {
                let since = res.seq();
                Ok((since, st.db.active_user_packages(&user, now_ms).await?))
            })
            .await
            .map_err(db_err)?;
        let (since, grants) = (cached.0, &cached.1);
        let est = estimate_cost(&head, bytes.len(), &price);
        let g = res
            .admit(since, |reserved| {
                admission::choose(grants, now, st.tz, reserved).map(|g| (g.id, est, g))
            })
            .map_err(|d| fail(Failure::NoQuota(d.message)))?;
        (Some(g.id), window_starts(g, now, st.tz), est)
    } else {
        (None, None, 0)
    };

    // OpenAI streams always ask upstream for usage; remember whether the client did.
    let mut upstream_body = bytes.clone();
    let mut strip_usage = false;
    if stream && matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Completions) {
        let asked = head
            .stream_options
            .and_then(|r| serde_json::from_str::<Value>(r.get()).ok())
            .and_then(|o| o.get("include_usage").and_then(Value::as_bool))
            == Some(true);
        if !asked {
            strip_usage = true;
            let mut json: Value = serde_json::from_slice(&bytes).unwrap_or_default();
            if let Some(obj) = json.as_object_mut() {
                let so = obj
                    .entry("stream_options")
                    .or_insert_with(|| Value::Object(Default::default()));
                if let Some(so) = so.as_object_mut() {
                    so.insert("include_usage".into(), Value::Bool(true));
                } else {
                    *so = serde_json::json!({"include_usage": true});
                }
            }
            upstream_body = Bytes::from(serde_json::to_vec(&json).unwrap_or_default());
        }
    }

    let ticket = Ticket {
        st: st.clone(),
        request_id: uuid::Uuid::now_v7().to_string(),
        endpoint,
        user_id: key.user_id,
        api_key_id: key.id,
        tpm_limited: key.tpm_limit.is_some(),
        account_id: None,
        user_package_id,
        windows,
        model,
        stream,
        price,
        reserved,
        started,
        created_at_ms: now_ms,
        day: day_string(now, st.tz),
        request_bytes: bytes.len(),
        ttfb_ms: None,
    };
    forward(
        &st,
        ticket,
        &parts.headers,
        upstream_body,
        healthy,
        strip_usage,
    )
    .await
}

/// What went wrong with one attempt.
enum AttemptError {
    Connect(String),
    Timeout(String),
    /// Upstream answered with an error status (kept to pass through if it is the last).
    Status(UpstreamResponse),
}

async fn forward(
    st: &AppState,
    mut ticket: Ticket,
    client_hdrs: &HeaderMap,
    body: Bytes,
    accounts: Vec<&Account>,
    strip_usage: bool,
) -> Result<Response, ProxyError> {
    let cfg = &st.config.upstream;
    let protocol = ticket.endpoint.protocol();
    let ordered = upstream::order(accounts, &mut rand::thread_rng());
    let attempts = ordered.len().min(cfg.max_attempts as usize);
    let first_byte = Duration::from_secs(cfg.first_byte_timeout_secs);
    let cooldown = Duration::from_secs(cfg.cooldown_secs);
    let mut last: Option<(AttemptError, i64)> = None;
    // Time spent in tollgate before the request went upstream (auth, admission, body).
    let admitted_in = ticket.started.elapsed();

    for (n, account) in ordered.into_iter().take(attempts).enumerate() {
        let url = ticket.endpoint.upstream_url(&account.base_url);
        let req = st
            .proxy
            .http
            .post(&url, upstream_headers(client_hdrs, account), body.clone());
        let sent_at = Instant::now();
        let outcome = match tokio::time::timeout(first_byte, req).await {
            Err(_) => Err(AttemptError::Timeout(format!(
                "no response from upstream within {} s",
                cfg.first_byte_timeout_secs
            ))),
            Ok(Err(client::SendError::ConnectTimeout(m))) => Err(AttemptError::Timeout(m)),
            Ok(Err(client::SendError::Connect(m))) => Err(AttemptError::Connect(m)),
            Ok(Ok(r))
                if r.status() == StatusCode::TOO_MANY_REQUESTS || r.status().is_server_error() =>
            {
                Err(AttemptError::Status(r))
            }
            Ok(Ok(r)) => Ok(r),
        };
        match outcome {
            Ok(resp) => {
                st.metrics.upstream_latency.observe(sent_at.elapsed());
                st.proxy.health.recovered(account.id);
                ticket.account_id = Some(account.id);
                return Ok(respond(st, ticket, resp, strip_usage, admitted_in).await);
            }
            Err(e) => {
                let what = match &e {
                    AttemptError::Connect(m) | AttemptError::Timeout(m) => m.clone(),
                    AttemptError::Status(r) => format!("upstream answered {}", r.status()),
                };
                tracing::warn!(
                    request_id = %ticket.request_id,
                    account_id = account.id,
                    attempt = n + 1,
                    error = %what,
                    "upstream attempt failed"
                );
                st.metrics
                    .upstream_attempt_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                st.proxy.health.cool_down(account.id, cooldown);
                let (db, id, now) = (st.db.clone(), account.id, st.now_ms());
                tokio::spawn(async move {
                    if let Err(e) = db.set_account_error(id, &what, now).await {
                        tracing::warn!(error = %e, "cannot store account error");
                    }
                });
                last = Some((e, account.id));
            }
        }
    }

    match last {
        Some((AttemptError::Status(resp), account_id)) => {
            // Upstream's own error after retries: passed through as is; nothing billable.
            ticket.account_id = Some(account_id);
            let status = resp.status();
            let headers = client_headers(resp.headers(), &ticket.request_id);
            let body = read_body(resp.into_body()).await.unwrap_or_default();
            let tokens = tap::usage_from_body(ticket.endpoint, &body);
            let billing = if tokens.is_some() {
                BillingStatus::Complete
            } else {
                BillingStatus::Void
            };
            ticket.finish(
                status.as_u16(),
                tokens,
                billing,
                Some(format!("upstream answered {status}")),
            );
            let mut r = Response::new(Body::from(body));
            *r.status_mut() = status;
            *r.headers_mut() = headers;
            Ok(r)
        }
        Some((AttemptError::Timeout(m), _)) => {
            ticket.fail_before_upstream(504, m.clone());
            Err(ProxyError::new(
                protocol,
                Failure::Timeout(format!(
                    "{m}; the upstream provider did not answer in time, try again"
                )),
            ))
        }
        Some((AttemptError::Connect(m), _)) => {
            ticket.fail_before_upstream(502, m.clone());
            Err(ProxyError::new(
                protocol,
                Failure::Unreachable(format!(
                    "{m}; the upstream provider could not be reached, try again"
                )),
            ))
        }
        None => {
            ticket.fail_before_upstream(503, "no account to try".into());
            Err(ProxyError::new(
                protocol,
                Failure::NoAccount("no upstream account is available right now".into()),
            ))
        }
    }
}

/// Answer the client with upstream's response: whole bodies are read and passed on; SSE
/// streams are passed through event by event through the usage tap.
async fn respond(
    st: &AppState,
    mut ticket: Ticket,
    resp: UpstreamResponse,
    strip_usage: bool,
    admitted_in: Duration,
) -> Response {
    let status = resp.status();
    let headers = client_headers(resp.headers(), &ticket.request_id);
    ticket.ttfb_ms = Some(ticket.started.elapsed().as_millis() as i64);
    let idle = Duration::from_secs(st.config.upstream.idle_timeout_secs);
    let is_sse = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !is_sse || !status.is_success() {
        let protocol = ticket.endpoint.protocol();
        let body = match tokio::time::timeout(idle, read_body(resp.into_body())).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                let m = format!("upstream response broke off: {e}");
                let est = ticket.estimate(0);
                ticket.finish(502, Some(est), BillingStatus::Estimated, Some(m.clone()));
                return ProxyError::new(protocol, Failure::Unreachable(m)).into_response();
            }
            Err(_) => {
                let m = format!("upstream response stalled for {} s", idle.as_secs());
                let est = ticket.estimate(0);
                ticket.finish(504, Some(est), BillingStatus::Estimated, Some(m.clone()));
                return ProxyError::new(protocol, Failure::Timeout(m)).into_response();
            }
        };
        let post = Instant::now();
        let tokens = tap::usage_from_body(ticket.endpoint, &body);
        let (tokens, billing) = match tokens {
            Some(t) => (Some(t), BillingStatus::Complete),
            None if status.is_success() => {
                (Some(ticket.estimate(body.len())), BillingStatus::Estimated)
            }
            None => (None, BillingStatus::Void),
        };
        let error = (!status.is_success()).then(|| format!("upstream answered {status}"));
        ticket.finish(status.as_u16(), tokens, billing, error);
        let mut r = Response::new(Body::from(body));
        *r.status_mut() = status;
        *r.headers_mut() = headers;
        st.metrics
            .gateway_overhead
            .observe(admitted_in + post.elapsed());
        return r;
    }
    // Streams: the admission part (per-event tap work is not timed, to keep it cheap).
    st.metrics.gateway_overhead.observe(admitted_in);
    let mut stream = TapStream {
        inner: resp.into_body(),
        tap: SseTap::new(ticket.endpoint, strip_usage),
        ticket: Some(ticket),
        idle,
        sleep: Box::pin(tokio::time::sleep(idle)),
        last_data: tokio::time::Instant::now(),
        out: None,
        status: status.as_u16(),
    };
    // The events upstream sent with its head go out with ours, in one write.
    let first = std::future::poll_fn(|cx| match Pin::new(&mut stream).poll_next(cx) {
        Poll::Ready(item) => Poll::Ready(item),
        Poll::Pending => Poll::Ready(None),
    })
    .await;
    let body = futures_util::stream::iter(first).chain(stream);
    let mut r = Response::new(Body::from_stream(body));
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// A whole upstream body.
async fn read_body(body: UpstreamBody) -> Result<Bytes, hyper::Error> {
    use http_body_util::BodyExt;
    Ok(body.collect().await?.to_bytes())
}

/// The streaming body: forwards complete SSE events as they arrive, reads usage on the way,
/// and emits the usage event when the stream ends, breaks, stalls, or the client goes away
/// (on drop: the upstream request is cancelled with it).
///
/// The upstream connection is driven from this stream's own polls (`client::UpstreamBody`),
/// so everything upstream sent in one burst is decoded and tapped in one poll and goes to the
/// client in one write.
struct TapStream {
    inner: UpstreamBody,
    tap: SseTap,
    ticket: Option<Ticket>,
    idle: Duration,
    /// Fires at the idle limit; moved on lazily (only when it fires) from `last_data`, so
    /// a poll costs at most one clock read, not a timer update.
    sleep: Pin<Box<tokio::time::Sleep>>,
    last_data: tokio::time::Instant,
    /// Events ready for the client, collected within one poll.
    out: Option<OutBuf>,
    status: u16,
}

/// Bytes for the client: the first piece as it came (no copy), later ones appended.
enum OutBuf {
    One(Bytes),
    Many(bytes::BytesMut),
}

impl OutBuf {
    fn push(slot: &mut Option<OutBuf>, b: Bytes) {
        if b.is_empty() {
            return;
        }
        *slot = Some(match slot.take() {
            None => OutBuf::One(b),
            Some(OutBuf::One(first)) => {
                // Room for a burst of events without growing it again and again.
                let cap = ((first.len() + b.len()) * 16).clamp(1024, 16 * 1024);
                let mut m = bytes::BytesMut::with_capacity(cap);
                m.extend_from_slice(&first);
                m.extend_from_slice(&b);
                OutBuf::Many(m)
            }
            Some(OutBuf::Many(mut m)) => {
                m.extend_from_slice(&b);
                OutBuf::Many(m)
            }
        });
    }

    fn take(slot: &mut Option<OutBuf>) -> Option<Bytes> {
        slot.take().map(|o| match o {
            OutBuf::One(b) => b,
            OutBuf::Many(m) => m.freeze(),
        })
    }
}

impl TapStream {
    /// The stream is over (`error` None = upstream ended it normally).
    fn end(&mut self, error: Option<String>) {
        if let Some(mut t) = self.ticket.take() {
            let usage = self.tap.usage();
            let (tokens, billing) = match (usage, &error) {
                (Some(u), None) => (u, BillingStatus::Complete),
                (Some(u), Some(_)) => (u, BillingStatus::Partial),
                (None, _) => (t.estimate(self.tap.data_bytes), BillingStatus::Estimated),
            };
            t.finish(self.status, Some(tokens), billing, error);
        }
    }
}

impl Stream for TapStream {
    type Item = Result<Bytes, std::io::Error>;

    /// Forwards what the tap lets through: everything upstream's connection has ready is
    /// read in this one poll and handed on as one piece.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let mut got_data = false;
        loop {
            if this.ticket.is_none() {
                return Poll::Ready(OutBuf::take(&mut this.out).map(Ok));
            }
            match hyper::body::Body::poll_frame(Pin::new(&mut this.inner), cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(chunk) = frame.into_data() else {
                        continue; // trailers: nothing to forward
                    };
                    got_data = true;
                    let pass = this.tap.push(chunk);
                    OutBuf::push(&mut this.out, pass);
                }
                Poll::Ready(Some(Err(e))) => {
                    let rest = this.tap.finish();
                    OutBuf::push(&mut this.out, rest);
                    this.end(Some(format!("upstream stream broke off: {e}")));
                }
                Poll::Ready(None) => {
                    let rest = this.tap.finish();
                    OutBuf::push(&mut this.out, rest);
                    this.end(None);
                }
                Poll::Pending => {
                    if got_data {
                        this.last_data = tokio::time::Instant::now();
                    }
                    if this.out.is_some() {
                        return Poll::Ready(OutBuf::take(&mut this.out).map(Ok));
                    }
                    while this.sleep.as_mut().poll(cx).is_ready() {
                        let deadline = this.last_data + this.idle;
                        if deadline > tokio::time::Instant::now() {
                            this.sleep.as_mut().reset(deadline);
                            continue;
                        }
                        let secs = this.idle.as_secs();
                        this.end(Some(format!("upstream stream idle for {secs} s")));
                        return Poll::Ready(None);
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Drop for TapStream {
    fn drop(&mut self) {
        if self.ticket.is_some() {
            self.end(Some("client disconnected".into()));
        }
    }
}
