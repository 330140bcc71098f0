//! A real HTTP fake upstream on loopback that speaks both provider protocols
//! (OpenAI and Anthropic), for integration tests, `tollgate demo` and load
//! benchmarks.
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /v1/responses`,
//! `POST /v1/completions`, `POST /v1/embeddings`, `GET /v1/models`,
//! `POST /v1/messages`, `POST /v1/messages/count_tokens`.
//!
//! Behaviour is steered per request by headers (all optional):
//!
//! | header | default | meaning |
//! | --- | --- | --- |
//! | `x-fake-prompt-tokens` | 12 | uncached input tokens |
//! | `x-fake-completion-tokens` | 8 | output tokens |
//! | `x-fake-cached-tokens` | 0 | cache-read input tokens |
//! | `x-fake-cache-write-tokens` | 0 | cache-write input tokens (Anthropic only) |
//! | `x-fake-chunks` | 3 | content deltas in a stream |
//! | `x-fake-chunk-delay-ms` | 0 | delay before each content delta |
//! | `x-fake-header-delay-ms` | 0 | delay before the response head |
//! | `x-fake-stall-after` | none | after N deltas send nothing more (for 1 h, or until the reader goes away) |
//! | `x-fake-status` | none | answer with this status (200..=599) and the provider's error body |
//! | `x-fake-terminal` | `completed` | `/v1/responses`: `completed`, `incomplete` or `failed` |
//! | `x-fake-no-usage` | off | `1`/`true`: OpenAI streams carry no usage at all |
//!
//! Token semantics: OpenAI `prompt_tokens`/`input_tokens` include the cached
//! tokens (`prompt + cached`, with `cached_tokens = cached`); Anthropic keeps
//! the buckets apart (`input_tokens = prompt`, `cache_read_input_tokens =
//! cached`, `cache_creation_input_tokens = cache_write`).
//!
//! The error body follows the protocol of the path: `/v1/messages*` (or any
//! request carrying `anthropic-version` on a path that is not an OpenAI one)
//! gets Anthropic's shape, everything else OpenAI's.

use std::{
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    body::Body,
    extract::{FromRequest, OriginalUri, Request, State},
    http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::Response,
    routing::{get, post},
    serve::ListenerExt,
    Router,
};
use bytes::Bytes;
use futures_util::stream::{self, Stream};
use serde_json::{json, Value};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

/// Largest request body the fake accepts.
const MAX_BODY: usize = 256 * 1024 * 1024;
/// How long `x-fake-stall-after` keeps a stream silent before giving up.
const STALL_LIMIT: Duration = Duration::from_secs(3600);
/// The text of the content deltas, cycled.
const WORDS: [&str; 6] = ["Hello", " from", " the", " fake", " upstream", "!"];
/// The vector every embedding gets.
const EMBEDDING: [f32; 8] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8];

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct ReceivedRequest {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// Header names are lower-case; values are decoded lossily as UTF-8.
    pub headers: Vec<(String, String)>,
    pub body: bytes::Bytes,
}

impl ReceivedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, or `Value::Null` when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Shared state of one fake upstream: the request log, the failure switch and
/// the stream counters. Cheap to share (`Arc`).
pub struct FakeState {
    record: bool,
    requests: Mutex<Vec<ReceivedRequest>>,
    /// 0 = no forced failure.
    fail_status: AtomicU16,
    cancelled: AtomicUsize,
    completed: AtomicUsize,
    next_id: AtomicU64,
    id_seed: u32,
    shutdown: watch::Sender<bool>,
}

impl FakeState {
    /// New state. With `record` false nothing is kept per request (for
    /// benchmarks); the stream counters are kept either way.
    pub fn new(record: bool) -> Arc<FakeState> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
            .unwrap_or(0);
        let (shutdown, _) = watch::channel(false);
        Arc::new(FakeState {
            record,
            requests: Mutex::new(Vec::new()),
            fail_status: AtomicU16::new(0),
            cancelled: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            id_seed: nanos ^ std::process::id().rotate_left(16),
            shutdown,
        })
    }

    fn log(&self) -> MutexGuard<'_, Vec<ReceivedRequest>> {
        // A panicking test thread must not poison the log for everyone else.
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every request received so far, in order (empty when not recording).
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.log().clone()
    }

    pub fn request_count(&self) -> usize {
        self.log().len()
    }

    pub fn clear_requests(&self) {
        self.log().clear();
    }

    /// When `Some`, every request gets that status with the provider's error
    /// body (a status outside 200..=599 is ignored).
    pub fn set_fail_status(&self, status: Option<u16>) {
        let code = status.unwrap_or(0);
        self.fail_status.store(code, Ordering::Relaxed);
    }

    pub fn cancelled_streams(&self) -> usize {
        self.cancelled.load(Ordering::Relaxed)
    }

    pub fn completed_streams(&self) -> usize {
        self.completed.load(Ordering::Relaxed)
    }

    /// Ends every delayed or stalled response at once (their connections are
    /// aborted). Irreversible.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    fn forced_status(&self) -> Option<StatusCode> {
        valid_status(self.fail_status.load(Ordering::Relaxed))
    }

    fn new_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}{:012x}", self.id_seed, n)
    }
}

/// A fake upstream serving on a loopback port until dropped.
pub struct FakeUpstream {
    addr: SocketAddr,
    state: Arc<FakeState>,
    task: JoinHandle<()>,
}

impl FakeUpstream {
    /// Starts on `127.0.0.1:0` (a free port).
    pub async fn start() -> std::io::Result<FakeUpstream> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts on `addr`; the fake records every request.
    pub async fn start_on(addr: std::net::SocketAddr) -> std::io::Result<FakeUpstream> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = FakeState::new(true);
        let app = router(state.clone());
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener.tap_io(set_nodelay), app).await {
                tracing::warn!(%err, "fake upstream server stopped");
            }
        });
        Ok(FakeUpstream { addr, state, task })
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1`
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://127.0.0.1:PORT`
    pub fn anthropic_base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.state.requests()
    }

    pub fn request_count(&self) -> usize {
        self.state.request_count()
    }

    pub fn clear_requests(&self) {
        self.state.clear_requests()
    }

    pub fn set_fail_status(&self, status: Option<u16>) {
        self.state.set_fail_status(status)
    }

    pub fn cancelled_streams(&self) -> usize {
        self.state.cancelled_streams()
    }

    pub fn completed_streams(&self) -> usize {
        self.state.completed_streams()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        // Stop delayed/stalled responses, then the accept loop; aborting the
        // serve task also closes idle keep-alive connections.
        self.state.shutdown();
        self.task.abort();
    }
}

/// Runs the fake upstream until the process is killed (for
/// `tollgate fake-upstream --listen ADDR` and benchmarks). Requests are not
/// recorded.
pub async fn serve_forever(addr: std::net::SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "fake upstream listening");
    axum::serve(listener.tap_io(set_nodelay), router(FakeState::new(false))).await
}

fn set_nodelay(tcp: &mut tokio::net::TcpStream) {
    if let Err(err) = tcp.set_nodelay(true) {
        tracing::trace!(%err, "failed to set TCP_NODELAY");
    }
}

/// The fake's routes, to serve or mount elsewhere.
pub fn router(state: Arc<FakeState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/responses", post(responses))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(state)
}

// ---------------------------------------------------------------------------
// Request intake

/// The request as handlers see it; extracting it records it.
struct Incoming {
    method: String,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl FromRequest<Arc<FakeState>> for Incoming {
    type Rejection = Response;

    async fn from_request(req: Request, state: &Arc<FakeState>) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let path = match parts.extensions.get::<OriginalUri>() {
            Some(OriginalUri(uri)) => uri.path().to_owned(),
            None => parts.uri.path().to_owned(),
        };
        let proto = Proto::for_request(&path, &parts.headers);
        let body = match axum::body::to_bytes(body, MAX_BODY).await {
            Ok(b) => b,
            Err(err) => {
                let msg = format!("could not read the request body: {err}");
                return Err(error_response(proto, StatusCode::BAD_REQUEST, &msg, ""));
            }
        };
        let method = parts.method.as_str().to_owned();
        if state.record {
            let headers = parts
                .headers
                .iter()
                .map(|(n, v)| {
                    let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                    (n.as_str().to_owned(), v)
                })
                .collect();
            state.log().push(ReceivedRequest {
                method: method.clone(),
                path: path.clone(),
                headers,
                body: body.clone(),
            });
        }
        Ok(Incoming {
            method,
            path,
            headers: parts.headers,
            body,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    OpenAi,
    Anthropic,
}

impl Proto {
    fn for_request(path: &str, headers: &HeaderMap) -> Proto {
        let openai_path = [
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/responses",
            "/v1/embeddings",
        ]
        .contains(&path);
        if path.starts_with("/v1/messages")
            || (!openai_path && headers.contains_key("anthropic-version"))
        {
            Proto::Anthropic
        } else {
            Proto::OpenAi
        }
    }

    fn request_id_header(self) -> &'static str {
        match self {
            Proto::OpenAi => "x-request-id",
            Proto::Anthropic => "request-id",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Terminal {
    Completed,
    Incomplete,
    Failed,
}

/// The per-request knobs read from the `x-fake-*` headers.
#[derive(Clone, Debug)]
struct Knobs {
    prompt: u64,
    completion: u64,
    cached: u64,
    cache_write: u64,
    chunks: usize,
    chunk_delay: Duration,
    header_delay: Duration,
    stall_after: Option<usize>,
    status: Option<StatusCode>,
    terminal: Terminal,
    no_usage: bool,
}

impl Knobs {
    fn from_headers(h: &HeaderMap) -> Knobs {
        fn num<T: std::str::FromStr>(h: &HeaderMap, name: &str) -> Option<T> {
            h.get(name)?.to_str().ok()?.trim().parse().ok()
        }
        let text = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.trim().to_ascii_lowercase())
        };
        Knobs {
            prompt: num(h, "x-fake-prompt-tokens").unwrap_or(12),
            completion: num(h, "x-fake-completion-tokens").unwrap_or(8),
            cached: num(h, "x-fake-cached-tokens").unwrap_or(0),
            cache_write: num(h, "x-fake-cache-write-tokens").unwrap_or(0),
            chunks: num(h, "x-fake-chunks").unwrap_or(3),
            chunk_delay: Duration::from_millis(num(h, "x-fake-chunk-delay-ms").unwrap_or(0)),
            header_delay: Duration::from_millis(num(h, "x-fake-header-delay-ms").unwrap_or(0)),
            stall_after: num(h, "x-fake-stall-after"),
            status: num(h, "x-fake-status").and_then(valid_status),
            terminal: match text("x-fake-terminal").as_deref() {
                Some("incomplete") => Terminal::Incomplete,
                Some("failed") => Terminal::Failed,
                _ => Terminal::Completed,
            },
            no_usage: matches!(
                text("x-fake-no-usage").as_deref(),
                Some("1" | "true" | "yes")
            ),
        }
    }

    /// OpenAI's input count: cached tokens are part of it.
    fn openai_input(&self) -> u64 {
        self.prompt + self.cached
    }

    fn text(&self) -> String {
        (0..self.chunks).map(word).collect()
    }
}

fn valid_status(code: u16) -> Option<StatusCode> {
    if (200..=599).contains(&code) {
        StatusCode::from_u16(code).ok()
    } else {
        None
    }
}

fn word(i: usize) -> &'static str {
    WORDS[i % WORDS.len()]
}

/// What every handler does first: the head delay, forced failures and (if
/// `parse` is set) the JSON body, which must be an object.
async fn prelude(
    st: &FakeState,
    inc: &Incoming,
    proto: Proto,
    parse: bool,
) -> Result<(Knobs, Value), Response> {
    let knobs = Knobs::from_headers(&inc.headers);
    if !knobs.header_delay.is_zero()
        && !pause(&mut st.shutdown.subscribe(), knobs.header_delay).await
    {
        return Err(aborted_response());
    }
    if let Some(status) = st.forced_status().or(knobs.status) {
        let msg = format!("Fake upstream error (status {}).", status.as_u16());
        return Err(error_response(proto, status, &msg, &st.new_id()));
    }
    if !parse {
        return Ok((knobs, Value::Null));
    }
    match serde_json::from_slice::<Value>(&inc.body) {
        Ok(v @ Value::Object(_)) => Ok((knobs, v)),
        Ok(_) => Err(error_response(
            proto,
            StatusCode::BAD_REQUEST,
            "The request body must be a JSON object.",
            &st.new_id(),
        )),
        Err(err) => {
            let msg = match proto {
                Proto::OpenAi => format!("We could not parse the JSON body of your request: {err}"),
                Proto::Anthropic => format!("invalid JSON in request body: {err}"),
            };
            Err(error_response(
                proto,
                StatusCode::BAD_REQUEST,
                &msg,
                &st.new_id(),
            ))
        }
    }
}

/// Sleeps for `d`; false when the fake shut down meanwhile.
async fn pause(shutdown: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if d.is_zero() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.wait_for(|down| *down) => false,
    }
}

// ---------------------------------------------------------------------------
// Responses

fn error_response(proto: Proto, status: StatusCode, message: &str, req_id: &str) -> Response {
    let code = status.as_u16();
    let body = match proto {
        Proto::OpenAi => {
            let (kind, err_code) = match code {
                401 => ("invalid_request_error", Some("invalid_api_key")),
                403 => (
                    "request_forbidden",
                    Some("unsupported_country_region_territory"),
                ),
                429 => ("requests", Some("rate_limit_exceeded")),
                500..=599 => ("server_error", None),
                _ => ("invalid_request_error", None),
            };
            json!({"error": {"message": message, "type": kind, "param": null, "code": err_code}})
        }
        Proto::Anthropic => {
            let kind = match code {
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                500..=599 => "api_error",
                _ => "invalid_request_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
    };
    json_response(proto, status, req_id, &body)
}

fn json_response(proto: Proto, status: StatusCode, req_id: &str, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).expect("serializing a Value cannot fail");
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    insert_request_id(h, proto, req_id);
    resp
}

fn insert_request_id(h: &mut HeaderMap, proto: Proto, req_id: &str) {
    if req_id.is_empty() {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(&format!("req_{req_id}")) {
        h.insert(HeaderName::from_static(proto.request_id_header()), v);
    }
}

/// A response whose body fails at once, so the connection is aborted (used
/// when the fake shuts down while delaying a head).
fn aborted_response() -> Response {
    let body = Body::from_stream(stream::once(async {
        Err::<Bytes, _>(io::Error::other("fake upstream shut down"))
    }));
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    resp
}

fn ok_json(proto: Proto, req_id: &str, body: &Value) -> Response {
    json_response(proto, StatusCode::OK, req_id, body)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn model_of(body: &Value) -> String {
    body.get("model")
        .and_then(Value::as_str)
        .unwrap_or("fake-model")
        .to_owned()
}

fn wants_stream(body: &Value) -> bool {
    body.get("stream").and_then(Value::as_bool).unwrap_or(false)
}

fn wants_usage_chunk(body: &Value) -> bool {
    body.pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn data_event(v: &Value) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut out, v).expect("serializing a Value cannot fail");
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn named_event(name: &str, v: &Value) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    serde_json::to_writer(&mut out, v).expect("serializing a Value cannot fail");
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

// ---------------------------------------------------------------------------
// Streaming

type DeltaFn = Box<dyn Fn(usize) -> Bytes + Send>;

/// The events of one stream: `prefix`, then `deltas` content deltas made by
/// `delta` (each after the chunk delay), then `suffix`.
struct StreamPlan {
    prefix: Vec<Bytes>,
    deltas: usize,
    delta: DeltaFn,
    suffix: Vec<Bytes>,
}

/// Counts the stream as cancelled when dropped before its last event went out.
struct StreamGuard {
    state: Arc<FakeState>,
    finished: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.state.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Cursor {
    plan: StreamPlan,
    next: usize,
    total: usize,
    stall_at: Option<usize>,
    chunk_delay: Duration,
    shutdown: watch::Receiver<bool>,
    guard: StreamGuard,
    ended: bool,
}

fn event_stream(
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

fn sse_response(
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

// ---------------------------------------------------------------------------
// OpenAI

fn chat_usage(k: &Knobs) -> Value {
    let p = k.openai_input();
    json!({
        "prompt_tokens": p,
        "completion_tokens": k.completion,
        "total_tokens": p + k.completion,
        "prompt_tokens_details": {"cached_tokens": k.cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0
        }
    })
}

async fn chat_completions(State(st): State<Arc<FakeState>>, inc: Incoming) -> Response {
    let proto = Proto::OpenAi;
    let (k, body) = match prelude(&st, &inc, proto, true).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let rid = st.new_id();
    let id = format!("chatcmpl-{rid}");
    let model = model_of(&body);
    let created = unix_now();
    if !wants_stream(&body) {
        let out = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": k.text(), "refusal": null},
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": chat_usage(&k),
            "system_fingerprint": "fp_fake"
        });
        return ok_json(proto, &rid, &out);
    }
    let include_usage = wants_usage_chunk(&body);
    let chunk = move |choices: Value, usage: Option<Value>| {
        let mut v = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": choices
        });
        if include_usage {
            v["usage"] = usage.unwrap_or(Value::Null);
        }
        data_event(&v)
    };
    let first = chunk(
        json!([{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": null},
                "logprobs": null, "finish_reason": null}]),
        None,
    );
    let mut suffix = vec![chunk(
        json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}]),
        None,
    )];
    if include_usage && !k.no_usage {
        suffix.push(chunk(json!([]), Some(chat_usage(&k))));
    }
    suffix.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let plan = StreamPlan {
        prefix: vec![first],
        deltas: k.chunks,
        delta: Box::new(move |i| {
            chunk(
                json!([{"index": 0, "delta": {"content": word(i)}, "logprobs": null,
                        "finish_reason": null}]),
                None,
            )
        }),
        suffix,
    };
    sse_response(&st, &k, proto, &rid, plan)
}

async fn completions(State(st): State<Arc<FakeState>>, inc: Incoming) -> Response {
    let proto = Proto::OpenAi;
    let (k, body) = match prelude(&st, &inc, proto, true).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let rid = st.new_id();
    let id = format!("cmpl-{rid}");
    let model = model_of(&body);
    let created = unix_now();
    let p = k.openai_input();
    let usage = json!({
        "prompt_tokens": p,
        "completion_tokens": k.completion,
        "total_tokens": p + k.completion
    });
    if !wants_stream(&body) {
        let out = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{"text": k.text(), "index": 0, "logprobs": null, "finish_reason": "stop"}],
            "usage": usage
        });
        return ok_json(proto, &rid, &out);
    }
    let include_usage = wants_usage_chunk(&body);
    let chunk = move |choices: Value, usage: Option<Value>| {
        let mut v = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": choices
        });
        if include_usage {
            v["usage"] = usage.unwrap_or(Value::Null);
        }
        data_event(&v)
    };
    let mut suffix = vec![chunk(
        json!([{"text": "", "index": 0, "logprobs": null, "finish_reason": "stop"}]),
        None,
    )];
    if include_usage && !k.no_usage {
        suffix.push(chunk(json!([]), Some(usage)));
    }
    suffix.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let plan = StreamPlan {
        prefix: Vec::new(),
        deltas: k.chunks,
        delta: Box::new(move |i| {
            chunk(
                json!([{"text": word(i), "index": 0, "logprobs": null, "finish_reason": null}]),
                None,
            )
        }),
        suffix,
    };
    sse_response(&st, &k, proto, &rid, plan)
}

fn responses_usage(k: &Knobs) -> Value {
    let p = k.openai_input();
    json!({
        "input_tokens": p,
        "input_tokens_details": {"cached_tokens": k.cached},
        "output_tokens": k.completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": p + k.completion
    })
}

fn output_message(item_id: &str, status: &str, text: &str) -> Value {
    json!({
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]
    })
}

/// A Response object in state `status` (`in_progress` while streaming).
fn response_object(
    id: &str,
    created: u64,
    model: &str,
    status: &str,
    output: Value,
    usage: Value,
) -> Value {
    let error = if status == "failed" {
        json!({"code": "server_error",
               "message": "The fake upstream was told to fail this response."})
    } else {
        Value::Null
    };
    let incomplete = if status == "incomplete" {
        json!({"reason": "max_output_tokens"})
    } else {
        Value::Null
    };
    json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": error,
        "incomplete_details": incomplete,
        "model": model,
        "output": output,
        "parallel_tool_calls": true,
        "tool_choice": "auto",
        "tools": [],
        "metadata": {},
        "usage": usage
    })
}

async fn responses(State(st): State<Arc<FakeState>>, inc: Incoming) -> Response {
    let proto = Proto::OpenAi;
    let (k, body) = match prelude(&st, &inc, proto, true).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let rid = st.new_id();
    let id = format!("resp_{rid}");
    let item_id = format!("msg_{rid}");
    let model = model_of(&body);
    let created = unix_now();
    let text = k.text();
    let status = match k.terminal {
        Terminal::Completed => "completed",
        Terminal::Incomplete => "incomplete",
        Terminal::Failed => "failed",
    };
    let final_output = match k.terminal {
        Terminal::Failed => json!([]),
        _ => json!([output_message(&item_id, status, &text)]),
    };
    if !wants_stream(&body) {
        let out = response_object(
            &id,
            created,
            &model,
            status,
            final_output,
            responses_usage(&k),
        );
        return ok_json(proto, &rid, &out);
    }
    let in_progress = response_object(&id, created, &model, "in_progress", json!([]), Value::Null);
    let ev = |name: &str, seq: usize, mut v: Value| {
        v["type"] = json!(name);
        v["sequence_number"] = json!(seq);
        named_event(name, &v)
    };
    let prefix = vec![
        ev("response.created", 0, json!({"response": in_progress})),
        ev("response.in_progress", 1, json!({"response": in_progress})),
        ev(
            "response.output_item.added",
            2,
            json!({"output_index": 0, "item": {"id": item_id, "type": "message",
                   "status": "in_progress", "role": "assistant", "content": []}}),
        ),
        ev(
            "response.content_part.added",
            3,
            json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                   "part": {"type": "output_text", "text": "", "annotations": []}}),
        ),
    ];
    let mut seq = prefix.len() + k.chunks;
    let mut suffix = Vec::new();
    if k.terminal != Terminal::Failed {
        suffix.push(ev(
            "response.output_text.done",
            seq,
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "text": text,
                   "logprobs": []}),
        ));
        suffix.push(ev(
            "response.content_part.done",
            seq + 1,
            json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                   "part": {"type": "output_text", "text": text, "annotations": []}}),
        ));
        suffix.push(ev(
            "response.output_item.done",
            seq + 2,
            json!({"output_index": 0, "item": output_message(&item_id, status, &text)}),
        ));
        seq += 3;
    }
    let usage = if k.no_usage {
        Value::Null
    } else {
        responses_usage(&k)
    };
    let terminal = response_object(&id, created, &model, status, final_output, usage);
    suffix.push(ev(
        &format!("response.{status}"),
        seq,
        json!({"response": terminal}),
    ));
    let first_delta_seq = prefix.len();
    let plan = StreamPlan {
        prefix,
        deltas: k.chunks,
        delta: Box::new(move |i| {
            let v = json!({
                "type": "response.output_text.delta",
                "sequence_number": first_delta_seq + i,
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "delta": word(i),
                "logprobs": []
            });
            named_event("response.output_text.delta", &v)
        }),
        suffix,
    };
    sse_response(&st, &k, proto, &rid, plan)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (j, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if j <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn embeddings(State(st): State<Arc<FakeState>>, inc: Incoming) -> Response {
    let proto = Proto::OpenAi;
    let (k, body) = match prelude(&st, &inc, proto, true).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    // A string, an array of token ids or an empty input is one input; an
    // array of strings or of token arrays is one input per element.
    let inputs = match body.get("input") {
        Some(Value::Array(items)) if !items.is_empty() && !items[0].is_number() => items.len(),
        _ => 1,
    };
    let base64_format = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let vector = if base64_format {
        let raw: Vec<u8> = EMBEDDING.iter().flat_map(|f| f.to_le_bytes()).collect();
        json!(base64(&raw))
    } else {
        json!(EMBEDDING.map(f64::from).map(|f| (f * 1e6).round() / 1e6))
    };
    let data: Vec<Value> = (0..inputs)
        .map(|i| json!({"object": "embedding", "index": i, "embedding": vector}))
        .collect();
    let p = k.openai_input();
    let out = json!({
        "object": "list",
        "data": data,
        "model": model_of(&body),
        "usage": {"prompt_tokens": p, "total_tokens": p}
    });
    ok_json(proto, &st.new_id(), &out)
}

async fn models(State(st): State<Arc<FakeState>>, inc: Incoming) -> Response {
    let proto = Proto::for_request(&inc.path, &inc.headers);
    if let Err(resp) = prelude(&st, &inc, proto, false).await {
        return resp;
    }
    let out = match proto {
        Proto::OpenAi => {
            let data: Vec<Value> = ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "text-embedding-3-small"]
                .iter()
                .map(|id| {
                    json!({"id": id, "object": "model", "created": 1_715_367_049u64,
                           "owned_by": "system"})
                })
                .collect();
            json!({"object": "list", "data": data})
        }
        Proto::Anthropic => {
            let ids = ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"];
            let data: Vec<Value> = ids
                .iter()
                .map(|id| {
                    json!({"type": "model", "id": id, "display_name": id,
                           "created_at": "2025-09-29T00:00:00Z"})
                })
                .collect();
            json!({"data": data, "has_more": false, "first_id": ids[0],
                   "last_id": ids[ids.len() - 1]})
        }
    };
    ok_json(proto, &st.new_id(), &out)
}

// ---------------------------------------------------------------------------
// Anthropic

fn anthropic_usage(k: &Knobs, output_tokens: u64) -> Value {
    json!({
        "input_tokens": k.prompt,
        "cache_creation_input_tokens": k.cache_write,
        "cache_read_input_tokens": k.cached,
        "output_tokens": output_tokens
    })
}

async fn messages(State(st): State<Arc<FakeState>>, inc: Incoming) -> Response {
    let proto = Proto::Anthropic;
    let (k, body) = match prelude(&st, &inc, proto, true).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let rid = st.new_id();
    let id = format!("msg_{rid}");
    let model = model_of(&body);
    if !wants_stream(&body) {
        let out = json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": k.text()}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": anthropic_usage(&k, k.completion)
        });
        return ok_json(proto, &rid, &out);
    }
    let start = json!({
        "type": "message_start",
        "message": {
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": anthropic_usage(&k, 1)
        }
    });
    let prefix = vec![
        named_event("message_start", &start),
        named_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
        ),
        named_event("ping", &json!({"type": "ping"})),
    ];
    let suffix = vec![
        named_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ),
        named_event(
            "message_delta",
            &json!({"type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                    "usage": anthropic_usage(&k, k.completion)}),
        ),
        named_event("message_stop", &json!({"type": "message_stop"})),
    ];
    let plan = StreamPlan {
        prefix,
        deltas: k.chunks,
        delta: Box::new(|i| {
            named_event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": word(i)}}),
            )
        }),
        suffix,
    };
    sse_response(&st, &k, proto, &rid, plan)
}

async fn count_tokens(State(st): State<Arc<FakeState>>, inc: Incoming) -> Response {
    let proto = Proto::Anthropic;
    let (k, _body) = match prelude(&st, &inc, proto, true).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    ok_json(proto, &st.new_id(), &json!({"input_tokens": k.prompt}))
}

// ---------------------------------------------------------------------------
// Unknown routes

async fn not_found(State(st): State<Arc<FakeState>>, inc: Incoming) -> Response {
    unknown_route(&st, &inc, StatusCode::NOT_FOUND).await
}

async fn method_not_allowed(State(st): State<Arc<FakeState>>, inc: Incoming) -> Response {
    unknown_route(&st, &inc, StatusCode::METHOD_NOT_ALLOWED).await
}

async fn unknown_route(st: &FakeState, inc: &Incoming, status: StatusCode) -> Response {
    let proto = Proto::for_request(&inc.path, &inc.headers);
    if let Err(resp) = prelude(st, inc, proto, false).await {
        return resp;
    }
    let msg = format!("Invalid URL ({} {})", inc.method, inc.path);
    error_response(proto, status, &msg, &st.new_id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::time::Instant;

    struct Event {
        name: Option<String>,
        data: String,
    }

    impl Event {
        fn json(&self) -> Value {
            serde_json::from_str(&self.data).expect("event data is JSON")
        }
    }

    fn parse_sse(text: &str) -> Vec<Event> {
        text.split("\n\n")
            .filter(|block| !block.is_empty())
            .map(|block| {
                let mut ev = Event {
                    name: None,
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event: ") {
                        ev.name = Some(name.to_owned());
                    } else if let Some(data) = line.strip_prefix("data: ") {
                        ev.data.push_str(data);
                    } else {
                        panic!("unexpected SSE line {line:?} in {text:?}");
                    }
                }
                ev
            })
            .collect()
    }

    async fn post(url: String, headers: &[(&str, &str)], body: Value) -> reqwest::Response {
        let mut req = reqwest::Client::new().post(url).json(&body);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.send().await.expect("request reaches the fake")
    }

    async fn wait_until(what: impl Fn() -> bool) -> bool {
        for _ in 0..250 {
            if what() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        what()
    }

    const TOKENS: [(&str, &str); 4] = [
        ("x-fake-prompt-tokens", "100"),
        ("x-fake-completion-tokens", "20"),
        ("x-fake-cached-tokens", "30"),
        ("x-fake-cache-write-tokens", "40"),
    ];

    #[tokio::test]
    async fn base_urls() {
        let fake = FakeUpstream::start().await.unwrap();
        let port = fake.addr().port();
        assert!(fake.addr().ip().is_loopback());
        assert_eq!(
            fake.openai_base_url(),
            format!("http://127.0.0.1:{port}/v1")
        );
        assert_eq!(
            fake.anthropic_base_url(),
            format!("http://127.0.0.1:{port}")
        );
    }

    #[tokio::test]
    async fn openai_non_stream_usage() {
        let fake = FakeUpstream::start().await.unwrap();
        let base = fake.openai_base_url();

        let resp = post(
            format!("{base}/chat/completions"),
            &TOKENS,
            json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert!(v["created"].is_u64());
        assert_eq!(v["model"], "gpt-test");
        assert_eq!(v["choices"][0]["index"], 0);
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["choices"][0]["message"]["content"], "Hello from the");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["prompt_tokens"], 130);
        assert_eq!(v["usage"]["completion_tokens"], 20);
        assert_eq!(v["usage"]["total_tokens"], 150);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 30);

        // Defaults.
        let v: Value = post(
            format!("{base}/chat/completions"),
            &[],
            json!({"model": "m"}),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(v["usage"]["prompt_tokens"], 12);
        assert_eq!(v["usage"]["completion_tokens"], 8);
        assert_eq!(v["usage"]["total_tokens"], 20);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);

        let v: Value = post(
            format!("{base}/responses"),
            &TOKENS,
            json!({"model": "gpt-resp", "input": "hi"}),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(v["object"], "response");
        assert!(v["id"].as_str().unwrap().starts_with("resp_"));
        assert_eq!(v["status"], "completed");
        assert_eq!(v["model"], "gpt-resp");
        assert_eq!(v["output"][0]["type"], "message");
        assert_eq!(v["output"][0]["role"], "assistant");
        assert_eq!(v["output"][0]["content"][0]["type"], "output_text");
        assert_eq!(v["output"][0]["content"][0]["text"], "Hello from the");
        assert_eq!(v["usage"]["input_tokens"], 130);
        assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], 30);
        assert_eq!(v["usage"]["output_tokens"], 20);
        assert_eq!(v["usage"]["output_tokens_details"]["reasoning_tokens"], 0);
        assert_eq!(v["usage"]["total_tokens"], 150);

        let v: Value = post(
            format!("{base}/completions"),
            &TOKENS,
            json!({"model": "davinci", "prompt": "hi"}),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["model"], "davinci");
        assert_eq!(v["choices"][0]["text"], "Hello from the");
        assert_eq!(v["choices"][0]["index"], 0);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["prompt_tokens"], 130);
        assert_eq!(v["usage"]["completion_tokens"], 20);
        assert_eq!(v["usage"]["total_tokens"], 150);

        let v: Value = post(
            format!("{base}/embeddings"),
            &[("x-fake-prompt-tokens", "7")],
            json!({"model": "text-embedding-3-small", "input": ["a", "b", "c"]}),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(v["object"], "list");
        assert_eq!(v["model"], "text-embedding-3-small");
        assert_eq!(v["data"].as_array().unwrap().len(), 3);
        assert_eq!(v["data"][2]["index"], 2);
        assert_eq!(v["data"][0]["object"], "embedding");
        let emb = v["data"][0]["embedding"].as_array().unwrap();
        assert_eq!(emb.len(), 8);
        assert_eq!(emb[0], 0.1);
        assert_eq!(v["usage"]["prompt_tokens"], 7);
        assert_eq!(v["usage"]["total_tokens"], 7);

        let v: Value = post(
            format!("{base}/embeddings"),
            &[],
            json!({"model": "e", "input": "one", "encoding_format": "base64"}),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 1);
        // 8 little-endian f32 = 32 bytes = 44 base64 characters; 0.1f32 = cd cc cc 3d.
        let b64 = v["data"][0]["embedding"].as_str().unwrap();
        assert_eq!(b64.len(), 44);
        assert_eq!(b64, "zczMPc3MTD6amZk+zczMPgAAAD+amRk/MzMzP83MTD8=");

        let v: Value = reqwest::get(format!("{base}/models"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["object"], "list");
        assert!(v["data"].as_array().unwrap().len() >= 2);
        assert_eq!(v["data"][0]["object"], "model");
        assert!(v["data"][0]["id"].is_string());
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[tokio::test]
    async fn anthropic_non_stream_usage() {
        let fake = FakeUpstream::start().await.unwrap();
        let base = fake.anthropic_base_url();
        let resp = post(
            format!("{base}/v1/messages"),
            &TOKENS,
            json!({"model": "claude-test", "max_tokens": 10,
                   "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().contains_key("request-id"));
        let v: Value = resp.json().await.unwrap();
        assert!(v["id"].as_str().unwrap().starts_with("msg_"));
        assert_eq!(v["type"], "message");
        assert_eq!(v["role"], "assistant");
        assert_eq!(v["model"], "claude-test");
        assert_eq!(v["content"][0]["type"], "text");
        assert_eq!(v["content"][0]["text"], "Hello from the");
        assert_eq!(v["stop_reason"], "end_turn");
        assert!(v["stop_sequence"].is_null());
        assert_eq!(
            v["usage"],
            json!({"input_tokens": 100, "cache_creation_input_tokens": 40,
                   "cache_read_input_tokens": 30, "output_tokens": 20})
        );

        let v: Value = post(
            format!("{base}/v1/messages/count_tokens"),
            &[("x-fake-prompt-tokens", "77")],
            json!({"model": "claude-test", "messages": []}),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(v, json!({"input_tokens": 77}));

        let v: Value = reqwest::Client::new()
            .get(format!("{base}/v1/models"))
            .header("anthropic-version", "2023-06-01")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["data"][0]["type"], "model");
        assert_eq!(v["has_more"], false);
    }

    #[tokio::test]
    async fn openai_chat_stream_without_include_usage() {
        let fake = FakeUpstream::start().await.unwrap();
        let resp = post(
            format!("{}/chat/completions", fake.openai_base_url()),
            &TOKENS,
            json!({"model": "gpt-s", "stream": true, "messages": []}),
        )
        .await;
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let events = parse_sse(&resp.text().await.unwrap());
        assert_eq!(events.last().unwrap().data, "[DONE]");
        let chunks: Vec<Value> = events[..events.len() - 1].iter().map(Event::json).collect();
        // role, 3 deltas, finish.
        assert_eq!(chunks.len(), 5);
        for c in &chunks {
            assert_eq!(c["object"], "chat.completion.chunk");
            assert_eq!(c["model"], "gpt-s");
            assert!(
                c.get("usage").is_none(),
                "no usage key without include_usage: {c}"
            );
            assert_eq!(c["id"], chunks[0]["id"]);
        }
        assert!(events.iter().all(|e| e.name.is_none()));
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = chunks[1..4]
            .iter()
            .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
            .collect();
        assert_eq!(text, "Hello from the");
        assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
        assert!(chunks[..4]
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null()));
        assert!(wait_until(|| fake.completed_streams() == 1).await);
        assert_eq!(fake.cancelled_streams(), 0);
    }

    #[tokio::test]
    async fn openai_chat_stream_with_include_usage() {
        let fake = FakeUpstream::start().await.unwrap();
        let url = format!("{}/chat/completions", fake.openai_base_url());
        let body = json!({"model": "gpt-s", "stream": true,
                          "stream_options": {"include_usage": true}, "messages": []});
        let mut headers = TOKENS.to_vec();
        headers.push(("x-fake-chunks", "5"));
        let text = post(url.clone(), &headers, body.clone())
            .await
            .text()
            .await
            .unwrap();
        let events = parse_sse(&text);
        assert_eq!(events.last().unwrap().data, "[DONE]");
        let chunks: Vec<Value> = events[..events.len() - 1].iter().map(Event::json).collect();
        // role, 5 deltas, finish, usage.
        assert_eq!(chunks.len(), 8);
        for c in &chunks[..7] {
            assert!(c["usage"].is_null() && c.get("usage").is_some(), "{c}");
            assert_eq!(c["choices"].as_array().unwrap().len(), 1);
        }
        assert_eq!(chunks[6]["choices"][0]["finish_reason"], "stop");
        let last = &chunks[7];
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["prompt_tokens"], 130);
        assert_eq!(last["usage"]["completion_tokens"], 20);
        assert_eq!(last["usage"]["total_tokens"], 150);
        assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], 30);

        // x-fake-no-usage drops the usage chunk even when asked.
        let text = post(url, &[("x-fake-no-usage", "1")], body)
            .await
            .text()
            .await
            .unwrap();
        let events = parse_sse(&text);
        assert_eq!(events.last().unwrap().data, "[DONE]");
        assert_eq!(events.len(), 6);
        assert!(events[..5]
            .iter()
            .all(|e| e.json()["usage"].is_null() && !e.json()["choices"][0].is_null()));
        assert!(wait_until(|| fake.completed_streams() == 2).await);
    }

    #[tokio::test]
    async fn legacy_completions_stream() {
        let fake = FakeUpstream::start().await.unwrap();
        let url = format!("{}/completions", fake.openai_base_url());
        let text = post(
            url.clone(),
            &[("x-fake-chunks", "2")],
            json!({"model": "davinci", "prompt": "x", "stream": true,
                   "stream_options": {"include_usage": true}}),
        )
        .await
        .text()
        .await
        .unwrap();
        let events = parse_sse(&text);
        assert_eq!(events.last().unwrap().data, "[DONE]");
        let chunks: Vec<Value> = events[..events.len() - 1].iter().map(Event::json).collect();
        assert_eq!(chunks.len(), 4); // 2 deltas, finish, usage
        assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
        assert_eq!(chunks[0]["choices"][0]["text"], "Hello");
        assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[3]["choices"], json!([]));
        assert_eq!(chunks[3]["usage"]["total_tokens"], 20);

        let text = post(
            url,
            &[],
            json!({"model": "davinci", "prompt": "x", "stream": true}),
        )
        .await
        .text()
        .await
        .unwrap();
        let events = parse_sse(&text);
        assert_eq!(events.len(), 5); // 3 deltas, finish, [DONE]
        assert!(!text.contains("usage"));
    }

    #[tokio::test]
    async fn anthropic_stream_order_and_cumulative_usage() {
        let fake = FakeUpstream::start().await.unwrap();
        let mut headers = TOKENS.to_vec();
        headers.push(("x-fake-chunks", "2"));
        let resp = post(
            format!("{}/v1/messages", fake.anthropic_base_url()),
            &headers,
            json!({"model": "claude-s", "max_tokens": 5, "stream": true, "messages": []}),
        )
        .await;
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let events = parse_sse(&resp.text().await.unwrap());
        let names: Vec<&str> = events.iter().map(|e| e.name.as_deref().unwrap()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        for e in &events {
            assert_eq!(e.json()["type"], e.name.as_deref().unwrap());
        }
        let start = events[0].json();
        assert_eq!(start["message"]["model"], "claude-s");
        assert_eq!(start["message"]["role"], "assistant");
        assert_eq!(start["message"]["content"], json!([]));
        assert_eq!(
            start["message"]["usage"],
            json!({"input_tokens": 100, "cache_creation_input_tokens": 40,
                   "cache_read_input_tokens": 30, "output_tokens": 1})
        );
        assert_eq!(
            events[1].json()["content_block"],
            json!({"type": "text", "text": ""})
        );
        let text: String = events[3..5]
            .iter()
            .map(|e| {
                let d = e.json();
                assert_eq!(d["delta"]["type"], "text_delta");
                d["delta"]["text"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(text, "Hello from");
        let delta = events[6].json();
        assert_eq!(
            delta,
            json!({"type": "message_delta",
                   "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                   "usage": {"input_tokens": 100, "cache_creation_input_tokens": 40,
                             "cache_read_input_tokens": 30, "output_tokens": 20}})
        );
        assert!(wait_until(|| fake.completed_streams() == 1).await);
    }

    #[tokio::test]
    async fn responses_stream_terminal_variants() {
        let fake = FakeUpstream::start().await.unwrap();
        for terminal in ["completed", "incomplete", "failed"] {
            let mut headers = TOKENS.to_vec();
            headers.push(("x-fake-terminal", terminal));
            let text = post(
                format!("{}/responses", fake.openai_base_url()),
                &headers,
                json!({"model": "gpt-r", "input": "hi", "stream": true}),
            )
            .await
            .text()
            .await
            .unwrap();
            let events = parse_sse(&text);
            let names: Vec<&str> = events.iter().map(|e| e.name.as_deref().unwrap()).collect();
            assert_eq!(names[0], "response.created");
            assert_eq!(
                names
                    .iter()
                    .filter(|n| **n == "response.output_text.delta")
                    .count(),
                3
            );
            let terminal_name = format!("response.{terminal}");
            assert_eq!(*names.last().unwrap(), terminal_name);
            assert_eq!(
                names
                    .iter()
                    .filter(|n| n.starts_with("response.c")
                        && **n != "response.created"
                        && !n.starts_with("response.content_part"))
                    .count(),
                usize::from(terminal == "completed")
            );
            for (i, e) in events.iter().enumerate() {
                let d = e.json();
                assert_eq!(d["type"], e.name.as_deref().unwrap());
                assert_eq!(d["sequence_number"], i);
            }
            let created = events[0].json();
            assert_eq!(created["response"]["status"], "in_progress");
            assert_eq!(created["response"]["model"], "gpt-r");
            let deltas: String = events
                .iter()
                .filter(|e| e.name.as_deref() == Some("response.output_text.delta"))
                .map(|e| e.json()["delta"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(deltas, "Hello from the");
            let last = events.last().unwrap().json();
            assert_eq!(last["response"]["status"], terminal);
            assert_eq!(last["response"]["object"], "response");
            assert_eq!(last["response"]["id"], created["response"]["id"]);
            assert_eq!(last["response"]["usage"]["input_tokens"], 130);
            assert_eq!(
                last["response"]["usage"]["input_tokens_details"]["cached_tokens"],
                30
            );
            assert_eq!(last["response"]["usage"]["output_tokens"], 20);
            assert_eq!(last["response"]["usage"]["total_tokens"], 150);
        }
        assert!(wait_until(|| fake.completed_streams() == 3).await);
    }

    #[tokio::test]
    async fn error_shapes() {
        let fake = FakeUpstream::start().await.unwrap();
        let oa = fake.openai_base_url();
        let an = fake.anthropic_base_url();

        let resp = post(
            format!("{oa}/chat/completions"),
            &[("x-fake-status", "429")],
            json!({"model": "m"}),
        )
        .await;
        assert_eq!(resp.status(), 429);
        let v: Value = resp.json().await.unwrap();
        let err = &v["error"];
        assert!(err["message"].is_string());
        assert_eq!(err["type"], "requests");
        assert_eq!(err["code"], "rate_limit_exceeded");
        assert!(err.get("param").is_some_and(Value::is_null));

        let resp = post(
            format!("{oa}/responses"),
            &[("x-fake-status", "500")],
            json!({"model": "m", "stream": true}),
        )
        .await;
        assert_eq!(resp.status(), 500);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["type"], "server_error");

        let resp = post(
            format!("{an}/v1/messages"),
            &[("x-fake-status", "529")],
            json!({"model": "m"}),
        )
        .await;
        assert_eq!(resp.status(), 529);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "overloaded_error");
        assert!(v["error"]["message"].is_string());

        let resp = post(
            format!("{an}/v1/messages"),
            &[("x-fake-status", "429")],
            json!({"model": "m"}),
        )
        .await;
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");

        // Malformed JSON.
        let client = reqwest::Client::new();
        let resp = client
            .post(format!("{oa}/chat/completions"))
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let resp = client
            .post(format!("{an}/v1/messages"))
            .body("[1,")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");

        // Global failure switch.
        fake.set_fail_status(Some(503));
        let resp = post(format!("{oa}/chat/completions"), &[], json!({"model": "m"})).await;
        assert_eq!(resp.status(), 503);
        assert_eq!(
            resp.json::<Value>().await.unwrap()["error"]["type"],
            "server_error"
        );
        let resp = post(format!("{an}/v1/messages"), &[], json!({"model": "m"})).await;
        assert_eq!(resp.status(), 503);
        assert_eq!(
            resp.json::<Value>().await.unwrap()["error"]["type"],
            "api_error"
        );
        assert_eq!(
            reqwest::get(format!("{oa}/models")).await.unwrap().status(),
            503
        );
        fake.set_fail_status(None);
        let resp = post(format!("{oa}/chat/completions"), &[], json!({"model": "m"})).await;
        assert_eq!(resp.status(), 200);

        // Unknown route: 404 in the provider's shape.
        let resp = post(format!("{oa}/nope"), &[], json!({})).await;
        assert_eq!(resp.status(), 404);
        assert_eq!(
            resp.json::<Value>().await.unwrap()["error"]["type"],
            "invalid_request_error"
        );
        let resp = client
            .get(format!("{oa}/chat/completions"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405);
    }

    #[tokio::test]
    async fn requests_are_recorded_with_headers() {
        let fake = FakeUpstream::start().await.unwrap();
        assert_eq!(fake.request_count(), 0);
        let resp = reqwest::Client::new()
            .post(format!("{}/chat/completions?x=1", fake.openai_base_url()))
            .header("Authorization", "Bearer sk-upstream")
            .header("X-Custom", "yes")
            .json(&json!({"model": "gpt-rec", "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        post(
            format!("{}/v1/messages", fake.anthropic_base_url()),
            &[("x-api-key", "sk-ant")],
            json!({"model": "c"}),
        )
        .await;
        post(
            format!("{}/nowhere", fake.anthropic_base_url()),
            &[],
            json!({}),
        )
        .await;

        let reqs = fake.requests();
        assert_eq!(fake.request_count(), 3);
        assert_eq!(reqs.len(), 3);
        let r = &reqs[0];
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v1/chat/completions");
        assert_eq!(r.header("authorization"), Some("Bearer sk-upstream"));
        assert_eq!(r.header("Authorization"), Some("Bearer sk-upstream"));
        assert!(r.headers.iter().any(|(n, v)| n == "x-custom" && v == "yes"));
        assert!(r.headers.iter().all(|(n, _)| *n == n.to_ascii_lowercase()));
        assert_eq!(r.json()["model"], "gpt-rec");
        assert_eq!(reqs[1].path, "/v1/messages");
        assert_eq!(reqs[1].header("x-api-key"), Some("sk-ant"));
        assert_eq!(reqs[2].path, "/nowhere");
        assert_eq!(r.header("missing"), None);

        fake.clear_requests();
        assert_eq!(fake.request_count(), 0);
        assert!(fake.requests().is_empty());
    }

    #[tokio::test]
    async fn slow_stream_is_sent_incrementally() {
        let fake = FakeUpstream::start().await.unwrap();
        for (url, body) in [
            (
                format!("{}/chat/completions", fake.openai_base_url()),
                json!({"model": "m", "stream": true}),
            ),
            (
                format!("{}/v1/messages", fake.anthropic_base_url()),
                json!({"model": "m", "stream": true}),
            ),
        ] {
            let start = Instant::now();
            let resp = post(
                url,
                &[("x-fake-chunk-delay-ms", "300"), ("x-fake-chunks", "3")],
                body,
            )
            .await;
            let mut stream = resp.bytes_stream();
            let mut received = String::new();
            let mut first_delta_at = None;
            while let Some(chunk) = stream.next().await {
                received.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
                if first_delta_at.is_none() && received.contains("Hello") {
                    first_delta_at = Some(start.elapsed());
                }
            }
            let end = start.elapsed();
            let first = first_delta_at.expect("saw the first delta");
            assert!(
                first >= Duration::from_millis(250),
                "first delta at {first:?}"
            );
            assert!(end >= Duration::from_millis(850), "stream ended at {end:?}");
            assert!(
                end - first >= Duration::from_millis(300),
                "first {first:?}, end {end:?}"
            );
        }
    }

    #[tokio::test]
    async fn header_delay_delays_the_head() {
        let fake = FakeUpstream::start().await.unwrap();
        let start = Instant::now();
        let resp = post(
            format!("{}/chat/completions", fake.openai_base_url()),
            &[("x-fake-header-delay-ms", "200")],
            json!({"model": "m"}),
        )
        .await;
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert_eq!(resp.status(), 200);
    }

    #[tokio::test]
    async fn reader_going_away_is_counted_as_cancelled() {
        let fake = FakeUpstream::start().await.unwrap();
        // A stalled stream: one delta, then silence.
        let resp = post(
            format!("{}/v1/messages", fake.anthropic_base_url()),
            &[("x-fake-stall-after", "1"), ("x-fake-chunks", "3")],
            json!({"model": "m", "stream": true}),
        )
        .await;
        let mut stream = resp.bytes_stream();
        let mut received = String::new();
        while !received.contains("content_block_delta") {
            let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .expect("first delta arrives")
                .unwrap()
                .unwrap();
            received.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        // Nothing more comes while stalled.
        let more = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
        assert!(more.is_err(), "stalled stream sent more: {more:?}");
        assert_eq!(fake.cancelled_streams(), 0);
        drop(stream);
        assert!(
            wait_until(|| fake.cancelled_streams() == 1).await,
            "stall cancel not seen"
        );

        // A slow stream whose reader leaves between deltas.
        let resp = post(
            format!("{}/chat/completions", fake.openai_base_url()),
            &[("x-fake-chunk-delay-ms", "100"), ("x-fake-chunks", "50")],
            json!({"model": "m", "stream": true}),
        )
        .await;
        let mut stream = resp.bytes_stream();
        stream.next().await.unwrap().unwrap();
        drop(stream);
        assert!(
            wait_until(|| fake.cancelled_streams() == 2).await,
            "slow cancel not seen"
        );
        assert_eq!(fake.completed_streams(), 0);
    }

    #[tokio::test]
    async fn dropping_the_fake_stops_it() {
        let fake = FakeUpstream::start().await.unwrap();
        let url = format!("{}/chat/completions", fake.openai_base_url());
        let resp = post(
            url.clone(),
            &[("x-fake-stall-after", "0")],
            json!({"model": "m", "stream": true}),
        )
        .await;
        let mut stream = resp.bytes_stream();
        stream.next().await.unwrap().unwrap(); // the role chunk
        drop(fake);
        // The stalled stream ends (with an error) instead of hanging.
        let rest = tokio::time::timeout(Duration::from_secs(5), async {
            let mut failed = false;
            while let Some(chunk) = stream.next().await {
                failed |= chunk.is_err();
            }
            failed
        })
        .await
        .expect("stream ends after drop");
        assert!(rest, "stream ended with an error");
        // And nothing listens any more.
        let err = reqwest::Client::new()
            .post(url)
            .json(&json!({}))
            .send()
            .await;
        assert!(err.is_err());
    }

    #[tokio::test]
    async fn unrecorded_state_keeps_no_requests() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = FakeState::new(false);
        let app = router(state.clone());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let resp = post(
            format!("http://{addr}/v1/chat/completions"),
            &[],
            json!({"model": "m"}),
        )
        .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(state.request_count(), 0);
        server.abort();
    }

    #[tokio::test]
    async fn serve_forever_serves() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let server = tokio::spawn(serve_forever(addr));
        let mut status = None;
        for _ in 0..100 {
            if let Ok(resp) = reqwest::get(format!("http://{addr}/v1/models")).await {
                status = Some(resp.status());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(status, Some(reqwest::StatusCode::OK));
        server.abort();
    }
}
