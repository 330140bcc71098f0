//! Reading what the recorder wrote: daily summaries, request logs, ledger totals.

use serde::Serialize;
use tokio::sync::mpsc;

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

/// The names an export shows next to a row's ids (None when the object is gone).
#[derive(Clone, Debug, Default, sqlx::FromRow)]
pub struct ExportNames {
    pub username: Option<String>,
    pub key_name: Option<String>,
    pub account_name: Option<String>,
}

/// A request log with its names, for the CSV export.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct RequestLogExport {
    #[sqlx(flatten)]
    pub row: RequestLog,
    #[sqlx(flatten)]
    pub names: ExportNames,
}

/// A `usage_daily` row with its names, for the CSV export.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct UsageDailyExport {
    #[sqlx(flatten)]
    pub row: UsageDailyRow,
    #[sqlx(flatten)]
    pub names: ExportNames,
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
    /// Created at or after (Unix ms).
    pub from: Option<i64>,
    /// Created before (Unix ms; exclusive, so consecutive ranges do not overlap).
    pub to: Option<i64>,
    pub status_class: Option<StatusClass>,
    pub billing_status: Option<BillingStatus>,
}

/// A class of request outcomes for the log filters: an HTTP status range, or `refused`
/// (refused at admission: the rows with `billing_status` `refused`, whatever their status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusClass {
    Success,
    ClientError,
    ServerError,
    Refused,
}

impl StatusClass {
    pub const NAMES: &'static [&'static str] = &["2xx", "4xx", "5xx", "refused"];

    pub fn parse(s: &str) -> Option<StatusClass> {
        Some(match s {
            "2xx" => StatusClass::Success,
            "4xx" => StatusClass::ClientError,
            "5xx" => StatusClass::ServerError,
            "refused" => StatusClass::Refused,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StatusClass::Success => "2xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
            StatusClass::Refused => "refused",
        }
    }

    /// `[lo, hi)` of the HTTP status, for the range classes.
    fn range(self) -> Option<(i64, i64)> {
        match self {
            StatusClass::Success => Some((200, 300)),
            StatusClass::ClientError => Some((400, 500)),
            StatusClass::ServerError => Some((500, 600)),
            StatusClass::Refused => None,
        }
    }
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

/// The WHERE conditions of a [`LogFilter`]; bind with [`bind_log_filter!`].
const LOG_FILTER_SQL: &str = "(? IS NULL OR user_id = ?) \
    AND (? IS NULL OR api_key_id = ?) AND (? IS NULL OR account_id = ?) \
    AND (? IS NULL OR model = ?) AND (? IS NULL OR status = ?) \
    AND (? IS NULL OR created_at < ? OR (created_at = ? AND id < ?)) \
    AND (? IS NULL OR created_at >= ?) AND (? IS NULL OR created_at < ?) \
    AND (? IS NULL OR (status >= ? AND status < ?)) \
    AND (? = 0 OR billing_status = 'refused') \
    AND (? IS NULL OR billing_status = ?)";

/// Bind a [`LogFilter`]'s values in the order of [`LOG_FILTER_SQL`].
macro_rules! bind_log_filter {
    ($q:expr, $f:expr) => {{
        let f: &LogFilter = &$f;
        let (b_at, b_id) = f.before.unzip();
        let (lo, hi) = f.status_class.and_then(StatusClass::range).unzip();
        let refused = i64::from(f.status_class == Some(StatusClass::Refused));
        let billing = f.billing_status.map(|b| b.as_str());
        $q.bind(f.user_id)
            .bind(f.user_id)
            .bind(f.api_key_id)
            .bind(f.api_key_id)
            .bind(f.account_id)
            .bind(f.account_id)
            .bind(f.model.clone())
            .bind(f.model.clone())
            .bind(f.status)
            .bind(f.status)
            .bind(b_at)
            .bind(b_at)
            .bind(b_at)
            .bind(b_id)
            .bind(f.from)
            .bind(f.from)
            .bind(f.to)
            .bind(f.to)
            .bind(lo)
            .bind(lo)
            .bind(hi)
            .bind(refused)
            .bind(billing)
            .bind(billing)
    }};
}

/// The names of an export row `l` (its user, key and account).
const NAMES_COLS: &str = "u.username AS username, k.name AS key_name, a.name AS account_name";
const NAMES_JOIN: &str = "LEFT JOIN users u ON u.id = l.user_id \
    LEFT JOIN api_keys k ON k.id = l.api_key_id LEFT JOIN accounts a ON a.id = l.account_id";

/// Rows a streaming export keeps in flight between the query and the response.
const STREAM_BUFFER: usize = 256;

/// Rows an export reads per query. Each page is its own short query (keyset: after the last
/// row of the one before), so no connection, read transaction or server-side cursor is held
/// while a slow client downloads: the pool stays free, SQLite's WAL can be checkpointed and
/// MySQL never times a stalled result set out (`net_write_timeout`).
pub const EXPORT_PAGE: usize = 1000;

/// Read pages with `page(after)` (after: the last row's keyset, None for the first page) and
/// hand each row to `tx`, until a short page, the receiver is gone or a page fails (the error
/// is handed on, then the export stops).
async fn export_pages<T, K, Fut>(
    tx: mpsc::Sender<Result<T>>,
    key: impl Fn(&T) -> K,
    mut page: impl FnMut(Option<K>) -> Fut,
) where
    Fut: std::future::Future<Output = std::result::Result<Vec<T>, sqlx::Error>>,
{
    let mut after = None;
    loop {
        if tx.is_closed() {
            return;
        }
        let rows = match page(after.take()).await {
            Ok(rows) => rows,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        let full = rows.len() == EXPORT_PAGE;
        after = rows.last().map(&key);
        for row in rows {
            if tx.send(Ok(row)).await.is_err() {
                return;
            }
        }
        if !full {
            return;
        }
    }
}

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
        let sql = format!(
            "SELECT {LOG_COLS} FROM request_logs WHERE {LOG_FILTER_SQL} \
             ORDER BY created_at DESC, id DESC LIMIT ?"
        );
        Ok(on_db!(self, |p| bind_log_filter!(sqlx::query_as(&sql), f)
            .bind(limit)
            .fetch_all(p)
            .await)?)
    }

    /// One request log by its row id.
    pub async fn request_log(&self, id: i64) -> Result<Option<RequestLog>> {
        let sql = format!("SELECT {LOG_COLS} FROM request_logs WHERE id = ?");
        Ok(on_db!(self, |p| sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(p)
            .await)?)
    }

    /// Every request log matching `f` (no limit), newest first, as a stream of rows read a
    /// page ([`EXPORT_PAGE`]) at a time as the receiver takes them, each page after the last
    /// row of the one before by (created_at, id): memory stays constant whatever the row
    /// count, and rows written during the export (newer) do not shift the pages. Dropping the
    /// receiver (the client went away) ends the export.
    pub fn request_logs_stream(&self, f: LogFilter) -> mpsc::Receiver<Result<RequestLogExport>> {
        // `created_at <= ?` bounds the index range, so each page starts where the last ended
        // instead of skipping the rows already sent.
        let sql = format!(
            "SELECT l.*, {NAMES_COLS} FROM (SELECT {LOG_COLS} FROM request_logs \
             WHERE {LOG_FILTER_SQL} AND created_at <= ? AND (created_at < ? OR id < ?) \
             ORDER BY created_at DESC, id DESC LIMIT ?) l {NAMES_JOIN} \
             ORDER BY l.created_at DESC, l.id DESC"
        );
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let db = self.clone();
        tokio::spawn(export_pages(
            tx,
            |r: &RequestLogExport| (r.row.created_at, r.row.id),
            move |after| {
                let (db, sql, f) = (db.clone(), sql.clone(), f.clone());
                async move {
                    let (at, id) = after.unwrap_or((i64::MAX, i64::MAX));
                    on_db!(&db, |p| bind_log_filter!(sqlx::query_as(&sql), f)
                        .bind(at)
                        .bind(at)
                        .bind(id)
                        .bind(EXPORT_PAGE as i64)
                        .fetch_all(p)
                        .await)
                }
            },
        ));
        rx
    }

    /// Every `usage_daily` row matching `f` (no limit), in the order of [`Db::usage_daily`],
    /// paged by that order's key (unique) as [`Db::request_logs_stream`] is.
    pub fn usage_daily_stream(&self, f: UsageFilter) -> mpsc::Receiver<Result<UsageDailyExport>> {
        let page_sql = |after: &str| {
            format!(
                "SELECT l.*, {NAMES_COLS} FROM (SELECT {DAILY_COLS} FROM usage_daily \
                 WHERE {USAGE_FILTER_SQL}{after} \
                 ORDER BY day, user_id, api_key_id, account_id, model LIMIT ?) l {NAMES_JOIN} \
                 ORDER BY l.day, l.user_id, l.api_key_id, l.account_id, l.model"
            )
        };
        let first = page_sql("");
        // After (day, user, key, account, model); `day >= ?` bounds the index range.
        let next = page_sql(
            " AND day >= ? AND (day > ? OR user_id > ? OR (user_id = ? AND (api_key_id > ? \
             OR (api_key_id = ? AND (account_id > ? OR (account_id = ? AND model > ?))))))",
        );
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let db = self.clone();
        tokio::spawn(export_pages(
            tx,
            |r: &UsageDailyExport| {
                let r = &r.row;
                (
                    r.day.clone(),
                    r.user_id,
                    r.api_key_id,
                    r.account_id,
                    r.model.clone(),
                )
            },
            move |after| {
                let (db, f) = (db.clone(), f.clone());
                let sql = if after.is_some() {
                    next.clone()
                } else {
                    first.clone()
                };
                async move {
                    on_db!(&db, |p| {
                        let q = bind_usage_filter!(sqlx::query_as(&sql), f);
                        let q = match &after {
                            None => q,
                            Some((day, user, key, account, model)) => q
                                .bind(day.clone())
                                .bind(day.clone())
                                .bind(user)
                                .bind(user)
                                .bind(key)
                                .bind(key)
                                .bind(account)
                                .bind(account)
                                .bind(model.clone()),
                        };
                        q.bind(EXPORT_PAGE as i64).fetch_all(p).await
                    })
                }
            },
        ));
        rx
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
