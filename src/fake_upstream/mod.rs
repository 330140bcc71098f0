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
//! | `x-fake-usage` | none | a JSON object reported verbatim as every usage object (Anthropic: in `message_start` and `message_delta`) |
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
    net::SocketAddr,
    sync::{
        atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::State,
    http::StatusCode,
    response::Response,
    routing::{get, post},
    serve::ListenerExt,
    Router,
};
use serde_json::Value;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

mod anthropic;
mod behaviours;
mod intake;
mod openai;
mod reply;
mod responses;
mod sse;
#[cfg(test)]
mod tests;

use anthropic::{count_tokens, messages};
use behaviours::{prelude, valid_status, Proto};
use intake::Incoming;
use openai::{chat_completions, completions, embeddings, models};
use reply::error_response;
use responses::responses;

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
    /// The query string without the `?`, as received; None when there was none.
    pub query: Option<String>,
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

/// Unknown paths and methods: the provider's 404/405 error body.
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
