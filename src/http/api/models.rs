use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::billing::cost::Price;
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
    if model.trim().is_empty() || model.len() > 191 {
        return Err(ApiError::invalid("model", "must be 1 to 191 characters"));
    }
    for (field, v) in [
        ("input", Some(b.input)),
        ("output", Some(b.output)),
        ("cache_read", b.cache_read),
        ("cache_write", b.cache_write),
    ] {
        if matches!(v, Some(u) if u.0 < 0) {
            return Err(ApiError::invalid(field, "must not be negative"));
        }
    }
    let price = Price {
        input: b.input.0,
        output: b.output.0,
        cache_read: b.cache_read.map(|u| u.0),
        cache_write: b.cache_write.map(|u| u.0),
    };
    Ok(Json(st.db.upsert_price(&model, &price, st.now_ms()).await?))
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
