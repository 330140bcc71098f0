//! Step 2, parse: the request body → [`ProxyRequest`], the fields the gateway reads, typed.
//!
//! Only those fields are read, borrowed from the body as raw JSON and parsed one by one; the
//! rest is checked to be JSON and skipped (the body goes upstream as it came).

use axum::body::{Body, Bytes};
use serde_json::value::RawValue;
use serde_json::Value;

use super::error::{Failure, Protocol, ProxyError};
use super::Endpoint;

/// A request as the gateway sees it.
pub struct ProxyRequest {
    pub endpoint: Endpoint,
    /// The body as the client sent it.
    pub body: Bytes,
    pub model: String,
    pub stream: bool,
    /// The first of `max_tokens`, `max_completion_tokens`, `max_output_tokens` that is an
    /// integer (for the admission estimate).
    pub max_output_tokens: Option<i64>,
    /// The client set `stream_options.include_usage: true`; read only for the streams that
    /// report usage only when asked (chat and completions), false otherwise.
    pub client_asked_usage: bool,
}

/// The request fields the gateway reads (borrowed, unparsed until needed).
#[derive(serde::Deserialize)]
struct RequestHead<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    stream: Option<&'a RawValue>,
    #[serde(borrow)]
    stream_options: Option<&'a RawValue>,
    #[serde(borrow)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    max_completion_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    max_output_tokens: Option<&'a RawValue>,
}

/// Read the body (up to `limit` bytes: 413 beyond) and its fields.
pub async fn parse(
    endpoint: Endpoint,
    body: Body,
    limit: usize,
) -> Result<ProxyRequest, ProxyError> {
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ProxyError::new(endpoint.protocol(), Failure::TooLarge(limit)))?;
    read(endpoint, bytes)
}

fn invalid(protocol: Protocol, m: impl Into<String>) -> ProxyError {
    ProxyError::new(protocol, Failure::InvalidRequest(m.into()))
}

/// The fields of a whole body.
pub fn read(endpoint: Endpoint, bytes: Bytes) -> Result<ProxyRequest, ProxyError> {
    let protocol = endpoint.protocol();
    // The skipped fields go upstream as they came, so the whole body is checked to be UTF-8
    // (serde_json checks only what it reads), first: then it is parsed as a str, which spares
    // serde_json a UTF-8 check of every string it reads (~1,000 instructions a request).
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        invalid(
            protocol,
            format!(
                "the request body is not valid UTF-8 (at byte {})",
                e.valid_up_to()
            ),
        )
    })?;
    let head: RequestHead = serde_json::from_str(text).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => invalid(protocol, "the request body must be a JSON object"),
            _ => invalid(protocol, format!("the request body is not valid JSON: {e}")),
        }
    })?;
    if too_deep(&bytes) {
        return Err(invalid(
            protocol,
            format!("the request body nests JSON deeper than {MAX_DEPTH} levels"),
        ));
    }
    let model = match head.model.map(|r| serde_json::from_str::<String>(r.get())) {
        Some(Ok(m)) if !m.is_empty() => m,
        Some(_) => return Err(invalid(protocol, "`model` must be a non-empty string")),
        None => return Err(invalid(protocol, "`model` is required")),
    };
    let stream = match head
        .stream
        .map(|r| serde_json::from_str::<Option<bool>>(r.get()))
    {
        None => false,
        Some(Ok(b)) => b.unwrap_or(false),
        Some(Err(_)) => return Err(invalid(protocol, "`stream` must be true or false")),
    };
    let max_output_tokens = [
        head.max_tokens,
        head.max_completion_tokens,
        head.max_output_tokens,
    ]
    .into_iter()
    .find_map(|r| r.and_then(|r| serde_json::from_str::<i64>(r.get()).ok()));
    let client_asked_usage =
        stream && endpoint.usage_on_request() && asks_for_usage(head.stream_options);
    Ok(ProxyRequest {
        endpoint,
        body: bytes,
        model,
        stream,
        max_output_tokens,
        client_asked_usage,
    })
}

/// The deepest JSON nesting accepted (serde_json's own limit where it parses).
const MAX_DEPTH: usize = 128;

/// The body (valid JSON) nests deeper than [`MAX_DEPTH`]. Only a body with more openings than
/// that can, so most bodies stop at the first cheap count.
fn too_deep(bytes: &[u8]) -> bool {
    if memchr::memchr2_iter(b'{', b'[', bytes)
        .take(MAX_DEPTH + 1)
        .count()
        <= MAX_DEPTH
    {
        return false;
    }
    let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// `stream_options` is an object with `include_usage: true`.
fn asks_for_usage(stream_options: Option<&RawValue>) -> bool {
    stream_options
        .and_then(|r| serde_json::from_str::<Value>(r.get()).ok())
        .and_then(|o| o.get("include_usage").and_then(Value::as_bool))
        == Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<ProxyRequest, ProxyError> {
        read(
            Endpoint::ChatCompletions,
            Bytes::copy_from_slice(body.as_bytes()),
        )
    }

    fn rejected(body: &str) -> String {
        match chat(body) {
            Err(e) => e.message(),
            Ok(_) => panic!("accepted: {body}"),
        }
    }

    #[test]
    fn reads_the_fields_the_gateway_needs() {
        let r = chat(r#"{"model":"m","stream":true,"max_tokens":"x","max_completion_tokens":9,"stream_options":{"include_usage":true}}"#).unwrap();
        assert_eq!(r.model, "m");
        assert!(r.stream);
        assert_eq!(r.max_output_tokens, Some(9), "the first that is an integer");
        assert!(r.client_asked_usage);
        let r = chat(r#"{"model":"m","stream":null}"#).unwrap();
        assert!(!r.stream);
        assert_eq!(r.max_output_tokens, None);
        // Asking for usage counts only on the streams that need it.
        let r = chat(r#"{"model":"m","stream_options":{"include_usage":true}}"#).unwrap();
        assert!(!r.client_asked_usage);
        let r = read(
            Endpoint::Responses,
            Bytes::from_static(
                br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
            ),
        )
        .unwrap();
        assert!(!r.client_asked_usage);
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        assert_eq!(rejected("[1]"), "the request body must be a JSON object");
        assert!(rejected("{").starts_with("the request body is not valid JSON: "));
        assert_eq!(rejected("{}"), "`model` is required");
        assert_eq!(
            rejected(r#"{"model":""}"#),
            "`model` must be a non-empty string"
        );
        assert_eq!(
            rejected(r#"{"model":3}"#),
            "`model` must be a non-empty string"
        );
        assert_eq!(
            rejected(r#"{"model":"m","stream":"yes"}"#),
            "`stream` must be true or false"
        );
    }

    #[test]
    fn rejects_invalid_utf8_and_deep_nesting_even_in_fields_it_skips() {
        let with_byte = |prefix: &[u8]| {
            let mut b = prefix.to_vec();
            b.push(0xff);
            b.extend_from_slice(br#""}"#);
            read(Endpoint::ChatCompletions, Bytes::from(b))
                .err()
                .map(|e| e.message())
        };
        assert_eq!(
            with_byte(br#"{"model":"m","messages":"a"#).as_deref(),
            Some("the request body is not valid UTF-8 (at byte 26)")
        );
        // In a field it reads, too: the whole body is checked before it is parsed.
        assert_eq!(
            with_byte(br#"{"model":"m"#).as_deref(),
            Some("the request body is not valid UTF-8 (at byte 11)")
        );
        // `n` arrays in the object: n + 1 levels.
        let deep = |n: usize| format!(r#"{{"model":"m","x":{}{}}}"#, "[".repeat(n), "]".repeat(n));
        assert!(chat(&deep(127)).is_ok(), "128 levels are fine");
        for n in [128, 200, 100_000] {
            assert_eq!(
                rejected(&deep(n)),
                "the request body nests JSON deeper than 128 levels"
            );
        }
        // Brackets inside strings are not nesting.
        let in_string = format!(r#"{{"model":"m","x":"\"{}"}}"#, "[".repeat(500));
        assert!(chat(&in_string).is_ok());
        assert!(!too_deep(format!("[{}]", "{}".repeat(1000)).as_bytes()));
    }
}
