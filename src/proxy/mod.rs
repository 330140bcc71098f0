//! The proxy: the OpenAI and Anthropic routes, as one pipeline of typed steps. It never calls
//! admin code and never waits on the recording.
//!
//! # Around it, outermost first
//!
//! 1. The listener (`app::App::serve`): TCP_NODELAY on every accepted connection (streams are
//!    written event by event).
//! 2. `into_make_service_with_connect_info`: the `ConnectInfo<SocketAddr>` extension, from
//!    which `http::edge` works out the client address (`crate::client_addr`).
//! 3. `http::Frontend`: a `POST` to one of these endpoints ([`endpoint_at`]) goes straight to
//!    [`handle`] through `http::edge`'s work; every other request goes through axum's router
//!    (which also serves these routes, for callers of `http::router`).
//! 4. `http::edge`, the work around every route: `x-request-id` (the client's, or a new
//!    UUID set on the request) echoed on the response; the `http` trace span carrying it, so
//!    every log line of the steps below names the request; `tollgate_http_requests_total` by
//!    route and status once answered; and dropping this module's caches after an admin write.
//!
//! No body-limit layer: `parse` reads the body with `server.max_body_bytes` itself, so a 413
//! comes in the provider's shape.
//!
//! # The steps (`pipeline`), each a typed input to a typed output
//!
//! 1. [`auth::authenticate`]: headers → `KeyAuth` (the key from `Authorization: Bearer` or
//!    `x-api-key`, looked up by its hash through a cache; key status, user status, expiry).
//!    First, so no body is read for a request without a valid key. Then
//!    [`auth::check_client_ip`]: the key's `allowed_ips` against the client address.
//! 2. [`parse::parse`]: body → [`parse::ProxyRequest`] (the body limit; the JSON head read
//!    borrowed: model, stream, output limit, whether the client asked for stream usage).
//! 3. [`admit::offer`]: → [`admit::Offer`] (the model allowed for the key, its price, the
//!    provider's active accounts; cached).
//! 4. [`admit::admit`]: → [`admit::Admitted`] (the accounts that serve the model and are not
//!    cooling down, RPM and TPM, the grant that pays and the reservation of the admission
//!    estimate: `billing::admission`, `billing::estimate`).
//! 5. [`rewrite::body`]: → [`rewrite::UpstreamBody`] (OpenAI streams always ask upstream for
//!    usage); per attempt, [`rewrite::upstream_headers`] and [`rewrite::upstream_url`].
//! 6. [`ticket::Ticket::new`]: what the usage event needs; from here on one is recorded,
//!    whatever happens.
//! 7. [`forward::forward`]: attempts over the ordered accounts (`upstream::order`) with the
//!    first-byte timeout, the next account on a connect error, timeout, 429 or 5xx; a failed
//!    attempt cools its account down and goes to [`account_errors`].
//! 8. [`respond::respond`] (upstream answered) or [`respond::failed`] (no attempt did): whole
//!    bodies are read and their usage read (`tap::usage_from_body`); SSE streams pass through
//!    [`respond::TapStream`] (`tap::SseTap`) event by event.
//! 9. [`ticket::Ticket::finish`], once the body is read or the stream ends, breaks, stalls or
//!    is dropped: the usage event to the recorder, the reservation moved to the actual cost,
//!    the tokens added to the key's TPM, and a complete answer's cost learned for the next
//!    admission estimates of its key and model (`billing::estimate::Learner`).
//!
//! Between steps 3 and 4, [`concurrency::Concurrency::acquire`] takes a slot under the key's
//! and its user's `max_concurrency` (SPEC §11.3); the response body holds it
//! ([`concurrency::hold`]), so it ends with the answer, the client or the failure.
//!
//! Steps 1 to 5 (and the slot) fail with a [`ProxyError`] in the provider's shape, counted in
//! `tollgate_refused_total{code}`; after step 1, for a known key, also a `refused` log row
//! ([`refused`]) and nothing else.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;

use crate::billing::admission::{GrantCache, Reservations};
use crate::billing::cost::Price;
use crate::billing::estimate::Learner;
use crate::billing::key_budget::KeyBudgets;
use crate::cache::{self, TtlCache};
use crate::client_addr::ClientAddr;
use crate::domain::Provider;
use crate::state::AppState;
use crate::store::accounts::Account;
use crate::store::keys::KeyAuth;

pub mod access_log;
pub mod account_errors;
pub mod admit;
pub mod alias;
pub mod auth;
pub mod client;
pub mod concurrency;
pub mod error;
pub mod forward;
pub mod limits;
pub mod parse;
pub mod probe;
pub mod refused;
pub mod respond;
pub mod rewrite;
pub mod tap;
pub mod ticket;
pub mod upstream;

pub use auth::authenticate;
use error::{Protocol, ProxyError};

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
    fn charged(self) -> bool {
        self != Endpoint::CountTokens
    }
    /// OpenAI streams that report usage only when asked (`stream_options.include_usage`).
    fn usage_on_request(self) -> bool {
        matches!(self, Endpoint::ChatCompletions | Endpoint::Completions)
    }
}

/// Proxy-only state, built once at startup.
pub struct ProxyState {
    pub http: client::UpstreamClient,
    pub health: upstream::Health,
    pub limiter: limits::Limiter,
    /// Requests in flight per key and per user (`max_concurrency`).
    pub concurrency: Arc<concurrency::Concurrency>,
    pub reservations: Arc<Reservations>,
    pub grants: Arc<GrantCache>,
    /// Key budgets' in-flight holds and counters (shared with the recorder).
    pub key_budgets: Arc<KeyBudgets>,
    /// What recent requests cost, per key and model (the admission estimate).
    pub learner: Learner,
    pub account_errors: account_errors::AccountErrors,
    /// Which keys already have a refused row this second, per code.
    pub refusals: refused::Refusals,
    /// Set when the shutdown grace ran out: streams cut then are recorded `partial`.
    pub closing: std::sync::atomic::AtomicBool,
    keys: TtlCache<String, Option<KeyAuth>>,
    prices: TtlCache<String, Option<Price>>,
    accounts: TtlCache<Provider, Vec<Account>>,
    /// With Redis: tells the other instances about admin writes (`cache::bus`).
    bus: Option<cache::bus::Bus>,
    /// With Redis: hears the other instances' admin writes; ends with this state.
    listener: std::sync::Mutex<Option<cache::bus::Listener>>,
}

impl ProxyState {
    pub fn new(
        cfg: &crate::config::UpstreamConfig,
        limiter: limits::Limiter,
        concurrency: Arc<concurrency::Concurrency>,
        reservations: Arc<Reservations>,
        grants: Arc<GrantCache>,
        account_errors: account_errors::AccountErrors,
        clock: crate::clock::Clock,
    ) -> anyhow::Result<ProxyState> {
        let http = client::UpstreamClient::new(Duration::from_secs(cfg.connect_timeout_secs));
        Ok(ProxyState {
            http,
            health: upstream::Health::new(clock),
            limiter,
            concurrency,
            reservations,
            grants,
            key_budgets: Arc::default(),
            learner: Learner::default(),
            account_errors,
            refusals: Default::default(),
            closing: Default::default(),
            keys: TtlCache::new(cache::TTL),
            prices: TtlCache::new(cache::TTL),
            accounts: TtlCache::new(cache::TTL),
            bus: None,
            listener: Default::default(),
        })
    }

    /// The key budgets the recorder releases and settles.
    pub fn with_key_budgets(mut self, key_budgets: Arc<KeyBudgets>) -> ProxyState {
        self.key_budgets = key_budgets;
        self
    }

    /// Publish admin writes on Redis (before the state is shared; see [`Self::listen`]).
    pub fn set_bus(&mut self, bus: cache::bus::Bus) {
        self.bus = Some(bus);
    }

    /// Start hearing the other instances' admin writes: each drops this instance's caches
    /// (`forget_local`). The listener holds only `st` weakly and ends with it.
    pub fn listen(st: &AppState, client: redis::Client) {
        let Some(bus) = &st.proxy.bus else { return };
        let weak = std::sync::Arc::downgrade(&st.0);
        let listener = cache::bus::listen(
            client,
            bus.channel().to_string(),
            bus.instance().to_string(),
            move || match weak.upgrade() {
                Some(st) => {
                    st.proxy.forget_local();
                    true
                }
                None => false,
            },
        );
        *st.proxy.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(listener);
    }

    /// Drop every cached key, price, account list and grant list after an admin change: on
    /// this instance at once, and with Redis on every other one too (`cache::bus`); without
    /// Redis the others follow within `cache::TTL + cache::GRACE`.
    pub fn forget_cached(&self) {
        self.forget_local();
        if let Some(bus) = &self.bus {
            bus.publish();
        }
    }

    /// Drop this instance's cached keys, prices, account lists and grant lists.
    pub fn forget_local(&self) {
        self.keys.clear();
        self.prices.clear();
        self.accounts.clear();
        self.grants.clear();
        self.key_budgets.cache.clear();
    }
}

/// The proxied endpoints, each a `POST` at its [`Endpoint::path`].
const PROXIED: [Endpoint; 6] = [
    Endpoint::ChatCompletions,
    Endpoint::Responses,
    Endpoint::Completions,
    Endpoint::Embeddings,
    Endpoint::Messages,
    Endpoint::CountTokens,
];

/// The proxied endpoint a `POST` to `path` reaches, if any (the router's match for these
/// routes, used by `http::Frontend` to reach [`handle`] without the router).
pub fn endpoint_at(path: &str) -> Option<Endpoint> {
    PROXIED.into_iter().find(|e| e.path() == path)
}

pub fn router() -> Router<AppState> {
    PROXIED
        .into_iter()
        .fold(Router::new(), |r, e| {
            r.route(
                e.path(),
                post(move |State(st): State<AppState>, req: Request| handle(st, e, req)),
            )
        })
        .route("/v1/models", get(models))
}

/// One proxied request, answered in the provider's shape whatever happens.
pub async fn handle(st: AppState, endpoint: Endpoint, req: Request) -> Response {
    match pipeline(st, endpoint, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// One proxied request, step by step (see the module documentation).
async fn pipeline(st: AppState, endpoint: Endpoint, req: Request) -> Result<Response, ProxyError> {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let key = authenticate(&st, &parts.headers, endpoint.protocol())
        .await
        .inspect_err(|e| refused::count(&st, e))?;
    // From here a refusal is of a known key: logged (SPEC §11.4).
    let refuse = |model: &str, e: ProxyError| {
        refused::record(&st, &key, endpoint, model, &e, started);
        e
    };
    // Before the body is read: a key used from outside its allow-list gets nothing more.
    auth::check_client_ip(&key, ClientAddr::of(&parts.extensions), endpoint.protocol())
        .map_err(|e| refuse("", e))?;
    let request = parse::parse(endpoint, body, st.config.server.max_body_bytes)
        .await
        .map_err(|e| refuse("", e))?;
    if !st.recorder.accepting() {
        // Neither the database nor the journal can take its usage (SPEC §11.5).
        let m = "the gateway cannot record usage right now; try again";
        let e = ProxyError::new(endpoint.protocol(), error::Failure::Unavailable(m.into()));
        return Err(refuse(&request.model, e));
    }
    let offer = admit::offer(&st, &key, &request)
        .await
        .map_err(|e| refuse(&request.model, e))?;
    // Held until the answer's body is sent or dropped, or the request fails (SPEC §11.3).
    let slot = st.proxy.concurrency.acquire(&key).await.map_err(|full| {
        let e = ProxyError::new(
            endpoint.protocol(),
            error::Failure::Concurrency(full.message()),
        );
        refuse(&request.model, e)
    })?;
    let admitted = admit::admit(&st, &key, &request, &offer)
        .await
        .map_err(|e| refuse(&request.model, e))?;
    let upstream = rewrite::body(&request);
    let mut ticket = ticket::Ticket::new(st.clone(), &key, request, &admitted, started);
    ticket.query = parts.uri.query().map(str::to_owned);
    // Time spent in tollgate before the request went upstream (auth, admission, body).
    let admitted_in = started.elapsed();
    let answer = forward::forward(
        &st,
        &mut ticket,
        &parts.headers,
        &upstream.body,
        admitted.accounts,
    )
    .await;
    let resp = match answer {
        Ok(resp) => {
            let alias = offer.alias_answer(ticket.account_id, ticket.model());
            respond::respond(&st, ticket, resp, upstream.strip_usage, admitted_in, alias).await
        }
        Err(exhausted) => {
            let last = exhausted.0.as_ref().map(|(_, id)| *id);
            let alias = offer.alias_answer(last, ticket.model());
            respond::failed(ticket, exhausted, alias).await?
        }
    };
    Ok(concurrency::hold(resp, slot))
}

/// `GET /v1/models`: the models this key may use, in OpenAI's list shape.
async fn models(
    State(st): State<AppState>,
    client: Option<axum::Extension<ClientAddr>>,
    headers: HeaderMap,
) -> Response {
    let key = match authenticate(&st, &headers, Protocol::OpenAi).await {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = auth::check_client_ip(&key, client.map(|c| c.0 .0), Protocol::OpenAi) {
        return e.into_response();
    }
    let allowed = crate::store::column_to_list(&key.allowed_models);
    let prices = match st.db.list_prices().await {
        Ok(p) => p,
        Err(e) => return ProxyError::database(Protocol::OpenAi, e).into_response(),
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
