//! Server-sent events: event framing and the paced, stallable stream of deltas.

use std::{
    io,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use axum::{
    body::Body,
    http::{header, HeaderValue},
    response::Response,
};
use bytes::Bytes;
use futures_util::stream::{self, Stream};
use serde_json::Value;
use tokio::sync::watch;

use super::behaviours::{pause, Knobs, Proto};
use super::reply::insert_request_id;
use super::{FakeState, STALL_LIMIT};

pub(super) fn data_event(v: &Value) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut out, v).expect("serializing a Value cannot fail");
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

pub(super) fn named_event(name: &str, v: &Value) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    serde_json::to_writer(&mut out, v).expect("serializing a Value cannot fail");
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

pub(super) type DeltaFn = Box<dyn Fn(usize) -> Bytes + Send>;

/// The events of one stream: `prefix`, then `deltas` content deltas made by
/// `delta` (each after the chunk delay), then `suffix`.
pub(super) struct StreamPlan {
    pub(super) prefix: Vec<Bytes>,
    pub(super) deltas: usize,
    pub(super) delta: DeltaFn,
    pub(super) suffix: Vec<Bytes>,
}

/// Counts the stream as cancelled when dropped before its last event went out.
pub(super) struct StreamGuard {
    pub(super) state: Arc<FakeState>,
    pub(super) finished: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.state.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub(super) struct Cursor {
    pub(super) plan: StreamPlan,
    pub(super) next: usize,
    pub(super) total: usize,
    pub(super) stall_at: Option<usize>,
    pub(super) chunk_delay: Duration,
    pub(super) shutdown: watch::Receiver<bool>,
    pub(super) guard: StreamGuard,
    pub(super) ended: bool,
}

pub(super) fn event_stream(
    st: &Arc<FakeState>,
    knobs: &Knobs,
    plan: StreamPlan,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
    let p = plan.prefix.len();
    let total = p + plan.deltas + plan.suffix.len();
    let stall_at = knobs
        .stall_after
        .filter(|&n| n <= plan.deltas)
        .map(|n| p + n);
    let cursor = Cursor {
        plan,
        next: 0,
        total,
        stall_at,
        chunk_delay: knobs.chunk_delay,
        shutdown: st.shutdown.subscribe(),
        guard: StreamGuard {
            state: st.clone(),
            finished: false,
        },
        ended: false,
    };
    stream::unfold(cursor, |mut c| async move {
        if c.ended || c.next >= c.total {
            return None;
        }
        let i = c.next;
        if c.stall_at == Some(i) {
            // Silence until the reader leaves (the stream is then dropped),
            // the fake shuts down or the limit passes.
            pause(&mut c.shutdown, STALL_LIMIT).await;
            c.ended = true;
            return Some((Err(io::Error::other("fake upstream stall ended")), c));
        }
        let p = c.plan.prefix.len();
        let event = if i < p {
            c.plan.prefix[i].clone()
        } else if i < p + c.plan.deltas {
            if !pause(&mut c.shutdown, c.chunk_delay).await {
                c.ended = true;
                return Some((Err(io::Error::other("fake upstream shut down")), c));
            }
            (c.plan.delta)(i - p)
        } else {
            c.plan.suffix[i - p - c.plan.deltas].clone()
        };
        c.next += 1;
        if c.next == c.total {
            c.guard.finished = true;
            c.guard.state.completed.fetch_add(1, Ordering::Relaxed);
        }
        Some((Ok(event), c))
    })
}

pub(super) fn sse_response(
    st: &Arc<FakeState>,
    knobs: &Knobs,
    proto: Proto,
    req_id: &str,
    plan: StreamPlan,
) -> Response {
    let mut resp = Response::new(Body::from_stream(event_stream(st, knobs, plan)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    insert_request_id(h, proto, req_id);
    resp
}
