//! The admin pages against the real app over HTTP, without a browser: sessions, CSRF,
//! throttling, escaping, languages, and that the figures are the API's.

use chrono::{Duration, TimeZone, Utc};
use serde_json::{json, Value};
use tollgate::billing::money::Usd;
use tollgate::clock::Clock;
use tollgate::fake_upstream::FakeUpstream;
use tollgate::secrets::sha256_hex;

use crate::helpers::*;
use crate::web::*;

/// Every page of the UI (ids that exist in `seeded`).
const PAGES: &[&str] = &[
    "/admin",
    "/admin/users",
    "/admin/users/1",
    "/admin/packages",
    "/admin/keys",
    "/admin/accounts",
    "/admin/accounts/1",
    "/admin/models",
    "/admin/usage",
    "/admin/logs",
    "/admin/audit",
];

pub async fn chat(app: &TestApp, key: &str) -> u16 {
    app.http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Wait until the real-time stats have counted `n` requests today (they follow the database).
pub async fn wait_for_stats(app: &TestApp, n: i64) {
    for _ in 0..400 {
        let (_, s) = app.get("/stats/today").await;
        if s["total"]["requests"].as_i64().unwrap_or(0) >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the stats did not reach {n} requests");
}

/// An app with an upstream account (id 1) and prices, so every page has something to show.
async fn seeded(opts: Options) -> (TestApp, FakeUpstream) {
    let app = spawn_with(opts).await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    (app, fake)
}

async fn user_count(app: &TestApp) -> usize {
    let (_, v) = app.get("/users").await;
    v["data"].as_array().unwrap().len()
}

#[tokio::test]
async fn pages_need_a_session_or_the_admin_token() {
    let (app, _fake) = seeded(Options::default()).await;
    let web = Web::new(&app.base);
    for path in PAGES {
        let r = web.get(path).await;
        assert_eq!(r.status, 303, "{path} without a session");
        let next = url::form_urlencoded::byte_serialize(path.as_bytes()).collect::<String>();
        assert_eq!(r.location(), format!("/admin/login?next={next}"), "{path}");
    }
    // Writes without a session go to the login page and change nothing.
    let before = user_count(&app).await;
    let r = web
        .post("/admin/users", &[("username", "sneaky"), ("csrf", "x")])
        .await;
    assert_eq!((r.status, r.location()), (303, "/admin/login"));
    assert_eq!(user_count(&app).await, before);
    // A forged session cookie is no session.
    web.set_cookie("tollgate_session", "forged-session-id");
    assert_eq!(web.get("/admin/users").await.status, 303);
    // The admin API too: nothing without credentials.
    let r = app
        .http
        .get(app.url("/api/admin/users"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The admin token opens the pages (no cookie, so no CSRF needed for its writes).
    for path in PAGES {
        let r = app
            .http
            .get(app.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} with the admin token");
    }
    let r = app
        .http
        .get(app.url("/admin/users"))
        .bearer_auth("wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // After logging in, every page renders.
    web.forget_cookie("tollgate_session");
    web.login().await;
    for path in PAGES {
        let r = web.get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    // The login page sends a signed-in admin on.
    let r = web.get("/admin/login?next=/admin/keys").await;
    assert_eq!((r.status, r.location()), (303, "/admin/keys"));
}

#[tokio::test]
async fn login_sets_a_hardened_session_and_logout_ends_it() {
    let app = spawn_with(Options {
        tweak: Some(Box::new(|c| {
            c.server.public_url = "https://gateway.example".into();
        })),
        ..Default::default()
    })
    .await;
    let web = Web::new(&app.base);
    // Wrong password: 401, a clear message, no session.
    let r = web.try_login(ADMIN_USER, "wrong-password").await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("Wrong username or password."));
    assert!(web.cookie("tollgate_session").is_none());
    // The login form itself is protected: without its token nothing is checked.
    let r = web
        .post(
            "/admin/login",
            &[
                ("username", ADMIN_USER),
                ("password", ADMIN_PASSWORD),
                ("csrf", "nope"),
            ],
        )
        .await;
    assert_eq!(r.status, 403);
    assert!(web.cookie("tollgate_session").is_none());

    let r = web.try_login(ADMIN_USER, ADMIN_PASSWORD).await;
    assert_eq!((r.status, r.location()), (303, "/admin"));
    let cookie = r
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("tollgate_session="))
        .expect("session cookie");
    for attr in [
        "HttpOnly",
        "SameSite=Lax",
        "Secure",
        "Path=/",
        "Max-Age=43200",
    ] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    let id = web.cookie("tollgate_session").unwrap();
    assert!(id.len() >= 43, "a 256-bit id");
    // Only the id's SHA-256 is stored.
    assert!(app.state.db.get_session(&id).await.unwrap().is_none());
    let stored = app.state.db.get_session(&sha256_hex(&id)).await.unwrap();
    let stored = stored.expect("session row");
    assert_eq!(stored.expires_at - stored.created_at, 12 * 3_600_000);
    assert!(stored.csrf_token.len() >= 43);

    // `next` is followed only inside /admin.
    let other = Web::new(&app.base);
    let form = other.get("/admin/login?next=/admin/models").await;
    assert_eq!(
        input_value(&form.body, "next").as_deref(),
        Some("/admin/models")
    );
    let csrf = input_value(&form.body, "csrf").unwrap();
    let r = other
        .post(
            "/admin/login",
            &[
                ("username", ADMIN_USER),
                ("password", ADMIN_PASSWORD),
                ("csrf", &csrf),
                ("next", "https://evil.example/"),
            ],
        )
        .await;
    assert_eq!((r.status, r.location()), (303, "/admin"));

    // A user who is not an admin cannot sign in, even with the right password.
    app.post(
        "/users",
        json!({"username": "plain", "role": "user", "password": "plain-password"}),
    )
    .await;
    let third = Web::new(&app.base);
    assert_eq!(third.try_login("plain", "plain-password").await.status, 401);

    // Logout (a form with the CSRF token) deletes the session and the cookie.
    let r = web.submit("/admin/logout", &[]).await;
    assert_eq!(
        (r.status, r.location()),
        (303, "/admin/login?notice=logged_out")
    );
    assert!(r
        .set_cookies()
        .iter()
        .any(|c| c.starts_with("tollgate_session=;") && c.contains("Max-Age=0")));
    assert!(app
        .state
        .db
        .get_session(&sha256_hex(&id))
        .await
        .unwrap()
        .is_none());
    // The old id no longer works even if a client kept it.
    web.set_cookie("tollgate_session", &id);
    assert_eq!(web.get("/admin/users").await.status, 303);
    let page = web.get("/admin/login?notice=logged_out").await;
    assert!(page.body.contains("You are signed out."));

    // Over plain http (no https public URL) the cookie is not Secure.
    let plain = spawn_app().await;
    let w = Web::new(&plain.base);
    let r = w.try_login(ADMIN_USER, ADMIN_PASSWORD).await;
    let c = r
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("tollgate_session="))
        .unwrap();
    assert!(c.contains("HttpOnly") && c.contains("SameSite=Lax") && !c.contains("Secure"));
}

#[tokio::test]
async fn sessions_expire_when_idle_and_at_their_absolute_limit() {
    let start = Utc.with_ymd_and_hms(2026, 3, 2, 8, 0, 0).unwrap();
    let clock = Clock::manual(start);
    let app = spawn_with(Options {
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    // Idle: 60 minutes by default.
    let web = Web::new(&app.base);
    web.login().await;
    clock.set(start + Duration::minutes(59));
    assert_eq!(web.get("/admin/users").await.status, 200, "59 idle minutes");
    clock.set(start + Duration::minutes(59 + 59));
    assert_eq!(web.get("/admin/users").await.status, 200, "activity renews");
    clock.set(start + Duration::minutes(59 + 59 + 61));
    let r = web.get("/admin/users").await;
    assert_eq!(r.status, 303, "61 idle minutes end the session");
    assert!(r.location().starts_with("/admin/login"));
    // The API honours the same expiry.
    let api = app
        .http
        .get(app.url("/api/admin/users"))
        .header(
            "cookie",
            format!(
                "tollgate_session={}",
                web.cookie("tollgate_session").unwrap()
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);

    // Absolute: 12 hours, however active.
    let t0 = start + Duration::hours(1);
    clock.set(t0);
    let web = Web::new(&app.base);
    web.login().await;
    let mut t = t0;
    while t + Duration::minutes(50) < t0 + Duration::hours(12) {
        t += Duration::minutes(50);
        clock.set(t);
        assert_eq!(web.get("/admin").await.status, 200, "at {t}");
    }
    clock.set(t0 + Duration::hours(12));
    assert_eq!(web.get("/admin").await.status, 303, "12 hours end it");

    // Configured limits are honoured.
    let short = spawn_with(Options {
        clock: Some(clock.clone()),
        tweak: Some(Box::new(|c| {
            c.admin.session_idle_minutes = 5;
            c.admin.session_max_hours = 1;
        })),
        ..Default::default()
    })
    .await;
    let now = clock.now();
    let web = Web::new(&short.base);
    web.login().await;
    clock.set(now + Duration::minutes(6));
    assert_eq!(web.get("/admin").await.status, 303);
}

#[tokio::test]
async fn forms_without_the_right_csrf_token_are_refused_and_change_nothing() {
    let (app, _fake) = seeded(Options::default()).await;
    let uid = app.user("victim").await;
    let (kid, _) = app.key(uid, json!({"name": "k"})).await;
    let web = Web::new(&app.base);
    web.login().await;
    let token = web.csrf().await;
    let users = user_count(&app).await;

    let attempts: Vec<(String, Vec<(&str, &str)>)> = vec![
        ("/admin/users".into(), vec![("username", "forged")]),
        (
            "/admin/packages".into(),
            vec![
                ("name", "forged"),
                ("type", "quota"),
                ("quota_total", "1"),
                ("duration_days", "1"),
            ],
        ),
        (
            format!("/admin/keys/{kid}/status"),
            vec![("status", "revoked")],
        ),
        (
            format!("/admin/users/{uid}/status"),
            vec![("status", "disabled")],
        ),
        (format!("/admin/users/{uid}/keys"), vec![("name", "forged")]),
        (
            "/admin/accounts/1/status".into(),
            vec![("status", "disabled")],
        ),
        (
            "/admin/models".into(),
            vec![("model", "gpt-test"), ("input", "99"), ("output", "99")],
        ),
        ("/admin/logout".into(), vec![]),
    ];
    for (path, fields) in &attempts {
        for csrf in [None, Some("wrong-token"), Some("")] {
            let mut form = fields.clone();
            if let Some(c) = csrf {
                form.push(("csrf", c));
            }
            let r = web.post(path, &form).await;
            assert_eq!(r.status, 403, "{path} with csrf {csrf:?}");
            assert!(r.body.contains("nothing was changed"), "{}", r.body);
        }
    }
    // Nothing changed.
    assert_eq!(user_count(&app).await, users);
    let (_, pk) = app.get("/packages").await;
    assert!(pk["data"].as_array().unwrap().is_empty());
    let (_, k) = app.get(&format!("/keys/{kid}")).await;
    assert_eq!(k["status"], "active");
    let (_, u) = app.get(&format!("/users/{uid}")).await;
    assert_eq!(u["status"], "active");
    assert_eq!(u["keys"].as_array().unwrap().len(), 1);
    let (_, a) = app.get("/accounts/1").await;
    assert_eq!(a["status"], "active");
    let (_, m) = app.get("/models/gpt-test").await;
    assert_eq!(m["input"], "2.500000000");
    assert_eq!(web.get("/admin").await.status, 200, "still signed in");

    // With the token the same form works.
    let r = web
        .post("/admin/users", &[("username", "real"), ("csrf", &token)])
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(user_count(&app).await, users + 1);

    // The JSON API with a session cookie needs the token in a header for writes.
    let cookie = format!(
        "tollgate_session={}",
        web.cookie("tollgate_session").unwrap()
    );
    let post = |csrf: Option<&str>| {
        let mut r = app
            .http
            .post(app.url("/api/admin/users"))
            .header("cookie", &cookie)
            .json(&json!({"username": format!("api-{}", csrf.unwrap_or("none"))}));
        if let Some(c) = csrf {
            r = r.header("x-csrf-token", c);
        }
        r.send()
    };
    assert_eq!(post(None).await.unwrap().status(), 403);
    assert_eq!(post(Some("wrong")).await.unwrap().status(), 403);
    assert_eq!(user_count(&app).await, users + 1);
    assert_eq!(post(Some(&token)).await.unwrap().status(), 201);
    let r = app
        .http
        .get(app.url("/api/admin/users"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "reads need no token");
}

#[tokio::test]
async fn login_is_throttled_per_address_and_never_locks_the_admin_out() {
    let start = Utc.with_ymd_and_hms(2026, 3, 2, 8, 0, 0).unwrap();
    let clock = Clock::manual(start);
    // The test's connections come through a trusted proxy (loopback), so each client is the
    // address in its X-Forwarded-For.
    let app = spawn_with(Options {
        clock: Some(clock.clone()),
        tweak: Some(Box::new(|c| {
            c.server.trusted_proxies =
                tollgate::client_addr::CidrList::parse(&["127.0.0.0/8"]).unwrap();
        })),
        ..Default::default()
    })
    .await;
    app.post(
        "/users",
        json!({"username": "second", "role": "admin", "password": "second-password"}),
    )
    .await;
    let from = |addr: &str| {
        let mut w = Web::new(&app.base);
        w.forwarded_for = Some(addr.to_string());
        w
    };
    let mut now = start;

    // Address A: three failures are free, then each one makes A wait twice as long.
    let a = from("203.0.113.5");
    for i in 0..3 {
        let r = a.try_login(ADMIN_USER, &format!("guess-{i}")).await;
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let mut waits = Vec::new();
    for i in 3..6 {
        // While A waits, even the right password from A is refused, unchecked.
        let r = a.try_login(ADMIN_USER, ADMIN_PASSWORD).await;
        assert_eq!(r.status, 429, "{}", r.body);
        let wait: i64 = r.header("retry-after").parse().unwrap();
        assert!(r.body.contains(&format!(
            "Too many failed sign-ins from this address. Try again in {wait} s."
        )));
        assert!(a.cookie("tollgate_session").is_none());
        waits.push(wait);
        if i == 5 {
            break;
        }
        now += Duration::seconds(wait);
        clock.set(now);
        let r = a.try_login(ADMIN_USER, &format!("guess-{i}")).await;
        assert_eq!(r.status, 401, "{}", r.body);
    }
    println!("login waits after failures 3, 4, 5 from one address: {waits:?} s");
    assert_eq!(waits, [1, 2, 4]);
    // Other accounts from A wait too (the delay is A's)…
    assert_eq!(a.try_login("second", "second-password").await.status, 429);

    // …but five failures from A never lock the admin out from B.
    let b = from("198.51.100.7");
    let r = b.try_login(ADMIN_USER, ADMIN_PASSWORD).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(b.cookie("tollgate_session").is_some());
    // Nor with a client-side X-Forwarded-For chain: the entry the proxy added counts.
    let forged = from("203.0.113.5, 198.51.100.8");
    assert_eq!(
        forged.try_login(ADMIN_USER, ADMIN_PASSWORD).await.status,
        303
    );

    // Parallel guesses cannot outrun the count: of eight at once from a fresh address, the
    // three free ones are checked and the rest refused.
    let c = from("192.0.2.44");
    let tries = (0..8).map(|i| {
        let c = &c;
        async move { c.try_login(ADMIN_USER, &format!("p-{i}")).await.status }
    });
    let mut statuses = futures_util::future::join_all(tries).await;
    statuses.sort_unstable();
    println!("eight parallel failures from one address: {statuses:?}");
    assert_eq!(statuses, [401, 401, 401, 429, 429, 429, 429, 429]);

    // An IPv6 client is one address per /64: hopping inside it does not reset the count.
    for (i, addr) in ["2001:db8:7::1", "2001:db8:7::2", "2001:db8:7::3"]
        .iter()
        .enumerate()
    {
        let r = from(addr).try_login(ADMIN_USER, &format!("v6-{i}")).await;
        assert_eq!(r.status, 401);
    }
    assert_eq!(
        from("2001:db8:7::99")
            .try_login(ADMIN_USER, ADMIN_PASSWORD)
            .await
            .status,
        429
    );
    assert_eq!(
        from("2001:db8:8::1")
            .try_login(ADMIN_USER, ADMIN_PASSWORD)
            .await
            .status,
        303
    );

    // In Chinese too.
    let mut zh = from("203.0.113.5");
    zh.accept_language = Some("zh-CN".into());
    let r = zh.try_login("second", "second-password").await;
    assert_eq!(r.status, 429);
    assert!(r.body.contains("此地址登录失败次数过多"));

    // Once A's wait is over, the right password from A works and A starts afresh.
    now += Duration::seconds(waits[2]);
    clock.set(now);
    assert_eq!(a.try_login(ADMIN_USER, ADMIN_PASSWORD).await.status, 303);
}

#[tokio::test]
async fn names_with_markup_render_inert() {
    let (app, _fake) = seeded(Options::default()).await;
    let evil = r#"<script>alert("x")</script>'q"#;
    let escaped = "&#60;script&#62;alert(&#34;x&#34;)&#60;/script&#62;&#39;q";
    let uid = app.user(evil).await;
    let pid = app
        .package(json!({"name": evil, "type": "quota", "quota_total": "5", "duration_days": 30}))
        .await;
    app.grant(uid, pid, None).await;
    app.key(uid, json!({"name": evil, "allowed_models": [evil]}))
        .await;
    app.post(
        "/accounts",
        json!({"name": evil, "provider": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "k", "models": [evil]}),
    )
    .await;
    app.put(
        &format!(
            "/models/{}",
            url::form_urlencoded::byte_serialize(evil.as_bytes()).collect::<String>()
        ),
        json!({"input": "1", "output": "1"}),
    )
    .await;
    let web = Web::new(&app.base);
    web.login().await;
    for path in [
        "/admin/users".to_string(),
        format!("/admin/users/{uid}"),
        "/admin/packages".into(),
        "/admin/keys".into(),
        "/admin/accounts".into(),
        "/admin/accounts/3".into(),
        "/admin/models".into(),
        "/admin/usage".into(),
        "/admin/logs".into(),
        format!(
            "/admin/users?q={}",
            url::form_urlencoded::byte_serialize(evil.as_bytes()).collect::<String>()
        ),
    ] {
        let r = web.get(&path).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(!r.body.contains("<script>alert"), "{path} has raw markup");
        assert!(!r.body.contains(r#"alert("x")"#), "{path} has raw quotes");
        assert!(r.body.contains(escaped), "{path} lacks the escaped name");
    }
    // A form sent back with an error shows the typed value escaped too.
    let r = web
        .submit("/admin/users", &[("username", &format!(" {evil}"))])
        .await;
    assert_eq!(r.status, 400);
    assert!(!r.body.contains("<script>alert"));
}

#[tokio::test]
async fn language_follows_accept_language_then_the_switch_which_is_remembered() {
    let (app, _fake) = seeded(Options::default()).await;
    let mut web = Web::new(&app.base);
    web.login().await;
    // Default: English.
    let r = web.get("/admin/users").await;
    assert!(r.body.contains(r#"<html lang="en">"#));
    assert!(r.body.contains("Quota balance") && r.body.contains("Subscription daily balance"));
    // Accept-Language picks Chinese.
    web.accept_language = Some("zh-CN,zh;q=0.9,en;q=0.8".into());
    let r = web.get("/admin/users").await;
    assert!(r.body.contains(r#"<html lang="zh-CN">"#));
    assert!(r.body.contains("额度余额") && r.body.contains("订阅日余额"));
    assert!(!r.body.contains("Quota balance"));
    // ?lang= overrides it and is remembered in a cookie.
    let r = web.get("/admin/users?lang=en").await;
    assert!(r.body.contains("Quota balance"));
    assert!(r
        .set_cookies()
        .iter()
        .any(|c| c.starts_with("tollgate_lang=en;") && c.contains("Path=/")));
    let r = web.get("/admin/packages").await;
    assert!(
        r.body.contains(r#"<html lang="en">"#),
        "the cookie wins over Accept-Language"
    );
    let r = web.get("/admin/packages?lang=zh-CN").await;
    assert!(r.body.contains("新建套餐"));
    web.accept_language = None;
    let r = web.get("/admin/users").await;
    assert!(r.body.contains("额度余额"));
    // The language links keep the page and its query.
    assert!(
        r.body.contains(r#"href="/admin/users?lang=en""#),
        "{}",
        r.body
    );
    let r = web.get("/admin/users?q=ad").await;
    assert!(r
        .body
        .contains(r#"href="/admin/users?q=ad&#38;lang=zh-CN""#));
    // Every page, the login page and error pages declare UTF-8, in both languages.
    let anon = Web::new(&app.base);
    for lang in ["en", "zh-CN"] {
        let mut paths: Vec<String> = PAGES.iter().map(|p| format!("{p}?lang={lang}")).collect();
        paths.push(format!("/admin/users/999999?lang={lang}"));
        for path in &paths {
            let r = web.get(path).await;
            assert_utf8(&r, path);
        }
        let r = anon.get(&format!("/admin/login?lang={lang}")).await;
        assert_utf8(&r, "/admin/login");
    }
    let r = web.get("/admin/users/999999?lang=en").await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("There is nothing here."));
}

fn assert_utf8(r: &Page, path: &str) {
    assert_eq!(
        r.header("content-type"),
        "text/html; charset=utf-8",
        "{path}"
    );
    assert!(r.body.starts_with("<!doctype html>"), "{path}");
    assert!(r.body.contains(r#"<meta charset="utf-8">"#), "{path}");
    assert!(r.body.contains(r#"<meta name="viewport""#), "{path}");
    assert_eq!(r.header("x-frame-options"), "DENY", "{path}");
    assert!(
        r.header("content-security-policy")
            .contains("script-src 'self'"),
        "{path}"
    );
}

/// Compare every user row of the page with the API, to the nano-dollar.
async fn assert_page_matches_api(app: &TestApp, web: &Web, query: &str) -> usize {
    let page = web.get(&format!("/admin/users{query}")).await;
    assert_eq!(page.status, 200);
    let (_, api) = app.get("/users?limit=1000").await;
    let (_, stats) = app.get("/stats/today").await;
    let rows = rows(&page.body, "user-id");
    for (id, cells) in &rows {
        let u = api["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["id"].as_i64().map(|i| i.to_string()).as_deref() == Some(id.as_str()))
            .unwrap_or_else(|| panic!("user {id} not in the API"));
        for col in [
            "quota_balance",
            "subscription_daily_balance",
            "subscription_weekly_balance",
            "subscription_monthly_balance",
        ] {
            assert_eq!(
                money(&cells[col]),
                api_money(&u[col]),
                "user {} {col}: page {:?}, API {}",
                u["username"],
                cells[col],
                u[col]
            );
        }
        assert_eq!(cells["username"], u["username"].as_str().unwrap());
        let today = api_money(&stats["by"]["user"][id]["cost"]).unwrap_or(Usd(0));
        assert_eq!(money(&cells["today_cost"]), Some(today), "user {id} today");
    }
    rows.len()
}

#[tokio::test]
async fn users_page_balances_equal_the_api_to_the_nano_dollar() {
    let (app, _fake) = seeded(Options::default()).await;
    let quota = app
        .package(
            json!({"name": "quota 10", "type": "quota", "quota_total": "10", "duration_days": 30}),
        )
        .await;
    let small_quota = app
        .package(json!({"name": "quota 0.5", "type": "quota", "quota_total": "0.5", "duration_days": 30}))
        .await;
    let sub = app
        .package(json!({"name": "sub", "type": "subscription", "daily_quota": "1", "weekly_quota": "5", "monthly_quota": "20", "duration_days": 30}))
        .await;
    let tiny = app
        .package(json!({"name": "tiny", "type": "subscription", "daily_quota": "0.0001", "duration_days": 30}))
        .await;
    let mut keys = Vec::new();
    let mut plan = Vec::new();
    for (name, grants, requests) in [
        ("alice", vec![quota], 2),
        ("bob", vec![sub], 1),
        ("carol", vec![sub, small_quota], 3),
        ("dave", vec![], 0),
        ("erin", vec![quota], 0),
        ("frank", vec![tiny], 1),
    ] {
        let uid = app.user(name).await;
        let mut grant_ids = Vec::new();
        for g in grants {
            grant_ids.push(app.grant(uid, g, None).await);
        }
        let (_, key) = app.key(uid, json!({"name": format!("{name}-key")})).await;
        keys.push((name, key.clone(), requests));
        plan.push((name, uid, grant_ids));
    }
    // erin's grant is cancelled: no balance at all.
    let erin_grant = plan[4].2[0];
    app.patch(
        &format!("/user-packages/{erin_grant}"),
        json!({"status": "cancelled"}),
    )
    .await;
    let mut total = 0;
    for (_, key, n) in &keys {
        for _ in 0..*n {
            assert_eq!(chat(&app, key).await, 200);
            total += 1;
        }
    }
    app.wait_for_logs(total).await;
    wait_for_stats(&app, total).await;
    // frank's only window is over its limit now.
    assert_eq!(chat(&app, &keys[5].1).await, 429);

    let web = Web::new(&app.base);
    web.login().await;
    assert_eq!(assert_page_matches_api(&app, &web, "").await, 7);

    // The expected figures, spelled out (one request costs $0.00011).
    let page = web.get("/admin/users").await;
    let by_name = |name: &str| {
        rows(&page.body, "user-id")
            .into_iter()
            .map(|(_, c)| c)
            .find(|c| c["username"] == name)
            .unwrap()
    };
    assert_eq!(by_name("alice")["quota_balance"], "$9.99978");
    assert_eq!(by_name("alice")["subscription_daily_balance"], "—");
    assert_eq!(by_name("bob")["subscription_daily_balance"], "$0.99989");
    assert_eq!(by_name("bob")["subscription_weekly_balance"], "$4.99989");
    assert_eq!(by_name("bob")["subscription_monthly_balance"], "$19.99989");
    assert_eq!(by_name("carol")["subscription_daily_balance"], "$0.99967");
    assert_eq!(by_name("carol")["quota_balance"], "$0.50");
    assert_eq!(by_name("dave")["quota_balance"], "—");
    assert_eq!(by_name("erin")["quota_balance"], "—");
    assert_eq!(by_name("frank")["subscription_daily_balance"], "-$0.00001");
    assert_eq!(by_name("carol")["today_cost"], "$0.00033");
    assert_eq!(by_name("carol")["keys"], "1 / 1");
    assert!(page
        .body
        .contains(r#"class="num neg" data-col="subscription_daily_balance">-$0.00001"#));

    // The user pages agree too.
    for (name, uid, _) in &plan {
        let (_, api) = app.get(&format!("/users/{uid}")).await;
        let p = web.get(&format!("/admin/users/{uid}")).await;
        let shown = |id: &str| text_by_id(&p.body, id).unwrap();
        assert_eq!(
            money(&shown("balance-quota")),
            api_money(&api["quota_balance"]),
            "{name}"
        );
        assert_eq!(
            money(&shown("balance-daily")),
            api_money(&api["subscription_daily_balance"]),
            "{name}"
        );
    }

    // Search and pagination keep the same figures.
    assert_eq!(assert_page_matches_api(&app, &web, "?q=ar").await, 1);
    let p = web.get("/admin/users?q=ar").await;
    assert!(p.body.contains(">carol</a>"));
    assert_eq!(assert_page_matches_api(&app, &web, "?per_page=3").await, 3);
    let p1 = web.get("/admin/users?per_page=3").await;
    assert!(p1
        .body
        .contains(r#"href="/admin/users?per_page=3&#38;page=2""#));
    assert_eq!(
        assert_page_matches_api(&app, &web, "?per_page=3&page=3").await,
        1
    );
    let p3 = web.get("/admin/users?per_page=3&page=3").await;
    assert!(p3.body.contains(">frank</a>"));
    assert!(p3.body.contains("3 / 3"));
    assert_eq!(
        assert_page_matches_api(&app, &web, "?q=nobody-at-all").await,
        0
    );
}

#[tokio::test]
async fn user_page_grants_keys_and_recent_requests_work_through_forms() {
    // Billing in Shanghai; the clock at 2026-03-02 10:30 local.
    let now = Utc.with_ymd_and_hms(2026, 3, 2, 2, 30, 0).unwrap();
    let (app, _fake) = seeded(Options {
        timezone: "Asia/Shanghai".into(),
        clock: Some(Clock::manual(now)),
        ..Default::default()
    })
    .await;
    let uid = app.user("grace").await;
    let sub = app
        .package(json!({"name": "Team plan", "type": "subscription", "daily_quota": "2", "monthly_quota": "30", "duration_days": 30}))
        .await;
    let web = Web::new(&app.base);
    web.login().await;
    let page = format!("/admin/users/{uid}");

    // Grant through the form (starts now).
    let r = web
        .submit(
            &format!("{page}/packages"),
            &[("package_id", &sub.to_string()), ("starts_at", "")],
        )
        .await;
    assert_eq!(
        (r.status, r.location()),
        (303, format!("{page}?notice=granted").as_str())
    );
    let (_, grants) = app.get(&format!("{}/packages", &page[6..])).await;
    let grant_id = grants["data"][0]["id"].as_i64().unwrap();
    // A bad start time is refused with a message, and nothing is granted.
    let r = web
        .submit(
            &format!("{page}/packages"),
            &[("package_id", &sub.to_string()), ("starts_at", "soon")],
        )
        .await;
    assert_eq!(r.status, 422);
    assert!(r.body.contains("Starts at: is not a date and time"));
    let (_, again) = app.get(&format!("/users/{uid}/packages")).await;
    assert_eq!(again["data"].as_array().unwrap().len(), 1);

    // Create a key through the form: its secret is shown once, in the answer to the post,
    // and travels nowhere else (no cookie, no URL, no cache).
    let r = web
        .submit(
            &format!("{page}/keys"),
            &[
                ("name", "laptop"),
                ("allowed_models", "gpt-test, claude-test"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("cache-control"), "no-store");
    assert!(r.location().is_empty(), "no redirect, so no URL to leak it");
    assert!(r.body.contains("Key created."));
    let secret = attr_by_id(&r.body, "new-key-secret", "value").expect("the new key's secret");
    assert!(secret.starts_with("sk-") && secret.len() >= 46, "{secret}");
    assert!(r.body.contains("it is shown only once"));
    let cookies = r.set_cookies();
    assert!(
        cookies
            .iter()
            .all(|c| !c.contains(&secret) && !c.contains("tollgate_new_key")),
        "the secret rides in no cookie: {cookies:?}"
    );
    assert!(web.cookie("tollgate_new_key").is_none());
    // The page stands for the user's page, so a reload is a GET that shows it no more.
    assert_eq!(
        attr_by_id(&r.body, "new-key", "data-replace-url").as_deref(),
        Some(format!("{page}?notice=key_created").as_str())
    );
    let again = web.get(&format!("{page}?notice=key_created")).await;
    assert_eq!(again.status, 200);
    assert!(!again.body.contains(&secret), "shown only once");
    let again = web.get(&page).await;
    assert!(!again.body.contains(&secret), "shown only once");
    // An IP allow-list on the form: a bad entry is refused naming it, and no key is made…
    let r = web
        .submit(
            &format!("{page}/keys"),
            &[
                ("name", "office"),
                ("allowed_ips", "10.0.0.0/8, 10.0.0.0/99"),
            ],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body
            .contains("`10.0.0.0/99` is not an IP address or CIDR range"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("new-key-secret"));
    // …a good one is kept, normalised, and shown in the keys table.
    let r = web
        .submit(
            &format!("{page}/keys"),
            &[
                ("name", "office"),
                ("allowed_ips", "203.0.113.7 2001:db8::/32"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body
            .contains("Allowed IPs: 203.0.113.7/32, 2001:db8::/32"),
        "{}",
        r.body
    );
    let (_, user) = app.get(&format!("/users/{uid}")).await;
    assert_eq!(
        user["keys"][1]["allowed_ips"],
        json!(["203.0.113.7/32", "2001:db8::/32"])
    );
    assert_eq!(user["keys"][0]["allowed_ips"], Value::Null);
    assert_eq!(
        user["keys"][0]["allowed_models"],
        json!(["gpt-test", "claude-test"])
    );
    let kid = user["keys"][0]["id"].as_i64().unwrap();

    // The key works; the request shows among the recent requests, and the bars move.
    assert_eq!(chat(&app, &secret).await, 200);
    app.wait_for_logs(1).await;
    let p = web.get(&page).await;
    assert!(p.body.contains("/v1/chat/completions"));
    assert!(
        p.body
            .contains("<span class=\"used\">$0.00011</span> / $2.00"),
        "daily bar"
    );
    assert!(
        p.body
            .contains("<span class=\"used\">$0.00011</span> / $30.00"),
        "monthly bar"
    );
    // The daily window resets at the next local midnight, shown on the Shanghai clock.
    assert!(p.body.contains("Resets 2026-03-03 00:00"), "{}", p.body);
    assert!(p.body.contains("Times are shown in <b>Asia/Shanghai</b>"));
    assert!(p.body.contains("$1.99989"), "remaining");

    // Revoke the key through the form; it then fails at the proxy.
    let r = web
        .submit(
            &format!("/admin/keys/{kid}/status"),
            &[("status", "revoked"), ("back", &page)],
        )
        .await;
    assert_eq!(
        (r.status, r.location()),
        (303, format!("{page}?notice=key_updated").as_str())
    );
    let (_, k) = app.get(&format!("/keys/{kid}")).await;
    assert_eq!(k["status"], "revoked");
    // An outside `back` is not followed.
    let r = web
        .submit(
            &format!("/admin/keys/{kid}/status"),
            &[("status", "active"), ("back", "https://evil.example/")],
        )
        .await;
    assert_eq!(r.location(), "/admin/keys?notice=key_updated");

    // Cancel the grant: balances disappear, the card says cancelled.
    let r = web
        .submit(
            &format!("/admin/user-packages/{grant_id}/status"),
            &[("status", "cancelled")],
        )
        .await;
    assert_eq!(
        (r.status, r.location()),
        (303, format!("{page}?notice=grant_updated").as_str())
    );
    let (_, api) = app.get(&format!("/users/{uid}")).await;
    assert_eq!(api["subscription_daily_balance"], Value::Null);
    let p = web.get(&page).await;
    assert!(p.body.contains("Cancelled"));
    assert!(p.body.contains("Re-activate"));

    // Disable the user through the form.
    let r = web
        .submit(&format!("{page}/status"), &[("status", "disabled")])
        .await;
    assert_eq!(r.status, 303);
    let (_, api) = app.get(&format!("/users/{uid}")).await;
    assert_eq!(api["status"], "disabled");

    // Creating a user through the form, and a duplicate refused with a message.
    let r = web
        .submit("/admin/users", &[("username", "heidi"), ("role", "user")])
        .await;
    assert_eq!(r.status, 303);
    assert!(r.location().starts_with("/admin/users/"));
    let r = web
        .submit("/admin/users", &[("username", "heidi"), ("role", "user")])
        .await;
    assert_eq!(r.status, 409);
    assert!(r.body.contains("That name is already taken."));
}

#[tokio::test]
async fn account_secrets_never_reach_the_browser() {
    let (app, _fake) = seeded(Options::default()).await;
    let web = Web::new(&app.base);
    web.login().await;
    let secret = "sk-upstream-do-not-show-0123456789";
    let r = web
        .submit(
            "/admin/accounts",
            &[
                ("name", "primary"),
                ("provider", "anthropic"),
                ("base_url", "https://api.anthropic.example/"),
                ("api_key", secret),
                ("models", "claude-a, claude-b"),
                ("priority", "5"),
                ("weight", "2"),
            ],
        )
        .await;
    assert_eq!(
        (r.status, r.location()),
        (303, "/admin/accounts?notice=account_created")
    );
    let (_, list) = app.get("/accounts").await;
    let acc = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "primary")
        .unwrap()
        .clone();
    let id = acc["id"].as_i64().unwrap();
    assert_eq!(acc["models"], json!(["claude-a", "claude-b"]));
    assert_eq!(acc["base_url"], "https://api.anthropic.example");
    for path in [
        "/admin/accounts".to_string(),
        format!("/admin/accounts/{id}"),
    ] {
        let p = web.get(&path).await;
        assert_eq!(p.status, 200);
        assert!(!p.body.contains(secret), "{path} shows the secret");
        assert!(!p.body.contains("sk-upstream-openai-secret"), "{path}");
    }
    let edit = web.get(&format!("/admin/accounts/{id}")).await;
    assert_eq!(
        input_value(&edit.body, "api_key").as_deref(),
        Some(""),
        "blank secret field"
    );
    assert_eq!(input_value(&edit.body, "name").as_deref(), Some("primary"));
    assert!(edit.body.contains("leave blank to keep the stored key"));

    // The edit form as sent, with this base URL and secret.
    let edit_path = format!("/admin/accounts/{id}");
    let save = |base_url: &'static str, api_key: &'static str| {
        let (web, path) = (&web, edit_path.clone());
        async move {
            web.submit(
                &path,
                &[
                    ("name", "primary-renamed"),
                    ("provider", "anthropic"),
                    ("base_url", base_url),
                    ("api_key", api_key),
                    ("models", ""),
                    ("priority", "7"),
                    ("weight", "3"),
                ],
            )
            .await
        }
    };

    // Saving with a blank secret keeps the stored one.
    let r = save("https://api.anthropic.example", "").await;
    assert_eq!(r.status, 303, "{}", r.body);
    let stored = app.state.db.get_account(id).await.unwrap();
    assert_eq!(stored.secret.expose(), secret);
    assert_eq!(
        (stored.name.as_str(), stored.priority, stored.weight),
        ("primary-renamed", 7, 3)
    );
    assert!(stored.models().is_empty(), "blank models = every model");
    // A new secret replaces it.
    let r = save("https://api.anthropic.example", "sk-new-secret").await;
    assert_eq!(r.status, 303);
    assert_eq!(
        app.state.db.get_account(id).await.unwrap().secret.expose(),
        "sk-new-secret"
    );
    // A bad URL is refused with the API's reason, and the form keeps what was typed (but no secret).
    let r = save("ftp://nope", "sk-typed-secret").await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("Base URL: must be an http(s) URL"));
    assert!(!r.body.contains("sk-typed-secret"));
    assert_eq!(
        input_value(&r.body, "base_url").as_deref(),
        Some("ftp://nope")
    );
    // Disable.
    let r = web
        .submit(
            &format!("/admin/accounts/{id}/status"),
            &[("status", "disabled")],
        )
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(
        app.state.db.get_account(id).await.unwrap().status.as_str(),
        "disabled"
    );
}

#[tokio::test]
async fn packages_prices_usage_logs_and_dashboard() {
    let (app, _fake) = seeded(Options::default()).await;
    let web = Web::new(&app.base);
    web.login().await;

    // Packages: created through the form with the API's rules.
    let r = web
        .submit(
            "/admin/packages",
            &[
                ("name", "Starter"),
                ("type", "subscription"),
                ("daily_quota", "1.5"),
                ("weekly_quota", ""),
                ("monthly_quota", "20"),
                ("quota_total", ""),
                ("duration_days", "30"),
            ],
        )
        .await;
    assert_eq!(
        (r.status, r.location()),
        (303, "/admin/packages?notice=package_created")
    );
    let (_, pk) = app.get("/packages").await;
    let p = &pk["data"][0];
    assert_eq!(
        (
            p["daily_quota"].as_str(),
            p["weekly_quota"].as_str(),
            p["monthly_quota"].as_str()
        ),
        (Some("1.500000000"), None, Some("20.000000000"))
    );
    let pid = p["id"].as_i64().unwrap();
    for (fields, message) in [
        (
            vec![
                ("name", "Bad"),
                ("type", "quota"),
                ("quota_total", ""),
                ("duration_days", "30"),
            ],
            "Total quota: is required for a `quota` package",
        ),
        (
            vec![
                ("name", "Bad"),
                ("type", "subscription"),
                ("daily_quota", "abc"),
                ("duration_days", "30"),
            ],
            "Daily limit: must be an amount in USD",
        ),
        (
            vec![
                ("name", "Bad"),
                ("type", "subscription"),
                ("daily_quota", "1"),
                ("duration_days", "0"),
            ],
            "Duration (days): must be between 1 and 36500",
        ),
        (
            vec![
                ("name", "Bad"),
                ("type", "subscription"),
                ("daily_quota", "1"),
                ("duration_days", "x"),
            ],
            "Duration (days): must be a whole number",
        ),
    ] {
        let r = web.submit("/admin/packages", &fields).await;
        assert!(r.status == 400 || r.status == 422, "{}", r.status);
        assert!(r.body.contains(message), "{message}: {}", r.body);
        assert_eq!(
            input_value(&r.body, "name").as_deref(),
            Some("Bad"),
            "kept what was typed"
        );
    }
    let mut zh = Web::new(&app.base);
    zh.accept_language = Some("zh-CN".into());
    zh.login().await;
    let r = zh
        .submit(
            "/admin/packages",
            &[("name", "Bad"), ("type", "quota"), ("duration_days", "30")],
        )
        .await;
    assert!(r.body.contains("总额度：额度套餐必须填写"), "{}", r.body);
    let (_, pk) = app.get("/packages").await;
    assert_eq!(
        pk["data"].as_array().unwrap().len(),
        1,
        "nothing created by the bad forms"
    );
    let r = web
        .submit(
            &format!("/admin/packages/{pid}/status"),
            &[("status", "disabled")],
        )
        .await;
    assert_eq!(r.status, 303);
    let (_, p) = app.get(&format!("/packages/{pid}")).await;
    assert_eq!(p["status"], "disabled");

    // Prices: edited in place; a model name with a slash works.
    let r = web
        .submit(
            "/admin/models",
            &[
                ("model", "org/model-x"),
                ("input", "0.5"),
                ("output", "1.5"),
                ("cache_read", ""),
                ("cache_write", ""),
            ],
        )
        .await;
    assert_eq!(
        (r.status, r.location()),
        (303, "/admin/models?notice=price_saved")
    );
    let (s, m) = app.get("/models/org/model-x").await;
    assert_eq!(s, 200);
    assert_eq!(
        (m["input"].as_str(), m["cache_read"].as_str()),
        (Some("0.500000000"), None)
    );
    let page = web.get("/admin/models").await;
    assert!(page.body.contains(r#"value="org/model-x""#) && page.body.contains(r#"value="0.5""#));
    let r = web
        .submit(
            "/admin/models",
            &[("model", "gpt-test"), ("input", "-1"), ("output", "1")],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("Input / 1M: must not be negative"));

    // Usage, logs and the dashboard after a few requests.
    let active = app
        .package(json!({"name": "big", "type": "quota", "quota_total": "100", "duration_days": 30}))
        .await;
    let uid = app.user("ivan").await;
    app.grant(uid, active, None).await;
    let (kid, key) = app.key(uid, json!({"name": "ivan-key"})).await;
    for _ in 0..3 {
        assert_eq!(chat(&app, &key).await, 200);
    }
    app.wait_for_logs(3).await;
    wait_for_stats(&app, 3).await;
    let today = tollgate::billing::windows::day_string(app.state.clock.now(), app.state.tz);
    let usage = web.get(&format!("/admin/usage?user_id={uid}")).await;
    assert_eq!(usage.status, 200);
    assert!(
        usage.body.contains(r#"id="usage-requests">3<"#),
        "{}",
        usage.body
    );
    assert!(usage.body.contains(r#"id="usage-cost">$0.00033<"#));
    assert!(usage.body.contains("<svg class=\"chart-svg\""));
    assert!(usage
        .body
        .contains(&format!("<title>{today} · gpt-test: $0.00033</title>")));
    assert!(usage.body.contains(&format!("<td>{today}</td>")));
    let other = web
        .get(&format!("/admin/usage?api_key_id={}", kid + 1000))
        .await;
    assert!(other.body.contains(r#"id="usage-requests">0<"#));
    let by_model = web.get("/admin/usage?model=claude-test").await;
    assert!(by_model.body.contains(r#"id="usage-cost">$0.00<"#));

    let logs = web.get("/admin/logs?limit=2").await;
    assert_eq!(logs.body.matches("/v1/chat/completions").count(), 2);
    let href = attr_by_id(&logs.body, "logs-next", "href").expect("a link to older requests");
    assert!(href.contains("cursor="), "{href}");
    let older = web.get(&href).await;
    assert_eq!(older.body.matches("/v1/chat/completions").count(), 1);
    let filtered = web
        .get(&format!("/admin/logs?user_id={uid}&status=500"))
        .await;
    assert!(filtered.body.contains("No requests."));

    let dash = web.get("/admin").await;
    let (_, stats) = app.get("/stats/today").await;
    let cost = api_money(&stats["total"]["cost"]).unwrap();
    assert_eq!(cost, Usd(330_000));
    assert!(
        dash.body.contains(r#"id="today-cost">$0.00033<"#),
        "{}",
        dash.body
    );
    assert!(dash.body.contains(r#"id="today-requests">3<"#));
    assert!(dash.body.contains(">ivan</a>"));

    // Billing statuses are shown in the page's language, never as the stored spelling.
    assert!(logs.body.contains("<td>Complete</td>"), "{}", logs.body);
    let zh = web.get("/admin/logs?limit=2&lang=zh-CN").await;
    assert!(zh.body.contains("<td>已完整计费</td>"), "{}", zh.body);
    assert!(!zh.body.contains("<td>complete</td>"));
}

#[tokio::test]
async fn static_files_are_embedded_with_types_and_cache_headers() {
    let app = spawn_app().await;
    let web = Web::new(&app.base);
    let login = web.get("/admin/login").await;
    for (name, ty) in [
        ("admin.css", "text/css; charset=utf-8"),
        ("admin.js", "text/javascript; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let i = login.body.find(&format!("/static/{name}?v=")).expect(name);
        let url = &login.body[i..i + login.body[i..].find('"').unwrap()];
        let r = web.get(url).await;
        assert_eq!(r.status, 200, "{url}");
        assert_eq!(r.header("content-type"), ty);
        assert_eq!(
            r.header("cache-control"),
            "public, max-age=31536000, immutable"
        );
        assert!(!r.body.is_empty());
        let etag = r.header("etag").to_string();
        let again = app
            .http
            .get(app.url(url))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304);
        let bare = web.get(&format!("/static/{name}")).await;
        assert_eq!(bare.header("cache-control"), "public, max-age=300");
    }
    assert_eq!(web.get("/static/nope.js").await.status, 404);
    assert_eq!(web.get("/static/../Cargo.toml").await.status, 404);
}

#[tokio::test]
async fn refused_requests_show_on_the_user_page_and_the_logs_page() {
    let (app, _fake) = seeded(Options::default()).await;
    let uid = app.user("refusal-shown").await;
    let (kid, key) = app.key(uid, json!({"name": "k"})).await;
    let r = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // The row goes through the recorder: wait for it.
    let t0 = std::time::Instant::now();
    loop {
        let (_, v) = app.get(&format!("/logs?api_key_id={kid}")).await;
        if v["data"].as_array().is_some_and(|d| !d.is_empty()) {
            break;
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "{v}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let web = Web::new(&app.base);
    web.login().await;
    for path in [format!("/admin/users/{uid}"), "/admin/logs".to_string()] {
        let page = web.get(&path).await;
        assert_eq!(page.status, 200, "{path}");
        assert!(!page.body.contains("No requests"), "{path}");
        assert!(page.body.contains("model_not_found"), "{path}");
        assert!(page.body.contains("<td>Refused</td>"), "{path}");
        assert!(page.body.contains("no-such-model"), "{path}");
    }
}

#[tokio::test]
async fn accounts_page_tests_an_account_and_shows_health_and_base_url_warnings() {
    let (app, fake) = seeded(Options {
        tweak: Some(Box::new(|c| c.upstream.probe_interval_secs = 0)),
        ..Default::default()
    })
    .await;
    let web = Web::new(&app.base);
    web.login().await;
    let health = |html: &str, id: &str| {
        let rows = rows(html, "account-id");
        let (_, cells) = rows.into_iter().find(|(i, _)| i == id).unwrap();
        cells
    };
    let page = web.get("/admin/accounts").await;
    assert!(page.body.contains(r#"action="/admin/accounts/1/test""#));
    assert_eq!(health(&page.body, "1")["health"], "OK");
    // The secret was refused: the row says so, in each language (the vocabulary's text).
    app.state.proxy.health.refused(1);
    let page = web.get("/admin/accounts").await;
    assert_eq!(
        health(&page.body, "1")["health"],
        "Secret refused by upstream"
    );
    let zh = web.get("/admin/accounts?lang=zh-CN").await;
    assert_eq!(health(&zh.body, "1")["health"], "上游拒绝了密钥");
    web.get("/admin/accounts?lang=en").await;
    // A failing Test shows upstream's answer and changes nothing.
    fake.set_fail_status(Some(500));
    let r = web.submit("/admin/accounts/1/test", &[]).await;
    assert_eq!(r.status, 200);
    let error = text_by_id(&r.body, "form-error").unwrap();
    assert!(error.starts_with("Test of oa failed after"), "{error}");
    assert!(error.contains("upstream answered 500"), "{error}");
    assert_eq!(health(&r.body, "1")["health"], "Secret refused by upstream");
    // A passing Test says so and brings the account back.
    fake.set_fail_status(None);
    let r = web.submit("/admin/accounts/1/test", &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        r.body.contains("Test of oa: upstream answered 200 in"),
        "{}",
        r.body
    );
    assert_eq!(health(&r.body, "1")["health"], "OK");
    let (_, acc) = app.get("/accounts/1").await;
    assert_eq!(acc["health"], "ok", "{acc}");
    // Testing an account that does not exist is the not-found page.
    assert_eq!(
        web.submit("/admin/accounts/999/test", &[]).await.status,
        404
    );
    // A doubtful OpenAI base URL: accepted, with its warning on the list and the edit page.
    let r = web
        .submit(
            "/admin/accounts",
            &[
                ("name", "unversioned"),
                ("provider", "openai"),
                ("base_url", "https://relay.example"),
                ("api_key", "sk-x"),
                ("models", ""),
                ("priority", "0"),
                ("weight", "1"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let page = web.get("/admin/accounts").await;
    let warning = "has no version in its path (such as /v1)";
    let cells = health(&page.body, "3");
    assert!(cells["base_url"].contains(warning), "{cells:?}");
    assert!(!health(&page.body, "1")["base_url"].contains(warning));
    assert!(web.get("/admin/accounts/3").await.body.contains(warning));
    // One that cannot be right is refused with the reason, on the form.
    let r = web
        .submit(
            "/admin/accounts",
            &[
                ("name", "bad"),
                ("provider", "anthropic"),
                ("base_url", "https://api.anthropic.com/v1"),
                ("api_key", "sk-x"),
                ("models", ""),
                ("priority", "0"),
                ("weight", "1"),
            ],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body
            .contains("Base URL: must not end in /v1 for an Anthropic account"),
        "{}",
        r.body
    );
}

/// The text of the `<textarea name="{name}">`, entities decoded.
fn textarea_value(html: &str, name: &str) -> Option<String> {
    let doc = scraper::Html::parse_document(html);
    let sel = scraper::Selector::parse("textarea[name]").unwrap();
    let found = doc
        .select(&sel)
        .find(|e| e.value().attr("name") == Some(name))
        .map(|e| e.text().collect::<String>());
    found
}

/// Model aliases through the account form (SPEC §11.2): typed as JSON in a textarea, shown
/// again on the edit page, refused naming the field when not a map, cleared when blank.
#[tokio::test]
async fn account_model_aliases_through_the_form() {
    let (app, _fake) = seeded(Options::default()).await;
    let web = Web::new(&app.base);
    web.login().await;
    let form = |map: &'static str| {
        vec![
            ("name", "aliased"),
            ("provider", "openai"),
            ("base_url", "https://api.openai.example/v1"),
            ("api_key", "sk-x"),
            ("models", ""),
            ("priority", "0"),
            ("weight", "1"),
            ("model_map", map),
        ]
    };
    let r = web
        .submit(
            "/admin/accounts",
            &form(r#"{"fast": "gpt-upstream-mini", "smart": "gpt-upstream-large"}"#),
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let (_, list) = app.get("/accounts").await;
    let acc = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "aliased")
        .unwrap()
        .clone();
    assert_eq!(
        acc["model_map"],
        json!({"fast": "gpt-upstream-mini", "smart": "gpt-upstream-large"})
    );
    let id = acc["id"].as_i64().unwrap();
    let path = format!("/admin/accounts/{id}");
    let edit = web.get(&path).await;
    let shown = textarea_value(&edit.body, "model_map").unwrap();
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(
        shown, acc["model_map"],
        "the edit form shows the stored map"
    );
    let list_page = web.get("/admin/accounts").await;
    assert!(list_page.body.contains("fast → gpt-upstream-mini"));

    // Not a map: refused naming the field, what was typed kept, nothing stored.
    for bad in [r#"fast=gpt-x"#, r#"["fast"]"#, r#"{"fast": ""}"#] {
        let r = web.submit(&path, &form(bad)).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert!(
            r.body.contains("Model aliases: must be a JSON object"),
            "{bad}: {}",
            r.body
        );
        assert_eq!(textarea_value(&r.body, "model_map").as_deref(), Some(bad));
    }
    let stored = app.state.db.get_account(id).await.unwrap();
    assert_eq!(stored.model_map.0.len(), 2);
    // Blank clears it.
    let r = web.submit(&path, &form("  ")).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(app
        .state
        .db
        .get_account(id)
        .await
        .unwrap()
        .model_map
        .0
        .is_empty());
}
