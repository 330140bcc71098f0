//! The recorder: the only writer of usage. The proxy hands it events without waiting; it applies
//! them in batches, each batch in one database transaction (`Db::settle`), then adds them to the
//! real-time stats.
//!
//! Nothing is lost: while the database is unreachable the current batch is retried with backoff
//! and new events wait in the bounded queue; when the queue is full, events spill to an on-disk
//! journal (JSON lines) that is applied when the database is back and replayed at start. On
//! shutdown the queue is drained; whatever cannot be applied then is written to the journal.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::billing::admission::{GrantCache, Reservations};
use crate::clock::Clock;
use crate::store::Db;
use crate::usage::UsageEvent;

pub mod stats;

use stats::Stats;

/// Counters the recorder exposes to `/metrics`.
#[derive(Default)]
pub struct RecorderMetrics {
    pub queue_depth: AtomicUsize,
    pub applied: AtomicU64,
    pub duplicates: AtomicU64,
    pub batches: AtomicU64,
    pub batch_micros_total: AtomicU64,
    pub settle_failures: AtomicU64,
    pub spilled: AtomicU64,
    pub stats_failures: AtomicU64,
}

struct Shared {
    db: Db,
    reservations: Arc<Reservations>,
    grants: Arc<GrantCache>,
    stats: Arc<Stats>,
    clock: Clock,
    journal_dir: PathBuf,
    /// Serialises appends to the spill journal.
    journal_lock: Mutex<()>,
    metrics: Arc<RecorderMetrics>,
    /// Set at shutdown: the worker drains what is queued and stops; later events go to the
    /// journal and are applied at the next start.
    closed: std::sync::atomic::AtomicBool,
    close: tokio::sync::Notify,
    batch_size: usize,
    flush_interval: Duration,
}

/// A cheap, cloneable handle for producers.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<UsageEvent>,
    shared: Arc<Shared>,
}

/// Owns the worker; `shutdown` drains it.
pub struct RecorderWorker {
    handle: JoinHandle<()>,
    shared: Arc<Shared>,
}

pub struct RecorderOptions {
    pub queue_capacity: usize,
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub journal_dir: PathBuf,
    /// Released as events are settled (or spilled).
    pub reservations: Arc<Reservations>,
    /// Users' cached grants, dropped when journal replay charges them.
    pub grants: Arc<GrantCache>,
}

impl Recorder {
    pub fn start(
        db: Db,
        stats: Arc<Stats>,
        clock: Clock,
        opts: RecorderOptions,
        metrics: Arc<RecorderMetrics>,
    ) -> (Recorder, RecorderWorker) {
        let (tx, rx) = mpsc::channel(opts.queue_capacity);
        let shared = Arc::new(Shared {
            db,
            reservations: opts.reservations,
            grants: opts.grants,
            stats,
            clock,
            journal_dir: opts.journal_dir,
            journal_lock: Mutex::new(()),
            metrics,
            closed: std::sync::atomic::AtomicBool::new(false),
            close: tokio::sync::Notify::new(),
            batch_size: opts.batch_size,
            flush_interval: opts.flush_interval,
        });
        let handle = tokio::spawn(run(rx, shared.clone()));
        (
            Recorder {
                tx,
                shared: shared.clone(),
            },
            RecorderWorker { handle, shared },
        )
    }

    /// Hand an event to the recorder; never waits. A full queue spills to the journal.
    pub fn record(&self, event: UsageEvent) {
        if self.shared.closed.load(Ordering::SeqCst) {
            let one = std::slice::from_ref(&event);
            self.shared.release_spilled(one);
            self.shared.spill(one);
            return;
        }
        match self.tx.try_send(event) {
            Ok(()) => {
                self.shared
                    .metrics
                    .queue_depth
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(e) | mpsc::error::TrySendError::Closed(e)) => {
                let one = std::slice::from_ref(&e);
                self.shared.release_spilled(one);
                self.shared.spill(one);
            }
        }
    }

    pub fn metrics(&self) -> &RecorderMetrics {
        &self.shared.metrics
    }

    /// Apply any journal files left by an earlier run or by spills. Returns events applied.
    pub async fn replay_journal(&self) -> anyhow::Result<usize> {
        self.shared.replay().await
    }
}

impl RecorderWorker {
    /// Apply everything queued, then stop. Events recorded after this go to the journal.
    pub async fn shutdown(self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.close.notify_one();
        let _ = self.handle.await;
    }
}

async fn run(mut rx: mpsc::Receiver<UsageEvent>, shared: Arc<Shared>) {
    let mut last_replay = Instant::now();
    loop {
        let first = tokio::select! {
            e = rx.recv() => e,
            _ = shared.close.notified() => {
                rx.close();
                rx.recv().await
            }
        };
        let Some(first) = first else {
            break;
        };
        let mut batch = Vec::with_capacity(shared.batch_size);
        batch.push(first);
        let deadline = tokio::time::Instant::now() + shared.flush_interval;
        while batch.len() < shared.batch_size {
            // Take what is already queued without waiting; then wait for more until the deadline.
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(e)) => batch.push(e),
                        Ok(None) | Err(_) => break,
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        }
        shared
            .metrics
            .queue_depth
            .fetch_sub(batch.len(), Ordering::Relaxed);
        let closing = shared.closed.load(Ordering::SeqCst);
        shared.apply_until_done(&batch, closing).await;
        // Spilled events are applied once the queue has room to breathe.
        if last_replay.elapsed() > Duration::from_secs(5) && rx.is_empty() {
            last_replay = Instant::now();
            if let Err(e) = shared.replay().await {
                tracing::warn!(error = %e, "journal replay failed; will retry");
            }
        }
    }
    if let Err(e) = shared.replay().await {
        tracing::warn!(error = %e, "journal replay at shutdown failed; it is kept for the next start");
    }
}

impl Shared {
    /// Apply a batch, retrying with backoff while the database fails. When `closing` (the
    /// process is shutting down) and the database keeps failing, the batch goes to the journal.
    async fn apply_until_done(&self, batch: &[UsageEvent], closing: bool) {
        let mut delay = Duration::from_millis(100);
        let mut attempts = 0;
        loop {
            let started = Instant::now();
            match self.db.settle(batch, self.clock.now_ms()).await {
                Ok(outcome) => {
                    let m = &self.metrics;
                    m.batches.fetch_add(1, Ordering::Relaxed);
                    m.batch_micros_total
                        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                    m.applied
                        .fetch_add(outcome.applied as u64, Ordering::Relaxed);
                    m.duplicates
                        .fetch_add(outcome.duplicates as u64, Ordering::Relaxed);
                    // No need to drop the users' cached grants: `release` keeps each settled
                    // charge counted for every admission that read the grants before this
                    // commit, so a cached snapshot plus those charges is the database's figure.
                    // (Re-reading them after every batch made a database round trip part of
                    // some requests, which showed as p99 latency on MySQL.)
                    self.release(batch).await;
                    self.add_stats(batch, &outcome.fresh).await;
                    return;
                }
                Err(e) => {
                    attempts += 1;
                    self.metrics.settle_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, attempts, events = batch.len(), "settlement failed; retrying");
                    if closing && attempts >= 3 {
                        self.release_spilled(batch);
                        self.spill(batch);
                        return;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Add the events this batch applied (never the duplicates) to the real-time stats.
    async fn add_stats(&self, batch: &[UsageEvent], fresh: &[usize]) {
        if fresh.is_empty() {
            return;
        }
        let applied: Vec<UsageEvent>;
        let events = if fresh.len() == batch.len() {
            batch
        } else {
            applied = fresh.iter().map(|&i| batch[i].clone()).collect();
            &applied
        };
        if let Err(e) = self.stats.record(events).await {
            self.metrics.stats_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "real-time stats update failed (the database has the events)");
        }
    }

    /// The users charged by these events have new usage that no reservation of this process
    /// stands for (journal replay): admission must read their grants afresh.
    fn forget_grants(&self, batch: &[UsageEvent]) {
        let mut last = None;
        for e in batch {
            if e.user_package_id.is_some() && last != Some(e.user_id) {
                self.grants.remove(&e.user_id);
                last = Some(e.user_id);
            }
        }
    }

    /// The events' package reservations are settled: their cost is in the database. In Redis
    /// after this process's (so, as in process, a charge is always either pending or settled
    /// there).
    async fn release(&self, batch: &[UsageEvent]) {
        self.reservations.settled(
            batch
                .iter()
                .filter_map(|e| e.user_package_id.map(|up| (up, e.reserved))),
        );
        if let Some(shared) = self.reservations.shared() {
            let items: Vec<(i64, &str, i64)> = batch
                .iter()
                .filter_map(|e| {
                    e.user_package_id
                        .map(|up| (up, e.request_id.as_str(), e.reserved))
                })
                .collect();
            shared.settled(&items).await;
        }
    }

    /// Spilled events are not in the database yet; their reservations end anyway (the journal
    /// is applied later), which is the one case admission may under-count.
    fn release_spilled(&self, batch: &[UsageEvent]) {
        for e in batch {
            if let Some(up) = e.user_package_id {
                self.reservations.add(up, -e.reserved);
            }
        }
        if self.reservations.shared().is_some() {
            let holds: Vec<(i64, String)> = batch
                .iter()
                .filter_map(|e| e.user_package_id.map(|up| (up, e.request_id.clone())))
                .collect();
            let reservations = self.reservations.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Some(s) = reservations.shared() {
                        for (up, hold) in holds {
                            s.adjust(up, &hold, 0).await;
                        }
                    }
                });
            }
        }
    }

    fn journal_file(&self) -> PathBuf {
        self.journal_dir.join("spill.jsonl")
    }

    /// Append events to the journal (JSON lines, fsynced).
    fn spill(&self, events: &[UsageEvent]) {
        let _g = self.journal_lock.lock().unwrap_or_else(|p| p.into_inner());
        let res = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(&self.journal_dir)?;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.journal_file())?;
            let mut buf = Vec::new();
            for e in events {
                serde_json::to_writer(&mut buf, e)?;
                buf.push(b'\n');
            }
            f.write_all(&buf)?;
            f.sync_data()
        })();
        match res {
            Ok(()) => {
                self.metrics
                    .spilled
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(error = %e, events = events.len(), "cannot write the recorder journal")
            }
        }
    }

    /// Move the journal aside, apply it in batches, delete it once applied. Idempotent.
    async fn replay(&self) -> anyhow::Result<usize> {
        let file = self.journal_file();
        let taken = {
            let _g = self.journal_lock.lock().unwrap_or_else(|p| p.into_inner());
            if !file.exists() {
                None
            } else {
                let taken = self
                    .journal_dir
                    .join(format!("replay-{}.jsonl", uuid::Uuid::now_v7()));
                std::fs::rename(&file, &taken)?;
                Some(taken)
            }
        };
        let mut files = list_replay_files(&self.journal_dir)?;
        if let Some(t) = taken {
            if !files.contains(&t) {
                files.push(t);
            }
        }
        let mut total = 0;
        for f in files {
            let events = read_journal(&f)?;
            for chunk in events.chunks(self.batch_size.max(1)) {
                let outcome = self.db.settle(chunk, self.clock.now_ms()).await?;
                self.forget_grants(chunk);
                total += outcome.applied;
                self.add_stats(chunk, &outcome.fresh).await;
            }
            std::fs::remove_file(&f)?;
        }
        if total > 0 {
            tracing::info!(events = total, "applied events from the recorder journal");
        }
        Ok(total)
    }
}

fn list_replay_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("replay-") && n.ends_with(".jsonl"))
        })
        .collect();
    v.sort();
    Ok(v)
}

fn read_journal(path: &Path) -> anyhow::Result<Vec<UsageEvent>> {
    let f = std::fs::File::open(path)?;
    let mut out = Vec::new();
    for line in std::io::BufReader::new(f).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(&line) {
            Ok(e) => out.push(e),
            // A torn last line from a crash mid-write: skip it, keep the rest.
            Err(err) => tracing::warn!(error = %err, "skipping an unreadable journal line"),
        }
    }
    Ok(out)
}
