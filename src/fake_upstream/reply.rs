//! Building responses: JSON bodies, the provider error shapes, request ids.

use std::{
    io,
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    body::Body,
    http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::Response,
};
use bytes::Bytes;
use futures_util::stream::{self};
use serde_json::{json, Value};

use super::behaviours::Proto;

pub(super) fn error_response(
    proto: Proto,
    status: StatusCode,
    message: &str,
    req_id: &str,
) -> Response {
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

pub(super) fn json_response(
    proto: Proto,
    status: StatusCode,
    req_id: &str,
    body: &Value,
) -> Response {
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

pub(super) fn insert_request_id(h: &mut HeaderMap, proto: Proto, req_id: &str) {
    if req_id.is_empty() {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(&format!("req_{req_id}")) {
        h.insert(HeaderName::from_static(proto.request_id_header()), v);
    }
}

/// A response whose body fails at once, so the connection is aborted (used
/// when the fake shuts down while delaying a head).
pub(super) fn aborted_response() -> Response {
    let body = Body::from_stream(stream::once(async {
        Err::<Bytes, _>(io::Error::other("fake upstream shut down"))
    }));
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    resp
}

pub(super) fn ok_json(proto: Proto, req_id: &str, body: &Value) -> Response {
    json_response(proto, StatusCode::OK, req_id, body)
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) fn model_of(body: &Value) -> String {
    body.get("model")
        .and_then(Value::as_str)
        .unwrap_or("fake-model")
        .to_owned()
}

pub(super) fn wants_stream(body: &Value) -> bool {
    body.get("stream").and_then(Value::as_bool).unwrap_or(false)
}

pub(super) fn wants_usage_chunk(body: &Value) -> bool {
    body.pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}
