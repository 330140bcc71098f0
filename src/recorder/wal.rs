//! The write-ahead journal: every usage event is appended to a local file before the last byte
//! of its answer goes out, so a `kill -9` loses nothing a client received. The append goes to
//! the page cache (which outlives a killed process), with no fsync per event.
//!
//! One task of its own does the writing, so no request's task ever does: a request hands its
//! event over and gets a [`Durable`] back, which resolves once the event is written (or once
//! the journal has failed to take it; the answer is never held for that). The task writes
//! what arrived together in one `write`, then passes the events on to the recorder's queue,
//! each with the segment that holds it. It is a tokio task rather than an OS thread because
//! the hand-off to a thread cost two context switches per answer (+39 % CPU per request in
//! `bench/profile`, bench/HISTORY.md); a page-cache `write` without fsync is short enough to
//! run on a worker.
//!
//! Segments (`wal-*.jsonl`) are deleted once every event in them is settled. An event the
//! queue has no room for (the database slow or down) stays only on disk; its segment is then
//! replayed from the file once closed. Files left by an earlier run are replayed at start.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::usage::UsageEvent;

/// A segment is closed (and becomes deletable) past this size.
const SEGMENT_BYTES: u64 = 4 << 20;
/// Events written together in one append at most.
const GROUP: usize = 1024;

/// Resolves when the event is in the journal (or the journal could not take it).
pub struct Durable(Option<oneshot::Receiver<()>>);

impl Durable {
    /// Nothing to wait for.
    pub fn ready() -> Durable {
        Durable(None)
    }

    pub(super) fn waiting(rx: oneshot::Receiver<()>) -> Durable {
        Durable(Some(rx))
    }

    /// Resolves once this and `also` are both done (`also` runs in its own task, so it
    /// finishes even if nobody waits).
    pub fn and(self, also: impl std::future::Future<Output = ()> + Send + 'static) -> Durable {
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            also.await;
            self.await;
            let _ = tx.send(());
        });
        Durable(Some(rx))
    }
}

impl std::future::Future for Durable {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.0.as_mut() {
            None => Poll::Ready(()),
            Some(rx) => match Pin::new(rx).poll(cx) {
                Poll::Ready(_) => {
                    self.0 = None;
                    Poll::Ready(())
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// An event on its way to the database, with the segment that holds it (None: not on disk).
pub(super) struct Queued {
    pub event: UsageEvent,
    pub segment: Option<u64>,
}

// Nearly every message is an event: boxing it would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub(super) enum Msg {
    Event(UsageEvent, oneshot::Sender<()>),
    /// Close the current segment; answered once everything sent before is passed on.
    Rotate(oneshot::Sender<()>),
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    bytes: u64,
    written: u64,
    settled: u64,
    /// Written but not queued (no room): applied from the file.
    dropped: u64,
    closed: bool,
}

/// The live segments of this process and the journal's state.
pub(super) struct Journal {
    pub dir: PathBuf,
    /// 0 = no limit but the disk's.
    max_bytes: u64,
    segments: Mutex<BTreeMap<u64, Segment>>,
    /// Bytes held by the live segments.
    bytes: AtomicU64,
    /// The last append succeeded (or nothing failed yet).
    ok: AtomicBool,
    rotate: AtomicBool,
}

impl Journal {
    pub fn new(dir: PathBuf, max_bytes: u64) -> Journal {
        Journal {
            dir,
            max_bytes,
            segments: Mutex::new(BTreeMap::new()),
            bytes: AtomicU64::new(0),
            ok: AtomicBool::new(true),
            rotate: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Segment>> {
        self.segments.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Can the journal take events right now?
    pub fn writable(&self) -> bool {
        self.ok.load(Ordering::Relaxed)
    }

    /// The paths of the live segments (not to be replayed as leftovers).
    pub fn live_paths(&self) -> Vec<PathBuf> {
        self.lock().values().map(|s| s.path.clone()).collect()
    }

    /// Count settled events per segment, then delete the segments that are done.
    pub fn settled(&self, segments: impl Iterator<Item = u64>) {
        let mut m = self.lock();
        for id in segments {
            if let Some(s) = m.get_mut(&id) {
                s.settled += 1;
            }
        }
        let done: Vec<u64> = m
            .iter()
            .filter(|(_, s)| s.closed && s.dropped == 0 && s.settled >= s.written)
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            if let Some(s) = m.remove(&id) {
                self.delete(&s);
            }
        }
    }

    fn delete(&self, s: &Segment) {
        if let Err(e) = std::fs::remove_file(&s.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(error = %e, path = %s.path.display(), "cannot delete a settled journal segment");
                return;
            }
        }
        self.bytes.fetch_sub(s.bytes, Ordering::Relaxed);
    }

    /// Closed segments holding events that never reached the queue, and whose queued events
    /// are all settled: to be applied from the file. They are taken out of the live table.
    pub fn take_replayable(&self) -> Vec<(PathBuf, u64)> {
        let mut m = self.lock();
        let ids: Vec<u64> = m
            .iter()
            .filter(|(_, s)| s.closed && s.dropped > 0 && s.settled + s.dropped >= s.written)
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| m.remove(&id))
            .map(|s| (s.path, s.bytes))
            .collect()
    }

    /// A replayed segment's file is gone.
    pub fn forget_bytes(&self, bytes: u64) {
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Does the open segment hold events that never reached the queue? (Then it should be
    /// closed soon, so that they can be applied from the file.)
    pub fn open_has_dropped(&self) -> bool {
        self.lock().values().any(|s| !s.closed && s.dropped > 0)
    }

    /// Ask the writer to close the open segment at its next turn.
    pub fn request_rotation(&self) {
        self.rotate.store(true, Ordering::Relaxed);
    }

    fn segment_limit(&self) -> u64 {
        if self.max_bytes == 0 {
            SEGMENT_BYTES
        } else {
            (self.max_bytes / 4).clamp(1, SEGMENT_BYTES)
        }
    }
}

/// The writer task's state.
pub(super) struct Writer {
    journal: std::sync::Arc<Journal>,
    queue: mpsc::Sender<Queued>,
    open: Option<(u64, File)>,
    next_id: u64,
    /// Events neither on disk nor in the queue yet (the journal failing and the queue full).
    overflow: VecDeque<Queued>,
    buf: Vec<u8>,
    last_probe: Instant,
    /// Called for events that will not reach the queue (their reservations end now).
    on_dropped: Box<dyn Fn(&UsageEvent) + Send>,
    metrics: std::sync::Arc<super::RecorderMetrics>,
}

impl Writer {
    pub fn new(
        journal: std::sync::Arc<Journal>,
        queue: mpsc::Sender<Queued>,
        on_dropped: Box<dyn Fn(&UsageEvent) + Send>,
        metrics: std::sync::Arc<super::RecorderMetrics>,
    ) -> Writer {
        Writer {
            journal,
            queue,
            open: None,
            next_id: 0,
            overflow: VecDeque::new(),
            buf: Vec::with_capacity(64 * 1024),
            last_probe: Instant::now(),
            on_dropped,
            metrics,
        }
    }

    /// The task's loop; ends when every sender is gone.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut events = Vec::with_capacity(GROUP);
        loop {
            let first = match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
                Ok(Some(m)) => Some(m),
                Err(_) => None,
                Ok(None) => break,
            };
            if first.is_some() {
                // Let the tasks already woken run first: at load they finish answers too, and
                // their events go out in this same write (one `write` for several answers).
                tokio::task::yield_now().await;
            }
            self.retry_overflow();
            if self.journal.rotate.swap(false, Ordering::Relaxed) {
                self.close_open();
            }
            if !self.journal.writable() && self.last_probe.elapsed() > Duration::from_secs(1) {
                self.probe();
            }
            let mut next = first;
            while let Some(m) = next.take() {
                match m {
                    Msg::Event(e, ack) => events.push((e, ack)),
                    Msg::Rotate(ack) => {
                        self.write(&mut events);
                        self.close_open();
                        let _ = ack.send(());
                    }
                }
                if events.len() >= GROUP {
                    self.write(&mut events);
                }
                next = rx.try_recv().ok();
            }
            self.write(&mut events);
        }
    }

    /// Append the events in one write, answer their acks, pass them to the queue.
    fn write(&mut self, events: &mut Vec<(UsageEvent, oneshot::Sender<()>)>) {
        if events.is_empty() {
            return;
        }
        self.buf.clear();
        for (e, _) in events.iter() {
            e.write_json(&mut self.buf);
            self.buf.push(b'\n');
        }
        let segment = match self.append() {
            Ok((id, full)) => {
                self.set_ok(true, None);
                if let Some(s) = self.journal.lock().get_mut(&id) {
                    s.written += events.len() as u64;
                }
                if full {
                    self.close_open();
                }
                Some(id)
            }
            Err(err) => {
                self.set_ok(false, Some(&err));
                None
            }
        };
        for (e, ack) in events.drain(..) {
            let _ = ack.send(());
            self.pass_on(Queued { event: e, segment });
        }
    }

    fn pass_on(&mut self, q: Queued) {
        if !self.overflow.is_empty() && q.segment.is_none() {
            self.overflow.push_back(q);
            return;
        }
        match self.queue.try_send(q) {
            Ok(()) => {
                self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(q) | mpsc::error::TrySendError::Closed(q)) => {
                match q.segment {
                    Some(id) => {
                        (self.on_dropped)(&q.event);
                        self.metrics.spilled.fetch_add(1, Ordering::Relaxed);
                        let mut m = self.journal.lock();
                        if let Some(s) = m.get_mut(&id) {
                            s.dropped += 1;
                        }
                    }
                    None => self.overflow.push_back(q),
                }
            }
        }
    }

    fn retry_overflow(&mut self) {
        while let Some(q) = self.overflow.pop_front() {
            match self.queue.try_send(q) {
                Ok(()) => {
                    self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Full(q)) => {
                    self.overflow.push_front(q);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(q)) => {
                    // Shutting down with neither the journal nor the queue: nothing is left
                    // to hold it but the log line.
                    (self.on_dropped)(&q.event);
                    tracing::error!(request_id = %q.event.request_id, "usage event lost: neither the journal nor the database could take it");
                }
            }
        }
    }

    /// Write the buffer to the open segment (opening one if needed); the segment's id, and
    /// whether it is full now.
    fn append(&mut self) -> std::io::Result<(u64, bool)> {
        let len = self.buf.len() as u64;
        let max = self.journal.max_bytes;
        if max > 0 && self.journal.bytes.load(Ordering::Relaxed) + len > max {
            return Err(std::io::Error::other(format!(
                "the journal holds its limit of {max} bytes (`recorder.journal_max_bytes`)"
            )));
        }
        if self.open.is_none() {
            self.open_segment()?;
        }
        let (id, file) = self.open.as_mut().expect("a segment is open");
        let id = *id;
        if let Err(e) = file.write_all(&self.buf) {
            // A torn line must not run into the next append: this segment is done.
            self.close_open();
            return Err(e);
        }
        self.journal.bytes.fetch_add(len, Ordering::Relaxed);
        let full = {
            let mut m = self.journal.lock();
            let s = m.get_mut(&id).expect("the open segment is live");
            s.bytes += len;
            s.bytes >= self.journal.segment_limit()
        };
        Ok((id, full))
    }

    fn open_segment(&mut self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.journal.dir)?;
        let path = self
            .journal
            .dir
            .join(format!("wal-{}.jsonl", uuid::Uuid::now_v7()));
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        let id = self.next_id;
        self.next_id += 1;
        self.journal.lock().insert(
            id,
            Segment {
                path,
                bytes: 0,
                written: 0,
                settled: 0,
                dropped: 0,
                closed: false,
            },
        );
        self.open = Some((id, file));
        Ok(())
    }

    /// Close the open segment; delete it at once if everything in it is settled.
    fn close_open(&mut self) {
        let Some((id, _file)) = self.open.take() else {
            return;
        };
        if let Some(s) = self.journal.lock().get_mut(&id) {
            s.closed = true;
        }
        self.journal.settled(std::iter::empty());
    }

    /// The journal failed: is there room again?
    fn probe(&mut self) {
        self.last_probe = Instant::now();
        let max = self.journal.max_bytes;
        if max > 0 && self.journal.bytes.load(Ordering::Relaxed) >= max {
            return;
        }
        if let Err(e) = check_writable(&self.journal.dir) {
            tracing::debug!(error = %e, "the recorder journal is still not writable");
            return;
        }
        self.set_ok(true, None);
    }

    /// Log the journal's state once per change, not once per event.
    fn set_ok(&self, ok: bool, err: Option<&std::io::Error>) {
        let was = self.journal.ok.swap(ok, Ordering::Relaxed);
        match (was, ok) {
            (true, false) => tracing::error!(
                error = %err.map(|e| e.to_string()).unwrap_or_default(),
                dir = %self.journal.dir.display(),
                "the recorder journal cannot take usage events; while the database is down too, new requests are refused (503)"
            ),
            (false, true) => tracing::info!("the recorder journal takes usage events again"),
            _ => {}
        }
    }
}

/// Can files be created and written in `dir` (created if missing)?
pub fn check_writable(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".probe-{}", uuid::Uuid::now_v7()));
    let res = std::fs::File::create(&probe).and_then(|mut f| f.write_all(b"ok"));
    let _ = std::fs::remove_file(&probe);
    res
}
