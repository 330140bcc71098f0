//! Admission: which of a user's grants pays for a request, with in-flight reservations.
//!
//! Order: subscriptions first, then quota packages; inside each, the one that expires soonest;
//! ties by id. A grant has room when every limited window has effective used + reserved < limit
//! (and for a quota package, quota_used + reserved < quota_total), where `reserved` is what
//! requests already admitted against it and not yet settled are expected to cost: in this
//! process, or with Redis in every instance ([`super::shared`]). A request's own estimate does not count against it, so a grant with any room left
//! admits at least one request, which is then charged in full (SPEC §10 "Room").

use foldhash::{HashMap, HashMapExt};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::balance::used_in;
use super::shared::{Holder, SharedReservations};
use super::windows::{window_at, WindowKind};
use crate::billing::money::Usd;
use crate::cache::TtlCache;
use crate::clock::from_ms;
use crate::domain::PackageKind;
use crate::store::packages::UserPackage;

/// Each user's active grants (for `cache::TTL`; dropped by admin writes and journal replay),
/// read by admission and dropped by the recorder. The value is (the settlement sequence
/// numbers before the load, the grants): see [`Reservations`].
pub type GrantCache = TtlCache<i64, (Since, Vec<UserPackage>)>;

/// The settlement sequence numbers read before a load of grants' usage: this process's, and
/// Redis's when it answered.
#[derive(Clone, Copy, Debug, Default)]
pub struct Since {
    pub local: u64,
    pub shared: Option<i64>,
}

/// Why no grant can pay: the message names the window and when it resets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub message: String,
}

fn order_key(up: &UserPackage) -> (u8, i64, i64) {
    (
        u8::from(up.kind != PackageKind::Subscription),
        up.expires_at,
        up.id,
    )
}

/// The first window of `up` without room at `now`, with its reset time; None when it has room.
fn exhausted(
    up: &UserPackage,
    now: DateTime<Utc>,
    tz: Tz,
    reserved: i64,
) -> Option<(String, Option<DateTime<Utc>>, i64)> {
    for kind in WindowKind::ALL {
        let Some(limit) = up.limit(kind) else {
            continue;
        };
        if used_in(up, kind, now, tz) + reserved >= limit {
            let resets = window_at(kind, now, from_ms(up.starts_at), from_ms(up.expires_at), tz)
                .map(|w| w.end);
            return Some((kind.as_str().to_string(), resets, limit));
        }
    }
    if let Some(total) = up.quota_total {
        if up.quota_used + reserved >= total {
            return Some(("quota".to_string(), None, total));
        }
    }
    None
}

/// The active grants in admission order.
fn in_order(grants: &[UserPackage], now: DateTime<Utc>) -> Vec<&UserPackage> {
    let now_ms = now.timestamp_millis();
    let mut active: Vec<&UserPackage> = grants.iter().filter(|g| g.is_active_at(now_ms)).collect();
    active.sort_by_key(|g| order_key(g));
    active
}

/// The active grants in admission order, each with its room (limit − effective used of its
/// tightest window; `i64::MAX` without limits): a grant has room while reserved < room, which
/// is what [`choose`] decides. For a reservation store that chooses by itself (Redis).
pub fn rooms(grants: &[UserPackage], now: DateTime<Utc>, tz: Tz) -> Vec<(i64, i64)> {
    in_order(grants, now)
        .into_iter()
        .map(|g| {
            let windows = WindowKind::ALL.into_iter().filter_map(|kind| {
                let limit = match kind {
                    WindowKind::Daily => g.daily_quota,
                    WindowKind::Weekly => g.weekly_quota,
                    WindowKind::Monthly => g.monthly_quota,
                }?;
                Some(limit - used_in(g, kind, now, tz))
            });
            let quota = g.quota_total.map(|t| t - g.quota_used);
            let room = windows.chain(quota).min().unwrap_or(i64::MAX);
            (g.id, room)
        })
        .collect()
}

/// Choose the grant that pays for a request, among the user's active grants.
pub fn choose(
    grants: &[UserPackage],
    now: DateTime<Utc>,
    tz: Tz,
    reserved: impl Fn(i64) -> i64,
) -> Result<&UserPackage, Denial> {
    let active = in_order(grants, now);
    if active.is_empty() {
        return Err(Denial {
            message: "no active package: ask an administrator to grant one".to_string(),
        });
    }
    let mut first_denial = None;
    for g in active {
        match exhausted(g, now, tz, reserved(g.id)) {
            None => return Ok(g),
            Some(d) => {
                first_denial.get_or_insert((g, d));
            }
        }
    }
    let (g, (window, resets, limit)) = first_denial.expect("at least one active grant");
    let message = match resets {
        Some(at) => format!(
            "the {window} quota of package `{}` ({} USD) is used up; it resets at {} ({})",
            g.name,
            Usd(limit),
            at.with_timezone(&tz).to_rfc3339(),
            tz.name()
        ),
        None => format!(
            "the quota of package `{}` ({} USD) is used up and does not reset; ask for a new package",
            g.name,
            Usd(limit)
        ),
    };
    Err(Denial { message })
}

/// What requests of this process are expected to cost but the usage a request was admitted
/// on may not show yet, per grant (nano-dollars).
///
/// A reservation is *pending* from admission until its request's cost is settled in the
/// database. Settlement bumps a sequence number and keeps the amount as *settled at seq S* for
/// a while: an admission that read the grant's usage before commit S (its `since` < S) still
/// counts it; one that read it after does not (the database figure has it). So no admission
/// misses a charge, whatever the interleaving of loads, caches and commits.
///
/// With Redis ([`Reservations::with_redis`]) every reservation is also held in Redis, where
/// admission chooses against what every instance holds; the in-process figures are the
/// fallback when Redis does not answer in time.
#[derive(Default)]
pub struct Reservations {
    inner: Mutex<ResInner>,
    shared: Option<SharedReservations>,
}

#[derive(Default)]
struct ResInner {
    pending: HashMap<i64, i64>,
    /// Per grant, (seq, when, amount settled by that commit), in seq order: one entry per
    /// grant per settled batch, kept `SETTLED_KEEP`.
    settled: HashMap<i64, std::collections::VecDeque<(u64, std::time::Instant, i64)>>,
    seq: u64,
}

/// Settled amounts older than this are visible to every load still in use (grant caches live
/// seconds, loads milliseconds).
pub const SETTLED_KEEP: std::time::Duration = std::time::Duration::from_secs(10);
// A cached grant list may be served until `TTL + GRACE` after it was read; the charges settled
// since then must still be here to be counted.
const _: () =
    assert!(crate::cache::TTL.as_secs() + crate::cache::GRACE.as_secs() < SETTLED_KEEP.as_secs());

impl Reservations {
    fn lock(&self) -> std::sync::MutexGuard<'_, ResInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reservations held in Redis too (see [`SharedReservations`]).
    pub fn with_redis(shared: SharedReservations) -> Reservations {
        Reservations {
            inner: Mutex::default(),
            shared: Some(shared),
        }
    }

    /// The Redis side, when configured.
    pub fn shared(&self) -> Option<&SharedReservations> {
        self.shared.as_ref()
    }

    /// The settlement sequence number now; read it *before* reading grants' usage.
    pub fn seq(&self) -> u64 {
        self.lock().seq
    }

    /// This process's and Redis's settlement sequence numbers now; read them *before* reading
    /// grants' usage.
    pub async fn since(&self) -> Since {
        let local = self.seq();
        let shared = match &self.shared {
            Some(s) => s.seq().await,
            None => None,
        };
        Since { local, shared }
    }

    /// Reserved against `grant` as seen by usage read at `since`.
    fn held(inner: &ResInner, grant: i64, since: u64) -> i64 {
        let pending = inner.pending.get(&grant).copied().unwrap_or(0);
        let settled: i64 = inner.settled.get(&grant).map_or(0, |q| {
            q.iter()
                .rev()
                .take_while(|(s, _, _)| *s > since)
                .map(|(_, _, a)| a)
                .sum()
        });
        pending + settled
    }

    /// Choose and reserve atomically: `choose` sees what is reserved per grant (for usage read
    /// at `since`) and returns the chosen grant and the amount to reserve for it.
    pub fn admit<T, E>(
        &self,
        since: u64,
        choose: impl FnOnce(&dyn Fn(i64) -> i64) -> Result<(i64, i64, T), E>,
    ) -> Result<T, E> {
        let mut inner = self.lock();
        let (grant, amount, out) = {
            let view = |g: i64| Self::held(&inner, g, since);
            choose(&view)?
        };
        *inner.pending.entry(grant).or_default() += amount;
        Ok(out)
    }

    /// Change a pending reservation (e.g. from the estimate to the actual cost).
    pub fn add(&self, grant: i64, nanos: i64) {
        if nanos == 0 {
            return;
        }
        let mut inner = self.lock();
        let v = inner.pending.entry(grant).or_default();
        *v += nanos;
        if *v == 0 {
            inner.pending.remove(&grant);
        }
    }

    /// These (grant, amount) reservations were just committed to the database.
    pub fn settled(&self, items: impl IntoIterator<Item = (i64, i64)>) {
        let mut by_grant: HashMap<i64, i64> = HashMap::new();
        for (grant, amount) in items {
            if amount != 0 {
                *by_grant.entry(grant).or_default() += amount;
            }
        }
        let mut inner = self.lock();
        inner.seq += 1;
        let (seq, now) = (inner.seq, std::time::Instant::now());
        for (grant, amount) in by_grant {
            let v = inner.pending.entry(grant).or_default();
            *v -= amount;
            if *v == 0 {
                inner.pending.remove(&grant);
            }
            inner
                .settled
                .entry(grant)
                .or_default()
                .push_back((seq, now, amount));
        }
        inner.settled.retain(|_, q| {
            while q
                .front()
                .is_some_and(|(_, at, _)| at.elapsed() > SETTLED_KEEP)
            {
                q.pop_front();
            }
            !q.is_empty()
        });
    }

    /// What in-flight requests hold against `grant_id` now (nano-dollars; settled charges not
    /// counted): for the admin API's `reserved`. With Redis, what every instance's requests
    /// hold (this instance's when Redis does not answer).
    pub async fn reserved(&self, grant_id: i64) -> i64 {
        if let Some(s) = &self.shared {
            if let Some(v) = s.held(Holder::Grant(grant_id)).await {
                return v;
            }
        }
        self.lock().pending.get(&grant_id).copied().unwrap_or(0)
    }

    /// Pending reservations of every grant (settled ones not counted).
    pub fn total(&self) -> i64 {
        self.lock().pending.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::GrantStatus;
    use crate::store::packages::test_grant as grant;
    use chrono::TimeZone;

    #[test]
    fn subscriptions_first_then_soonest_expiry_then_id() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let far = now.timestamp_millis() + 10 * 86_400_000;
        let near = now.timestamp_millis() + 86_400_000;
        let grants = vec![
            grant(1, PackageKind::Quota, near),
            grant(2, PackageKind::Subscription, far),
            grant(3, PackageKind::Subscription, near),
            grant(4, PackageKind::Subscription, near),
        ];
        let tz = chrono_tz::UTC;
        assert_eq!(choose(&grants, now, tz, |_| 0).unwrap().id, 3);
        // Grant 3 full by reservations → 4 (same expiry, next id) → 2 → quota 1.
        assert_eq!(
            choose(&grants, now, tz, |id| if id == 3 { 1_000 } else { 0 })
                .unwrap()
                .id,
            4
        );
        let full = |id: i64| if id == 1 { 0 } else { 1_000 };
        assert_eq!(choose(&grants, now, tz, full).unwrap().id, 1);
    }

    #[test]
    fn denial_names_window_and_reset() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 15, 0, 0).unwrap();
        let mut g = grant(
            7,
            PackageKind::Subscription,
            now.timestamp_millis() + 30 * 86_400_000,
        );
        g.daily_used = 1_000;
        g.daily_window_start = Some(
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
                .unwrap()
                .timestamp_millis(),
        );
        let err = choose(std::slice::from_ref(&g), now, chrono_tz::UTC, |_| 0).unwrap_err();
        assert!(err.message.contains("daily"), "{}", err.message);
        assert!(
            err.message.contains("2026-01-02T00:00:00+00:00"),
            "{}",
            err.message
        );
        // A stale window (yesterday) has room again.
        g.daily_window_start = Some(
            Utc.with_ymd_and_hms(2025, 12, 31, 0, 0, 0)
                .unwrap()
                .timestamp_millis(),
        );
        assert_eq!(
            choose(std::slice::from_ref(&g), now, chrono_tz::UTC, |_| 0)
                .unwrap()
                .id,
            7
        );
    }

    #[test]
    fn no_active_grant_is_denied() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let mut g = grant(1, PackageKind::Quota, now.timestamp_millis());
        assert!(choose(std::slice::from_ref(&g), now, chrono_tz::UTC, |_| 0).is_err());
        g.expires_at = now.timestamp_millis() + 1;
        g.status = GrantStatus::Cancelled;
        assert!(choose(std::slice::from_ref(&g), now, chrono_tz::UTC, |_| 0).is_err());
    }

    #[test]
    fn reservations_count_what_a_load_cannot_see() {
        let r = Reservations::default();
        let before = r.seq();
        let seen = |since: u64| r.admit(since, |v| Ok::<_, ()>((1, 0, v(1)))).unwrap();
        r.admit(before, |_| Ok::<_, ()>((1, 50, ()))).unwrap();
        r.add(1, 20);
        assert_eq!(seen(before), 70, "pending");
        r.settled([(1, 70)]);
        assert_eq!(r.total(), 0);
        assert_eq!(
            seen(before),
            70,
            "settled after this usage was read: still counted"
        );
        assert_eq!(seen(r.seq()), 0, "usage read after the commit has it");
        // Choosing and reserving happen under one lock.
        let err = r.admit(r.seq(), |v| {
            if v(1) > 0 {
                Err("full")
            } else {
                Ok((1, 5, ()))
            }
        });
        assert!(err.is_ok());
        let err = r.admit(r.seq(), |v| {
            if v(1) > 0 {
                Err("full")
            } else {
                Ok((1, 5, ()))
            }
        });
        assert_eq!(err, Err("full"));
    }
}
