//! Read-only queries behind the admin pages: pages of users, key counts, names for filters and
//! links, usage totals per day and per dimension, dashboard counts.

use super::usage::{bind_usage_filter, sum_as as sum, UsageFilter, USAGE_FILTER_SQL};
use super::users::User;
use super::{on_db, placeholders, Db, Result};
use crate::domain::{AccountStatus, GrantStatus, KeyStatus};

/// Keys of one user: how many are active, how many exist.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct KeyCount {
    pub user_id: i64,
    pub active: i64,
    pub total: i64,
}

/// A key as named in lists and filters.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct KeyLabel {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub key_prefix: String,
}

/// Usage summed over a group (a day, a user, a key, an account or a model).
#[derive(Clone, Debug, Default, sqlx::FromRow)]
pub struct UsageTotal {
    /// The day (`YYYY-MM-DD`) or the model; empty when grouped by an id.
    pub label: String,
    /// The user, key or account id; 0 when grouped by day or model.
    pub id: i64,
    pub requests: i64,
    pub cost: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
}

/// What `usage_totals` groups by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageGroup {
    Day,
    User,
    Key,
    Account,
    Model,
}

/// Requests and cost of one group (a model, a user or a key) on one day: the usage charts.
#[derive(Clone, Debug, Default, sqlx::FromRow)]
pub struct DayGroupTotal {
    pub day: String,
    /// The model; empty when grouped by an id.
    pub label: String,
    /// The user or key id; 0 when grouped by model.
    pub id: i64,
    pub requests: i64,
    pub cost: i64,
}

impl DayGroupTotal {
    /// What identifies the group: the model, or the id (two keys may share a name).
    pub fn key(&self) -> String {
        if self.label.is_empty() {
            self.id.to_string()
        } else {
            self.label.clone()
        }
    }
}

/// The label column, id column, GROUP BY and ORDER BY of a `usage_daily` grouping.
fn group_columns(group: UsageGroup) -> (&'static str, &'static str, &'static str, &'static str) {
    match group {
        UsageGroup::Day => ("day", "CAST(0 AS SIGNED)", "day", "day"),
        UsageGroup::Model => ("model", "CAST(0 AS SIGNED)", "model", "cost DESC, model"),
        UsageGroup::User => ("''", "user_id", "user_id", "cost DESC, user_id"),
        UsageGroup::Key => ("''", "api_key_id", "api_key_id", "cost DESC, api_key_id"),
        UsageGroup::Account => ("''", "account_id", "account_id", "cost DESC, account_id"),
    }
}

#[derive(Clone, Copy, Debug, Default, sqlx::FromRow)]
pub struct Counts {
    pub users: i64,
    pub active_keys: i64,
    pub active_accounts: i64,
    pub active_packages: i64,
}

impl Db {
    /// One page of users by id, optionally those whose username contains `search`.
    pub async fn users_page(
        &self,
        search: Option<&str>,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<User>> {
        let pattern = search.map(super::like_pattern);
        let sql = "SELECT id, username, role, password_hash, status, max_concurrency, \
             created_at, updated_at \
             FROM users WHERE (? IS NULL OR username LIKE ? ESCAPE '!') \
             ORDER BY id LIMIT ? OFFSET ?";
        Ok(on_db!(self, |p| sqlx::query_as(sql)
            .bind(pattern.as_deref())
            .bind(pattern.as_deref())
            .bind(limit)
            .bind(offset)
            .fetch_all(p)
            .await)?)
    }

    pub async fn key_counts(&self, user_ids: &[i64]) -> Result<Vec<KeyCount>> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT user_id, \
             CAST(COALESCE(SUM(CASE WHEN status = ? THEN 1 ELSE 0 END), 0) AS SIGNED) \
             AS active, COUNT(*) AS total FROM api_keys WHERE user_id IN ({}) GROUP BY user_id",
            placeholders(user_ids.len())
        );
        Ok(on_db!(self, |p| {
            let mut q = sqlx::query_as(&sql).bind(KeyStatus::Active);
            for id in user_ids {
                q = q.bind(*id);
            }
            q.fetch_all(p).await
        })?)
    }

    /// (id, username) of these users.
    pub async fn user_names(&self, ids: &[i64]) -> Result<Vec<(i64, String)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT id, username FROM users WHERE id IN ({})",
            placeholders(ids.len())
        );
        Ok(on_db!(self, |p| {
            let mut q = sqlx::query_as(&sql);
            for id in ids {
                q = q.bind(*id);
            }
            q.fetch_all(p).await
        })?)
    }

    /// (id, username) of the first `limit` users by name, for filters.
    pub async fn user_options(&self, limit: i64) -> Result<Vec<(i64, String)>> {
        Ok(on_db!(self, |p| sqlx::query_as(
            "SELECT id, username FROM users ORDER BY username, id LIMIT ?"
        )
        .bind(limit)
        .fetch_all(p)
        .await)?)
    }

    /// Labels of these keys, or (with `None`) of the first `limit` keys by id.
    pub async fn key_labels(&self, ids: Option<&[i64]>, limit: i64) -> Result<Vec<KeyLabel>> {
        const COLS: &str = "id, user_id, name, key_prefix";
        match ids {
            Some([]) => Ok(Vec::new()),
            Some(ids) => {
                let sql = format!(
                    "SELECT {COLS} FROM api_keys WHERE id IN ({}) ORDER BY id",
                    placeholders(ids.len())
                );
                Ok(on_db!(self, |p| {
                    let mut q = sqlx::query_as(&sql);
                    for id in ids {
                        q = q.bind(*id);
                    }
                    q.fetch_all(p).await
                })?)
            }
            None => {
                let sql = format!("SELECT {COLS} FROM api_keys ORDER BY id LIMIT ?");
                Ok(on_db!(self, |p| sqlx::query_as(&sql)
                    .bind(limit)
                    .fetch_all(p)
                    .await)?)
            }
        }
    }

    /// Usage of `usage_daily` rows matching `f`, summed per `group`, largest cost first (by
    /// day: oldest day first).
    pub async fn usage_totals(
        &self,
        f: &UsageFilter,
        group: UsageGroup,
        limit: i64,
    ) -> Result<Vec<UsageTotal>> {
        let (label, id, by, order) = group_columns(group);
        let sql = format!(
            "SELECT {label} AS label, {id} AS id, {}, {}, {}, {}, {}, {} FROM usage_daily \
             WHERE {USAGE_FILTER_SQL} GROUP BY {by} ORDER BY {order} LIMIT ?",
            sum("requests"),
            sum("cost"),
            sum("input_tokens"),
            sum("output_tokens"),
            sum("cache_read_tokens"),
            sum("cache_write_tokens"),
        );
        Ok(on_db!(self, |p| bind_usage_filter!(
            sqlx::query_as(&sql),
            f
        )
        .bind(limit)
        .fetch_all(p)
        .await)?)
    }

    /// Requests and cost of `usage_daily` rows matching `f`, per day and `group` (oldest day
    /// first), at most `limit` rows.
    pub async fn usage_by_day_and(
        &self,
        f: &UsageFilter,
        group: UsageGroup,
        limit: i64,
    ) -> Result<Vec<DayGroupTotal>> {
        let (label, id, by, _) = group_columns(group);
        let sql = format!(
            "SELECT day, {label} AS label, {id} AS id, {}, {} FROM usage_daily \
             WHERE {USAGE_FILTER_SQL} GROUP BY day, {by} ORDER BY day, {by} LIMIT ?",
            sum("requests"),
            sum("cost"),
        );
        Ok(on_db!(self, |p| bind_usage_filter!(
            sqlx::query_as(&sql),
            f
        )
        .bind(limit)
        .fetch_all(p)
        .await)?)
    }

    /// Counts for the dashboard; `now` decides which grants are active.
    pub async fn counts(&self, now: i64) -> Result<Counts> {
        Ok(on_db!(self, |p| sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM users) AS users, \
             (SELECT COUNT(*) FROM api_keys WHERE status = ?) AS active_keys, \
             (SELECT COUNT(*) FROM accounts WHERE status = ?) AS active_accounts, \
             (SELECT COUNT(*) FROM user_packages WHERE status = ? AND starts_at <= ? \
              AND expires_at > ?) AS active_packages"
        )
        .bind(KeyStatus::Active)
        .bind(AccountStatus::Active)
        .bind(GrantStatus::Active)
        .bind(now)
        .bind(now)
        .fetch_one(p)
        .await)?)
    }
}
