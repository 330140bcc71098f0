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
}

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
}

const COLS: &str = "id, user_id, name, key_prefix, key_hash, status, expires_at, allowed_models, \
    rpm_limit, tpm_limit, allowed_ips, used_cost, request_count, input_tokens, output_tokens, \
    cache_read_tokens, cache_write_tokens, last_used_at, created_at, updated_at";

impl Db {
    pub async fn create_key(&self, k: &NewKey<'_>, now: i64) -> Result<ApiKey> {
        let id = insert_id!(
            self,
            sqlx::query(
                "INSERT INTO api_keys (user_id, name, key_prefix, key_hash, status, expires_at, \
                 allowed_models, rpm_limit, tpm_limit, allowed_ips, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
            .bind(now)
            .bind(now)
        );
        self.get_key(id).await
    }

    pub async fn get_key(&self, id: i64) -> Result<ApiKey> {
        let sql = format!("SELECT {COLS} FROM api_keys WHERE id = ?");
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
            "SELECT {COLS} FROM api_keys WHERE id > ? AND (? IS NULL OR user_id = ?) \
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

    pub async fn find_key_auth(&self, key_hash: &str) -> Result<Option<KeyAuth>> {
        Ok(on_db!(self, |p| sqlx::query_as(
            "SELECT k.id, k.user_id, k.status, k.expires_at, k.allowed_models, k.rpm_limit, \
             k.tpm_limit, k.allowed_ips, u.status AS user_status \
             FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.key_hash = ?"
        )
        .bind(key_hash)
        .fetch_optional(p)
        .await)?)
    }
}
