//! Reading what the recorder wrote: daily summaries, request logs, ledger totals.

use serde::Serialize;

use super::{on_db, ser, Db, Result};
use crate::usage::BillingStatus;

#[derive(Clone, Debug, sqlx::FromRow, Serialize)]
pub struct UsageDailyRow {
    pub day: String,
    pub user_id: i64,
    pub api_key_id: i64,
    pub account_id: i64,
    pub model: String,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    #[serde(serialize_with = "ser::usd")]
    pub cost: i64,
}

#[derive(Clone, Debug, sqlx::FromRow, Serialize)]
pub struct RequestLog {
    pub id: i64,
    pub request_id: String,
    #[serde(serialize_with = "ser::ms")]
    pub created_at: i64,
    pub user_id: i64,
    pub api_key_id: i64,
    pub account_id: Option<i64>,
    pub user_package_id: Option<i64>,
    pub model: String,
    pub endpoint: String,
    #[serde(serialize_with = "ser::boolean")]
    pub stream: i64,
    pub status: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    #[serde(serialize_with = "ser::usd")]
    pub cost: i64,
    pub billing_status: BillingStatus,
    pub latency_ms: i64,
    pub ttfb_ms: Option<i64>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct UsageFilter {
    pub from: Option<String>,
    pub to: Option<String>,
    pub user_id: Option<i64>,
    pub api_key_id: Option<i64>,
    pub account_id: Option<i64>,
    pub model: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct LogFilter {
    pub user_id: Option<i64>,
    pub api_key_id: Option<i64>,
    pub account_id: Option<i64>,
    pub model: Option<String>,
    pub status: Option<i64>,
    /// (created_at, id) of the last row of the previous page.
    pub before: Option<(i64, i64)>,
}

/// Sums over one sink, for reconciliation: (requests, cost, input, output, cache_read, cache_write).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct SinkTotals {
    pub requests: i64,
    pub cost: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
}

/// The same totals read from every database sink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    pub request_logs: SinkTotals,
    pub usage_daily: SinkTotals,
    pub api_keys: SinkTotals,
    pub accounts: SinkTotals,
    /// Σ user_packages.quota_used (lifetime charges of every grant).
    pub user_packages_cost: i64,
}

const DAILY_COLS: &str = "day, user_id, api_key_id, account_id, model, requests, input_tokens, \
    output_tokens, cache_read_tokens, cache_write_tokens, cost";
const LOG_COLS: &str = "id, request_id, created_at, user_id, api_key_id, account_id, \
    user_package_id, model, endpoint, stream, status, input_tokens, output_tokens, \
    cache_read_tokens, cache_write_tokens, cost, billing_status, latency_ms, ttfb_ms, error";

/// The WHERE conditions of a [`UsageFilter`] over `usage_daily`; bind with
/// [`bind_usage_filter!`].
pub(crate) const USAGE_FILTER_SQL: &str = "(? IS NULL OR day >= ?) AND (? IS NULL OR day <= ?) \
    AND (? IS NULL OR user_id = ?) AND (? IS NULL OR api_key_id = ?) \
    AND (? IS NULL OR account_id = ?) AND (? IS NULL OR model = ?)";

/// Bind a [`UsageFilter`]'s values in the order of [`USAGE_FILTER_SQL`].
macro_rules! bind_usage_filter {
    ($q:expr, $f:expr) => {
        $q.bind($f.from.as_deref())
            .bind($f.from.as_deref())
            .bind($f.to.as_deref())
            .bind($f.to.as_deref())
            .bind($f.user_id)
            .bind($f.user_id)
            .bind($f.api_key_id)
            .bind($f.api_key_id)
            .bind($f.account_id)
            .bind($f.account_id)
            .bind($f.model.as_deref())
            .bind($f.model.as_deref())
    };
}
pub(crate) use bind_usage_filter;

/// `SUM` is DECIMAL on MySQL; cast it back to a 64-bit integer on both databases.
fn sum(col: &str) -> String {
    format!("CAST(COALESCE(SUM({col}), 0) AS SIGNED)")
}

/// `sum(col) AS col`.
pub(crate) fn sum_as(col: &str) -> String {
    format!("{} AS {col}", sum(col))
}

impl Db {
    pub async fn usage_daily(&self, f: &UsageFilter, limit: i64) -> Result<Vec<UsageDailyRow>> {
        let sql = format!(
            "SELECT {DAILY_COLS} FROM usage_daily WHERE {USAGE_FILTER_SQL} \
             ORDER BY day, user_id, api_key_id, account_id, model LIMIT ?"
        );
        Ok(on_db!(self, |p| bind_usage_filter!(
            sqlx::query_as(&sql),
            f
        )
        .bind(limit)
        .fetch_all(p)
        .await)?)
    }

    /// Request logs, newest first by (created_at, id).
    pub async fn request_logs(&self, f: &LogFilter, limit: i64) -> Result<Vec<RequestLog>> {
        let (b_at, b_id) = f.before.unzip();
        let sql = format!(
            "SELECT {LOG_COLS} FROM request_logs WHERE (? IS NULL OR user_id = ?) \
             AND (? IS NULL OR api_key_id = ?) AND (? IS NULL OR account_id = ?) \
             AND (? IS NULL OR model = ?) AND (? IS NULL OR status = ?) \
             AND (? IS NULL OR created_at < ? OR (created_at = ? AND id < ?)) \
             ORDER BY created_at DESC, id DESC LIMIT ?"
        );
        Ok(on_db!(self, |p| sqlx::query_as(&sql)
            .bind(f.user_id)
            .bind(f.user_id)
            .bind(f.api_key_id)
            .bind(f.api_key_id)
            .bind(f.account_id)
            .bind(f.account_id)
            .bind(f.model.as_deref())
            .bind(f.model.as_deref())
            .bind(f.status)
            .bind(f.status)
            .bind(b_at)
            .bind(b_at)
            .bind(b_at)
            .bind(b_id)
            .bind(limit)
            .fetch_all(p)
            .await)?)
    }

    pub async fn ledger(&self) -> Result<Ledger> {
        let totals = |table: &str, requests: &str, cost: &str| {
            format!(
                "SELECT {} AS requests, {} AS cost, {}, {}, {}, {} FROM {table}",
                sum(requests),
                sum(cost),
                sum_as("input_tokens"),
                sum_as("output_tokens"),
                sum_as("cache_read_tokens"),
                sum_as("cache_write_tokens"),
            )
        };
        // Refused rows are not requests served (cost 0, no other sink): left out.
        let q_logs = totals("request_logs", "1", "cost") + " WHERE billing_status <> 'refused'";
        let q_daily = totals("usage_daily", "requests", "cost");
        let q_keys = totals("api_keys", "request_count", "used_cost");
        let q_acc = totals("accounts", "request_count", "total_cost");
        let q_up = format!("SELECT {} FROM user_packages", sum("quota_used"));
        on_db!(self, |p| {
            Ok(Ledger {
                request_logs: sqlx::query_as(&q_logs).fetch_one(p).await?,
                usage_daily: sqlx::query_as(&q_daily).fetch_one(p).await?,
                api_keys: sqlx::query_as(&q_keys).fetch_one(p).await?,
                accounts: sqlx::query_as(&q_acc).fetch_one(p).await?,
                user_packages_cost: sqlx::query_scalar(&q_up).fetch_one(p).await?,
            })
        })
    }
}
