//! Upstream accounts: add, edit, disable. The account's secret never leaves the server: the
//! page shows a fixed mask, and the edit form's secret field starts blank and, left blank,
//! keeps the stored secret.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Form;
use serde::Deserialize;

use super::view::{self, form_int, model_list, FormValues, Money, StatusForm};
use super::{format, render, respond, see_other, Ctx, PageError};
use crate::admin;
use crate::domain::{AccountHealth, AccountStatus};
use crate::state::AppState;
use crate::store::accounts::Account;

struct Row {
    id: i64,
    name: String,
    provider: String,
    base_url: String,
    models: String,
    priority: i64,
    weight: i64,
    active: bool,
    status_label: &'static str,
    /// Its live health (SPEC §11.2), in the page's language.
    health: &'static str,
    health_ok: bool,
    /// Seconds of cooldown left after a failure, if any.
    cooling: Option<u64>,
    /// Cautions about its base URL, in the page's language.
    warnings: Vec<&'static str>,
    cost: Money,
    requests: String,
    tokens: String,
    last_error: String,
    last_error_at: String,
    last_used: String,
}

impl Row {
    fn new(st: &AppState, ctx: &Ctx, a: Account) -> Row {
        let models = a.models();
        let warnings = admin::base_url_warnings(&a)
            .into_iter()
            .map(|w| w.text(ctx.tr))
            .collect();
        let mut models = if models.is_empty() {
            ctx.t("keys.all_models").to_string()
        } else {
            models.join(", ")
        };
        // Aliases after the list: `client → upstream`.
        for (client, upstream) in &a.model_map.0 {
            models.push_str(&format!("; {client} → {upstream}"));
        }
        Row {
            id: a.id,
            provider: a.provider.to_string(),
            base_url: a.base_url,
            models,
            priority: a.priority,
            weight: a.weight,
            active: a.status == AccountStatus::Active,
            status_label: view::status_label(ctx.tr, a.status.as_str()),
            health: ctx.tr.vocab(st.proxy.health.label(a.id)),
            health_ok: st.proxy.health.label(a.id) == AccountHealth::Ok,
            cooling: st.proxy.health.cooldown_left(a.id),
            warnings,
            cost: Money::nanos(a.total_cost),
            requests: format::count(a.request_count),
            tokens: format::count(
                a.input_tokens + a.output_tokens + a.cache_read_tokens + a.cache_write_tokens,
            ),
            last_error: a.last_error.unwrap_or_default(),
            last_error_at: format::opt_time(a.last_error_at, st.tz),
            last_used: format::opt_time(a.last_used_at, st.tz),
            name: a.name,
        }
    }
}

/// The Test button: one probe now, its result shown on the accounts page (a success clears
/// the account's health).
pub async fn test(State(st): State<AppState>, mut ctx: Ctx, Path(id): Path<i64>) -> Response {
    let lang = ctx.tr.lang;
    let status = match admin::test_account(&st, id).await {
        Ok((a, p)) => {
            let ms = p.latency_ms.to_string();
            if p.ok {
                let status = p.status.map(|s| s.to_string()).unwrap_or_default();
                ctx.notice = Some(
                    ctx.t("accounts.test_ok")
                        .replace("{name}", &a.name)
                        .replace("{status}", &status)
                        .replace("{ms}", &ms),
                );
            } else {
                ctx.set_error(
                    ctx.t("accounts.test_failed")
                        .replace("{name}", &a.name)
                        .replace("{ms}", &ms)
                        .replace("{error}", p.error.as_deref().unwrap_or("")),
                );
            }
            StatusCode::OK
        }
        Err(e) => ctx.fail(&e).1,
    };
    respond(
        &st,
        lang,
        list_page(&st, ctx, FormValues::default(), status).await,
    )
}

#[derive(askama::Template)]
#[template(path = "admin/accounts.html")]
struct AccountsPage {
    ctx: Ctx,
    rows: Vec<Row>,
    form: FormValues,
}

pub async fn list(State(st): State<AppState>, ctx: Ctx) -> Response {
    let lang = ctx.tr.lang;
    respond(
        &st,
        lang,
        list_page(&st, ctx, FormValues::default(), StatusCode::OK).await,
    )
}

async fn list_page(
    st: &AppState,
    mut ctx: Ctx,
    form: FormValues,
    status: StatusCode,
) -> Result<Response, PageError> {
    let rows = st
        .db
        .list_accounts(None, 1000)
        .await?
        .into_iter()
        .map(|a| Row::new(st, &ctx, a))
        .collect();
    ctx.section = "accounts";
    ctx.here = "/admin/accounts".into();
    Ok(render(status, &AccountsPage { ctx, rows, form }))
}

#[derive(Deserialize)]
pub struct AccountForm {
    name: Option<String>,
    provider: Option<String>,
    base_url: Option<String>,
    api_key: Option<String>,
    models: Option<String>,
    priority: Option<String>,
    weight: Option<String>,
    model_map: Option<String>,
}

impl AccountForm {
    fn values(&self) -> FormValues {
        FormValues::from_pairs([
            ("name", self.name.as_ref()),
            ("provider", self.provider.as_ref()),
            ("base_url", self.base_url.as_ref()),
            ("models", self.models.as_ref()),
            ("priority", self.priority.as_ref()),
            ("weight", self.weight.as_ref()),
            ("model_map", self.model_map.as_ref()),
        ])
    }

    /// The aliases as typed: blank clears them, a form without the field keeps them; text
    /// that is not JSON goes on as a string, which the admin layer refuses as
    /// `not_a_model_map`.
    fn model_map(&self) -> Option<serde_json::Value> {
        let text = self.model_map.as_deref()?.trim();
        if text.is_empty() {
            return Some(serde_json::json!({}));
        }
        Some(serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.into())))
    }

    /// The account as typed; a blank secret is left out (on edit: keep the stored one).
    fn input(&self, ctx: &Ctx) -> Result<admin::AccountInput, String> {
        let text = |v: &Option<String>| Some(v.as_deref().unwrap_or("").trim().to_string());
        Ok(admin::AccountInput {
            name: text(&self.name),
            provider: text(&self.provider),
            base_url: text(&self.base_url),
            api_key: self
                .api_key
                .as_deref()
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_string),
            models: Some(model_list(self.models.as_deref())),
            priority: form_int(ctx.tr, "priority", self.priority.as_deref())?,
            weight: form_int(ctx.tr, "weight", self.weight.as_deref())?,
            status: None,
            model_map: self.model_map(),
        })
    }
}

pub async fn create(
    State(st): State<AppState>,
    mut ctx: Ctx,
    Form(f): Form<AccountForm>,
) -> Response {
    let lang = ctx.tr.lang;
    let result = match f.input(&ctx) {
        Ok(mut input) => {
            // Creating needs a secret: a blank one is refused as empty, not as missing.
            input.api_key.get_or_insert_with(String::new);
            admin::create_account(&st, input)
                .await
                .map_err(|e| super::refusal(ctx.tr, &e))
        }
        Err(msg) => Err((msg, StatusCode::UNPROCESSABLE_ENTITY)),
    };
    match result {
        Ok(_) => see_other("/admin/accounts", "account_created"),
        Err((msg, status)) => {
            ctx.set_error(msg);
            respond(&st, lang, list_page(&st, ctx, f.values(), status).await)
        }
    }
}

#[derive(askama::Template)]
#[template(path = "admin/account_edit.html")]
struct EditPage {
    ctx: Ctx,
    row: Row,
    form: FormValues,
}

pub async fn edit(State(st): State<AppState>, ctx: Ctx, Path(id): Path<String>) -> Response {
    let lang = ctx.tr.lang;
    let Ok(id) = id.parse::<i64>() else {
        return respond(&st, lang, Err(PageError::NotFound));
    };
    respond(
        &st,
        lang,
        edit_page(&st, ctx, id, None, StatusCode::OK).await,
    )
}

async fn edit_page(
    st: &AppState,
    mut ctx: Ctx,
    id: i64,
    sent: Option<FormValues>,
    status: StatusCode,
) -> Result<Response, PageError> {
    let a = st.db.get_account(id).await.map_err(|e| match e {
        crate::store::StoreError::NotFound => PageError::NotFound,
        e => e.into(),
    })?;
    // The form starts with the stored values (never the secret).
    let form = sent.unwrap_or_else(|| {
        let (priority, weight) = (a.priority.to_string(), a.weight.to_string());
        let models = a.models().join(", ");
        let provider = a.provider.to_string();
        let model_map = if a.model_map.0.is_empty() {
            String::new()
        } else {
            serde_json::to_string(&a.model_map).unwrap_or_default()
        };
        FormValues::from_pairs([
            ("name", Some(&a.name)),
            ("provider", Some(&provider)),
            ("base_url", Some(&a.base_url)),
            ("models", Some(&models)),
            ("priority", Some(&priority)),
            ("weight", Some(&weight)),
            ("model_map", Some(&model_map)),
        ])
    });
    let row = Row::new(st, &ctx, a);
    ctx.section = "accounts";
    ctx.here = format!("/admin/accounts/{id}");
    Ok(render(status, &EditPage { ctx, row, form }))
}

pub async fn update(
    State(st): State<AppState>,
    mut ctx: Ctx,
    Path(id): Path<i64>,
    Form(f): Form<AccountForm>,
) -> Response {
    let lang = ctx.tr.lang;
    let result = match f.input(&ctx) {
        Ok(input) => admin::update_account(&st, id, input)
            .await
            .map_err(|e| super::refusal(ctx.tr, &e)),
        Err(msg) => Err((msg, StatusCode::UNPROCESSABLE_ENTITY)),
    };
    match result {
        Ok(_) => see_other("/admin/accounts", "account_updated"),
        Err((msg, status)) => {
            ctx.set_error(msg);
            respond(
                &st,
                lang,
                edit_page(&st, ctx, id, Some(f.values()), status).await,
            )
        }
    }
}

pub async fn set_status(
    State(st): State<AppState>,
    mut ctx: Ctx,
    Path(id): Path<i64>,
    Form(f): Form<StatusForm>,
) -> Response {
    let input = admin::AccountInput {
        status: Some(f.status.unwrap_or_default()),
        ..Default::default()
    };
    match admin::update_account(&st, id, input).await {
        Ok(_) => see_other("/admin/accounts", "account_updated"),
        Err(e) => {
            let (lang, status) = ctx.fail(&e);
            respond(
                &st,
                lang,
                list_page(&st, ctx, FormValues::default(), status).await,
            )
        }
    }
}
