//! Pricing beyond one model at a time: the models clients asked for that have no price, and
//! a whole price list written in one transaction.

use serde::Serialize;

use super::{on_db, ser, Db, Result};
use crate::billing::cost::Price;
use crate::config::DbKind;
use crate::domain::BillingStatus;

/// A model that requests asked for while it had no price (and still has none).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow, Serialize)]
pub struct UnpricedModel {
    pub model: String,
    /// Refusal rows for it: repeats of one key within one second are one row (SPEC §11.4).
    pub requests: i64,
    #[serde(serialize_with = "ser::ms")]
    pub last_seen_at: i64,
}

/// The refusal code of a request for a model without a price (`proxy::error`).
const NO_PRICE_CODE: &str = "model_not_found";

/// Create a model's price row or replace all four prices.
pub(crate) fn upsert_price_sql(kind: DbKind) -> &'static str {
    match kind {
        DbKind::Sqlite => {
            "INSERT INTO model_prices (model, input_price, output_price, cache_read_price, \
             cache_write_price, updated_at) VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT(model) DO UPDATE SET input_price = excluded.input_price, \
             output_price = excluded.output_price, cache_read_price = excluded.cache_read_price, \
             cache_write_price = excluded.cache_write_price, updated_at = excluded.updated_at"
        }
        DbKind::MySql => {
            "INSERT INTO model_prices (model, input_price, output_price, cache_read_price, \
             cache_write_price, updated_at) VALUES (?, ?, ?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE input_price = VALUES(input_price), \
             output_price = VALUES(output_price), cache_read_price = VALUES(cache_read_price), \
             cache_write_price = VALUES(cache_write_price), updated_at = VALUES(updated_at)"
        }
    }
}

impl Db {
    /// Models refused for want of a price that still have none, most recently asked first.
    /// (A priced model refused because no account serves it is not listed: it has a price.)
    pub async fn unpriced_models(&self, limit: i64) -> Result<Vec<UnpricedModel>> {
        let sql =
            "SELECT l.model AS model, COUNT(*) AS requests, MAX(l.created_at) AS last_seen_at \
             FROM request_logs l LEFT JOIN model_prices p ON p.model = l.model \
             WHERE l.billing_status = ? AND l.error = ? AND l.model <> '' AND p.model IS NULL \
             GROUP BY l.model ORDER BY last_seen_at DESC, l.model LIMIT ?";
        Ok(on_db!(self, |p| sqlx::query_as(sql)
            .bind(BillingStatus::Refused)
            .bind(NO_PRICE_CODE)
            .bind(limit)
            .fetch_all(p)
            .await)?)
    }

    /// Set the prices of many models in one transaction (all or none), each row created or
    /// replaced whole, as [`Db::upsert_price`] does one.
    pub async fn upsert_prices(&self, prices: &[(String, Price)], now: i64) -> Result<usize> {
        let sql = upsert_price_sql(self.kind());
        on_db!(self, |p| {
            let mut tx = p.begin().await?;
            for (model, price) in prices {
                sqlx::query(sql)
                    .bind(model)
                    .bind(price.input)
                    .bind(price.output)
                    .bind(price.cache_read)
                    .bind(price.cache_write)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(prices.len())
    }
}
