//! Login, logout and login throttling.
//!
//! A session is a random 256-bit id in an HttpOnly, SameSite=Lax cookie (Secure behind https);
//! only its SHA-256 is stored, with its CSRF token and its idle and absolute expiry. The login
//! form carries a CSRF token of its own (double-submit: a cookie and a field that must match),
//! since there is no session yet.
//!
//! Login throttling without lock-out (SPEC §11.7): failures are counted per client address
//! (`crate::client_addr`; an IPv6 client by its /64) and per (username, address), never per
//! username alone, so failures from elsewhere cannot lock the real admin out. The first
//! [`FREE_FAILURES`] failures of a key cost nothing; from then on each one makes that key wait
//! [`BASE_DELAY_MS`], doubling per failure up to [`MAX_DELAY_MS`]; a key refused meanwhile
//! gets 429 with `Retry-After`, without its password being checked. An attempt counts as a
//! failure from the moment it is let in (so parallel guesses cannot outrun the count) and is
//! forgiven if it succeeds. State is in process, per instance, at most [`MAX_ENTRIES`] keys.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock, Mutex};

use axum::extract::{Query, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::Deserialize;

use super::{format, render, Ctx, Runtime};
use crate::client_addr::ClientAddr;
use crate::domain::{Role, UserStatus};
use crate::http::session::{cookie, cookie_attrs, session_cookie, session_user, SESSION_COOKIE};
use crate::secrets::{constant_time_eq, hash_password, random_base62, sha256_hex, verify_password};
use crate::state::AppState;
use crate::store::sessions::Session;

const LOGIN_CSRF_COOKIE: &str = "tollgate_login_csrf";
/// Failures of one key before any delay.
pub const FREE_FAILURES: u32 = 3;
/// The delay after the first failure past the free ones; it doubles with each further one.
pub const BASE_DELAY_MS: i64 = 1_000;
pub const MAX_DELAY_MS: i64 = 15 * 60_000;
/// A key with no failure for this long (after its delay ended) starts afresh.
pub const FORGET_MS: i64 = 15 * 60_000;
/// Keys kept at most; past it the stalest are dropped.
pub const MAX_ENTRIES: usize = 10_000;
/// Random characters of a session id or CSRF token: 43 base62 characters ≈ 256 bits.
const TOKEN_CHARS: usize = 43;

#[derive(Clone, Copy, Default)]
struct Entry {
    failures: u32,
    last_failure: i64,
    blocked_until: i64,
}

impl Entry {
    fn stale(&self, now: i64) -> bool {
        now >= self.last_failure.max(self.blocked_until) + FORGET_MS
    }
}

/// How long a key waits after its `failures`-th failure.
pub fn delay_ms(failures: u32) -> i64 {
    if failures < FREE_FAILURES {
        return 0;
    }
    let doublings = (failures - FREE_FAILURES).min(20);
    (BASE_DELAY_MS << doublings).min(MAX_DELAY_MS)
}

/// Failed sign-ins per client address and per (username, address).
#[derive(Default)]
pub struct Throttle {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Throttle {
    /// Let an attempt in, counting it as a failure of every key until [`Throttle::forgive`];
    /// or, when a key is still waiting, the milliseconds until it may try again.
    pub fn begin(&self, keys: &[String], now: i64) -> Result<(), i64> {
        let mut m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let wait = keys
            .iter()
            .filter_map(|k| m.get(k))
            .filter(|e| !e.stale(now))
            .map(|e| e.blocked_until - now)
            .max()
            .unwrap_or(0);
        if wait > 0 {
            return Err(wait);
        }
        if m.len() + keys.len() > MAX_ENTRIES {
            prune(&mut m, now);
        }
        for k in keys {
            let e = m.entry(k.clone()).or_default();
            if e.stale(now) {
                *e = Entry::default();
            }
            e.failures = e.failures.saturating_add(1);
            e.last_failure = now;
            e.blocked_until = now + delay_ms(e.failures);
        }
        Ok(())
    }

    /// The attempt let in by `begin` succeeded (or could not be judged): it is not a failure.
    /// `clear` (the username and address pair) starts afresh.
    pub fn forgive(&self, keys: &[String], clear: Option<&str>) {
        let mut m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        for k in keys {
            if Some(k.as_str()) == clear {
                m.remove(k);
                continue;
            }
            if let Some(e) = m.get_mut(k) {
                e.failures = e.failures.saturating_sub(1);
                e.blocked_until = if e.failures < FREE_FAILURES {
                    0
                } else {
                    e.blocked_until.min(e.last_failure + delay_ms(e.failures))
                };
            }
        }
    }
}

/// Drop stale keys; if that is not enough, the half that failed longest ago.
fn prune(m: &mut HashMap<String, Entry>, now: i64) {
    m.retain(|_, e| !e.stale(now));
    if m.len() >= MAX_ENTRIES / 2 {
        let mut lasts: Vec<i64> = m.values().map(|e| e.last_failure).collect();
        lasts.sort_unstable();
        let cut = lasts[lasts.len() / 2];
        m.retain(|_, e| e.last_failure > cut);
    }
}

/// The throttle's name for an address: an IPv6 client by its /64 (one host usually holds a
/// whole /64), an IPv4 one by itself.
fn address_key(ip: Option<IpAddr>) -> String {
    match ip {
        Some(IpAddr::V6(v6)) => {
            let net = ipnet::Ipv6Net::new(v6, 64).map_or(v6, |n| n.network());
            format!("{net}/64")
        }
        Some(ip) => ip.to_string(),
        None => "unknown".into(),
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
    client: Option<Extension<ClientAddr>>,
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
    let address = address_key(client.map(|c| c.0 .0));
    let pair_key = format!("user:{name}|ip:{address}");
    let keys = [format!("ip:{address}"), pair_key.clone()];
    if let Err(ms) = rt.throttle.begin(&keys, now) {
        let seconds = (ms + 999) / 1000;
        tracing::warn!(username = %f.username, address = %address, retry_after = seconds, "admin sign-in throttled");
        ctx.set_error(
            ctx.t("login.throttled")
                .replace("{seconds}", &seconds.max(1).to_string()),
        );
        let mut resp = login_form(&st, ctx, StatusCode::TOO_MANY_REQUESTS, f.username, f.next);
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        return resp;
    }
    let user = match st.db.find_user_by_username(f.username.trim()).await {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(error = %e, "sign-in lookup failed");
            rt.throttle.forgive(&keys, None);
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
        // Counted already, by `begin`.
        tracing::warn!(username = %f.username, address = %address, "admin sign-in failed");
        ctx.set_error(ctx.t("login.failed"));
        return login_form(&st, ctx, StatusCode::UNAUTHORIZED, f.username, f.next);
    };
    rt.throttle.forgive(&keys, Some(&pair_key));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_after_the_free_failures_up_to_the_cap() {
        let d: Vec<i64> = (1..=8).map(delay_ms).collect();
        assert_eq!(d, [0, 0, 1000, 2000, 4000, 8000, 16_000, 32_000]);
        assert_eq!(delay_ms(40), MAX_DELAY_MS);
        assert_eq!(delay_ms(u32::MAX), MAX_DELAY_MS);
    }

    #[test]
    fn a_success_is_forgiven_and_the_map_stays_bounded() {
        let t = Throttle::default();
        let keys = ["ip:a".to_string(), "user:admin|ip:a".to_string()];
        for _ in 0..3 {
            assert_eq!(t.begin(&keys, 0), Ok(()));
        }
        assert_eq!(t.begin(&keys, 0), Err(1000), "the third failure costs 1 s");
        // Had the third attempt succeeded, it would not count: the address may go on.
        t.forgive(&keys, Some("user:admin|ip:a"));
        assert_eq!(t.begin(&keys, 0), Ok(()));
        // Stale after 15 minutes without a failure.
        assert_eq!(t.begin(&keys, 1000 + FORGET_MS), Ok(()));

        let t = Throttle::default();
        let n = MAX_ENTRIES * 3;
        for i in 0..n {
            assert_eq!(t.begin(&[format!("ip:{i}")], i as i64), Ok(()));
        }
        let kept = t.entries.lock().unwrap().len();
        println!("throttle entries kept after {n} addresses: {kept}");
        assert!(kept <= MAX_ENTRIES, "{kept}");
    }
}
