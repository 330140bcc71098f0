//! Upstream-error bookkeeping: each account's last error, written to the store by one
//! long-lived task, off the request path.
//!
//! A failed attempt hands its error over without waiting ([`AccountErrors::report`]). When the
//! queue is full the report is dropped and counted: the account's cooldown, which is what
//! routing reads, is kept in process and is not affected. Reports that queue up while the task
//! writes are coalesced, so an account failing many times in a burst costs one write.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::store::Db;

/// Reports waiting for the task.
const QUEUE: usize = 1024;

/// One failed attempt.
struct Report {
    account_id: i64,
    error: String,
    at_ms: i64,
}

/// The producers' handle.
pub struct AccountErrors {
    tx: mpsc::Sender<Report>,
    dropped: Arc<AtomicU64>,
}

impl AccountErrors {
    /// Start the task that writes account errors to `db` (it ends with the last handle).
    pub fn start(db: Db) -> AccountErrors {
        Self::spawn(QUEUE, move |id, error, at| {
            let db = db.clone();
            async move {
                if let Err(e) = db.set_account_error(id, &error, at).await {
                    tracing::warn!(error = %e, account_id = id, "cannot store account error");
                }
            }
        })
    }

    fn spawn<F, Fut>(capacity: usize, write: F) -> AccountErrors
    where
        F: FnMut(i64, String, i64) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(capacity);
        tokio::spawn(run(rx, write));
        AccountErrors {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Note that `account_id` failed with `error` at `at_ms`; never waits.
    pub fn report(&self, account_id: i64, error: String, at_ms: i64) {
        let r = Report {
            account_id,
            error,
            at_ms,
        };
        if self.tx.try_send(r).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "account error queue full: errors not stored");
            }
        }
    }

    /// Reports dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Wait for a report, take every other one already queued, write the latest per account.
async fn run<F, Fut>(mut rx: mpsc::Receiver<Report>, mut write: F)
where
    F: FnMut(i64, String, i64) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut latest: HashMap<i64, (String, i64)> = HashMap::new();
    while let Some(r) = rx.recv().await {
        latest.insert(r.account_id, (r.error, r.at_ms));
        while let Ok(r) = rx.try_recv() {
            latest.insert(r.account_id, (r.error, r.at_ms));
        }
        for (id, (error, at)) in latest.drain() {
            write(id, error, at).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    type Written = Arc<Mutex<Vec<(i64, String, i64)>>>;

    fn recording(capacity: usize) -> (AccountErrors, Written) {
        let written: Written = Arc::default();
        let w = written.clone();
        let errors = AccountErrors::spawn(capacity, move |id, e, at| {
            w.lock().unwrap().push((id, e, at));
            async {}
        });
        (errors, written)
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_burst_is_written_once_per_account_with_its_latest_error() {
        let (errors, written) = recording(16);
        // The task has not run yet (one thread): all of these queue up.
        errors.report(1, "a".into(), 10);
        errors.report(2, "b".into(), 11);
        errors.report(1, "c".into(), 12);
        settle().await;
        let mut w = written.lock().unwrap().clone();
        w.sort();
        assert_eq!(w, [(1, "c".to_string(), 12), (2, "b".to_string(), 11)]);
        // Later reports are written too.
        errors.report(1, "d".into(), 13);
        settle().await;
        assert_eq!(
            written.lock().unwrap().last(),
            Some(&(1, "d".to_string(), 13))
        );
        assert_eq!(errors.dropped(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let (errors, written) = recording(2);
        for i in 0..5 {
            errors.report(i, "x".into(), i);
        }
        assert_eq!(errors.dropped(), 3);
        settle().await;
        assert_eq!(written.lock().unwrap().len(), 2);
    }
}
