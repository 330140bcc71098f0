//! The operator's console in headless Chromium (SPEC §11.6): every page fits a laptop
//! (1366×900) and a phone (390×844) without sideways page scroll, in both languages, with
//! long names everywhere; on the phone the users page shows each user's name, 额度余额 and
//! 订阅日余额 on screen; the logs form filters, each row leads to a page with every field, and
//! the CSV buttons carry the current filters. Screenshots in
//! `target/ui-screenshots/{backend}/console/`.

use serde_json::{json, Value};
use tollgate::fake_upstream::FakeUpstream;

use crate::browser::{browser, shots_dir};
use crate::helpers::*;
use crate::web::{ADMIN_PASSWORD, ADMIN_USER};
use crate::webdriver::Browser;

const LONG_USER: &str = "a-very-long-user-name-without-any-spaces-at-all-0123456789abcd";
const SPACED_USER: &str = "Someone With A Rather Long Display Name That Goes On";
const LONG_MODEL: &str = "a-very-long-model-name-for-layout-tests-2026-preview-edition";

struct Seeded {
    app: TestApp,
    _fake: FakeUpstream,
    users: Vec<i64>,
    account: i64,
}

async fn send(app: &TestApp, key: &str, model: &str, fail: Option<&str>) -> u16 {
    let mut req = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}));
    if let Some(s) = fail {
        req = req.header("x-fake-status", s);
    }
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    r.bytes().await.unwrap();
    s
}

/// Users with long names on both kinds of package, a long account and model name, and logs
/// of successes, failures and a refusal.
async fn seed() -> Seeded {
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    let (account, _) = app.wire_upstream(&fake).await;
    let (s, v) = app
        .patch(
            &format!("/accounts/{account}"),
            json!({"name": "primary-openai-compatible-upstream-account-with-a-long-name"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = app
        .put(
            &format!("/models/{LONG_MODEL}"),
            json!({"input": "1.25", "output": "10", "cache_read": "0.125"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let quota = app
        .package(json!({"name": "A quota package with a long descriptive name", "type": "quota", "quota_total": "25", "duration_days": 30}))
        .await;
    let sub = app
        .package(json!({"name": "A subscription package with a long descriptive name", "type": "subscription", "daily_quota": "2", "weekly_quota": "10", "monthly_quota": "30", "duration_days": 30}))
        .await;
    let mut users = Vec::new();
    let mut keys = Vec::new();
    for (name, pkg) in [(LONG_USER, quota), (SPACED_USER, sub), ("short", quota)] {
        let u = app.user(name).await;
        app.grant(u, pkg, None).await;
        let (_, key) = app
            .key(
                u,
                json!({"name": format!("{name}-laptop-key-used-for-everything")}),
            )
            .await;
        users.push(u);
        keys.push(key);
    }
    assert_eq!(send(&app, &keys[0], "gpt-test", None).await, 200);
    assert_eq!(send(&app, &keys[1], LONG_MODEL, None).await, 200);
    assert!(send(&app, &keys[0], "gpt-test", Some("500")).await >= 500);
    assert!(send(&app, &keys[2], "gpt-test", Some("429")).await >= 400);
    assert_eq!(send(&app, &keys[1], "no-such-model", None).await, 404);
    for _ in 0..200 {
        let (_, v) = app.get("/logs").await;
        if v["data"].as_array().unwrap().len() == 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Seeded {
        app,
        _fake: fake,
        users,
        account,
    }
}

async fn sign_in(b: &Browser, app: &TestApp) {
    // Through the redirect, so waiting for `/admin/users` waits for the signed-in page.
    b.goto(&app.url("/admin/users")).await;
    b.wait_for_path("/admin/login").await;
    b.fill("#username", ADMIN_USER).await;
    b.fill("#password", ADMIN_PASSWORD).await;
    b.submit("#login", "/admin/users").await;
}

fn num(v: &Value, i: usize) -> f64 {
    v[i].as_f64().unwrap_or(f64::NAN)
}

#[tokio::test]
async fn every_page_fits_a_laptop_and_a_phone_in_both_languages() {
    let Some(b) = browser().await else {
        return;
    };
    let s = seed().await;
    let app = &s.app;
    let (_, logs) = app.get("/logs").await;
    let log_id = logs["data"][0]["id"].as_i64().unwrap();
    sign_in(&b, app).await;
    let shots = shots_dir().join("console");
    let pages = [
        ("dashboard", "/admin".to_string()),
        ("users", "/admin/users".to_string()),
        ("user", format!("/admin/users/{}", s.users[0])),
        ("packages", "/admin/packages".to_string()),
        ("keys", "/admin/keys".to_string()),
        ("accounts", "/admin/accounts".to_string()),
        ("account", format!("/admin/accounts/{}", s.account)),
        ("models", "/admin/models".to_string()),
        ("usage", "/admin/usage".to_string()),
        ("logs", "/admin/logs".to_string()),
        ("log", format!("/admin/logs/{log_id}")),
    ];
    let mut failures = Vec::new();
    for lang in ["en", "zh-CN"] {
        for (width, height) in [(1366u32, 900u32), (390, 844)] {
            b.resize(width, height).await;
            for (name, path) in &pages {
                let sep = if path.contains('?') { '&' } else { '?' };
                b.goto(&app.url(&format!("{path}{sep}lang={lang}"))).await;
                b.wait_for_path(path).await;
                let m = b
                    .script(
                        "return [document.documentElement.scrollWidth, window.innerWidth, \
                         document.documentElement.clientWidth]",
                    )
                    .await;
                let (scroll, inner, client) = (num(&m, 0), num(&m, 1), num(&m, 2));
                eprintln!(
                    "{lang} {width}x{height} {name}: scrollWidth {scroll} innerWidth {inner} clientWidth {client}"
                );
                assert!(
                    (inner - width as f64).abs() <= 20.0,
                    "the viewport is {inner} px wide, not about {width}"
                );
                if scroll > inner {
                    failures.push(format!(
                        "{lang} {width} {name}: scrollWidth {scroll} > innerWidth {inner}"
                    ));
                }
                if *name == "users" || *name == "logs" || *name == "log" {
                    b.screenshot(&shots.join(format!("{name}-{lang}-{width}.png")), width)
                        .await;
                    b.resize(width, height).await;
                }
            }
            if width == 390 {
                // The users page on a phone: name and both balances of every user on screen.
                b.goto(&app.url(&format!("/admin/users?lang={lang}"))).await;
                b.wait_for_path("/admin/users").await;
                for uid in &s.users {
                    for col in ["username", "quota_balance", "subscription_daily_balance"] {
                        let r = b
                            .script(&format!(
                                "const e = document.querySelector('tr[data-user-id=\"{uid}\"] td[data-col=\"{col}\"]'); \
                                 const r = e.getBoundingClientRect(); \
                                 return [r.left, r.right, r.width, window.innerWidth, e.innerText]"
                            ))
                            .await;
                        let (left, right, w, inner) =
                            (num(&r, 0), num(&r, 1), num(&r, 2), num(&r, 3));
                        eprintln!(
                            "{lang} 390 user {uid} {col}: {left}..{right} of {inner} ({:?})",
                            r[4]
                        );
                        if !(left >= 0.0 && right <= inner && w > 0.0) {
                            failures.push(format!(
                                "{lang} 390 users: user {uid} {col} at {left}..{right}, viewport {inner}"
                            ));
                        }
                    }
                }
                // And the labels say which balance is which.
                if lang == "zh-CN" {
                    let label = b
                        .script(&format!(
                            "return getComputedStyle(document.querySelector('tr[data-user-id=\"{}\"] td[data-col=\"quota_balance\"]'), '::before').content",
                            s.users[0]
                        ))
                        .await;
                    assert_eq!(label, "\"额度余额\"", "the phone card labels its cells");
                }
            }
        }
    }
    b.resize(1280, 900).await;
    b.quit().await;
    assert!(
        failures.is_empty(),
        "pages wider than the viewport: {failures:#?}"
    );
    eprintln!("screenshots in {}", shots.display());
}

#[tokio::test]
async fn the_logs_form_filters_and_each_row_opens_a_page_with_every_field() {
    let Some(b) = browser().await else {
        return;
    };
    let s = seed().await;
    let app = &s.app;
    sign_in(&b, app).await;
    let shots = shots_dir().join("console");

    // (No query string, so waiting for `/admin/logs?` below waits for the submitted form.)
    b.goto(&app.url("/admin/logs")).await;
    let all = b
        .script("return document.querySelectorAll('tr[data-log-id]').length")
        .await;
    assert_eq!(all, 5);
    // Filter by the form: errors from upstream (5xx) of the long-named user.
    b.choose(
        "#log-filters select[name=\"status_class\"]",
        "Server errors (5xx)",
    )
    .await;
    b.choose("#log-filters select[name=\"user_id\"]", LONG_USER)
        .await;
    b.submit("#log-filters button[type=\"submit\"]", "/admin/logs?")
        .await;
    let url = b.url().await;
    assert!(
        url.contains("status_class=5xx") && url.contains(&format!("user_id={}", s.users[0])),
        "the filters are kept in the URL: {url}"
    );
    let (_, want) = app
        .get(&format!("/logs?status_class=5xx&user_id={}", s.users[0]))
        .await;
    let want = want["data"].as_array().unwrap().clone();
    assert_eq!(want.len(), 1);
    let shown = b
        .script("return Array.from(document.querySelectorAll('tr[data-log-id]')).map(r => Number(r.dataset.logId))")
        .await;
    assert_eq!(shown, json!([want[0]["id"]]));
    // The form shows the filter it applied, and the CSV button carries it.
    assert_eq!(
        b.property("#log-filters select[name=\"status_class\"]", "value")
            .await,
        "5xx"
    );
    let csv = b.property("#logs-csv", "href").await;
    assert!(
        csv.contains("/api/admin/logs.csv?")
            && csv.contains("status_class=5xx")
            && csv.contains(&format!("user_id={}", s.users[0])),
        "{csv}"
    );
    // The time range: from after every request, nothing; the billing status: the refusal.
    b.goto(&app.url("/admin/logs?billing_status=refused")).await;
    let shown = b
        .script("return document.querySelectorAll('tr[data-log-id]').length")
        .await;
    assert_eq!(shown, 1);
    b.goto(&app.url("/admin/logs")).await;
    b.script(
        "const d = new Date(Date.now() + 3600e3); \
         document.querySelector('#log-filters input[name=\"from\"]').value = \
         d.toISOString().slice(0, 16); return 1",
    )
    .await;
    b.submit("#log-filters button[type=\"submit\"]", "/admin/logs?")
        .await;
    assert!(b.url().await.contains("from="));
    assert_eq!(
        b.script("return document.querySelectorAll('tr[data-log-id]').length")
            .await,
        0,
        "no request after an hour from now (the app's timezone is UTC)"
    );
    let csv = b.property("#logs-csv", "href").await;
    assert!(
        csv.contains("from=") && csv.contains("%2B00%3A00"),
        "an RFC 3339 instant: {csv}"
    );

    // The detail page of the failed request, through its row's link.
    b.goto(&app.url(&format!(
        "/admin/logs?status_class=5xx&user_id={}",
        s.users[0]
    )))
    .await;
    b.click("tr[data-log-id] a.log-link").await;
    let id = want[0]["id"].as_i64().unwrap();
    b.wait_for_path(&format!("/admin/logs/{id}")).await;
    let field = |f: &'static str| {
        let b = &b;
        async move { b.text(&format!("#log-fields dd[data-field=\"{f}\"]")).await }
    };
    let row = &want[0];
    assert_eq!(field("id").await, id.to_string());
    assert!(field("request_id")
        .await
        .contains(row["request_id"].as_str().unwrap()));
    assert!(field("user").await.contains(LONG_USER));
    assert!(field("key")
        .await
        .contains("-laptop-key-used-for-everything"));
    assert!(field("account").await.contains("primary-openai-compatible"));
    assert_eq!(field("model").await, "gpt-test");
    assert!(field("endpoint").await.contains("/v1/chat/completions"));
    assert_eq!(field("status").await, row["status"].to_string());
    assert_eq!(field("billing_status").await, "Void (not charged)");
    assert_eq!(
        field("latency_ms").await,
        format!("{} ms", row["latency_ms"])
    );
    assert_eq!(field("error").await, row["error"].as_str().unwrap());
    assert_ne!(field("error").await, "—", "the failure has an error");
    eprintln!("failed request's error: {}", field("error").await);
    assert!(field("time")
        .await
        .contains(&row["created_at"].as_str().unwrap()[..19].replace('T', " ")));
    b.screenshot(&shots.join("log-failed.png"), 1366).await;

    // A successful request: tokens and cost by class, adding up to the stored cost.
    let (_, ok) = app
        .get(&format!("/logs?status_class=2xx&user_id={}", s.users[0]))
        .await;
    let ok = &ok["data"][0];
    b.goto(&app.url(&format!("/admin/logs/{}", ok["id"]))).await;
    let rows = b
        .script(
            "return Array.from(document.querySelectorAll('#log-costs tbody tr')).map(r => \
             Array.from(r.cells).map(c => c.innerText.trim()))",
        )
        .await;
    eprintln!("cost by class: {rows}");
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 5, "four classes and the total");
    let tokens: Vec<String> = rows[..4]
        .iter()
        .map(|r| r[1].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        tokens,
        [
            ok["input_tokens"].to_string(),
            ok["output_tokens"].to_string(),
            ok["cache_read_tokens"].to_string(),
            ok["cache_write_tokens"].to_string()
        ]
    );
    let parts: rust_decimal::Decimal = rows[..4]
        .iter()
        .map(|r| {
            r[2].as_str()
                .unwrap()
                .trim_start_matches('$')
                .parse::<rust_decimal::Decimal>()
                .unwrap()
        })
        .sum();
    let stored: rust_decimal::Decimal = ok["cost"].as_str().unwrap().parse().unwrap();
    assert_eq!(parts, stored, "the classes add up to the charged cost");
    assert_eq!(
        b.text("#log-costs td[data-field=\"cost\"]").await,
        format!("${}", stored.normalize())
    );
    b.screenshot(&shots.join("log-ok.png"), 1366).await;
    b.screenshot(&shots.join("log-ok-phone.png"), 390).await;

    // The usage page's CSV button carries its filters too.
    b.goto(&app.url(&format!("/admin/usage?user_id={}", s.users[1])))
        .await;
    let csv = b.property("#usage-csv", "href").await;
    assert!(
        csv.contains("/api/admin/usage/daily.csv?")
            && csv.contains(&format!("user_id={}", s.users[1]))
            && csv.contains("from="),
        "{csv}"
    );
    // A missing log is a 404 page.
    let web = crate::web::Web::new(&app.base);
    web.login().await;
    assert_eq!(web.get("/admin/logs/999999").await.status, 404);
    assert_eq!(web.get("/admin/logs/abc").await.status, 404);
    // A time the form cannot read: 400, the field named, no rows pretending to be filtered.
    let bad = web.get("/admin/logs?from=yesterday&lang=en").await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.body.contains("From: is not a date and time"),
        "the error names the field"
    );
    assert!(!bad.body.contains("data-log-id"), "and shows no rows");
    b.quit().await;
}
