//! Short-lived caches for the hot path: key lookups, prices, accounts and each user's grants.
//! An entry is fresh for `TTL`. For `GRACE` after that it is still served while one caller
//! reloads it (stale-while-revalidate), so the hot path does not wait on the database every
//! `TTL`, and a slow database does not make every request that arrives meanwhile run the same
//! query; older entries are always reloaded first. A revocation, price change or a charge made
//! by another instance therefore takes effect on every instance within `TTL + GRACE` (4 s),
//! inside SPEC §10's 5 seconds; this instance's own charges are counted meanwhile by the
//! reservations (see `billing::admission::Reservations`). With Redis, admin writes reach the
//! other instances at once instead ([`bus`]).

pub mod bus;

use foldhash::{HashMap, HashMapExt};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const TTL: Duration = Duration::from_secs(2);
/// How long past `TTL` an entry may still be served while it is being reloaded.
pub const GRACE: Duration = Duration::from_secs(2);

/// A map whose entries expire `TTL` after they were loaded.
pub struct TtlCache<K, V> {
    map: Mutex<Inner<K, V>>,
    ttl: Duration,
    grace: Duration,
}

struct Entry<V> {
    loaded: Instant,
    value: Arc<V>,
    /// A caller is reloading this stale entry; the others are served it meanwhile.
    reloading: bool,
}

struct Inner<K, V> {
    entries: HashMap<K, Entry<V>>,
    /// Bumped by every removal: a load that started before a removal must not be cached
    /// after it (it may hold what the removal was meant to discard).
    generation: u64,
}

impl<K: Eq + Hash + Clone, V> TtlCache<K, V> {
    /// Entries fresh for `ttl`, then served while reloading for `GRACE`.
    pub fn new(ttl: Duration) -> Self {
        Self::with_grace(ttl, GRACE)
    }

    pub fn with_grace(ttl: Duration, grace: Duration) -> Self {
        TtlCache {
            map: Mutex::new(Inner {
                entries: HashMap::new(),
                generation: 0,
            }),
            ttl,
            grace,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, k: &K) -> Option<Arc<V>> {
        let m = self.lock();
        m.entries
            .get(k)
            .filter(|e| e.loaded.elapsed() < self.ttl)
            .map(|e| e.value.clone())
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
            let keep = self.ttl + self.grace;
            m.entries.retain(|_, e| e.loaded.elapsed() < keep);
        }
        let entry = Entry {
            loaded: Instant::now(),
            value: v.clone(),
            reloading: false,
        };
        m.entries.insert(k, entry);
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

    /// Load through the cache: a fresh entry is returned as it is. The first caller to find
    /// an entry stale (within the grace period) reloads it and gets the new value (or, if the
    /// reload fails, the stale one, and the next caller tries again); the callers that come
    /// while it reloads get the stale value at once. Anything older, or missing, is loaded
    /// before returning.
    pub async fn get_or_load<E, F, Fut>(&self, k: &K, load: F) -> Result<Arc<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<V, E>>,
    {
        let (generation, stale) = {
            let mut m = self.lock();
            let generation = m.generation;
            match m.entries.get_mut(k) {
                Some(e) => {
                    let age = e.loaded.elapsed();
                    if age < self.ttl || (age < self.ttl + self.grace && e.reloading) {
                        return Ok(e.value.clone());
                    }
                    if age < self.ttl + self.grace {
                        e.reloading = true;
                        (generation, Some(e.value.clone()))
                    } else {
                        (generation, None)
                    }
                }
                None => (generation, None),
            }
        };
        let Some(stale) = stale else {
            let v = load().await?;
            return Ok(self.put_if(k.clone(), v, generation));
        };
        // Clears the reload mark if this reload does not finish (an error, or the caller
        // went away), so that another caller takes it over.
        let mut unmark = Unmark {
            cache: self,
            key: Some(k.clone()),
        };
        match load().await {
            Ok(v) => {
                unmark.key = None;
                Ok(self.put_if(k.clone(), v, generation))
            }
            Err(_) => Ok(stale),
        }
    }
}

struct Unmark<'a, K: Eq + Hash + Clone, V> {
    cache: &'a TtlCache<K, V>,
    key: Option<K>,
}

impl<K: Eq + Hash + Clone, V> Drop for Unmark<'_, K, V> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            if let Some(e) = self.cache.lock().entries.get_mut(&k) {
                e.reloading = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_expire_and_can_be_removed() {
        let c: TtlCache<u32, &str> =
            TtlCache::with_grace(Duration::from_millis(50), Duration::ZERO);
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

    #[tokio::test]
    async fn a_stale_entry_is_served_while_one_caller_reloads_it() {
        let c: TtlCache<u32, u32> =
            TtlCache::with_grace(Duration::from_millis(40), Duration::from_millis(400));
        c.put(1, 10);
        tokio::time::sleep(Duration::from_millis(60)).await;
        // Stale: the first caller reloads it; while that load is pending, others get the
        // stale value without loading.
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let reload = c.get_or_load(&1, || async { Ok::<_, ()>(rx.await.unwrap()) });
        let mut reload = std::pin::pin!(reload);
        assert!(futures_util::poll!(reload.as_mut()).is_pending());
        let other: Result<_, ()> = c
            .get_or_load(&1, || async {
                panic!("a second reload while one is running")
            })
            .await;
        assert_eq!(*other.unwrap(), 10);
        tx.send(11).unwrap();
        assert_eq!(
            *reload.await.unwrap(),
            11,
            "the reloading caller gets what it loaded"
        );
        let fresh = c.get_or_load(&1, || async { Err::<u32, ()>(()) }).await;
        assert_eq!(*fresh.unwrap(), 11, "the reloaded value is cached");
    }

    #[tokio::test]
    async fn a_failed_reload_serves_the_stale_value_and_an_old_entry_is_loaded_first() {
        let c: TtlCache<u32, u32> =
            TtlCache::with_grace(Duration::from_millis(40), Duration::from_millis(100));
        c.put(1, 10);
        tokio::time::sleep(Duration::from_millis(60)).await;
        let r = c
            .get_or_load(&1, || async { Err::<u32, &str>("db down") })
            .await;
        assert_eq!(*r.unwrap(), 10);
        // The failed reload left the entry for the next caller to reload.
        let r = c.get_or_load(&1, || async { Ok::<_, &str>(12) }).await;
        assert_eq!(*r.unwrap(), 12);
        assert_eq!(
            *c.get_or_load(&1, || async { Err::<u32, &str>("unused") })
                .await
                .unwrap(),
            12
        );
        // Past the grace period the entry is not served: the load's error is.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let r = c
            .get_or_load(&1, || async { Err::<u32, &str>("db down") })
            .await;
        assert_eq!(r.unwrap_err(), "db down");
    }
}
