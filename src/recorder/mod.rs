//! The recorder: the only writer of usage. The proxy hands it events without waiting; each
//! event is first appended to the write-ahead journal (`wal`, by a task of its own), which
//! the answer's last byte waits for, then applied in batches, each batch in one database
//! transaction (`Db::settle`), then added to the real-time stats.
//!
//! Nothing is lost: a `kill -9` leaves the journal, replayed at start. While the database is
//! unreachable the current batch is retried with backoff and new events wait in the bounded
//! queue; what the queue has no room for stays in the journal only and is applied from it
//! once the database is back. When neither the journal nor the database can take events,
//! [`Recorder::accepting`] says so and the proxy refuses new requests. On shutdown the queue
//! is drained; whatever cannot be applied then stays in the journal for the next start.
//!
//! Redis failing makes the real-time stats stop (logged once); when it answers again, today's
//! counters are recomputed from `usage_daily`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono_tz::Tz;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::billing::admission::{GrantCache, Reservations};
use crate::billing::key_budget::KeyBudgets;
use crate::billing::shared::Holder;
use crate::clock::Clock;
use crate::store::settle::SettleOutcome;
use crate::store::Db;
use crate::usage::{BillingStatus, UsageEvent};

pub mod stats;
pub mod wal;

use stats::Stats;
pub use wal::{check_writable, Durable};
use wal::{Journal, Msg, Queued};

/// A settlement taking longer than this counts as failed (a hung database) and is retried.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one real-time stats update (a batch) in Redis.
const STATS_TIMEOUT: Duration = Duration::from_millis(500);
/// How often the recorder looks after the journal and the stats when idle.
const UPKEEP: Duration = Duration::from_secs(1);

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
    key_budgets: Arc<KeyBudgets>,
    stats: Arc<Stats>,
    clock: Clock,
    tz: Tz,
    journal: Arc<Journal>,
    /// Serialises appends to the spill file (events recorded after the writer is gone).
    journal_lock: Mutex<()>,
    /// One journal replay at a time.
    replay_lock: tokio::sync::Mutex<()>,
    metrics: Arc<RecorderMetrics>,
    /// The last settlement succeeded (or none failed yet).
    db_ok: AtomicBool,
    /// The real-time stats missed events; recomputed from the database when Redis answers.
    stats_dirty: AtomicBool,
    /// Set at shutdown: the worker drains what is queued and stops; later events stay in the
    /// journal and are applied at the next start.
    closed: AtomicBool,
    close: tokio::sync::Notify,
    batch_size: usize,
    flush_interval: Duration,
}

/// A cheap, cloneable handle for producers.
#[derive(Clone)]
pub struct Recorder {
    wal: mpsc::UnboundedSender<Msg>,
    shared: Arc<Shared>,
}

/// Owns the worker; `shutdown` drains it.
pub struct RecorderWorker {
    handle: JoinHandle<()>,
    wal: mpsc::UnboundedSender<Msg>,
    shared: Arc<Shared>,
}

pub struct RecorderOptions {
    pub queue_capacity: usize,
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub journal_dir: PathBuf,
    /// Largest size of the journal in bytes (0 = no limit but the disk's).
    pub journal_max_bytes: u64,
    /// The billing time zone (today's stats when they are caught up).
    pub tz: Tz,
    /// Released as events are settled (or spilled).
    pub reservations: Arc<Reservations>,
    /// Users' cached grants, dropped when journal replay charges them.
    pub grants: Arc<GrantCache>,
    /// Key budgets' holds (released like the grants') and cached counters (dropped on replay).
    pub key_budgets: Arc<KeyBudgets>,
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
        let journal = Arc::new(Journal::new(opts.journal_dir, opts.journal_max_bytes));
        let shared = Arc::new(Shared {
            db,
            reservations: opts.reservations,
            grants: opts.grants,
            key_budgets: opts.key_budgets,
            stats,
            clock,
            tz: opts.tz,
            journal: journal.clone(),
            journal_lock: Mutex::new(()),
            replay_lock: tokio::sync::Mutex::new(()),
            metrics: metrics.clone(),
            db_ok: AtomicBool::new(true),
            stats_dirty: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            close: tokio::sync::Notify::new(),
            batch_size: opts.batch_size,
            flush_interval: opts.flush_interval,
        });
        let (wal_tx, wal_rx) = mpsc::unbounded_channel();
        // As `release_spilled`, from the journal's task (on a handle to the runtime).
        let reservations = shared.reservations.clone();
        let key_budgets = shared.key_budgets.clone();
        let rt = tokio::runtime::Handle::current();
        let on_dropped = Box::new(move |e: &UsageEvent| {
            end_holds(
                &reservations,
                &key_budgets,
                std::slice::from_ref(e),
                Some(&rt),
            );
        });
        let writer = wal::Writer::new(journal, tx, on_dropped, metrics);
        tokio::spawn(writer.run(wal_rx));
        let handle = tokio::spawn(run(rx, shared.clone()));
        (
            Recorder {
                wal: wal_tx.clone(),
                shared: shared.clone(),
            },
            RecorderWorker {
                handle,
                wal: wal_tx,
                shared,
            },
        )
    }

    /// Hand an event to the recorder; never waits. The returned [`Durable`] resolves once the
    /// event is in the journal: an answer's last byte waits for it.
    pub fn record(&self, event: UsageEvent) -> Durable {
        let (tx, rx) = oneshot::channel();
        match self.wal.send(Msg::Event(event, tx)) {
            Ok(()) => Durable::waiting(rx),
            Err(mpsc::error::SendError(msg)) => {
                // The journal task is gone (it never stops while a handle lives).
                if let Msg::Event(e, _) = msg {
                    let one = std::slice::from_ref(&e);
                    self.shared.release_spilled(one);
                    self.shared.spill(one);
                }
                Durable::ready()
            }
        }
    }

    /// Can usage be recorded now? False when neither the journal nor the database takes
    /// events: new requests are then refused (503) until one can.
    pub fn accepting(&self) -> bool {
        self.shared.journal.writable() || self.shared.db_ok.load(Ordering::Relaxed)
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
    /// Apply everything queued, then stop. Events recorded after this stay in the journal.
    pub async fn shutdown(self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        // Everything handed over so far reaches the queue, and the open segment is closed
        // (deleted as soon as it is settled).
        let (tx, rx) = oneshot::channel();
        if self.wal.send(Msg::Rotate(tx)).is_ok() {
            let _ = rx.await;
        }
        self.shared.close.notify_one();
        let _ = self.handle.await;
    }
}

async fn run(mut rx: mpsc::Receiver<Queued>, shared: Arc<Shared>) {
    let mut last_upkeep = Instant::now();
    loop {
        let first = tokio::select! {
            e = rx.recv() => match e {
                Some(e) => Some(e),
                None => break,
            },
            _ = shared.close.notified() => {
                rx.close();
                None
            }
            _ = tokio::time::sleep(UPKEEP) => None,
        };
        if let Some(first) = first {
            let mut batch = Vec::with_capacity(shared.batch_size);
            batch.push(first);
            let deadline = tokio::time::Instant::now() + shared.flush_interval;
            // Take what is queued; while the batch has room, look again every tenth of the
            // interval until the deadline. Waiting on the queue itself instead woke this task
            // (and re-armed its timer) for every event.
            let step = (shared.flush_interval / 10).max(Duration::from_millis(1));
            while batch.len() < shared.batch_size {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(mpsc::error::TryRecvError::Empty) => {
                        let now = tokio::time::Instant::now();
                        if now >= deadline || shared.closed.load(Ordering::SeqCst) {
                            break;
                        }
                        tokio::time::sleep_until(deadline.min(now + step)).await;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            }
            shared
                .metrics
                .queue_depth
                .fetch_sub(batch.len(), Ordering::Relaxed);
            let closing = shared.closed.load(Ordering::SeqCst);
            shared.apply_until_done(batch, closing).await;
        }
        if last_upkeep.elapsed() >= UPKEEP && rx.is_empty() {
            last_upkeep = Instant::now();
            shared.upkeep().await;
        }
    }
    shared.upkeep().await;
}

impl Shared {
    /// Apply a batch, retrying with backoff while the database fails. When `closing` (the
    /// process is shutting down) and the database keeps failing, the batch is left to the
    /// journal (what is not on disk yet is written there).
    async fn apply_until_done(&self, queued: Vec<Queued>, closing: bool) {
        let (batch, segments): (Vec<UsageEvent>, Vec<Option<u64>>) =
            queued.into_iter().map(|q| (q.event, q.segment)).unzip();
        let mut delay = Duration::from_millis(100);
        let mut attempts = 0;
        loop {
            let started = Instant::now();
            let res =
                tokio::time::timeout(SETTLE_TIMEOUT, self.db.settle(&batch, self.clock.now_ms()))
                    .await
                    .unwrap_or_else(|_| {
                        Err(crate::store::StoreError::Db(sqlx::Error::PoolTimedOut))
                    });
            match res {
                Ok(outcome) => {
                    if !self.db_ok.swap(true, Ordering::Relaxed) {
                        tracing::info!("settlement works again");
                    }
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
                    self.release(&batch).await;
                    self.journal.settled(segments.iter().flatten().copied());
                    self.add_stats(&batch, &outcome).await;
                    return;
                }
                Err(e) => {
                    attempts += 1;
                    self.db_ok.store(false, Ordering::Relaxed);
                    self.metrics.settle_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, attempts, events = batch.len(), "settlement failed; retrying");
                    if closing && attempts >= 3 {
                        self.release_spilled(&batch);
                        let off_disk: Vec<UsageEvent> = batch
                            .into_iter()
                            .zip(&segments)
                            .filter(|(_, s)| s.is_none())
                            .map(|(e, _)| e)
                            .collect();
                        if !off_disk.is_empty() {
                            self.spill(&off_disk);
                        }
                        return;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Add the events this batch applied (never the duplicates) to the real-time stats. While
    /// they are behind (Redis failed), nothing is added: `catch_up_stats` recomputes them.
    async fn add_stats(&self, batch: &[UsageEvent], outcome: &SettleOutcome) {
        let fresh = &outcome.fresh;
        if fresh.is_empty() || self.stats_dirty.load(Ordering::Relaxed) {
            return;
        }
        let served = |e: &UsageEvent| e.billing_status != BillingStatus::Refused;
        let applied: Vec<UsageEvent>;
        let events = if fresh.len() == batch.len()
            && outcome.corrected.is_empty()
            && batch.iter().all(served)
        {
            batch
        } else {
            // Refusals are log rows only: they count in no real-time stat. Corrected events
            // count as the settlement applied them.
            let as_applied = |i: usize| {
                outcome
                    .corrected
                    .iter()
                    .find(|(j, _)| *j == i)
                    .map_or(&batch[i], |(_, e)| e)
            };
            applied = fresh
                .iter()
                .map(|&i| as_applied(i))
                .filter(|e| served(e))
                .cloned()
                .collect();
            &applied
        };
        if events.is_empty() {
            return;
        }
        let res = tokio::time::timeout(STATS_TIMEOUT, self.stats.record(events)).await;
        let err = match res {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} ms", STATS_TIMEOUT.as_millis()),
        };
        self.metrics.stats_failures.fetch_add(1, Ordering::Relaxed);
        self.stats_dirty.store(true, Ordering::Relaxed);
        tracing::warn!(error = %err, "real-time stats update failed (the database has the events); today's counters will be recomputed from the database when Redis answers");
    }

    /// Recompute today's real-time counters from `usage_daily` and overwrite them.
    async fn catch_up_stats(&self) {
        let day = crate::billing::windows::day_string(self.clock.now(), self.tz);
        let filter = crate::store::usage::UsageFilter {
            from: Some(day.clone()),
            to: Some(day.clone()),
            ..Default::default()
        };
        let rows = match tokio::time::timeout(
            SETTLE_TIMEOUT,
            self.db.usage_daily(&filter, i64::MAX),
        )
        .await
        {
            Ok(Ok(rows)) => rows,
            _ => return,
        };
        match tokio::time::timeout(STATS_TIMEOUT, self.stats.overwrite_day(&day, &rows)).await {
            Ok(Ok(())) => {
                self.stats_dirty.store(false, Ordering::Relaxed);
                tracing::info!(day = %day, "real-time stats caught up from the database");
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "real-time stats still unavailable"),
            Err(_) => tracing::debug!("real-time stats still unavailable (timeout)"),
        }
    }

    /// Between batches: have what only the journal holds applied, and the stats caught up.
    async fn upkeep(&self) {
        if self.journal.open_has_dropped() {
            self.journal.request_rotation();
        }
        if let Err(e) = self.replay().await {
            tracing::warn!(error = %e, "journal replay failed; will retry");
        }
        if self.stats_dirty.load(Ordering::Relaxed) {
            self.catch_up_stats().await;
        }
    }

    /// The users charged by these events have new usage that no reservation of this process
    /// stands for (journal replay): admission must read their grants afresh.
    fn forget_grants(&self, batch: &[UsageEvent]) {
        for e in batch {
            if e.key_windows.is_some() {
                self.key_budgets.cache.remove(&e.api_key_id);
            }
        }
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
        self.key_budgets
            .reservations
            .settled(batch.iter().map(|e| (e.api_key_id, e.key_reserved)));
        self.reservations.settled(
            batch
                .iter()
                .filter_map(|e| e.user_package_id.map(|up| (up, e.reserved))),
        );
        if let Some(shared) = self.reservations.shared() {
            let items: Vec<(Holder, &str, i64)> = batch
                .iter()
                .flat_map(|e| holds(e).map(|(h, amount)| (h, e.request_id.as_str(), amount)))
                .collect();
            shared.settled(&items).await;
        }
    }

    /// Spilled events are not in the database yet; their reservations end anyway (the journal
    /// is applied later), which is the one case admission may under-count.
    fn release_spilled(&self, batch: &[UsageEvent]) {
        let rt = tokio::runtime::Handle::try_current().ok();
        end_holds(&self.reservations, &self.key_budgets, batch, rt.as_ref());
    }

    fn spill_file(&self) -> PathBuf {
        self.journal.dir.join("spill.jsonl")
    }

    /// Append events to the spill file (JSON lines, fsynced): only for events that cannot go
    /// through the journal task (it is gone, or the process is shutting down).
    fn spill(&self, events: &[UsageEvent]) {
        let _g = self.journal_lock.lock().unwrap_or_else(|p| p.into_inner());
        let res = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(&self.journal.dir)?;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.spill_file())?;
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

    /// Apply every journal file that no live segment of this process is writing or waiting
    /// on: those of earlier runs, the spill file, and closed segments holding events that
    /// never reached the queue. Each file is deleted once applied. Idempotent.
    async fn replay(&self) -> anyhow::Result<usize> {
        let _one = self.replay_lock.lock().await;
        for (_, bytes) in self.journal.take_replayable() {
            self.journal.forget_bytes(bytes);
        }
        let file = self.spill_file();
        {
            let _g = self.journal_lock.lock().unwrap_or_else(|p| p.into_inner());
            if file.exists() {
                let taken = self
                    .journal
                    .dir
                    .join(format!("replay-{}.jsonl", uuid::Uuid::now_v7()));
                std::fs::rename(&file, &taken)?;
            }
        }
        let mut files = list_replay_files(&self.journal.dir)?;
        let live = self.journal.live_paths();
        files.retain(|f| !live.contains(f));
        let mut total = 0;
        for f in files {
            let events = read_journal(&f)?;
            for chunk in events.chunks(self.batch_size.max(1)) {
                let outcome = tokio::time::timeout(
                    SETTLE_TIMEOUT,
                    self.db.settle(chunk, self.clock.now_ms()),
                )
                .await
                .map_err(|_| anyhow::anyhow!("settlement timed out"))??;
                self.forget_grants(chunk);
                total += outcome.applied;
                self.add_stats(chunk, &outcome).await;
            }
            match std::fs::remove_file(&f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        if total > 0 {
            tracing::info!(events = total, "applied events from the recorder journal");
        }
        Ok(total)
    }
}

/// The Redis holds an event's request still has until its charge is settled, each with the
/// amount it settles at: its grant's and, for a key with a budget, its key's (a request that
/// cost nothing ended both at its finish).
fn holds(e: &UsageEvent) -> impl Iterator<Item = (Holder, i64)> {
    let grant = e.user_package_id.map(|up| (Holder::Grant(up), e.reserved));
    let key = (e.key_reserved != 0).then_some((Holder::KeyBudget(e.api_key_id), e.key_reserved));
    grant.into_iter().chain(key)
}

/// End the holds of events that will not be settled now (dropped, or spilled to be applied
/// later): in process at once, in Redis from a task on `rt` (none: outside a runtime, Redis's
/// end by their TTL).
fn end_holds(
    reservations: &Arc<Reservations>,
    key_budgets: &KeyBudgets,
    events: &[UsageEvent],
    rt: Option<&tokio::runtime::Handle>,
) {
    for e in events {
        key_budgets.reservations.add(e.api_key_id, -e.key_reserved);
        if let Some(up) = e.user_package_id {
            reservations.add(up, -e.reserved);
        }
    }
    let Some(rt) = rt.filter(|_| reservations.shared().is_some()) else {
        return;
    };
    let ended: Vec<(String, Vec<Holder>)> = events
        .iter()
        .map(|e| (e.request_id.clone(), holds(e).map(|(h, _)| h).collect()))
        .filter(|(_, h): &(String, Vec<Holder>)| !h.is_empty())
        .collect();
    if ended.is_empty() {
        return;
    }
    let reservations = reservations.clone();
    rt.spawn(async move {
        if let Some(s) = reservations.shared() {
            for (hold, holders) in ended {
                s.adjust(&hold, 0, &holders, None).await;
            }
        }
    });
}

fn list_replay_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                (n.starts_with("replay-") || n.starts_with("wal-")) && n.ends_with(".jsonl")
            })
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
