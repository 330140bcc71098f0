//! The audit log seen from the web UI: form writes and sign-ins are recorded with the admin
//! who made them and the fields sent (never a password or a secret), and the audit page shows
//! them; the usage page's charts split by model.

use serde_json::{json, Value};
use tollgate::store::{Db, Pool};

use crate::helpers::*;
use crate::web::*;

async fn stored_rows(db: &Db) -> Vec<String> {
    let sql = "SELECT CONCAT(actor, ' ', path, ' ', fields) FROM audit_log ORDER BY id";
    let sqlite = "SELECT actor || ' ' || path || ' ' || fields FROM audit_log ORDER BY id";
    match db.pool() {
        Pool::Sqlite(p) => sqlx::query_scalar(sqlite).fetch_all(p).await.unwrap(),
        Pool::MySql(p) => sqlx::query_scalar(sql).fetch_all(p).await.unwrap(),
    }
}

#[tokio::test]
async fn form_writes_and_sign_ins_are_audited_and_shown_without_secrets() {
    let app = spawn_app().await;
    let web = Web::new(&app.base);
    let wrong = "wrong-password-never-stored";
    let r = web.try_login(ADMIN_USER, wrong).await;
    assert_eq!(r.status, 401);
    web.login().await;
    let secret = "sk-ui-audit-SECRET-777";
    let r = web
        .submit("/admin/users", &[("username", "grace"), ("role", "user")])
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let user_id: i64 = r
        .location()
        .trim_start_matches("/admin/users/")
        .split('?')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let r = web
        .submit(
            "/admin/accounts",
            &[
                ("name", "ui-acc"),
                ("provider", "openai"),
                ("base_url", "http://127.0.0.1:9/v1"),
                ("api_key", secret),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    // A refused form is not a change.
    let r = web.submit("/admin/users", &[("username", "")]).await;
    assert_eq!(r.status, 400);

    let rows = audit_entries(&app, 4).await;
    println!(
        "audit entries: {}",
        serde_json::to_string_pretty(&rows).unwrap()
    );
    assert_eq!(rows.len(), 4, "{rows:?}");
    let admin_id = rows[1]["actor_user_id"].as_i64().expect("the admin's id");
    let (account, user, ok_login, failed_login) = (&rows[0], &rows[1], &rows[2], &rows[3]);
    assert_eq!(
        (
            &account["source"],
            &account["actor"],
            &account["method"],
            &account["path"],
            &account["fields"],
            &account["status"]
        ),
        (
            &json!("ui"),
            &json!(ADMIN_USER),
            &json!("POST"),
            &json!("/admin/accounts"),
            &json!({"name": "ui-acc", "provider": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "***"}),
            &json!(303)
        )
    );
    assert_eq!(account["actor_user_id"], admin_id);
    assert_eq!(user["fields"], json!({"username": "grace", "role": "user"}));
    assert_eq!(user["target"], user_id.to_string());
    assert_eq!(user["actor"], ADMIN_USER);
    assert_eq!(
        (
            &ok_login["source"],
            &ok_login["outcome"],
            &ok_login["actor"]
        ),
        (&json!("login"), &json!("success"), &json!(ADMIN_USER))
    );
    assert_eq!(ok_login["actor_user_id"], admin_id);
    assert_eq!(
        ok_login["fields"],
        json!({"username": ADMIN_USER, "password": "***"})
    );
    assert_eq!(
        (
            &failed_login["outcome"],
            &failed_login["status"],
            &failed_login["actor_user_id"]
        ),
        (&json!("failure"), &json!(401), &Value::Null)
    );

    // The page lists them, newest first, with who and what; never the secrets.
    let page = web.get("/admin/audit").await;
    assert_eq!(page.status, 200);
    let ids: Vec<String> = rows
        .iter()
        .map(|r| format!("id=\"audit-{}\"", r["id"]))
        .collect();
    let at: Vec<usize> = ids.iter().map(|i| page.body.find(i).unwrap()).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "newest first: {at:?}");
    assert!(page.body.contains("username=grace"));
    assert!(page.body.contains("api_key=***"));
    assert!(page.body.contains(r#"data-actor="admin""#));
    let zh = web.get("/admin/audit?lang=zh-CN").await;
    assert!(zh.body.contains("审计日志"));
    let filtered = web.get("/admin/audit?source=login").await;
    assert!(filtered.body.contains(&ids[2]) && !filtered.body.contains(&ids[0]));

    let raw_api = app
        .http
        .get(app.url("/api/admin/audit"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let stored = stored_rows(&app.state.db).await;
    assert_eq!(stored.len(), 4);
    // The page itself carries the session's CSRF token for its forms; its table must not.
    let table = &page.body[page.body.find(r#"id="audit""#).unwrap()..];
    let table = &table[..table.find("</table>").unwrap()];
    for (what, text) in [
        ("the audit page's table", table.to_string()),
        ("the audit API", raw_api),
        ("the stored rows", stored.join("\n")),
    ] {
        for s in [secret, wrong, ADMIN_PASSWORD] {
            assert!(!text.contains(s), "{what} holds a secret ({s})");
        }
        assert!(
            !text.contains(&web.csrf().await),
            "{what} holds the CSRF token"
        );
    }
}
