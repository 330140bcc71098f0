//! The usage event: what one proxied request cost, produced by the proxy and applied to every
//! sink by the recorder.

use serde::{Deserialize, Serialize};

use crate::billing::cost::Tokens;
pub use crate::domain::BillingStatus;

/// Window starts (Unix ms) of the charged package at the time of the request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowStarts {
    pub daily: i64,
    pub weekly: i64,
    pub monthly: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// Idempotency key: an event is applied once, however often it is delivered.
    pub request_id: String,
    pub created_at_ms: i64,
    /// The day (YYYY-MM-DD) in the billing timezone this event is summarised under.
    pub day: String,
    pub user_id: i64,
    pub api_key_id: i64,
    /// None when nothing reached upstream.
    pub account_id: Option<i64>,
    pub user_package_id: Option<i64>,
    pub windows: Option<WindowStarts>,
    pub model: String,
    pub endpoint: String,
    pub stream: bool,
    pub status: u16,
    pub tokens: Tokens,
    pub cost_nanos: i64,
    pub billing_status: BillingStatus,
    pub latency_ms: i64,
    pub ttfb_ms: Option<i64>,
    pub error: Option<String>,
    /// What this event holds reserved against its package in this process until it is
    /// settled (never persisted: a replayed event reserves nothing).
    #[serde(skip)]
    pub reserved: i64,
    /// The key's budget window starts at the time of the request (`billing::key_budget`).
    /// None in journal lines written before key budgets: then only the key's lifetime total
    /// is charged.
    #[serde(default)]
    pub key_windows: Option<WindowStarts>,
    /// What this event holds against its key's budget in this process until it is settled (0
    /// for a key without a budget; never persisted, as `reserved`).
    #[serde(skip)]
    pub key_reserved: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A journal line written before key budgets (no `key_windows`) still parses, and charges
    /// no key window.
    #[test]
    fn journal_lines_without_key_windows_still_parse() {
        let e = UsageEvent {
            request_id: "r".into(),
            created_at_ms: 1,
            day: "2026-01-01".into(),
            user_id: 1,
            api_key_id: 2,
            account_id: Some(3),
            user_package_id: Some(4),
            windows: Some(WindowStarts::default()),
            model: "m".into(),
            endpoint: "/v1/chat/completions".into(),
            stream: false,
            status: 200,
            tokens: Tokens::default(),
            cost_nanos: 5,
            billing_status: BillingStatus::Complete,
            latency_ms: 1,
            ttfb_ms: None,
            error: None,
            reserved: 0,
            key_windows: Some(WindowStarts {
                daily: 7,
                weekly: 8,
                monthly: 9,
            }),
            key_reserved: 5,
        };
        let mut v = serde_json::to_value(&e).unwrap();
        let back: UsageEvent = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(back.key_windows, e.key_windows);
        assert_eq!(back.key_reserved, 0, "holds are never persisted");
        v.as_object_mut().unwrap().remove("key_windows");
        let old: UsageEvent = serde_json::from_value(v).unwrap();
        assert_eq!(old.key_windows, None);
        assert_eq!(old.cost_nanos, 5);
    }
}
