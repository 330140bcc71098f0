//! The `x-fake-*` headers: what each request asks of the fake, and the delays and forced
//! statuses they cause.

use std::time::Duration;

use axum::{
    http::{HeaderMap, StatusCode},
    response::Response,
};
use serde_json::Value;
use tokio::sync::watch;

use super::intake::Incoming;
use super::reply::{aborted_response, error_response};
use super::{FakeState, WORDS};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Proto {
    OpenAi,
    Anthropic,
}

impl Proto {
    pub(super) fn for_request(path: &str, headers: &HeaderMap) -> Proto {
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

    pub(super) fn request_id_header(self) -> &'static str {
        match self {
            Proto::OpenAi => "x-request-id",
            Proto::Anthropic => "request-id",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Terminal {
    Completed,
    Incomplete,
    Failed,
}

/// The per-request knobs read from the `x-fake-*` headers.
#[derive(Clone, Debug)]
pub(super) struct Knobs {
    pub(super) prompt: u64,
    pub(super) completion: u64,
    pub(super) cached: u64,
    pub(super) cache_write: u64,
    pub(super) chunks: usize,
    pub(super) chunk_delay: Duration,
    pub(super) header_delay: Duration,
    pub(super) stall_after: Option<usize>,
    pub(super) status: Option<StatusCode>,
    pub(super) terminal: Terminal,
    pub(super) no_usage: bool,
    /// `x-fake-usage`: reported as the usage object verbatim (a hostile upstream).
    pub(super) usage: Option<Value>,
}

impl Knobs {
    pub(super) fn from_headers(h: &HeaderMap) -> Knobs {
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
            usage: h
                .get("x-fake-usage")
                .and_then(|v| serde_json::from_slice(v.as_bytes()).ok()),
        }
    }

    /// OpenAI's input count: cached tokens are part of it.
    pub(super) fn openai_input(&self) -> u64 {
        self.prompt + self.cached
    }

    pub(super) fn text(&self) -> String {
        (0..self.chunks).map(word).collect()
    }
}

pub(super) fn valid_status(code: u16) -> Option<StatusCode> {
    if (200..=599).contains(&code) {
        StatusCode::from_u16(code).ok()
    } else {
        None
    }
}

pub(super) fn word(i: usize) -> &'static str {
    WORDS[i % WORDS.len()]
}

/// What every handler does first: the head delay, forced failures and (if
/// `parse` is set) the JSON body, which must be an object.
pub(super) async fn prelude(
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
pub(super) async fn pause(shutdown: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if d.is_zero() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.wait_for(|down| *down) => false,
    }
}
