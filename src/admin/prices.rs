//! Model prices (USD per 1M tokens).

use super::{AdminError, Problem, Result};
use crate::billing::cost::Price;
use crate::billing::money::Usd;
use crate::state::AppState;
use crate::store::accounts::ModelPrice;

pub struct NewPrice {
    pub input: Usd,
    pub output: Usd,
    pub cache_read: Option<Usd>,
    pub cache_write: Option<Usd>,
}

/// The checks of every price write: a model name of 1 to 191 bytes, no negative price.
pub(super) fn check_price(model: &str, p: &Price) -> Result<()> {
    if model.trim().is_empty() || model.len() > 191 {
        return Err(AdminError::invalid(
            "model",
            Problem::Length { min: 1, max: 191 },
        ));
    }
    for (field, v) in [
        ("input", Some(p.input)),
        ("output", Some(p.output)),
        ("cache_read", p.cache_read),
        ("cache_write", p.cache_write),
    ] {
        if matches!(v, Some(n) if n < 0) {
            return Err(AdminError::invalid(field, Problem::Negative));
        }
    }
    Ok(())
}

/// Set a model's prices, creating its row or replacing all four.
pub async fn put_price(st: &AppState, model: &str, p: NewPrice) -> Result<ModelPrice> {
    let price = Price {
        input: p.input.0,
        output: p.output.0,
        cache_read: p.cache_read.map(|u| u.0),
        cache_write: p.cache_write.map(|u| u.0),
    };
    check_price(model, &price)?;
    let row = st.db.upsert_price(model, &price, st.now_ms()).await?;
    st.proxy.forget_cached();
    Ok(row)
}
