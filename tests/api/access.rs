//! Who may use a key and see the metrics (SPEC §11.3 "IP allow-list", §11.7 "Metrics access"):
//! `allowed_ips` against the client address (the TCP peer, or the X-Forwarded-For entry of
//! the last trusted proxy), invalid CIDRs refused at write time, and `metrics.token`.

use serde_json::{json, Value};
use tollgate::client_addr::CidrList;
use tollgate::fake_upstream::FakeUpstream;

use crate::helpers::*;
use crate::proxy::{chat_body, funded_key, messages_body};

/// POST a proxied request with `key`, optionally with an X-Forwarded-For header; returns the
/// status, the `x-should-retry` header and the JSON body.
async fn call(
    app: &TestApp,
    path: &str,
    key: &str,
    xff: Option<&str>,
) -> (u16, Option<String>, Value) {
    let body = if path == "/v1/messages" {
        messages_body(false)
    } else {
        chat_body(false)
    };
    let mut r = app.http.post(app.url(path)).bearer_auth(key).json(&body);
    if let Some(x) = xff {
        r = r.header("x-forwarded-for", x);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("x-should-retry")
        .map(|v| v.to_str().unwrap().to_string());
    let v = r.json().await.unwrap_or(Value::Null);
    (status, retry, v)
}

async fn chat(app: &TestApp, key: &str, xff: Option<&str>) -> u16 {
    call(app, "/v1/chat/completions", key, xff).await.0
}

/// A funded key with `allowed_ips` set through PATCH; returns (key id, secret).
async fn key_with_ips(app: &TestApp, name: &str, ips: Value) -> (i64, String) {
    let (_, kid, secret) = funded_key(app, name).await;
    let (s, v) = app
        .patch(&format!("/keys/{kid}"), json!({ "allowed_ips": ips }))
        .await;
    assert_eq!(s, 200, "{v}");
    (kid, secret)
}

fn trusting(ranges: &'static [&'static str]) -> Options {
    Options {
        tweak: Some(Box::new(move |c| {
            c.server.trusted_proxies = CidrList::parse(ranges).unwrap();
        })),
        ..Default::default()
    }
}

#[tokio::test]
async fn allow_lists_admit_the_peer_inside_and_refuse_it_outside() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    // The test connects from 127.0.0.1; no proxy is trusted.
    let (_, open) = key_with_ips(&app, "open", Value::Null).await;
    let (_, inside) = key_with_ips(&app, "inside", json!(["127.0.0.0/8", "2001:db8::/32"])).await;
    let (kid, outside) = key_with_ips(&app, "outside", json!(["10.0.0.0/8", "::1"])).await;
    assert_eq!(chat(&app, &open, None).await, 200);
    assert_eq!(chat(&app, &inside, None).await, 200);
    let served = fake.request_count();

    let (status, retry, v) = call(&app, "/v1/chat/completions", &outside, None).await;
    println!("refused outside the allow-list: {status} {v}");
    assert_eq!(status, 403, "{v}");
    assert_eq!(retry.as_deref(), Some("false"));
    assert_eq!(v["error"]["code"], "ip_not_allowed");
    assert_eq!(v["error"]["type"], "permission_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1"),
        "{v}"
    );
    let (status, retry, v) = call(&app, "/v1/messages", &outside, None).await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(retry.as_deref(), Some("false"));
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "permission_error");
    // X-Forwarded-For from an untrusted peer is ignored: claiming 10.1.2.3 changes nothing.
    assert_eq!(chat(&app, &outside, Some("10.1.2.3")).await, 403);
    // The model list is refused too.
    let r = app
        .http
        .get(app.url("/v1/models"))
        .bearer_auth(&outside)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        fake.request_count(),
        served,
        "nothing refused reached upstream"
    );

    // The refusal is a `refused` row of the key (SPEC §11.4; one per key, code and second).
    let mut logs = Value::Null;
    for _ in 0..100 {
        logs = app.get(&format!("/logs?api_key_id={kid}")).await.1;
        if !logs["data"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let rows = logs["data"].as_array().unwrap();
    assert!(!rows.is_empty(), "{logs}");
    assert!(
        rows.iter().all(|r| r["error"] == "ip_not_allowed"
            && r["billing_status"] == "refused"
            && r["status"] == 403),
        "{logs}"
    );

    // An edit takes effect at once; null lifts the list.
    let (s, v) = app
        .patch(
            &format!("/keys/{kid}"),
            json!({"allowed_ips": ["127.0.0.1"]}),
        )
        .await;
    assert_eq!(
        (s, &v["allowed_ips"]),
        (200, &json!(["127.0.0.1/32"])),
        "{v}"
    );
    assert_eq!(chat(&app, &outside, None).await, 200);
    let (s, v) = app
        .patch(
            &format!("/keys/{kid}"),
            json!({"allowed_ips": ["192.0.2.0/24"]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(chat(&app, &outside, None).await, 403);
    let (s, v) = app
        .patch(&format!("/keys/{kid}"), json!({"allowed_ips": null}))
        .await;
    assert_eq!((s, &v["allowed_ips"]), (200, &Value::Null), "{v}");
    assert_eq!(chat(&app, &outside, None).await, 200);
    // Keys show their list (null when unrestricted).
    let (_, list) = app.get("/keys").await;
    let lists: Vec<&Value> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["allowed_ips"])
        .collect();
    assert_eq!(
        lists,
        [
            &Value::Null,
            &json!(["127.0.0.0/8", "2001:db8::/32"]),
            &Value::Null
        ]
    );
}

#[tokio::test]
async fn a_trusted_proxy_forwarded_for_is_honoured_v4_and_v6() {
    let app = spawn_with(trusting(&["127.0.0.1/32", "10.0.0.0/8"])).await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let (_, key) = key_with_ips(&app, "behind", json!(["2001:db8::/32", "198.51.100.0/24"])).await;

    let cases: &[(Option<&str>, u16)] = &[
        // The peer (the proxy itself) is not in the list.
        (None, 403),
        (Some("198.51.100.9"), 200),
        (Some("203.0.113.5"), 403),
        (Some("2001:db8::7"), 200),
        (Some("2001:db9::7"), 403),
        (Some("[2001:db8::7]:443"), 200),
        // The client wrote the left entry; the proxy added the right one, which counts.
        (Some("198.51.100.9, 203.0.113.5"), 403),
        (Some("203.0.113.5, 198.51.100.9"), 200),
        // A chain of trusted proxies is walked past.
        (Some("198.51.100.9, 10.0.0.3, 10.0.0.2"), 200),
        (Some("203.0.113.5, 10.0.0.3"), 403),
        // IPv4-mapped IPv6 is its IPv4 address.
        (Some("::ffff:198.51.100.20"), 200),
    ];
    let mut failures = Vec::new();
    for (xff, want) in cases {
        let (status, _, v) = call(&app, "/v1/chat/completions", &key, *xff).await;
        println!("X-Forwarded-For {xff:?} → {status}");
        if status != *want {
            failures.push(format!("{xff:?}: {status}, wanted {want}: {v}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    let (_, _, v) = call(&app, "/v1/chat/completions", &key, Some("203.0.113.5")).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("203.0.113.5"),
        "the refusal names the client address: {v}"
    );
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    // Only 10.0.0.0/8 is trusted; the test connects from 127.0.0.1.
    let app = spawn_with(trusting(&["10.0.0.0/8"])).await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let (_, key) = key_with_ips(&app, "spoof", json!(["198.51.100.0/24"])).await;
    assert_eq!(chat(&app, &key, Some("198.51.100.9")).await, 403);
    assert_eq!(chat(&app, &key, Some("10.0.0.1, 198.51.100.9")).await, 403);
    let (_, local) = key_with_ips(&app, "local", json!(["127.0.0.1"])).await;
    assert_eq!(chat(&app, &local, Some("198.51.100.9")).await, 200);
}

#[tokio::test]
async fn invalid_cidrs_are_refused_naming_the_entry_and_nothing_is_written() {
    let app = spawn_app().await;
    let uid = app.user("cidr").await;
    let keys = || async {
        let (_, v) = app.get("/keys").await;
        v["data"].as_array().unwrap().len()
    };
    for bad in [
        "10.0.0.0/33",
        "300.1.2.3",
        "fe80::/129",
        "example.com",
        "",
        "10.0.0.0/",
    ] {
        let (s, v) = app
            .post(
                &format!("/users/{uid}/keys"),
                json!({"name": "k", "allowed_ips": ["10.0.0.0/8", bad]}),
            )
            .await;
        assert_eq!(s, 400, "{bad}: {v}");
        assert_eq!(v["error"]["param"], "allowed_ips", "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("`{bad}`")), "{bad}: {message}");
    }
    let (s, v) = app
        .post(
            &format!("/users/{uid}/keys"),
            json!({"name": "k", "allowed_ips": "10.0.0.0/8"}),
        )
        .await;
    assert_eq!(s, 400, "not a list: {v}");
    assert_eq!(keys().await, 0, "no key was created");

    // Entries are normalised: a bare address is /32 or /128, host bits cleared, duplicates
    // dropped.
    let (s, v) = app
        .post(
            &format!("/users/{uid}/keys"),
            json!({"name": "k", "allowed_ips": ["192.0.2.7", "10.1.2.3/8", " 2001:db8::1 ", "10.0.0.0/8"]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        v["allowed_ips"],
        json!(["192.0.2.7/32", "10.0.0.0/8", "2001:db8::1/128"])
    );
    let kid = v["id"].as_i64().unwrap();
    // A PATCH with a bad entry changes nothing, not even the valid status beside it.
    let (s, v) = app
        .patch(
            &format!("/keys/{kid}"),
            json!({"status": "revoked", "allowed_ips": ["::1", "not-an-ip"]}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["param"], "allowed_ips");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`not-an-ip`"));
    let (_, k) = app.get(&format!("/keys/{kid}")).await;
    assert_eq!(k["status"], "active");
    assert_eq!(
        k["allowed_ips"],
        json!(["192.0.2.7/32", "10.0.0.0/8", "2001:db8::1/128"])
    );
    // An empty list is no restriction, like null.
    let (s, v) = app
        .patch(&format!("/keys/{kid}"), json!({"allowed_ips": []}))
        .await;
    assert_eq!((s, &v["allowed_ips"]), (200, &Value::Null), "{v}");
}

#[tokio::test]
async fn a_bad_trusted_proxy_stops_startup_naming_the_entry() {
    let err = tollgate::config::Config::from_toml_str(
        "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.300\"]\n",
    )
    .unwrap_err()
    .to_string();
    println!("{err}");
    assert!(err.contains("server.trusted_proxies"), "{err}");
    assert!(err.contains("`10.0.0.300`"), "{err}");
}

#[tokio::test]
async fn metrics_token_requires_a_bearer_token() {
    let open = spawn_app().await;
    let r = open.http.get(open.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200, "without metrics.token /metrics is open");

    let app = spawn_with(Options {
        tweak: Some(Box::new(|c| {
            c.metrics.token = tollgate::config::Secret::new("scrape-token-0123456789");
        })),
        ..Default::default()
    })
    .await;
    let get = |auth: Option<String>| {
        let mut r = app.http.get(app.url("/metrics"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        async move { r.send().await.unwrap() }
    };
    for auth in [
        None,
        Some("Bearer wrong".to_string()),
        Some("Bearer scrape-token-012345678".to_string()),
        Some("Basic c2NyYXBlLXRva2VuLTAxMjM0NTY3ODk=".to_string()),
        // The admin token is not the metrics token.
        Some(format!("Bearer {ADMIN_TOKEN}")),
    ] {
        let r = get(auth.clone()).await;
        assert_eq!(r.status(), 401, "{auth:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let text = r.text().await.unwrap();
        assert!(text.contains("metrics.token"), "{text}");
        assert!(!text.contains("scrape-token"), "{text}");
    }
    let r = get(Some("Bearer scrape-token-0123456789".to_string())).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("tollgate_"), "{text}");
}
