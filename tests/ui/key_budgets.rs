//! Key budgets in the UI (SPEC §11.3): the user page's key form takes them, the keys table shows
//! them and edits them; bad amounts are refused with a message and nothing is written.

use serde_json::{json, Value};
use tollgate::fake_upstream::FakeUpstream;

use crate::helpers::*;
use crate::web::*;

#[tokio::test]
async fn key_budgets_are_set_shown_and_edited_through_forms() {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let uid = app.user("budget").await;
    let web = Web::new(&app.base);
    web.login().await;
    let page = format!("/admin/users/{uid}");

    // A bad amount: the form says which field, and no key is made.
    let r = web
        .submit(
            &format!("{page}/keys"),
            &[
                ("name", "ci"),
                ("daily_limit", "0.5"),
                ("total_limit", "lots"),
            ],
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("Total budget"), "{}", r.body);
    let (_, keys) = app.get(&format!("/keys?user_id={uid}")).await;
    assert_eq!(keys["data"], json!([]));

    let r = web
        .submit(
            &format!("{page}/keys"),
            &[
                ("name", "ci"),
                ("daily_limit", "0.5"),
                ("total_limit", "10"),
            ],
        )
        .await;
    assert_eq!(
        r.status, 200,
        "the secret is shown in the answer: {}",
        r.body
    );
    let (_, keys) = app.get(&format!("/keys?user_id={uid}")).await;
    let k = &keys["data"][0];
    assert_eq!(k["daily_limit"], "0.500000000");
    assert_eq!(k["total_limit"], "10.000000000");
    let kid = k["id"].as_i64().unwrap();

    // The keys table shows each budget's used and limit, and prefills the edit form.
    let p = web.get("/admin/keys").await;
    assert!(p.body.contains("Daily budget $0.00 / $0.50"), "{}", p.body);
    assert!(p.body.contains("Total budget $0.00 / $10.00"), "{}", p.body);
    assert!(p
        .body
        .contains(&format!("action=\"/admin/keys/{kid}/budget\"")));
    assert!(p.body.contains("name=\"daily_limit\" value=\"0.5\""));

    // Edit: an empty field lifts that budget.
    let r = web
        .submit(
            &format!("/admin/keys/{kid}/budget"),
            &[
                ("daily_limit", ""),
                ("weekly_limit", "3"),
                ("monthly_limit", ""),
                ("total_limit", "10"),
                ("back", "/admin/keys"),
            ],
        )
        .await;
    assert_eq!(
        (r.status, r.location()),
        (303, "/admin/keys?notice=key_updated")
    );
    let (_, k) = app.get(&format!("/keys/{kid}")).await;
    assert_eq!(k["daily_limit"], Value::Null);
    assert_eq!(k["weekly_limit"], "3.000000000");
    let windows: Vec<&str> = k["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["window"].as_str().unwrap())
        .collect();
    assert_eq!(windows, ["weekly", "total"]);

    // A negative amount is refused with a message; the budgets stay as they were.
    let r = web
        .submit(
            &format!("/admin/keys/{kid}/budget"),
            &[("weekly_limit", "-1"), ("total_limit", "10")],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("Weekly budget"), "{}", r.body);
    let (_, again) = app.get(&format!("/keys/{kid}")).await;
    assert_eq!(again["weekly_limit"], "3.000000000");
}
