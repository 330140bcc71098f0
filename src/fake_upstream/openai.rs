//! OpenAI endpoints: chat completions, legacy completions, embeddings, models.

use base64::prelude::{Engine as _, BASE64_STANDARD};
use std::sync::Arc;

use axum::{extract::State, response::Response};
use bytes::Bytes;
use serde_json::{json, Value};

use super::behaviours::{prelude, word, Knobs, Proto};
use super::intake::Incoming;
use super::reply::{model_of, ok_json, unix_now, wants_stream, wants_usage_chunk};
use super::sse::{data_event, sse_response, StreamPlan};
use super::{FakeState, EMBEDDING};

pub(super) fn chat_usage(k: &Knobs) -> Value {
    if let Some(u) = &k.usage {
        return u.clone();
    }
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

pub(super) async fn chat_completions(State(st): State<Arc<FakeState>>, inc: Incoming) -> Response {
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

pub(super) async fn completions(State(st): State<Arc<FakeState>>, inc: Incoming) -> Response {
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
    let usage = k.usage.clone().unwrap_or_else(|| {
        json!({
            "prompt_tokens": p,
            "completion_tokens": k.completion,
            "total_tokens": p + k.completion
        })
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

pub(super) async fn embeddings(State(st): State<Arc<FakeState>>, inc: Incoming) -> Response {
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
        json!(BASE64_STANDARD.encode(&raw))
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

pub(super) async fn models(State(st): State<Arc<FakeState>>, inc: Incoming) -> Response {
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
