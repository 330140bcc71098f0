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

/// Per-1M USD list prices (input, output, cache read, cache write) of the models the coding
/// agents and SDKs ask for by default (seen: Claude Code 2.1 asks `claude-opus-4-8` and
/// `claude-haiku-4-5`, Codex 0.171 `gpt-6.2-sol`); the fake upstream answers any name. Demo figures:
/// price a real deployment from the provider's price list (`tollgate prices import`).
/// (model, input, output, cache read, cache write), per 1M tokens in USD.
type DemoPrice = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
);

const DEMO_PRICES: &[DemoPrice] = &[
    ("claude-opus-4-8", "5", "25", Some("0.5"), Some("6.25")),
    ("claude-opus-4-7", "5", "25", Some("0.5"), Some("6.25")),
    ("claude-opus-4-6", "5", "25", Some("0.5"), Some("6.25")),
    ("claude-opus-4-5", "5", "25", Some("0.5"), Some("6.25")),
    ("claude-sonnet-5", "3", "15", Some("0.3"), Some("3.75")),
    ("claude-sonnet-4-6", "3", "15", Some("0.3"), Some("3.75")),
    ("claude-sonnet-4-5", "3", "15", Some("0.3"), Some("3.75")),
    ("claude-sonnet-4", "3", "15", Some("0.3"), Some("3.75")),
    ("claude-haiku-4-5", "1", "5", Some("0.1"), Some("1.25")),
    ("gpt-6.2-sol", "1.25", "10", Some("0.125"), None),
    ("gpt-6.1-sol", "1.25", "10", Some("0.125"), None),
    ("gpt-6-sol", "1.25", "10", Some("0.125"), None),
    ("gpt-5.5", "1.25", "10", Some("0.125"), None),
    ("gpt-5.1-codex", "1.25", "10", Some("0.125"), None),
    ("gpt-5-codex", "1.25", "10", Some("0.125"), None),
    ("gpt-5", "1.25", "10", Some("0.125"), None),
    ("gpt-5-mini", "0.25", "2", Some("0.025"), None),
    ("gpt-4.1", "2", "8", Some("0.5"), None),
    ("gpt-4o-mini", "0.15", "0.6", Some("0.075"), None),
];

pub async fn run(mut config: Config) -> anyhow::Result<()> {
    let fake = FakeUpstream::start().await?;
    // Keep the demo's data apart from a real database, and remove it on the way out.
    let mut temp_dir = None;
    if config.database.url.expose() == Config::default().database.url.expose() {
        let dir = std::env::temp_dir().join(format!("tollgate-demo-{}", random_base62(8)));
        config.database.url = Secret::new(format!("sqlite://{}/demo.db", dir.display()));
        config.recorder.journal_path = dir.join("journal").display().to_string();
        temp_dir = Some(dir);
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
    for (model, input, output, cache_read, cache_write) in DEMO_PRICES {
        let price = Price {
            input: usd(input),
            output: usd(output),
            cache_read: cache_read.map(usd),
            cache_write: cache_write.map(usd),
        };
        db.upsert_price(model, &price, now).await?;
    }
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
            limits: Default::default(),
            max_concurrency: None,
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
        "\ntollgate demo is running on {base} (fake upstream on {fake_addr}).\n\
         Admin console: {base}/admin   API token: {token}\n\n\
         Try it:\n\n\
         curl {base}/v1/chat/completions -H 'Authorization: Bearer {secret}' \\\n  -H 'content-type: application/json' \\\n  -d '{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}'\n\n\
         curl -N {base}/v1/messages -H 'x-api-key: {secret}' -H 'anthropic-version: 2023-06-01' \\\n  -H 'content-type: application/json' \\\n  -d '{{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":64,\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}'\n\n\
         OpenAI SDK:    OpenAI(base_url=\"{base}/v1\", api_key=\"{secret}\")\n\
         Anthropic SDK: Anthropic(base_url=\"{base}\", api_key=\"{secret}\")\n\n\
         Claude Code:   ANTHROPIC_BASE_URL={base} ANTHROPIC_AUTH_TOKEN={secret} claude\n\n\
         Codex:         add to ~/.codex/config.toml\n\
         \x20              model_provider = \"tollgate\"\n\
         \x20              [model_providers.tollgate]\n\
         \x20              name = \"tollgate\"\n\
         \x20              base_url = \"{base}/v1\"\n\
         \x20              env_key = \"TOLLGATE_API_KEY\"\n\
         \x20              wire_api = \"responses\"\n\
         \x20              then: TOLLGATE_API_KEY={secret} codex\n\n\
         Priced models: {models}\n\n\
         What it cost:  curl {base}/api/admin/users -H 'Authorization: Bearer {token}'\n\
         Your balance:  curl {base}/v1/me -H 'Authorization: Bearer {secret}'\n\n\
         Ctrl-C to stop.",
        fake_addr = fake.addr(),
        models = DEMO_PRICES.iter().map(|p| p.0).collect::<Vec<_>>().join(", "),
    );
    match &temp_dir {
        Some(dir) => println!("Demo data: {} (removed on exit)\n", dir.display()),
        None => println!("Demo data: in the configured database (kept)\n"),
    }
    let served = app.serve(listener, shutdown_signal()).await;
    if let Some(dir) = temp_dir {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => println!("removed {}", dir.display()),
            Err(e) => eprintln!("tollgate: could not remove {}: {e}", dir.display()),
        }
    }
    served
}
