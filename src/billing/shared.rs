//! Reservations in Redis, so every instance admits against the same in-flight total.
//!
//! Holds are kept per group: a grant `g`, or a key's budget `k{id}` ([`Holder`]). Per group,
//! under the key prefix: `res:g:amt` (hash: hold id → amount), `res:g:exp` (sorted set: hold id
//! → expiry, ms), `res:g:sum` (the holds' total) and the settled charges `res:g:set` (score:
//! settlement sequence number) and `res:g:sett` (score: when), members `seq:amount:cum`, where
//! `cum` is `res:g:cum`, the group's settled total, after this charge; `res:g:sw` is there
//! while the group was swept in the last `SWEEP_EVERY_MS`; `res:seq` numbers the settlements
//! of every instance. The same guarantee as the in-process
//! [`super::admission::Reservations`]: an admission that read a grant's (or key's) usage before
//! settlement S counts S's charges, one that read it after does not, across instances.
//!
//! Admission is one script, one round trip: the key's RPM and TPM counters (the same keys as
//! `proxy::limits`), its budget, then the grants (SPEC §11.1). A hold's id is its request id;
//! it expires by itself after the TTL, swept at most `SWEEP_EVERY_MS` later (an instance that
//! dies leaves nothing behind for longer); settled charges are kept `SETTLED_KEEP`. An
//! admission makes 6 calls in Redis for a grant, 11 with the key's budget (and a sweep's
//! few every `SWEEP_EVERY_MS`); it made ~25 when it swept and renewed every expiry each
//! time. Admissions go in pipelines (`pipeline_admissions`). Every call is bounded by
//! `redis.timeout_ms`; a failure returns None and the caller falls back to the in-process
//! figures. The first failure is logged, and the recovery.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;
use tokio::sync::{mpsc, oneshot};

/// How often a group's expired holds and old settled charges are swept, at most: a hold
/// expires after the TTL (at least the longest upstream timeout, minutes), so a few hundred ms
/// late changes nothing, and most admissions skip the two scans.
const SWEEP_EVERY_MS: u64 = 250;

/// Time from Redis (one clock for every instance); `sweep(b)`: drop group `b`'s expired holds
/// and settled charges older than the keep time, returning what its holds' total lost;
/// `look(b, since)`: what the group's holds and its charges settled after `since` total.
/// ARGV[1] is the prefix, ARGV[2] the keep time (ms).
static PRELUDE: LazyLock<String> = LazyLock::new(|| {
    r#"
local P = ARGV[1]
local keep = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function sweep(b)
  redis.call('SET', b .. ':sw', '1', 'PX', SWEEP_EVERY_MS)
  local lost = 0
  local gone = redis.call('ZRANGEBYSCORE', b .. ':exp', '-inf', now)
  for _, id in ipairs(gone) do
    local a = redis.call('HGET', b .. ':amt', id)
    if a then
      redis.call('DECRBY', b .. ':sum', a)
      lost = lost + tonumber(a)
    end
    redis.call('HDEL', b .. ':amt', id)
  end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', b .. ':exp', '-inf', now) end
  local old = redis.call('ZRANGEBYSCORE', b .. ':sett', '-inf', now - keep)
  for _, m in ipairs(old) do redis.call('ZREM', b .. ':set', m) end
  if #old > 0 then redis.call('ZREMRANGEBYSCORE', b .. ':sett', '-inf', now - keep) end
  return lost
end
-- Also whether a hold made now must set the group's expiry: it was swept now (the expiry is
-- renewed at most every sweep), or it holds nothing, so a hold may create its keys afresh.
local function look(b, since)
  local v = redis.call('MGET', b .. ':sum', b .. ':cum', b .. ':sw')
  local sum = tonumber(v[1] or '0')
  local renew = sum <= 0
  if not v[3] then
    sum = sum - sweep(b)
    renew = true
  end
  local r = sum
  -- Members are seq:amount:cum (cum: the group's settled total after this one), so what was
  -- settled after `since` is cum now minus cum before the first member after it: one lookup,
  -- not a scan of every batch settled since (~28 us of Redis CPU a request at 12k req/s).
  local first = redis.call('ZRANGEBYSCORE', b .. ':set', '(' .. since, '+inf', 'LIMIT', 0, 1)[1]
  if first then
    local a, c = string.match(first, ':(-?%d+):(-?%d+)$')
    if c then
      r = r + tonumber(v[2] or c) - tonumber(c) + tonumber(a)
    else
      -- seq:amount, from a version before cum (a rolling upgrade; kept SETTLED_KEEP at most)
      for _, m in ipairs(redis.call('ZRANGEBYSCORE', b .. ':set', '(' .. since, '+inf')) do
        r = r + tonumber(string.match(m, '^%d+:(-?%d+)'))
      end
    end
  end
  return r, renew
end
"#
    .replace("SWEEP_EVERY_MS", &SWEEP_EVERY_MS.to_string())
});

/// Admission in one round trip: the key's RPM and TPM, its budget, then the grants.
/// ARGV: prefix, keep, hold id, amount, TTL (ms); RPM counter key, RPM limit; TPM counter key,
/// TPM limit; the key's budget group, its room, the since of its usage ('' for what is not
/// limited); the grants' since, then (grant group, room) in admission order. Returns {code,
/// what the key's budget looked at holds, what each grant looked at holds}: code is the
/// 1-based index of the grant that holds the amount now (the key's budget holds it too),
/// 0 when no grant has room, -1 over RPM, -2 over TPM, -3 the key's budget full.
/// A counter's expiry is set when it is created (a minute's counter lives 120 s).
static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}{}",
        *PRELUDE,
        r#"
local id, amount, ttl = ARGV[3], ARGV[4], tonumber(ARGV[5])
local function hold(b, renew)
  redis.call('HSET', b .. ':amt', id, amount)
  redis.call('ZADD', b .. ':exp', now + ttl, id)
  redis.call('INCRBY', b .. ':sum', amount)
  if renew then
    for _, k in ipairs({':amt', ':exp', ':sum'}) do redis.call('PEXPIRE', b .. k, ttl + keep) end
  end
end
if ARGV[6] ~= '' then
  local n = redis.call('INCR', ARGV[6])
  if n == 1 then redis.call('EXPIRE', ARGV[6], 120) end
  if n > tonumber(ARGV[7]) then return {-1, 0} end
end
if ARGV[8] ~= '' then
  if tonumber(redis.call('GET', ARGV[8]) or '0') >= tonumber(ARGV[9]) then return {-2, 0} end
end
local kb, krenew = nil, false
local kheld = 0
if ARGV[10] ~= '' then
  kb = P .. 'res:' .. ARGV[10]
  kheld, krenew = look(kb, ARGV[12])
  if kheld >= tonumber(ARGV[11]) then return {-3, kheld} end
end
local out = {0, kheld}
local since = ARGV[13]
for i = 14, #ARGV, 2 do
  local b = P .. 'res:' .. ARGV[i]
  local r, renew = look(b, since)
  out[#out + 1] = r
  if r < tonumber(ARGV[i + 1]) then
    hold(b, renew)
    if kb then hold(kb, krenew) end
    out[1] = math.floor((i - 12) / 2)
    return out
  end
end
return out
"#
    ))
});

/// ARGV: prefix, keep, hold id, amount, TPM counter key ('' for none), tokens, then groups: in
/// each, the hold (if still there) now holds `amount` (0 ends it); the tokens are added to the
/// TPM window.
static ADJUST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}{}",
        *PRELUDE,
        r#"
local id, amount = ARGV[3], ARGV[4]
if ARGV[5] ~= '' then
  if redis.call('INCRBY', ARGV[5], ARGV[6]) == tonumber(ARGV[6]) then
    redis.call('EXPIRE', ARGV[5], 120)
  end
end
for i = 7, #ARGV do
  local b = P .. 'res:' .. ARGV[i]
  local old = redis.call('HGET', b .. ':amt', id)
  if old then
    if amount == '0' then
      redis.call('DECRBY', b .. ':sum', old)
      redis.call('HDEL', b .. ':amt', id)
      redis.call('ZREM', b .. ':exp', id)
    else
      redis.call('HSET', b .. ':amt', id, amount)
      redis.call('INCRBY', b .. ':sum', string.format('%d', tonumber(amount) - tonumber(old)))
    end
  end
end
return 1
"#
    ))
});

/// ARGV: prefix, keep, then (group, hold id, amount) of charges just committed: their holds
/// end and their amounts are kept as settled at a new sequence number, which it returns.
/// A batch's holds end with a few calls per group (HMGET, HDEL, ZREM, DECRBY), not per charge.
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}{}",
        *PRELUDE,
        r#"
local seq = redis.call('INCR', P .. 'res:seq')
local groups, ids, seen, by = {}, {}, {}, {}
for i = 3, #ARGV, 3 do
  local g, id = ARGV[i], ARGV[i + 1]
  if not ids[g] then
    groups[#groups + 1] = g
    ids[g], seen[g], by[g] = {}, {}, 0
  end
  if not seen[g][id] then
    seen[g][id] = true
    ids[g][#ids[g] + 1] = id
  end
  by[g] = by[g] + tonumber(ARGV[i + 2])
end
for _, g in ipairs(groups) do
  local b = P .. 'res:' .. g
  local all = ids[g]
  for from = 1, #all, 500 do
    local part = {unpack(all, from, math.min(from + 499, #all))}
    local ended = 0
    for _, a in ipairs(redis.call('HMGET', b .. ':amt', unpack(part))) do
      if a then ended = ended + tonumber(a) end
    end
    if ended ~= 0 then redis.call('DECRBY', b .. ':sum', string.format('%d', ended)) end
    redis.call('HDEL', b .. ':amt', unpack(part))
    redis.call('ZREM', b .. ':exp', unpack(part))
  end
  local amount = by[g]
  if amount ~= 0 then
    local cum = redis.call('INCRBY', b .. ':cum', string.format('%d', amount))
    local m = seq .. ':' .. string.format('%d', amount) .. ':' .. string.format('%d', cum)
    redis.call('ZADD', b .. ':set', seq, m)
    redis.call('ZADD', b .. ':sett', now, m)
    for _, k in ipairs({':set', ':sett', ':cum'}) do redis.call('PEXPIRE', b .. k, keep) end
  end
end
return seq
"#
    ))
});

/// ARGV: prefix, keep, group: what its holds total now (swept now, whenever it was last).
static HELD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}{}",
        *PRELUDE,
        r#"
local b = P .. 'res:' .. ARGV[3]
sweep(b)
return tonumber(redis.call('GET', b .. ':sum') or '0')
"#
    ))
});

/// Who holds: a grant, or a key's budget (SPEC §11.3), each its own group of holds in Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    Grant(i64),
    KeyBudget(i64),
}

impl redis::ToRedisArgs for Holder {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        match self {
            Holder::Grant(g) => g.write_redis_args(out),
            Holder::KeyBudget(k) => out.write_arg_fmt(format_args!("k{k}")),
        }
    }
}

/// One admission, as [`SharedReservations::admit`] decides it.
pub struct Ask<'a> {
    /// The hold's id (the request id) and what it holds.
    pub hold: &'a str,
    pub amount: i64,
    /// The key's RPM and TPM counters this minute and their limits, when limited.
    pub rpm: Option<(&'a str, i64)>,
    pub tpm: Option<(&'a str, i64)>,
    /// A key with a budget: (key id, its room, the sequence number read before its usage).
    pub key_budget: Option<(i64, i64, i64)>,
    /// The sequence number read before the grants' usage, and (grant, room) in admission order.
    pub since: i64,
    pub rooms: &'a [(i64, i64)],
}

/// What Redis decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// This grant holds the amount (and the key's budget, when it has one).
    Granted(i64),
    OverRpm,
    OverTpm,
    /// The key's budget has no room: what its holds looked like.
    KeyBudgetFull(i64),
    /// No grant has room: what each grant looked at holds, in the order of the rooms.
    NoRoom(Vec<i64>),
}

/// The Redis side of the reservations (see the module documentation).
pub struct SharedReservations {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    ttl_ms: i64,
    keep_ms: i64,
    down: AtomicBool,
    /// Settled charges Redis did not take (it timed out): sent again with the next batch, so
    /// their holds do not stay until the TTL on top of usage the database already has.
    unsent: std::sync::Mutex<Vec<(Holder, String, i64)>>,
    /// The admission pipeline's queue (started with the first admission, in its runtime).
    admissions: std::sync::OnceLock<mpsc::UnboundedSender<Admission>>,
}

/// One admission script call waiting for the pipeline, and where its answer goes.
struct Admission {
    cmd: redis::Cmd,
    answer: oneshot::Sender<redis::RedisResult<redis::Value>>,
}

/// Admissions sent together in one pipeline at most.
const PIPELINE_MAX: usize = 256;

/// The admission pipeline: the admissions queued in one scheduler turn go to Redis in one
/// write. redis-rs writes each command as it is queued, and its connection task runs right
/// after the request that woke it (tokio's LIFO slot), so without this every admission cost
/// a `writev` of its own; yielding once lets the other ready requests queue theirs first.
/// At one connection nothing waits longer than that one turn.
async fn pipeline_admissions(
    mut conn: ConnectionManager,
    timeout: Duration,
    mut rx: mpsc::UnboundedReceiver<Admission>,
) {
    let mut batch: Vec<Admission> = Vec::with_capacity(PIPELINE_MAX);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        tokio::task::yield_now().await;
        while batch.len() < PIPELINE_MAX {
            match rx.try_recv() {
                Ok(a) => batch.push(a),
                Err(_) => break,
            }
        }
        // A request that gave up (its timeout) falls back in process: nothing is held for it.
        batch.retain(|a| !a.answer.is_closed());
        if batch.is_empty() {
            continue;
        }
        // The commands move into the pipeline; only those Redis did not know the script for
        // are copied, to be sent again.
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let answers: Vec<_> = batch
            .drain(..)
            .map(|a| {
                pipe.add_command(a.cmd);
                a.answer
            })
            .collect();
        let mut results = query_admissions(&mut conn, timeout, &pipe).await;
        if results.as_ref().is_ok_and(|rs| rs.iter().any(no_script)) {
            // Redis forgot the script (a restart, SCRIPT FLUSH): load it, send those again.
            let load = tokio::time::timeout(timeout, ADMIT.load_async(&mut conn)).await;
            if let (Ok(Ok(_)), Ok(rs)) = (load, results.as_mut()) {
                let again: Vec<usize> = (0..rs.len()).filter(|&i| no_script(&rs[i])).collect();
                let mut resend = redis::pipe();
                resend.ignore_errors();
                for (i, cmd) in pipe.cmd_iter().enumerate() {
                    if again.contains(&i) {
                        resend.add_command(cmd.clone());
                    }
                }
                if let Ok(second) = query_admissions(&mut conn, timeout, &resend).await {
                    for (i, r) in again.into_iter().zip(second) {
                        rs[i] = r;
                    }
                }
            }
        }
        // On Err the senders drop, which tells each request that Redis did not answer.
        if let Ok(rs) = results {
            for (answer, r) in answers.into_iter().zip(rs) {
                let _ = answer.send(r);
            }
        }
    }
}

/// Redis did not know the script (it restarted, or its scripts were flushed).
fn no_script(r: &redis::RedisResult<redis::Value>) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    matches!(r, Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript))
}

/// A pipeline of admissions (errors kept per command), each with its own result; Err when
/// it failed as a whole (the connection, or the time).
async fn query_admissions(
    conn: &mut ConnectionManager,
    timeout: Duration,
    pipe: &redis::Pipeline,
) -> Result<Vec<redis::RedisResult<redis::Value>>, ()> {
    match tokio::time::timeout(timeout, pipe.query_async(conn)).await {
        Ok(Ok(rs)) => Ok(rs),
        _ => Err(()),
    }
}

/// Past this many unsent settled charges the oldest are given up (their holds end by TTL).
const UNSENT_MAX: usize = 100_000;

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
            unsent: std::sync::Mutex::default(),
            admissions: std::sync::OnceLock::new(),
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
                self.answered();
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

    fn answered(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!("redis answers again: reservations are shared again");
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

    /// RPM, TPM, the key's budget and the grants, checked and held in one round trip (see
    /// [`Ask`], [`Decision`]); None when Redis does not answer in time.
    pub async fn admit(&self, ask: &Ask<'_>) -> Option<Decision> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(ADMIT.get_hash())
            .arg(0)
            .arg(&self.prefix)
            .arg(self.keep_ms);
        cmd.arg(ask.hold).arg(ask.amount).arg(self.ttl_ms);
        let (rpm_key, rpm) = ask.rpm.unwrap_or(("", 0));
        let (tpm_key, tpm) = ask.tpm.unwrap_or(("", 0));
        cmd.arg(rpm_key).arg(rpm).arg(tpm_key).arg(tpm);
        match ask.key_budget {
            Some((key, room, since)) => cmd.arg(Holder::KeyBudget(key)).arg(room).arg(since),
            None => cmd.arg("").arg(0).arg(0),
        };
        cmd.arg(ask.since);
        for (g, room) in ask.rooms {
            cmd.arg(*g).arg(*room);
        }
        let queue = self.admissions.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(pipeline_admissions(self.conn.clone(), self.timeout, rx));
            tx
        });
        let (answer, rx) = oneshot::channel();
        if queue.send(Admission { cmd, answer }).is_err() {
            self.failed("the admission pipeline stopped");
            return None;
        }
        let out: Vec<i64> = match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(Ok(v))) => match redis::from_redis_value(v) {
                Ok(out) => {
                    self.answered();
                    out
                }
                Err(e) => {
                    self.failed(&e.to_string());
                    return None;
                }
            },
            Ok(Ok(Err(e))) => {
                self.failed(&e.to_string());
                return None;
            }
            Ok(Err(_)) => {
                self.failed("no answer from redis (the connection, or redis.timeout_ms)");
                return None;
            }
            Err(_) => {
                self.failed("timed out (redis.timeout_ms)");
                return None;
            }
        };
        let (&code, rest) = out.split_first()?;
        let (&key_held, seen) = rest.split_first()?;
        Some(match code {
            -1 => Decision::OverRpm,
            -2 => Decision::OverTpm,
            -3 => Decision::KeyBudgetFull(key_held),
            0 => Decision::NoRoom(seen.to_vec()),
            i => Decision::Granted(ask.rooms.get(usize::try_from(i - 1).ok()?)?.0),
        })
    }

    /// The hold `hold` of each of `holders` now holds `amount` (0 ends it), and `tpm` (counter
    /// key, tokens) is added to the key's TPM window; false when Redis did not answer.
    pub async fn adjust(
        &self,
        hold: &str,
        amount: i64,
        holders: &[Holder],
        tpm: Option<(&str, i64)>,
    ) -> bool {
        let r: Option<i64> = self
            .run(&ADJUST, |inv| {
                let (tpm_key, tokens) = tpm.unwrap_or(("", 0));
                inv.arg(hold).arg(amount).arg(tpm_key).arg(tokens);
                for h in holders {
                    inv.arg(*h);
                }
            })
            .await;
        r.is_some()
    }

    /// These (holder, hold, amount) charges were just committed to the database. Those Redis
    /// does not take now go again with the next batch.
    pub async fn settled(&self, items: &[(Holder, &str, i64)]) {
        let earlier = std::mem::take(&mut *self.lock_unsent());
        if items.is_empty() && earlier.is_empty() {
            return;
        }
        let sent: Option<i64> = self
            .run(&SETTLE, |inv| {
                for (h, hold, amount) in &earlier {
                    inv.arg(*h).arg(hold.as_str()).arg(*amount);
                }
                for (h, hold, amount) in items {
                    inv.arg(*h).arg(*hold).arg(*amount);
                }
            })
            .await;
        if sent.is_none() {
            let mut unsent = self.lock_unsent();
            let mut again = earlier;
            again.extend(items.iter().map(|(h, hold, a)| (*h, hold.to_string(), *a)));
            again.append(&mut unsent);
            let over = again.len().saturating_sub(UNSENT_MAX);
            again.drain(..over);
            *unsent = again;
        }
    }

    fn lock_unsent(&self) -> std::sync::MutexGuard<'_, Vec<(Holder, String, i64)>> {
        self.unsent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What in-flight requests of every instance hold against `holder` now.
    pub async fn held(&self, holder: Holder) -> Option<i64> {
        self.run(&HELD, |inv| {
            inv.arg(holder);
        })
        .await
    }
}
