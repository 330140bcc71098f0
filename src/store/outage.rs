//! Request-path reads bounded by `database.statement_timeout_ms`, and their failures logged
//! without flooding: the first failure of an outage, then at most one summary per
//! [`SUMMARY_EVERY`], then the recovery once (a request-path read answered again).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Db, Result, StoreError};

/// At most one summary line per this long while the database keeps failing.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(5);

/// What to log for one outcome of a request-path read.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// The first failure of an outage.
    First,
    /// `n` more failures since the last line.
    Summary(u64),
    /// The database answers again after `failed` failures in all.
    Recovered { failed: u64 },
}

/// The outage state machine (pure: time is passed in).
#[derive(Debug, Default)]
pub struct Outage {
    since: Option<Instant>,
    last_line: Option<Instant>,
    unlogged: u64,
    total: u64,
}

impl Outage {
    pub fn failed(&mut self, now: Instant) -> Option<Line> {
        self.total += 1;
        match self.last_line {
            None => {
                self.since = Some(now);
                self.last_line = Some(now);
                Some(Line::First)
            }
            Some(t) => {
                self.unlogged += 1;
                if now.duration_since(t) >= SUMMARY_EVERY {
                    self.last_line = Some(now);
                    Some(Line::Summary(std::mem::take(&mut self.unlogged)))
                } else {
                    None
                }
            }
        }
    }

    pub fn answered(&mut self) -> Option<Line> {
        self.since?;
        let failed = self.total;
        *self = Outage::default();
        Some(Line::Recovered { failed })
    }
}

/// [`Outage`] shared by every request, with a lock-free path while the database is fine.
#[derive(Debug, Default)]
pub struct OutageLog {
    failing: AtomicBool,
    state: Mutex<Outage>,
}

impl OutageLog {
    fn failed(&self, e: &StoreError) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.failing.store(true, Ordering::Relaxed);
        match s.failed(Instant::now()) {
            Some(Line::First) => {
                tracing::error!(error = %e, "database error on the request path (503); further failures are summarised every {} s until it answers", SUMMARY_EVERY.as_secs())
            }
            Some(Line::Summary(n)) => {
                tracing::error!(error = %e, "database still failing: {n} more requests failed the same way")
            }
            _ => {}
        }
    }

    fn answered(&self) {
        if !self.failing.load(Ordering::Relaxed) {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.failing.store(false, Ordering::Relaxed);
        if let Some(Line::Recovered { failed }) = s.answered() {
            tracing::info!(failed, "the database answers the request path again");
        }
    }
}

impl Db {
    /// Run a request-path read within `database.statement_timeout_ms`: a database that
    /// accepts connections but hangs mid-query fails it (the proxy answers 503) instead of
    /// holding the request. Failures are logged here, rate-limited.
    pub(crate) async fn bounded<T>(&self, read: impl Future<Output = Result<T>>) -> Result<T> {
        let res = match tokio::time::timeout(self.statement_timeout, read).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(
                self.statement_timeout.as_millis() as u64
            )),
        };
        match &res {
            Ok(_) | Err(StoreError::NotFound) | Err(StoreError::Conflict) => self.outage.answered(),
            Err(e) => self.outage.failed(e),
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many failures over 12 s: the first, one summary per 5 s, then the recovery once.
    #[test]
    fn an_outage_logs_a_bounded_number_of_lines() {
        let t0 = Instant::now();
        let mut o = Outage::default();
        let mut lines = Vec::new();
        for i in 0..1200u64 {
            // One failure every 10 ms for 12 s.
            if let Some(l) = o.failed(t0 + Duration::from_millis(i * 10)) {
                lines.push(l);
            }
        }
        lines.extend(o.answered());
        assert_eq!(o.answered(), None, "the recovery is logged once");
        assert_eq!(
            lines,
            vec![
                Line::First,
                Line::Summary(500),
                Line::Summary(500),
                Line::Recovered { failed: 1200 }
            ]
        );
        // A later outage starts afresh.
        assert_eq!(o.failed(t0 + Duration::from_secs(60)), Some(Line::First));
    }
}
