//! Users: the list with balances, one user's packages, keys and recent requests.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::header::{self, HeaderValue};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Form;
use serde::Deserialize;

use super::view::{
    self, form_error, form_int, model_list, FormValues, Grant, Key, Log, Money, StatusForm,
};
use super::{format, render, respond, see_other, Ctx, PageError};
use crate::admin::{self, AdminError};
use crate::billing::balance::{balances, with_reserved};
use crate::domain::{CatalogueStatus, Role, UserStatus};
use crate::state::AppState;
use crate::store::usage::LogFilter;

const PER_PAGE: i64 = 50;

#[derive(Default, Deserialize)]
pub struct ListQuery {
    q: Option<String>,
    page: Option<String>,
    per_page: Option<String>,
}

/// A row of the users table. Balances come from `balances()`, as in the API.
struct Row {
    id: i64,
    username: String,
    is_admin: bool,
    active: bool,
    status_label: &'static str,
    quota: Money,
    daily: Money,
    weekly: Money,
    monthly: Money,
    keys: String,
    today: Money,
    created: String,
}

#[derive(askama::Template)]
#[template(path = "admin/users.html")]
struct UsersPage {
    ctx: Ctx,
    q: String,
    rows: Vec<Row>,
    total: String,
    page: i64,
    pages: i64,
    prev_url: String,
    next_url: String,
    form: FormValues,
}

pub async fn list(State(st): State<AppState>, ctx: Ctx, Query(q): Query<ListQuery>) -> Response {
    let lang = ctx.tr.lang;
    let r = list_page(&st, ctx, q, FormValues::default(), StatusCode::OK).await;
    respond(&st, lang, r)
}

async fn list_page(
    st: &AppState,
    mut ctx: Ctx,
    q: ListQuery,
    form: FormValues,
    status: StatusCode,
) -> Result<Response, PageError> {
    let search = q.q.clone().unwrap_or_default().trim().to_string();
    let per_page = q
        .per_page
        .and_then(|p| p.parse::<i64>().ok())
        .filter(|p| (1..=500).contains(p))
        .unwrap_or(PER_PAGE);
    let filter = Some(search.as_str()).filter(|s| !s.is_empty());
    let total = st.db.count_users(filter).await?;
    let pages = ((total + per_page - 1) / per_page).max(1);
    let page = q
        .page
        .and_then(|p| p.parse::<i64>().ok())
        .unwrap_or(1)
        .clamp(1, pages);
    let users = st
        .db
        .users_page(filter, (page - 1) * per_page, per_page)
        .await?;
    let now = st.clock.now();
    let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
    let mut grants: HashMap<i64, Vec<_>> = HashMap::new();
    for g in st
        .db
        .active_user_packages(&ids, now.timestamp_millis())
        .await?
    {
        grants.entry(g.user_id).or_default().push(g);
    }
    let keys: HashMap<i64, _> = st
        .db
        .key_counts(&ids)
        .await?
        .into_iter()
        .map(|k| (k.user_id, k))
        .collect();
    let today = today_by(st, "user").await;
    let tr = ctx.tr;
    let rows = users
        .into_iter()
        .map(|u| {
            let b = balances(grants.get(&u.id).into_iter().flatten(), now, st.tz);
            let (active_keys, all_keys) = keys.get(&u.id).map_or((0, 0), |k| (k.active, k.total));
            Row {
                id: u.id,
                is_admin: u.role == Role::Admin,
                active: u.status == UserStatus::Active,
                status_label: view::status_label(tr, u.status.as_str()),
                quota: Money::opt(b.quota_balance),
                daily: Money::opt(b.subscription_daily_balance),
                weekly: Money::opt(b.subscription_weekly_balance),
                monthly: Money::opt(b.subscription_monthly_balance),
                keys: format!("{active_keys} / {all_keys}"),
                today: Money::nanos(today.get(&u.id.to_string()).copied().unwrap_or(0)),
                created: format::day(u.created_at, st.tz),
                username: u.username,
            }
        })
        .collect();
    let per = if per_page == PER_PAGE {
        String::new()
    } else {
        per_page.to_string()
    };
    let url = |p: i64| {
        format!(
            "/admin/users{}",
            format::query(&[
                ("q", search.clone()),
                ("per_page", per.clone()),
                ("page", if p == 1 { String::new() } else { p.to_string() }),
            ])
        )
    };
    ctx.section = "users";
    ctx.here = url(page);
    Ok(render(
        status,
        &UsersPage {
            ctx,
            rows,
            total: format::count(total),
            page,
            pages,
            prev_url: if page > 1 {
                url(page - 1)
            } else {
                String::new()
            },
            next_url: if page < pages {
                url(page + 1)
            } else {
                String::new()
            },
            q: search,
            form,
        },
    ))
}

/// Today's cost (nano-dollars) by id in one dimension of the real-time stats; empty (and
/// logged) when the stats cannot be read.
pub async fn today_by(st: &AppState, dim: &str) -> HashMap<String, i64> {
    let day = crate::billing::windows::day_string(st.clock.now(), st.tz);
    match st.stats.day(&day).await {
        Ok(mut s) => s
            .remove(dim)
            .unwrap_or_default()
            .into_iter()
            .map(|(id, c)| (id, c.cost_nanos))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "could not read today's stats");
            HashMap::new()
        }
    }
}

#[derive(Deserialize)]
pub struct NewUser {
    username: Option<String>,
    role: Option<String>,
    password: Option<String>,
}

pub async fn create(State(st): State<AppState>, mut ctx: Ctx, Form(f): Form<NewUser>) -> Response {
    let user = admin::NewUser {
        username: f.username.clone().unwrap_or_default(),
        role: Some(f.role.clone().unwrap_or_else(|| "user".into())),
        password: f.password.clone().filter(|p| !p.is_empty()),
    };
    match admin::create_user(&st, user).await {
        Ok(u) => see_other(&format!("/admin/users/{}", u.id), "user_created"),
        Err(e) => {
            let (lang, status) = ctx.fail(&e);
            let values = FormValues::from_pairs([
                ("username", f.username.as_ref()),
                ("role", f.role.as_ref()),
            ]);
            respond(
                &st,
                lang,
                list_page(&st, ctx, ListQuery::default(), values, status).await,
            )
        }
    }
}

#[derive(askama::Template)]
#[template(path = "admin/user.html")]
struct UserPage {
    ctx: Ctx,
    id: i64,
    username: String,
    is_admin: bool,
    active: bool,
    status_label: &'static str,
    created: String,
    quota: Money,
    daily: Money,
    weekly: Money,
    monthly: Money,
    grants: Vec<Grant>,
    packages: Vec<(i64, String)>,
    keys: Vec<Key>,
    new_key: Option<NewKey>,
    logs: Vec<Log>,
    logs_url: String,
    form: FormValues,
    /// The user's `max_concurrency`, as the form shows it (empty: no cap).
    max_concurrency: String,
}

/// A key just created, shown once in the answer to the form that created it.
struct NewKey {
    name: String,
    secret: String,
    /// Where the page says it is (`history.replaceState`), so a reload is a GET that does not
    /// show the secret again nor create another key.
    url: String,
}

pub async fn detail(State(st): State<AppState>, ctx: Ctx, Path(id): Path<String>) -> Response {
    let lang = ctx.tr.lang;
    let Ok(id) = id.parse::<i64>() else {
        return respond(&st, lang, Err(PageError::NotFound));
    };
    let r = detail_page(&st, ctx, id, None, FormValues::default(), StatusCode::OK).await;
    respond(&st, lang, r)
}

async fn detail_page(
    st: &AppState,
    mut ctx: Ctx,
    id: i64,
    created: Option<&admin::CreatedKey>,
    form: FormValues,
    status: StatusCode,
) -> Result<Response, PageError> {
    let user = st.db.get_user(id).await.map_err(|e| match e {
        crate::store::StoreError::NotFound => PageError::NotFound,
        e => e.into(),
    })?;
    let now = st.clock.now();
    let now_ms = now.timestamp_millis();
    let tr = ctx.tr;
    let all = st.db.list_user_packages(id).await?;
    let active: Vec<_> = st.db.active_user_packages(&[id], now_ms).await?;
    let b = balances(&active, now, st.tz);
    let grants = with_reserved(&all, now, st.tz, &st.proxy.reservations)
        .await
        .iter()
        .map(|g| Grant::new(tr, g, now_ms, st.tz))
        .collect();
    let packages = st
        .db
        .list_packages(None, 1000)
        .await?
        .into_iter()
        .filter(|p| p.status == CatalogueStatus::Active)
        .map(|p| (p.id, p.name))
        .collect();
    let api_keys = st.db.list_keys(Some(id), None, 1000).await?;
    let new_key = created.map(|c| NewKey {
        name: c.key.name.clone(),
        secret: c.secret.clone(),
        url: format!("/admin/users/{id}?notice=key_created"),
    });
    let keys = api_keys
        .iter()
        .map(|k| Key::new(tr, k, user.username.clone(), st.tz).with_budget(tr, k, now, st.tz))
        .collect();
    let logs = st
        .db
        .request_logs(
            &LogFilter {
                user_id: Some(id),
                ..Default::default()
            },
            20,
        )
        .await?;
    let names = view::names_for_logs(st, &logs).await?;
    let logs = logs
        .iter()
        .map(|l| Log::new(tr, l, &names, st.tz))
        .collect();
    ctx.section = "users";
    ctx.here = format!("/admin/users/{id}");
    Ok(render(
        status,
        &UserPage {
            ctx,
            id,
            is_admin: user.role == Role::Admin,
            active: user.status == UserStatus::Active,
            status_label: view::status_label(tr, user.status.as_str()),
            created: format::time(user.created_at, st.tz),
            username: user.username,
            quota: Money::opt(b.quota_balance),
            daily: Money::opt(b.subscription_daily_balance),
            weekly: Money::opt(b.subscription_weekly_balance),
            monthly: Money::opt(b.subscription_monthly_balance),
            grants,
            packages,
            keys,
            new_key,
            logs,
            logs_url: format!("/admin/logs?user_id={id}"),
            form,
            max_concurrency: user
                .max_concurrency
                .map_or(String::new(), |n| n.to_string()),
        },
    ))
}

/// Show the user's page again after a refused write, with the error and what was sent.
async fn detail_failed(
    st: &AppState,
    mut ctx: Ctx,
    id: i64,
    e: AdminError,
    form: FormValues,
) -> Response {
    let (lang, status) = ctx.fail(&e);
    respond(st, lang, detail_page(st, ctx, id, None, form, status).await)
}

pub async fn set_status(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<i64>,
    Form(f): Form<StatusForm>,
) -> Response {
    let patch = admin::UserPatch {
        status: Some(f.status.unwrap_or_default()),
        ..Default::default()
    };
    match admin::update_user(&st, id, patch).await {
        Ok(_) => see_other(&format!("/admin/users/{id}"), "user_updated"),
        Err(e) => detail_failed(&st, ctx, id, e, FormValues::default()).await,
    }
}

#[derive(Deserialize)]
pub struct ConcurrencyForm {
    max_concurrency: Option<String>,
}

/// The user's concurrency cap (empty clears it).
pub async fn set_concurrency(
    State(st): State<AppState>,
    mut ctx: Ctx,
    Path(id): Path<i64>,
    Form(f): Form<ConcurrencyForm>,
) -> Response {
    let values = FormValues::from_pairs([("max_concurrency", f.max_concurrency.as_ref())]);
    let max = match form_int(ctx.tr, "max_concurrency", f.max_concurrency.as_deref()) {
        Ok(n) => n,
        Err(msg) => {
            ctx.set_error(msg);
            return detail_form_error(&st, ctx, id, values).await;
        }
    };
    let patch = admin::UserPatch {
        max_concurrency: Some(max),
        ..Default::default()
    };
    match admin::update_user(&st, id, patch).await {
        Ok(_) => see_other(&format!("/admin/users/{id}"), "user_updated"),
        Err(e) => detail_failed(&st, ctx, id, e, values).await,
    }
}

#[derive(Deserialize)]
pub struct GrantForm {
    package_id: Option<String>,
    starts_at: Option<String>,
}

pub async fn grant(
    State(st): State<AppState>,
    mut ctx: Ctx,
    Path(id): Path<i64>,
    Form(f): Form<GrantForm>,
) -> Response {
    let values = FormValues::from_pairs([
        ("package_id", f.package_id.as_ref()),
        ("starts_at", f.starts_at.as_ref()),
    ]);
    let tr = ctx.tr;
    let Some(package_id) = f
        .package_id
        .as_deref()
        .and_then(|p| p.trim().parse::<i64>().ok())
    else {
        ctx.set_error(form_error(tr, "package_id", "form.choose"));
        return detail_form_error(&st, ctx, id, values).await;
    };
    let starts_at =
        match format::local_input_to_rfc3339(f.starts_at.as_deref().unwrap_or(""), st.tz) {
            Ok(t) => t,
            Err(()) => {
                ctx.set_error(form_error(tr, "starts_at", "form.not_a_time"));
                return detail_form_error(&st, ctx, id, values).await;
            }
        };
    let grant = admin::NewGrant {
        package_id,
        starts_at,
    };
    match admin::grant_package(&st, id, grant).await {
        Ok(_) => see_other(&format!("/admin/users/{id}"), "granted"),
        Err(e) => detail_failed(&st, ctx, id, e, values).await,
    }
}

async fn detail_form_error(st: &AppState, ctx: Ctx, id: i64, values: FormValues) -> Response {
    let lang = ctx.tr.lang;
    respond(
        st,
        lang,
        detail_page(st, ctx, id, None, values, StatusCode::UNPROCESSABLE_ENTITY).await,
    )
}

pub async fn set_grant_status(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<i64>,
    Form(f): Form<StatusForm>,
) -> Response {
    let lang = ctx.tr.lang;
    let user_id = match st.db.get_user_package(id).await {
        Ok(g) => g.user_id,
        Err(crate::store::StoreError::NotFound) => {
            return respond(&st, lang, Err(PageError::NotFound))
        }
        Err(e) => return respond(&st, lang, Err(e.into())),
    };
    let status = f.status.unwrap_or_default();
    match admin::set_grant_status(&st, id, &status).await {
        Ok(_) => see_other(&format!("/admin/users/{user_id}"), "grant_updated"),
        Err(e) => detail_failed(&st, ctx, user_id, e, FormValues::default()).await,
    }
}

#[derive(Deserialize)]
pub struct KeyForm {
    name: Option<String>,
    allowed_models: Option<String>,
    rpm_limit: Option<String>,
    tpm_limit: Option<String>,
    expires_at: Option<String>,
    allowed_ips: Option<String>,
    daily_limit: Option<String>,
    weekly_limit: Option<String>,
    monthly_limit: Option<String>,
    total_limit: Option<String>,
    max_concurrency: Option<String>,
}

pub async fn create_key(
    State(st): State<AppState>,
    mut ctx: Ctx,
    Path(id): Path<i64>,
    Form(f): Form<KeyForm>,
) -> Response {
    let values = FormValues::from_pairs([
        ("name", f.name.as_ref()),
        ("allowed_models", f.allowed_models.as_ref()),
        ("rpm_limit", f.rpm_limit.as_ref()),
        ("tpm_limit", f.tpm_limit.as_ref()),
        ("expires_at", f.expires_at.as_ref()),
        ("allowed_ips", f.allowed_ips.as_ref()),
        ("daily_limit", f.daily_limit.as_ref()),
        ("weekly_limit", f.weekly_limit.as_ref()),
        ("monthly_limit", f.monthly_limit.as_ref()),
        ("total_limit", f.total_limit.as_ref()),
        ("max_concurrency", f.max_concurrency.as_ref()),
    ]);
    let tr = ctx.tr;
    let max_concurrency = match form_int(tr, "max_concurrency", f.max_concurrency.as_deref()) {
        Ok(n) => n,
        Err(msg) => {
            ctx.set_error(msg);
            return detail_form_error(&st, ctx, id, values).await;
        }
    };
    let budget = match super::keys::budget_input(
        tr,
        [
            &f.daily_limit,
            &f.weekly_limit,
            &f.monthly_limit,
            &f.total_limit,
        ],
    ) {
        Ok(b) => b,
        Err(msg) => {
            ctx.set_error(msg);
            return detail_form_error(&st, ctx, id, values).await;
        }
    };
    let mut limits = [None, None];
    for (slot, (field, v)) in limits
        .iter_mut()
        .zip([("rpm_limit", &f.rpm_limit), ("tpm_limit", &f.tpm_limit)])
    {
        match form_int(tr, field, v.as_deref()) {
            Ok(n) => *slot = n,
            Err(msg) => {
                ctx.set_error(msg);
                return detail_form_error(&st, ctx, id, values).await;
            }
        }
    }
    let expires_at =
        match format::local_input_to_rfc3339(f.expires_at.as_deref().unwrap_or(""), st.tz) {
            Ok(t) => t,
            Err(()) => {
                ctx.set_error(form_error(tr, "expires_at", "form.not_a_time"));
                return detail_form_error(&st, ctx, id, values).await;
            }
        };
    let key = admin::NewKey {
        name: f.name.clone().unwrap_or_default(),
        allowed_models: model_list(f.allowed_models.as_deref()),
        rpm_limit: limits[0],
        tpm_limit: limits[1],
        expires_at,
        allowed_ips: model_list(f.allowed_ips.as_deref()),
        budget,
        max_concurrency,
    };
    match admin::create_key(&st, id, key).await {
        Ok(created) => {
            // The secret is shown once, in this answer, and kept nowhere else: not in a
            // cookie, not in a URL, not in a cache (issue 14 point 7).
            let lang = ctx.tr.lang;
            ctx.notice = Some(tr.t("notice.key_created").to_string());
            let page = detail_page(
                &st,
                ctx,
                id,
                Some(&created),
                FormValues::default(),
                StatusCode::OK,
            )
            .await;
            let mut resp = respond(&st, lang, page);
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(e) => detail_failed(&st, ctx, id, e, values).await,
    }
}
