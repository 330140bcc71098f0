//! Admin web sessions. Only the SHA-256 of a session id is stored.

use super::{execute, on_db, Db, Result};

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Session {
    pub id_hash: String,
    pub user_id: i64,
    pub csrf_token: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
}

impl Db {
    pub async fn create_session(&self, s: &Session) -> Result<()> {
        execute!(self, sqlx::query(
            "INSERT INTO admin_sessions (id_hash, user_id, csrf_token, created_at, last_seen_at, \
             expires_at) VALUES (?, ?, ?, ?, ?, ?)"
        )
        .bind(&s.id_hash)
        .bind(s.user_id)
        .bind(&s.csrf_token)
        .bind(s.created_at)
        .bind(s.last_seen_at)
        .bind(s.expires_at))?;
        Ok(())
    }

    pub async fn get_session(&self, id_hash: &str) -> Result<Option<Session>> {
        Ok(on_db!(self, |p| sqlx::query_as(
            "SELECT id_hash, user_id, csrf_token, created_at, last_seen_at, expires_at \
             FROM admin_sessions WHERE id_hash = ?"
        )
        .bind(id_hash)
        .fetch_optional(p)
        .await)?)
    }

    pub async fn touch_session(&self, id_hash: &str, now: i64) -> Result<()> {
        execute!(
            self,
            sqlx::query("UPDATE admin_sessions SET last_seen_at = ? WHERE id_hash = ?")
                .bind(now)
                .bind(id_hash)
        )?;
        Ok(())
    }

    pub async fn delete_session(&self, id_hash: &str) -> Result<()> {
        execute!(
            self,
            sqlx::query("DELETE FROM admin_sessions WHERE id_hash = ?").bind(id_hash)
        )?;
        Ok(())
    }

    /// Delete sessions past their absolute expiry (`expires_at <= now`) or idle since before
    /// `idle_before`.
    pub async fn delete_stale_sessions(&self, now: i64, idle_before: i64) -> Result<u64> {
        Ok(execute!(
            self,
            sqlx::query("DELETE FROM admin_sessions WHERE expires_at <= ? OR last_seen_at < ?")
                .bind(now)
                .bind(idle_before)
        )?)
    }
}
