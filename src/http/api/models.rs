use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin;
use crate::billing::money::Usd;
use crate::error::{ApiError, AppJson};
use crate::state::AppState;
use crate::store::accounts::ModelPrice;

use super::PageQuery;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceBody {
    input: Usd,
    output: Usd,
    cache_read: Option<Usd>,
    cache_write: Option<Usd>,
}

pub async fn put(
    State(st): State<AppState>,
    Path(model): Path<String>,
    AppJson(b): AppJson<PriceBody>,
) -> Result<Json<ModelPrice>, ApiError> {
    put_model(&st, &model, b).await
}

async fn put_model(st: &AppState, model: &str, b: PriceBody) -> Result<Json<ModelPrice>, ApiError> {
    let price = admin::NewPrice {
        input: b.input,
        output: b.output,
        cache_read: b.cache_read,
        cache_write: b.cache_write,
    };
    Ok(Json(admin::put_price(st, model, price).await?))
}

pub async fn get(
    State(st): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<ModelPrice>, ApiError> {
    st.db
        .get_price(&model)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("model price"))
}

pub async fn list(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        json!({"data": st.db.list_prices().await?, "next_cursor": null}),
    ))
}

/// `GET /api/admin/models/unpriced`: the models clients asked for that have no price (from
/// their `model_not_found` refusal rows), most recently asked first.
pub async fn unpriced(
    State(st): State<AppState>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let rows = st.db.unpriced_models(q.limit()?).await?;
    Ok(Json(json!({"data": rows, "next_cursor": null})))
}

/// The static `/models/unpriced` route shadows the wildcard: a model of that name can still
/// be priced.
pub async fn put_unpriced(
    State(st): State<AppState>,
    AppJson(b): AppJson<PriceBody>,
) -> Result<Json<ModelPrice>, ApiError> {
    put_model(&st, "unpriced", b).await
}
