//! Short-lived caches for the hot path: key lookups, prices and accounts for up to
//! `TTL` (so a revocation or a price change takes effect on every instance within that time,
//! well inside SPEC §10's 5 seconds), and each user's grants for `TTL` too (charges made by
//! other instances show within it; this instance's own charges are counted meanwhile by the
//! reservations, see `billing::admission::Reservations`).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const TTL: Duration = Duration::from_secs(2);

/// A map whose entries expire `TTL` after they were loaded.
pub struct TtlCache<K, V> {
    map: Mutex<Inner<K, V>>,
    ttl: Duration,
}

struct Inner<K, V> {
    entries: HashMap<K, (Instant, Arc<V>)>,
    /// Bumped by every removal: a load that started before a removal must not be cached
    /// after it (it may hold what the removal was meant to discard).
    generation: u64,
}

impl<K: Eq + Hash + Clone, V> TtlCache<K, V> {
    pub fn new(ttl: Duration) -> Self {
        TtlCache {
            map: Mutex::new(Inner {
                entries: HashMap::new(),
                generation: 0,
            }),
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, k: &K) -> Option<Arc<V>> {
        let m = self.lock();
        m.entries
            .get(k)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    pub fn put(&self, k: K, v: V) -> Arc<V> {
        let generation = self.lock().generation;
        self.put_if(k, v, generation)
    }

    /// Cache `v` only if nothing was removed since `generation` was read.
    fn put_if(&self, k: K, v: V, generation: u64) -> Arc<V> {
        let v = Arc::new(v);
        let mut m = self.lock();
        if m.generation != generation {
            return v;
        }
        if m.entries.len() > 100_000 {
            let ttl = self.ttl;
            m.entries.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        m.entries.insert(k, (Instant::now(), v.clone()));
        v
    }

    pub fn remove(&self, k: &K) {
        let mut m = self.lock();
        m.entries.remove(k);
        m.generation += 1;
    }

    pub fn clear(&self) {
        let mut m = self.lock();
        m.entries.clear();
        m.generation += 1;
    }

    /// Load through the cache.
    pub async fn get_or_load<E, F, Fut>(&self, k: &K, load: F) -> Result<Arc<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<V, E>>,
    {
        let generation = {
            let m = self.lock();
            if let Some((at, v)) = m.entries.get(k) {
                if at.elapsed() < self.ttl {
                    return Ok(v.clone());
                }
            }
            m.generation
        };
        let v = load().await?;
        Ok(self.put_if(k.clone(), v, generation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_expire_and_can_be_removed() {
        let c: TtlCache<u32, &str> = TtlCache::new(Duration::from_millis(50));
        let v = c
            .get_or_load(&1, || async { Ok::<_, ()>("a") })
            .await
            .unwrap();
        assert_eq!(*v, "a");
        // Cached: the loader is not called again.
        let v = c
            .get_or_load(&1, || async { Err::<&str, ()>(()) })
            .await
            .unwrap();
        assert_eq!(*v, "a");
        c.remove(&1);
        assert!(c.get(&1).is_none());
        c.put(2, "b");
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(c.get(&2).is_none());
    }

    #[tokio::test]
    async fn a_load_overtaken_by_a_removal_is_not_cached() {
        let c: TtlCache<u32, &str> = TtlCache::new(Duration::from_secs(10));
        let v = c
            .get_or_load(&1, || async {
                // The value changes while it is being read: the removal must win.
                c.remove(&1);
                Ok::<_, ()>("stale")
            })
            .await
            .unwrap();
        assert_eq!(*v, "stale", "the caller still gets what it read");
        assert!(c.get(&1).is_none(), "but it is not cached");
    }
}
