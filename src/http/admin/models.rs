//! Model prices (USD per 1M tokens): every model's four prices, editable in place.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Form;
use serde::Deserialize;

use super::view::{form_error, form_money, FormValues};
use super::{format, render, respond, see_other, Ctx, PageError};
use crate::admin;
use crate::billing::money::Usd;
use crate::state::AppState;

/// Prices as typed in the form: plain decimals, exact, without the `$`.
struct Row {
    model: String,
    input: String,
    output: String,
    cache_read: String,
    cache_write: String,
    updated: String,
}

/// A model clients asked for that has no price, with a form to price it.
struct Unpriced {
    model: String,
    requests: String,
    last_seen: String,
}

#[derive(askama::Template)]
#[template(path = "admin/models.html")]
struct ModelsPage {
    ctx: Ctx,
    rows: Vec<Row>,
    unpriced: Vec<Unpriced>,
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

/// Unpriced models listed on the page at most (the API pages through more).
const UNPRICED_SHOWN: i64 = 50;

/// A price for an input field: the decimal without trailing zeros (`2.5`, `0`).
fn plain(nanos: i64) -> String {
    let d = Usd(nanos).to_decimal().normalize();
    d.to_string()
}

pub(super) async fn page(
    st: &AppState,
    mut ctx: Ctx,
    form: FormValues,
    status: StatusCode,
) -> Result<Response, PageError> {
    let rows = st
        .db
        .list_prices()
        .await?
        .into_iter()
        .map(|p| Row {
            input: plain(p.input_price),
            output: plain(p.output_price),
            cache_read: p.cache_read_price.map(plain).unwrap_or_default(),
            cache_write: p.cache_write_price.map(plain).unwrap_or_default(),
            updated: format::time(p.updated_at, st.tz),
            model: p.model,
        })
        .collect();
    let unpriced = st
        .db
        .unpriced_models(UNPRICED_SHOWN)
        .await?
        .into_iter()
        .map(|u| Unpriced {
            requests: format::count(u.requests),
            last_seen: format::time(u.last_seen_at, st.tz),
            model: u.model,
        })
        .collect();
    ctx.section = "models";
    ctx.here = "/admin/models".into();
    Ok(render(
        status,
        &ModelsPage {
            ctx,
            rows,
            unpriced,
            form,
        },
    ))
}

#[derive(Deserialize)]
pub struct PriceForm {
    model: Option<String>,
    input: Option<String>,
    output: Option<String>,
    cache_read: Option<String>,
    cache_write: Option<String>,
}

pub async fn save(State(st): State<AppState>, mut ctx: Ctx, Form(f): Form<PriceForm>) -> Response {
    let values = FormValues::from_pairs([
        ("model", f.model.as_ref()),
        ("input", f.input.as_ref()),
        ("output", f.output.as_ref()),
        ("cache_read", f.cache_read.as_ref()),
        ("cache_write", f.cache_write.as_ref()),
    ]);
    let tr = ctx.tr;
    let lang = tr.lang;
    let model = f.model.as_deref().unwrap_or("").trim().to_string();
    let checked = (|| -> Result<admin::NewPrice, String> {
        if model.is_empty() {
            return Err(form_error(tr, "model", "form.required"));
        }
        let required = |field, v: &Option<String>| match form_money(tr, field, v.as_deref())? {
            Some(m) => Ok(m),
            None => Err(form_error(tr, field, "form.required")),
        };
        Ok(admin::NewPrice {
            input: required("input", &f.input)?,
            output: required("output", &f.output)?,
            cache_read: form_money(tr, "cache_read", f.cache_read.as_deref())?,
            cache_write: form_money(tr, "cache_write", f.cache_write.as_deref())?,
        })
    })();
    let result = match checked {
        Ok(price) => admin::put_price(&st, &model, price)
            .await
            .map_err(|e| super::refusal(tr, &e)),
        Err(msg) => Err((msg, StatusCode::UNPROCESSABLE_ENTITY)),
    };
    match result {
        Ok(_) => see_other("/admin/models", "price_saved"),
        Err((msg, status)) => {
            ctx.set_error(msg);
            respond(&st, lang, page(&st, ctx, values, status).await)
        }
    }
}
