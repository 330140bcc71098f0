//! The audit log (SPEC §11.6): every admin API write that succeeded, with who, what and the
//! fields sent, secrets masked; newest first, by cursor.

use serde_json::{json, Value};
use tollgate::store::{Db, Pool};

use crate::helpers::*;

/// The audit log's `fields` column as stored, every row, read straight from the database.
pub async fn stored_fields(db: &Db) -> Vec<String> {
    let sql = "SELECT fields FROM audit_log ORDER BY id";
    match db.pool() {
        Pool::Sqlite(p) => sqlx::query_scalar(sql).fetch_all(p).await.unwrap(),
        Pool::MySql(p) => sqlx::query_scalar(sql).fetch_all(p).await.unwrap(),
    }
}

#[tokio::test]
async fn admin_api_writes_are_audited_with_fields_and_never_a_secret() {
    let app = spawn_app().await;
    let secret = "sk-upstream-audit-SECRET-4242";
    let user = app.user("alice").await;
    let (s, acc) = app
        .post(
            "/accounts",
            json!({"name": "primary", "provider": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": secret}),
        )
        .await;
    assert_eq!(s, 201, "{acc}");
    let account = acc["id"].as_i64().unwrap();
    let (s, v) = app
        .patch(&format!("/users/{user}"), json!({"status": "disabled"}))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = app
        .put("/models/org/gpt-x", json!({"input": "1", "output": "2"}))
        .await;
    assert_eq!(s, 200, "{v}");
    // Refused writes change nothing and are not recorded.
    let (s, v) = app.post("/users", json!({"username": ""})).await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = app.get("/users").await;
    assert_eq!(s, 200);

    let rows = audit_entries(&app, 4).await;
    println!(
        "audit entries: {}",
        serde_json::to_string_pretty(&rows).unwrap()
    );
    assert_eq!(rows.len(), 4, "only the four successful writes: {rows:?}");
    let summary: Vec<(String, String, String, Value)> = rows
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap().to_string(),
                r["route"].as_str().unwrap().to_string(),
                r["target"].as_str().unwrap_or("").to_string(),
                r["fields"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "PUT".into(),
                "/api/admin/models/{*model}".into(),
                "org/gpt-x".into(),
                json!({"input": "1", "output": "2"})
            ),
            (
                "PATCH".into(),
                "/api/admin/users/{id}".into(),
                user.to_string(),
                json!({"status": "disabled"})
            ),
            (
                "POST".into(),
                "/api/admin/accounts".into(),
                account.to_string(),
                json!({"name": "primary", "provider": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "***"})
            ),
            (
                "POST".into(),
                "/api/admin/users".into(),
                user.to_string(),
                json!({"username": "alice"})
            ),
        ]
    );
    for r in &rows {
        assert_eq!(r["actor"], "admin-token");
        assert_eq!(r["actor_user_id"], Value::Null);
        assert_eq!(r["source"], "api");
        assert_eq!(r["outcome"], "success");
        assert!(r["created_at"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(rows[3]["status"], 201);
    assert_eq!(rows[3]["path"], "/api/admin/users");

    // The secret is in neither the API's answer nor the stored rows.
    let raw = app
        .http
        .get(app.url("/api/admin/audit"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!raw.contains(secret), "the audit API shows the secret");
    let stored = stored_fields(&app.state.db).await;
    assert_eq!(stored.len(), 4);
    for f in &stored {
        assert!(!f.contains(secret), "an audit row holds the secret: {f}");
    }
    assert!(stored.iter().any(|f| f.contains(r#""api_key":"***""#)));
}

#[tokio::test]
async fn the_audit_log_pages_newest_first_and_filters() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.user(&format!("user{i}")).await);
    }
    audit_entries(&app, 5).await;
    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let (s, v) = app.get(&format!("/audit?limit=2&cursor={cursor}")).await;
        assert_eq!(s, 200, "{v}");
        pages += 1;
        for r in v["data"].as_array().unwrap() {
            seen.push((
                r["id"].as_i64().unwrap(),
                r["target"].as_str().unwrap().parse::<i64>().unwrap(),
            ));
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    println!("pages of 2: {pages}; (audit id, user id) newest first: {seen:?}");
    // 2 + 2 + 1: the last page is short, so it has no cursor.
    assert_eq!(pages, 3);
    let audit_ids: Vec<i64> = seen.iter().map(|s| s.0).collect();
    let mut sorted = audit_ids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.dedup();
    assert_eq!(audit_ids, sorted, "strictly newest first, no repeats");
    let targets: Vec<i64> = seen.iter().map(|s| s.1).collect();
    assert_eq!(targets, ids.iter().rev().copied().collect::<Vec<_>>());

    let (s, v) = app
        .get("/audit?actor=admin-token&source=api&path=users")
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["data"].as_array().unwrap().len(), 5);
    let (s, v) = app.get("/audit?actor=someone-else").await;
    assert_eq!(s, 200);
    assert_eq!(v["data"], json!([]));
    let (s, v) = app.get("/audit?source=cron").await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["param"], "source");
    let (s, v) = app.get("/audit?cursor=abc").await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["param"], "cursor");
}
