//! The package catalogue and grants of packages to users.

use super::parse::{name, one_of, time};
use super::{AdminError, Problem, Result};
use crate::billing::money::Usd;
use crate::domain::{CatalogueStatus, GrantStatus, PackageKind};
use crate::state::AppState;
use crate::store::packages::{Package, UserPackage};

pub struct NewPackage {
    pub name: String,
    /// `subscription` or `quota`.
    pub kind: String,
    pub daily_quota: Option<Usd>,
    pub weekly_quota: Option<Usd>,
    pub monthly_quota: Option<Usd>,
    pub quota_total: Option<Usd>,
    pub duration_days: i64,
}

pub struct NewGrant {
    pub package_id: i64,
    /// RFC 3339; now when not given.
    pub starts_at: Option<String>,
}

fn positive(field: &'static str, v: Option<Usd>) -> Result<Option<i64>> {
    match v {
        Some(u) if u.0 <= 0 => Err(AdminError::invalid(field, Problem::NotPositive)),
        other => Ok(other.map(|u| u.0)),
    }
}

pub async fn create_package(st: &AppState, p: NewPackage) -> Result<Package> {
    let name = name("name", &p.name, 128)?;
    let daily = positive("daily_quota", p.daily_quota)?;
    let weekly = positive("weekly_quota", p.weekly_quota)?;
    let monthly = positive("monthly_quota", p.monthly_quota)?;
    let total = positive("quota_total", p.quota_total)?;
    let kind = one_of::<PackageKind>("type", &p.kind)?;
    if kind == PackageKind::Subscription {
        if daily.is_none() && weekly.is_none() && monthly.is_none() {
            return Err(AdminError::invalid(
                "daily_quota",
                Problem::SubscriptionNeedsWindow,
            ));
        }
        if total.is_some() {
            return Err(AdminError::invalid(
                "quota_total",
                Problem::TotalOnSubscription,
            ));
        }
    } else {
        if total.is_none() {
            return Err(AdminError::invalid("quota_total", Problem::QuotaNeedsTotal));
        }
        if daily.is_some() || weekly.is_some() || monthly.is_some() {
            return Err(AdminError::invalid("type", Problem::WindowsOnQuota));
        }
    }
    if !(1..=36_500).contains(&p.duration_days) {
        return Err(AdminError::invalid(
            "duration_days",
            Problem::OutOfRange {
                min: 1,
                max: 36_500,
            },
        ));
    }
    let pkg = st
        .db
        .create_package(
            &crate::store::packages::NewPackage {
                name: &name,
                kind,
                daily_quota: daily,
                weekly_quota: weekly,
                monthly_quota: monthly,
                quota_total: total,
                duration_days: p.duration_days,
            },
            st.now_ms(),
        )
        .await?;
    st.proxy.forget_cached();
    Ok(pkg)
}

pub async fn set_package_status(st: &AppState, id: i64, status: &str) -> Result<Package> {
    let status = one_of::<CatalogueStatus>("status", status)?;
    st.db
        .get_package(id)
        .await
        .map_err(AdminError::lookup("package"))?;
    let pkg = st.db.set_package_status(id, status, st.now_ms()).await?;
    st.proxy.forget_cached();
    Ok(pkg)
}

/// Grant an active package to a user, from `starts_at` for the package's duration.
pub async fn grant_package(st: &AppState, user_id: i64, g: NewGrant) -> Result<UserPackage> {
    st.db
        .get_user(user_id)
        .await
        .map_err(AdminError::lookup("user"))?;
    let starts_at = time("starts_at", g.starts_at.as_deref())?;
    let pkg = st.db.get_package(g.package_id).await.map_err(|e| match e {
        crate::store::StoreError::NotFound => {
            AdminError::invalid("package_id", Problem::NoSuchPackage { id: g.package_id })
        }
        e => AdminError::Store(e),
    })?;
    if pkg.status != CatalogueStatus::Active {
        return Err(AdminError::invalid("package_id", Problem::PackageDisabled));
    }
    let now = st.now_ms();
    let starts_at = starts_at.unwrap_or(now);
    let expires_at = starts_at + pkg.duration_days * 86_400_000;
    let up = st
        .db
        .grant_package(user_id, &pkg, starts_at, expires_at, now)
        .await?;
    st.proxy.forget_cached();
    Ok(up)
}

/// Cancel a grant, or make it active again.
pub async fn set_grant_status(st: &AppState, id: i64, status: &str) -> Result<UserPackage> {
    let status = one_of::<GrantStatus>("status", status)?;
    st.db
        .get_user_package(id)
        .await
        .map_err(AdminError::lookup("user package"))?;
    let up = st
        .db
        .set_user_package_status(id, status, st.now_ms())
        .await?;
    st.proxy.forget_cached();
    Ok(up)
}
