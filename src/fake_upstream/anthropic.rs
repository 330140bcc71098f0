//! Anthropic endpoints: messages and count_tokens.

use std::sync::Arc;

use axum::{extract::State, response::Response};
use serde_json::{json, Value};

use super::behaviours::{prelude, word, Knobs, Proto};
use super::intake::Incoming;
use super::reply::{model_of, ok_json, wants_stream};
use super::sse::{named_event, sse_response, StreamPlan};
use super::FakeState;

pub(super) fn anthropic_usage(k: &Knobs, output_tokens: u64) -> Value {
    if let Some(u) = &k.usage {
        return u.clone();
    }
    json!({
        "input_tokens": k.prompt,
        "cache_creation_input_tokens": k.cache_write,
        "cache_read_input_tokens": k.cached,
        "output_tokens": output_tokens
    })
}

pub(super) async fn messages(State(st): State<Arc<FakeState>>, inc: Incoming) -> Response {
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

pub(super) async fn count_tokens(State(st): State<Arc<FakeState>>, inc: Incoming) -> Response {
    let proto = Proto::Anthropic;
    let (k, _body) = match prelude(&st, &inc, proto, true).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    ok_json(proto, &st.new_id(), &json!({"input_tokens": k.prompt}))
}
