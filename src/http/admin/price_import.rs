//! Price import on the model-prices page: the list (a file read into the form, or pasted) is
//! shown as a diff against the stored prices; only the confirm step writes. The confirm form
//! carries the exact prices previewed, so what is applied is what was shown.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Form;
use serde::Deserialize;

use super::models::page;
use super::view::FormValues;
use super::{render, respond, see_other, Ctx, PageError};
use crate::admin::price_import::{
    import_prices, opt_plain, parse_litellm, plain, price_changes, ImportFilter, ImportPlan,
};
use crate::billing::cost::Price;
use crate::state::AppState;

/// A price list upload is far larger than any other form (LiteLLM's file is over 1 MB).
pub const MAX_IMPORT_BYTES: usize = 16 * 1024 * 1024;
pub const IMPORT_PATH: &str = "/admin/models/import";

struct Added {
    model: String,
    input: String,
    output: String,
    cache_read: String,
    cache_write: String,
}

struct Changed {
    model: String,
    changes: Vec<String>,
}

struct Skipped {
    model: String,
    reason: String,
}

#[derive(askama::Template)]
#[template(path = "admin/models_import.html")]
struct ImportPage {
    ctx: Ctx,
    added: Vec<Added>,
    changed: Vec<Changed>,
    unchanged: usize,
    skipped: Vec<Skipped>,
    not_taken: usize,
    /// The prices to write, as the confirm form sends them back (JSON).
    plan: String,
    writes: usize,
}

#[derive(Deserialize)]
pub struct PreviewForm {
    list: Option<String>,
    providers: Option<String>,
    modes: Option<String>,
}

/// One price as the confirm form carries it: model and nano-dollars per 1M tokens.
type Row = (String, i64, i64, Option<i64>, Option<i64>);

fn skip_text(tr: crate::i18n::Tr, s: &crate::admin::price_import::Skip) -> String {
    let t = tr.t(&format!("models.import.skip.{}", s.code()));
    match s.detail() {
        Some((field, value)) => t.replace("{field}", field).replace("{value}", value),
        None => t.to_string(),
    }
}

pub async fn preview(
    State(st): State<AppState>,
    mut ctx: Ctx,
    Form(f): Form<PreviewForm>,
) -> Response {
    let tr = ctx.tr;
    let lang = tr.lang;
    let filter = ImportFilter::from_lists(
        f.providers.as_deref().unwrap_or(""),
        f.modes.as_deref().unwrap_or(""),
    );
    let list = match parse_litellm(f.list.as_deref().unwrap_or(""), &filter) {
        Ok(l) => l,
        Err(e) => {
            ctx.set_error(format!("{}{}", tr.t("models.import_invalid"), e));
            // The list itself is not sent back: it may be megabytes.
            let values = FormValues::from_pairs([
                ("providers", f.providers.as_ref()),
                ("modes", f.modes.as_ref()),
            ]);
            return respond(
                &st,
                lang,
                page(&st, ctx, values, StatusCode::UNPROCESSABLE_ENTITY).await,
            );
        }
    };
    let plan = match st.db.list_prices().await {
        Ok(stored) => ImportPlan::new(list, &stored),
        Err(e) => return respond(&st, lang, Err(PageError::from(e))),
    };
    let rows: Vec<Row> = plan
        .writes()
        .into_iter()
        .map(|(m, p)| (m, p.input, p.output, p.cache_read, p.cache_write))
        .collect();
    ctx.section = "models";
    ctx.here = "/admin/models".into();
    let page = ImportPage {
        added: plan
            .add
            .iter()
            .map(|(m, p)| Added {
                model: m.clone(),
                input: plain(p.input),
                output: plain(p.output),
                cache_read: opt_plain(p.cache_read),
                cache_write: opt_plain(p.cache_write),
            })
            .collect(),
        changed: plan
            .change
            .iter()
            .map(|(m, old, new)| Changed {
                model: m.clone(),
                changes: price_changes(old, new),
            })
            .collect(),
        unchanged: plan.unchanged,
        skipped: plan
            .skipped
            .iter()
            .map(|(m, s)| Skipped {
                model: m.clone(),
                reason: skip_text(tr, s),
            })
            .collect(),
        not_taken: plan.not_taken,
        writes: rows.len(),
        plan: serde_json::to_string(&rows).unwrap_or_default(),
        ctx,
    };
    render(StatusCode::OK, &page)
}

#[derive(Deserialize)]
pub struct ApplyForm {
    plan: Option<String>,
}

pub async fn apply(State(st): State<AppState>, mut ctx: Ctx, Form(f): Form<ApplyForm>) -> Response {
    let tr = ctx.tr;
    let lang = tr.lang;
    let rows: Vec<Row> = match serde_json::from_str(f.plan.as_deref().unwrap_or("")) {
        Ok(r) => r,
        Err(_) => {
            ctx.set_error(tr.t("models.import_bad_plan").to_string());
            return respond(
                &st,
                lang,
                page(&st, ctx, FormValues::default(), StatusCode::BAD_REQUEST).await,
            );
        }
    };
    let prices: Vec<(String, Price)> = rows
        .into_iter()
        .map(|(model, input, output, cache_read, cache_write)| {
            (
                model,
                Price {
                    input,
                    output,
                    cache_read,
                    cache_write,
                },
            )
        })
        .collect();
    match import_prices(&st, &prices).await {
        Ok(_) => see_other("/admin/models", "prices_imported"),
        Err(e) => {
            let (msg, status) = super::refusal(tr, &e);
            ctx.set_error(msg);
            respond(
                &st,
                lang,
                page(&st, ctx, FormValues::default(), status).await,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::price_import::Skip;
    use crate::i18n::{Lang, Tr};

    #[test]
    fn every_skip_reason_has_a_text_with_its_details() {
        let text = |text: &str| text.to_string();
        for s in [
            Skip::NoTokenPrice,
            Skip::NotANumber {
                field: "input_cost_per_token",
                text: text("cheap"),
            },
            Skip::Negative {
                field: "input_cost_per_token",
                text: text("-1e-06"),
            },
            Skip::TooPrecise {
                field: "input_cost_per_token",
                text: text("1e-20"),
            },
            Skip::NameTooLong,
        ] {
            for lang in [Lang::En, Lang::ZhCn] {
                let t = skip_text(Tr::new(lang), &s);
                assert!(t != "?" && !t.contains('{'), "{lang:?} {s:?}: {t}");
                if let Some((field, value)) = s.detail() {
                    assert!(t.contains(field) && t.contains(value), "{t}");
                }
            }
        }
    }
}
