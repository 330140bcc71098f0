//! API keys. Only the SHA-256 of a secret is stored; lookups go by that hash.

use serde::Serialize;

use super::{column_to_list, execute, insert_id, list_to_column, on_db, ser, Db, Result};
use crate::domain::{KeyStatus, UserStatus};

#[derive(Clone, Debug, sqlx::FromRow, Serialize)]
pub struct ApiKey {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub key_prefix: String,
    #[serde(skip)]
    pub key_hash: String,
    pub status: KeyStatus,
    #[serde(serialize_with = "ser::opt_ms")]
    pub expires_at: Option<i64>,
    #[serde(serialize_with = "ser::list")]
    pub allowed_models: Option<String>,
    pub rpm_limit: Option<i64>,
    pub tpm_limit: Option<i64>,
    /// A JSON list of CIDR ranges, or NULL: any address (SPEC §11.3).
    #[serde(serialize_with = "ser::opt_list")]
    pub allowed_ips: Option<String>,
    /// At most this many requests in flight at once (SPEC §11.3); None = no cap.
    pub max_concurrency: Option<i64>,
    #[serde(serialize_with = "ser::usd")]
    pub used_cost: i64,
    pub request_count: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    #[serde(serialize_with = "ser::opt_ms")]
    pub last_used_at: Option<i64>,
    #[serde(serialize_with = "ser::ms")]
    pub created_at: i64,
    #[serde(serialize_with = "ser::ms")]
    pub updated_at: i64,
    /// Its budgets and their counters (SPEC §11.3).
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub budget: KeyBudget,
}

/// A key's spending limits (nano-dollars; None = no limit) and the counters they are checked
/// against: per window the used amount and the start (Unix ms) of the window it belongs to,
/// rolled lazily like packages' (`billing::key_budget`). The total limit is checked against the
/// key's lifetime `used_cost`. In JSON only the limits; the windows as of now are added by
/// `billing::key_budget::status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, sqlx::FromRow, Serialize)]
pub struct KeyBudget {
    #[serde(serialize_with = "ser::opt_usd")]
    pub daily_limit: Option<i64>,
    #[serde(serialize_with = "ser::opt_usd")]
    pub weekly_limit: Option<i64>,
    #[serde(serialize_with = "ser::opt_usd")]
    pub monthly_limit: Option<i64>,
    #[serde(serialize_with = "ser::opt_usd")]
    pub total_limit: Option<i64>,
    #[serde(skip)]
    pub daily_used: i64,
    #[serde(skip)]
    pub weekly_used: i64,
    #[serde(skip)]
    pub monthly_used: i64,
    #[serde(skip)]
    pub daily_window_start: Option<i64>,
    #[serde(skip)]
    pub weekly_window_start: Option<i64>,
    #[serde(skip)]
    pub monthly_window_start: Option<i64>,
}

/// The four limits of a key, as set by an admin (nano-dollars; None = no limit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyLimits {
    pub daily_limit: Option<i64>,
    pub weekly_limit: Option<i64>,
    pub monthly_limit: Option<i64>,
    pub total_limit: Option<i64>,
}

impl KeyLimits {
    pub fn any(&self) -> bool {
        self.daily_limit.is_some()
            || self.weekly_limit.is_some()
            || self.monthly_limit.is_some()
            || self.total_limit.is_some()
    }
}

/// What admission checks a budgeted key against: its budget, lifetime cost and anchor.
#[derive(Clone, Debug, Default, sqlx::FromRow)]
pub struct KeyBudgetState {
    pub used_cost: i64,
    pub created_at: i64,
    #[sqlx(flatten)]
    pub budget: KeyBudget,
}

const BUDGET_COLS: &str = "daily_limit, weekly_limit, monthly_limit, total_limit, daily_used, \
    weekly_used, monthly_used, daily_window_start, weekly_window_start, monthly_window_start";

impl ApiKey {
    pub fn allowed_models(&self) -> Vec<String> {
        column_to_list(&self.allowed_models)
    }
}

/// What the proxy needs to authenticate a request: the key and its user's status.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct KeyAuth {
    pub id: i64,
    pub user_id: i64,
    pub status: KeyStatus,
    pub expires_at: Option<i64>,
    pub allowed_models: Option<String>,
    pub rpm_limit: Option<i64>,
    pub tpm_limit: Option<i64>,
    pub allowed_ips: Option<String>,
    pub user_status: UserStatus,
    /// The anchor of its weekly and monthly budget windows.
    pub created_at: i64,
    #[sqlx(flatten)]
    pub limits: KeyLimits,
    /// The key's and its user's concurrency caps.
    pub max_concurrency: Option<i64>,
    pub user_max_concurrency: Option<i64>,
    /// The key's visible prefix, for the access log (never the secret).
    pub key_prefix: String,
}

pub struct NewKey<'a> {
    pub user_id: i64,
    pub name: &'a str,
    pub key_prefix: &'a str,
    pub key_hash: &'a str,
    pub expires_at: Option<i64>,
    pub allowed_models: &'a [String],
    pub rpm_limit: Option<i64>,
    pub tpm_limit: Option<i64>,
    /// Normalised CIDR ranges; empty: any address.
    pub allowed_ips: &'a [String],
    pub limits: KeyLimits,
    pub max_concurrency: Option<i64>,
}

const COLS: &str = "id, user_id, name, key_prefix, key_hash, status, expires_at, allowed_models, \
    rpm_limit, tpm_limit, allowed_ips, max_concurrency, used_cost, request_count, input_tokens, \
    output_tokens, \
    cache_read_tokens, cache_write_tokens, last_used_at, created_at, updated_at";

impl Db {
    pub async fn create_key(&self, k: &NewKey<'_>, now: i64) -> Result<ApiKey> {
        let id = insert_id!(
            self,
            sqlx::query(
                "INSERT INTO api_keys (user_id, name, key_prefix, key_hash, status, expires_at, \
                 allowed_models, rpm_limit, tpm_limit, allowed_ips, max_concurrency, created_at, \
                 updated_at, daily_limit, weekly_limit, monthly_limit, total_limit) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            )
            .bind(k.user_id)
            .bind(k.name)
            .bind(k.key_prefix)
            .bind(k.key_hash)
            .bind(KeyStatus::Active)
            .bind(k.expires_at)
            .bind(list_to_column(k.allowed_models))
            .bind(k.rpm_limit)
            .bind(k.tpm_limit)
            .bind(list_to_column(k.allowed_ips))
            .bind(k.max_concurrency)
            .bind(now)
            .bind(now)
            .bind(k.limits.daily_limit)
            .bind(k.limits.weekly_limit)
            .bind(k.limits.monthly_limit)
            .bind(k.limits.total_limit)
        );
        self.get_key(id).await
    }

    pub async fn get_key(&self, id: i64) -> Result<ApiKey> {
        let sql = format!("SELECT {COLS}, {BUDGET_COLS} FROM api_keys WHERE id = ?");
        Ok(on_db!(self, |p| sqlx::query_as(&sql)
            .bind(id)
            .fetch_one(p)
            .await)?)
    }

    /// Keys by id after `cursor`, optionally of one user.
    pub async fn list_keys(
        &self,
        user_id: Option<i64>,
        cursor: Option<i64>,
        limit: i64,
    ) -> Result<Vec<ApiKey>> {
        let sql = format!(
            "SELECT {COLS}, {BUDGET_COLS} FROM api_keys WHERE id > ? AND (? IS NULL OR user_id = ?) \
             ORDER BY id LIMIT ?"
        );
        Ok(on_db!(self, |p| sqlx::query_as(&sql)
            .bind(cursor.unwrap_or(0))
            .bind(user_id)
            .bind(user_id)
            .bind(limit)
            .fetch_all(p)
            .await)?)
    }

    pub async fn set_key_status(&self, id: i64, status: KeyStatus, now: i64) -> Result<ApiKey> {
        execute!(
            self,
            sqlx::query("UPDATE api_keys SET status = ?, updated_at = ? WHERE id = ?")
                .bind(status)
                .bind(now)
                .bind(id)
        )?;
        self.get_key(id).await
    }

    /// Replace a key's IP allow-list (normalised CIDR ranges; empty: any address).
    pub async fn set_key_allowed_ips(&self, id: i64, ips: &[String], now: i64) -> Result<ApiKey> {
        execute!(
            self,
            sqlx::query("UPDATE api_keys SET allowed_ips = ?, updated_at = ? WHERE id = ?")
                .bind(list_to_column(ips))
                .bind(now)
                .bind(id)
        )?;
        self.get_key(id).await
    }

    /// Set (or with None clear) the key's concurrency cap.
    pub async fn set_key_max_concurrency(
        &self,
        id: i64,
        max: Option<i64>,
        now: i64,
    ) -> Result<ApiKey> {
        execute!(
            self,
            sqlx::query("UPDATE api_keys SET max_concurrency = ?, updated_at = ? WHERE id = ?")
                .bind(max)
                .bind(now)
                .bind(id)
        )?;
        self.get_key(id).await
    }

    pub async fn find_key_auth(&self, key_hash: &str) -> Result<Option<KeyAuth>> {
        self.bounded(async {
            Ok(on_db!(self, |p| sqlx::query_as(
                "SELECT k.id, k.user_id, k.status, k.expires_at, k.allowed_models, k.rpm_limit, \
             k.tpm_limit, k.allowed_ips, u.status AS user_status, k.created_at, k.daily_limit, \
             k.weekly_limit, k.monthly_limit, k.total_limit, k.max_concurrency, \
             u.max_concurrency AS user_max_concurrency, k.key_prefix \
             FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.key_hash = ?"
            )
            .bind(key_hash)
            .fetch_optional(p)
            .await)?)
        })
        .await
    }

    /// Set a key's four limits (None = no limit). The counters are kept: a limit set or raised
    /// mid-window is checked against what the window already used.
    pub async fn set_key_limits(&self, id: i64, l: &KeyLimits, now: i64) -> Result<ApiKey> {
        execute!(
            self,
            sqlx::query(
                "UPDATE api_keys SET daily_limit = ?, weekly_limit = ?, monthly_limit = ?, \
                 total_limit = ?, updated_at = ? WHERE id = ?"
            )
            .bind(l.daily_limit)
            .bind(l.weekly_limit)
            .bind(l.monthly_limit)
            .bind(l.total_limit)
            .bind(now)
            .bind(id)
        )?;
        self.get_key(id).await
    }

    /// A key's budget and counters, for admission (None: no such key).
    pub async fn key_budget_state(&self, id: i64) -> Result<Option<KeyBudgetState>> {
        self.bounded(async {
            let sql =
                format!("SELECT used_cost, created_at, {BUDGET_COLS} FROM api_keys WHERE id = ?");
            Ok(on_db!(self, |p| sqlx::query_as(&sql)
                .bind(id)
                .fetch_optional(p)
                .await)?)
        })
        .await
    }
}
