//! Instant propagation of admin writes between instances (SPEC §11.2): with Redis configured,
//! each write drops this instance's caches and publishes one message on
//! `{redis.key_prefix}invalidate`; every instance subscribes and drops its own caches when a
//! message from another one arrives, so a change takes effect everywhere in milliseconds
//! rather than within the caches' `TTL + GRACE`. A message carries only the sender's id: every
//! admin write drops every cache (as the local forget always did), so no message can name too
//! little.
//!
//! A lost subscription is reconnected (backoff from 100 ms to 2 s); every (re)subscribe drops
//! every cache, since messages sent while unsubscribed are lost. A silently dead connection is
//! found by a ping every few seconds. If Redis is down the caches still expire by `TTL`.

use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::ConnectionManager;

/// How often the subscriber checks that its connection is alive.
const PING_EVERY: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The publishing side, one per instance.
pub struct Bus {
    conn: ConnectionManager,
    channel: String,
    /// This instance's id: its own messages are not acted on twice.
    instance: String,
}

impl Bus {
    pub fn new(conn: ConnectionManager, key_prefix: &str) -> Bus {
        Bus {
            conn,
            channel: format!("{key_prefix}invalidate"),
            instance: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Tell the other instances to drop their caches. Does not wait: the admin write is
    /// already done, and a lost message only means the old `TTL` bound on other instances.
    pub fn publish(&self) {
        let mut conn = self.conn.clone();
        let channel = self.channel.clone();
        let from = self.instance.clone();
        tokio::spawn(async move {
            let r: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(&from)
                .query_async(&mut conn)
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "could not publish a cache invalidation; other instances follow within the cache TTL");
            }
        });
    }
}

/// The subscriber task; aborted when dropped (with the state that owns it).
pub struct Listener(tokio::task::JoinHandle<()>);

impl Drop for Listener {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Subscribe to `channel` and call `forget` on every message not sent by `instance`, and on
/// every (re)subscribe. `forget` returns false once there is nothing left to forget for (the
/// state is gone): the task then ends.
pub fn listen(
    client: redis::Client,
    channel: String,
    instance: String,
    forget: impl Fn() -> bool + Send + 'static,
) -> Listener {
    Listener(tokio::spawn(async move {
        let mut backoff = BACKOFF_MIN;
        loop {
            match client.get_async_pubsub().await {
                Ok(pubsub) => {
                    let (mut sink, mut stream) = pubsub.split();
                    match sink.subscribe(&channel).await {
                        Ok(()) => {
                            backoff = BACKOFF_MIN;
                            // Whatever was published while unsubscribed is lost: drop it all.
                            if !forget() {
                                return;
                            }
                            tracing::debug!(%channel, "subscribed to cache invalidations");
                            let mut ping = tokio::time::interval(PING_EVERY);
                            ping.tick().await;
                            loop {
                                tokio::select! {
                                    msg = stream.next() => match msg {
                                        Some(m) => {
                                            let from: String = m.get_payload().unwrap_or_default();
                                            if from != instance && !forget() {
                                                return;
                                            }
                                        }
                                        None => break,
                                    },
                                    _ = ping.tick() => {
                                        let pong = tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await;
                                        if !matches!(pong, Ok(Ok(_))) {
                                            break;
                                        }
                                    }
                                }
                            }
                            tracing::warn!(
                                "lost the Redis subscription to cache invalidations; reconnecting"
                            );
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot subscribe to cache invalidations; retrying");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot connect to Redis for cache invalidations; retrying");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }))
}
