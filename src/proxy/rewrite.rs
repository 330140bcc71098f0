//! Step 5, rewrite: what goes upstream (the body once, the URL and headers per account) and
//! the headers that come back to the client. Pure functions.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue};
use serde_json::Value;

use super::client::{HeaderLines, HOP_BY_HOP};
use super::error::Protocol;
use super::parse::ProxyRequest;
use super::Endpoint;
use crate::domain::Provider;

/// The body for upstream.
pub struct UpstreamBody {
    pub body: Bytes,
    /// The gateway asked upstream for the stream's usage on the client's behalf: the tap
    /// removes it from what the client sees.
    pub strip_usage: bool,
}

/// OpenAI streams always ask upstream for usage (`stream_options.include_usage`); whether the
/// client did is remembered. Every other body goes as it came.
pub fn body(req: &ProxyRequest) -> UpstreamBody {
    if req.stream && req.endpoint.usage_on_request() && !req.client_asked_usage {
        UpstreamBody {
            body: with_include_usage(&req.body),
            strip_usage: true,
        }
    } else {
        UpstreamBody {
            body: req.body.clone(),
            strip_usage: false,
        }
    }
}

/// The body with `stream_options.include_usage: true` (a `stream_options` that is not an
/// object is replaced).
fn with_include_usage(body: &[u8]) -> Bytes {
    let mut json: Value = serde_json::from_slice(body).unwrap_or_default();
    if let Some(obj) = json.as_object_mut() {
        let so = obj
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(so) = so.as_object_mut() {
            so.insert("include_usage".into(), Value::Bool(true));
        } else {
            *so = serde_json::json!({"include_usage": true});
        }
    }
    Bytes::from(serde_json::to_vec(&json).unwrap_or_default())
}

/// The upstream URL, following each provider SDK's base_url convention: openai base URLs
/// include `/v1`, anthropic ones do not. The client's query string (without the `?`), if
/// any, is passed on unchanged (SPEC §11.4).
pub fn upstream_url(endpoint: Endpoint, base_url: &str, query: Option<&str>) -> String {
    let base = base_url.trim_end_matches('/');
    let path = match endpoint.protocol() {
        Protocol::OpenAi => &endpoint.path()[3..],
        Protocol::Anthropic => endpoint.path(),
    };
    match query {
        Some(q) => format!("{base}{path}?{q}"),
        None => format!("{base}{path}"),
    }
}

/// Headers sent upstream to an account of `provider` with credential `secret`: the client's,
/// minus its credentials, hop-by-hop headers and those the HTTP client sets itself;
/// `accept-encoding` is dropped so usage can be read. Written as the request's header lines.
pub fn upstream_headers(client: &HeaderMap, provider: Provider, secret: &str) -> HeaderLines {
    let mut h = HeaderLines::with_capacity(160 + client.len() * 48);
    let conn_listed: Vec<String> = client
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for (name, value) in client {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n)
            || conn_listed.iter().any(|c| c == n)
            || matches!(
                n,
                "host"
                    | "authorization"
                    | "x-api-key"
                    | "content-length"
                    | "content-type"
                    | "accept-encoding"
                    | "cookie"
            )
        {
            continue;
        }
        h.push(name, value);
    }
    // A secret that is no valid header value goes without (upstream then refuses the call).
    match provider {
        Provider::Anthropic => h.push_str("x-api-key", "", secret),
        Provider::OpenAi => h.push_str("authorization", "Bearer ", secret),
    };
    if provider == Provider::Anthropic && !client.contains_key("anthropic-version") {
        h.push_str("anthropic-version", "", "2023-06-01");
    }
    h.push_str("content-type", "", "application/json");
    h
}

/// Response headers for the client: upstream's (the HTTP client has left out the framing and
/// hop-by-hop ones) and the request's id.
pub fn client_headers(mut h: HeaderMap, request_id: &str) -> HeaderMap {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-tollgate-request-id", v);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::parse;
    use axum::http::HeaderName;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// The header lines' names, sorted.
    fn names(h: &HeaderLines) -> Vec<&str> {
        let mut n: Vec<&str> = h.iter().map(|(name, _)| name).collect();
        n.sort_unstable();
        n
    }

    /// The values of `name`, in order.
    fn values<'a>(h: &'a HeaderLines, name: &str) -> Vec<&'a str> {
        h.iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .collect()
    }

    #[test]
    fn upstream_headers_drop_credentials_and_hop_by_hop_and_set_the_accounts_auth() {
        let client = headers(&[
            ("authorization", "Bearer tg-client"),
            ("x-api-key", "tg-client"),
            ("cookie", "s=1"),
            ("host", "gateway"),
            ("content-length", "10"),
            ("accept-encoding", "gzip"),
            ("connection", "keep-alive, X-Drop-Me"),
            ("x-drop-me", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic x"),
            ("upgrade", "h2c"),
            ("content-type", "text/plain"),
            ("x-custom", "a"),
            ("x-custom", "b"),
        ]);
        let h = upstream_headers(&client, Provider::OpenAi, "sk-up");
        assert_eq!(
            names(&h),
            ["authorization", "content-type", "x-custom", "x-custom"]
        );
        assert_eq!(values(&h, "authorization"), ["Bearer sk-up"]);
        assert_eq!(values(&h, "content-type"), ["application/json"]);
        assert_eq!(
            values(&h, "x-custom"),
            ["a", "b"],
            "repeated headers kept in order"
        );

        let h = upstream_headers(&client, Provider::Anthropic, "sk-ant");
        assert_eq!(
            names(&h),
            [
                "anthropic-version",
                "content-type",
                "x-api-key",
                "x-custom",
                "x-custom"
            ]
        );
        assert_eq!(values(&h, "x-api-key"), ["sk-ant"]);
        assert_eq!(
            values(&h, "anthropic-version"),
            ["2023-06-01"],
            "the default version"
        );
        // The client's own version and betas pass.
        let client = headers(&[
            ("anthropic-version", "2024-01-01"),
            ("anthropic-beta", "b1"),
        ]);
        let h = upstream_headers(&client, Provider::Anthropic, "sk-ant");
        assert_eq!(values(&h, "anthropic-version"), ["2024-01-01"]);
        assert_eq!(values(&h, "anthropic-beta"), ["b1"]);
        assert!(values(&h, "authorization").is_empty());
    }

    #[test]
    fn a_secret_that_is_no_header_value_is_not_sent() {
        for secret in ["sk-a\r\nx-injected: 1", "sk-\u{e9}", "sk-\u{7f}"] {
            let h = upstream_headers(&HeaderMap::new(), Provider::OpenAi, secret);
            assert_eq!(names(&h), ["content-type"], "{secret:?}");
        }
    }

    #[test]
    fn client_headers_name_the_request() {
        let up = headers(&[
            ("content-type", "text/event-stream"),
            ("x-request-id", "up-1"),
        ]);
        let h = client_headers(up, "tg-1");
        assert_eq!(h["x-tollgate-request-id"], "tg-1");
        assert_eq!(h["x-request-id"], "up-1");
        assert_eq!(h["content-type"], "text/event-stream");
    }

    #[test]
    fn upstream_url_per_provider_with_or_without_trailing_slash() {
        for base in ["https://api.openai.com/v1", "https://api.openai.com/v1/"] {
            assert_eq!(
                upstream_url(Endpoint::ChatCompletions, base, None),
                "https://api.openai.com/v1/chat/completions"
            );
            assert_eq!(
                upstream_url(Endpoint::Responses, base, None),
                "https://api.openai.com/v1/responses"
            );
        }
        for base in ["https://api.anthropic.com", "https://api.anthropic.com//"] {
            assert_eq!(
                upstream_url(Endpoint::Messages, base, None),
                "https://api.anthropic.com/v1/messages"
            );
            assert_eq!(
                upstream_url(Endpoint::CountTokens, base, None),
                "https://api.anthropic.com/v1/messages/count_tokens"
            );
        }
    }

    #[test]
    fn upstream_url_passes_the_query_on_unchanged() {
        let q = Some("api-version=2024-06-01&x=a%20b");
        assert_eq!(
            upstream_url(Endpoint::ChatCompletions, "https://h/v1/", q),
            "https://h/v1/chat/completions?api-version=2024-06-01&x=a%20b"
        );
        assert_eq!(
            upstream_url(Endpoint::Messages, "https://h", Some("beta=true")),
            "https://h/v1/messages?beta=true"
        );
        // An empty query (`...?`) stays as the client sent it.
        assert_eq!(
            upstream_url(Endpoint::Messages, "https://h", Some("")),
            "https://h/v1/messages?"
        );
    }

    fn rewritten(endpoint: Endpoint, sent: Value) -> (Value, bool) {
        let req = parse::read(endpoint, Bytes::from(sent.to_string())).unwrap();
        let up = body(&req);
        (serde_json::from_slice(&up.body).unwrap(), up.strip_usage)
    }

    #[test]
    fn include_usage_is_asked_for_on_openai_streams() {
        let chat = |extra: Value| {
            let mut b = serde_json::json!({"model": "m", "stream": true});
            if let (Some(b), Some(e)) = (b.as_object_mut(), extra.as_object()) {
                b.extend(e.clone());
            }
            b
        };
        // Absent: added, and hidden from the client.
        let (b, strip) = rewritten(Endpoint::ChatCompletions, chat(serde_json::json!({})));
        assert_eq!(
            b["stream_options"],
            serde_json::json!({"include_usage": true})
        );
        assert!(strip);
        // False: set to true, other options kept, hidden.
        let (b, strip) = rewritten(
            Endpoint::Completions,
            chat(serde_json::json!({"stream_options": {"include_usage": false, "x": 1}})),
        );
        assert_eq!(
            b["stream_options"],
            serde_json::json!({"include_usage": true, "x": 1})
        );
        assert!(strip);
        // Not an object: replaced.
        let (b, strip) = rewritten(
            Endpoint::ChatCompletions,
            chat(serde_json::json!({"stream_options": "yes"})),
        );
        assert_eq!(
            b["stream_options"],
            serde_json::json!({"include_usage": true})
        );
        assert!(strip);
        // True: the body goes as it came, and the client sees the usage.
        let sent = chat(serde_json::json!({"stream_options": {"include_usage": true}}));
        let req = parse::read(Endpoint::ChatCompletions, Bytes::from(sent.to_string())).unwrap();
        let up = body(&req);
        assert_eq!(up.body, req.body);
        assert!(!up.strip_usage);
        // Not a stream, or not an endpoint that needs asking: unchanged.
        for (e, b) in [
            (Endpoint::ChatCompletions, serde_json::json!({"model": "m"})),
            (Endpoint::Responses, chat(serde_json::json!({}))),
            (Endpoint::Messages, chat(serde_json::json!({}))),
        ] {
            let req = parse::read(e, Bytes::from(b.to_string())).unwrap();
            let up = body(&req);
            assert_eq!(up.body, req.body, "{e:?}");
            assert!(!up.strip_usage, "{e:?}");
        }
    }
}
