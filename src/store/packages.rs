//! The package catalogue and packages granted to users.

use serde::Serialize;

use super::{execute, insert_id, on_db, placeholders, ser, Db, Result};
use crate::billing::windows::WindowKind;
use crate::domain::{CatalogueStatus, GrantStatus, PackageKind};

#[derive(Clone, Debug, sqlx::FromRow, Serialize)]
pub struct Package {
    pub id: i64,
    pub name: String,
    #[sqlx(rename = "type")]
    #[serde(rename = "type")]
    pub kind: PackageKind,
    #[serde(serialize_with = "ser::opt_usd")]
    pub daily_quota: Option<i64>,
    #[serde(serialize_with = "ser::opt_usd")]
    pub weekly_quota: Option<i64>,
    #[serde(serialize_with = "ser::opt_usd")]
    pub monthly_quota: Option<i64>,
    #[serde(serialize_with = "ser::opt_usd")]
    pub quota_total: Option<i64>,
    pub duration_days: i64,
    pub status: CatalogueStatus,
    #[serde(serialize_with = "ser::ms")]
    pub created_at: i64,
    #[serde(serialize_with = "ser::ms")]
    pub updated_at: i64,
}

pub struct NewPackage<'a> {
    pub name: &'a str,
    pub kind: PackageKind,
    pub daily_quota: Option<i64>,
    pub weekly_quota: Option<i64>,
    pub monthly_quota: Option<i64>,
    pub quota_total: Option<i64>,
    pub duration_days: i64,
}

/// A package granted to a user: its own copy of the limits, and the usage of each window
/// together with the start (Unix ms) of the window that usage belongs to. `quota_used` is the
/// grant's lifetime usage (the limit of `quota` packages; a running total for subscriptions).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct UserPackage {
    pub id: i64,
    pub user_id: i64,
    pub package_id: i64,
    pub name: String,
    #[sqlx(rename = "type")]
    pub kind: PackageKind,
    pub daily_quota: Option<i64>,
    pub weekly_quota: Option<i64>,
    pub monthly_quota: Option<i64>,
    pub quota_total: Option<i64>,
    pub daily_used: i64,
    pub weekly_used: i64,
    pub monthly_used: i64,
    pub quota_used: i64,
    pub daily_window_start: Option<i64>,
    pub weekly_window_start: Option<i64>,
    pub monthly_window_start: Option<i64>,
    pub starts_at: i64,
    pub expires_at: i64,
    pub status: GrantStatus,
    pub created_at: i64,
    pub updated_at: i64,
}

impl UserPackage {
    /// Whether this grant can pay at `now_ms`: status active and starts_at ≤ now < expires_at.
    pub fn is_active_at(&self, now_ms: i64) -> bool {
        self.status == GrantStatus::Active && self.starts_at <= now_ms && now_ms < self.expires_at
    }

    /// The limit of one window kind (nano-dollars); None when this grant does not limit it.
    pub fn limit(&self, kind: WindowKind) -> Option<i64> {
        match kind {
            WindowKind::Daily => self.daily_quota,
            WindowKind::Weekly => self.weekly_quota,
            WindowKind::Monthly => self.monthly_quota,
        }
    }
}

const PKG_COLS: &str = "id, name, type, daily_quota, weekly_quota, monthly_quota, quota_total, \
    duration_days, status, created_at, updated_at";
const UP_COLS: &str = "id, user_id, package_id, name, type, daily_quota, weekly_quota, \
    monthly_quota, quota_total, daily_used, weekly_used, monthly_used, quota_used, \
    daily_window_start, weekly_window_start, monthly_window_start, starts_at, expires_at, \
    status, created_at, updated_at";

impl Db {
    pub async fn create_package(&self, p: &NewPackage<'_>, now: i64) -> Result<Package> {
        let id = insert_id!(
            self,
            sqlx::query(
                "INSERT INTO packages (name, type, daily_quota, weekly_quota, monthly_quota, \
                 quota_total, duration_days, status, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            )
            .bind(p.name)
            .bind(p.kind)
            .bind(p.daily_quota)
            .bind(p.weekly_quota)
            .bind(p.monthly_quota)
            .bind(p.quota_total)
            .bind(p.duration_days)
            .bind(CatalogueStatus::Active)
            .bind(now)
            .bind(now)
        );
        self.get_package(id).await
    }

    pub async fn get_package(&self, id: i64) -> Result<Package> {
        let sql = format!("SELECT {PKG_COLS} FROM packages WHERE id = ?");
        Ok(on_db!(self, |p| sqlx::query_as(&sql)
            .bind(id)
            .fetch_one(p)
            .await)?)
    }

    pub async fn list_packages(&self, cursor: Option<i64>, limit: i64) -> Result<Vec<Package>> {
        let sql = format!("SELECT {PKG_COLS} FROM packages WHERE id > ? ORDER BY id LIMIT ?");
        Ok(on_db!(self, |p| sqlx::query_as(&sql)
            .bind(cursor.unwrap_or(0))
            .bind(limit)
            .fetch_all(p)
            .await)?)
    }

    pub async fn set_package_status(
        &self,
        id: i64,
        status: CatalogueStatus,
        now: i64,
    ) -> Result<Package> {
        execute!(
            self,
            sqlx::query("UPDATE packages SET status = ?, updated_at = ? WHERE id = ?")
                .bind(status)
                .bind(now)
                .bind(id)
        )?;
        self.get_package(id).await
    }

    /// Grant `pkg` to a user over [starts_at, expires_at), copying its limits.
    pub async fn grant_package(
        &self,
        user_id: i64,
        pkg: &Package,
        starts_at: i64,
        expires_at: i64,
        now: i64,
    ) -> Result<UserPackage> {
        let id = insert_id!(
            self,
            sqlx::query(
                "INSERT INTO user_packages (user_id, package_id, name, type, daily_quota, \
                 weekly_quota, monthly_quota, quota_total, starts_at, expires_at, status, \
                 created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            )
            .bind(user_id)
            .bind(pkg.id)
            .bind(&pkg.name)
            .bind(pkg.kind)
            .bind(pkg.daily_quota)
            .bind(pkg.weekly_quota)
            .bind(pkg.monthly_quota)
            .bind(pkg.quota_total)
            .bind(starts_at)
            .bind(expires_at)
            .bind(GrantStatus::Active)
            .bind(now)
            .bind(now)
        );
        self.get_user_package(id).await
    }

    pub async fn get_user_package(&self, id: i64) -> Result<UserPackage> {
        let sql = format!("SELECT {UP_COLS} FROM user_packages WHERE id = ?");
        Ok(on_db!(self, |p| sqlx::query_as(&sql)
            .bind(id)
            .fetch_one(p)
            .await)?)
    }

    /// Every grant of a user, newest first.
    pub async fn list_user_packages(&self, user_id: i64) -> Result<Vec<UserPackage>> {
        let sql = format!("SELECT {UP_COLS} FROM user_packages WHERE user_id = ? ORDER BY id DESC");
        Ok(on_db!(self, |p| sqlx::query_as(&sql)
            .bind(user_id)
            .fetch_all(p)
            .await)?)
    }

    pub async fn set_user_package_status(
        &self,
        id: i64,
        status: GrantStatus,
        now: i64,
    ) -> Result<UserPackage> {
        execute!(
            self,
            sqlx::query("UPDATE user_packages SET status = ?, updated_at = ? WHERE id = ?")
                .bind(status)
                .bind(now)
                .bind(id)
        )?;
        self.get_user_package(id).await
    }

    /// Active grants of these users at `now` (status active, starts_at ≤ now < expires_at).
    pub async fn active_user_packages(
        &self,
        user_ids: &[i64],
        now: i64,
    ) -> Result<Vec<UserPackage>> {
        self.bounded(async {
            if user_ids.is_empty() {
                return Ok(Vec::new());
            }
            let sql = format!(
                "SELECT {UP_COLS} FROM user_packages WHERE status = ? AND starts_at <= ? \
             AND expires_at > ? AND user_id IN ({}) ORDER BY id",
                placeholders(user_ids.len())
            );
            Ok(on_db!(self, |p| {
                let mut q = sqlx::query_as(&sql)
                    .bind(GrantStatus::Active)
                    .bind(now)
                    .bind(now);
                for id in user_ids {
                    q = q.bind(*id);
                }
                q.fetch_all(p).await
            })?)
        })
        .await
    }
}

/// A grant for unit tests: a subscription limits its day to 1 000, a quota package has a
/// total of 5 000; active from 0 until `expires_at`, nothing used.
#[cfg(test)]
pub(crate) fn test_grant(id: i64, kind: PackageKind, expires_at: i64) -> UserPackage {
    UserPackage {
        id,
        user_id: 1,
        package_id: 1,
        name: format!("p{id}"),
        kind,
        daily_quota: (kind == PackageKind::Subscription).then_some(1_000),
        weekly_quota: None,
        monthly_quota: None,
        quota_total: (kind == PackageKind::Quota).then_some(5_000),
        daily_used: 0,
        weekly_used: 0,
        monthly_used: 0,
        quota_used: 0,
        daily_window_start: None,
        weekly_window_start: None,
        monthly_window_start: None,
        starts_at: 0,
        expires_at,
        status: GrantStatus::Active,
        created_at: 0,
        updated_at: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_is_active_from_its_start_until_before_its_expiry_while_its_status_is_active() {
        let mut g = test_grant(1, PackageKind::Subscription, 2_000);
        g.starts_at = 1_000;
        assert!(!g.is_active_at(999), "before starts_at");
        assert!(g.is_active_at(1_000), "at starts_at");
        assert!(g.is_active_at(1_999));
        assert!(!g.is_active_at(2_000), "at expires_at");
        g.status = GrantStatus::Cancelled;
        assert!(!g.is_active_at(1_500), "cancelled");
    }

    #[test]
    fn the_limit_of_a_window_is_the_grants_own_copy() {
        let mut g = test_grant(1, PackageKind::Subscription, 2_000);
        g.weekly_quota = Some(7);
        g.monthly_quota = Some(30);
        assert_eq!(g.limit(WindowKind::Daily), Some(1_000));
        assert_eq!(g.limit(WindowKind::Weekly), Some(7));
        assert_eq!(g.limit(WindowKind::Monthly), Some(30));
        let q = test_grant(2, PackageKind::Quota, 2_000);
        for kind in WindowKind::ALL {
            assert_eq!(q.limit(kind), None, "{kind:?}");
        }
    }
}
