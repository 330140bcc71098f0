//! The package catalogue and packages granted to users.

use serde::Serialize;

use super::{execute, insert_id, on_db, placeholders, ser, Db, Result};

#[derive(Clone, Debug, sqlx::FromRow, Serialize)]
pub struct Package {
    pub id: i64,
    pub name: String,
    #[sqlx(rename = "type")]
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(serialize_with = "ser::opt_usd")]
    pub daily_quota: Option<i64>,
    #[serde(serialize_with = "ser::opt_usd")]
    pub weekly_quota: Option<i64>,
    #[serde(serialize_with = "ser::opt_usd")]
    pub monthly_quota: Option<i64>,
    #[serde(serialize_with = "ser::opt_usd")]
    pub quota_total: Option<i64>,
    pub duration_days: i64,
    pub status: String,
    #[serde(serialize_with = "ser::ms")]
    pub created_at: i64,
    #[serde(serialize_with = "ser::ms")]
    pub updated_at: i64,
}

pub struct NewPackage<'a> {
    pub name: &'a str,
    pub kind: &'a str,
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
    pub kind: String,
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
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
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
                 VALUES (?, ?, ?, ?, ?, ?, ?, 'active', ?, ?)"
            )
            .bind(p.name)
            .bind(p.kind)
            .bind(p.daily_quota)
            .bind(p.weekly_quota)
            .bind(p.monthly_quota)
            .bind(p.quota_total)
            .bind(p.duration_days)
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

    pub async fn set_package_status(&self, id: i64, status: &str, now: i64) -> Result<Package> {
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
                 created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', ?, ?)"
            )
            .bind(user_id)
            .bind(pkg.id)
            .bind(&pkg.name)
            .bind(&pkg.kind)
            .bind(pkg.daily_quota)
            .bind(pkg.weekly_quota)
            .bind(pkg.monthly_quota)
            .bind(pkg.quota_total)
            .bind(starts_at)
            .bind(expires_at)
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
        status: &str,
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
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {UP_COLS} FROM user_packages WHERE status = 'active' AND starts_at <= ? \
             AND expires_at > ? AND user_id IN ({}) ORDER BY id",
            placeholders(user_ids.len())
        );
        Ok(on_db!(self, |p| {
            let mut q = sqlx::query_as(&sql).bind(now).bind(now);
            for id in user_ids {
                q = q.bind(*id);
            }
            q.fetch_all(p).await
        })?)
    }
}
