//! The UI in a real browser (headless Chromium through chromedriver): sign in, create a user
//! and packages, grant them, create a key and read its secret off the page, spend through the
//! proxy, and watch both balance columns drop by exactly the request's cost, in English and in
//! Chinese. Screenshots of every page go to `target/ui-screenshots/{backend}/`.

use std::path::PathBuf;

use tollgate::billing::money::Usd;
use tollgate::fake_upstream::FakeUpstream;

use crate::helpers::*;
use crate::pages::{chat, wait_for_stats};
use crate::web::{money, ADMIN_PASSWORD, ADMIN_USER};
use crate::webdriver::{binaries, Browser};

pub fn shots_dir() -> PathBuf {
    let backend = match backend() {
        Backend::Sqlite => "sqlite",
        Backend::MySql => "mysql",
    };
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/ui-screenshots")
        .join(backend)
}

/// The browser, or None (after a loud message) when chromedriver or Chromium is missing and
/// the environment does not require them.
pub async fn browser() -> Option<Browser> {
    let (driver, chromium) = binaries();
    for (what, path) in [("chromedriver", &driver), ("Chromium", &chromium)] {
        if !path.exists() {
            let msg = format!(
                "{what} not found at {} (set TOLLGATE_TEST_CHROMEDRIVER / TOLLGATE_TEST_CHROMIUM)",
                path.display()
            );
            if services_required() {
                panic!("{msg}; CI requires the browser tests to run");
            }
            eprintln!("\n********\nSKIPPING the browser test: {msg}\n********\n");
            return None;
        }
    }
    Some(Browser::start(&driver, &chromium).await)
}

/// The text of one cell of the users table.
async fn cell(b: &Browser, user_id: i64, col: &str) -> String {
    b.text(&format!(
        "tr[data-user-id=\"{user_id}\"] td[data-col=\"{col}\"]"
    ))
    .await
}

/// The id at the end of the current URL's path (`/admin/users/7?notice=…` → 7).
async fn id_in_url(b: &Browser) -> i64 {
    let url = b.url().await;
    let path = url.split('?').next().unwrap();
    path.rsplit('/').next().unwrap().parse().unwrap()
}

/// Create a user, a package, grant it, and create a key, all through the pages; returns the
/// user's id and the key's secret as read off the page.
async fn onboard(
    b: &Browser,
    app: &TestApp,
    user: &str,
    package: &str,
    limits: &[(&str, &str)],
    shots: Option<&PathBuf>,
) -> (i64, String) {
    b.goto(&app.url("/admin/packages")).await;
    b.fill("#package-name", package).await;
    let kind = if limits.iter().any(|(f, _)| *f == "quota_total") {
        "Quota"
    } else {
        "Subscription"
    };
    b.choose("#package-type", kind).await;
    for (field, value) in limits {
        b.fill(&format!("input[name=\"{field}\"]"), value).await;
    }
    b.fill("#package-days", "30").await;
    b.submit("#package-submit", "/admin/packages?notice=package_created")
        .await;
    assert!(b.text("#packages-table").await.contains(package));

    b.goto(&app.url("/admin/users")).await;
    b.fill("#new-user input[name=\"username\"]", user).await;
    b.submit("#new-user button[type=\"submit\"]", "/admin/users/")
        .await;
    let uid = id_in_url(b).await;
    assert_eq!(
        b.text("#user-name").await.split_whitespace().next(),
        Some(user)
    );

    b.choose("#grant-package", package).await;
    b.submit(
        "#grant-submit",
        &format!("/admin/users/{uid}?notice=granted"),
    )
    .await;
    assert!(b.text("#packages").await.contains(package));

    b.fill("#key-name", &format!("{user}-laptop")).await;
    b.submit(
        "#key-submit",
        &format!("/admin/users/{uid}?notice=key_created"),
    )
    .await;
    let secret = b.property("#new-key-secret", "value").await;
    assert!(secret.starts_with("sk-") && secret.len() >= 46, "{secret}");
    // The copy button is shown by the vendored script (so it loaded under the CSP).
    assert!(b.displayed("button[data-copy]").await);
    if let Some(dir) = shots {
        b.screenshot(&dir.join("05-user-new-key.png"), 1280).await;
    }
    (uid, secret)
}

#[tokio::test]
async fn a_real_browser_signs_in_onboards_a_user_and_sees_balances_drop() {
    let Some(b) = browser().await else {
        return;
    };
    let app = spawn_app().await;
    let fake = FakeUpstream::start().await.unwrap();
    app.wire_upstream(&fake).await;
    let shots = shots_dir();
    let _ = std::fs::remove_dir_all(&shots);

    // Signing in: an unauthenticated page sends the browser to the login form, and back.
    b.goto(&app.url("/admin/users?lang=en")).await;
    b.wait_for_path("/admin/login").await;
    b.screenshot(&shots.join("01-login.png"), 1280).await;
    b.fill("#username", ADMIN_USER).await;
    b.fill("#password", ADMIN_PASSWORD).await;
    b.submit("#login", "/admin/users").await;
    assert_eq!(b.script("return document.documentElement.lang").await, "en");
    assert!(b.text("#users-table thead").await.contains("Quota balance"));

    // Two users: one on a quota package, one on a subscription.
    let (quota_user, quota_key) = onboard(
        &b,
        &app,
        "quota-user",
        "Browser quota",
        &[("quota_total", "5")],
        None,
    )
    .await;
    let (sub_user, sub_key) = onboard(
        &b,
        &app,
        "sub-user",
        "Browser subscription",
        &[("daily_quota", "2"), ("monthly_quota", "20")],
        Some(&shots),
    )
    .await;

    // Before: the users page shows the full limits.
    b.goto(&app.url("/admin/users")).await;
    let quota_before = money(&cell(&b, quota_user, "quota_balance").await).unwrap();
    let daily_before = money(&cell(&b, sub_user, "subscription_daily_balance").await).unwrap();
    assert_eq!(
        (quota_before, daily_before),
        (Usd(5_000_000_000), Usd(2_000_000_000))
    );
    assert_eq!(
        cell(&b, quota_user, "subscription_daily_balance").await,
        "—"
    );

    // Spend: one request with each key.
    assert_eq!(chat(&app, &quota_key).await, 200);
    assert_eq!(chat(&app, &sub_key).await, 200);
    app.wait_for_logs(2).await;
    wait_for_stats(&app, 2).await;
    let (_, logs) = app.get("/logs").await;
    let cost_of = |uid: i64| {
        let row = logs["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["user_id"] == uid)
            .unwrap();
        row["cost"].as_str().unwrap().parse::<Usd>().unwrap()
    };
    let (quota_cost, sub_cost) = (cost_of(quota_user), cost_of(sub_user));
    assert_eq!(
        quota_cost,
        Usd(110_000),
        "the fake's default request costs $0.00011"
    );

    // After, in English: both balance columns dropped by exactly the request's cost.
    b.goto(&app.url("/admin/users")).await;
    let quota_after = money(&cell(&b, quota_user, "quota_balance").await).unwrap();
    let daily_after = money(&cell(&b, sub_user, "subscription_daily_balance").await).unwrap();
    assert_eq!(quota_after, Usd(quota_before.0 - quota_cost.0));
    assert_eq!(daily_after, Usd(daily_before.0 - sub_cost.0));
    assert_eq!(cell(&b, quota_user, "quota_balance").await, "$4.99989");
    assert_eq!(
        cell(&b, sub_user, "subscription_daily_balance").await,
        "$1.99989"
    );
    assert_eq!(cell(&b, sub_user, "today_cost").await, "$0.00011");
    b.screenshot(&shots.join("03-users.png"), 1280).await;

    // And in Chinese, after switching with the link in the header.
    b.click("a[hreflang=\"zh-CN\"]").await;
    b.wait_for_path("/admin/users?lang=zh-CN").await;
    assert_eq!(
        b.script("return document.documentElement.lang").await,
        "zh-CN"
    );
    let head = b.text("#users-table thead").await;
    assert!(
        head.contains("额度余额") && head.contains("订阅日余额"),
        "{head}"
    );
    assert_eq!(cell(&b, quota_user, "quota_balance").await, "$4.99989");
    assert_eq!(
        cell(&b, sub_user, "subscription_daily_balance").await,
        "$1.99989"
    );
    b.screenshot(&shots.join("13-users-zh.png"), 1280).await;
    // The choice is remembered.
    b.goto(&app.url(&format!("/admin/users/{sub_user}"))).await;
    assert!(b.text("#packages").await.contains("剩余"));
    b.screenshot(&shots.join("14-user-zh.png"), 1280).await;
    b.goto(&app.url("/admin")).await;
    assert_eq!(b.text("#today-cost").await, "$0.00022");
    b.screenshot(&shots.join("15-dashboard-zh.png"), 1280).await;
    b.screenshot(&shots.join("16-dashboard-zh-phone.png"), 390)
        .await;
    b.goto(&app.url("/admin/users")).await;
    b.screenshot(&shots.join("17-users-zh-phone.png"), 390)
        .await;

    // Every other page, in English, for a person to look at.
    b.goto(&app.url("/admin?lang=en")).await;
    assert_eq!(b.text("#today-requests").await, "2");
    b.screenshot(&shots.join("02-dashboard.png"), 1280).await;
    for (name, path) in [
        ("04-user", format!("/admin/users/{sub_user}")),
        ("06-packages", "/admin/packages".to_string()),
        ("07-keys", "/admin/keys".to_string()),
        ("08-accounts", "/admin/accounts".to_string()),
        ("09-account-edit", "/admin/accounts/1".to_string()),
        ("10-models", "/admin/models".to_string()),
        ("11-usage", "/admin/usage".to_string()),
        ("12-logs", "/admin/logs".to_string()),
    ] {
        b.goto(&app.url(&path)).await;
        b.screenshot(&shots.join(format!("{name}.png")), 1280).await;
    }
    b.goto(&app.url(&format!("/admin/users/{sub_user}"))).await;
    b.screenshot(&shots.join("18-user-phone.png"), 390).await;

    // Sign out through the header's form.
    b.click("#logout").await;
    b.wait_for_path("/admin/login").await;
    b.goto(&app.url("/admin/users")).await;
    b.wait_for_path("/admin/login").await;
    b.quit().await;
    eprintln!("screenshots in {}", shots.display());
}
