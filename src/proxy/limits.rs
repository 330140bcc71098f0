//! Per-key RPM and TPM limits, in fixed one-minute windows. In Redis when configured (so they
//! hold across instances), in process otherwise. Every Redis call is bounded by
//! `redis.timeout_ms`; past it, or when Redis fails, the window is counted in process instead
//! (limits are a guard, billing is the source of truth), logged once per outage.

use foldhash::{HashMap, HashMapExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::ConnectionManager;

/// In-process windows: (key id, minute, RPM or TPM) → count.
type Windows = Mutex<HashMap<(i64, i64, u8), i64>>;

pub enum Limiter {
    Memory(Windows),
    Redis {
        conn: ConnectionManager,
        prefix: String,
        timeout: Duration,
        /// The fallback while Redis does not answer.
        local: Windows,
        /// Redis failed last time (so the outage is logged once).
        down: AtomicBool,
    },
}

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Rpm,
    Tpm,
}

const RPM: u8 = 0;
const TPM: u8 = 1;

/// Seconds until the next minute starts.
pub fn retry_after(now_ms: i64) -> u64 {
    let into = now_ms.rem_euclid(60_000);
    ((60_000 - into) as u64).div_ceil(1000).max(1)
}

fn lock(m: &Windows) -> std::sync::MutexGuard<'_, HashMap<(i64, i64, u8), i64>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Add `n` to a window in process; the new count.
fn local_add(m: &Windows, key_id: i64, minute: i64, kind: u8, n: i64) -> i64 {
    let mut m = lock(m);
    m.retain(|(_, min, _), _| *min >= minute - 1);
    let v = m.entry((key_id, minute, kind)).or_default();
    *v += n;
    *v
}

fn local_get(m: &Windows, key_id: i64, minute: i64, kind: u8) -> i64 {
    lock(m).get(&(key_id, minute, kind)).copied().unwrap_or(0)
}

impl Limiter {
    pub fn memory() -> Limiter {
        Limiter::Memory(Mutex::new(HashMap::new()))
    }

    pub fn redis(conn: ConnectionManager, prefix: String, timeout: Duration) -> Limiter {
        Limiter::Redis {
            conn,
            prefix,
            timeout,
            local: Mutex::new(HashMap::new()),
            down: AtomicBool::new(false),
        }
    }

    fn redis_key(prefix: &str, kind: u8, key_id: i64, minute: i64) -> String {
        let k = if kind == RPM { "rpm" } else { "tpm" };
        format!("{prefix}rl:{k}:{key_id}:{minute}")
    }

    /// The Redis counters of the key's RPM and TPM windows at `now_ms`, for the admission
    /// script (`billing::shared`), which checks them in its own round trip; None without Redis.
    pub fn redis_counters(&self, key_id: i64, now_ms: i64) -> Option<(String, String)> {
        let Limiter::Redis { prefix, .. } = self else {
            return None;
        };
        let minute = now_ms.div_euclid(60_000);
        Some((
            Self::redis_key(prefix, RPM, key_id, minute),
            Self::redis_key(prefix, TPM, key_id, minute),
        ))
    }

    fn local(&self) -> &Windows {
        match self {
            Limiter::Memory(m) => m,
            Limiter::Redis { local, .. } => local,
        }
    }

    /// RPM and TPM in process only: Redis just failed to answer the admission script, so this
    /// request does not wait for it a second time.
    pub fn check_local(
        &self,
        key_id: i64,
        rpm: Option<i64>,
        tpm: Option<i64>,
        now_ms: i64,
    ) -> Result<(), (Limit, u64)> {
        let minute = now_ms.div_euclid(60_000);
        if let Some(limit) = rpm {
            if local_add(self.local(), key_id, minute, RPM, 1) > limit {
                return Err((Limit::Rpm, retry_after(now_ms)));
            }
        }
        if let Some(limit) = tpm {
            if local_get(self.local(), key_id, minute, TPM) >= limit {
                return Err((Limit::Tpm, retry_after(now_ms)));
            }
        }
        Ok(())
    }

    /// Add a finished request's tokens to the key's TPM window in process (Redis did not take
    /// them).
    pub fn add_tokens_local(&self, key_id: i64, tokens: i64, now_ms: i64) {
        local_add(self.local(), key_id, now_ms.div_euclid(60_000), TPM, tokens);
    }

    /// Run a Redis call within the timeout; None (and the outage logged once) when it fails.
    async fn bounded<T>(
        timeout: Duration,
        down: &AtomicBool,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        let err = match tokio::time::timeout(timeout, call).await {
            Ok(Ok(v)) => {
                if down.swap(false, Ordering::Relaxed) {
                    tracing::info!("rate limiter: Redis answers again");
                }
                return Some(v);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} ms", timeout.as_millis()),
        };
        if !down.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %err, "rate limiter: Redis unavailable; counting in process until it answers");
        }
        None
    }

    /// Count a request against the key's RPM; Err(retry_after secs) when over.
    pub async fn hit_rpm(&self, key_id: i64, limit: i64, now_ms: i64) -> Result<(), u64> {
        let minute = now_ms.div_euclid(60_000);
        let n = match self {
            Limiter::Memory(m) => local_add(m, key_id, minute, RPM, 1),
            Limiter::Redis {
                conn,
                prefix,
                timeout,
                local,
                down,
            } => {
                let key = Self::redis_key(prefix, RPM, key_id, minute);
                let mut c = conn.clone();
                let mut pipe = redis::pipe();
                pipe.atomic().incr(&key, 1).expire(&key, 120).ignore();
                let r = Self::bounded(*timeout, down, pipe.query_async::<(i64,)>(&mut c)).await;
                match r {
                    Some((n,)) => n,
                    None => local_add(local, key_id, minute, RPM, 1),
                }
            }
        };
        if n > limit {
            Err(retry_after(now_ms))
        } else {
            Ok(())
        }
    }

    /// Is the key under its TPM for this minute? Err(retry_after secs) when not.
    pub async fn check_tpm(&self, key_id: i64, limit: i64, now_ms: i64) -> Result<(), u64> {
        let minute = now_ms.div_euclid(60_000);
        let used = match self {
            Limiter::Memory(m) => local_get(m, key_id, minute, TPM),
            Limiter::Redis {
                conn,
                prefix,
                timeout,
                local,
                down,
            } => {
                let mut c = conn.clone();
                let key = Self::redis_key(prefix, TPM, key_id, minute);
                let cmd = redis::cmd("GET").arg(&key).to_owned();
                let r = Self::bounded(*timeout, down, cmd.query_async::<Option<i64>>(&mut c)).await;
                match r {
                    Some(v) => v.unwrap_or(0),
                    None => local_get(local, key_id, minute, TPM),
                }
            }
        };
        if used >= limit {
            Err(retry_after(now_ms))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rpm_and_tpm_in_memory() {
        let l = Limiter::memory();
        let t = 1_700_000_010_000; // 30 s into a minute
        assert!(l.hit_rpm(1, 2, t).await.is_ok());
        assert!(l.hit_rpm(1, 2, t).await.is_ok());
        assert_eq!(l.hit_rpm(1, 2, t).await, Err(30));
        assert!(l.hit_rpm(2, 2, t).await.is_ok(), "other keys are separate");
        assert!(
            l.hit_rpm(1, 2, t + 60_000).await.is_ok(),
            "next minute resets"
        );
        assert!(l.check_tpm(1, 100, t).await.is_ok());
        l.add_tokens_local(1, 100, t);
        assert_eq!(l.check_tpm(1, 100, t).await, Err(30));
    }
}
