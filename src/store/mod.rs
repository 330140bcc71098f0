//! The store: the only place SQL lives. One façade over a SQLite or a MySQL pool, chosen by the
//! URL scheme. Queries are runtime `query`/`query_as` with `?` placeholders shared by both
//! dialects; only upserts, insert ids and DDL differ.
//!
//! Money columns are integer nano-dollars; time columns are Unix milliseconds (UTC), so
//! comparisons and sums are exact and identical on both databases.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use crate::config::{db_kind_of, DbKind};
use crate::secrets::at_rest::Sealer;

pub mod account_secrets;
pub mod accounts;
pub mod audit;
pub mod keys;
pub mod outage;
pub mod packages;
pub mod pricing;
pub mod sessions;
pub mod settle;
pub mod usage;
pub mod users;
pub mod views;

/// The store: a pool, and the sealer that account secrets pass through on their way in and
/// out (so every read and write of a secret is encrypted or decrypted in one place).
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    /// Where settlement runs. On SQLite a connection of its own: the pool hands out its
    /// connections in turn, and each write empties every other connection's page cache, so a
    /// settlement on a pooled connection read its B-tree paths back from the WAL every batch
    /// (~40 `pread64` a batch, 0.19 an answer). On MySQL the same pool.
    settle_pool: Pool,
    secrets: Sealer,
    /// Bound on one request-path read (`database.statement_timeout_ms`).
    statement_timeout: Duration,
    outage: std::sync::Arc<outage::OutageLog>,
}

#[derive(Clone)]
pub enum Pool {
    Sqlite(SqlitePool),
    MySql(MySqlPool),
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.pool {
            Pool::Sqlite(_) => "Db::Sqlite",
            Pool::MySql(_) => "Db::MySql",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("already exists")]
    Conflict,
    #[error("database error: {0}")]
    Db(sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Config(String),
    #[error("no answer from the database within {0} ms")]
    Timeout(u64),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict,
            _ => StoreError::Db(e),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Run the same expression against whichever pool backs the store; inside, `$p` is the typed
/// pool, so the query's database type is inferred per arm.
macro_rules! on_db {
    ($db:expr, |$p:ident| $body:expr) => {
        $crate::store::on_db!(pool: $db.pool(), |$p| $body)
    };
    (pool: $pool:expr, |$p:ident| $body:expr) => {
        match $pool {
            $crate::store::Pool::Sqlite($p) => $body,
            $crate::store::Pool::MySql($p) => $body,
        }
    };
}
pub(crate) use on_db;

/// Execute a statement on either database; evaluates to the number of rows affected.
macro_rules! execute {
    ($db:expr, $q:expr) => {
        match $db.pool() {
            $crate::store::Pool::Sqlite(p) => $q.execute(p).await.map(|r| r.rows_affected()),
            $crate::store::Pool::MySql(p) => $q.execute(p).await.map(|r| r.rows_affected()),
        }
    };
}
pub(crate) use execute;

/// Execute an INSERT and return the new row's id on either database.
macro_rules! insert_id {
    ($db:expr, $q:expr) => {
        match $db.pool() {
            $crate::store::Pool::Sqlite(p) => $q.execute(p).await?.last_insert_rowid(),
            $crate::store::Pool::MySql(p) => $q.execute(p).await?.last_insert_id() as i64,
        }
    };
}
pub(crate) use insert_id;

impl Db {
    /// Connect by URL scheme (`sqlite:` or `mysql://`). SQLite: the file and its folder are
    /// created if missing; WAL, foreign keys on, a busy timeout.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Db> {
        Self::connect_with_timeout(url, max_connections, Duration::from_secs(10)).await
    }

    /// [`Db::connect`] with a bound on waiting for a connection (`acquire_timeout`, which
    /// includes the liveness check of an idle connection, so a hung database fails fast).
    pub async fn connect_with_timeout(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Db> {
        match db_kind_of(url).map_err(|e| StoreError::Config(e.to_string()))? {
            DbKind::Sqlite => {
                let opts = SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(10))
                    .pragma("temp_store", "memory");
                if let Some(dir) = Path::new(opts.get_filename()).parent() {
                    if !dir.as_os_str().is_empty() {
                        std::fs::create_dir_all(dir).map_err(|e| {
                            StoreError::Config(format!(
                                "`database.url`: cannot create folder {}: {e}",
                                dir.display()
                            ))
                        })?;
                    }
                }
                let pool = SqlitePoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(acquire_timeout)
                    .connect_with(opts.clone())
                    .await?;
                let settle_pool = SqlitePoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(acquire_timeout)
                    .connect_with(opts)
                    .await?;
                let mut db = Db::new(Pool::Sqlite(pool));
                db.settle_pool = Pool::Sqlite(settle_pool);
                Ok(db)
            }
            DbKind::MySql => {
                let url = url.replacen("mariadb://", "mysql://", 1);
                let pool = MySqlPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(acquire_timeout)
                    .connect(&url)
                    .await?;
                Ok(Db::new(Pool::MySql(pool)))
            }
        }
    }

    fn new(pool: Pool) -> Db {
        Db {
            settle_pool: pool.clone(),
            pool,
            secrets: Sealer::plaintext(),
            statement_timeout: Duration::from_millis(
                crate::config::DatabaseConfig::default().statement_timeout_ms,
            ),
            outage: Default::default(),
        }
    }

    /// The same store, bounding request-path reads by `timeout`.
    pub fn with_statement_timeout(mut self, timeout: Duration) -> Db {
        self.statement_timeout = timeout;
        self
    }

    /// The typed pool, for code that runs its own SQL (tests).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The same store, sealing and opening account secrets with `secrets`.
    pub fn with_secrets(mut self, secrets: Sealer) -> Db {
        self.secrets = secrets;
        self
    }

    pub fn secrets(&self) -> &Sealer {
        &self.secrets
    }

    pub fn kind(&self) -> DbKind {
        match self.pool {
            Pool::Sqlite(_) => DbKind::Sqlite,
            Pool::MySql(_) => DbKind::MySql,
        }
    }

    /// Apply the embedded migrations of this backend.
    pub async fn migrate(&self) -> Result<()> {
        match &self.pool {
            Pool::Sqlite(p) => sqlx::migrate!("migrations/sqlite").run(p).await?,
            Pool::MySql(p) => sqlx::migrate!("migrations/mysql").run(p).await?,
        }
        Ok(())
    }

    /// The database answers a trivial query.
    pub async fn ping(&self) -> Result<()> {
        execute!(self, sqlx::query("SELECT 1"))?;
        Ok(())
    }

    /// (connections in the pool, idle connections)
    pub fn pool_usage(&self) -> (u32, usize) {
        on_db!(self, |p| (p.size(), p.num_idle()))
    }

    pub async fn close(&self) {
        on_db!(self, |p| p.close().await);
        // On MySQL the same pool, already closed (closing again returns at once).
        on_db!(pool: &self.settle_pool, |p| p.close().await)
    }
}

/// `?, ?, ?` for an IN list of `n` values.
pub(crate) fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 3);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s
}

/// Serialise a list column (allowed models, served models) as a JSON array; empty = NULL.
pub(crate) fn list_to_column(v: &[String]) -> Option<String> {
    if v.is_empty() {
        None
    } else {
        serde_json::to_string(v).ok()
    }
}

pub(crate) fn column_to_list(v: &Option<String>) -> Vec<String> {
    v.as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default()
}

/// Serde helpers for row structs: Unix ms → RFC 3339 in JSON.
pub mod ser {
    use serde::Serializer;

    /// Always the `Z` form, as chrono's own serde of `DateTime<Utc>` writes it, so the API
    /// has one timestamp style (`+00:00` and `Z` mixed confuse clients that compare strings).
    pub fn ms<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::clock::rfc3339(*v))
    }

    pub fn opt_ms<S: Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => ms(v, s),
            None => s.serialize_none(),
        }
    }

    pub fn usd<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&crate::billing::money::Usd(*v))
    }

    pub fn opt_usd<S: Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => usd(v, s),
            None => s.serialize_none(),
        }
    }

    pub fn list<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        use serde::Serialize;
        super::column_to_list(v).serialize(s)
    }

    /// A JSON-list column that may be NULL: the list, or `null`.
    pub fn opt_list<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        use serde::Serialize;
        match v {
            None => s.serialize_none(),
            Some(_) => super::column_to_list(v).serialize(s),
        }
    }

    pub fn boolean<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(*v != 0)
    }
}

/// A LIKE pattern matching `s` anywhere, with `!` as the escape character (portable: MySQL
/// treats a backslash in a string literal as an escape of its own).
pub(crate) fn like_pattern(s: &str) -> String {
    let escaped = s.replace('!', "!!").replace('%', "!%").replace('_', "!_");
    format!("%{escaped}%")
}
