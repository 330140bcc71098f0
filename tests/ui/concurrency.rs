//! Concurrency caps through the forms: the key form of a user's page and the user's own
//! `max_concurrency` form; bad values refused with the field named (400 out of range, 422 not
//! a number), and nothing written.

use serde_json::{json, Value};

use crate::helpers::*;
use crate::web::*;

#[tokio::test]
async fn key_and_user_caps_are_set_through_the_forms() {
    let app = spawn_app().await;
    let uid = app.user("capped").await;
    let web = Web::new(&app.base);
    web.login().await;
    let page = format!("/admin/users/{uid}");

    for bad in ["0", "10001", "-2"] {
        let r = web
            .submit(
                &format!("{page}/keys"),
                &[("name", "bad"), ("max_concurrency", bad)],
            )
            .await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(
            r.body
                .contains("Max concurrent requests: must be between 1 and 10000"),
            "{bad}"
        );
    }
    let r = web
        .submit(
            &format!("{page}/keys"),
            &[("name", "bad"), ("max_concurrency", "two")],
        )
        .await;
    assert_eq!(r.status, 422);
    assert!(r.body.contains("Max concurrent requests: "));
    let (_, keys) = app.get(&format!("/keys?user_id={uid}")).await;
    assert_eq!(keys["data"], json!([]), "nothing written");

    let r = web
        .submit(
            &format!("{page}/keys"),
            &[("name", "laptop"), ("max_concurrency", "3")],
        )
        .await;
    assert_eq!(
        r.status, 200,
        "the secret is shown in the answer: {}",
        r.body
    );
    let (_, keys) = app.get(&format!("/keys?user_id={uid}")).await;
    assert_eq!(keys["data"][0]["max_concurrency"], 3);
    let p = web.get(&page).await;
    assert!(
        p.body.contains("3 in flight at most"),
        "the keys table shows it"
    );

    // The user's cap: set, refused when out of range, cleared when empty.
    let form = format!("{page}/concurrency");
    let r = web.submit(&form, &[("max_concurrency", "5")]).await;
    assert_eq!(
        (r.status, r.location()),
        (303, format!("{page}?notice=user_updated").as_str())
    );
    let (_, u) = app.get(&format!("/users/{uid}")).await;
    assert_eq!(u["max_concurrency"], 5);
    let p = web.get(&page).await;
    assert_eq!(
        attr_by_id(&p.body, "user-max-concurrency", "value").as_deref(),
        Some("5")
    );
    let r = web.submit(&form, &[("max_concurrency", "0")]).await;
    assert_eq!(r.status, 400);
    assert!(r
        .body
        .contains("Max concurrent requests: must be between 1 and 10000"));
    let (_, u) = app.get(&format!("/users/{uid}")).await;
    assert_eq!(u["max_concurrency"], 5, "nothing written");
    let r = web.submit(&form, &[("max_concurrency", "")]).await;
    assert_eq!(r.status, 303);
    let (_, u) = app.get(&format!("/users/{uid}")).await;
    assert_eq!(u["max_concurrency"], Value::Null);
}
