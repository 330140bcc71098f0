//! Per-key RPM and TPM limits, in fixed one-minute windows. In Redis when configured (so they
//! hold across instances), in process otherwise. Redis failures let the request through
//! (limits are a guard, billing is the source of truth) and are logged.

use std::collections::HashMap;
use std::sync::Mutex;

use redis::aio::ConnectionManager;

pub enum Limiter {
    Memory(Mutex<HashMap<(i64, i64, u8), i64>>),
    Redis {
        conn: ConnectionManager,
        prefix: String,
    },
}

const RPM: u8 = 0;
const TPM: u8 = 1;

/// Seconds until the next minute starts.
fn retry_after(now_ms: i64) -> u64 {
    let into = now_ms.rem_euclid(60_000);
    ((60_000 - into) as u64).div_ceil(1000).max(1)
}

impl Limiter {
    pub fn memory() -> Limiter {
        Limiter::Memory(Mutex::new(HashMap::new()))
    }

    fn redis_key(prefix: &str, kind: u8, key_id: i64, minute: i64) -> String {
        let k = if kind == RPM { "rpm" } else { "tpm" };
        format!("{prefix}rl:{k}:{key_id}:{minute}")
    }

    /// Count a request against the key's RPM; Err(retry_after secs) when over.
    pub async fn hit_rpm(&self, key_id: i64, limit: i64, now_ms: i64) -> Result<(), u64> {
        let minute = now_ms.div_euclid(60_000);
        let n = match self {
            Limiter::Memory(m) => {
                let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
                m.retain(|(_, min, _), _| *min >= minute - 1);
                let v = m.entry((key_id, minute, RPM)).or_default();
                *v += 1;
                *v
            }
            Limiter::Redis { conn, prefix } => {
                let key = Self::redis_key(prefix, RPM, key_id, minute);
                let mut c = conn.clone();
                let r: redis::RedisResult<(i64,)> = redis::pipe()
                    .atomic()
                    .incr(&key, 1)
                    .expire(&key, 120)
                    .ignore()
                    .query_async(&mut c)
                    .await;
                match r {
                    Ok((n,)) => n,
                    Err(e) => {
                        tracing::warn!(error = %e, "rate limiter: redis unavailable, allowing");
                        return Ok(());
                    }
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
            Limiter::Memory(m) => {
                let m = m.lock().unwrap_or_else(|p| p.into_inner());
                m.get(&(key_id, minute, TPM)).copied().unwrap_or(0)
            }
            Limiter::Redis { conn, prefix } => {
                let mut c = conn.clone();
                let key = Self::redis_key(prefix, TPM, key_id, minute);
                match redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<i64>>(&mut c)
                    .await
                {
                    Ok(v) => v.unwrap_or(0),
                    Err(e) => {
                        tracing::warn!(error = %e, "rate limiter: redis unavailable, allowing");
                        0
                    }
                }
            }
        };
        if used >= limit {
            Err(retry_after(now_ms))
        } else {
            Ok(())
        }
    }

    /// Add a finished request's tokens to the key's TPM window.
    pub async fn add_tokens(&self, key_id: i64, tokens: i64, now_ms: i64) {
        let minute = now_ms.div_euclid(60_000);
        match self {
            Limiter::Memory(m) => {
                let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
                *m.entry((key_id, minute, TPM)).or_default() += tokens;
            }
            Limiter::Redis { conn, prefix } => {
                let mut c = conn.clone();
                let key = Self::redis_key(prefix, TPM, key_id, minute);
                let r: redis::RedisResult<()> = redis::pipe()
                    .atomic()
                    .incr(&key, tokens)
                    .ignore()
                    .expire(&key, 120)
                    .ignore()
                    .query_async(&mut c)
                    .await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "rate limiter: cannot add tokens to redis");
                }
            }
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
        l.add_tokens(1, 100, t).await;
        assert_eq!(l.check_tpm(1, 100, t).await, Err(30));
    }
}
