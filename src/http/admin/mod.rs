//! The admin web UI (server-rendered pages) and its sessions.

use axum::http::HeaderMap;
use axum::Router;

use crate::secrets::sha256_hex;
use crate::state::AppState;
use crate::store::users::User;

pub const SESSION_COOKIE: &str = "tollgate_session";

pub fn router(_state: AppState) -> Router<AppState> {
    Router::new()
}

/// The session id from the request's cookies.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
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
    if user.role != "admin" || user.status != "active" {
        return None;
    }
    if now - s.last_seen_at > 60_000 {
        let _ = st.db.touch_session(&hash, now).await;
    }
    Some((user, s))
}
