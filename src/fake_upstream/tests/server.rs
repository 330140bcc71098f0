use super::*;
use futures_util::StreamExt;

#[tokio::test]
async fn base_urls() {
    let fake = FakeUpstream::start().await.unwrap();
    let port = fake.addr().port();
    assert!(fake.addr().ip().is_loopback());
    assert_eq!(
        fake.openai_base_url(),
        format!("http://127.0.0.1:{port}/v1")
    );
    assert_eq!(
        fake.anthropic_base_url(),
        format!("http://127.0.0.1:{port}")
    );
}

#[tokio::test]
async fn requests_are_recorded_with_headers() {
    let fake = FakeUpstream::start().await.unwrap();
    assert_eq!(fake.request_count(), 0);
    let resp = reqwest::Client::new()
        .post(format!("{}/chat/completions?x=1", fake.openai_base_url()))
        .header("Authorization", "Bearer sk-upstream")
        .header("X-Custom", "yes")
        .json(&json!({"model": "gpt-rec", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    post(
        format!("{}/v1/messages", fake.anthropic_base_url()),
        &[("x-api-key", "sk-ant")],
        json!({"model": "c"}),
    )
    .await;
    post(
        format!("{}/nowhere", fake.anthropic_base_url()),
        &[],
        json!({}),
    )
    .await;

    let reqs = fake.requests();
    assert_eq!(fake.request_count(), 3);
    assert_eq!(reqs.len(), 3);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(r.header("authorization"), Some("Bearer sk-upstream"));
    assert_eq!(r.header("Authorization"), Some("Bearer sk-upstream"));
    assert!(r.headers.iter().any(|(n, v)| n == "x-custom" && v == "yes"));
    assert!(r.headers.iter().all(|(n, _)| *n == n.to_ascii_lowercase()));
    assert_eq!(r.json()["model"], "gpt-rec");
    assert_eq!(reqs[1].path, "/v1/messages");
    assert_eq!(reqs[1].header("x-api-key"), Some("sk-ant"));
    assert_eq!(reqs[2].path, "/nowhere");
    assert_eq!(r.header("missing"), None);

    fake.clear_requests();
    assert_eq!(fake.request_count(), 0);
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn dropping_the_fake_stops_it() {
    let fake = FakeUpstream::start().await.unwrap();
    let url = format!("{}/chat/completions", fake.openai_base_url());
    let resp = post(
        url.clone(),
        &[("x-fake-stall-after", "0")],
        json!({"model": "m", "stream": true}),
    )
    .await;
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap(); // the role chunk
    drop(fake);
    // The stalled stream ends (with an error) instead of hanging.
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        let mut failed = false;
        while let Some(chunk) = stream.next().await {
            failed |= chunk.is_err();
        }
        failed
    })
    .await
    .expect("stream ends after drop");
    assert!(rest, "stream ended with an error");
    // And nothing listens any more.
    let err = reqwest::Client::new()
        .post(url)
        .json(&json!({}))
        .send()
        .await;
    assert!(err.is_err());
}

#[tokio::test]
async fn unrecorded_state_keeps_no_requests() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = FakeState::new(false);
    let app = router(state.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let resp = post(
        format!("http://{addr}/v1/chat/completions"),
        &[],
        json!({"model": "m"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(state.request_count(), 0);
    server.abort();
}

#[tokio::test]
async fn serve_forever_serves() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let server = tokio::spawn(serve_forever(addr));
    let mut status = None;
    for _ in 0..100 {
        if let Ok(resp) = reqwest::get(format!("http://{addr}/v1/models")).await {
            status = Some(resp.status());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, Some(reqwest::StatusCode::OK));
    server.abort();
}
