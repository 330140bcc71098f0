//! Refusals made visible (SPEC §11.4): a request refused at admission for a known key becomes
//! a `request_logs` row (`billing_status` `refused`, cost 0, `error` = the code) through the
//! recorder, off the hot path; every refusal, bad keys included, counts in
//! `tollgate_refused_total{code}`. A key hammering one limit writes at most one row per key,
//! code and second: the repeats within that second are only counted in `/metrics`.

use foldhash::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::error::ProxyError;
use super::Endpoint;
use crate::billing::cost::Tokens;
use crate::billing::windows::day_string;
use crate::state::AppState;
use crate::store::keys::KeyAuth;
use crate::usage::{BillingStatus, UsageEvent};

/// Past this many (key, code) entries, those of earlier seconds are dropped.
const PRUNE_AT: usize = 10_000;

/// The second of the last row written per (key, code).
#[derive(Default)]
pub struct Refusals {
    last: Mutex<HashMap<(i64, &'static str), i64>>,
}

impl Refusals {
    /// True when (key, code) has no row yet in second `sec`; marks it as having one.
    fn first_in_second(&self, key: i64, code: &'static str, sec: i64) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.len() >= PRUNE_AT {
            last.retain(|_, s| *s >= sec);
        }
        last.insert((key, code), sec) != Some(sec)
    }
}

/// A refusal for a key that is not known (or could not be checked): counted only.
pub fn count(st: &AppState, e: &ProxyError) {
    st.metrics.count_refused(e.code());
}

/// A refusal for a known key: counted, and logged unless this key already has a row for this
/// code in this second. `model` is empty when the body could not be read.
pub fn record(
    st: &AppState,
    key: &KeyAuth,
    endpoint: Endpoint,
    model: &str,
    e: &ProxyError,
    started: Instant,
) {
    let code = e.code();
    st.metrics.count_refused(code);
    let now = st.clock.now();
    let ms = now.timestamp_millis();
    if !st
        .proxy
        .refusals
        .first_in_second(key.id, code, ms.div_euclid(1000))
    {
        return;
    }
    // The row is in the journal before long; the refusal does not wait for it.
    let event = UsageEvent {
        request_id: uuid::Uuid::now_v7().to_string(),
        created_at_ms: ms,
        day: day_string(now, st.tz),
        user_id: key.user_id,
        api_key_id: key.id,
        account_id: None,
        user_package_id: None,
        windows: None,
        model: model.to_string(),
        endpoint: endpoint.path().to_string(),
        stream: false,
        status: e.status().as_u16(),
        tokens: Tokens::default(),
        cost_nanos: 0,
        billing_status: BillingStatus::Refused,
        latency_ms: started.elapsed().as_millis() as i64,
        ttfb_ms: None,
        error: Some(code.to_string()),
        reserved: 0,
        key_windows: None,
        key_reserved: 0,
    };
    super::access_log::line(st, &event, &key.key_prefix);
    drop(st.recorder.record(event));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_per_key_code_and_second() {
        let r = Refusals::default();
        assert!(r.first_in_second(1, "rate_limit_exceeded", 100));
        for _ in 0..50 {
            assert!(!r.first_in_second(1, "rate_limit_exceeded", 100));
        }
        assert!(r.first_in_second(1, "insufficient_quota", 100));
        assert!(r.first_in_second(2, "rate_limit_exceeded", 100));
        assert!(r.first_in_second(1, "rate_limit_exceeded", 101));
    }
}
