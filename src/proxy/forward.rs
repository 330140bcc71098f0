//! Step 7, forward: send the request to the admitted accounts in order until one answers.
//!
//! Accounts are ordered by `upstream::order` (priority, then weighted random); at most
//! `upstream.max_attempts` are tried. An attempt fails on a connect error, on no response
//! head within `upstream.first_byte_timeout_secs`, or on a 429 or 5xx answer; its account's
//! health counts the failure (`upstream::Health`: a cooldown after
//! `upstream.failure_threshold` of them) and its error goes to `account_errors`. A 401 or 403
//! is passed on to the client and marks the account `auth_failed`.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};

use super::alias;
use super::client::{self, UpstreamResponse};
use super::rewrite::{upstream_headers, upstream_url};
use super::ticket::Ticket;
use super::upstream;
use crate::state::AppState;
use crate::store::accounts::Account;

/// What went wrong with one attempt.
pub enum AttemptError {
    Connect(String),
    Timeout(String),
    /// Upstream answered with an error status (kept to pass through if it is the last).
    Status(Box<UpstreamResponse>),
}

/// No attempt gave an answer to pass on: the last attempt's error and account, or None when
/// there was no account to try.
pub struct Exhausted(pub Option<(AttemptError, i64)>);

/// Try the accounts; the first answer (the ticket then names its account), or why none came.
pub async fn forward(
    st: &AppState,
    ticket: &mut Ticket,
    client_hdrs: &HeaderMap,
    body: &Bytes,
    accounts: Vec<&Account>,
) -> Result<UpstreamResponse, Exhausted> {
    let cfg = &st.config.upstream;
    let ordered = upstream::order(accounts, &mut rand::thread_rng());
    let attempts = ordered.len().min(cfg.max_attempts as usize);
    let first_byte = Duration::from_secs(cfg.first_byte_timeout_secs);
    let backoff = upstream::Backoff::from(cfg);
    let mut last: Option<(AttemptError, i64)> = None;

    for (n, account) in ordered.into_iter().take(attempts).enumerate() {
        let url = upstream_url(ticket.endpoint, &account.base_url, ticket.query.as_deref());
        let headers = upstream_headers(client_hdrs, account.provider, account.secret.expose());
        // An alias: this account's upstream gets its own name for the model.
        let body = match account.upstream_model(ticket.model()) {
            Some(up) => alias::rename_model(body, up, 1).map_or_else(|| body.clone(), Bytes::from),
            None => body.clone(),
        };
        let req = st.proxy.http.post(&url, headers, body);
        let sent_at = Instant::now();
        let outcome = match tokio::time::timeout(first_byte, req).await {
            Err(_) => Err(AttemptError::Timeout(format!(
                "no response from upstream within {} s",
                cfg.first_byte_timeout_secs
            ))),
            Ok(Err(client::SendError::ConnectTimeout(m))) => Err(AttemptError::Timeout(m)),
            Ok(Err(client::SendError::Connect(m))) => Err(AttemptError::Connect(m)),
            Ok(Ok(r))
                if r.status() == StatusCode::TOO_MANY_REQUESTS || r.status().is_server_error() =>
            {
                Err(AttemptError::Status(Box::new(r)))
            }
            Ok(Ok(r)) => Ok(r),
        };
        match outcome {
            Ok(resp)
                if matches!(
                    resp.status(),
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
                ) =>
            {
                st.metrics.upstream_latency.observe(sent_at.elapsed());
                let (resp, message) = refusal(resp, first_byte).await;
                let what = format!(
                    "upstream refused the account's secret ({}): {message}",
                    resp.status()
                );
                tracing::warn!(
                    request_id = %ticket.request_id,
                    account_id = account.id,
                    error = %what,
                    "upstream account marked auth_failed"
                );
                st.proxy.health.refused(account.id);
                st.proxy
                    .account_errors
                    .report(account.id, what, st.now_ms());
                ticket.account_id = Some(account.id);
                return Ok(resp);
            }
            Ok(resp) => {
                st.metrics.upstream_latency.observe(sent_at.elapsed());
                st.proxy.health.reset(account.id);
                ticket.account_id = Some(account.id);
                return Ok(resp);
            }
            Err(e) => {
                let what = match &e {
                    AttemptError::Connect(m) | AttemptError::Timeout(m) => m.clone(),
                    AttemptError::Status(r) => format!("upstream answered {}", r.status()),
                };
                tracing::warn!(
                    request_id = %ticket.request_id,
                    account_id = account.id,
                    attempt = n + 1,
                    error = %what,
                    "upstream attempt failed"
                );
                st.metrics.upstream_attempt_failures.increment(1);
                st.proxy.health.failed(account.id, &backoff);
                st.proxy
                    .account_errors
                    .report(account.id, what, st.now_ms());
                last = Some((e, account.id));
            }
        }
    }
    Err(Exhausted(last))
}

/// Largest refusal body read for its message.
const REFUSAL_MAX_BYTES: usize = 64 * 1024;

/// Read a 401/403 body for the upstream's message (`error.message` in both providers'
/// shapes, else the text), and the response again with that body to pass on. A body that
/// cannot be read in time or is too large is passed on empty.
async fn refusal(resp: UpstreamResponse, within: Duration) -> (UpstreamResponse, String) {
    use http_body_util::BodyExt;
    let (mut parts, body) = resp.into_parts();
    let read = tokio::time::timeout(
        within,
        http_body_util::Limited::new(body, REFUSAL_MAX_BYTES).collect(),
    )
    .await;
    let bytes = match read {
        Ok(Ok(b)) => b.to_bytes(),
        _ => {
            parts.headers.remove(axum::http::header::CONTENT_LENGTH);
            Bytes::new()
        }
    };
    let message = upstream_message(&bytes);
    let resp = UpstreamResponse::from_parts(parts, client::UpstreamBody::read(bytes));
    (resp, message)
}

/// The upstream's message in an error body: `error.message` in both providers' shapes, else
/// the start of the text.
pub(super) fn upstream_message(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(bytes).chars().take(500).collect())
}
