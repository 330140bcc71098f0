//! `GET /api/admin/audit`: the audit log, newest first, by id cursor.

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use super::{id_page, PageQuery};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::audit::{AuditFilter, SOURCES};

#[derive(Deserialize)]
pub struct AuditQuery {
    actor: Option<String>,
    source: Option<String>,
    path: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

pub async fn list(
    State(st): State<AppState>,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(crate::error::query_rejection)?;
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    };
    let limit = page.limit()?;
    let f = AuditFilter {
        actor: nonempty(q.actor),
        source: match nonempty(q.source) {
            Some(s) if !SOURCES.contains(&s.as_str()) => {
                return Err(ApiError::invalid(
                    "source",
                    format!("must be one of {}", SOURCES.join(", ")),
                ))
            }
            s => s,
        },
        path: nonempty(q.path),
        before: page.id_cursor()?,
    };
    let rows = st.db.audit_page(&f, limit).await?;
    Ok(Json(id_page(rows, limit, |r| r.id)))
}

fn nonempty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}
