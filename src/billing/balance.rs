//! What a grant has left: per window limit, effective used, remaining and next reset; and the
//! per-user balances shown on the users page, the admin API and `/v1/me`.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use super::money::Usd;
use super::windows::{effective_used, window_at, WindowKind};
use crate::clock::from_ms;
use crate::domain::{GrantStatus, PackageKind};
use crate::store::packages::UserPackage;
use crate::usage::WindowStarts;

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct WindowStatus {
    pub window: WindowKind,
    pub limit: Usd,
    pub used: Usd,
    pub remaining: Usd,
    pub resets_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct QuotaStatus {
    pub limit: Usd,
    pub used: Usd,
    pub remaining: Usd,
}

/// A grant as of `now`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PackageStatus {
    pub id: i64,
    pub package_id: i64,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: PackageKind,
    pub status: GrantStatus,
    pub starts_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Active: status active and starts_at ≤ now < expires_at.
    pub active: bool,
    pub windows: Vec<WindowStatus>,
    pub quota: Option<QuotaStatus>,
    /// Lifetime charges of this grant.
    pub total_used: Usd,
    pub has_room: bool,
    /// What in-flight requests hold against it now; 0 until [`with_reserved`] asks the
    /// reservations (this pure function cannot).
    pub reserved: Usd,
}

fn stored(up: &UserPackage, kind: WindowKind) -> (Option<i64>, i64) {
    match kind {
        WindowKind::Daily => (up.daily_window_start, up.daily_used),
        WindowKind::Weekly => (up.weekly_window_start, up.weekly_used),
        WindowKind::Monthly => (up.monthly_window_start, up.monthly_used),
    }
}

/// The window starts (Unix ms) of every window kind of this grant at `now`, used to charge it.
pub fn window_starts(up: &UserPackage, now: DateTime<Utc>, tz: Tz) -> Option<WindowStarts> {
    let (s, e) = (from_ms(up.starts_at), from_ms(up.expires_at));
    let start = |k| window_at(k, now, s, e, tz).map(|w| w.start.timestamp_millis());
    Some(WindowStarts {
        daily: start(WindowKind::Daily)?,
        weekly: start(WindowKind::Weekly)?,
        monthly: start(WindowKind::Monthly)?,
    })
}

/// Effective used of one window kind at `now` (0 outside the grant's lifetime).
pub fn used_in(up: &UserPackage, kind: WindowKind, now: DateTime<Utc>, tz: Tz) -> i64 {
    let (s, e) = (from_ms(up.starts_at), from_ms(up.expires_at));
    match window_at(kind, now, s, e, tz) {
        Some(w) => {
            let (start, used) = stored(up, kind);
            effective_used(start, used, &w)
        }
        None => 0,
    }
}

pub fn package_status(up: &UserPackage, now: DateTime<Utc>, tz: Tz) -> PackageStatus {
    let (s, e) = (from_ms(up.starts_at), from_ms(up.expires_at));
    let active = up.is_active_at(now.timestamp_millis());
    let mut windows = Vec::new();
    for kind in WindowKind::ALL {
        let Some(limit) = up.limit(kind) else {
            continue;
        };
        // Before the grant starts, show its first window; after it ends, its last.
        let at = now.clamp(s, e - chrono::Duration::milliseconds(1));
        if let Some(w) = window_at(kind, at, s, e, tz) {
            let (start, used) = stored(up, kind);
            let used = effective_used(start, used, &w);
            windows.push(WindowStatus {
                window: kind,
                limit: Usd(limit),
                used: Usd(used),
                remaining: Usd(limit - used),
                resets_at: w.end,
            });
        }
    }
    let quota = up.quota_total.map(|t| QuotaStatus {
        limit: Usd(t),
        used: Usd(up.quota_used),
        remaining: Usd(t - up.quota_used),
    });
    let has_room = active
        && windows.iter().all(|w| w.used < w.limit)
        && quota.as_ref().is_none_or(|q| q.used < q.limit);
    PackageStatus {
        id: up.id,
        package_id: up.package_id,
        name: up.name.clone(),
        kind: up.kind,
        status: up.status,
        starts_at: s,
        expires_at: e,
        active,
        windows,
        reserved: Usd(0),
        quota,
        total_used: Usd(up.quota_used),
        has_room,
    }
}

/// A user's balances: each the sum over the user's active grants that limit that window
/// (limit − effective used); None when no active grant does. Never clamped.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Balances {
    pub quota_balance: Option<Usd>,
    pub subscription_daily_balance: Option<Usd>,
    pub subscription_weekly_balance: Option<Usd>,
    pub subscription_monthly_balance: Option<Usd>,
}

pub fn balances<'a>(
    grants: impl IntoIterator<Item = &'a UserPackage>,
    now: DateTime<Utc>,
    tz: Tz,
) -> Balances {
    let mut b = Balances::default();
    let add = |slot: &mut Option<Usd>, v: i64| *slot = Some(Usd(slot.map_or(0, |u| u.0) + v));
    for up in grants {
        let st = package_status(up, now, tz);
        if !st.active {
            continue;
        }
        if let Some(q) = &st.quota {
            add(&mut b.quota_balance, q.remaining.0);
        }
        for w in &st.windows {
            let slot = match w.window {
                WindowKind::Daily => &mut b.subscription_daily_balance,
                WindowKind::Weekly => &mut b.subscription_weekly_balance,
                WindowKind::Monthly => &mut b.subscription_monthly_balance,
            };
            add(slot, w.remaining.0);
        }
    }
    b
}

/// Each grant as of `now` ([`package_status`]), with what in-flight requests hold against it
/// (from every instance when the reservations are shared in Redis).
pub async fn with_reserved(
    grants: &[UserPackage],
    now: DateTime<Utc>,
    tz: Tz,
    reservations: &crate::billing::admission::Reservations,
) -> Vec<PackageStatus> {
    let mut out = Vec::with_capacity(grants.len());
    for g in grants {
        let mut status = package_status(g, now, tz);
        status.reserved = Usd(reservations.reserved(g.id).await);
        out.push(status);
    }
    out
}
