//! Users.

use serde::Serialize;

use super::{execute, insert_id, on_db, ser, Db, Result};
use crate::domain::{Role, UserStatus};

#[derive(Clone, Debug, sqlx::FromRow, Serialize)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub role: Role,
    #[serde(skip)]
    pub password_hash: Option<String>,
    pub status: UserStatus,
    /// At most this many requests of all its keys in flight at once; None = no cap.
    pub max_concurrency: Option<i64>,
    #[serde(serialize_with = "ser::ms")]
    pub created_at: i64,
    #[serde(serialize_with = "ser::ms")]
    pub updated_at: i64,
}

const COLS: &str =
    "id, username, role, password_hash, status, max_concurrency, created_at, updated_at";

impl Db {
    pub async fn create_user(
        &self,
        username: &str,
        role: Role,
        password_hash: Option<&str>,
        now: i64,
    ) -> Result<User> {
        let id = insert_id!(
            self,
            sqlx::query(
                "INSERT INTO users (username, role, password_hash, status, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?)"
            )
            .bind(username)
            .bind(role)
            .bind(password_hash)
            .bind(UserStatus::Active)
            .bind(now)
            .bind(now)
        );
        self.get_user(id).await
    }

    pub async fn get_user(&self, id: i64) -> Result<User> {
        let sql = format!("SELECT {COLS} FROM users WHERE id = ?");
        Ok(on_db!(self, |p| sqlx::query_as(&sql)
            .bind(id)
            .fetch_one(p)
            .await)?)
    }

    pub async fn find_user_by_username(&self, username: &str) -> Result<Option<User>> {
        let sql = format!("SELECT {COLS} FROM users WHERE username = ?");
        Ok(on_db!(self, |p| sqlx::query_as(&sql)
            .bind(username)
            .fetch_optional(p)
            .await)?)
    }

    /// Users ordered by id, after `cursor` (an id), optionally filtered by a username substring.
    pub async fn list_users(
        &self,
        search: Option<&str>,
        cursor: Option<i64>,
        limit: i64,
    ) -> Result<Vec<User>> {
        let pattern = search.map(super::like_pattern);
        let sql = format!(
            "SELECT {COLS} FROM users WHERE id > ? AND (? IS NULL OR username LIKE ? ESCAPE '!') \
             ORDER BY id LIMIT ?"
        );
        Ok(on_db!(self, |p| sqlx::query_as(&sql)
            .bind(cursor.unwrap_or(0))
            .bind(pattern.as_deref())
            .bind(pattern.as_deref())
            .bind(limit)
            .fetch_all(p)
            .await)?)
    }

    pub async fn count_users(&self, search: Option<&str>) -> Result<i64> {
        let pattern = search.map(super::like_pattern);
        let sql = "SELECT COUNT(*) FROM users WHERE (? IS NULL OR username LIKE ? ESCAPE '!')";
        let n: i64 = on_db!(self, |p| sqlx::query_scalar(sql)
            .bind(pattern.as_deref())
            .bind(pattern.as_deref())
            .fetch_one(p)
            .await)?;
        Ok(n)
    }

    pub async fn set_user_status(&self, id: i64, status: UserStatus, now: i64) -> Result<User> {
        execute!(
            self,
            sqlx::query("UPDATE users SET status = ?, updated_at = ? WHERE id = ?")
                .bind(status)
                .bind(now)
                .bind(id)
        )?;
        self.get_user(id).await
    }

    pub async fn set_password_hash(&self, id: i64, hash: &str, now: i64) -> Result<()> {
        execute!(
            self,
            sqlx::query("UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ?")
                .bind(hash)
                .bind(now)
                .bind(id)
        )?;
        Ok(())
    }

    /// Set (or with None clear) the user's concurrency cap.
    pub async fn set_user_max_concurrency(
        &self,
        id: i64,
        max: Option<i64>,
        now: i64,
    ) -> Result<()> {
        execute!(
            self,
            sqlx::query("UPDATE users SET max_concurrency = ?, updated_at = ? WHERE id = ?")
                .bind(max)
                .bind(now)
                .bind(id)
        )?;
        Ok(())
    }

    pub async fn count_admins(&self) -> Result<i64> {
        Ok(on_db!(self, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM users WHERE role = ?"
        )
        .bind(Role::Admin)
        .fetch_one(p)
        .await)?)
    }
}
