//! The settlement transaction: a batch of usage events applied to every database sink in one
//! transaction, so the sinks can never disagree. Idempotent on `request_id`: an event whose
//! request log already exists is skipped entirely.
//!
//! Within a batch, counters are aggregated first (one statement per key, account, daily row and
//! package window instead of one per event).

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use super::{on_db, placeholders, Db, Result};
use crate::billing::cost::Tokens;
use crate::config::DbKind;
use crate::usage::{vet_batch, BillingStatus, UsageEvent};

/// How many events of a batch were applied, and how many had been applied before.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SettleOutcome {
    pub applied: usize,
    pub duplicates: usize,
    /// Indexes (into the batch) of the events applied by this call.
    pub fresh: Vec<usize>,
    /// Applied events the settlement's re-check corrected (index into the batch, the event
    /// as applied): implausible amounts never reach SQL (`usage::vet_batch`).
    pub corrected: Vec<(usize, UsageEvent)>,
}

#[derive(Default, Clone, Copy)]
struct Agg {
    requests: i64,
    tokens: Tokens,
    cost: i64,
    last_ms: i64,
}

impl Agg {
    /// Saturating, though `vet_batch` already keeps every sum of a batch inside i64.
    fn add(&mut self, e: &UsageEvent) {
        self.requests += 1;
        let t = &mut self.tokens;
        t.input = t.input.saturating_add(e.tokens.input);
        t.output = t.output.saturating_add(e.tokens.output);
        t.cache_read = t.cache_read.saturating_add(e.tokens.cache_read);
        t.cache_write = t.cache_write.saturating_add(e.tokens.cache_write);
        self.cost = self.cost.saturating_add(e.cost_nanos);
        self.last_ms = self.last_ms.max(e.created_at_ms);
    }
}

const LOG_COLS: &str = "request_id, created_at, user_id, api_key_id, account_id, user_package_id, \
    model, endpoint, stream, status, input_tokens, output_tokens, cache_read_tokens, \
    cache_write_tokens, cost, billing_status, latency_ms, ttfb_ms, error";
const LOG_ROW: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
/// The largest multi-row insert (a power of two; see `pow2_chunks`).
const CHUNK: usize = 128;

/// Splits `items` into chunks whose lengths are powers of two, largest first, none above CHUNK.
/// The multi-row statements built from them come in at most 8 shapes, each prepared once per
/// connection and then reused from its statement cache; with one shape per batch size, a
/// batch of a new size re-parsed its statement (about 5,000 instructions a row in SQLite).
fn pow2_chunks<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if items.is_empty() {
            return None;
        }
        let size = 1 << items.len().min(CHUNK).ilog2();
        let (head, rest) = items.split_at(size);
        items = rest;
        Some(head)
    })
}

/// `INSERT INTO request_logs … VALUES` with `rows` rows, for `rows` a power of two ≤ CHUNK.
fn log_insert_sql(rows: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        (0..=CHUNK.ilog2())
            .map(|i| {
                let rows = vec![LOG_ROW; 1 << i].join(", ");
                format!("INSERT INTO request_logs ({LOG_COLS}) VALUES {rows}")
            })
            .collect()
    });
    &all[rows.ilog2() as usize]
}

const DAILY_SQLITE: &str = "INSERT INTO usage_daily (day, user_id, api_key_id, account_id, model, \
    requests, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost) \
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
    ON CONFLICT(day, user_id, api_key_id, account_id, model) DO UPDATE SET \
    requests = requests + excluded.requests, input_tokens = input_tokens + excluded.input_tokens, \
    output_tokens = output_tokens + excluded.output_tokens, \
    cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens, \
    cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens, \
    cost = cost + excluded.cost";
const DAILY_MYSQL: &str = "INSERT INTO usage_daily (day, user_id, api_key_id, account_id, model, \
    requests, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost) \
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
    ON DUPLICATE KEY UPDATE requests = requests + VALUES(requests), \
    input_tokens = input_tokens + VALUES(input_tokens), \
    output_tokens = output_tokens + VALUES(output_tokens), \
    cache_read_tokens = cache_read_tokens + VALUES(cache_read_tokens), \
    cache_write_tokens = cache_write_tokens + VALUES(cache_write_tokens), \
    cost = cost + VALUES(cost)";

const KEY_UPDATE: &str = "UPDATE api_keys SET used_cost = used_cost + ?, \
    request_count = request_count + ?, input_tokens = input_tokens + ?, \
    output_tokens = output_tokens + ?, cache_read_tokens = cache_read_tokens + ?, \
    cache_write_tokens = cache_write_tokens + ?, \
    last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < ? THEN ? ELSE last_used_at END \
    WHERE id = ?";
const ACCOUNT_UPDATE: &str = "UPDATE accounts SET total_cost = total_cost + ?, \
    request_count = request_count + ?, input_tokens = input_tokens + ?, \
    output_tokens = output_tokens + ?, cache_read_tokens = cache_read_tokens + ?, \
    cache_write_tokens = cache_write_tokens + ?, \
    last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < ? THEN ? ELSE last_used_at END \
    WHERE id = ?";

/// The package charge: one statement that rolls stale windows and adds the cost atomically.
/// For each window: same start → add; the stored start is older (or none) → the window rolled,
/// so used = cost and the start moves on; the stored start is newer (a late event of a past
/// window) → the current window is left alone. Every `*_used` assignment comes before its
/// `*_window_start` assignment because MySQL evaluates SET left to right with earlier results
/// visible; SQLite evaluates them all against the old row. Both then agree.
/// Binds: for each of daily, weekly, monthly: (start, cost, start, cost, start, start);
/// then cost (quota_used), now, id.
const PACKAGE_CHARGE: &str = "UPDATE user_packages SET \
    daily_used = CASE WHEN daily_window_start = ? THEN daily_used + ? \
        WHEN daily_window_start IS NULL OR daily_window_start < ? THEN ? ELSE daily_used END, \
    daily_window_start = CASE WHEN daily_window_start IS NULL OR daily_window_start < ? \
        THEN ? ELSE daily_window_start END, \
    weekly_used = CASE WHEN weekly_window_start = ? THEN weekly_used + ? \
        WHEN weekly_window_start IS NULL OR weekly_window_start < ? THEN ? ELSE weekly_used END, \
    weekly_window_start = CASE WHEN weekly_window_start IS NULL OR weekly_window_start < ? \
        THEN ? ELSE weekly_window_start END, \
    monthly_used = CASE WHEN monthly_window_start = ? THEN monthly_used + ? \
        WHEN monthly_window_start IS NULL OR monthly_window_start < ? THEN ? ELSE monthly_used END, \
    monthly_window_start = CASE WHEN monthly_window_start IS NULL OR monthly_window_start < ? \
        THEN ? ELSE monthly_window_start END, \
    quota_used = quota_used + ?, updated_at = ? \
    WHERE id = ?";

/// The key's budget windows, charged like a package's (same CASE rules and the same order of
/// assignments, for MySQL's left-to-right SET). Binds: for each of daily, weekly, monthly:
/// (start, cost, start, cost, start, start); then id.
const KEY_WINDOW_CHARGE: &str = "UPDATE api_keys SET \
    daily_used = CASE WHEN daily_window_start = ? THEN daily_used + ? \
        WHEN daily_window_start IS NULL OR daily_window_start < ? THEN ? ELSE daily_used END, \
    daily_window_start = CASE WHEN daily_window_start IS NULL OR daily_window_start < ? \
        THEN ? ELSE daily_window_start END, \
    weekly_used = CASE WHEN weekly_window_start = ? THEN weekly_used + ? \
        WHEN weekly_window_start IS NULL OR weekly_window_start < ? THEN ? ELSE weekly_used END, \
    weekly_window_start = CASE WHEN weekly_window_start IS NULL OR weekly_window_start < ? \
        THEN ? ELSE weekly_window_start END, \
    monthly_used = CASE WHEN monthly_window_start = ? THEN monthly_used + ? \
        WHEN monthly_window_start IS NULL OR monthly_window_start < ? THEN ? ELSE monthly_used END, \
    monthly_window_start = CASE WHEN monthly_window_start IS NULL OR monthly_window_start < ? \
        THEN ? ELSE monthly_window_start END \
    WHERE id = ?";

type DailyKey = (String, i64, i64, i64, String);

/// The counters of the applied events, aggregated per daily row, key, account and package
/// window: one statement each.
#[derive(Default)]
struct Totals {
    /// Sorted: a stable order keeps lock acquisition consistent between concurrent batches.
    daily: Vec<(DailyKey, Agg)>,
    keys: BTreeMap<i64, Agg>,
    accounts: BTreeMap<i64, Agg>,
    packages: BTreeMap<(i64, i64, i64, i64), i64>,
    /// Per (key, daily, weekly, monthly window start): the cost charged to its budget windows.
    key_windows: BTreeMap<(i64, i64, i64, i64), i64>,
}

fn totals(fresh: &[&UsageEvent]) -> Totals {
    let mut daily: HashMap<DailyKey, Agg> = HashMap::new();
    let mut t = Totals::default();
    for e in fresh {
        // A refusal is a log row only; nothing reached upstream either when account_id is None.
        if e.billing_status == BillingStatus::Refused {
            continue;
        }
        let Some(account_id) = e.account_id else {
            continue;
        };
        daily
            .entry((
                e.day.clone(),
                e.user_id,
                e.api_key_id,
                account_id,
                e.model.clone(),
            ))
            .or_default()
            .add(e);
        t.keys.entry(e.api_key_id).or_default().add(e);
        t.accounts.entry(account_id).or_default().add(e);
        if let (Some(w), true) = (e.key_windows, e.cost_nanos != 0) {
            let used = t
                .key_windows
                .entry((e.api_key_id, w.daily, w.weekly, w.monthly))
                .or_default();
            *used = used.saturating_add(e.cost_nanos);
        }
        if let (Some(up), Some(w)) = (e.user_package_id, e.windows) {
            if e.cost_nanos != 0 {
                let used = t
                    .packages
                    .entry((up, w.daily, w.weekly, w.monthly))
                    .or_default();
                *used = used.saturating_add(e.cost_nanos);
            }
        }
    }
    t.daily = daily.into_iter().collect();
    t.daily.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

impl Db {
    /// Apply a batch of events to request_logs, usage_daily, api_keys, accounts and
    /// user_packages in one transaction.
    pub async fn settle(&self, events: &[UsageEvent], now: i64) -> Result<SettleOutcome> {
        let daily_sql = match self.kind() {
            DbKind::Sqlite => DAILY_SQLITE,
            DbKind::MySql => DAILY_MYSQL,
        };
        let ids: Vec<&str> = events.iter().map(|e| e.request_id.as_str()).collect();
        on_db!(pool: &self.settle_pool, |p| {
            // Replays are rare, so the log rows are first inserted as they are: a request_id
            // that is already logged makes the insert fail, and only then is the batch applied
            // again with the logged events looked up and skipped.
            let mut look_up = false;
            loop {
                let mut tx = p.begin().await?;
                let mut logged: HashSet<String> = HashSet::new();
                if look_up {
                    for chunk in pow2_chunks(&ids) {
                        let sql = format!(
                            "SELECT request_id FROM request_logs WHERE request_id IN ({})",
                            placeholders(chunk.len())
                        );
                        let mut q = sqlx::query_scalar::<_, String>(&sql);
                        for id in chunk {
                            q = q.bind(*id);
                        }
                        logged.extend(q.fetch_all(&mut *tx).await?);
                    }
                }
                let mut in_batch: HashSet<&str> = HashSet::with_capacity(events.len());
                let mut fresh: Vec<&UsageEvent> = Vec::with_capacity(events.len());
                let mut fresh_idx = Vec::with_capacity(events.len());
                for (i, e) in events.iter().enumerate() {
                    if !logged.contains(&e.request_id) && in_batch.insert(&e.request_id) {
                        fresh.push(e);
                        fresh_idx.push(i);
                    }
                }
                // Re-checked here, whatever the proxy did: a corrupted journal line or a bug
                // must not reach SQL with amounts that wedge every later batch.
                let corrections = vet_batch(fresh.iter().copied());
                for c in &corrections {
                    let e = &events[fresh_idx[c.index]];
                    tracing::warn!(request_id = %e.request_id, reason = %c.reason, cost = c.event.cost_nanos, "implausible usage at settlement; recorded disputed");
                    fresh[c.index] = &c.event;
                }
                let outcome = SettleOutcome {
                    applied: fresh.len(),
                    duplicates: events.len() - fresh.len(),
                    corrected: corrections
                        .iter()
                        .map(|c| (fresh_idx[c.index], c.event.clone()))
                        .collect(),
                    fresh: fresh_idx,
                };

                let mut inserted = Ok(());
                for chunk in pow2_chunks(&fresh) {
                    let mut q = sqlx::query(log_insert_sql(chunk.len()));
                    for e in chunk {
                        q = q
                            .bind(&e.request_id)
                            .bind(e.created_at_ms)
                            .bind(e.user_id)
                            .bind(e.api_key_id)
                            .bind(e.account_id)
                            .bind(e.user_package_id)
                            .bind(&e.model)
                            .bind(&e.endpoint)
                            .bind(e.stream as i64)
                            .bind(e.status as i64)
                            .bind(e.tokens.input)
                            .bind(e.tokens.output)
                            .bind(e.tokens.cache_read)
                            .bind(e.tokens.cache_write)
                            .bind(e.cost_nanos)
                            .bind(e.billing_status)
                            .bind(e.latency_ms)
                            .bind(e.ttfb_ms)
                            .bind(e.error.as_deref());
                    }
                    inserted = q.execute(&mut *tx).await.map(|_| ());
                    if inserted.is_err() {
                        break;
                    }
                }
                match inserted {
                    Err(sqlx::Error::Database(e)) if !look_up && e.is_unique_violation() => {
                        tx.rollback().await?;
                        look_up = true;
                        continue;
                    }
                    r => r?,
                }
                let t = totals(&fresh);
                for ((day, user_id, key_id, account_id, model), a) in &t.daily {
                    sqlx::query(daily_sql)
                        .bind(day)
                        .bind(user_id)
                        .bind(key_id)
                        .bind(account_id)
                        .bind(model)
                        .bind(a.requests)
                        .bind(a.tokens.input)
                        .bind(a.tokens.output)
                        .bind(a.tokens.cache_read)
                        .bind(a.tokens.cache_write)
                        .bind(a.cost)
                        .execute(&mut *tx)
                        .await?;
                }
                for (sql, map) in [(KEY_UPDATE, &t.keys), (ACCOUNT_UPDATE, &t.accounts)] {
                    for (id, a) in map {
                        sqlx::query(sql)
                            .bind(a.cost)
                            .bind(a.requests)
                            .bind(a.tokens.input)
                            .bind(a.tokens.output)
                            .bind(a.tokens.cache_read)
                            .bind(a.tokens.cache_write)
                            .bind(a.last_ms)
                            .bind(a.last_ms)
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                for ((id, d, w, m), cost) in &t.packages {
                    let mut q = sqlx::query(PACKAGE_CHARGE);
                    for start in [d, w, m] {
                        q = q
                            .bind(start)
                            .bind(cost)
                            .bind(start)
                            .bind(cost)
                            .bind(start)
                            .bind(start);
                    }
                    q.bind(cost).bind(now).bind(id).execute(&mut *tx).await?;
                }
                for ((id, d, w, m), cost) in &t.key_windows {
                    let mut q = sqlx::query(KEY_WINDOW_CHARGE);
                    for start in [d, w, m] {
                        q = q
                            .bind(start)
                            .bind(cost)
                            .bind(start)
                            .bind(cost)
                            .bind(start)
                            .bind(start);
                    }
                    q.bind(id).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                return Ok(outcome);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pow2_chunks_cover_the_batch_in_order_with_few_shapes() {
        let mut shapes = HashSet::new();
        for n in 0..=1000usize {
            let items: Vec<usize> = (0..n).collect();
            let chunks: Vec<&[usize]> = pow2_chunks(&items).collect();
            assert_eq!(chunks.concat(), items, "n={n}");
            for w in chunks.windows(2) {
                assert!(w[0].len() >= w[1].len(), "n={n}: larger chunks first");
            }
            for c in &chunks {
                assert!(
                    c.len().is_power_of_two() && c.len() <= CHUNK,
                    "n={n}: {}",
                    c.len()
                );
                shapes.insert(c.len());
                assert_eq!(log_insert_sql(c.len()).matches("(?,").count(), c.len());
            }
        }
        assert_eq!(shapes.len(), 8);
    }
}
