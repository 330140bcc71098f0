//! The audit log page: who changed what and when, newest first, filtered by actor, source
//! and path.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::{format, render, respond, Ctx, PageError};
use crate::state::AppState;
use crate::store::audit::{AuditFilter, SOURCES};

const PER_PAGE: i64 = 50;

#[derive(Default, Deserialize)]
pub struct AuditQuery {
    actor: Option<String>,
    source: Option<String>,
    path: Option<String>,
    before: Option<String>,
}

/// One row as shown.
struct Row {
    id: i64,
    time: String,
    actor: String,
    source: &'static str,
    method: String,
    path: String,
    route: String,
    target: String,
    /// `name=value` pairs of the fields sent (secrets already `***`).
    fields: Vec<(String, String)>,
    status: i64,
    outcome: &'static str,
    failed: bool,
}

#[derive(askama::Template)]
#[template(path = "admin/audit.html")]
struct AuditPage {
    ctx: Ctx,
    rows: Vec<Row>,
    actor: String,
    source: String,
    path: String,
    sources: Vec<(&'static str, &'static str)>,
    first_url: String,
    next_url: String,
}

pub async fn page(State(st): State<AppState>, ctx: Ctx, Query(q): Query<AuditQuery>) -> Response {
    let lang = ctx.tr.lang;
    respond(&st, lang, audit_page(&st, ctx, q).await)
}

fn text(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

async fn audit_page(st: &AppState, mut ctx: Ctx, q: AuditQuery) -> Result<Response, PageError> {
    let before = q.before.as_deref().and_then(|b| b.parse::<i64>().ok());
    let f = AuditFilter {
        actor: text(&q.actor),
        source: text(&q.source).filter(|s| SOURCES.contains(&s.as_str())),
        path: text(&q.path),
        before,
    };
    let entries = st.db.audit_page(&f, PER_PAGE).await?;
    let tr = ctx.tr;
    let rows = entries
        .iter()
        .map(|e| Row {
            id: e.id,
            time: format::time_secs(e.created_at, st.tz),
            actor: e.actor.clone(),
            source: tr.t(source_key(&e.source)),
            method: e.method.clone(),
            path: e.path.clone(),
            route: e.route.clone(),
            target: e.target.clone().unwrap_or_default(),
            fields: field_pairs(&e.fields),
            status: e.status,
            outcome: tr.t(match e.outcome.as_str() {
                "success" => "audit.outcome_success",
                "throttled" => "audit.outcome_throttled",
                _ => "audit.outcome_failure",
            }),
            failed: e.outcome != "success",
        })
        .collect();
    let (actor, source, path) = (
        f.actor.clone().unwrap_or_default(),
        f.source.clone().unwrap_or_default(),
        f.path.clone().unwrap_or_default(),
    );
    let url = |before: String| {
        format!(
            "/admin/audit{}",
            format::query(&[
                ("actor", actor.clone()),
                ("source", source.clone()),
                ("path", path.clone()),
                ("before", before),
            ])
        )
    };
    let next_url = if entries.len() as i64 == PER_PAGE {
        entries
            .last()
            .map(|e| url(e.id.to_string()))
            .unwrap_or_default()
    } else {
        String::new()
    };
    let first_url = if before.is_some() {
        url(String::new())
    } else {
        String::new()
    };
    ctx.section = "audit";
    ctx.here = url(before.map(|b| b.to_string()).unwrap_or_default());
    Ok(render(
        StatusCode::OK,
        &AuditPage {
            ctx,
            rows,
            actor,
            source,
            path,
            sources: SOURCES.iter().map(|s| (*s, source_key(s))).collect(),
            first_url,
            next_url,
        },
    ))
}

fn source_key(source: &str) -> &'static str {
    match source {
        "api" => "audit.source_api",
        "ui" => "audit.source_ui",
        _ => "audit.source_login",
    }
}

/// The recorded fields as `name`, `value` (a string as is, anything else as JSON).
fn field_pairs(fields: &str) -> Vec<(String, String)> {
    let Ok(serde_json::Value::Object(m)) = serde_json::from_str(fields) else {
        return vec![("(body)".into(), fields.to_string())];
    };
    m.into_iter()
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, v)
        })
        .collect()
}
