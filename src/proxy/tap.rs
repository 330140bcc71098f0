//! Usage taps: read what upstream reports as usage, from a whole JSON body or from an SSE
//! stream as it passes, and turn it into the four disjoint token classes.
//!
//! OpenAI chat/completions/embeddings: `prompt_tokens` include `prompt_tokens_details.cached_tokens`.
//! OpenAI Responses: `input_tokens` include `input_tokens_details.cached_tokens`; usage arrives in
//! the terminal event (`response.completed`, `.incomplete` or `.failed`).
//! Anthropic: `input_tokens`, `cache_read_input_tokens`, `cache_creation_input_tokens` and
//! `output_tokens` are separate buckets; in a stream `message_start` and `message_delta` carry
//! cumulative values, so the latest value seen of each field is the total.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

use super::Endpoint;
use crate::billing::cost::Tokens;

/// Anthropic's usage fields, latest value of each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct AnthropicUsage {
    input: Option<i64>,
    output: Option<i64>,
    cache_read: Option<i64>,
    cache_write: Option<i64>,
}

impl AnthropicUsage {
    fn merge(&mut self, u: &Value) {
        let f = |k: &str| u.get(k).and_then(Value::as_i64);
        if let Some(v) = f("input_tokens") {
            self.input = Some(v);
        }
        if let Some(v) = f("output_tokens") {
            self.output = Some(v);
        }
        if let Some(v) = f("cache_read_input_tokens") {
            self.cache_read = Some(v);
        }
        if let Some(v) = f("cache_creation_input_tokens") {
            self.cache_write = Some(v);
        }
    }
    fn tokens(&self) -> Tokens {
        Tokens {
            input: self.input.unwrap_or(0),
            output: self.output.unwrap_or(0),
            cache_read: self.cache_read.unwrap_or(0),
            cache_write: self.cache_write.unwrap_or(0),
        }
    }
}

fn i(v: &Value, path: &[&str]) -> i64 {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(n) => cur = n,
            None => return 0,
        }
    }
    cur.as_i64().unwrap_or(0)
}

/// OpenAI chat/completions/embeddings `usage` → disjoint classes.
fn openai_usage(u: &Value) -> Tokens {
    let prompt = i(u, &["prompt_tokens"]);
    let cached = i(u, &["prompt_tokens_details", "cached_tokens"]).min(prompt);
    Tokens {
        input: prompt - cached,
        output: i(u, &["completion_tokens"]),
        cache_read: cached,
        cache_write: 0,
    }
}

/// OpenAI Responses `usage` → disjoint classes.
fn responses_usage(u: &Value) -> Tokens {
    let input = i(u, &["input_tokens"]);
    let cached = i(u, &["input_tokens_details", "cached_tokens"]).min(input);
    Tokens {
        input: input - cached,
        output: i(u, &["output_tokens"]),
        cache_read: cached,
        cache_write: 0,
    }
}

/// Usage of a whole (non-streaming) JSON response; None when it reports none.
pub fn usage_from_body(endpoint: Endpoint, body: &[u8]) -> Option<Tokens> {
    // Only `usage` is built; everything else in the body is skipped without allocating.
    #[derive(serde::Deserialize)]
    struct WithUsage {
        usage: Option<Value>,
    }
    let v: WithUsage = serde_json::from_slice(body).ok()?;
    let u = v.usage.as_ref().filter(|u| u.is_object())?;
    Some(match endpoint {
        Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings => openai_usage(u),
        Endpoint::Responses => responses_usage(u),
        Endpoint::Messages | Endpoint::CountTokens => {
            let mut a = AnthropicUsage::default();
            a.merge(u);
            a.tokens()
        }
    })
}

/// Reads usage from an SSE stream as it passes, event by event. Complete events are forwarded
/// as soon as they are whole (several at once when they arrive together, in one write); a
/// partial event waits for the rest of its bytes.
pub struct SseTap {
    endpoint: Endpoint,
    /// Remove the usage the gateway asked for on the client's behalf (OpenAI streams where the
    /// client did not set `stream_options.include_usage`).
    strip_usage: bool,
    buf: BytesMut,
    openai: Option<Tokens>,
    anthropic: AnthropicUsage,
    anthropic_seen: bool,
    /// Upstream sent its terminal event (`[DONE]`, a terminal Responses event, `message_stop`).
    pub finished: bool,
    /// Events forwarded to the client.
    pub events: u64,
    /// Bytes of `data:` payload forwarded, for estimates when no usage arrives.
    pub data_bytes: usize,
}

impl SseTap {
    pub fn new(endpoint: Endpoint, strip_usage: bool) -> Self {
        SseTap {
            endpoint,
            strip_usage,
            buf: BytesMut::new(),
            openai: None,
            anthropic: AnthropicUsage::default(),
            anthropic_seen: false,
            finished: false,
            events: 0,
            data_bytes: 0,
        }
    }

    /// Usage reported so far, if any.
    pub fn usage(&self) -> Option<Tokens> {
        match self.endpoint {
            Endpoint::Messages | Endpoint::CountTokens => {
                self.anthropic_seen.then(|| self.anthropic.tokens())
            }
            _ => self.openai,
        }
    }

    /// Feed upstream bytes; returns the bytes to forward now (possibly empty).
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        self.buf.extend_from_slice(chunk);
        let mut out = BytesMut::new();
        while let Some(end) = event_end(&self.buf) {
            let event = self.buf.split_to(end);
            self.on_event(&event, &mut out);
        }
        out.freeze()
    }

    /// The stream ended: whatever is left (an unterminated last event) goes out as is.
    pub fn finish(&mut self) -> Bytes {
        let rest = self.buf.split();
        if !rest.is_empty() {
            let mut out = BytesMut::new();
            self.on_event(&rest, &mut out);
            return out.freeze();
        }
        Bytes::new()
    }

    fn on_event(&mut self, event: &[u8], out: &mut BytesMut) {
        let data = event_data(event);
        self.data_bytes += data.len();
        let mut forward = true;
        match self.endpoint {
            Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings => {
                if data == b"[DONE]" {
                    self.finished = true;
                } else if contains(&data, b"\"usage\"") {
                    if let Ok(v) = serde_json::from_slice::<Value>(&data) {
                        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                            self.openai = Some(openai_usage(u));
                            let no_choices = v
                                .get("choices")
                                .and_then(Value::as_array)
                                .is_some_and(|c| c.is_empty());
                            if self.strip_usage && no_choices {
                                forward = false;
                            }
                        }
                    }
                }
                if forward && self.strip_usage && contains(event, b"\"usage\":null") {
                    out.extend_from_slice(&strip_null_usage(event));
                    self.events += 1;
                    return;
                }
            }
            Endpoint::Responses => {
                if contains(&data, b"\"response.completed\"")
                    || contains(&data, b"\"response.incomplete\"")
                    || contains(&data, b"\"response.failed\"")
                {
                    if let Ok(v) = serde_json::from_slice::<Value>(&data) {
                        if let Some(u) = v.pointer("/response/usage").filter(|u| u.is_object()) {
                            self.openai = Some(responses_usage(u));
                        }
                    }
                    self.finished = true;
                }
            }
            Endpoint::Messages | Endpoint::CountTokens => {
                if contains(&data, b"\"message_start\"") || contains(&data, b"\"message_delta\"") {
                    if let Ok(v) = serde_json::from_slice::<Value>(&data) {
                        let u = v.pointer("/message/usage").or_else(|| v.get("usage"));
                        if let Some(u) = u.filter(|u| u.is_object()) {
                            self.anthropic.merge(u);
                            self.anthropic_seen = true;
                        }
                    }
                } else if contains(&data, b"\"message_stop\"") {
                    self.finished = true;
                }
            }
        }
        if forward {
            out.extend_from_slice(event);
            self.events += 1;
        }
    }
}

/// End (exclusive) of the first complete event in `buf`: after a blank line.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' {
            if buf[i + 1] == b'\n' {
                return Some(i + 2);
            }
            if buf[i + 1] == b'\r' && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// The `data:` payload of one event (multi-line data joined by `\n`).
fn event_data(event: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            if !out.is_empty() {
                out.push(b'\n');
            }
            out.extend_from_slice(rest.strip_prefix(b" ").unwrap_or(rest));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Remove the `"usage":null` member OpenAI adds to every chunk once usage is requested.
fn strip_null_usage(event: &[u8]) -> Vec<u8> {
    let s = String::from_utf8_lossy(event);
    s.replace(",\"usage\":null", "")
        .replace("\"usage\":null,", "")
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_cached_tokens_are_split_out() {
        let body = br#"{"usage":{"prompt_tokens":100,"completion_tokens":7,"prompt_tokens_details":{"cached_tokens":40}}}"#;
        assert_eq!(
            usage_from_body(Endpoint::ChatCompletions, body),
            Some(Tokens {
                input: 60,
                output: 7,
                cache_read: 40,
                cache_write: 0
            })
        );
        let body = br#"{"usage":{"input_tokens":30,"input_tokens_details":{"cached_tokens":10},"output_tokens":5}}"#;
        assert_eq!(
            usage_from_body(Endpoint::Responses, body),
            Some(Tokens {
                input: 20,
                output: 5,
                cache_read: 10,
                cache_write: 0
            })
        );
        assert_eq!(usage_from_body(Endpoint::ChatCompletions, b"{}"), None);
    }

    #[test]
    fn anthropic_stream_takes_latest_values_not_sums() {
        let mut t = SseTap::new(Endpoint::Messages, false);
        let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":12,\"cache_read_input_tokens\":100,\"cache_creation_input_tokens\":50,\"output_tokens\":1}}}\n\n\
            event: content_block_delta\ndata: {\"type\":\"content_block_delta\"}\n\n\
            event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":12,\"cache_read_input_tokens\":100,\"cache_creation_input_tokens\":50,\"output_tokens\":8}}\n\n\
            event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        // Feed it in awkward pieces.
        let mut out = Vec::new();
        for piece in stream.as_bytes().chunks(7) {
            out.extend_from_slice(&t.push(piece));
        }
        out.extend_from_slice(&t.finish());
        assert_eq!(out, stream.as_bytes());
        assert!(t.finished);
        assert_eq!(
            t.usage(),
            Some(Tokens {
                input: 12,
                output: 8,
                cache_read: 100,
                cache_write: 50
            })
        );
    }

    #[test]
    fn openai_usage_chunk_is_removed_when_client_did_not_ask() {
        let upstream = "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
            data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3}}\n\n\
            data: [DONE]\n\n";
        let mut t = SseTap::new(Endpoint::ChatCompletions, true);
        let out = t.push(upstream.as_bytes());
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n"
        );
        assert_eq!(
            t.usage(),
            Some(Tokens {
                input: 9,
                output: 3,
                cache_read: 0,
                cache_write: 0
            })
        );
        assert!(t.finished);
        // When the client asked, everything passes unchanged.
        let mut t = SseTap::new(Endpoint::ChatCompletions, false);
        assert_eq!(&t.push(upstream.as_bytes())[..], upstream.as_bytes());
    }

    #[test]
    fn crlf_events_are_split() {
        let mut t = SseTap::new(Endpoint::Responses, false);
        let s = "event: response.completed\r\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":4,\"output_tokens\":2}}}\r\n\r\n";
        assert_eq!(&t.push(s.as_bytes())[..], s.as_bytes());
        assert_eq!(
            t.usage(),
            Some(Tokens {
                input: 4,
                output: 2,
                cache_read: 0,
                cache_write: 0
            })
        );
    }
}
