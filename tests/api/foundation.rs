//! Foundation: config and CLI, migrations, the store story, the admin API, keys, first admin.

use std::process::Command;

use chrono::{Duration, TimeZone, Utc};
use serde_json::json;
use tollgate::billing::cost::Tokens;
use tollgate::billing::money::Usd;
use tollgate::config::Secret;
use tollgate::domain::{PackageKind, Provider, Role, UserStatus};
use tollgate::secrets::{sha256_hex, verify_password};
use tollgate::usage::{BillingStatus, UsageEvent, WindowStarts};

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

#[test]
fn migrations_are_in_step() {
    let names = |dir: &str| {
        let mut v: Vec<String> =
            std::fs::read_dir(format!("{}/migrations/{dir}", env!("CARGO_MANIFEST_DIR")))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                .collect();
        v.sort();
        v
    };
    let (a, b) = (names("sqlite"), names("mysql"));
    assert!(!a.is_empty());
    assert_eq!(
        a, b,
        "migrations/sqlite and migrations/mysql must hold the same versions and names"
    );
}

#[test]
fn cli_config_errors_name_the_key_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[billing]\ntimezone = \"Nowhere/City\"\n",
            "billing.timezone",
        ),
        ("[database]\nurl = \"postgres://x/y\"\n", "database.url"),
        ("[server]\nlisten = \"localhost\"\n", "server.listen"),
        ("[server]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n", "bogus"),
    ];
    for (toml, key) in cases {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        let out = Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{toml}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{toml}: {err}");
    }
    // Environment overrides are validated too.
    let path = dir.path().join("ok.toml");
    std::fs::write(&path, "").unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .env("TOLLGATE_BILLING__TIMEZONE", "Bad/Zone")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("billing.timezone"));
    // `serve` refuses to start on a bad config, too.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[redis]\nurl = \"http://nope\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("redis.url"));
}

#[test]
fn cli_prints_and_checks_the_default_config() {
    let out = Command::new(BIN)
        .arg("print-default-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        printed,
        std::fs::read_to_string(format!("{}/config.toml", env!("CARGO_MANIFEST_DIR"))).unwrap()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, &printed).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cli_migrate_and_reset_password() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sub/dir/t.db");
    let url = format!("sqlite://{}", db.display());
    let out = Command::new(BIN)
        .arg("migrate")
        .env("TOLLGATE_DATABASE__URL", &url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(db.exists(), "the SQLite file and its folders are created");
    // No admin yet: reset-password says so.
    let out = Command::new(BIN)
        .args(["admin", "reset-password"])
        .env("TOLLGATE_DATABASE__URL", &url)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no admin named `admin`"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let pool = tollgate::store::Db::connect(&url, 1).await.unwrap();
        pool.create_user("admin", Role::Admin, None, 0)
            .await
            .unwrap();
    });
    let out = Command::new(BIN)
        .args(["admin", "reset-password", "--password", "a-new-password-1"])
        .env("TOLLGATE_DATABASE__URL", &url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    rt.block_on(async {
        let pool = tollgate::store::Db::connect(&url, 1).await.unwrap();
        let u = pool.find_user_by_username("admin").await.unwrap().unwrap();
        assert!(verify_password(
            "a-new-password-1",
            u.password_hash.as_deref().unwrap()
        ));
    });
    let out = Command::new(BIN)
        .args(["admin", "reset-password"])
        .env("TOLLGATE_DATABASE__URL", &url)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    let pw = printed.trim().rsplit(' ').next().unwrap().to_string();
    assert!(pw.len() >= 16, "{printed}");
    rt.block_on(async {
        let pool = tollgate::store::Db::connect(&url, 1).await.unwrap();
        let u = pool.find_user_by_username("admin").await.unwrap().unwrap();
        assert!(verify_password(&pw, u.password_hash.as_deref().unwrap()));
    });
}

#[tokio::test]
async fn first_admin_is_created_once_with_the_configured_password() {
    let app = spawn_app().await;
    let admin = app
        .state
        .db
        .find_user_by_username("admin")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(admin.role.as_str(), "admin");
    assert!(verify_password(
        "initial-admin-pass",
        admin.password_hash.as_deref().unwrap()
    ));
    assert_eq!(app.state.db.count_admins().await.unwrap(), 1);
    // A second start on the same database creates nothing.
    let again = tollgate::app::ensure_first_admin(&app.state.db, &app.state.config, 0)
        .await
        .unwrap();
    assert!(again.is_none());
    assert_eq!(app.state.db.count_admins().await.unwrap(), 1);
}

#[tokio::test]
async fn first_admin_gets_a_random_password_when_none_is_configured() {
    let (url, _g) = fresh_database(backend()).await;
    let mut cfg = tollgate::config::Config::default();
    cfg.database.url = tollgate::config::Secret::new(url);
    let db = tollgate::app::connect(&cfg).await.unwrap();
    let (user, pw) = tollgate::app::ensure_first_admin(&db, &cfg, 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user, "admin");
    assert!(pw.len() >= 16);
    let u = db.find_user_by_username("admin").await.unwrap().unwrap();
    assert!(verify_password(&pw, u.password_hash.as_deref().unwrap()));
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["database"], "ok");
    let expect_redis = if app.redis_prefix.is_some() {
        "ok"
    } else {
        "not configured"
    };
    assert_eq!(v["redis"], expect_redis);
    // Every response carries a request id.
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert!(r.headers().get("x-request-id").is_some());
}

/// The store conformance story: the same on every backend.
#[tokio::test]
async fn store_story() {
    let app = spawn_app().await;
    let db = &app.state.db;
    let u = db
        .create_user("story", Role::User, None, 1_000)
        .await
        .unwrap();
    assert_eq!(
        (
            u.username.as_str(),
            u.role.as_str(),
            u.status.as_str(),
            u.created_at
        ),
        ("story", "user", "active", 1_000)
    );
    assert!(matches!(
        db.create_user("story", Role::User, None, 1).await,
        Err(tollgate::store::StoreError::Conflict)
    ));
    assert_eq!(db.get_user(u.id).await.unwrap().username, "story");
    let d = db
        .set_user_status(u.id, UserStatus::Disabled, 2_000)
        .await
        .unwrap();
    assert_eq!((d.status.as_str(), d.updated_at), ("disabled", 2_000));
    assert!(matches!(
        db.get_user(999_999).await,
        Err(tollgate::store::StoreError::NotFound)
    ));
    // LIKE wildcards in a search are literal.
    db.create_user("a_b%c", Role::User, None, 1).await.unwrap();
    db.create_user("axbyc", Role::User, None, 1).await.unwrap();
    let found = db.list_users(Some("_b%"), None, 10).await.unwrap();
    assert_eq!(
        found
            .iter()
            .map(|u| u.username.as_str())
            .collect::<Vec<_>>(),
        ["a_b%c"]
    );

    let p = db
        .create_package(
            &tollgate::store::packages::NewPackage {
                name: "Pro",
                kind: PackageKind::Subscription,
                daily_quota: Some(5_000_000_000),
                weekly_quota: None,
                monthly_quota: Some(100_000_000_000),
                quota_total: None,
                duration_days: 30,
            },
            1,
        )
        .await
        .unwrap();
    assert_eq!(
        (p.daily_quota, p.weekly_quota, p.monthly_quota),
        (Some(5_000_000_000), None, Some(100_000_000_000))
    );
    let g = db
        .grant_package(u.id, &p, 10, 10 + 30 * 86_400_000, 1)
        .await
        .unwrap();
    assert_eq!(
        (
            g.daily_quota,
            g.daily_used,
            g.daily_window_start,
            g.status.as_str()
        ),
        (Some(5_000_000_000), 0, None, "active")
    );
    assert_eq!(db.active_user_packages(&[u.id], 11).await.unwrap().len(), 1);
    assert_eq!(
        db.active_user_packages(&[u.id], 10 + 30 * 86_400_000)
            .await
            .unwrap()
            .len(),
        0,
        "expired"
    );

    let k = db
        .create_key(
            &tollgate::store::keys::NewKey {
                user_id: u.id,
                name: "k",
                key_prefix: "sk-abcdefghi",
                key_hash: &sha256_hex("sk-secret"),
                expires_at: None,
                allowed_models: &["m1".to_string()],
                rpm_limit: Some(5),
                tpm_limit: None,
                allowed_ips: &[],
                limits: Default::default(),
                max_concurrency: None,
            },
            1,
        )
        .await
        .unwrap();
    assert_eq!(k.allowed_models(), vec!["m1".to_string()]);
    let auth = db
        .find_key_auth(&sha256_hex("sk-secret"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (auth.id, auth.user_status.as_str(), auth.rpm_limit),
        (k.id, "disabled", Some(5))
    );
    assert!(db
        .find_key_auth(&sha256_hex("sk-other"))
        .await
        .unwrap()
        .is_none());
    let dup = tollgate::store::keys::NewKey {
        user_id: u.id,
        name: "k2",
        key_prefix: "x",
        key_hash: &sha256_hex("sk-secret"),
        expires_at: None,
        allowed_models: &[],
        rpm_limit: None,
        tpm_limit: None,
        allowed_ips: &[],
        limits: Default::default(),
        max_concurrency: None,
    };
    assert!(matches!(
        db.create_key(&dup, 1).await,
        Err(tollgate::store::StoreError::Conflict)
    ));

    let a = db
        .create_account(
            &tollgate::store::accounts::AccountFields {
                name: Some("acc".into()),
                provider: Some(Provider::OpenAi),
                base_url: Some("http://127.0.0.1:1/v1".into()),
                secret: Some(Secret::new("s3cret")),
                models: Some(vec!["m1".into()]),
                priority: Some(5),
                weight: Some(2),
                status: None,
                ..Default::default()
            },
            1,
        )
        .await
        .unwrap();
    assert_eq!(
        (
            a.priority,
            a.weight,
            a.secret.expose(),
            a.serves("m1"),
            a.serves("m2")
        ),
        (5, 2, "s3cret", true, false)
    );
    let a2 = db
        .update_account(
            a.id,
            &tollgate::store::accounts::AccountFields {
                weight: Some(7),
                ..Default::default()
            },
            2,
        )
        .await
        .unwrap();
    assert_eq!((a2.weight, a2.priority, a2.name.as_str()), (7, 5, "acc"));

    let price = tollgate::billing::cost::Price {
        input: 2_500_000_000,
        output: 10_000_000_000,
        cache_read: None,
        cache_write: Some(1),
    };
    db.upsert_price("org/model-1", &price, 1).await.unwrap();
    let again = tollgate::billing::cost::Price { input: 1, ..price };
    let got = db.upsert_price("org/model-1", &again, 2).await.unwrap();
    assert_eq!(
        (
            got.input_price,
            got.output_price,
            got.cache_read_price,
            got.cache_write_price
        ),
        (1, 10_000_000_000, None, Some(1))
    );
    assert_eq!(db.list_prices().await.unwrap().len(), 1);
}

#[tokio::test]
async fn admin_api_requires_the_token() {
    let app = spawn_app().await;
    let r = app
        .http
        .get(app.url("/api/admin/users"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");
    let r = app
        .http
        .get(app.url("/api/admin/users"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (s, _) = app.get("/users").await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn admin_api_validates_and_changes_nothing_on_rejection() {
    let app = spawn_app().await;
    let count = || async { app.state.db.count_users(None).await.unwrap() };
    let before = count().await;
    for (body, param) in [
        (json!({"username": ""}), "username"),
        (json!({"username": "x", "role": "root"}), "role"),
        (json!({"username": "x", "password": "short"}), "password"),
        (json!({"username": 5}), "username"),
        (json!({"user": "x"}), ""),
    ] {
        let (s, v) = app.post("/users", body.clone()).await;
        assert_eq!(s, 400, "{body} → {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(param),
            "{v}"
        );
    }
    // Malformed JSON.
    let r = app
        .http
        .post(app.url("/api/admin/users"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(count().await, before);

    let uid = app.user("alice").await;
    let (s, v) = app.post("/users", json!({"username": "alice"})).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(count().await, before + 1);

    // Unknown ids → 404.
    for path in [
        "/users/999999",
        "/packages/999999",
        "/keys/999999",
        "/accounts/999999",
        "/users/abc",
    ] {
        let (s, v) = app.get(path).await;
        assert_eq!(s, 404, "{path} {v}");
        assert_eq!(v["error"]["type"], "not_found_error");
    }
    let (s, _) = app
        .patch("/user-packages/999999", json!({"status": "cancelled"}))
        .await;
    assert_eq!(s, 404);
    let (s, _) = app.post("/users/999999/keys", json!({"name": "k"})).await;
    assert_eq!(s, 404);

    // Packages.
    for (body, param) in [
        (
            json!({"name": "p", "type": "subscription", "duration_days": 30}),
            "daily_quota",
        ),
        (
            json!({"name": "p", "type": "quota", "duration_days": 30}),
            "quota_total",
        ),
        (
            json!({"name": "p", "type": "gold", "quota_total": "1", "duration_days": 30}),
            "type",
        ),
        (
            json!({"name": "p", "type": "quota", "quota_total": "-1", "duration_days": 30}),
            "quota_total",
        ),
        (
            json!({"name": "p", "type": "quota", "quota_total": "0.0000000001", "duration_days": 30}),
            "quota_total",
        ),
        (
            json!({"name": "p", "type": "quota", "quota_total": "5", "duration_days": 0}),
            "duration_days",
        ),
        (
            json!({"name": "", "type": "quota", "quota_total": "5", "duration_days": 3}),
            "name",
        ),
    ] {
        let (s, v) = app.post("/packages", body.clone()).await;
        assert_eq!(s, 400, "{body} → {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(param),
            "{body} → {v}"
        );
    }
    let (_, v) = app.get("/packages").await;
    assert_eq!(v["data"].as_array().unwrap().len(), 0);

    // Grants: unknown package, bad time.
    let (s, v) = app
        .post(
            &format!("/users/{uid}/packages"),
            json!({"package_id": 424242}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["param"], "package_id");
    let pid = app
        .package(json!({"name": "q", "type": "quota", "quota_total": 10, "duration_days": 30}))
        .await;
    let (s, v) = app
        .post(
            &format!("/users/{uid}/packages"),
            json!({"package_id": pid, "starts_at": "yesterday"}),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["param"], "starts_at");
    let (_, v) = app.get(&format!("/users/{uid}/packages")).await;
    assert_eq!(v["data"].as_array().unwrap().len(), 0);

    // Accounts.
    for (body, param) in [
        (
            json!({"name": "a", "provider": "azure", "base_url": "https://x", "api_key": "k"}),
            "provider",
        ),
        (
            json!({"name": "a", "provider": "openai", "base_url": "ftp://x", "api_key": "k"}),
            "base_url",
        ),
        (
            json!({"name": "a", "provider": "openai", "base_url": "https://x"}),
            "api_key",
        ),
        (
            json!({"name": "a", "provider": "openai", "base_url": "https://x", "api_key": "k", "weight": 0}),
            "weight",
        ),
    ] {
        let (s, v) = app.post("/accounts", body.clone()).await;
        assert_eq!(s, 400, "{body} → {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(param),
            "{v}"
        );
    }
    // Prices.
    let (s, v) = app
        .put("/models/m", json!({"input": "abc", "output": "1"}))
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = app
        .put("/models/m", json!({"input": "-1", "output": "1"}))
        .await;
    assert_eq!(s, 400);
    let (_, v) = app.get("/models").await;
    assert_eq!(v["data"].as_array().unwrap().len(), 0);
    // Status values.
    let (s, v) = app
        .patch(&format!("/users/{uid}"), json!({"status": "banned"}))
        .await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["param"], "status");
    // Limits.
    let (s, v) = app.get("/users?limit=0").await;
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("limit")));
}

#[tokio::test]
async fn admin_api_round_trip_and_pagination() {
    let app = spawn_app().await;
    for i in 0..5 {
        app.user(&format!("u{i}")).await;
    }
    // 6 users with the admin; pages of 4 then 2.
    let (s, p1) = app.get("/users?limit=4").await;
    assert_eq!(s, 200);
    assert_eq!(p1["data"].as_array().unwrap().len(), 4);
    let cur = p1["next_cursor"].as_str().unwrap().to_string();
    let (_, p2) = app.get(&format!("/users?limit=4&cursor={cur}")).await;
    assert_eq!(p2["data"].as_array().unwrap().len(), 2);
    assert!(p2["next_cursor"].is_null());
    let (_, s) = app.get("/users?q=u3").await;
    assert_eq!(s["data"][0]["username"], "u3");
    assert_eq!(s["data"].as_array().unwrap().len(), 1);

    let pid = app
        .package(json!({"name": "Pro", "type": "subscription", "daily_quota": "5", "weekly_quota": 20, "monthly_quota": "60.5", "duration_days": 30}))
        .await;
    let (_, p) = app.get(&format!("/packages/{pid}")).await;
    assert_eq!(p["daily_quota"], "5.000000000");
    assert_eq!(p["monthly_quota"], "60.500000000");
    assert!(p["quota_total"].is_null());
    assert_eq!(p["type"], "subscription");
    let (s, p) = app
        .patch(&format!("/packages/{pid}"), json!({"status": "disabled"}))
        .await;
    assert_eq!((s, p["status"].as_str()), (200, Some("disabled")));
    let uid = app.user("bob").await;
    let (s, v) = app
        .post(
            &format!("/users/{uid}/packages"),
            json!({"package_id": pid}),
        )
        .await;
    assert_eq!(s, 400, "a disabled package cannot be granted: {v}");
    app.patch(&format!("/packages/{pid}"), json!({"status": "active"}))
        .await;
    let gid = app.grant(uid, pid, None).await;
    let (s, g) = app
        .patch(
            &format!("/user-packages/{gid}"),
            json!({"status": "cancelled"}),
        )
        .await;
    assert_eq!(
        (s, g["status"].as_str(), g["active"].as_bool()),
        (200, Some("cancelled"), Some(false))
    );
    let (_, u) = app.get(&format!("/users/{uid}")).await;
    assert!(
        u["subscription_daily_balance"].is_null(),
        "a cancelled grant counts for nothing: {u}"
    );
    app.patch(
        &format!("/user-packages/{gid}"),
        json!({"status": "active"}),
    )
    .await;
    let (_, u) = app.get(&format!("/users/{uid}")).await;
    assert_eq!(u["subscription_daily_balance"], "5.000000000");
    assert_eq!(u["packages"][0]["windows"][0]["window"], "daily");

    // Disable a user.
    let (s, u) = app
        .patch(&format!("/users/{uid}"), json!({"status": "disabled"}))
        .await;
    assert_eq!((s, u["status"].as_str()), (200, Some("disabled")));
}

#[tokio::test]
async fn keys_are_shown_once_and_stored_hashed() {
    let app = spawn_app().await;
    let uid = app.user("carol").await;
    let (s, v) = app
        .post(
            &format!("/users/{uid}/keys"),
            json!({"name": "laptop", "allowed_models": ["gpt-test"], "rpm_limit": 60}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let secret = v["key"].as_str().unwrap().to_string();
    assert!(secret.starts_with("sk-") && secret.len() >= 46);
    assert!(secret[3..].chars().all(|c| c.is_ascii_alphanumeric()));
    assert_eq!(v["key_prefix"], &secret[..12]);
    assert_eq!(v["allowed_models"], json!(["gpt-test"]));
    let id = v["id"].as_i64().unwrap();
    let stored = app.state.db.get_key(id).await.unwrap();
    assert_eq!(stored.key_hash, sha256_hex(&secret));
    for path in [
        "/keys".to_string(),
        format!("/keys/{id}"),
        format!("/users/{uid}"),
    ] {
        let (_, body) = app.get(&path).await;
        let text = body.to_string();
        assert!(!text.contains(&secret), "{path} leaks the secret");
        assert!(!text.contains(&stored.key_hash), "{path} leaks the hash");
    }
    let (s, k) = app
        .patch(&format!("/keys/{id}"), json!({"status": "revoked"}))
        .await;
    assert_eq!((s, k["status"].as_str()), (200, Some("revoked")));
    let (s, _) = app
        .patch(&format!("/keys/{id}"), json!({"status": "paused"}))
        .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn account_secrets_never_leave_the_server() {
    let app = spawn_app().await;
    let secret = "sk-upstream-very-secret-value";
    let (s, a) = app
        .post("/accounts", json!({"name": "main", "provider": "openai", "base_url": "https://api.example.test/v1", "api_key": secret, "models": ["gpt-test"], "priority": 3, "weight": 2}))
        .await;
    assert_eq!(s, 201);
    let id = a["id"].as_i64().unwrap();
    let (_, l) = app.get("/accounts").await;
    let (_, one) = app.get(&format!("/accounts/{id}")).await;
    let (_, p) = app
        .patch(
            &format!("/accounts/{id}"),
            json!({"priority": 9, "api_key": "sk-rotated-secret"}),
        )
        .await;
    for body in [&a, &l, &one, &p] {
        let t = body.to_string();
        assert!(
            !t.contains(secret) && !t.contains("sk-rotated-secret"),
            "{t}"
        );
    }
    assert_eq!(p["priority"], 9);
    assert_eq!(p["total_cost"], "0.000000000");
    assert_eq!(
        app.state.db.get_account(id).await.unwrap().secret.expose(),
        "sk-rotated-secret"
    );
}

/// `GET /api/admin/users` balances use *effective used*: a charge in yesterday's daily
/// window does not reduce today's daily balance, but does reduce the weekly and quota ones.
#[tokio::test]
async fn user_balances_use_effective_used() {
    let start = Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap();
    let now = start + Duration::days(2);
    let clock = tollgate::clock::Clock::manual(now);
    let app = spawn_with(Options {
        clock: Some(clock),
        ..Default::default()
    })
    .await;
    let uid = app.user("dave").await;
    let sub = app
        .package(json!({"name": "S", "type": "subscription", "daily_quota": "5", "weekly_quota": "20", "duration_days": 30}))
        .await;
    let quota = app
        .package(json!({"name": "Q", "type": "quota", "quota_total": "100", "duration_days": 365}))
        .await;
    let g = app.grant(uid, sub, Some(start)).await;
    let gq = app.grant(uid, quota, Some(start)).await;
    let (kid, _) = app.key(uid, json!({"name": "k"})).await;

    // A charge of 1.5 USD made yesterday (a real settlement, dated yesterday).
    let yesterday = now - Duration::days(1);
    let day0 = Utc.with_ymd_and_hms(2026, 3, 3, 0, 0, 0).unwrap();
    let ev = |id: &str, up: i64, cost: i64, daily: i64| UsageEvent {
        request_id: id.into(),
        created_at_ms: yesterday.timestamp_millis(),
        day: "2026-03-03".into(),
        user_id: uid,
        api_key_id: kid,
        account_id: Some(1),
        user_package_id: Some(up),
        windows: Some(WindowStarts {
            daily,
            weekly: start.timestamp_millis(),
            monthly: start.timestamp_millis(),
        }),
        model: "m".into(),
        endpoint: "/v1/chat/completions".into(),
        stream: false,
        status: 200,
        tokens: Tokens::default(),
        cost_nanos: cost,
        billing_status: BillingStatus::Complete,
        latency_ms: 1,
        ttfb_ms: None,
        error: None,
        reserved: 0,
        key_windows: None,
        key_reserved: 0,
    };
    app.state
        .db
        .settle(
            &[
                ev("r1", g, 1_500_000_000, day0.timestamp_millis()),
                ev("r2", gq, 250_000_000, day0.timestamp_millis()),
            ],
            0,
        )
        .await
        .unwrap();
    let up = app.state.db.get_user_package(g).await.unwrap();
    assert_eq!(
        (up.daily_used, up.daily_window_start),
        (1_500_000_000, Some(day0.timestamp_millis()))
    );

    let (_, users) = app.get("/users").await;
    let dave = users["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "dave")
        .unwrap();
    assert_eq!(
        dave["subscription_daily_balance"], "5.000000000",
        "yesterday's usage does not count today"
    );
    assert_eq!(dave["subscription_weekly_balance"], "18.500000000");
    assert!(dave["subscription_monthly_balance"].is_null());
    assert_eq!(dave["quota_balance"], "99.750000000");
    let (_, admin) = app.get("/users?q=admin").await;
    assert!(admin["data"][0]["quota_balance"].is_null());

    // The same charge made today does count.
    app.state
        .db
        .settle(
            &[ev(
                "r3",
                g,
                2_000_000_000,
                Utc.with_ymd_and_hms(2026, 3, 4, 0, 0, 0)
                    .unwrap()
                    .timestamp_millis(),
            )],
            0,
        )
        .await
        .unwrap();
    let (_, one) = app.get(&format!("/users/{uid}")).await;
    assert_eq!(one["subscription_daily_balance"], "3.000000000");
    assert_eq!(one["subscription_weekly_balance"], "16.500000000");
    assert_eq!(
        Usd(1_500_000_000 + 2_000_000_000).to_string(),
        one["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == g)
            .unwrap()["total_used"]
    );
}

#[tokio::test]
async fn prices_route_takes_slashes() {
    let app = spawn_app().await;
    let (s, v) = app
        .put(
            "/models/openrouter/anthropic/claude-x",
            json!({"input": 3, "output": "15.5"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model"], "openrouter/anthropic/claude-x");
    assert_eq!(v["input"], "3.000000000");
    assert_eq!(v["output"], "15.500000000");
    assert!(v["cache_read"].is_null());
    let (s, v) = app.get("/models/openrouter/anthropic/claude-x").await;
    assert_eq!((s, v["output"].as_str()), (200, Some("15.500000000")));
}
