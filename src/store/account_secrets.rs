//! Account secrets through the store's sealer (`secrets::at_rest`): sealed on every write,
//! opened on every read, and re-sealed in bulk on the first start with a key and by
//! `tollgate secrets rotate`.

use super::accounts::Account;
use super::{on_db, Db, Pool, Result, StoreError};
use crate::config::Secret;
use crate::secrets::at_rest::{is_sealed, SealError, Sealer};

/// What a bulk re-seal found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resealed {
    /// Rows rewritten.
    pub rewritten: usize,
    /// Rows left as they were.
    pub kept: usize,
}

fn seal_error(id: i64, e: SealError) -> StoreError {
    StoreError::Config(format!("account {id}: {e}"))
}

impl Db {
    /// The stored form of an account secret.
    pub(crate) fn seal_secret(&self, s: &Secret) -> String {
        self.secrets().seal(s.expose())
    }

    /// An account row as read, with its secret opened.
    pub(crate) fn opened(&self, mut a: Account) -> Result<Account> {
        a.secret = self
            .secrets()
            .open(a.secret.expose())
            .map_err(|e| seal_error(a.id, e))?;
        Ok(a)
    }

    pub(crate) fn all_opened(&self, rows: Vec<Account>) -> Result<Vec<Account>> {
        rows.into_iter().map(|a| self.opened(a)).collect()
    }

    /// Every account's secret column as stored: (id, stored text).
    pub async fn stored_secrets(&self) -> Result<Vec<(i64, String)>> {
        let sql = "SELECT id, secret FROM accounts ORDER BY id";
        Ok(on_db!(self, |p| sqlx::query_as(sql).fetch_all(p).await)?)
    }

    /// Check that every sealed secret opens with this store's sealer (a wrong or missing
    /// `secrets.key` names the first account it cannot open).
    pub async fn check_secrets(&self) -> Result<()> {
        for (id, stored) in self.stored_secrets().await? {
            if is_sealed(&stored) {
                self.secrets()
                    .open(&stored)
                    .map_err(|e| seal_error(id, e))?;
            }
        }
        Ok(())
    }

    /// Re-seal account secrets in one transaction: open each with this store's sealer and
    /// store it sealed by `to`. With `only_plaintext`, sealed rows are left alone (the first
    /// start with a key). A row changed meanwhile by another writer is left to it.
    ///
    /// On SQLite the rewrite runs with `secure_delete` and the WAL is truncated afterwards, so
    /// the plaintext a row held is overwritten in the file rather than left in a free page.
    pub async fn reseal_secrets(&self, to: &Sealer, only_plaintext: bool) -> Result<Resealed> {
        let rows = self.stored_secrets().await?;
        let mut out = Resealed::default();
        let mut changes = Vec::new();
        for (id, stored) in rows {
            if only_plaintext && is_sealed(&stored) {
                out.kept += 1;
                continue;
            }
            let plain = self
                .secrets()
                .open(&stored)
                .map_err(|e| seal_error(id, e))?;
            changes.push((id, stored, to.seal(plain.expose())));
        }
        if changes.is_empty() {
            return Ok(out);
        }
        const UPDATE: &str = "UPDATE accounts SET secret = ? WHERE id = ? AND secret = ?";
        let rewritten = match self.pool() {
            Pool::Sqlite(p) => {
                use sqlx::Acquire;
                let mut conn = p.acquire().await?;
                sqlx::query("PRAGMA secure_delete = ON")
                    .execute(&mut *conn)
                    .await?;
                let mut n = 0;
                let mut tx = conn.begin().await?;
                for (id, old, new) in &changes {
                    n += sqlx::query(UPDATE)
                        .bind(new)
                        .bind(id)
                        .bind(old)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                tx.commit().await?;
                sqlx::query("PRAGMA secure_delete = OFF")
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(&mut *conn)
                    .await?;
                n
            }
            Pool::MySql(p) => {
                let mut n = 0;
                let mut tx = p.begin().await?;
                for (id, old, new) in &changes {
                    n += sqlx::query(UPDATE)
                        .bind(new)
                        .bind(id)
                        .bind(old)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                tx.commit().await?;
                n
            }
        };
        out.rewritten = rewritten as usize;
        out.kept += changes.len() - out.rewritten;
        Ok(out)
    }
}
