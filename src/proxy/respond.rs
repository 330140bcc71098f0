//! Step 8, respond: upstream's answer to the client, with its usage read on the way. Whole
//! bodies are read, then passed on; SSE streams pass through [`TapStream`] event by event.
//! When no attempt gave an answer, [`failed`] says why in the provider's shape (or passes
//! upstream's own last error on).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};

use super::alias;
use super::client::{UpstreamBody, UpstreamResponse};
use super::error::{Failure, ProxyError};
use super::forward::{AttemptError, Exhausted};
use super::rewrite::client_headers;
use super::tap::{self, SseTap};
use super::ticket::Ticket;
use crate::state::AppState;
use crate::usage::BillingStatus;

/// No attempt gave an answer: upstream's last error status passes through as it came; a
/// timeout, a connect error or no account to try is the gateway's own error. `alias`: the
/// client's model name, to replace the upstream's in the body.
pub async fn failed(
    mut ticket: Ticket,
    exhausted: Exhausted,
    alias: Option<String>,
) -> Result<Response, ProxyError> {
    let protocol = ticket.endpoint.protocol();
    match exhausted.0 {
        Some((AttemptError::Status(resp), account_id)) => {
            // Upstream's own error after retries: passed through as is; nothing billable.
            ticket.account_id = Some(account_id);
            let status = resp.status();
            let (parts, body) = (*resp).into_parts();
            let headers = client_headers(parts.headers, &ticket.request_id);
            let body = read_body(body).await.unwrap_or_default();
            let max = ticket.max_tokens();
            let error = Some(format!("upstream answered {status}"));
            let durable = match tap::usage_from_body(ticket.endpoint, &body, max) {
                Some(Ok(t)) => {
                    ticket.finish(status.as_u16(), Some(t), BillingStatus::Complete, error)
                }
                Some(Err(d)) => ticket.disputed(status.as_u16(), &d, body.len(), error),
                None => ticket.finish(status.as_u16(), None, BillingStatus::Void, error),
            };
            durable.await;
            let mut r = Response::new(Body::from(with_alias(body, alias.as_deref())));
            *r.status_mut() = status;
            *r.headers_mut() = headers;
            Ok(r)
        }
        Some((AttemptError::Timeout(m), _)) => {
            ticket.fail_before_upstream(504, m.clone());
            Err(ProxyError::new(
                protocol,
                Failure::Timeout(format!(
                    "{m}; the upstream provider did not answer in time, try again"
                )),
            ))
        }
        Some((AttemptError::Connect(m), _)) => {
            ticket.fail_before_upstream(502, m.clone());
            Err(ProxyError::new(
                protocol,
                Failure::Unreachable(format!(
                    "{m}; the upstream provider could not be reached, try again"
                )),
            ))
        }
        None => {
            ticket.fail_before_upstream(503, "no account to try".into());
            Err(ProxyError::new(
                protocol,
                Failure::NoAccount("no upstream account is available right now".into()),
            ))
        }
    }
}

/// Answer the client with upstream's response: whole bodies are read and passed on; SSE
/// streams are passed through event by event through the usage tap. `alias`: the client's
/// model name, put back in every `model` member of the answer.
pub async fn respond(
    st: &AppState,
    mut ticket: Ticket,
    resp: UpstreamResponse,
    strip_usage: bool,
    admitted_in: Duration,
    alias: Option<String>,
) -> Response {
    let status = resp.status();
    let (parts, upstream_body) = resp.into_parts();
    let headers = client_headers(parts.headers, &ticket.request_id);
    ticket.ttfb_ms = Some(ticket.started.elapsed().as_millis() as i64);
    let idle = Duration::from_secs(st.config.upstream.idle_timeout_secs);
    let is_sse = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !is_sse || !status.is_success() {
        let protocol = ticket.endpoint.protocol();
        let body = match tokio::time::timeout(idle, read_body(upstream_body)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                let m = format!("upstream response broke off: {e}");
                let est = ticket.estimate(0);
                ticket.finish(502, Some(est), BillingStatus::Estimated, Some(m.clone()));
                return ProxyError::new(protocol, Failure::Unreachable(m)).into_response();
            }
            Err(_) => {
                let m = format!("upstream response stalled for {} s", idle.as_secs());
                let est = ticket.estimate(0);
                ticket.finish(504, Some(est), BillingStatus::Estimated, Some(m.clone()));
                return ProxyError::new(protocol, Failure::Timeout(m)).into_response();
            }
        };
        let post = Instant::now();
        let max = st.config.upstream.max_tokens_per_request;
        let error = (!status.is_success()).then(|| format!("upstream answered {status}"));
        let durable = match tap::usage_from_body(ticket.endpoint, &body, max) {
            Some(Ok(t)) => ticket.finish(status.as_u16(), Some(t), BillingStatus::Complete, error),
            Some(Err(d)) => ticket.disputed(status.as_u16(), &d, body.len(), error),
            None if status.is_success() => {
                let est = ticket.estimate(body.len());
                ticket.finish(status.as_u16(), Some(est), BillingStatus::Estimated, error)
            }
            None => ticket.finish(status.as_u16(), None, BillingStatus::Void, error),
        };
        // The answer goes out once its usage is in the journal (a kill -9 loses nothing answered).
        durable.await;
        let mut r = Response::new(Body::from(with_alias(body, alias.as_deref())));
        *r.status_mut() = status;
        *r.headers_mut() = headers;
        st.metrics
            .gateway_overhead
            .observe(admitted_in + post.elapsed());
        return r;
    }
    // Streams: the admission part (per-event tap work is not timed, to keep it cheap).
    st.metrics.gateway_overhead.observe(admitted_in);
    let mut stream = TapStream {
        inner: upstream_body,
        tap: SseTap::new(
            ticket.endpoint,
            strip_usage,
            st.config.upstream.max_tokens_per_request,
        )
        .with_model_alias(alias),
        ticket: Some(ticket),
        durable: None,
        idle,
        sleep: Box::pin(tokio::time::sleep(idle)),
        last_data: tokio::time::Instant::now(),
        out: None,
        status: status.as_u16(),
    };
    // The events upstream sent with its head go out with ours, in one write. A stream that
    // came whole with the head is over already and waits only for its journal append: wait
    // for it here, so head, events and end still go out together (not the head alone).
    let first = std::future::poll_fn(|cx| {
        let polled = Pin::new(&mut stream).poll_next(cx);
        match polled {
            Poll::Ready(item) => Poll::Ready(item),
            Poll::Pending if stream.ticket.is_none() => Poll::Pending,
            Poll::Pending => Poll::Ready(None),
        }
    })
    .await;
    let body = futures_util::stream::iter(first).chain(stream);
    let mut r = Response::new(Body::from_stream(body));
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// A whole body with the client's model name in its `model` members, when an alias applies.
fn with_alias(body: Bytes, alias: Option<&str>) -> Bytes {
    match alias {
        Some(name) => {
            alias::rename_model(&body, name, alias::ANSWER_DEPTH).map_or(body, Bytes::from)
        }
        None => body,
    }
}

/// A whole upstream body.
async fn read_body(body: UpstreamBody) -> Result<Bytes, super::client::BodyError> {
    use http_body_util::BodyExt;
    Ok(body.collect().await?.to_bytes())
}

/// The streaming body: forwards complete SSE events as they arrive, reads usage on the way,
/// and emits the usage event when the stream ends, breaks, stalls, or the client goes away
/// (on drop: the upstream request is cancelled with it).
///
/// The upstream connection is driven from this stream's own polls (`client::UpstreamBody`),
/// so everything upstream sent in one burst is decoded and tapped in one poll and goes to the
/// client in one write.
pub struct TapStream {
    inner: UpstreamBody,
    tap: SseTap,
    ticket: Option<Ticket>,
    /// Set when the stream is over: its last bytes wait until the usage is in the journal.
    durable: Option<crate::recorder::Durable>,
    idle: Duration,
    /// Fires at the idle limit; moved on lazily (only when it fires) from `last_data`, so
    /// a poll costs at most one clock read, not a timer update.
    sleep: Pin<Box<tokio::time::Sleep>>,
    last_data: tokio::time::Instant,
    /// Events ready for the client, collected within one poll.
    out: Option<OutBuf>,
    status: u16,
}

/// Bytes for the client: the first piece as it came (no copy), later ones appended.
enum OutBuf {
    One(Bytes),
    Many(bytes::BytesMut),
}

impl OutBuf {
    fn push(slot: &mut Option<OutBuf>, b: Bytes) {
        if b.is_empty() {
            return;
        }
        *slot = Some(match slot.take() {
            None => OutBuf::One(b),
            Some(OutBuf::One(first)) => {
                // Room for a burst of events without growing it again and again.
                let cap = ((first.len() + b.len()) * 16).clamp(1024, 16 * 1024);
                let mut m = bytes::BytesMut::with_capacity(cap);
                m.extend_from_slice(&first);
                m.extend_from_slice(&b);
                OutBuf::Many(m)
            }
            Some(OutBuf::Many(mut m)) => {
                m.extend_from_slice(&b);
                OutBuf::Many(m)
            }
        });
    }

    fn take(slot: &mut Option<OutBuf>) -> Option<Bytes> {
        slot.take().map(|o| match o {
            OutBuf::One(b) => b,
            OutBuf::Many(m) => m.freeze(),
        })
    }
}

impl TapStream {
    /// The stream is over (`error` None = upstream ended it normally).
    fn end(&mut self, error: Option<String>) {
        if let Some(mut t) = self.ticket.take() {
            let usage = self.tap.usage();
            let (tokens, billing) = match (usage, &error) {
                (Some(Err(d)), _) => {
                    self.durable = Some(t.disputed(self.status, &d, self.tap.text_chars, error));
                    return;
                }
                (Some(Ok(u)), None) => (u, BillingStatus::Complete),
                (Some(Ok(u)), Some(_)) => (u, BillingStatus::Partial),
                // Cut by the gateway's shutdown: what was seen so far, an estimate of it.
                (None, Some(_)) if t.closing() => {
                    (t.estimate(self.tap.text_chars), BillingStatus::Partial)
                }
                (None, _) => (t.estimate(self.tap.text_chars), BillingStatus::Estimated),
            };
            self.durable = Some(t.finish(self.status, Some(tokens), billing, error));
        }
    }
}

impl Stream for TapStream {
    type Item = Result<Bytes, std::io::Error>;

    /// Forwards what the tap lets through: everything upstream's connection has ready is
    /// read in this one poll and handed on as one piece.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let mut got_data = false;
        loop {
            if this.ticket.is_none() {
                if let Some(d) = this.durable.as_mut() {
                    std::task::ready!(Pin::new(d).poll(cx));
                    this.durable = None;
                }
                return Poll::Ready(OutBuf::take(&mut this.out).map(Ok));
            }
            match hyper::body::Body::poll_frame(Pin::new(&mut this.inner), cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(chunk) = frame.into_data() else {
                        continue; // trailers: nothing to forward
                    };
                    got_data = true;
                    let pass = this.tap.push(chunk);
                    OutBuf::push(&mut this.out, pass);
                }
                Poll::Ready(Some(Err(e))) => {
                    let rest = this.tap.finish();
                    OutBuf::push(&mut this.out, rest);
                    this.end(Some(format!("upstream stream broke off: {e}")));
                }
                Poll::Ready(None) => {
                    let rest = this.tap.finish();
                    OutBuf::push(&mut this.out, rest);
                    this.end(None);
                }
                Poll::Pending => {
                    if got_data {
                        this.last_data = tokio::time::Instant::now();
                    }
                    if this.out.is_some() {
                        return Poll::Ready(OutBuf::take(&mut this.out).map(Ok));
                    }
                    while this.sleep.as_mut().poll(cx).is_ready() {
                        let deadline = this.last_data + this.idle;
                        if deadline > tokio::time::Instant::now() {
                            this.sleep.as_mut().reset(deadline);
                            continue;
                        }
                        let secs = this.idle.as_secs();
                        this.end(Some(format!("upstream stream idle for {secs} s")));
                        return Poll::Ready(None);
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Drop for TapStream {
    fn drop(&mut self) {
        if let Some(t) = &self.ticket {
            let why = if t.closing() {
                "the gateway shut down before the stream ended"
            } else {
                "client disconnected"
            };
            self.end(Some(why.into()));
        }
    }
}
