//! Upstream secrets at rest (SPEC §11.7): with `secrets.key`, account secrets are stored
//! encrypted (their bytes appear nowhere in the SQLite file or its WAL), the proxy still
//! authenticates upstream with them, `tollgate secrets rotate` re-encrypts them under a new
//! key, plaintext rows are encrypted on the first start with a key, and a wrong or missing
//! key stops startup naming `secrets.key`.

use serde_json::{json, Value};
use tollgate::app::App;
use tollgate::clock::Clock;
use tollgate::config::{Config, Secret};
use tollgate::fake_upstream::FakeUpstream;
use tollgate::secrets::at_rest::generate_key;

use crate::helpers::*;
use crate::proxy::{chat_body, funded_key, messages_body};

const OA_SECRET: &str = "sk-oa-distinctive-7f3c9e1b52";
const AN_SECRET: &str = "sk-ant-distinctive-4d8a06e7c3";

fn with_key(key: &str, database: Option<String>) -> Options {
    let key = key.to_string();
    Options {
        database,
        tweak: Some(Box::new(move |c| c.secrets.key = Secret::new(key))),
        ..Default::default()
    }
}

/// Both fake upstream accounts with the distinctive secrets, and the test models' prices.
async fn wire(app: &TestApp, fake: &FakeUpstream) {
    for (name, provider, url, secret) in [
        ("oa", "openai", fake.openai_base_url(), OA_SECRET),
        ("an", "anthropic", fake.anthropic_base_url(), AN_SECRET),
    ] {
        let (s, v) = app
            .post(
                "/accounts",
                json!({"name": name, "provider": provider, "base_url": url, "api_key": secret}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    for (model, p) in [
        ("gpt-test", json!({"input": "2.5", "output": "10"})),
        ("claude-test", json!({"input": "3", "output": "15"})),
    ] {
        let (s, v) = app.put(&format!("/models/{model}"), p).await;
        assert_eq!(s, 200, "{v}");
    }
}

/// A chat and a messages call go through, and the upstream saw the plaintext secrets.
async fn proxy_authenticates(app: &TestApp, fake: &FakeUpstream, key: &str) {
    fake.clear_requests();
    for (path, body) in [
        ("/v1/chat/completions", chat_body(false)),
        ("/v1/messages", messages_body(false)),
    ] {
        let r = app
            .http
            .post(app.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}: {}", r.text().await.unwrap());
    }
    let seen = fake.requests();
    let auth: Vec<(Option<&str>, Option<&str>)> = seen
        .iter()
        .map(|r| (r.header("authorization"), r.header("x-api-key")))
        .collect();
    assert!(
        auth.contains(&(Some(&format!("Bearer {OA_SECRET}")), None)),
        "{auth:?}"
    );
    assert!(auth.iter().any(|(_, k)| *k == Some(AN_SECRET)), "{auth:?}");
}

/// The SQLite file and its `-wal` / `-shm` companions, concatenated (None on MySQL).
fn sqlite_bytes(db_url: &str) -> Option<Vec<u8>> {
    let path = db_url.strip_prefix("sqlite://")?;
    let mut all = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        if let Ok(b) = std::fs::read(format!("{path}{suffix}")) {
            println!("read {} bytes of tollgate.db{suffix}", b.len());
            all.extend(b);
        }
    }
    assert!(!all.is_empty(), "no SQLite file at {path}");
    Some(all)
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Every stored secret column: sealed, and not containing the secret.
async fn assert_sealed(app: &TestApp) -> Vec<String> {
    let stored = app.state.db.stored_secrets().await.unwrap();
    assert_eq!(stored.len(), 2);
    for (_, s) in &stored {
        assert!(s.starts_with("enc:v1:"), "{s}");
        assert!(!s.contains(OA_SECRET) && !s.contains(AN_SECRET), "{s}");
    }
    stored.into_iter().map(|(_, s)| s).collect()
}

fn assert_not_in_file(db_url: &str) {
    if let Some(bytes) = sqlite_bytes(db_url) {
        for s in [OA_SECRET, AN_SECRET] {
            assert!(!contains(&bytes, s), "`{s}` is in the SQLite file");
        }
    } else {
        println!("MySQL backend: the file check is SQLite's; the stored columns are checked");
    }
}

/// Build the gateway on `db_url` with `key` (None = no key) and return its startup error.
async fn startup_error(db_url: &str, key: Option<&str>) -> String {
    let journal = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.server.listen = "127.0.0.1:0".into();
    cfg.database.url = Secret::new(db_url);
    cfg.admin.api_token = Secret::new(ADMIN_TOKEN);
    cfg.recorder.journal_path = journal.path().display().to_string();
    if let Some(k) = key {
        cfg.secrets.key = Secret::new(k);
    }
    match App::build(cfg, Clock::System).await {
        Ok(_) => panic!("the gateway started with key {key:?}"),
        Err(e) => format!("{e:#}"),
    }
}

fn rotate(db_url: &str, old: Option<&str>, new: &str) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(["secrets", "rotate", "--config"])
        .arg(format!("{}/config.toml", env!("CARGO_MANIFEST_DIR")))
        .env("TOLLGATE_DATABASE__URL", db_url)
        .env("TOLLGATE_NEW_SECRETS_KEY", new)
        .env_remove("TOLLGATE_SECRETS__KEY");
    if let Some(k) = old {
        cmd.env("TOLLGATE_SECRETS__KEY", k);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn secrets_are_stored_encrypted_work_upstream_and_rotate() {
    let fake = FakeUpstream::start().await.unwrap();
    let (key1, key2) = (generate_key(), generate_key());
    let app = spawn_with(with_key(&key1, None)).await;
    wire(&app, &fake).await;
    let (_, _, key) = funded_key(&app, "sealed").await;
    proxy_authenticates(&app, &fake, &key).await;

    let (s, accounts) = app.get("/accounts").await;
    assert_eq!(s, 200);
    let text = accounts.to_string();
    assert!(
        !text.contains(OA_SECRET) && !text.contains(AN_SECRET),
        "{text}"
    );
    assert!(!text.contains("enc:v1:"), "{text}");
    let before = assert_sealed(&app).await;
    let db_url = app.db_url.clone();
    let guard = app.shutdown().await;
    assert_not_in_file(&db_url);

    // The wrong key, or none, cannot start the gateway on these rows.
    let wrong = startup_error(&db_url, Some(&key2)).await;
    assert!(wrong.contains("secrets.key"), "{wrong}");
    let none = startup_error(&db_url, None).await;
    assert!(none.contains("secrets.key"), "{none}");
    println!("wrong key: {wrong}\nno key: {none}");

    // Rotation needs the current key to read the rows.
    let (ok, _, err) = rotate(&db_url, Some(&generate_key()), &key2);
    assert!(!ok && err.contains("secrets.key"), "{err}");
    let (ok, out, err) = rotate(&db_url, Some(&key1), &key2);
    assert!(ok, "{out}{err}");
    assert!(out.contains("Re-encrypted 2 account secrets"), "{out}");
    println!("{}", out.trim());

    let old = startup_error(&db_url, Some(&key1)).await;
    assert!(old.contains("secrets.key"), "{old}");
    let app = spawn_with(with_key(&key2, Some(db_url.clone()))).await;
    let after = assert_sealed(&app).await;
    assert!(
        before.iter().all(|b| !after.contains(b)),
        "rotation rewrote every row"
    );
    proxy_authenticates(&app, &fake, &key).await;
    // A secret changed through the API is sealed too.
    let (_, list) = app.get("/accounts").await;
    let oa = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "oa")
        .cloned()
        .unwrap_or(Value::Null);
    let (s, v) = app
        .patch(
            &format!("/accounts/{}", oa["id"]),
            json!({"api_key": OA_SECRET}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_sealed(&app).await;
    proxy_authenticates(&app, &fake, &key).await;
    app.shutdown().await;
    assert_not_in_file(&db_url);
    drop(guard);
}

#[tokio::test]
async fn plaintext_secrets_are_encrypted_on_the_first_start_with_a_key() {
    let fake = FakeUpstream::start().await.unwrap();
    let app = spawn_app().await;
    wire(&app, &fake).await;
    let (_, _, key) = funded_key(&app, "plain").await;
    proxy_authenticates(&app, &fake, &key).await;
    let stored = app.state.db.stored_secrets().await.unwrap();
    let columns: Vec<&str> = stored.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(columns, vec![OA_SECRET, AN_SECRET]);
    let db_url = app.db_url.clone();
    let guard = app.shutdown().await;
    // Without a key the secret is in the file: the check below can see it.
    if let Some(bytes) = sqlite_bytes(&db_url) {
        assert!(contains(&bytes, OA_SECRET));
    }

    let key1 = generate_key();
    let app = spawn_with(with_key(&key1, Some(db_url.clone()))).await;
    assert_sealed(&app).await;
    proxy_authenticates(&app, &fake, &key).await;
    // The rewrite overwrote the plaintext in the file and the WAL was emptied.
    assert_not_in_file(&db_url);
    app.shutdown().await;
    assert_not_in_file(&db_url);
    drop(guard);
}

#[tokio::test]
async fn without_a_key_startup_warns_once() {
    let (db_url, _guard) = fresh_database(backend()).await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let bin = start_binary(&db_url, &[], log.reopen().unwrap().into()).await;
    drop(bin);
    let text = std::fs::read_to_string(log.path()).unwrap();
    let warnings = text
        .lines()
        .filter(|l| l.contains("`secrets.key` is not set"))
        .count();
    println!("warnings about secrets.key: {warnings}");
    assert_eq!(warnings, 1, "{text}");
}
