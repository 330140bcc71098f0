//! The audit log: one row per admin write that succeeded and per sign-in attempt, newest first.

use serde::Serialize;

use super::{insert_id, on_db, ser, Db, Result};

/// Where an audited action came from.
pub const SOURCES: &[&str] = &["api", "ui", "login"];

/// One audited action, as written (`fields` is a JSON object with secrets already masked).
#[derive(Clone, Debug, sqlx::FromRow, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    #[serde(serialize_with = "ser::ms")]
    pub created_at: i64,
    /// The admin's user id; none for the admin token or a failed sign-in.
    pub actor_user_id: Option<i64>,
    /// The admin's username, `admin-token`, or the username typed at sign-in.
    pub actor: String,
    /// `api`, `ui` or `login`.
    pub source: String,
    pub method: String,
    /// The route pattern, such as `/api/admin/users/{id}`.
    pub route: String,
    pub path: String,
    /// The id of the object written: the path's, or the new object's.
    pub target: Option<String>,
    #[serde(serialize_with = "fields_json")]
    pub fields: String,
    pub status: i64,
    /// `success`, `failure` or `throttled` (the last two only for sign-ins).
    pub outcome: String,
}

fn fields_json<S: serde::Serializer>(v: &str, s: S) -> std::result::Result<S::Ok, S::Error> {
    let parsed: serde_json::Value =
        serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
    parsed.serialize(s)
}

/// Which rows [`Db::audit_page`] returns.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub source: Option<String>,
    /// Rows whose path contains this.
    pub path: Option<String>,
    /// The id of the last row of the previous page.
    pub before: Option<i64>,
}

const COLS: &str = "id, created_at, actor_user_id, actor, source, method, route, path, target, \
    fields, status, outcome";

impl Db {
    /// Append an entry (its `id` is ignored); the new id.
    pub async fn insert_audit(&self, e: &AuditEntry) -> Result<i64> {
        const SQL: &str = "INSERT INTO audit_log (created_at, actor_user_id, actor, source, \
            method, route, path, target, fields, status, outcome) \
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
        Ok(insert_id!(
            self,
            sqlx::query(SQL)
                .bind(e.created_at)
                .bind(e.actor_user_id)
                .bind(&e.actor)
                .bind(&e.source)
                .bind(&e.method)
                .bind(&e.route)
                .bind(&e.path)
                .bind(e.target.as_deref())
                .bind(&e.fields)
                .bind(e.status)
                .bind(&e.outcome)
        ))
    }

    /// Entries matching `f`, newest first.
    pub async fn audit_page(&self, f: &AuditFilter, limit: i64) -> Result<Vec<AuditEntry>> {
        let pattern = f.path.as_deref().map(super::like_pattern);
        let sql = format!(
            "SELECT {COLS} FROM audit_log WHERE (? IS NULL OR actor = ?) \
             AND (? IS NULL OR source = ?) AND (? IS NULL OR path LIKE ? ESCAPE '!') \
             AND (? IS NULL OR id < ?) ORDER BY id DESC LIMIT ?"
        );
        Ok(on_db!(self, |p| sqlx::query_as(&sql)
            .bind(f.actor.as_deref())
            .bind(f.actor.as_deref())
            .bind(f.source.as_deref())
            .bind(f.source.as_deref())
            .bind(pattern.as_deref())
            .bind(pattern.as_deref())
            .bind(f.before)
            .bind(f.before)
            .bind(limit)
            .fetch_all(p)
            .await)?)
    }
}
