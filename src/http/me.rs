//! What a key holder can read about themselves: `GET /v1/me`, and the legacy OpenAI billing
//! endpoints that chat front-ends read to show a balance.
//!
//! Legacy mapping (documented in the README): `hard_limit_usd` is the sum over the user's active
//! grants of each grant's binding limit (quota packages: `quota_total`; subscriptions: the
//! limit of their longest limited window, monthly → weekly → daily), and `total_usage` (in
//! cents, as OpenAI did) is the matching used amount, so `hard_limit_usd - total_usage / 100`
//! is what is left.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rust_decimal::prelude::ToPrimitive;
use serde_json::json;

use crate::billing::balance::{balances, with_reserved, PackageStatus};
use crate::billing::money::Usd;
use crate::proxy::authenticate;
use crate::proxy::error::Protocol;
use crate::state::AppState;
use crate::store::packages::UserPackage;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/me", get(me))
        .route("/v1/dashboard/billing/subscription", get(subscription))
        .route("/v1/dashboard/billing/usage", get(usage))
}

/// Every grant of the user, raw (for balances) and as of now (for display).
async fn grants(
    st: &AppState,
    user_id: i64,
) -> Result<(Vec<UserPackage>, Vec<PackageStatus>), Response> {
    let now = st.clock.now();
    let all = st
        .db
        .list_user_packages(user_id)
        .await
        .map_err(|e| crate::error::ApiError::internal(e).into_response())?;
    let status = with_reserved(&all, now, st.tz, &st.proxy.reservations).await;
    Ok((all, status))
}

async fn me(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let key = match authenticate(&st, &headers, Protocol::OpenAi).await {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let (user, api_key) = match (
        st.db.get_user(key.user_id).await,
        st.db.get_key(key.id).await,
    ) {
        (Ok(u), Ok(k)) => (u, k),
        (Err(e), _) | (_, Err(e)) => return crate::error::ApiError::internal(e).into_response(),
    };
    let (all, packages) = match grants(&st, key.user_id).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    Json(json!({
        "user": {"id": user.id, "username": user.username},
        // With its budgets as of now (SPEC §11.3).
        "key": crate::billing::key_budget::view(&api_key, st.clock.now(), st.tz),
        // `balances` counts only the grants active now.
        "balances": balances(&all, st.clock.now(), st.tz),
        "packages": packages,
    }))
    .into_response()
}

/// (limit, used) of the binding window of each active grant, summed.
fn binding(packages: &[PackageStatus]) -> (Usd, Usd) {
    let (mut limit, mut used) = (0i64, 0i64);
    for p in packages.iter().filter(|p| p.active) {
        if let Some(q) = &p.quota {
            limit += q.limit.0;
            used += q.used.0;
        } else if let Some(w) = p.windows.last() {
            limit += w.limit.0;
            used += w.used.0;
        }
    }
    (Usd(limit), Usd(used))
}

async fn subscription(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let key = match authenticate(&st, &headers, Protocol::OpenAi).await {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let (_, packages) = match grants(&st, key.user_id).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let (limit, _) = binding(&packages);
    let access_until = packages
        .iter()
        .filter(|p| p.active)
        .map(|p| p.expires_at.timestamp())
        .max()
        .unwrap_or(0);
    let usd = limit.to_decimal().to_f64().unwrap_or(0.0);
    Json(json!({
        "object": "billing_subscription",
        "has_payment_method": true,
        "soft_limit_usd": usd,
        "hard_limit_usd": usd,
        "system_hard_limit_usd": usd,
        "access_until": access_until,
    }))
    .into_response()
}

async fn usage(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let key = match authenticate(&st, &headers, Protocol::OpenAi).await {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let (_, packages) = match grants(&st, key.user_id).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let (_, used) = binding(&packages);
    let cents = (used.to_decimal() * rust_decimal::Decimal::from(100))
        .to_f64()
        .unwrap_or(0.0);
    Json(json!({"object": "list", "total_usage": cents})).into_response()
}
