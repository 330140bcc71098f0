//! The typed vocabulary at the store boundary, on the backend under test: the store writes the
//! same strings as ever, and a value outside a vocabulary in the database is a decode error of
//! that row, never a silent default.

use tollgate::config::Secret;
use tollgate::domain::{PackageKind, Provider, Role};
use tollgate::store::accounts::AccountFields;
use tollgate::store::keys::NewKey;
use tollgate::store::packages::NewPackage;
use tollgate::store::usage::LogFilter;
use tollgate::store::{Db, Pool, StoreError};

use crate::helpers::*;

async fn exec(db: &Db, sql: &str) {
    match db.pool() {
        Pool::Sqlite(p) => sqlx::query(sql).execute(p).await.map(drop),
        Pool::MySql(p) => sqlx::query(sql).execute(p).await.map(drop),
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn text(db: &Db, sql: &str) -> String {
    match db.pool() {
        Pool::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await,
        Pool::MySql(p) => sqlx::query_scalar(sql).fetch_one(p).await,
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// `r` failed to decode a row, and the error names the vocabulary and the value.
#[track_caller]
fn refused<T: std::fmt::Debug>(case: &str, r: Result<T, StoreError>, expected: &str) {
    match r {
        Err(e @ StoreError::Db(sqlx::Error::ColumnDecode { .. })) => {
            assert!(e.to_string().contains(expected), "{case}: {e}")
        }
        other => panic!("{case}: expected a decode error naming {expected}, got {other:?}"),
    }
}

#[tokio::test]
async fn the_store_writes_the_same_strings_and_refuses_unknown_ones() {
    let app = spawn_app().await;
    let db = &app.state.db;
    let u = db.create_user("vocab", Role::User, None, 1).await.unwrap();
    let p = db
        .create_package(
            &NewPackage {
                name: "Q",
                kind: PackageKind::Quota,
                daily_quota: None,
                weekly_quota: None,
                monthly_quota: None,
                quota_total: Some(1_000),
                duration_days: 1,
            },
            1,
        )
        .await
        .unwrap();
    let g = db.grant_package(u.id, &p, 0, 86_400_000, 1).await.unwrap();
    let k = db
        .create_key(
            &NewKey {
                user_id: u.id,
                name: "k",
                key_prefix: "sk-vocab0000",
                key_hash: "vocab-hash",
                expires_at: None,
                allowed_models: &[],
                rpm_limit: None,
                tpm_limit: None,
                allowed_ips: &[],
                limits: Default::default(),
                max_concurrency: None,
            },
            1,
        )
        .await
        .unwrap();
    let a = db
        .create_account(
            &AccountFields {
                name: Some("acc".into()),
                provider: Some(Provider::Anthropic),
                base_url: Some("http://127.0.0.1:1".into()),
                secret: Some(Secret::new("s3cret")),
                ..Default::default()
            },
            1,
        )
        .await
        .unwrap();
    exec(
        db,
        &format!(
            "INSERT INTO request_logs (request_id, created_at, user_id, api_key_id, model, \
             endpoint, status, billing_status) VALUES ('r1', 1, {}, {}, 'm', '/v1/messages', \
             200, 'estimated')",
            u.id, k.id
        ),
    )
    .await;

    // What the store wrote is what the schema always held.
    for (sql, stored) in [
        (
            format!("SELECT role FROM users WHERE id = {}", u.id),
            "user",
        ),
        (
            format!("SELECT status FROM users WHERE id = {}", u.id),
            "active",
        ),
        (
            format!("SELECT type FROM packages WHERE id = {}", p.id),
            "quota",
        ),
        (
            format!("SELECT status FROM packages WHERE id = {}", p.id),
            "active",
        ),
        (
            format!("SELECT type FROM user_packages WHERE id = {}", g.id),
            "quota",
        ),
        (
            format!("SELECT status FROM user_packages WHERE id = {}", g.id),
            "active",
        ),
        (
            format!("SELECT status FROM api_keys WHERE id = {}", k.id),
            "active",
        ),
        (
            format!("SELECT provider FROM accounts WHERE id = {}", a.id),
            "anthropic",
        ),
        (
            format!("SELECT status FROM accounts WHERE id = {}", a.id),
            "active",
        ),
    ] {
        assert_eq!(text(db, &sql).await, stored, "{sql}");
    }
    // And it reads back typed.
    let logs = db.request_logs(&LogFilter::default(), 10).await.unwrap();
    assert_eq!(logs[0].billing_status.as_str(), "estimated");
    assert_eq!(
        db.get_account(a.id).await.unwrap().provider,
        Provider::Anthropic
    );

    // A value outside the vocabulary is refused by every read of that row.
    exec(db, "UPDATE users SET status = 'frozen'").await;
    refused(
        "user status",
        db.get_user(u.id).await,
        "unknown user status `frozen`",
    );
    refused(
        "user status in a key's auth",
        db.find_key_auth("vocab-hash").await,
        "unknown user status `frozen`",
    );
    exec(db, "UPDATE users SET status = 'active', role = 'root'").await;
    refused("role", db.get_user(u.id).await, "unknown role `root`");
    refused(
        "role in a page of users",
        db.list_users(None, None, 10).await,
        "unknown role `root`",
    );
    exec(db, "UPDATE api_keys SET status = 'deleted'").await;
    refused(
        "key status",
        db.get_key(k.id).await,
        "unknown key status `deleted`",
    );
    refused(
        "key status in a key's auth",
        db.find_key_auth("vocab-hash").await,
        "unknown key status `deleted`",
    );
    exec(db, "UPDATE packages SET type = 'unlimited'").await;
    refused(
        "package type",
        db.get_package(p.id).await,
        "unknown package type `unlimited`",
    );
    exec(
        db,
        "UPDATE packages SET type = 'quota', status = 'archived'",
    )
    .await;
    refused(
        "package status",
        db.list_packages(None, 10).await,
        "unknown package status `archived`",
    );
    exec(db, "UPDATE user_packages SET status = 'paused'").await;
    refused(
        "grant status",
        db.list_user_packages(u.id).await,
        "unknown grant status `paused`",
    );
    exec(
        db,
        "UPDATE user_packages SET status = 'active', type = 'Quota'",
    )
    .await;
    refused(
        "grant type (spelling is exact)",
        db.active_user_packages(&[u.id], 10).await,
        "unknown package type `Quota`",
    );
    exec(db, "UPDATE accounts SET provider = 'gemini'").await;
    refused(
        "provider",
        db.get_account(a.id).await,
        "unknown provider `gemini`",
    );
    exec(db, "UPDATE accounts SET provider = 'openai', status = ''").await;
    refused(
        "account status",
        db.list_accounts(None, 10).await,
        "unknown account status ``",
    );
    exec(db, "UPDATE request_logs SET billing_status = 'refunded'").await;
    refused(
        "billing status",
        db.request_logs(&LogFilter::default(), 10).await,
        "unknown billing status `refunded`",
    );
}
