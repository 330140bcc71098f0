//! The package catalogue: create, disable, enable.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Form;
use serde::Deserialize;

use super::view::{self, form_int, form_money, FormValues, Money, StatusForm};
use super::{format, render, respond, see_other, Ctx, PageError};
use crate::admin;
use crate::domain::CatalogueStatus;
use crate::state::AppState;

struct Row {
    id: i64,
    name: String,
    kind: &'static str,
    daily: Money,
    weekly: Money,
    monthly: Money,
    total: Money,
    duration_days: i64,
    active: bool,
    status_label: &'static str,
    created: String,
}

#[derive(askama::Template)]
#[template(path = "admin/packages.html")]
struct PackagesPage {
    ctx: Ctx,
    rows: Vec<Row>,
    form: FormValues,
}

pub async fn list(State(st): State<AppState>, ctx: Ctx) -> Response {
    let lang = ctx.tr.lang;
    respond(
        &st,
        lang,
        page(&st, ctx, FormValues::default(), StatusCode::OK).await,
    )
}

async fn page(
    st: &AppState,
    mut ctx: Ctx,
    form: FormValues,
    status: StatusCode,
) -> Result<Response, PageError> {
    let tr = ctx.tr;
    let opt = |v: Option<i64>| Money::opt(v.map(crate::billing::money::Usd));
    let rows = st
        .db
        .list_packages(None, 1000)
        .await?
        .into_iter()
        .map(|p| Row {
            id: p.id,
            kind: view::kind_label(tr, p.kind.as_str()),
            daily: opt(p.daily_quota),
            weekly: opt(p.weekly_quota),
            monthly: opt(p.monthly_quota),
            total: opt(p.quota_total),
            duration_days: p.duration_days,
            active: p.status == CatalogueStatus::Active,
            status_label: view::status_label(tr, p.status.as_str()),
            created: format::time(p.created_at, st.tz),
            name: p.name,
        })
        .collect();
    ctx.section = "packages";
    ctx.here = "/admin/packages".into();
    Ok(render(status, &PackagesPage { ctx, rows, form }))
}

#[derive(Deserialize)]
pub struct NewPackage {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    daily_quota: Option<String>,
    weekly_quota: Option<String>,
    monthly_quota: Option<String>,
    quota_total: Option<String>,
    duration_days: Option<String>,
}

pub async fn create(
    State(st): State<AppState>,
    mut ctx: Ctx,
    Form(f): Form<NewPackage>,
) -> Response {
    let values = FormValues::from_pairs([
        ("name", f.name.as_ref()),
        ("type", f.kind.as_ref()),
        ("daily_quota", f.daily_quota.as_ref()),
        ("weekly_quota", f.weekly_quota.as_ref()),
        ("monthly_quota", f.monthly_quota.as_ref()),
        ("quota_total", f.quota_total.as_ref()),
        ("duration_days", f.duration_days.as_ref()),
    ]);
    let tr = ctx.tr;
    let lang = tr.lang;
    let checked = (|| -> Result<admin::NewPackage, String> {
        let money = |field, v: &Option<String>| form_money(tr, field, v.as_deref());
        Ok(admin::NewPackage {
            name: f.name.clone().unwrap_or_default(),
            kind: f.kind.clone().unwrap_or_default(),
            daily_quota: money("daily_quota", &f.daily_quota)?,
            weekly_quota: money("weekly_quota", &f.weekly_quota)?,
            monthly_quota: money("monthly_quota", &f.monthly_quota)?,
            quota_total: money("quota_total", &f.quota_total)?,
            duration_days: form_int(tr, "duration_days", f.duration_days.as_deref())?.unwrap_or(0),
        })
    })();
    let new = match checked {
        Ok(p) => p,
        Err(msg) => {
            ctx.set_error(msg);
            return respond(
                &st,
                lang,
                page(&st, ctx, values, StatusCode::UNPROCESSABLE_ENTITY).await,
            );
        }
    };
    match admin::create_package(&st, new).await {
        Ok(_) => see_other("/admin/packages", "package_created"),
        Err(e) => {
            let (lang, status) = ctx.fail(&e);
            respond(&st, lang, page(&st, ctx, values, status).await)
        }
    }
}

pub async fn set_status(
    State(st): State<AppState>,
    mut ctx: Ctx,
    Path(id): Path<i64>,
    Form(f): Form<StatusForm>,
) -> Response {
    let status = f.status.unwrap_or_default();
    match admin::set_package_status(&st, id, &status).await {
        Ok(_) => see_other("/admin/packages", "package_updated"),
        Err(e) => {
            let (lang, status) = ctx.fail(&e);
            respond(
                &st,
                lang,
                page(&st, ctx, FormValues::default(), status).await,
            )
        }
    }
}
