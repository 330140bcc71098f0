//! Real-time stats: today's counters per user, key, account, model and in total. In Redis when
//! configured (`{prefix}stats:{day}:{dim}:{id}` hashes, TTL 40 days), else in process.

use std::collections::BTreeMap;
use std::sync::Mutex;

use foldhash::{HashMap, HashMapExt};
use redis::aio::ConnectionManager;
use serde::Serialize;

use crate::usage::UsageEvent;

pub const DIMS: [&str; 5] = ["user", "key", "account", "model", "total"];
const TTL_SECS: i64 = 40 * 86_400;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    pub cost_nanos: i64,
}

impl Counters {
    fn add(&mut self, e: &UsageEvent) {
        self.requests += 1;
        self.input_tokens += e.tokens.input;
        self.output_tokens += e.tokens.output;
        self.cache_read_tokens += e.tokens.cache_read;
        self.cache_write_tokens += e.tokens.cache_write;
        self.cost_nanos += e.cost_nanos;
    }
    fn merge(&mut self, o: &Counters) {
        self.requests += o.requests;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cache_read_tokens += o.cache_read_tokens;
        self.cache_write_tokens += o.cache_write_tokens;
        self.cost_nanos += o.cost_nanos;
    }
    fn fields(&self) -> [(&'static str, i64); 6] {
        [
            ("requests", self.requests),
            ("input_tokens", self.input_tokens),
            ("output_tokens", self.output_tokens),
            ("cache_read_tokens", self.cache_read_tokens),
            ("cache_write_tokens", self.cache_write_tokens),
            ("cost_nanos", self.cost_nanos),
        ]
    }
    fn set(&mut self, field: &str, v: i64) {
        match field {
            "requests" => self.requests = v,
            "input_tokens" => self.input_tokens = v,
            "output_tokens" => self.output_tokens = v,
            "cache_read_tokens" => self.cache_read_tokens = v,
            "cache_write_tokens" => self.cache_write_tokens = v,
            "cost_nanos" => self.cost_nanos = v,
            _ => {}
        }
    }
}

/// (day, dim, id) → counters
type Key = (String, &'static str, String);

/// Today's counters by dimension: dim → id → counters.
pub type DayStats = BTreeMap<String, BTreeMap<String, Counters>>;

pub enum Stats {
    Memory(Mutex<HashMap<Key, Counters>>),
    Redis {
        conn: ConnectionManager,
        prefix: String,
    },
}

/// One usage_daily-shaped row: (day, user, key, account, model).
type RowKey<'a> = (&'a str, i64, i64, i64, &'a str);

/// Spreads per-row counters over the five dimensions. The rows are summed first (a batch has
/// few distinct rows), so the strings of the keys are made once per row, not once per event.
fn by_dimension<'a>(
    rows: impl IntoIterator<Item = (RowKey<'a>, Counters)>,
) -> HashMap<Key, Counters> {
    let mut m: HashMap<Key, Counters> = HashMap::new();
    for ((day, user, key, account, model), c) in rows {
        let ids = [
            user.to_string(),
            key.to_string(),
            account.to_string(),
            model.to_string(),
            "all".to_string(),
        ];
        for (dim, id) in DIMS.iter().zip(ids) {
            m.entry((day.to_string(), dim, id)).or_default().merge(&c);
        }
    }
    m
}

fn aggregate(events: &[UsageEvent]) -> HashMap<Key, Counters> {
    let mut rows: HashMap<RowKey<'_>, Counters> = HashMap::new();
    for e in events {
        let Some(account) = e.account_id else {
            continue;
        };
        rows.entry((&e.day, e.user_id, e.api_key_id, account, &e.model))
            .or_default()
            .add(e);
    }
    by_dimension(rows)
}

impl Stats {
    pub fn memory() -> Stats {
        Stats::Memory(Mutex::new(HashMap::new()))
    }

    /// Add applied events (only those that reached upstream, like the database sinks).
    pub async fn record(&self, events: &[UsageEvent]) -> redis::RedisResult<()> {
        let agg = aggregate(events);
        match self {
            Stats::Memory(m) => {
                let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
                for (k, c) in agg {
                    m.entry(k).or_default().merge(&c);
                }
                Ok(())
            }
            Stats::Redis { conn, prefix } => {
                let mut pipe = redis::pipe();
                pipe.atomic();
                for ((day, dim, id), c) in &agg {
                    let key = format!("{prefix}stats:{day}:{dim}:{id}");
                    for (f, v) in c.fields() {
                        if v != 0 || f == "requests" {
                            pipe.hincr(&key, f, v).ignore();
                        }
                    }
                    pipe.expire(&key, TTL_SECS).ignore();
                }
                let mut conn = conn.clone();
                pipe.query_async::<()>(&mut conn).await
            }
        }
    }

    /// Replace every counter of `day` with the figures of `usage_daily` (after Redis missed
    /// updates: the database is the source of truth).
    pub async fn overwrite_day(
        &self,
        day: &str,
        rows: &[crate::store::usage::UsageDailyRow],
    ) -> redis::RedisResult<()> {
        let agg = by_dimension(rows.iter().map(|r| {
            let c = Counters {
                requests: r.requests,
                input_tokens: r.input_tokens,
                output_tokens: r.output_tokens,
                cache_read_tokens: r.cache_read_tokens,
                cache_write_tokens: r.cache_write_tokens,
                cost_nanos: r.cost,
            };
            (
                (day, r.user_id, r.api_key_id, r.account_id, r.model.as_str()),
                c,
            )
        }));
        match self {
            Stats::Memory(m) => {
                let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
                m.retain(|(d, _, _), _| d != day);
                m.extend(agg);
                Ok(())
            }
            Stats::Redis { conn, prefix } => {
                let mut pipe = redis::pipe();
                pipe.atomic();
                for ((day, dim, id), c) in &agg {
                    let key = format!("{prefix}stats:{day}:{dim}:{id}");
                    pipe.del(&key).ignore();
                    pipe.hset_multiple(&key, &c.fields()).ignore();
                    pipe.expire(&key, TTL_SECS).ignore();
                }
                let mut conn = conn.clone();
                pipe.query_async::<()>(&mut conn).await
            }
        }
    }

    /// Every counter of `day`.
    pub async fn day(&self, day: &str) -> redis::RedisResult<DayStats> {
        let mut out: DayStats = BTreeMap::new();
        match self {
            Stats::Memory(m) => {
                let m = m.lock().unwrap_or_else(|p| p.into_inner());
                for ((d, dim, id), c) in m.iter() {
                    if d == day {
                        out.entry(dim.to_string())
                            .or_default()
                            .insert(id.clone(), *c);
                    }
                }
            }
            Stats::Redis { conn, prefix } => {
                let mut conn = conn.clone();
                let pattern = format!("{prefix}stats:{day}:*");
                let mut keys: Vec<String> = Vec::new();
                let mut cursor: u64 = 0;
                loop {
                    let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn)
                        .await?;
                    keys.extend(batch);
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
                let head = format!("{prefix}stats:{day}:");
                for key in keys {
                    let Some((dim, id)) = key.strip_prefix(&head).and_then(|r| r.split_once(':'))
                    else {
                        continue;
                    };
                    let fields: HashMap<String, i64> = redis::cmd("HGETALL")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await?;
                    let mut c = Counters::default();
                    for (f, v) in fields {
                        c.set(&f, v);
                    }
                    out.entry(dim.to_string())
                        .or_default()
                        .insert(id.to_string(), c);
                }
            }
        }
        Ok(out)
    }
}
