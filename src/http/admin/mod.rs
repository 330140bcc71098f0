//! The admin web UI: server-rendered pages (askama), their sessions, CSRF and login throttling.
//!
//! Layers of the page routes, outermost first: language negotiation (`?lang=` → cookie →
//! `Accept-Language`) and security headers → for everything but the login page and static
//! files, [`require_admin`]: a session (or the admin token), and on state-changing requests the
//! session's CSRF token in the form's `csrf` field. A request failing either never reaches
//! its handler, so it changes nothing.
//!
//! Reads go straight to the store and the billing rules (`balances`, `package_status`); every
//! write goes through the admin JSON API in process ([`api_call`]), so the UI and the API
//! share one set of validation rules and side effects.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};

use crate::domain::{Role, UserStatus};
use crate::i18n::{Lang, Tr};
use crate::secrets::{constant_time_eq, sha256_hex};
use crate::state::AppState;
use crate::store::users::User;

mod accounts;
mod api_call;
mod assets;
mod auth;
mod dashboard;
mod format;
mod keys;
mod models;
mod packages;
mod usage;
mod users;
mod view;

pub use api_call::{Api, ApiFailure};

pub const SESSION_COOKIE: &str = "tollgate_session";
/// The largest form body the CSRF check reads.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// Per-router state of the UI: login throttling and the in-process admin API.
pub struct Runtime {
    throttle: auth::Throttle,
    api: Router,
}

pub fn router(state: AppState) -> Router<AppState> {
    let runtime = Arc::new(Runtime {
        throttle: auth::Throttle::default(),
        api: crate::http::api::router(state.clone()).with_state(state.clone()),
    });
    let pages = Router::new()
        .route("/admin", get(dashboard::page))
        .route("/admin/logout", post(auth::logout))
        .route("/admin/users", get(users::list).post(users::create))
        .route("/admin/users/{id}", get(users::detail))
        .route("/admin/users/{id}/status", post(users::set_status))
        .route("/admin/users/{id}/packages", post(users::grant))
        .route("/admin/users/{id}/keys", post(users::create_key))
        .route(
            "/admin/user-packages/{id}/status",
            post(users::set_grant_status),
        )
        .route(
            "/admin/packages",
            get(packages::list).post(packages::create),
        )
        .route("/admin/packages/{id}/status", post(packages::set_status))
        .route("/admin/keys", get(keys::list))
        .route("/admin/keys/{id}/status", post(keys::set_status))
        .route(
            "/admin/accounts",
            get(accounts::list).post(accounts::create),
        )
        .route(
            "/admin/accounts/{id}",
            get(accounts::edit).post(accounts::update),
        )
        .route("/admin/accounts/{id}/status", post(accounts::set_status))
        .route("/admin/models", get(models::list).post(models::save))
        .route("/admin/usage", get(usage::daily))
        .route("/admin/logs", get(usage::logs))
        .route_layer(middleware::from_fn_with_state(state, require_admin));
    Router::new()
        .merge(pages)
        .route("/admin/", get(|| async { Redirect::permanent("/admin") }))
        .route("/admin/login", get(auth::login_page).post(auth::login))
        .route("/static/{*path}", get(assets::serve))
        .layer(middleware::from_fn(negotiate))
        .layer(Extension(runtime))
}

/// The session id from the request's cookies.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, SESSION_COOKIE)
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The admin behind a valid session cookie: not expired (absolute or idle), user active admin.
pub async fn session_user(
    st: &AppState,
    headers: &HeaderMap,
) -> Option<(User, crate::store::sessions::Session)> {
    let id = session_cookie(headers)?;
    let hash = sha256_hex(id);
    let s = st.db.get_session(&hash).await.ok()??;
    let now = st.now_ms();
    let idle_ms = st.config.admin.session_idle_minutes as i64 * 60_000;
    if now >= s.expires_at || now - s.last_seen_at > idle_ms {
        let _ = st.db.delete_session(&hash).await;
        return None;
    }
    let user = st.db.get_user(s.user_id).await.ok()?;
    if user.role != Role::Admin || user.status != UserStatus::Active {
        return None;
    }
    if now - s.last_seen_at > 60_000 {
        let _ = st.db.touch_session(&hash, now).await;
    }
    Some((user, s))
}

/// `Set-Cookie` attributes shared by the UI's cookies: `Secure` when the public URL is https.
pub fn cookie_attrs(st: &AppState) -> &'static str {
    if st.config.server.public_url.starts_with("https") {
        "; HttpOnly; SameSite=Lax; Secure"
    } else {
        "; HttpOnly; SameSite=Lax"
    }
}

/// Who is using the UI on this request.
#[derive(Clone)]
pub struct Admin {
    /// The admin's username; empty when authenticated by the admin token.
    pub username: String,
    /// The session's CSRF token; empty when authenticated by the admin token.
    pub csrf: String,
    /// The request's own credentials, forwarded to the in-process admin API.
    pub credentials: Vec<(header::HeaderName, HeaderValue)>,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// A session or the admin token; on state-changing requests with a session, the session's
/// CSRF token in the form. Pages without either redirect to the login page.
async fn require_admin(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let lang = req.extensions().get::<Lang>().copied().unwrap_or_default();
    let token = st.config.admin.api_token.expose();
    let mut credentials = Vec::new();
    for name in [header::COOKIE, header::AUTHORIZATION] {
        for v in req.headers().get_all(&name) {
            credentials.push((name.clone(), v.clone()));
        }
    }
    let admin = if let Some(b) = bearer(req.headers()) {
        if token.is_empty() || !constant_time_eq(b, token) {
            return error_page(&st, lang, StatusCode::UNAUTHORIZED, "error.unauthorized");
        }
        Admin {
            username: String::new(),
            csrf: String::new(),
            credentials,
        }
    } else if let Some((user, session)) = session_user(&st, req.headers()).await {
        Admin {
            username: user.username,
            csrf: session.csrf_token,
            credentials,
        }
    } else if req.method() == Method::GET || req.method() == Method::HEAD {
        let here = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/admin");
        let to = format!("/admin/login?next={}", format::query_escape(here));
        return Redirect::to(&to).into_response();
    } else {
        return Redirect::to("/admin/login").into_response();
    };
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let mut req = req;
    if !safe && !admin.csrf.is_empty() {
        let (parts, body) = req.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
            return error_page(&st, lang, StatusCode::PAYLOAD_TOO_LARGE, "error.too_large");
        };
        let sent = form_field(&bytes, "csrf");
        if !sent.is_some_and(|s| constant_time_eq(&s, &admin.csrf)) {
            tracing::warn!(path = %parts.uri.path(), "admin form rejected: missing or wrong CSRF token");
            return error_page(&st, lang, StatusCode::FORBIDDEN, "error.csrf");
        }
        req = Request::from_parts(parts, Body::from(bytes));
    }
    req.extensions_mut().insert(admin);
    next.run(req).await
}

/// One field of an `application/x-www-form-urlencoded` body.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    url::form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Choose the language (`?lang=` remembered in a cookie, else the cookie, else
/// `Accept-Language`) and add the UI's security headers.
async fn negotiate(mut req: Request, next: Next) -> Response {
    let from_query = req
        .uri()
        .query()
        .and_then(|q| form_field(q.as_bytes(), "lang"))
        .and_then(|l| Lang::parse(&l));
    let lang = from_query
        .or_else(|| cookie(req.headers(), crate::i18n::LANG_COOKIE).and_then(Lang::parse))
        .unwrap_or_else(|| {
            Lang::from_accept_language(
                req.headers()
                    .get(header::ACCEPT_LANGUAGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
            )
        });
    req.extensions_mut().insert(lang);
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    if let Some(l) = from_query {
        let c = format!(
            "{}={}; Path=/; Max-Age=31536000; SameSite=Lax",
            crate::i18n::LANG_COOKIE,
            l.code()
        );
        if let Ok(v) = HeaderValue::from_str(&c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// What every page template needs: language, the admin, the CSRF token for its forms, the
/// billing timezone, the page's own URL (for the language switch) and a notice or an error.
pub struct Ctx {
    pub tr: Tr,
    pub admin: Option<Admin>,
    pub tz: chrono_tz::Tz,
    /// The page's canonical URL (path and query), which the language links point at.
    pub here: String,
    /// Which navigation entry is current.
    pub section: &'static str,
    pub notice: Option<String>,
    pub error: Option<String>,
}

impl Ctx {
    pub fn t(&self, key: &str) -> &'static str {
        self.tr.t(key)
    }
    pub fn lang_code(&self) -> &'static str {
        self.tr.lang.code()
    }
    pub fn csrf(&self) -> &str {
        self.admin.as_ref().map_or("", |a| a.csrf.as_str())
    }
    pub fn username(&self) -> &str {
        self.admin.as_ref().map_or("", |a| a.username.as_str())
    }
    /// Signed in by a session (so a logout button makes sense).
    pub fn has_session(&self) -> bool {
        self.admin.as_ref().is_some_and(|a| !a.csrf.is_empty())
    }
    pub fn tz_name(&self) -> &'static str {
        self.tz.name()
    }
    /// This page in another language.
    pub fn lang_url(&self, code: &str) -> String {
        format::with_param(&self.here, "lang", code)
    }
    pub fn asset(&self, name: &str) -> String {
        assets::url(name)
    }
    pub fn set_error(&mut self, e: impl Into<String>) {
        self.error = Some(e.into());
    }
    /// Show the API's refusal on the page; returns the page's language and status.
    pub fn fail(&mut self, e: &ApiFailure) -> (Lang, StatusCode) {
        self.set_error(e.text(self.tr));
        (self.tr.lang, e.status())
    }
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Ctx, Self::Rejection> {
        let lang = parts.extensions.get::<Lang>().copied().unwrap_or_default();
        let tr = Tr::new(lang);
        let notice = parts
            .uri
            .query()
            .and_then(|q| form_field(q.as_bytes(), "notice"))
            .and_then(|n| notice_text(tr, &n));
        Ok(Ctx {
            tr,
            admin: parts.extensions.get::<Admin>().cloned(),
            tz: st.tz,
            here: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default(),
            section: "",
            notice: notice.map(str::to_string),
            error: None,
        })
    }
}

/// The message of a `?notice=` shown after a redirect; only these names are shown.
fn notice_text(tr: Tr, name: &str) -> Option<&'static str> {
    Some(match name {
        "logged_out" => tr.t("notice.logged_out"),
        "user_created" => tr.t("notice.user_created"),
        "user_updated" => tr.t("notice.user_updated"),
        "package_created" => tr.t("notice.package_created"),
        "package_updated" => tr.t("notice.package_updated"),
        "granted" => tr.t("notice.granted"),
        "grant_updated" => tr.t("notice.grant_updated"),
        "key_created" => tr.t("notice.key_created"),
        "key_updated" => tr.t("notice.key_updated"),
        "account_created" => tr.t("notice.account_created"),
        "account_updated" => tr.t("notice.account_updated"),
        "price_saved" => tr.t("notice.price_saved"),
        _ => return None,
    })
}

/// Render a page as `text/html; charset=utf-8` with `status`.
pub fn render<T: askama::Template>(status: StatusCode, page: &T) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template rendering failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

#[derive(askama::Template)]
#[template(path = "admin/error.html")]
struct ErrorPage {
    ctx: Ctx,
    status: u16,
    message: &'static str,
}

/// A page saying what went wrong (`message_key` from the catalogue).
pub fn error_page(st: &AppState, lang: Lang, status: StatusCode, message_key: &str) -> Response {
    let tr = Tr::new(lang);
    let ctx = Ctx {
        tr,
        admin: None,
        tz: st.tz,
        here: "/admin".into(),
        section: "",
        notice: None,
        error: None,
    };
    render(
        status,
        &ErrorPage {
            ctx,
            status: status.as_u16(),
            message: tr.t(message_key),
        },
    )
}

/// A failed page: a store error (500) or a missing object (404).
pub enum PageError {
    NotFound,
    Internal(String),
}

impl<E: std::fmt::Display> From<E> for PageError {
    fn from(e: E) -> Self {
        PageError::Internal(e.to_string())
    }
}

/// Turn a page result into a response, rendering errors in the request's language.
pub fn respond(st: &AppState, lang: Lang, r: Result<Response, PageError>) -> Response {
    match r {
        Ok(resp) => resp,
        Err(PageError::NotFound) => error_page(st, lang, StatusCode::NOT_FOUND, "error.not_found"),
        Err(PageError::Internal(e)) => {
            tracing::error!(error = %e, "admin page failed");
            error_page(
                st,
                lang,
                StatusCode::INTERNAL_SERVER_ERROR,
                "error.internal",
            )
        }
    }
}

/// `303 See Other` to `to` with a `?notice=`.
pub fn see_other(to: &str, notice: &str) -> Response {
    Redirect::to(&format::with_param(to, "notice", notice)).into_response()
}
