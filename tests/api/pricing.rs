//! Pricing help (SPEC §11.4): `GET /api/admin/models/unpriced` lists the models clients were
//! refused for want of a price; `tollgate prices import FILE` reads LiteLLM's price list,
//! prints what it would add and change, and writes it only with `--yes`, exactly.

use std::time::Duration;

use serde_json::{json, Value};
use tollgate::billing::money::Usd;
use tollgate::fake_upstream::FakeUpstream;

use crate::helpers::*;
use crate::proxy::funded_key;

async fn ask(app: &TestApp, key: &str, path: &str, model: &str) -> u16 {
    app.http
        .post(app.url(path))
        .bearer_auth(key)
        .json(&json!({"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The unpriced list once it has `n` models (the refusal rows go through the recorder).
async fn unpriced(app: &TestApp, n: usize) -> Vec<Value> {
    for _ in 0..200 {
        let (s, v) = app.get("/models/unpriced").await;
        assert_eq!(s, 200, "{v}");
        let rows = v["data"].as_array().cloned().unwrap();
        if rows.len() >= n {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("fewer than {n} unpriced models");
}

#[tokio::test]
async fn unpriced_models_are_listed_until_priced() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let t0 = chrono::Utc::now();
    let (uid, _, k1) = funded_key(&app, "asker").await;
    let (_, k2) = app.key(uid, json!({"name": "k2"})).await;
    let (_, k3) = app.key(uid, json!({"name": "k3"})).await;
    let (_, k4) = app
        .key(uid, json!({"name": "k4", "allowed_models": ["gpt-test"]}))
        .await;
    // Two keys ask for one unpriced model, a third for another, through the other protocol.
    assert_eq!(
        ask(&app, &k1, "/v1/chat/completions", "gpt-nope").await,
        404
    );
    assert_eq!(
        ask(&app, &k2, "/v1/chat/completions", "gpt-nope").await,
        404
    );
    assert_eq!(ask(&app, &k3, "/v1/messages", "claude-nope").await, 404);
    // Refused for another reason: not an unpriced model. A priced model is not either.
    assert_eq!(
        ask(&app, &k4, "/v1/chat/completions", "gpt-other").await,
        403
    );
    assert_eq!(
        ask(&app, &k1, "/v1/chat/completions", "gpt-test").await,
        200
    );
    let rows = unpriced(&app, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rows_later = unpriced(&app, 2).await;
    assert_eq!(rows, rows_later, "no other model arrives");
    println!("{}", serde_json::to_string_pretty(&rows).unwrap());
    let names: Vec<&str> = rows.iter().map(|r| r["model"].as_str().unwrap()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, vec!["claude-nope", "gpt-nope"]);
    let by = |m: &str| rows.iter().find(|r| r["model"] == m).unwrap().clone();
    assert_eq!(by("gpt-nope")["requests"], 2);
    assert_eq!(by("claude-nope")["requests"], 1);
    for r in &rows {
        let seen = chrono::DateTime::parse_from_rfc3339(r["last_seen_at"].as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert!(
            seen >= t0 - chrono::Duration::seconds(1) && seen <= chrono::Utc::now(),
            "{r}"
        );
    }
    // Most recently asked first.
    let times: Vec<&str> = rows
        .iter()
        .map(|r| r["last_seen_at"].as_str().unwrap())
        .collect();
    let mut desc = times.clone();
    desc.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, desc);

    let (s, v) = app
        .put("/models/gpt-nope", json!({"input": "1", "output": "2"}))
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = app.get("/models/unpriced").await;
    let left: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["model"].as_str().unwrap())
        .collect();
    assert_eq!(left, vec!["claude-nope"]);
    let (s, v) = app.get("/models/unpriced?limit=0").await;
    assert_eq!(s, 400, "{v}");
    // The static route does not take the name `unpriced` away from a model.
    let (s, v) = app
        .put("/models/unpriced", json!({"input": "1", "output": "1"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model"], "unpriced");
}

pub const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/litellm_prices.json"
);

fn import(db_url: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["prices", "import"])
        .args(args)
        .arg("--config")
        .arg(format!("{}/config.toml", env!("CARGO_MANIFEST_DIR")))
        .env("TOLLGATE_DATABASE__URL", db_url)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A model's four prices from the API, as nano-dollars per 1M tokens.
async fn price(app: &TestApp, model: &str) -> Option<[Option<Usd>; 4]> {
    let (s, v) = app.get(&format!("/models/{model}")).await;
    if s == 404 {
        return None;
    }
    assert_eq!(s, 200, "{v}");
    let m = |k: &str| v[k].as_str().map(|s| s.parse::<Usd>().unwrap());
    Some([m("input"), m("output"), m("cache_read"), m("cache_write")])
}

fn usd(s: &str) -> Option<Usd> {
    Some(s.parse().unwrap())
}

#[tokio::test]
async fn prices_import_shows_the_diff_and_writes_only_with_yes() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let db = app.db_url.clone();

    let (ok, out, err) = import(&db, &[FIXTURE]);
    assert!(ok, "{out}{err}");
    println!("{out}");
    for line in [
        "Add (5):",
        "+ gpt-4o-mini",
        "input 0.15  output 0.6  cache_read 0.075  cache_write -",
        "input 3  output 15  cache_read 0.3  cache_write 3.75",
        "input 1.25  output 10  cache_read 0.125  cache_write -",
        "input 150  output 600  cache_read -  cache_write -",
        "Change (1):",
        "~ gpt-test",
        "input 2.5 → 3, output 10 → 15, cache_read 1.25 → 0.125",
        "Unchanged: 1",
        "Skipped (2):",
        "! gpt-4o-audio-preview: no per-token input and output price",
        "! gpt-tiny-fraction: input_cost_per_token `1.0000000000000001e-09` is finer than one nano-dollar per 1M tokens",
        "Not taken (other providers or modes): 4",
        "Nothing written: run again with --yes to apply.",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(
        !out.contains("azure/gpt-4o") && !out.contains("text-embedding"),
        "{out}"
    );
    // Nothing was written.
    assert_eq!(price(&app, "gpt-4o-mini").await, None);
    assert_eq!(
        price(&app, "gpt-test").await.unwrap(),
        [usd("2.5"), usd("10"), usd("1.25"), None]
    );

    let (ok, out, err) = import(&db, &[FIXTURE, "--yes"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("Applied: 5 added, 1 changed."), "{out}");
    for (model, want) in [
        ("gpt-4o", [usd("2.5"), usd("10"), usd("1.25"), None]),
        ("gpt-4o-mini", [usd("0.15"), usd("0.6"), usd("0.075"), None]),
        ("gpt-test", [usd("3"), usd("15"), usd("0.125"), None]),
        ("gpt-5-codex", [usd("1.25"), usd("10"), usd("0.125"), None]),
        ("o1-pro", [usd("150"), usd("600"), None, None]),
        (
            "claude-sonnet-4-5",
            [usd("3"), usd("15"), usd("0.3"), usd("3.75")],
        ),
        (
            "claude-test",
            [usd("3"), usd("15"), usd("0.3"), usd("3.75")],
        ),
    ] {
        assert_eq!(price(&app, model).await.unwrap(), want, "{model}");
    }
    // Exactly: 1.25e-07 USD a token is 0.125 USD per 1M, to the nano-dollar.
    let (_, v) = app.get("/models/gpt-test").await;
    assert_eq!(v["cache_read"], "0.125000000");
    for model in [
        "gpt-4o-audio-preview",
        "gpt-tiny-fraction",
        "azure/gpt-4o",
        "dall-e-3",
    ] {
        assert_eq!(price(&app, model).await, None, "{model}");
    }

    let (ok, out, _) = import(&db, &[FIXTURE]);
    assert!(
        ok && out.contains("Unchanged: 7") && out.contains("Nothing to change."),
        "{out}"
    );
    let (ok, out, _) = import(&db, &[FIXTURE, "--provider", "anthropic", "--mode", "chat"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("Unchanged: 2") && out.contains("Not taken (other providers or modes): 11"),
        "{out}"
    );

    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), "[1, 2, 3]").unwrap();
    let (ok, out, err) = import(&db, &[bad.path().to_str().unwrap(), "--yes"]);
    assert!(!ok, "{out}");
    assert!(err.contains("not a JSON object of models"), "{err}");
    let (ok, _, err) = import(&db, &["/nonexistent/prices.json"]);
    assert!(
        !ok && err.contains("cannot read /nonexistent/prices.json"),
        "{err}"
    );
}
