//! Login, logout and login throttling.
//!
//! A session is a random 256-bit id in an HttpOnly, SameSite=Lax cookie (Secure behind https);
//! only its SHA-256 is stored, with its CSRF token and its idle and absolute expiry. The login
//! form carries a CSRF token of its own (double-submit: a cookie and a field that must match),
//! since there is no session yet. After 5 failed sign-ins within 15 minutes for one username
//! or from one address, sign-ins from it are refused with 429 until the oldest failure ages out
//! (kept in process, per instance).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};

use axum::extract::{ConnectInfo, Query, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::Deserialize;

use super::{format, render, Ctx, Runtime};
use crate::domain::{Role, UserStatus};
use crate::http::session::{cookie, cookie_attrs, session_cookie, session_user, SESSION_COOKIE};
use crate::secrets::{constant_time_eq, hash_password, random_base62, sha256_hex, verify_password};
use crate::state::AppState;
use crate::store::sessions::Session;

const LOGIN_CSRF_COOKIE: &str = "tollgate_login_csrf";
pub const MAX_FAILURES: usize = 5;
pub const FAILURE_WINDOW_MS: i64 = 15 * 60_000;
/// Random characters of a session id or CSRF token: 43 base62 characters ≈ 256 bits.
const TOKEN_CHARS: usize = 43;

/// Failed sign-ins per username and per client address, within the last 15 minutes.
#[derive(Default)]
pub struct Throttle {
    failures: Mutex<HashMap<String, VecDeque<i64>>>,
}

impl Throttle {
    /// When any of `keys` has had too many recent failures: milliseconds until it may retry.
    fn retry_after(&self, keys: &[String], now: i64) -> Option<i64> {
        let mut m = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        keys.iter()
            .filter_map(|k| {
                let q = m.get_mut(k)?;
                while q.front().is_some_and(|t| now - t >= FAILURE_WINDOW_MS) {
                    q.pop_front();
                }
                (q.len() >= MAX_FAILURES)
                    .then(|| q.front().map_or(0, |t| t + FAILURE_WINDOW_MS - now))
            })
            .max()
    }

    fn fail(&self, keys: &[String], now: i64) {
        let mut m = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        // Keep the map bounded: drop entries whose failures have all aged out.
        if m.len() > 10_000 {
            m.retain(|_, q| q.back().is_some_and(|t| now - t < FAILURE_WINDOW_MS));
        }
        for k in keys {
            let q = m.entry(k.clone()).or_default();
            q.push_back(now);
            while q.len() > MAX_FAILURES {
                q.pop_front();
            }
        }
    }

    fn clear(&self, key: &str) {
        let mut m = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(key);
    }
}

#[derive(askama::Template)]
#[template(path = "admin/login.html")]
struct LoginPage {
    ctx: Ctx,
    csrf: String,
    username: String,
    next: String,
}

#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// The login form, with a fresh login CSRF token in a cookie and a hidden field.
pub async fn login_page(
    State(st): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    if matches!(session_user(&st, &headers).await, Ok(Some(_))) {
        let to = format::safe_next(q.next.as_deref()).unwrap_or_else(|| "/admin".into());
        return Redirect::to(&to).into_response();
    }
    login_form(&st, ctx, StatusCode::OK, String::new(), q.next)
}

fn login_form(
    st: &AppState,
    mut ctx: Ctx,
    status: StatusCode,
    username: String,
    next: Option<String>,
) -> Response {
    let csrf = random_base62(TOKEN_CHARS);
    let next = format::safe_next(next.as_deref()).unwrap_or_default();
    ctx.here = format!("/admin/login{}", format::query(&[("next", next.clone())]));
    let mut resp = render(
        status,
        &LoginPage {
            ctx,
            csrf: csrf.clone(),
            username,
            next,
        },
    );
    let c = format!(
        "{LOGIN_CSRF_COOKIE}={csrf}; Path=/admin/login; Max-Age=3600{}",
        cookie_attrs(st)
    );
    if let Ok(v) = HeaderValue::from_str(&c) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
    next: Option<String>,
}

/// An argon2id hash to verify against when the username is unknown, so that both cases take
/// the same time.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| hash_password("no such user"));

pub async fn login(
    State(st): State<AppState>,
    Extension(rt): Extension<Arc<Runtime>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    mut ctx: Ctx,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or("");
    if expected.is_empty() || !constant_time_eq(expected, &f.csrf) {
        ctx.set_error(ctx.t("login.expired"));
        return login_form(&st, ctx, StatusCode::FORBIDDEN, f.username, f.next);
    }
    let now = st.now_ms();
    // Usernames are at most 64 characters; a longer one cannot exist, and must not grow the map.
    let name: String = f.username.trim().to_lowercase().chars().take(65).collect();
    let user_key = format!("user:{name}");
    let ip_key = format!(
        "ip:{}",
        connect.map_or_else(|| "unknown".to_string(), |c| c.0 .0.ip().to_string())
    );
    let keys = [user_key.clone(), ip_key];
    if let Some(ms) = rt.throttle.retry_after(&keys, now) {
        let minutes = (ms + 59_999) / 60_000;
        tracing::warn!(username = %f.username, "admin sign-in throttled");
        ctx.set_error(
            ctx.t("login.throttled")
                .replace("{minutes}", &minutes.max(1).to_string()),
        );
        let mut resp = login_form(&st, ctx, StatusCode::TOO_MANY_REQUESTS, f.username, f.next);
        if let Ok(v) = HeaderValue::from_str(&((ms + 999) / 1000).to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    let user = match st.db.find_user_by_username(f.username.trim()).await {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(error = %e, "sign-in lookup failed");
            return super::error_page(
                &st,
                ctx.tr.lang,
                StatusCode::INTERNAL_SERVER_ERROR,
                "error.internal",
            );
        }
    };
    let hash = user
        .as_ref()
        .and_then(|u| u.password_hash.clone())
        .unwrap_or_else(|| DUMMY_HASH.clone());
    let password = f.password.clone();
    let verified = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .unwrap_or(false);
    let user = user.filter(|u| {
        verified
            && u.password_hash.is_some()
            && u.role == Role::Admin
            && u.status == UserStatus::Active
    });
    let Some(user) = user else {
        rt.throttle.fail(&keys, now);
        tracing::warn!(username = %f.username, "admin sign-in failed");
        ctx.set_error(ctx.t("login.failed"));
        return login_form(&st, ctx, StatusCode::UNAUTHORIZED, f.username, f.next);
    };
    rt.throttle.clear(&user_key);
    let id = random_base62(TOKEN_CHARS);
    let max_ms = st.config.admin.session_max_hours as i64 * 3_600_000;
    let session = Session {
        id_hash: sha256_hex(&id),
        user_id: user.id,
        csrf_token: random_base62(TOKEN_CHARS),
        created_at: now,
        last_seen_at: now,
        expires_at: now + max_ms,
    };
    let idle_ms = st.config.admin.session_idle_minutes as i64 * 60_000;
    if let Err(e) = st.db.delete_stale_sessions(now, now - idle_ms).await {
        tracing::warn!(error = %e, "could not delete expired admin sessions");
    }
    if let Err(e) = st.db.create_session(&session).await {
        tracing::error!(error = %e, "could not create an admin session");
        return super::error_page(
            &st,
            ctx.tr.lang,
            StatusCode::INTERNAL_SERVER_ERROR,
            "error.internal",
        );
    }
    tracing::info!(username = %user.username, "admin signed in");
    let to = format::safe_next(f.next.as_deref()).unwrap_or_else(|| "/admin".into());
    let mut resp = Redirect::to(&to).into_response();
    let h = resp.headers_mut();
    let session_cookie = format!(
        "{SESSION_COOKIE}={id}; Path=/; Max-Age={}{}",
        max_ms / 1000,
        cookie_attrs(&st)
    );
    let clear_login = format!(
        "{LOGIN_CSRF_COOKIE}=; Path=/admin/login; Max-Age=0{}",
        cookie_attrs(&st)
    );
    for c in [session_cookie, clear_login] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    resp
}

/// End the session (the form's CSRF token was checked on the way in).
pub async fn logout(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        if let Err(e) = st.db.delete_session(&sha256_hex(id)).await {
            tracing::warn!(error = %e, "could not delete an admin session");
        }
    }
    let mut resp = super::see_other("/admin/login", "logged_out");
    let c = format!("{SESSION_COOKIE}=; Path=/; Max-Age=0{}", cookie_attrs(&st));
    if let Ok(v) = HeaderValue::from_str(&c) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}
