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

impl UsageEvent {
    /// Appends the event as one JSON object, byte for byte what `serde_json::to_writer` writes
    /// (a test compares the two over random events, so a field added to the struct and not
    /// here fails it). Written by hand because the journal writes one per answer and serde's
    /// generic path was ~5 % of the instructions of a request. Read back with serde.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        fn int(out: &mut Vec<u8>, n: impl itoa::Integer) {
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        }
        fn string(out: &mut Vec<u8>, s: &str) {
            // Writing into a Vec cannot fail; serde_json's escaping is kept as it is.
            let _ = serde_json::to_writer(&mut *out, s);
        }
        fn opt_int(out: &mut Vec<u8>, n: Option<i64>) {
            match n {
                Some(n) => int(out, n),
                None => out.extend_from_slice(b"null"),
            }
        }
        fn windows(out: &mut Vec<u8>, w: Option<WindowStarts>) {
            match w {
                Some(w) => {
                    out.extend_from_slice(b"{\"daily\":");
                    int(out, w.daily);
                    out.extend_from_slice(b",\"weekly\":");
                    int(out, w.weekly);
                    out.extend_from_slice(b",\"monthly\":");
                    int(out, w.monthly);
                    out.push(b'}');
                }
                None => out.extend_from_slice(b"null"),
            }
        }
        out.extend_from_slice(b"{\"request_id\":");
        string(out, &self.request_id);
        out.extend_from_slice(b",\"created_at_ms\":");
        int(out, self.created_at_ms);
        out.extend_from_slice(b",\"day\":");
        string(out, &self.day);
        out.extend_from_slice(b",\"user_id\":");
        int(out, self.user_id);
        out.extend_from_slice(b",\"api_key_id\":");
        int(out, self.api_key_id);
        out.extend_from_slice(b",\"account_id\":");
        opt_int(out, self.account_id);
        out.extend_from_slice(b",\"user_package_id\":");
        opt_int(out, self.user_package_id);
        out.extend_from_slice(b",\"windows\":");
        windows(out, self.windows);
        out.extend_from_slice(b",\"model\":");
        string(out, &self.model);
        out.extend_from_slice(b",\"endpoint\":");
        string(out, &self.endpoint);
        out.extend_from_slice(if self.stream {
            b",\"stream\":true,\"status\":"
        } else {
            b",\"stream\":false,\"status\":"
        });
        int(out, self.status);
        let t = &self.tokens;
        out.extend_from_slice(b",\"tokens\":{\"input\":");
        int(out, t.input);
        out.extend_from_slice(b",\"output\":");
        int(out, t.output);
        out.extend_from_slice(b",\"cache_read\":");
        int(out, t.cache_read);
        out.extend_from_slice(b",\"cache_write\":");
        int(out, t.cache_write);
        out.extend_from_slice(b"},\"cost_nanos\":");
        int(out, self.cost_nanos);
        out.extend_from_slice(b",\"billing_status\":");
        string(out, self.billing_status.as_str());
        out.extend_from_slice(b",\"latency_ms\":");
        int(out, self.latency_ms);
        out.extend_from_slice(b",\"ttfb_ms\":");
        opt_int(out, self.ttfb_ms);
        out.extend_from_slice(b",\"error\":");
        match &self.error {
            Some(e) => string(out, e),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"key_windows\":");
        windows(out, self.key_windows);
        out.push(b'}');
    }
}

/// The settlement's bound on one token class of one event. The proxy already disputes counts
/// above `upstream.max_tokens_per_request`; this fixed backstop (far above any model) is for
/// events that reach the recorder anyway (a corrupted journal line, a bug): nothing near i64
/// ever reaches SQL, where it would turn SQLite counters into floats or fail MySQL's batch.
pub const SETTLE_MAX_TOKENS: i64 = 1_000_000_000_000;
/// The settlement's bound on one event's cost: one million USD, in nano-dollars.
pub const SETTLE_MAX_COST_NANOS: i64 = 1_000_000 * 1_000_000_000;

/// Why an event cannot be settled as it is: a negative or implausible count or cost.
pub fn implausible(e: &UsageEvent) -> Option<String> {
    let t = &e.tokens;
    for (name, n) in [
        ("input_tokens", t.input),
        ("output_tokens", t.output),
        ("cache_read_tokens", t.cache_read),
        ("cache_write_tokens", t.cache_write),
    ] {
        if !(0..=SETTLE_MAX_TOKENS).contains(&n) {
            return Some(format!("{name} {n} outside 0..={SETTLE_MAX_TOKENS}"));
        }
    }
    if !(0..=SETTLE_MAX_COST_NANOS).contains(&e.cost_nanos) {
        return Some(format!(
            "cost {} nano-USD outside 0..={SETTLE_MAX_COST_NANOS}",
            e.cost_nanos
        ));
    }
    None
}

/// An event corrected by [`vet_batch`]: its index in the batch, the event as it is settled,
/// and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Correction {
    pub index: usize,
    pub event: UsageEvent,
    pub reason: String,
}

/// The settlement's re-check of a batch (pure). An event with an implausible count or cost, or
/// one whose amounts would take the batch's running sum past i64, is settled `disputed` with
/// no tokens, at its reservation (the estimate held for it) when that is plausible and fits,
/// else at 0; a refusal stays a refusal. Every other event is left alone, so one bad event
/// never holds up the rest. Amounts are non-negative once vetted, so every per-sink sum (key,
/// account, day, package window) is at most the batch's sum, which is checked here.
pub fn vet_batch<'a>(events: impl IntoIterator<Item = &'a UsageEvent>) -> Vec<Correction> {
    let mut sums = [0i64; 5];
    let mut out = Vec::new();
    let fits = |sums: &[i64; 5], amounts: [i64; 5]| -> Option<[i64; 5]> {
        let mut next = *sums;
        for (s, a) in next.iter_mut().zip(amounts) {
            *s = s.checked_add(a)?;
        }
        Some(next)
    };
    for (index, e) in events.into_iter().enumerate() {
        let t = &e.tokens;
        let amounts = [t.input, t.output, t.cache_read, t.cache_write, e.cost_nanos];
        let reason = match implausible(e) {
            Some(r) => r,
            None => match fits(&sums, amounts) {
                Some(next) => {
                    sums = next;
                    continue;
                }
                None => "the batch's sum would overflow".to_string(),
            },
        };
        let mut fixed = e.clone();
        fixed.tokens = Tokens::default();
        fixed.cost_nanos = 0;
        if fixed.billing_status != BillingStatus::Refused {
            fixed.billing_status = BillingStatus::Disputed;
            if (0..=SETTLE_MAX_COST_NANOS).contains(&e.reserved) {
                if let Some(next) = fits(&sums, [0, 0, 0, 0, e.reserved]) {
                    sums = next;
                    fixed.cost_nanos = e.reserved;
                }
            }
        }
        let note = format!("settlement: {reason}");
        fixed.error = Some(match &e.error {
            Some(err) => format!("{err}; {note}"),
            None => note,
        });
        out.push(Correction {
            index,
            event: fixed,
            reason,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_windows() -> impl Strategy<Value = Option<WindowStarts>> {
        proptest::option::of((any::<i64>(), any::<i64>(), any::<i64>()).prop_map(
            |(daily, weekly, monthly)| WindowStarts {
                daily,
                weekly,
                monthly,
            },
        ))
    }

    fn arb_event() -> impl Strategy<Value = UsageEvent> {
        // Any text, control characters, quotes and backslashes included.
        let text = || any::<String>();
        let status = proptest::sample::select(BillingStatus::ALL);
        (
            (text(), any::<i64>(), text(), any::<i64>(), any::<i64>()),
            (
                any::<Option<i64>>(),
                any::<Option<i64>>(),
                arb_windows(),
                text(),
                text(),
            ),
            (
                any::<bool>(),
                any::<u16>(),
                any::<[i64; 4]>(),
                any::<i64>(),
                status,
            ),
            (
                any::<i64>(),
                any::<Option<i64>>(),
                proptest::option::of(text()),
                arb_windows(),
            ),
            (any::<i64>(), any::<i64>()),
        )
            .prop_map(|(a, b, c, d, e)| UsageEvent {
                request_id: a.0,
                created_at_ms: a.1,
                day: a.2,
                user_id: a.3,
                api_key_id: a.4,
                account_id: b.0,
                user_package_id: b.1,
                windows: b.2,
                model: b.3,
                endpoint: b.4,
                stream: c.0,
                status: c.1,
                tokens: Tokens {
                    input: c.2[0],
                    output: c.2[1],
                    cache_read: c.2[2],
                    cache_write: c.2[3],
                },
                cost_nanos: c.3,
                billing_status: c.4,
                latency_ms: d.0,
                ttfb_ms: d.1,
                error: d.2,
                key_windows: d.3,
                reserved: e.0,
                key_reserved: e.1,
            })
    }

    proptest! {
        /// The journal's hand-written line is serde's, byte for byte, and reads back whole
        /// (less what is never persisted).
        #[test]
        fn journal_json_is_serdes(e in arb_event()) {
            let mut ours = Vec::new();
            e.write_json(&mut ours);
            let serde = serde_json::to_vec(&e).unwrap();
            prop_assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&serde));
            let back: UsageEvent = serde_json::from_slice(&ours).unwrap();
            prop_assert_eq!(back, UsageEvent { reserved: 0, key_reserved: 0, ..e });
        }
    }

    fn ev(id: &str, tokens: i64, cost: i64) -> UsageEvent {
        UsageEvent {
            request_id: id.into(),
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
            tokens: Tokens {
                input: tokens,
                output: tokens,
                cache_read: 0,
                cache_write: 0,
            },
            cost_nanos: cost,
            billing_status: BillingStatus::Complete,
            latency_ms: 1,
            ttfb_ms: None,
            error: None,
            reserved: 0,
            key_windows: None,
            key_reserved: 0,
        }
    }

    /// Negative and implausible amounts are settled disputed at the reservation (or 0), with
    /// no tokens and the reason in `error`; plausible neighbours are untouched.
    #[test]
    fn settlement_disputes_implausible_events_only() {
        let mut huge = ev("huge", i64::MAX, i64::MAX);
        huge.reserved = 1_234;
        let mut refund = ev("refund", 5, -11_250_000_000);
        refund.reserved = i64::MAX; // an implausible reservation is not charged either
        let mut refused = ev("refused", -1, 0);
        refused.billing_status = BillingStatus::Refused;
        let ok = ev("ok", 5, 7);
        let edge = ev("edge", SETTLE_MAX_TOKENS, SETTLE_MAX_COST_NANOS);
        let batch = [ok.clone(), huge, refund, refused, edge];
        let c = vet_batch(&batch);
        let got: Vec<(usize, i64, BillingStatus, Tokens)> = c
            .iter()
            .map(|c| {
                (
                    c.index,
                    c.event.cost_nanos,
                    c.event.billing_status,
                    c.event.tokens,
                )
            })
            .collect();
        let zero = Tokens::default();
        assert_eq!(
            got,
            vec![
                (1, 1_234, BillingStatus::Disputed, zero),
                (2, 0, BillingStatus::Disputed, zero),
                (3, 0, BillingStatus::Refused, zero),
            ]
        );
        assert_eq!(
            c[0].event.error.as_deref(),
            Some("settlement: input_tokens 9223372036854775807 outside 0..=1000000000000")
        );
        assert!(
            c[1].reason.starts_with("cost -11250000000"),
            "{}",
            c[1].reason
        );
        assert!(vet_batch(&[ok]).is_empty());
    }

    /// Plausible events whose sum would pass i64: the one that would overflow is disputed.
    #[test]
    fn settlement_never_lets_a_batch_sum_overflow() {
        let n = (i64::MAX / SETTLE_MAX_COST_NANOS) as usize;
        let batch: Vec<UsageEvent> = (0..n + 2)
            .map(|i| ev(&i.to_string(), 0, SETTLE_MAX_COST_NANOS))
            .collect();
        let c = vet_batch(&batch);
        assert_eq!(
            c.iter().map(|c| c.index).collect::<Vec<_>>(),
            vec![n, n + 1]
        );
        assert_eq!(c[0].reason, "the batch's sum would overflow");
    }

    proptest::proptest! {
        /// Whatever the amounts: after the re-check every amount is in bounds and every sum
        /// of the batch fits i64 (so no per-sink sum can overflow), and only implausible or
        /// overflowing events are changed.
        #[test]
        fn vetted_batches_always_fit(
            raw in proptest::collection::vec(
                (proptest::prelude::any::<i64>(), proptest::prelude::any::<i64>(),
                 proptest::prelude::any::<i64>(), 0u8..4),
                0..40,
            )
        ) {
            let batch: Vec<UsageEvent> = raw
                .iter()
                .enumerate()
                .map(|(i, (t, c, r, pick))| {
                    // Mix wild values with plausible ones so both paths run.
                    let t = if *pick & 1 == 0 { t.rem_euclid(SETTLE_MAX_TOKENS + 1) } else { *t };
                    let c = if *pick & 2 == 0 { c.rem_euclid(SETTLE_MAX_COST_NANOS + 1) } else { *c };
                    let mut e = ev(&i.to_string(), t, c);
                    e.reserved = *r;
                    e
                })
                .collect();
            let fixes = vet_batch(&batch);
            let mut applied = batch.clone();
            for f in &fixes {
                proptest::prop_assert_eq!(&f.event.request_id, &batch[f.index].request_id);
                applied[f.index] = f.event.clone();
            }
            for (i, e) in applied.iter().enumerate() {
                proptest::prop_assert!(implausible(e).is_none());
                let changed = fixes.iter().any(|f| f.index == i);
                if implausible(&batch[i]).is_some() {
                    proptest::prop_assert!(changed);
                }
            }
            for field in 0..5 {
                let s: i128 = applied.iter().map(|e| i128::from([
                    e.tokens.input, e.tokens.output, e.tokens.cache_read,
                    e.tokens.cache_write, e.cost_nanos][field])).sum();
                proptest::prop_assert!(s <= i128::from(i64::MAX), "field {} sums to {}", field, s);
            }
        }
    }

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
