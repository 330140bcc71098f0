use super::*;
use futures_util::StreamExt;

#[tokio::test]
async fn error_shapes() {
    let fake = FakeUpstream::start().await.unwrap();
    let oa = fake.openai_base_url();
    let an = fake.anthropic_base_url();

    let resp = post(
        format!("{oa}/chat/completions"),
        &[("x-fake-status", "429")],
        json!({"model": "m"}),
    )
    .await;
    assert_eq!(resp.status(), 429);
    let v: Value = resp.json().await.unwrap();
    let err = &v["error"];
    assert!(err["message"].is_string());
    assert_eq!(err["type"], "requests");
    assert_eq!(err["code"], "rate_limit_exceeded");
    assert!(err.get("param").is_some_and(Value::is_null));

    let resp = post(
        format!("{oa}/responses"),
        &[("x-fake-status", "500")],
        json!({"model": "m", "stream": true}),
    )
    .await;
    assert_eq!(resp.status(), 500);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "server_error");

    let resp = post(
        format!("{an}/v1/messages"),
        &[("x-fake-status", "529")],
        json!({"model": "m"}),
    )
    .await;
    assert_eq!(resp.status(), 529);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "overloaded_error");
    assert!(v["error"]["message"].is_string());

    let resp = post(
        format!("{an}/v1/messages"),
        &[("x-fake-status", "429")],
        json!({"model": "m"}),
    )
    .await;
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");

    // Malformed JSON.
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{oa}/chat/completions"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let resp = client
        .post(format!("{an}/v1/messages"))
        .body("[1,")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");

    // Global failure switch.
    fake.set_fail_status(Some(503));
    let resp = post(format!("{oa}/chat/completions"), &[], json!({"model": "m"})).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["type"],
        "server_error"
    );
    let resp = post(format!("{an}/v1/messages"), &[], json!({"model": "m"})).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["type"],
        "api_error"
    );
    assert_eq!(
        reqwest::get(format!("{oa}/models")).await.unwrap().status(),
        503
    );
    fake.set_fail_status(None);
    let resp = post(format!("{oa}/chat/completions"), &[], json!({"model": "m"})).await;
    assert_eq!(resp.status(), 200);

    // Unknown route: 404 in the provider's shape.
    let resp = post(format!("{oa}/nope"), &[], json!({})).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["type"],
        "invalid_request_error"
    );
    let resp = client
        .get(format!("{oa}/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
}

#[tokio::test]
async fn slow_stream_is_sent_incrementally() {
    let fake = FakeUpstream::start().await.unwrap();
    for (url, body) in [
        (
            format!("{}/chat/completions", fake.openai_base_url()),
            json!({"model": "m", "stream": true}),
        ),
        (
            format!("{}/v1/messages", fake.anthropic_base_url()),
            json!({"model": "m", "stream": true}),
        ),
    ] {
        let start = Instant::now();
        let resp = post(
            url,
            &[("x-fake-chunk-delay-ms", "300"), ("x-fake-chunks", "3")],
            body,
        )
        .await;
        let mut stream = resp.bytes_stream();
        let mut received = String::new();
        let mut first_delta_at = None;
        while let Some(chunk) = stream.next().await {
            received.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
            if first_delta_at.is_none() && received.contains("Hello") {
                first_delta_at = Some(start.elapsed());
            }
        }
        let end = start.elapsed();
        let first = first_delta_at.expect("saw the first delta");
        assert!(
            first >= Duration::from_millis(250),
            "first delta at {first:?}"
        );
        assert!(end >= Duration::from_millis(850), "stream ended at {end:?}");
        assert!(
            end - first >= Duration::from_millis(300),
            "first {first:?}, end {end:?}"
        );
    }
}

#[tokio::test]
async fn header_delay_delays_the_head() {
    let fake = FakeUpstream::start().await.unwrap();
    let start = Instant::now();
    let resp = post(
        format!("{}/chat/completions", fake.openai_base_url()),
        &[("x-fake-header-delay-ms", "200")],
        json!({"model": "m"}),
    )
    .await;
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn reader_going_away_is_counted_as_cancelled() {
    let fake = FakeUpstream::start().await.unwrap();
    // A stalled stream: one delta, then silence.
    let resp = post(
        format!("{}/v1/messages", fake.anthropic_base_url()),
        &[("x-fake-stall-after", "1"), ("x-fake-chunks", "3")],
        json!({"model": "m", "stream": true}),
    )
    .await;
    let mut stream = resp.bytes_stream();
    let mut received = String::new();
    while !received.contains("content_block_delta") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("first delta arrives")
            .unwrap()
            .unwrap();
        received.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    // Nothing more comes while stalled.
    let more = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(more.is_err(), "stalled stream sent more: {more:?}");
    assert_eq!(fake.cancelled_streams(), 0);
    drop(stream);
    assert!(
        wait_until(|| fake.cancelled_streams() == 1).await,
        "stall cancel not seen"
    );

    // A slow stream whose reader leaves between deltas.
    let resp = post(
        format!("{}/chat/completions", fake.openai_base_url()),
        &[("x-fake-chunk-delay-ms", "100"), ("x-fake-chunks", "50")],
        json!({"model": "m", "stream": true}),
    )
    .await;
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    assert!(
        wait_until(|| fake.cancelled_streams() == 2).await,
        "slow cancel not seen"
    );
    assert_eq!(fake.completed_streams(), 0);
}
