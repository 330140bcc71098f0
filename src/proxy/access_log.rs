//! The access log: one info line per proxied request, on target `tollgate::access` so an
//! operator can route or silence it alone (`log.access = false`, or a filter such as
//! `info,tollgate::access=off`). Written from the usage event, so it says what was billed.

use crate::billing::money::Usd;
use crate::state::AppState;
use crate::usage::UsageEvent;

pub fn line(st: &AppState, e: &UsageEvent, key_prefix: &str) {
    if !st.config.log.access {
        return;
    }
    tracing::info!(
        target: "tollgate::access",
        request_id = %e.request_id,
        key = %key_prefix,
        key_id = e.api_key_id,
        user_id = e.user_id,
        model = %e.model,
        endpoint = %e.endpoint,
        stream = e.stream,
        status = e.status,
        latency_ms = e.latency_ms,
        cost = %Usd(e.cost_nanos),
        billing = e.billing_status.as_str(),
        error = e.error.as_deref().unwrap_or(""),
    );
}
