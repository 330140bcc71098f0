//! Test harness: the real app on a random port, on a fresh SQLite file or a fresh MySQL
//! database (+ Redis with a unique key prefix), chosen by `TOLLGATE_TEST_BACKEND`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tollgate::app::App;
use tollgate::clock::Clock;
use tollgate::config::{Config, Secret};
use tollgate::fake_upstream::FakeUpstream;
use tollgate::state::AppState;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    MySql,
}

/// Must a missing service fail the test rather than skip it?
pub fn services_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("TOLLGATE_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

pub fn backend() -> Backend {
    match std::env::var("TOLLGATE_TEST_BACKEND").as_deref() {
        Ok("mysql") => Backend::MySql,
        _ => Backend::Sqlite,
    }
}

/// The Redis URL for tests that need Redis whatever the backend; None (with a loud message)
/// when unset and not required.
pub fn redis_url() -> Option<String> {
    match std::env::var("TOLLGATE_TEST_REDIS_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if services_required() {
                panic!("TOLLGATE_TEST_REDIS_URL is not set, and CI requires Redis tests to run");
            }
            eprintln!("SKIPPING: TOLLGATE_TEST_REDIS_URL is not set (Redis test not run)");
            None
        }
    }
}

/// A connection to the test Redis and a key prefix of this test's own; None as `redis_url`.
pub async fn redis_with_prefix() -> Option<(redis::aio::ConnectionManager, String)> {
    let url = redis_url()?;
    let client = redis::Client::open(url).expect("redis url");
    let conn = redis::aio::ConnectionManager::new(client)
        .await
        .expect("redis");
    Some((conn, format!("tgtest:{}:", uuid::Uuid::new_v4().simple())))
}

fn mysql_url() -> String {
    std::env::var("TOLLGATE_TEST_MYSQL_URL").unwrap_or_else(|_| {
        panic!("TOLLGATE_TEST_BACKEND=mysql needs TOLLGATE_TEST_MYSQL_URL (e.g. mysql://root@127.0.0.1:3306/tollgate_test)")
    })
}

/// A fresh, empty database: (url, guard that removes it).
pub struct DbGuard {
    _dir: Option<tempfile::TempDir>,
    mysql_drop: Option<(String, String)>,
}

impl Drop for DbGuard {
    fn drop(&mut self) {
        if let Some((admin_url, name)) = self.mysql_drop.take() {
            // Drop the per-test database on a thread of its own (we may be inside a runtime).
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    use sqlx::Connection;
                    if let Ok(mut c) = sqlx::MySqlConnection::connect(&admin_url).await {
                        // Never hang a test on another pool's metadata lock.
                        let _ = sqlx::query("SET SESSION lock_wait_timeout = 5")
                            .execute(&mut c)
                            .await;
                        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
                            .execute(&mut c)
                            .await;
                    }
                });
            })
            .join();
        }
    }
}

pub async fn fresh_database(backend: Backend) -> (String, DbGuard) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}/tollgate.db", dir.path().display());
            (
                url,
                DbGuard {
                    _dir: Some(dir),
                    mysql_drop: None,
                },
            )
        }
        Backend::MySql => {
            use sqlx::Connection;
            let admin_url = mysql_url();
            let name = format!("tg_{}", uuid::Uuid::new_v4().simple());
            let mut c = sqlx::MySqlConnection::connect(&admin_url)
                .await
                .unwrap_or_else(|e| panic!("cannot reach MySQL at TOLLGATE_TEST_MYSQL_URL: {e}"));
            sqlx::query(&format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
                .execute(&mut c)
                .await
                .unwrap();
            let base = admin_url
                .rsplit_once('/')
                .map(|(b, _)| b.to_string())
                .unwrap();
            (
                format!("{base}/{name}"),
                DbGuard {
                    _dir: None,
                    mysql_drop: Some((admin_url, name)),
                },
            )
        }
    }
}

pub struct TestApp {
    pub base: String,
    pub db_url: String,
    pub state: AppState,
    pub http: reqwest::Client,
    pub redis_prefix: Option<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _journal: tempfile::TempDir,
    db_guard: Option<DbGuard>,
}

/// A change to the test configuration before the app is built.
pub type Tweak = Box<dyn FnOnce(&mut Config) + Send>;

pub struct Options {
    pub backend: Backend,
    pub clock: Option<Clock>,
    pub timezone: String,
    pub redis: bool,
    /// Share an existing database (e.g. a second instance) instead of a fresh one.
    pub database: Option<String>,
    /// Share a Redis key prefix with another instance.
    pub redis_prefix: Option<String>,
    pub tweak: Option<Tweak>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backend: backend(),
            clock: None,
            timezone: "UTC".into(),
            // MySQL runs go with Redis (the production shape); SQLite runs in process.
            redis: backend() == Backend::MySql,
            database: None,
            redis_prefix: None,
            tweak: None,
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_with(Options::default()).await
}

pub async fn spawn_with(opts: Options) -> TestApp {
    let (url, guard) = match opts.database.clone() {
        Some(u) => (
            u,
            DbGuard {
                _dir: None,
                mysql_drop: None,
            },
        ),
        None => fresh_database(opts.backend).await,
    };
    let journal = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.server.listen = "127.0.0.1:0".into();
    cfg.database.url = Secret::new(url.clone());
    cfg.admin.api_token = Secret::new(ADMIN_TOKEN);
    cfg.admin.initial_password = Secret::new("initial-admin-pass");
    cfg.billing.timezone = opts.timezone.clone();
    cfg.recorder.journal_path = journal.path().display().to_string();
    cfg.recorder.flush_interval_ms = 10;
    cfg.server.shutdown_grace_secs = 10;
    let mut redis_prefix = None;
    if opts.redis {
        let url = redis_url()
            .unwrap_or_else(|| panic!("this test runs with Redis: set TOLLGATE_TEST_REDIS_URL"));
        cfg.redis.url = Secret::new(url);
        let p = opts
            .redis_prefix
            .clone()
            .unwrap_or_else(|| format!("tgtest:{}:", uuid::Uuid::new_v4().simple()));
        cfg.redis.key_prefix = p.clone();
        redis_prefix = Some(p);
    }
    if let Some(t) = opts.tweak {
        t(&mut cfg);
    }
    cfg.validate().unwrap();
    let clock = opts.clock.unwrap_or(Clock::System);
    let app = App::build(cfg, clock).await.expect("app builds");
    let state = app.state.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(app.serve(listener, async move {
        let _ = stop_rx.await;
    }));
    TestApp {
        base: format!("http://{addr}"),
        db_url: url,
        state,
        http: reqwest::Client::new(),
        redis_prefix,
        stop: Some(stop),
        handle: Some(handle),
        _journal: journal,
        db_guard: Some(guard),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Admin API call with the admin token; returns (status, JSON body).
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, self.url(&format!("/api/admin{path}")))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.admin(reqwest::Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.admin(reqwest::Method::POST, path, Some(body)).await
    }
    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.admin(reqwest::Method::PATCH, path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.admin(reqwest::Method::PUT, path, Some(body)).await
    }

    /// Create a user; returns its id.
    pub async fn user(&self, name: &str) -> i64 {
        let (s, v) = self.post("/users", json!({"username": name})).await;
        assert_eq!(s, 201, "{v}");
        v["id"].as_i64().unwrap()
    }

    /// Create a package; returns its id.
    pub async fn package(&self, body: Value) -> i64 {
        let (s, v) = self.post("/packages", body).await;
        assert_eq!(s, 201, "{v}");
        v["id"].as_i64().unwrap()
    }

    /// Grant a package; returns the grant id.
    pub async fn grant(&self, user: i64, package: i64, starts_at: Option<DateTime<Utc>>) -> i64 {
        let mut body = json!({"package_id": package});
        if let Some(t) = starts_at {
            body["starts_at"] = json!(t.to_rfc3339());
        }
        let (s, v) = self.post(&format!("/users/{user}/packages"), body).await;
        assert_eq!(s, 201, "{v}");
        v["id"].as_i64().unwrap()
    }

    /// Create a key; returns (id, secret).
    pub async fn key(&self, user: i64, body: Value) -> (i64, String) {
        let (s, v) = self.post(&format!("/users/{user}/keys"), body).await;
        assert_eq!(s, 201, "{v}");
        (
            v["id"].as_i64().unwrap(),
            v["key"].as_str().unwrap().to_string(),
        )
    }

    /// Register both protocols of a fake upstream as accounts, and prices for the test models.
    pub async fn wire_upstream(&self, fake: &FakeUpstream) -> (i64, i64) {
        let (s, a) = self
            .post(
                "/accounts",
                json!({"name": "oa", "provider": "openai", "base_url": fake.openai_base_url(), "api_key": "sk-upstream-openai-secret"}),
            )
            .await;
        assert_eq!(s, 201, "{a}");
        let (s, b) = self
            .post(
                "/accounts",
                json!({"name": "an", "provider": "anthropic", "base_url": fake.anthropic_base_url(), "api_key": "sk-ant-upstream-secret"}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        for (model, p) in [
            (
                "gpt-test",
                json!({"input": "2.5", "output": "10", "cache_read": "1.25"}),
            ),
            (
                "claude-test",
                json!({"input": "3", "output": "15", "cache_read": "0.3", "cache_write": "3.75"}),
            ),
        ] {
            let (s, v) = self.put(&format!("/models/{model}"), p).await;
            assert_eq!(s, 200, "{v}");
        }
        (a["id"].as_i64().unwrap(), b["id"].as_i64().unwrap())
    }

    /// Wait until the recorder has applied `n` request logs (or panic after 20 s).
    pub async fn wait_for_logs(&self, n: i64) {
        for _ in 0..400 {
            let l = self.state.db.ledger().await.unwrap();
            if l.request_logs.requests >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let l = self.state.db.ledger().await.unwrap();
        panic!("only {} of {n} requests recorded", l.request_logs.requests);
    }

    /// Graceful shutdown; returns once the recorder has drained. The database outlives it
    /// while the returned guard lives.
    pub async fn shutdown(mut self) -> DbGuard {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
        self.db_guard.take().expect("database guard")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The real `tollgate serve` binary in a child process (killed on drop).
pub struct Binary {
    pub child: std::process::Child,
    pub base: String,
    /// Its recorder journal folder.
    pub journal: tempfile::TempDir,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Binary {
    /// SIGTERM, then wait for the exit status.
    pub async fn sigterm(&mut self) -> std::process::ExitStatus {
        std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.wait_exit().await
    }

    /// Wait (up to 30 s) for the process to exit.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let t0 = std::time::Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "tollgate did not exit"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Start `tollgate serve` with the shipped `config.toml` on a free port against `db_url`,
/// with extra `TOLLGATE_*` settings and stderr sent to `stderr`; returns once it answers
/// `/readyz`.
pub async fn start_binary(
    db_url: &str,
    env: &[(&str, String)],
    stderr: std::process::Stdio,
) -> Binary {
    let journal = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.arg("serve")
        .arg("--config")
        .arg(format!("{}/config.toml", env!("CARGO_MANIFEST_DIR")))
        .env("TOLLGATE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("TOLLGATE_DATABASE__URL", db_url)
        .env("TOLLGATE_ADMIN__API_TOKEN", ADMIN_TOKEN)
        .env("TOLLGATE_ADMIN__INITIAL_PASSWORD", "initial-admin-pass")
        .env("TOLLGATE_RECORDER__JOURNAL_PATH", journal.path())
        .stdout(std::process::Stdio::null())
        .stderr(stderr);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let b = Binary {
        child: cmd.spawn().unwrap(),
        base: format!("http://127.0.0.1:{port}"),
        journal,
    };
    let http = reqwest::Client::new();
    let t0 = std::time::Instant::now();
    while http.get(format!("{}/readyz", b.base)).send().await.is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "tollgate did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b
}

/// A gateway's admin API over HTTP (in-process app or real binary alike), for tests that
/// talk to a gateway they did not build as a [`TestApp`].
pub struct Admin {
    pub base: String,
    pub http: reqwest::Client,
}

impl Admin {
    pub fn new(base: &str) -> Admin {
        Admin {
            base: base.to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// The call with the admin token; panics unless it succeeds. Returns the JSON body.
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let r = self
            .http
            .request(method, format!("{}/api/admin{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert!(status.is_success(), "{path}: {v}");
        v
    }

    /// A user with a grant of `package` (created first) and `keys` keys: (user, grant, secrets).
    pub async fn funded(&self, name: &str, package: Value, keys: usize) -> (i64, i64, Vec<String>) {
        use reqwest::Method;
        let u = self
            .call(Method::POST, "/users", json!({"username": name}))
            .await;
        let uid = u["id"].as_i64().unwrap();
        let p = self.call(Method::POST, "/packages", package).await;
        let g = self
            .call(
                Method::POST,
                &format!("/users/{uid}/packages"),
                json!({"package_id": p["id"]}),
            )
            .await;
        let mut secrets = Vec::new();
        for i in 0..keys {
            let k = self
                .call(
                    Method::POST,
                    &format!("/users/{uid}/keys"),
                    json!({"name": format!("k{i}")}),
                )
                .await;
            secrets.push(k["key"].as_str().unwrap().to_string());
        }
        (uid, g["id"].as_i64().unwrap(), secrets)
    }
}

/// Seed a running gateway over its admin API, as an operator would: both fake upstream
/// accounts (with `account_secret`), prices for `gpt-test` and `claude-test`, a user with a
/// 1000 USD quota package, and a key created with `key_body`. Returns the key's secret.
pub async fn seed_over_http(
    base: &str,
    fake: &FakeUpstream,
    account_secret: &str,
    key_body: Value,
) -> String {
    let admin = Admin::new(base);
    use reqwest::Method;
    for (name, provider, url) in [
        ("oa", "openai", fake.openai_base_url()),
        ("an", "anthropic", fake.anthropic_base_url()),
    ] {
        admin.call(
            Method::POST,
            "/accounts",
            json!({"name": name, "provider": provider, "base_url": url, "api_key": account_secret}),
        )
        .await;
    }
    admin
        .call(
            Method::PUT,
            "/models/gpt-test",
            json!({"input": "2.5", "output": "10", "cache_read": "1.25"}),
        )
        .await;
    admin
        .call(
            Method::PUT,
            "/models/claude-test",
            json!({"input": "3", "output": "15", "cache_read": "0.3", "cache_write": "3.75"}),
        )
        .await;
    let package =
        json!({"name": "big", "type": "quota", "quota_total": "1000", "duration_days": 3});
    let (uid, _, _) = admin.funded("seeded", package, 0).await;
    let k = admin
        .call(Method::POST, &format!("/users/{uid}/keys"), key_body)
        .await;
    k["key"].as_str().unwrap().to_string()
}

/// Entries are written off the response path: wait until there are `n` (or panic after 10 s).
pub async fn audit_entries(app: &TestApp, n: usize) -> Vec<Value> {
    for _ in 0..200 {
        let (s, v) = app.get("/audit?limit=1000").await;
        assert_eq!(s, 200, "{v}");
        let rows = v["data"].as_array().unwrap().clone();
        if rows.len() >= n {
            return rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, v) = app.get("/audit?limit=1000").await;
    panic!("expected {n} audit entries, got {v}");
}
