//! Admin authentication shared by the JSON API and the web UI: the admin token, the session
//! cookie and its CSRF token. Each side decides how to refuse (a JSON error, a login redirect).

use axum::http::header::{self, HeaderMap};

use crate::domain::{Role, UserStatus};
use crate::secrets::{constant_time_eq, sha256_hex};
use crate::state::AppState;
use crate::store::sessions::Session;
use crate::store::users::User;
use crate::store::StoreError;

pub const SESSION_COOKIE: &str = "tollgate_session";

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

/// The `Authorization: Bearer …` value, trimmed.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Whether `sent` is the configured admin token (never, when none is configured).
pub fn is_admin_token(st: &AppState, sent: &str) -> bool {
    let token = st.config.admin.api_token.expose();
    !token.is_empty() && constant_time_eq(sent, token)
}

/// Whether `sent` is the session's CSRF token.
pub fn csrf_matches(session: &Session, sent: Option<&str>) -> bool {
    sent.is_some_and(|t| constant_time_eq(t, &session.csrf_token))
}

/// The admin behind a valid session cookie: not expired (absolute or idle), user active
/// admin. `Ok(None)` for no such session; a store failure is an error, not "signed out".
pub async fn session_user(
    st: &AppState,
    headers: &HeaderMap,
) -> Result<Option<(User, Session)>, StoreError> {
    let Some(id) = session_cookie(headers) else {
        return Ok(None);
    };
    let hash = sha256_hex(id);
    let Some(s) = st.db.get_session(&hash).await? else {
        return Ok(None);
    };
    let now = st.now_ms();
    let idle_ms = st.config.admin.session_idle_minutes as i64 * 60_000;
    if now >= s.expires_at || now - s.last_seen_at > idle_ms {
        // Best effort: an expired session is refused whether or not its row goes now.
        if let Err(e) = st.db.delete_session(&hash).await {
            tracing::warn!(error = %e, "could not delete an expired admin session");
        }
        return Ok(None);
    }
    let user = match st.db.get_user(s.user_id).await {
        Ok(u) => u,
        Err(StoreError::NotFound) => return Ok(None),
        Err(e) => return Err(e),
    };
    if user.role != Role::Admin || user.status != UserStatus::Active {
        return Ok(None);
    }
    if now - s.last_seen_at > 60_000 {
        if let Err(e) = st.db.touch_session(&hash, now).await {
            tracing::warn!(error = %e, "could not record an admin session's activity");
        }
    }
    Ok(Some((user, s)))
}

/// `Set-Cookie` attributes shared by the UI's cookies: `Secure` when the public URL is https.
pub fn cookie_attrs(st: &AppState) -> &'static str {
    if st.config.server.public_url.starts_with("https") {
        "; HttpOnly; SameSite=Lax; Secure"
    } else {
        "; HttpOnly; SameSite=Lax"
    }
}
