use super::*;
use base64::prelude::{Engine as _, BASE64_STANDARD};

#[tokio::test]
async fn openai_non_stream_usage() {
    let fake = FakeUpstream::start().await.unwrap();
    let base = fake.openai_base_url();

    let resp = post(
        format!("{base}/chat/completions"),
        &TOKENS,
        json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(v["created"].is_u64());
    assert_eq!(v["model"], "gpt-test");
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from the");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 130);
    assert_eq!(v["usage"]["completion_tokens"], 20);
    assert_eq!(v["usage"]["total_tokens"], 150);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 30);

    // Defaults.
    let v: Value = post(
        format!("{base}/chat/completions"),
        &[],
        json!({"model": "m"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], 12);
    assert_eq!(v["usage"]["completion_tokens"], 8);
    assert_eq!(v["usage"]["total_tokens"], 20);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);

    let v: Value = post(
        format!("{base}/responses"),
        &TOKENS,
        json!({"model": "gpt-resp", "input": "hi"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["object"], "response");
    assert!(v["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(v["status"], "completed");
    assert_eq!(v["model"], "gpt-resp");
    assert_eq!(v["output"][0]["type"], "message");
    assert_eq!(v["output"][0]["role"], "assistant");
    assert_eq!(v["output"][0]["content"][0]["type"], "output_text");
    assert_eq!(v["output"][0]["content"][0]["text"], "Hello from the");
    assert_eq!(v["usage"]["input_tokens"], 130);
    assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], 30);
    assert_eq!(v["usage"]["output_tokens"], 20);
    assert_eq!(v["usage"]["output_tokens_details"]["reasoning_tokens"], 0);
    assert_eq!(v["usage"]["total_tokens"], 150);

    let v: Value = post(
        format!("{base}/completions"),
        &TOKENS,
        json!({"model": "davinci", "prompt": "hi"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "davinci");
    assert_eq!(v["choices"][0]["text"], "Hello from the");
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 130);
    assert_eq!(v["usage"]["completion_tokens"], 20);
    assert_eq!(v["usage"]["total_tokens"], 150);

    let v: Value = post(
        format!("{base}/embeddings"),
        &[("x-fake-prompt-tokens", "7")],
        json!({"model": "text-embedding-3-small", "input": ["a", "b", "c"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "text-embedding-3-small");
    assert_eq!(v["data"].as_array().unwrap().len(), 3);
    assert_eq!(v["data"][2]["index"], 2);
    assert_eq!(v["data"][0]["object"], "embedding");
    let emb = v["data"][0]["embedding"].as_array().unwrap();
    assert_eq!(emb.len(), 8);
    assert_eq!(emb[0], 0.1);
    assert_eq!(v["usage"]["prompt_tokens"], 7);
    assert_eq!(v["usage"]["total_tokens"], 7);

    let v: Value = post(
        format!("{base}/embeddings"),
        &[],
        json!({"model": "e", "input": "one", "encoding_format": "base64"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    // 8 little-endian f32 = 32 bytes = 44 base64 characters; 0.1f32 = cd cc cc 3d.
    let b64 = v["data"][0]["embedding"].as_str().unwrap();
    assert_eq!(b64.len(), 44);
    assert_eq!(b64, "zczMPc3MTD6amZk+zczMPgAAAD+amRk/MzMzP83MTD8=");

    let v: Value = reqwest::get(format!("{base}/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    assert!(v["data"].as_array().unwrap().len() >= 2);
    assert_eq!(v["data"][0]["object"], "model");
    assert!(v["data"][0]["id"].is_string());
}

#[test]
fn base64_matches_rfc4648() {
    let base64 = |b: &[u8]| BASE64_STANDARD.encode(b);
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
}

#[tokio::test]
async fn openai_chat_stream_without_include_usage() {
    let fake = FakeUpstream::start().await.unwrap();
    let resp = post(
        format!("{}/chat/completions", fake.openai_base_url()),
        &TOKENS,
        json!({"model": "gpt-s", "stream": true, "messages": []}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = parse_sse(&resp.text().await.unwrap());
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(Event::json).collect();
    // role, 3 deltas, finish.
    assert_eq!(chunks.len(), 5);
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "gpt-s");
        assert!(
            c.get("usage").is_none(),
            "no usage key without include_usage: {c}"
        );
        assert_eq!(c["id"], chunks[0]["id"]);
    }
    assert!(events.iter().all(|e| e.name.is_none()));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks[1..4]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Hello from the");
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
    assert!(chunks[..4]
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));
    assert!(wait_until(|| fake.completed_streams() == 1).await);
    assert_eq!(fake.cancelled_streams(), 0);
}

#[tokio::test]
async fn openai_chat_stream_with_include_usage() {
    let fake = FakeUpstream::start().await.unwrap();
    let url = format!("{}/chat/completions", fake.openai_base_url());
    let body = json!({"model": "gpt-s", "stream": true,
                      "stream_options": {"include_usage": true}, "messages": []});
    let mut headers = TOKENS.to_vec();
    headers.push(("x-fake-chunks", "5"));
    let text = post(url.clone(), &headers, body.clone())
        .await
        .text()
        .await
        .unwrap();
    let events = parse_sse(&text);
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(Event::json).collect();
    // role, 5 deltas, finish, usage.
    assert_eq!(chunks.len(), 8);
    for c in &chunks[..7] {
        assert!(c["usage"].is_null() && c.get("usage").is_some(), "{c}");
        assert_eq!(c["choices"].as_array().unwrap().len(), 1);
    }
    assert_eq!(chunks[6]["choices"][0]["finish_reason"], "stop");
    let last = &chunks[7];
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"], 130);
    assert_eq!(last["usage"]["completion_tokens"], 20);
    assert_eq!(last["usage"]["total_tokens"], 150);
    assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], 30);

    // x-fake-no-usage drops the usage chunk even when asked.
    let text = post(url, &[("x-fake-no-usage", "1")], body)
        .await
        .text()
        .await
        .unwrap();
    let events = parse_sse(&text);
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert_eq!(events.len(), 6);
    assert!(events[..5]
        .iter()
        .all(|e| e.json()["usage"].is_null() && !e.json()["choices"][0].is_null()));
    assert!(wait_until(|| fake.completed_streams() == 2).await);
}

#[tokio::test]
async fn legacy_completions_stream() {
    let fake = FakeUpstream::start().await.unwrap();
    let url = format!("{}/completions", fake.openai_base_url());
    let text = post(
        url.clone(),
        &[("x-fake-chunks", "2")],
        json!({"model": "davinci", "prompt": "x", "stream": true,
               "stream_options": {"include_usage": true}}),
    )
    .await
    .text()
    .await
    .unwrap();
    let events = parse_sse(&text);
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(Event::json).collect();
    assert_eq!(chunks.len(), 4); // 2 deltas, finish, usage
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    assert_eq!(chunks[0]["choices"][0]["text"], "Hello");
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[3]["choices"], json!([]));
    assert_eq!(chunks[3]["usage"]["total_tokens"], 20);

    let text = post(
        url,
        &[],
        json!({"model": "davinci", "prompt": "x", "stream": true}),
    )
    .await
    .text()
    .await
    .unwrap();
    let events = parse_sse(&text);
    assert_eq!(events.len(), 5); // 3 deltas, finish, [DONE]
    assert!(!text.contains("usage"));
}

#[tokio::test]
async fn responses_stream_terminal_variants() {
    let fake = FakeUpstream::start().await.unwrap();
    for terminal in ["completed", "incomplete", "failed"] {
        let mut headers = TOKENS.to_vec();
        headers.push(("x-fake-terminal", terminal));
        let text = post(
            format!("{}/responses", fake.openai_base_url()),
            &headers,
            json!({"model": "gpt-r", "input": "hi", "stream": true}),
        )
        .await
        .text()
        .await
        .unwrap();
        let events = parse_sse(&text);
        let names: Vec<&str> = events.iter().map(|e| e.name.as_deref().unwrap()).collect();
        assert_eq!(names[0], "response.created");
        assert_eq!(
            names
                .iter()
                .filter(|n| **n == "response.output_text.delta")
                .count(),
            3
        );
        let terminal_name = format!("response.{terminal}");
        assert_eq!(*names.last().unwrap(), terminal_name);
        assert_eq!(
            names
                .iter()
                .filter(|n| n.starts_with("response.c")
                    && **n != "response.created"
                    && !n.starts_with("response.content_part"))
                .count(),
            usize::from(terminal == "completed")
        );
        for (i, e) in events.iter().enumerate() {
            let d = e.json();
            assert_eq!(d["type"], e.name.as_deref().unwrap());
            assert_eq!(d["sequence_number"], i);
        }
        let created = events[0].json();
        assert_eq!(created["response"]["status"], "in_progress");
        assert_eq!(created["response"]["model"], "gpt-r");
        let deltas: String = events
            .iter()
            .filter(|e| e.name.as_deref() == Some("response.output_text.delta"))
            .map(|e| e.json()["delta"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(deltas, "Hello from the");
        let last = events.last().unwrap().json();
        assert_eq!(last["response"]["status"], terminal);
        assert_eq!(last["response"]["object"], "response");
        assert_eq!(last["response"]["id"], created["response"]["id"]);
        assert_eq!(last["response"]["usage"]["input_tokens"], 130);
        assert_eq!(
            last["response"]["usage"]["input_tokens_details"]["cached_tokens"],
            30
        );
        assert_eq!(last["response"]["usage"]["output_tokens"], 20);
        assert_eq!(last["response"]["usage"]["total_tokens"], 150);
    }
    assert!(wait_until(|| fake.completed_streams() == 3).await);
}
