//! Key budgets (SPEC §11.3): a key's daily, weekly, monthly and total spending limits.
//!
//! Windows come from the one window function, as for packages: daily is the calendar day in
//! `billing.timezone`; weekly and monthly are anchored at the key's `created_at`. A key has no
//! end, so its windows are never clamped. Counters roll lazily (effective used), and are
//! charged in the settlement transaction (`store::settle`). Admission checks a budgeted key
//! against its room minus what its in-flight requests hold: a second [`Reservations`], keyed by
//! key id, with the same guarantee as the grants' (a settled charge is counted exactly once by
//! every admission, whatever the interleaving of loads, caches and commits).

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use super::admission::{Denial, Reservations, Since};
use super::money::Usd;
use super::windows::{effective_used, window_at, Window, WindowKind};
use crate::cache::TtlCache;
use crate::clock::from_ms;
use crate::store::keys::{ApiKey, KeyBudget, KeyBudgetState};
use crate::usage::WindowStarts;

/// A key's windows have no end; this stands for "never" (far inside chrono's range, so the
/// calendar arithmetic of the window function never meets its edge).
fn never() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(9999, 1, 1, 0, 0, 0)
        .single()
        .expect("a valid instant")
}

/// The window of `kind` of a key created at `created_at_ms` that contains `now`. An instant
/// before the key was created (a clock set back) is read as its creation.
pub fn key_window(
    kind: WindowKind,
    now: DateTime<Utc>,
    created_at_ms: i64,
    tz: Tz,
) -> Option<Window> {
    let anchor = from_ms(created_at_ms);
    window_at(kind, now.max(anchor), anchor, never(), tz)
}

/// The window starts (Unix ms) of every window kind of a key at `now`: what its charge at
/// settlement is counted under.
pub fn key_window_starts(now: DateTime<Utc>, created_at_ms: i64, tz: Tz) -> Option<WindowStarts> {
    let start = |k| key_window(k, now, created_at_ms, tz).map(|w| w.start.timestamp_millis());
    Some(WindowStarts {
        daily: start(WindowKind::Daily)?,
        weekly: start(WindowKind::Weekly)?,
        monthly: start(WindowKind::Monthly)?,
    })
}

/// One budget of a key as of now. `window` is `daily`, `weekly`, `monthly` or `total`;
/// `resets_at` is None for the total, which never resets.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BudgetStatus {
    pub window: &'static str,
    pub limit: Usd,
    pub used: Usd,
    /// limit − used; negative when the last admitted requests went past the limit.
    pub remaining: Usd,
    pub resets_at: Option<DateTime<Utc>>,
}

fn window_parts(b: &KeyBudget, kind: WindowKind) -> (Option<i64>, Option<i64>, i64) {
    match kind {
        WindowKind::Daily => (b.daily_limit, b.daily_window_start, b.daily_used),
        WindowKind::Weekly => (b.weekly_limit, b.weekly_window_start, b.weekly_used),
        WindowKind::Monthly => (b.monthly_limit, b.monthly_window_start, b.monthly_used),
    }
}

/// Every limited budget of a key as of `now`, in the order daily, weekly, monthly, total.
pub fn status(
    b: &KeyBudget,
    used_cost: i64,
    created_at_ms: i64,
    now: DateTime<Utc>,
    tz: Tz,
) -> Vec<BudgetStatus> {
    let mut out = Vec::new();
    for kind in WindowKind::ALL {
        let (Some(limit), start, used) = window_parts(b, kind) else {
            continue;
        };
        let Some(w) = key_window(kind, now, created_at_ms, tz) else {
            continue;
        };
        let used = effective_used(start, used, &w);
        out.push(BudgetStatus {
            window: kind.as_str(),
            limit: Usd(limit),
            used: Usd(used),
            remaining: Usd(limit - used),
            resets_at: Some(w.end),
        });
    }
    if let Some(limit) = b.total_limit {
        out.push(BudgetStatus {
            window: "total",
            limit: Usd(limit),
            used: Usd(used_cost),
            remaining: Usd(limit - used_cost),
            resets_at: None,
        });
    }
    out
}

/// A key as the admin API and `/v1/me` show it: its row, and its budgets as of now.
#[derive(Serialize)]
pub struct KeyView<'a> {
    #[serde(flatten)]
    pub key: &'a ApiKey,
    pub budgets: Vec<BudgetStatus>,
}

pub fn view(key: &ApiKey, now: DateTime<Utc>, tz: Tz) -> KeyView<'_> {
    KeyView {
        key,
        budgets: status(&key.budget, key.used_cost, key.created_at, now, tz),
    }
}

/// Whether a key with this budget may send one more request while `reserved` is held against
/// it: every limited budget needs used + reserved < limit (a request's own estimate does not
/// count, as for grants, so a key with any room left admits at least one request). The denial
/// names the first budget without room and when it resets.
pub fn check(s: &KeyBudgetState, now: DateTime<Utc>, tz: Tz, reserved: i64) -> Result<(), Denial> {
    let full = status(&s.budget, s.used_cost, s.created_at, now, tz)
        .into_iter()
        .find(|b| b.used.0.saturating_add(reserved) >= b.limit.0);
    let Some(b) = full else {
        return Ok(());
    };
    let message = match b.resets_at {
        Some(at) => format!(
            "the {} budget of this API key ({} USD) is used up; it resets at {} ({})",
            b.window,
            b.limit,
            at.with_timezone(&tz).to_rfc3339(),
            tz.name()
        ),
        None => format!(
            "the total budget of this API key ({} USD) is used up and does not reset; ask an administrator to raise it",
            b.limit
        ),
    };
    Err(Denial { message })
}

/// What a key's in-flight requests may hold while it still admits one more: the least
/// remaining of its limited budgets ([`check`] refuses once `reserved >= room`); `i64::MAX`
/// for a key without a limited budget. For a reservation store that decides by itself (Redis).
pub fn room(s: &KeyBudgetState, now: DateTime<Utc>, tz: Tz) -> i64 {
    status(&s.budget, s.used_cost, s.created_at, now, tz)
        .iter()
        .map(|b| b.remaining.0)
        .min()
        .unwrap_or(i64::MAX)
}

/// Each budgeted key's state as read for admission, with the settlement sequence numbers (of
/// [`KeyBudgets::reservations`] and of Redis) read before it (see `admission::Reservations`).
pub type KeyBudgetCache = TtlCache<i64, (Since, Option<KeyBudgetState>)>;

/// What admission needs to enforce key budgets, shared by the proxy and the recorder.
pub struct KeyBudgets {
    /// In-flight holds per key id (nano-dollars), in this process; with Redis they are held
    /// there too, in the grants' [`super::shared::SharedReservations`] as
    /// [`super::shared::Holder::KeyBudget`].
    pub reservations: Reservations,
    /// Budgeted keys' counters (for `cache::TTL`; dropped by admin writes and journal replay).
    pub cache: KeyBudgetCache,
}

impl Default for KeyBudgets {
    fn default() -> Self {
        KeyBudgets {
            reservations: Reservations::default(),
            cache: TtlCache::new(crate::cache::TTL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(created: DateTime<Utc>) -> KeyBudgetState {
        KeyBudgetState {
            used_cost: 0,
            created_at: created.timestamp_millis(),
            budget: KeyBudget::default(),
        }
    }

    #[test]
    fn weekly_and_monthly_windows_are_anchored_at_creation() {
        let created = Utc.with_ymd_and_hms(2026, 1, 31, 15, 30, 0).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 3, 5, 9, 0, 0).unwrap();
        let tz = chrono_tz::UTC;
        let d = key_window(WindowKind::Daily, now, created.timestamp_millis(), tz).unwrap();
        assert_eq!(d.start, Utc.with_ymd_and_hms(2026, 3, 5, 0, 0, 0).unwrap());
        let w = key_window(WindowKind::Weekly, now, created.timestamp_millis(), tz).unwrap();
        // 31 Jan + 4 weeks = 28 Feb 15:30; + 5 weeks = 7 Mar.
        assert_eq!(
            w.start,
            Utc.with_ymd_and_hms(2026, 2, 28, 15, 30, 0).unwrap()
        );
        assert_eq!(w.end, Utc.with_ymd_and_hms(2026, 3, 7, 15, 30, 0).unwrap());
        let m = key_window(WindowKind::Monthly, now, created.timestamp_millis(), tz).unwrap();
        // Anchored on the 31st: clamped to 28 Feb, then 31 Mar.
        assert_eq!(
            m.start,
            Utc.with_ymd_and_hms(2026, 2, 28, 15, 30, 0).unwrap()
        );
        assert_eq!(m.end, Utc.with_ymd_and_hms(2026, 3, 31, 15, 30, 0).unwrap());
        // A clock behind the key's creation reads as its creation.
        let before = created - chrono::Duration::hours(1);
        assert!(key_window_starts(before, created.timestamp_millis(), tz).is_some());
    }

    #[test]
    fn a_used_window_refuses_until_it_rolls_and_names_its_reset() {
        let tz: Tz = "Europe/Paris".parse().unwrap();
        let created = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 1, 10, 12, 0, 0).unwrap();
        let mut s = state(created);
        s.budget.daily_limit = Some(1_000);
        let today = key_window(WindowKind::Daily, now, s.created_at, tz).unwrap();
        s.budget.daily_window_start = Some(today.start.timestamp_millis());
        s.budget.daily_used = 999;
        assert_eq!(check(&s, now, tz, 0), Ok(()));
        assert_eq!(
            room(&s, now, tz),
            1,
            "refused once what is held reaches the room"
        );
        // What in-flight requests hold counts against the room.
        let d = check(&s, now, tz, 1).unwrap_err();
        assert!(d.message.contains("daily budget"), "{}", d.message);
        assert!(
            d.message.contains("2026-01-11T00:00:00+01:00"),
            "{}",
            d.message
        );
        // Yesterday's counter is not today's.
        s.budget.daily_used = 5_000;
        s.budget.daily_window_start = Some(today.start.timestamp_millis() - 86_400_000);
        assert_eq!(check(&s, now, tz, 0), Ok(()));
        let st = status(&s.budget, s.used_cost, s.created_at, now, tz);
        assert_eq!(st[0].used, Usd(0));
        assert_eq!(st[0].remaining, Usd(1_000));
    }

    #[test]
    fn the_total_budget_never_resets() {
        let created = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let now = Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap();
        let mut s = state(created);
        s.budget.total_limit = Some(10);
        s.used_cost = 10;
        let d = check(&s, now, chrono_tz::UTC, 0).unwrap_err();
        assert!(d.message.contains("does not reset"), "{}", d.message);
        let st = status(&s.budget, s.used_cost, s.created_at, now, chrono_tz::UTC);
        assert_eq!(st.len(), 1);
        assert_eq!(st[0].window, "total");
        assert_eq!(st[0].resets_at, None);
        assert_eq!(st[0].remaining, Usd(0));
    }
}
