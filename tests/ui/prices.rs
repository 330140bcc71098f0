//! The model-prices page's pricing help, through its forms without JavaScript: the models
//! clients asked for without a price, each priced in one click, and the price-list import
//! with its review step (nothing is written before the confirm).

use std::time::Duration;

use serde_json::{json, Value};
use tollgate::billing::money::Usd;
use tollgate::fake_upstream::FakeUpstream;

use crate::helpers::*;
use crate::web::*;

const FIXTURE: &str = include_str!("../fixtures/litellm_prices.json");

async fn api_price(app: &TestApp, model: &str) -> Value {
    app.get(&format!("/models/{model}")).await.1
}

fn money(v: &Value) -> Option<Usd> {
    v.as_str().map(|s| s.parse().unwrap())
}

#[tokio::test]
async fn an_unpriced_model_is_listed_and_priced_in_one_click() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let uid = app.user("asker").await;
    let (_, key) = app.key(uid, json!({"name": "k"})).await;
    let r = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-wanted", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let web = Web::new(&app.base);
    web.login().await;
    let mut page = web.get("/admin/models").await;
    for _ in 0..200 {
        if page.body.contains("gpt-wanted") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        page = web.get("/admin/models").await;
    }
    assert_eq!(page.status, 200);
    assert!(
        attr_by_id(&page.body, "unpriced-table", "class").is_some(),
        "{}",
        page.body
    );
    assert!(text_by_id(&page.body, "unpriced")
        .unwrap()
        .contains("gpt-wanted"));

    let r = web
        .submit(
            "/admin/models",
            &[("model", "gpt-wanted"), ("input", "1.5"), ("output", "6")],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let p = api_price(&app, "gpt-wanted").await;
    assert_eq!(money(&p["input"]), Some("1.5".parse().unwrap()), "{p}");
    assert_eq!(money(&p["output"]), Some("6".parse().unwrap()), "{p}");
    let page = web.get("/admin/models").await;
    assert!(attr_by_id(&page.body, "unpriced-table", "class").is_none());
}

#[tokio::test]
async fn a_price_list_is_reviewed_then_applied() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let web = Web::new(&app.base);
    web.login().await;
    let page = web.get("/admin/models").await;
    assert!(attr_by_id(&page.body, "import-prices", "class").is_some());

    let review = web
        .submit("/admin/models/import", &[("list", FIXTURE)])
        .await;
    assert_eq!(review.status, 200, "{}", review.body);
    let counts: Vec<String> = [
        "import-added",
        "import-changed",
        "import-unchanged",
        "import-not-taken",
    ]
    .iter()
    .map(|id| text_by_id(&review.body, id).unwrap())
    .collect();
    println!("added, changed, unchanged, not taken: {counts:?}");
    assert_eq!(counts, vec!["5", "1", "1", "4"]);
    let changed = text_by_id(&review.body, "import-changed-table").unwrap();
    assert!(changed.contains("input 2.5 → 3"), "{changed}");
    assert!(changed.contains("cache_read 1.25 → 0.125"), "{changed}");
    let skipped = text_by_id(&review.body, "import-skipped").unwrap();
    assert!(skipped.contains("gpt-tiny-fraction"), "{skipped}");
    // The review wrote nothing.
    assert_eq!(
        api_price(&app, "gpt-4o-mini").await["error"]["code"],
        "not_found"
    );
    assert_eq!(
        money(&api_price(&app, "gpt-test").await["input"]),
        Some("2.5".parse().unwrap())
    );

    let plan = input_value(&review.body, "plan").expect("the confirm form carries the plan");
    let done = web
        .submit("/admin/models/import/apply", &[("plan", &plan)])
        .await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(done.location(), "/admin/models?notice=prices_imported");
    let mini = api_price(&app, "gpt-4o-mini").await;
    assert_eq!(
        money(&mini["input"]),
        Some("0.15".parse().unwrap()),
        "{mini}"
    );
    assert_eq!(
        money(&mini["cache_read"]),
        Some("0.075".parse().unwrap()),
        "{mini}"
    );
    assert_eq!(
        api_price(&app, "gpt-test").await["cache_read"],
        "0.125000000"
    );

    // The same list again: nothing to change, and no confirm form.
    let again = web
        .submit("/admin/models/import", &[("list", FIXTURE)])
        .await;
    assert!(
        text_by_id(&again.body, "import-nothing").is_some(),
        "{}",
        again.body
    );
    assert!(input_value(&again.body, "plan").is_none());

    // Not a price list: refused with a message, nothing written.
    let bad = web.submit("/admin/models/import", &[("list", "[1]")]).await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert!(bad.body.contains("Not a price list"), "{}", bad.body);
    let bad = web
        .submit("/admin/models/import/apply", &[("plan", "{nope")])
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let negative = json!([["gpt-neg", -1, 1, null, null]]).to_string();
    let bad = web
        .submit("/admin/models/import/apply", &[("plan", &negative)])
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(
        api_price(&app, "gpt-neg").await["error"]["code"],
        "not_found"
    );
}

#[tokio::test]
async fn a_full_size_price_list_uploads() {
    let app = spawn_app().await;
    let web = Web::new(&app.base);
    web.login().await;
    // LiteLLM's file is over 1 MB; far past the 64 KiB of other forms.
    let mut list = serde_json::Map::new();
    for i in 0..12_000 {
        list.insert(
            format!("bedrock/some-model-{i}"),
            json!({"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05, "litellm_provider": "bedrock", "mode": "chat"}),
        );
    }
    list.insert(
        "gpt-big-list".into(),
        json!({"input_cost_per_token": 2e-06, "output_cost_per_token": 8e-06, "litellm_provider": "openai", "mode": "chat"}),
    );
    let text = Value::Object(list).to_string();
    println!("price list of {} bytes", text.len());
    assert!(text.len() > 1_000_000);
    let review = web.submit("/admin/models/import", &[("list", &text)]).await;
    assert_eq!(review.status, 200, "{}", review.body);
    assert_eq!(text_by_id(&review.body, "import-added").unwrap(), "1");
    assert_eq!(
        text_by_id(&review.body, "import-not-taken").unwrap(),
        "12000"
    );
}
