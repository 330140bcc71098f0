//! Step 1, authenticate: the request's headers → the key's `KeyAuth`.

use std::net::IpAddr;

use axum::http::HeaderMap;

use super::error::{Failure, Protocol, ProxyError};
use crate::domain::{KeyStatus, UserStatus};
use crate::secrets::sha256_hex;
use crate::state::AppState;
use crate::store::keys::KeyAuth;

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

/// Authenticate a key: missing, unknown, revoked, expired or of a disabled user → 401; the
/// key cannot be looked up (database down, not cached) → 503.
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
            // Logged by the store, rate-limited during an outage.
            tracing::debug!(error = %e, "key lookup failed");
            ProxyError::new(
                protocol,
                Failure::Unavailable(
                    "the gateway cannot check API keys right now; try again".into(),
                ),
            )
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

/// A key with `allowed_ips` serves only clients inside them (SPEC §11.3); `client` is the
/// address from `crate::client_addr`. A request with no known address (built in process) is
/// refused by such a key rather than let through.
pub fn check_client_ip(
    key: &KeyAuth,
    client: Option<IpAddr>,
    protocol: Protocol,
) -> Result<(), ProxyError> {
    if key.allowed_ips.is_none() {
        return Ok(());
    }
    let entries = crate::store::column_to_list(&key.allowed_ips);
    if entries.is_empty() {
        return Ok(());
    }
    // Entries were checked when written; one that no longer parses allows nothing.
    let allowed = entries
        .iter()
        .filter_map(|e| crate::client_addr::parse_cidr(e).ok())
        .collect::<Vec<_>>();
    let list = crate::client_addr::CidrList(allowed);
    match client {
        Some(ip) if list.contains(ip) => Ok(()),
        Some(ip) => Err(ProxyError::new(
            protocol,
            Failure::IpNotAllowed(format!(
                "this API key may not be used from {ip}: the address is not in its allowed IPs"
            )),
        )),
        None => Err(ProxyError::new(
            protocol,
            Failure::IpNotAllowed(
                "this API key is limited to some addresses and the client's is unknown".into(),
            ),
        )),
    }
}
