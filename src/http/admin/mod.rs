//! The admin web UI: server-rendered pages (askama), their sessions, CSRF and login throttling.
//!
//! Layers of the page routes, outermost first: language negotiation (`?lang=` → cookie →
//! `Accept-Language`) and security headers → for everything but the login page and static
//! files, [`require_admin`]: a session (or the admin token), and on state-changing requests the
//! session's CSRF token in the form's `csrf` field. A request failing either never reaches
//! its handler, so it changes nothing.
//!
//! Reads go straight to the store and the billing rules (`balances`, `package_status`); every
//! write is an operation of the admin service (`crate::admin`), as in the JSON API, so both
//! share one set of validation rules and side effects. Its refusals are shown in the page's
//! language, by problem code.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::{self, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};

use crate::admin::AdminError;
use crate::http::session;
use crate::i18n::{Lang, Tr};
use crate::secrets::constant_time_eq;
use crate::state::AppState;

mod accounts;
mod assets;
mod auth;
mod dashboard;
mod format;
mod keys;
mod logs;
mod models;
mod packages;
mod usage;
mod users;
mod view;

/// The largest form body the CSRF check reads.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// Per-router state of the UI: login throttling.
pub struct Runtime {
    throttle: auth::Throttle,
}

pub fn router(state: AppState) -> Router<AppState> {
    let runtime = Arc::new(Runtime {
        throttle: auth::Throttle::default(),
    });
    let pages = Router::new()
        .route("/admin", get(dashboard::page))
        .route("/admin/logout", post(auth::logout))
        .route("/admin/users", get(users::list).post(users::create))
        .route("/admin/users/{id}", get(users::detail))
        .route("/admin/users/{id}/status", post(users::set_status))
        .route(
            "/admin/users/{id}/concurrency",
            post(users::set_concurrency),
        )
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
        .route("/admin/keys/{id}/budget", post(keys::set_budget))
        .route(
            "/admin/accounts",
            get(accounts::list).post(accounts::create),
        )
        .route(
            "/admin/accounts/{id}",
            get(accounts::edit).post(accounts::update),
        )
        .route("/admin/accounts/{id}/status", post(accounts::set_status))
        .route("/admin/accounts/{id}/test", post(accounts::test))
        .route("/admin/models", get(models::list).post(models::save))
        .route("/admin/usage", get(usage::daily))
        .route("/admin/logs", get(logs::list))
        .route("/admin/logs/{id}", get(logs::detail))
        .route_layer(middleware::from_fn_with_state(state, require_admin));
    Router::new()
        .merge(pages)
        .route("/admin/", get(|| async { Redirect::permanent("/admin") }))
        .route("/admin/login", get(auth::login_page).post(auth::login))
        .route("/static/{*path}", get(assets::serve))
        .layer(middleware::from_fn(negotiate))
        .layer(Extension(runtime))
}

/// Who is using the UI on this request.
#[derive(Clone)]
pub struct Admin {
    /// The admin's username; empty when authenticated by the admin token.
    pub username: String,
    /// The session's CSRF token; empty when authenticated by the admin token.
    pub csrf: String,
}

/// A session or the admin token; on state-changing requests with a session, the session's
/// CSRF token in the form. Pages without either redirect to the login page.
async fn require_admin(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let lang = req.extensions().get::<Lang>().copied().unwrap_or_default();
    let admin = if let Some(b) = session::bearer(req.headers()) {
        if !session::is_admin_token(&st, b) {
            return error_page(&st, lang, StatusCode::UNAUTHORIZED, "error.unauthorized");
        }
        Admin {
            username: String::new(),
            csrf: String::new(),
        }
    } else {
        match session::session_user(&st, req.headers()).await {
            Ok(Some((user, session))) => Admin {
                username: user.username,
                csrf: session.csrf_token,
            },
            Ok(None) if req.method() == Method::GET || req.method() == Method::HEAD => {
                let here = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/admin");
                let to = format!("/admin/login?next={}", format::query_escape(here));
                return Redirect::to(&to).into_response();
            }
            Ok(None) => return Redirect::to("/admin/login").into_response(),
            Err(e) => {
                tracing::error!(error = %e, "could not read an admin session");
                return error_page(
                    &st,
                    lang,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "error.internal",
                );
            }
        }
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
        .or_else(|| session::cookie(req.headers(), crate::i18n::LANG_COOKIE).and_then(Lang::parse))
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
    /// Show an admin operation's refusal on the page; returns the page's language and status.
    pub fn fail(&mut self, e: &AdminError) -> (Lang, StatusCode) {
        let (text, status) = refusal(self.tr, e);
        self.set_error(text);
        (self.tr.lang, status)
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

/// An admin operation's refusal in the page's language, and the status of the page showing it:
/// the field's label then its problem (400), nothing there (404), a name taken (409), or a
/// server failure (500, logged).
pub fn refusal(tr: Tr, e: &AdminError) -> (String, StatusCode) {
    match e {
        AdminError::Invalid { field, problem } => (
            format!(
                "{}{}{}",
                tr.field(field),
                tr.t("form.separator"),
                problem.text(tr)
            ),
            StatusCode::BAD_REQUEST,
        ),
        AdminError::NotFound(_) => (tr.t("error.not_found").into(), StatusCode::NOT_FOUND),
        AdminError::Conflict(_) => (tr.t("error.conflict").into(), StatusCode::CONFLICT),
        AdminError::Store(err) => {
            tracing::error!(error = %err, "admin write failed");
            (
                tr.t("error.internal").into(),
                StatusCode::INTERNAL_SERVER_ERROR,
            )
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{Problem, Taken};
    use crate::store::StoreError;

    #[test]
    fn refusals_are_shown_in_the_page_language_by_code() {
        let (en, zh) = (Tr::new(Lang::En), Tr::new(Lang::ZhCn));
        let mut failures = Vec::new();
        let cases: Vec<(&str, AdminError, Tr, &str, StatusCode)> = vec![
            (
                "quota_needs_total_en",
                AdminError::invalid("quota_total", Problem::QuotaNeedsTotal),
                en,
                "Total quota: is required for a `quota` package",
                StatusCode::BAD_REQUEST,
            ),
            (
                "quota_needs_total_zh",
                AdminError::invalid("quota_total", Problem::QuotaNeedsTotal),
                zh,
                "总额度：额度套餐必须填写",
                StatusCode::BAD_REQUEST,
            ),
            (
                "length_zh",
                AdminError::invalid("username", Problem::Length { min: 1, max: 64 }),
                zh,
                "用户名：长度须为 1 到 64 个字符",
                StatusCode::BAD_REQUEST,
            ),
            (
                "not_a_url_en",
                AdminError::invalid("base_url", Problem::NotAUrl),
                en,
                "Base URL: must be an http(s) URL such as https://api.openai.com/v1",
                StatusCode::BAD_REQUEST,
            ),
            (
                "taken_en",
                AdminError::Conflict(Taken::Username("heidi".into())),
                en,
                "That name is already taken. Choose another.",
                StatusCode::CONFLICT,
            ),
            (
                "not_found_zh",
                AdminError::NotFound("key"),
                zh,
                zh.t("error.not_found"),
                StatusCode::NOT_FOUND,
            ),
            (
                "store_en",
                AdminError::Store(StoreError::Config("down".into())),
                en,
                en.t("error.internal"),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ];
        for (name, e, tr, text, status) in cases {
            let got = refusal(tr, &e);
            if got != (text.to_string(), status) {
                failures.push(format!("{name}: {got:?}"));
            }
        }
        assert!(failures.is_empty(), "failing cases: {failures:?}");
    }
}
