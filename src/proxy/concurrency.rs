//! Concurrency caps (SPEC §11.3): at most `max_concurrency` requests of a key, and of all a
//! user's keys, in flight at once.
//!
//! With Redis, a request holds a lease in one sorted set per key and per user
//! (`{prefix}cc:key:{id}`, `{prefix}cc:user:{id}`; member: the lease id, score: its expiry in
//! Redis time), taken by one script that first drops expired leases, so the slots of an
//! instance that died come back by themselves after `ttl`. A held lease is refreshed every
//! third of `ttl`, so a long stream keeps it. Without Redis, or while it does not answer within
//! `redis.timeout_ms`, the slots are counted in process (logged once per outage, as the other
//! Redis fallbacks).
//!
//! A [`Slot`] is released on drop; [`hold`] gives it to the response body, so it ends when
//! the answer's last byte is sent, when the client goes away (the body is dropped), or when
//! the request fails before that (the slot is dropped with the pipeline).

use foldhash::{HashMap, HashMapExt};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use redis::aio::ConnectionManager;
use redis::Script;

use crate::store::keys::KeyAuth;

/// Whose requests a cap counts.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Holder {
    Key(i64),
    User(i64),
}

/// The cap that is full: who, and its `max_concurrency`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full {
    pub holder: Holder,
    pub max: i64,
}

impl Full {
    /// The refusal's message (the code says the rest).
    pub fn message(&self) -> String {
        let who = match self.holder {
            Holder::Key(_) => "this API key",
            Holder::User(_) => "the user of this API key",
        };
        format!(
            "{who} already has {} requests in flight (its max_concurrency); retry when one finishes",
            self.max
        )
    }
}

/// KEYS: the sets, ARGV: lease id, TTL (ms), then each set's cap. Drops expired leases, then
/// takes a lease in every set if each has room: 0, or the (1-based) index of a full set.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
for i, k in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  if redis.call('ZCARD', k) >= tonumber(ARGV[i + 2]) then return i end
end
for _, k in ipairs(KEYS) do
  redis.call('ZADD', k, now + ttl, ARGV[1])
  redis.call('PEXPIRE', k, ttl)
end
return 0
"#,
    )
});

/// KEYS: the sets, ARGV: lease id, TTL (ms): the lease, where it is still held, lives on.
static REFRESH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
for _, k in ipairs(KEYS) do
  if redis.call('ZSCORE', k, ARGV[1]) then
    redis.call('ZADD', k, now + ttl, ARGV[1])
    redis.call('PEXPIRE', k, ttl)
  end
end
return 0
"#,
    )
});

struct Leases {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    ttl: Duration,
    /// Redis failed last time (so the outage is logged once).
    down: AtomicBool,
}

impl Leases {
    fn set(&self, h: Holder) -> String {
        match h {
            Holder::Key(id) => format!("{}cc:key:{id}", self.prefix),
            Holder::User(id) => format!("{}cc:user:{id}", self.prefix),
        }
    }

    /// Bound a Redis call by `redis.timeout_ms`; None (the outage logged once) when it fails.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        let err = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!("redis answers again: concurrency caps are shared again");
                }
                return Some(v);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out (redis.timeout_ms)".to_string(),
        };
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %err,
                "redis unavailable for concurrency caps: counting this instance's requests only until it answers"
            );
        }
        None
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
    }
}

/// The caps' state: in process, and in Redis when configured.
pub struct Concurrency {
    local: Mutex<HashMap<Holder, i64>>,
    redis: Option<Leases>,
}

/// What a request holds: released on drop.
pub struct Slot {
    caps: Arc<Concurrency>,
    holders: Vec<Holder>,
    /// The Redis lease id, when the slot is held there (else it is counted in process).
    lease: Option<String>,
    refresh: Option<tokio::task::JoinHandle<()>>,
}

impl Concurrency {
    pub fn memory() -> Arc<Concurrency> {
        Arc::new(Concurrency {
            local: Mutex::new(HashMap::new()),
            redis: None,
        })
    }

    /// Leases live `ttl` unless refreshed; calls give up after `timeout`.
    pub fn redis(
        conn: ConnectionManager,
        prefix: String,
        timeout: Duration,
        ttl: Duration,
    ) -> Arc<Concurrency> {
        Arc::new(Concurrency {
            local: Mutex::new(HashMap::new()),
            redis: Some(Leases {
                conn,
                prefix,
                timeout,
                ttl,
                down: AtomicBool::new(false),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Holder, i64>> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot under the key's and its user's caps; None when neither has one; Err(the full
    /// cap) when one is full.
    pub async fn acquire(self: &Arc<Self>, key: &KeyAuth) -> Result<Option<Slot>, Full> {
        let caps: Vec<Full> = [
            (Holder::Key(key.id), key.max_concurrency),
            (Holder::User(key.user_id), key.user_max_concurrency),
        ]
        .into_iter()
        .filter_map(|(holder, max)| max.map(|max| Full { holder, max }))
        .collect();
        if caps.is_empty() {
            return Ok(None);
        }
        if let Some(leases) = &self.redis {
            let id = uuid::Uuid::now_v7().to_string();
            match self.acquire_shared(leases, &caps, &id).await {
                Some(Ok(())) => {
                    return Ok(Some(Slot {
                        caps: self.clone(),
                        holders: caps.iter().map(|c| c.holder).collect(),
                        refresh: Some(self.refresher(caps.iter().map(|c| c.holder), &id)),
                        lease: Some(id),
                    }))
                }
                Some(Err(full)) => return Err(full),
                None => {
                    // The script may have run before the timeout: drop what it may have taken.
                    self.release_shared(caps.iter().map(|c| c.holder).collect(), id);
                }
            }
        }
        self.acquire_local(&caps)?;
        Ok(Some(Slot {
            caps: self.clone(),
            holders: caps.iter().map(|c| c.holder).collect(),
            lease: None,
            refresh: None,
        }))
    }

    /// None when Redis did not answer.
    async fn acquire_shared(
        &self,
        leases: &Leases,
        caps: &[Full],
        id: &str,
    ) -> Option<Result<(), Full>> {
        let mut inv = ACQUIRE.prepare_invoke();
        for c in caps {
            inv.key(leases.set(c.holder));
        }
        inv.arg(id).arg(leases.ttl_ms());
        for c in caps {
            inv.arg(c.max);
        }
        let mut conn = leases.conn.clone();
        let full: usize = leases.bounded(inv.invoke_async(&mut conn)).await?;
        Some(match full.checked_sub(1).and_then(|i| caps.get(i)) {
            Some(c) => Err(*c),
            None => Ok(()),
        })
    }

    fn acquire_local(&self, caps: &[Full]) -> Result<(), Full> {
        let mut m = self.lock();
        if let Some(c) = caps
            .iter()
            .find(|c| m.get(&c.holder).copied().unwrap_or(0) >= c.max)
        {
            return Err(*c);
        }
        for c in caps {
            *m.entry(c.holder).or_default() += 1;
        }
        Ok(())
    }

    /// Refreshes the lease every third of its TTL, until aborted (by the slot's drop).
    fn refresher(
        self: &Arc<Self>,
        holders: impl Iterator<Item = Holder>,
        id: &str,
    ) -> tokio::task::JoinHandle<()> {
        let caps = self.clone();
        let holders: Vec<Holder> = holders.collect();
        let id = id.to_string();
        tokio::spawn(async move {
            let Some(leases) = &caps.redis else { return };
            let every = leases.ttl / 3;
            loop {
                tokio::time::sleep(every).await;
                let mut inv = REFRESH.prepare_invoke();
                for h in &holders {
                    inv.key(leases.set(*h));
                }
                inv.arg(&id).arg(leases.ttl_ms());
                let mut conn = leases.conn.clone();
                let _: Option<i64> = leases.bounded(inv.invoke_async(&mut conn)).await;
            }
        })
    }

    /// Remove the lease from Redis in the background (past the timeout it expires by itself).
    fn release_shared(self: &Arc<Self>, holders: Vec<Holder>, id: String) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let caps = self.clone();
        rt.spawn(async move {
            let Some(leases) = &caps.redis else { return };
            let mut pipe = redis::pipe();
            for h in &holders {
                pipe.zrem(leases.set(*h), &id).ignore();
            }
            let mut conn = leases.conn.clone();
            let _: Option<()> = leases.bounded(pipe.query_async(&mut conn)).await;
        });
    }

    fn release_local(&self, holders: &[Holder]) {
        let mut m = self.lock();
        for h in holders {
            if let Some(n) = m.get_mut(h) {
                *n -= 1;
                if *n <= 0 {
                    m.remove(h);
                }
            }
        }
    }

    /// Requests of `holder` in flight as counted in process (for tests and the fallback).
    pub fn local_in_flight(&self, holder: Holder) -> i64 {
        self.lock().get(&holder).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(r) = self.refresh.take() {
            r.abort();
        }
        let holders = std::mem::take(&mut self.holders);
        match self.lease.take() {
            Some(id) => self.caps.release_shared(holders, id),
            None => self.caps.release_local(&holders),
        }
    }
}

/// The response, its body holding `slot` until it is sent in full or dropped.
pub fn hold(resp: Response, slot: Option<Slot>) -> Response {
    match slot {
        Some(slot) => resp.map(|inner| Body::new(SlotBody { inner, _slot: slot })),
        None => resp,
    }
}

struct SlotBody {
    inner: Body,
    _slot: Slot,
}

impl hyper::body::Body for SlotBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        hyper::body::Body::poll_frame(Pin::new(&mut self.inner), cx)
    }

    fn is_end_stream(&self) -> bool {
        hyper::body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::Body::size_hint(&self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{KeyStatus, UserStatus};

    fn key(id: i64, user_id: i64, max: Option<i64>, user_max: Option<i64>) -> KeyAuth {
        KeyAuth {
            id,
            user_id,
            status: KeyStatus::Active,
            expires_at: None,
            allowed_models: None,
            rpm_limit: None,
            tpm_limit: None,
            user_status: UserStatus::Active,
            max_concurrency: max,
            user_max_concurrency: user_max,
            created_at: 0,
            limits: Default::default(),
            allowed_ips: None,
            key_prefix: String::new(),
        }
    }

    #[tokio::test]
    async fn in_process_slots_are_capped_per_key_and_user_and_come_back_on_drop() {
        let c = Concurrency::memory();
        let (a, b) = (key(1, 10, Some(2), Some(3)), key(2, 10, None, Some(3)));
        assert!(c.acquire(&key(3, 11, None, None)).await.unwrap().is_none());
        let s1 = c.acquire(&a).await.unwrap();
        let s2 = c.acquire(&a).await.unwrap();
        let full = c.acquire(&a).await.err().unwrap();
        assert_eq!(full.holder, Holder::Key(1));
        assert_eq!(full.max, 2);
        let s3 = c.acquire(&b).await.unwrap();
        let full = c.acquire(&b).await.err().unwrap();
        assert_eq!(
            full.holder,
            Holder::User(10),
            "the user's cap spans its keys"
        );
        // The refused attempts took nothing.
        assert_eq!(c.local_in_flight(Holder::Key(1)), 2);
        assert_eq!(c.local_in_flight(Holder::User(10)), 3);
        drop(s1);
        assert_eq!(c.local_in_flight(Holder::Key(1)), 1);
        assert!(c.acquire(&b).await.unwrap().is_some());
        drop((s2, s3));
        assert_eq!(c.local_in_flight(Holder::Key(1)), 0);
        assert_eq!(c.local_in_flight(Holder::User(10)), 0);
    }
}
