use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin;
use crate::billing::money::Usd;
use crate::error::{ApiError, AppJson};
use crate::state::AppState;
use crate::store::accounts::ModelPrice;

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
    let price = admin::NewPrice {
        input: b.input,
        output: b.output,
        cache_read: b.cache_read,
        cache_write: b.cache_write,
    };
    Ok(Json(admin::put_price(&st, &model, price).await?))
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
