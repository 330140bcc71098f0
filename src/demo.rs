//! `tollgate demo`: the whole gateway against a local fake upstream, with a seeded user,
//! package and key, and the commands to call it. No provider key needed.

use crate::app::{bind, shutdown_signal, App};
use crate::billing::cost::Price;
use crate::clock::Clock;
use crate::config::{Config, Secret};
use crate::domain::{PackageKind, Provider, Role};
use crate::fake_upstream::FakeUpstream;
use crate::secrets::{new_api_key, random_base62};
use crate::store::accounts::AccountFields;
use crate::store::keys::NewKey;
use crate::store::packages::NewPackage;

pub async fn run(mut config: Config) -> anyhow::Result<()> {
    let fake = FakeUpstream::start().await?;
    // Keep the demo's data apart from a real database.
    if config.database.url.expose() == Config::default().database.url.expose() {
        let dir = std::env::temp_dir().join(format!("tollgate-demo-{}", random_base62(8)));
        config.database.url = Secret::new(format!("sqlite://{}/demo.db", dir.display()));
        config.recorder.journal_path = dir.join("journal").display().to_string();
    }
    if config.admin.api_token.is_empty() {
        config.admin.api_token = Secret::new(format!("demo-{}", random_base62(24)));
    }
    let token = config.admin.api_token.expose().to_string();
    let app = App::build(config, Clock::System).await?;
    let st = app.state.clone();
    let db = &st.db;
    let now = st.now_ms();
    for (provider, base) in [
        (Provider::OpenAi, fake.openai_base_url()),
        (Provider::Anthropic, fake.anthropic_base_url()),
    ] {
        db.create_account(
            &AccountFields {
                name: Some(format!("fake-{provider}")),
                provider: Some(provider),
                base_url: Some(base),
                secret: Some(Secret::new("fake-upstream-key")),
                ..Default::default()
            },
            now,
        )
        .await?;
    }
    let usd = |s: &str| -> i64 {
        s.parse::<crate::billing::money::Usd>()
            .map(|u| u.0)
            .unwrap_or(0)
    };
    db.upsert_price(
        "gpt-4o-mini",
        &Price {
            input: usd("0.15"),
            output: usd("0.6"),
            cache_read: Some(usd("0.075")),
            cache_write: None,
        },
        now,
    )
    .await?;
    db.upsert_price(
        "claude-sonnet-4",
        &Price {
            input: usd("3"),
            output: usd("15"),
            cache_read: Some(usd("0.3")),
            cache_write: Some(usd("3.75")),
        },
        now,
    )
    .await?;
    let user = match db.find_user_by_username("demo").await? {
        Some(u) => u,
        None => db.create_user("demo", Role::User, None, now).await?,
    };
    let pkg = db
        .create_package(
            &NewPackage {
                name: "Demo monthly",
                kind: PackageKind::Subscription,
                daily_quota: Some(usd("1")),
                weekly_quota: Some(usd("5")),
                monthly_quota: Some(usd("20")),
                quota_total: None,
                duration_days: 30,
            },
            now,
        )
        .await?;
    db.grant_package(user.id, &pkg, now, now + 30 * 86_400_000, now)
        .await?;
    let (secret, prefix, hash) = new_api_key();
    db.create_key(
        &NewKey {
            user_id: user.id,
            name: "demo",
            key_prefix: &prefix,
            key_hash: &hash,
            expires_at: None,
            allowed_models: &[],
            rpm_limit: None,
            tpm_limit: None,
            allowed_ips: &[],
        },
        now,
    )
    .await?;
    let listener = bind(st.config.listen_addr()).await?;
    let base = format!("http://{}", listener.local_addr()?);
    if let Some((u, p)) = &app.created_admin {
        println!("Admin login: {base}/admin/login  user `{u}`  password `{p}`");
    }
    println!(
        "\ntollgate demo is running on {base} (fake upstream on {fake_addr}).\n\n\
         Try it:\n\n\
         curl {base}/v1/chat/completions -H 'Authorization: Bearer {secret}' \\\n  -H 'content-type: application/json' \\\n  -d '{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}'\n\n\
         curl -N {base}/v1/messages -H 'x-api-key: {secret}' -H 'anthropic-version: 2023-06-01' \\\n  -H 'content-type: application/json' \\\n  -d '{{\"model\":\"claude-sonnet-4\",\"max_tokens\":64,\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}'\n\n\
         OpenAI SDK:    OpenAI(base_url=\"{base}/v1\", api_key=\"{secret}\")\n\
         Anthropic SDK: Anthropic(base_url=\"{base}\", api_key=\"{secret}\")\n\n\
         What it cost:  curl {base}/api/admin/users -H 'Authorization: Bearer {token}'\n\
         Your balance:  curl {base}/v1/me -H 'Authorization: Bearer {secret}'\n\n\
         Ctrl-C to stop.",
        fake_addr = fake.addr()
    );
    app.serve(listener, shutdown_signal()).await
}
