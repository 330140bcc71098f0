//! Every API key: list (by user), revoke, enable again.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Form;
use serde::Deserialize;

use super::view::{form_money, Key, StatusForm};
use super::{format, render, respond, see_other, Ctx, PageError};
use crate::admin;
use crate::i18n::Tr;
use crate::state::AppState;

const BUDGET_FIELDS: [&str; 4] = [
    "daily_limit",
    "weekly_limit",
    "monthly_limit",
    "total_limit",
];

/// The four budget fields of a key form (empty = no limit), in the page's language on error.
pub fn budget_input(tr: Tr, v: [&Option<String>; 4]) -> Result<admin::BudgetInput, String> {
    let mut out = [None; 4];
    for ((slot, field), v) in out.iter_mut().zip(BUDGET_FIELDS).zip(v) {
        *slot = form_money(tr, field, v.as_deref())?;
    }
    Ok(admin::BudgetInput {
        daily_limit: out[0],
        weekly_limit: out[1],
        monthly_limit: out[2],
        total_limit: out[3],
    })
}

const PER_PAGE: i64 = 100;

#[derive(Default, Deserialize)]
pub struct ListQuery {
    user_id: Option<String>,
    after: Option<String>,
}

#[derive(askama::Template)]
#[template(path = "admin/keys.html")]
struct KeysPage {
    ctx: Ctx,
    keys: Vec<Key>,
    users: Vec<(i64, String)>,
    user_id: String,
    first_url: String,
    next_url: String,
}

pub async fn list(State(st): State<AppState>, ctx: Ctx, Query(q): Query<ListQuery>) -> Response {
    let lang = ctx.tr.lang;
    respond(&st, lang, page(&st, ctx, q, StatusCode::OK).await)
}

async fn page(
    st: &AppState,
    mut ctx: Ctx,
    q: ListQuery,
    status: StatusCode,
) -> Result<Response, PageError> {
    let user_id = q.user_id.as_deref().and_then(|u| u.parse::<i64>().ok());
    let after = q.after.as_deref().and_then(|a| a.parse::<i64>().ok());
    let rows = st.db.list_keys(user_id, after, PER_PAGE).await?;
    let mut ids: Vec<i64> = rows.iter().map(|k| k.user_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let names: std::collections::HashMap<i64, String> =
        st.db.user_names(&ids).await?.into_iter().collect();
    let tr = ctx.tr;
    let now = st.clock.now();
    let keys: Vec<Key> = rows
        .iter()
        .map(|k| {
            let name = names.get(&k.user_id).cloned().unwrap_or_default();
            Key::new(tr, k, name, st.tz).with_budget(tr, k, now, st.tz)
        })
        .collect();
    let uid = user_id.map(|u| u.to_string()).unwrap_or_default();
    let url = |after: String| {
        format!(
            "/admin/keys{}",
            format::query(&[("user_id", uid.clone()), ("after", after)])
        )
    };
    let next_url = if rows.len() as i64 == PER_PAGE {
        rows.last()
            .map(|k| url(k.id.to_string()))
            .unwrap_or_default()
    } else {
        String::new()
    };
    ctx.section = "keys";
    ctx.here = url(after.map(|a| a.to_string()).unwrap_or_default());
    Ok(render(
        status,
        &KeysPage {
            ctx,
            keys,
            users: st.db.user_options(1000).await?,
            first_url: if after.is_some() {
                url(String::new())
            } else {
                String::new()
            },
            user_id: uid,
            next_url,
        },
    ))
}

/// Revoke or enable a key, then go back to the page the form was on.
pub async fn set_status(
    State(st): State<AppState>,
    mut ctx: Ctx,
    Path(id): Path<i64>,
    Form(f): Form<StatusForm>,
) -> Response {
    let back = format::safe_next(f.back.as_deref()).unwrap_or_else(|| "/admin/keys".into());
    let status = f.status.unwrap_or_default();
    match admin::set_key_status(&st, id, &status).await {
        Ok(_) => see_other(&back, "key_updated"),
        Err(e) => {
            let (lang, status) = ctx.fail(&e);
            respond(
                &st,
                lang,
                page(&st, ctx, ListQuery::default(), status).await,
            )
        }
    }
}

#[derive(Deserialize)]
pub struct BudgetForm {
    daily_limit: Option<String>,
    weekly_limit: Option<String>,
    monthly_limit: Option<String>,
    total_limit: Option<String>,
    back: Option<String>,
}

/// Set a key's four budgets from its edit form (an empty field lifts that budget), then go
/// back to the page the form was on.
pub async fn set_budget(
    State(st): State<AppState>,
    mut ctx: Ctx,
    Path(id): Path<i64>,
    Form(f): Form<BudgetForm>,
) -> Response {
    let back = format::safe_next(f.back.as_deref()).unwrap_or_else(|| "/admin/keys".into());
    let fields = [
        &f.daily_limit,
        &f.weekly_limit,
        &f.monthly_limit,
        &f.total_limit,
    ];
    let result = match budget_input(ctx.tr, fields) {
        Ok(b) => {
            let patch = admin::BudgetPatch {
                daily_limit: Some(b.daily_limit),
                weekly_limit: Some(b.weekly_limit),
                monthly_limit: Some(b.monthly_limit),
                total_limit: Some(b.total_limit),
            };
            admin::update_key_budget(&st, id, patch).await.map_err(Err)
        }
        Err(msg) => Err(Ok(msg)),
    };
    match result {
        Ok(_) => see_other(&back, "key_updated"),
        Err(e) => {
            let status = match e {
                Ok(msg) => {
                    ctx.set_error(msg);
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                Err(e) => ctx.fail(&e).1,
            };
            let lang = ctx.tr.lang;
            respond(
                &st,
                lang,
                page(&st, ctx, ListQuery::default(), status).await,
            )
        }
    }
}
