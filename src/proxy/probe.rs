//! Account probes (SPEC §11.2): `GET {base_url}/models` (OpenAI) or `GET {base_url}/v1/models`
//! (Anthropic) with the account's secret. Listing models costs no tokens upstream, and a probe
//! makes no ticket and no usage event, so it is never billed to anyone.
//!
//! The background loop probes the accounts that are cooling down (never one whose secret was
//! refused: that waits for an administrator) every `upstream.probe_interval_secs`; a success
//! brings the account back at once, a failure leaves its cooldown as it is and never marks it
//! `auth_failed`. An administrator's Test (`POST /api/admin/accounts/{id}/test`) sends one
//! probe now; its success clears all of the account's health, `auth_failed` included.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use serde::Serialize;

use super::client::SendError;
use super::forward::upstream_message;
use super::rewrite::upstream_headers;
use crate::domain::{AccountHealth, Provider};
use crate::state::{AppState, Inner};
use crate::store::accounts::Account;

/// Largest probe answer read (a models list); the rest is not needed.
const MAX_BODY: usize = 1 << 20;

/// One probe's outcome, as `POST /api/admin/accounts/{id}/test` answers it.
#[derive(Clone, Debug, Serialize)]
pub struct Probe {
    /// Upstream answered 2xx.
    pub ok: bool,
    /// Upstream's status, if it answered at all.
    pub status: Option<u16>,
    pub latency_ms: u64,
    /// Why it failed: upstream's message with its status, or the connect error or timeout.
    pub error: Option<String>,
}

/// The probe's URL: each provider's models list, beside the endpoints requests go to.
pub fn url(provider: Provider, base_url: &str) -> String {
    match provider {
        Provider::OpenAi => format!("{base_url}/models"),
        Provider::Anthropic => format!("{base_url}/v1/models"),
    }
}

/// Send one probe for `account` (its health is not changed here).
pub async fn probe(st: &AppState, account: &Account) -> Probe {
    use http_body_util::BodyExt;
    let within = Duration::from_secs(st.config.upstream.first_byte_timeout_secs);
    let url = url(account.provider, &account.base_url);
    let headers = upstream_headers(&HeaderMap::new(), account.provider, account.secret.expose());
    let started = Instant::now();
    let answer = tokio::time::timeout(within, async {
        let resp = st.proxy.http.get(&url, headers).await?;
        let status = resp.status();
        // Read to the end, so the connection goes back to the pool (or the message is known).
        let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok::<_, SendError>((status, body))
    })
    .await;
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let failed = |status: Option<u16>, error: String| Probe {
        ok: false,
        status,
        latency_ms,
        error: Some(error),
    };
    match answer {
        Err(_) => failed(
            None,
            format!("no response from upstream within {} s", within.as_secs()),
        ),
        Ok(Err(SendError::Connect(m) | SendError::ConnectTimeout(m))) => failed(None, m),
        Ok(Ok((status, _))) if status.is_success() => Probe {
            ok: true,
            status: Some(status.as_u16()),
            latency_ms,
            error: None,
        },
        Ok(Ok((status, body))) => failed(
            Some(status.as_u16()),
            format!("upstream answered {status}: {}", upstream_message(&body)),
        ),
    }
}

/// The administrator's Test: one probe now; a success clears all of the account's health.
pub async fn test(st: &AppState, account: &Account) -> Probe {
    let p = probe(st, account).await;
    st.metrics.count_probe(p.ok);
    if p.ok {
        st.proxy.health.reset(account.id);
    }
    p
}

/// The active accounts of every provider (from the proxy's cache).
async fn active(st: &AppState) -> crate::store::Result<Vec<Account>> {
    let mut all = Vec::new();
    for &provider in Provider::ALL {
        let accounts = st
            .proxy
            .accounts
            .get_or_load(&provider, || st.db.active_accounts(provider))
            .await?;
        all.extend(accounts.iter().cloned());
    }
    Ok(all)
}

/// How many active accounts are in each health state, in `AccountHealth::ALL`'s order (for
/// `/metrics`).
pub async fn health_counts(st: &AppState) -> crate::store::Result<[u64; AccountHealth::ALL.len()]> {
    let mut counts = [0; AccountHealth::ALL.len()];
    for a in active(st).await? {
        let label = st.proxy.health.label(a.id);
        if let Some(i) = AccountHealth::ALL.iter().position(|h| *h == label) {
            counts[i] += 1;
        }
    }
    Ok(counts)
}

/// Probe every active account that is cooling down (not `auth_failed`), all at once.
async fn probe_cooling(st: &AppState) {
    let ids = st.proxy.health.to_probe();
    if ids.is_empty() {
        return;
    }
    let accounts = match active(st).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list accounts to probe");
            return;
        }
    };
    let mut probes = tokio::task::JoinSet::new();
    for a in accounts.into_iter().filter(|a| ids.contains(&a.id)) {
        let st = st.clone();
        probes.spawn(async move {
            let p = probe(&st, &a).await;
            st.metrics.count_probe(p.ok);
            if p.ok {
                st.proxy.health.reset(a.id);
                tracing::info!(
                    account_id = a.id,
                    latency_ms = p.latency_ms,
                    "probe succeeded: account back in rotation"
                );
            } else {
                // The cooldown stands; a probe never marks the secret refused.
                tracing::debug!(account_id = a.id, error = ?p.error, "probe failed");
            }
        });
    }
    while probes.join_next().await.is_some() {}
}

/// Start the probe loop (unless `upstream.probe_interval_secs` is 0). It holds the state
/// weakly, so it ends once the gateway is dropped.
pub fn start(st: &AppState) {
    let every = st.config.upstream.probe_interval_secs;
    if every == 0 {
        return;
    }
    let state: Weak<Inner> = Arc::downgrade(&st.0);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(every));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(inner) = state.upgrade() else {
                return;
            };
            probe_cooling(&AppState(inner)).await;
        }
    });
}
