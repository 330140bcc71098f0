use super::*;

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
