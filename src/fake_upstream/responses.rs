//! OpenAI's Responses API: `/v1/responses`, plain and streamed, with its terminal variants.

use std::sync::Arc;

use axum::{extract::State, response::Response};
use serde_json::{json, Value};

use super::behaviours::{prelude, word, Knobs, Proto, Terminal};
use super::intake::Incoming;
use super::reply::{model_of, ok_json, unix_now, wants_stream};
use super::sse::{named_event, sse_response, StreamPlan};
use super::FakeState;

pub(super) fn responses_usage(k: &Knobs) -> Value {
    if let Some(u) = &k.usage {
        return u.clone();
    }
    let p = k.openai_input();
    json!({
        "input_tokens": p,
        "input_tokens_details": {"cached_tokens": k.cached},
        "output_tokens": k.completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": p + k.completion
    })
}

pub(super) fn output_message(item_id: &str, status: &str, text: &str) -> Value {
    json!({
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]
    })
}

/// A Response object in state `status` (`in_progress` while streaming).
pub(super) fn response_object(
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

pub(super) async fn responses(State(st): State<Arc<FakeState>>, inc: Incoming) -> Response {
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
