//! Reservations in Redis, so every instance admits against the same in-flight total.
//!
//! Per grant `g`, under the key prefix: `res:g:amt` (hash: hold id → amount), `res:g:exp`
//! (sorted set: hold id → expiry, ms), `res:g:sum` (the holds' total) and the settled charges
//! `res:g:set` (score: settlement sequence number) and `res:g:sett` (score: when), members
//! `seq:amount`; `res:seq` numbers the settlements of every instance. The same guarantee as the
//! in-process [`super::admission::Reservations`]: an admission that read a grant's usage before
//! settlement S counts S's charges, one that read it after does not, across instances.
//!
//! A hold's id is its request id; it expires by itself after the TTL (an instance that dies
//! leaves nothing behind for longer); settled charges are kept `SETTLED_KEEP`. Every call is
//! bounded by `redis.timeout_ms`; a failure returns None and the caller falls back to the
//! in-process figures. The first failure is logged, and the recovery.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;

/// Time from Redis (one clock for every instance), and `sweep(g)`: drop expired holds and
/// settled charges older than the keep time. ARGV[1] is the prefix, ARGV[2] the keep time (ms).
const PRELUDE: &str = r#"
local P = ARGV[1]
local keep = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function sweep(g)
  local b = P .. 'res:' .. g
  local gone = redis.call('ZRANGEBYSCORE', b .. ':exp', '-inf', now)
  for _, id in ipairs(gone) do
    local a = redis.call('HGET', b .. ':amt', id)
    if a then redis.call('DECRBY', b .. ':sum', a) end
    redis.call('HDEL', b .. ':amt', id)
  end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', b .. ':exp', '-inf', now) end
  local old = redis.call('ZRANGEBYSCORE', b .. ':sett', '-inf', now - keep)
  for _, m in ipairs(old) do redis.call('ZREM', b .. ':set', m) end
  if #old > 0 then redis.call('ZREMRANGEBYSCORE', b .. ':sett', '-inf', now - keep) end
end
local function held(g, since)
  local b = P .. 'res:' .. g
  local r = tonumber(redis.call('GET', b .. ':sum') or '0')
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', b .. ':set', '(' .. since, '+inf')) do
    r = r + tonumber(string.match(m, ':(-?%d+)$'))
  end
  return r
end
"#;

/// ARGV: prefix, keep, since, hold id, amount, TTL (ms), then (grant, room) in admission
/// order. Holds the amount against the first grant whose holds leave room; returns
/// {chosen grant or 0, what each grant looked at holds}.
static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRELUDE}{}",
        r#"
local since, id, amount, ttl = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local out = {0}
for i = 7, #ARGV, 2 do
  local g = ARGV[i]
  sweep(g)
  local r = held(g, since)
  out[#out + 1] = r
  if r < tonumber(ARGV[i + 1]) then
    local b = P .. 'res:' .. g
    redis.call('HSET', b .. ':amt', id, amount)
    redis.call('ZADD', b .. ':exp', now + ttl, id)
    redis.call('INCRBY', b .. ':sum', amount)
    for _, k in ipairs({':amt', ':exp', ':sum'}) do redis.call('PEXPIRE', b .. k, ttl + keep) end
    out[1] = tonumber(g)
    return out
  end
end
return out
"#
    ))
});

/// ARGV: prefix, keep, grant, hold id, amount: a hold (if still there) now holds `amount`;
/// 0 removes it.
static ADJUST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRELUDE}{}",
        r#"
local b = P .. 'res:' .. ARGV[3]
local id, amount = ARGV[4], ARGV[5]
local old = redis.call('HGET', b .. ':amt', id)
if not old then return 0 end
redis.call('DECRBY', b .. ':sum', old)
if amount == '0' then
  redis.call('HDEL', b .. ':amt', id)
  redis.call('ZREM', b .. ':exp', id)
else
  redis.call('HSET', b .. ':amt', id, amount)
  redis.call('INCRBY', b .. ':sum', amount)
end
return 1
"#
    ))
});

/// ARGV: prefix, keep, then (grant, hold id, amount) of charges just committed: their holds
/// end and their amounts are kept as settled at a new sequence number, which it returns.
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRELUDE}{}",
        r#"
local seq = redis.call('INCR', P .. 'res:seq')
local by = {}
for i = 3, #ARGV, 3 do
  local g, id = ARGV[i], ARGV[i + 1]
  local b = P .. 'res:' .. g
  local a = redis.call('HGET', b .. ':amt', id)
  if a then
    redis.call('DECRBY', b .. ':sum', a)
    redis.call('HDEL', b .. ':amt', id)
    redis.call('ZREM', b .. ':exp', id)
  end
  by[g] = (by[g] or 0) + tonumber(ARGV[i + 2])
end
for g, amount in pairs(by) do
  if amount ~= 0 then
    local b = P .. 'res:' .. g
    local m = seq .. ':' .. string.format('%d', amount)
    redis.call('ZADD', b .. ':set', seq, m)
    redis.call('ZADD', b .. ':sett', now, m)
    redis.call('PEXPIRE', b .. ':set', keep)
    redis.call('PEXPIRE', b .. ':sett', keep)
  end
end
return seq
"#
    ))
});

/// ARGV: prefix, keep, grant: what its holds total now.
static HELD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRELUDE}{}",
        r#"
sweep(ARGV[3])
return tonumber(redis.call('GET', P .. 'res:' .. ARGV[3] .. ':sum') or '0')
"#
    ))
});

/// The Redis side of the reservations (see the module documentation).
pub struct SharedReservations {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    ttl_ms: i64,
    keep_ms: i64,
    down: AtomicBool,
}

impl SharedReservations {
    /// Holds expire after `ttl`, settled charges are kept `keep`; calls give up after `timeout`.
    pub fn new(
        conn: ConnectionManager,
        prefix: String,
        timeout: Duration,
        ttl: Duration,
        keep: Duration,
    ) -> SharedReservations {
        SharedReservations {
            conn,
            prefix,
            timeout,
            ttl_ms: ttl.as_millis() as i64,
            keep_ms: keep.as_millis() as i64,
            down: AtomicBool::new(false),
        }
    }

    /// Run `script` with the prefix and keep time, then `args`; None on error or timeout.
    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        args: impl FnOnce(&mut redis::ScriptInvocation<'_>),
    ) -> Option<T> {
        let mut inv = script.prepare_invoke();
        inv.arg(&self.prefix).arg(self.keep_ms);
        args(&mut inv);
        let mut conn = self.conn.clone();
        let r = tokio::time::timeout(self.timeout, inv.invoke_async::<T>(&mut conn)).await;
        match r {
            Ok(Ok(v)) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!("redis answers again: reservations are shared again");
                }
                Some(v)
            }
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                None
            }
            Err(_) => {
                self.failed("timed out (redis.timeout_ms)");
                None
            }
        }
    }

    fn failed(&self, error: &str) {
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error,
                "redis unavailable for reservations: admitting against this instance's reservations only until it answers"
            );
        }
    }

    /// The settlement sequence number now; read it *before* reading grants' usage.
    pub async fn seq(&self) -> Option<i64> {
        let key = format!("{}res:seq", self.prefix);
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("GET");
        cmd.arg(&key);
        let get = cmd.query_async::<Option<i64>>(&mut conn);
        match tokio::time::timeout(self.timeout, get).await {
            Ok(Ok(v)) => Some(v.unwrap_or(0)),
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                None
            }
            Err(_) => {
                self.failed("timed out (redis.timeout_ms)");
                None
            }
        }
    }

    /// Hold `amount` under `hold` against the first of `rooms` (grant, limit − effective used
    /// of its tightest window, in admission order) whose holds leave room, for usage read at
    /// `since`. Some((chosen grant or None, what each grant looked at holds)).
    pub async fn admit(
        &self,
        since: i64,
        hold: &str,
        amount: i64,
        rooms: &[(i64, i64)],
    ) -> Option<(Option<i64>, Vec<i64>)> {
        let out: Vec<i64> = self
            .run(&ADMIT, |inv| {
                inv.arg(since).arg(hold).arg(amount).arg(self.ttl_ms);
                for (g, room) in rooms {
                    inv.arg(*g).arg(*room);
                }
            })
            .await?;
        let (&chosen, seen) = out.split_first()?;
        Some(((chosen != 0).then_some(chosen), seen.to_vec()))
    }

    /// The hold `hold` of `grant` now holds `amount` (0 ends it).
    pub async fn adjust(&self, grant: i64, hold: &str, amount: i64) {
        let _: Option<i64> = self
            .run(&ADJUST, |inv| {
                inv.arg(grant).arg(hold).arg(amount);
            })
            .await;
    }

    /// These (grant, hold, amount) charges were just committed to the database.
    pub async fn settled(&self, items: &[(i64, &str, i64)]) {
        if items.is_empty() {
            return;
        }
        let _: Option<i64> = self
            .run(&SETTLE, |inv| {
                for (g, hold, amount) in items {
                    inv.arg(*g).arg(*hold).arg(*amount);
                }
            })
            .await;
    }

    /// What in-flight requests of every instance hold against `grant` now.
    pub async fn held(&self, grant: i64) -> Option<i64> {
        self.run(&HELD, |inv| {
            inv.arg(grant);
        })
        .await
    }
}
